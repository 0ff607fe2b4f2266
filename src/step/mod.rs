//! Steps as data: what every planner returns (migrations, premake, index repairs, expiries,
//! restore), what the one executor ([`exec`]) runs, and what `--dry-run` prints ([`Step::render`]).
//!
//! A step is one of three kinds of work:
//! - a **transaction**: statements that run together under `SET LOCAL lock_timeout`, retried
//!   on lock timeouts, with their bookkeeping (ledger event or migration row) written inside
//!   the same transaction;
//! - a **statement that cannot run in a transaction** (`... CONCURRENTLY`): `lock_timeout` off,
//!   bounded by its own `statement_timeout` instead, because its waits do not block writers;
//! - **work on files**: writing an archive, verifying it, shipping it with archive_command,
//!   each bracketed by a started and a finished ledger event.
//!
//! Rendering and running read the same fields, so a dry run cannot print something other than
//! what runs (`lifecycle::dry_run_prints_the_statements_the_server_receives`,
//! `bootstrap::bootstrap_dry_run_prints_the_statements_the_server_receives`).

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::archive::{self, Manifest};
use crate::catalog::RelName;
use crate::config::Config;
use crate::ledger;

mod error;
pub(crate) mod exec;

pub use error::StepError;
pub(crate) use exec::Executor;

/// One step of a plan.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Step {
    /// Short label for logs and reports: `create partition public.market_odds_history_2026_12`.
    pub label: String,
    /// Why the planner wants it, printed by `--dry-run`.
    pub reason: String,
    /// What runs.
    pub work: Work,
    /// What the step writes to partwarden's bookkeeping.
    pub record: Record,
    /// Relations whose lock holders are worth naming when the step times out on a lock.
    pub lock_relations: Vec<String>,
    /// Put before the error when the step fails: what it means for the data.
    pub if_it_fails: Option<String>,
}

/// The work of a step.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Work {
    /// Statements in one transaction.
    Transaction {
        /// In order.
        statements: Vec<Statement>,
        /// How long a statement may wait for a lock.
        wait: Wait,
    },
    /// One statement outside a transaction block, `lock_timeout` off, bounded by `bound`.
    Concurrently {
        /// The statement.
        sql: String,
        /// Its statement_timeout.
        bound: Bound,
    },
    /// An archive of a detached partition: an earlier archive that verifies and holds exactly
    /// the table's rows is reused, else a new version is written beside it.
    Archive(Box<ArchiveWork>),
    /// The archive of this plan read back: size, SHA-256, rows and content digest.
    Verify,
    /// The archive of this plan uploaded to the object store (`archive_dir = "s3://..."`),
    /// then read back from the store and verified there.
    Upload,
    /// archive_command for the archive of this plan and its manifest, unless the ledger says
    /// it has already shipped this very file.
    Ship {
        /// The command, `%p`/`%f` expanded by the executor.
        command: String,
    },
}

/// What an archive step archives.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct ArchiveWork {
    /// The partitioned parent.
    pub table: RelName,
    /// The detached partition.
    pub partition: RelName,
    /// Its bounds.
    pub lower: Option<DateTime<Utc>>,
    /// Its bounds.
    pub upper: Option<DateTime<Utc>>,
    /// The partition key column.
    pub key: String,
    /// `maintenance.archive_dir`.
    pub dir: PathBuf,
    /// The latest archive found when planning, tried first.
    pub reuse: Option<archive::Paths>,
    /// The format of a new archive.
    pub format: archive::DataFormat,
}

/// One statement of a transaction.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Statement {
    /// One SQL statement; the rows it reports count toward the step's.
    Sql(String),
    /// Statements sent together as one simple query: one round trip, for a transaction that
    /// holds locks the application waits for (the drain's swap).
    Batch(Vec<String>),
    /// A script of several statements (a migration file), sent as one simple query.
    Script {
        /// Where it comes from, for errors: `schema/0001_odds_schema.sql`.
        name: String,
        /// Its text.
        text: &'static str,
    },
    /// `COPY t TO STDOUT`, under `maintenance.archive_timeout`: the table's content digest
    /// must be the one of the archive verified by an earlier step of the same run; otherwise
    /// the transaction is rolled back, the table kept and a failed `verify` recorded.
    SameAsArchive(RelName),
    /// `SELECT count(*)`: the rows the ledger records for the step.
    Count(RelName),
    /// `COPY t FROM STDIN` of an archive file, read once; rolled back unless the size,
    /// SHA-256, rows and content digest of what was sent match the manifest.
    Load {
        /// The manifest's path.
        manifest_path: PathBuf,
        /// The manifest, parsed and checked.
        manifest: Box<Manifest>,
        /// The table loaded.
        into: RelName,
    },
}

/// How long a transaction's statements may wait for a lock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Wait {
    /// `database.lock_timeout`, retried with backoff for `database.lock_retry_for`.
    Lock,
    /// `database.statement_timeout`, not retried: for statements whose waits block no writer
    /// (`DETACH ... FINALIZE` waits for older transactions, as the detach did).
    Statement,
}

/// The statement_timeout of a statement outside a transaction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Bound {
    /// `database.statement_timeout`.
    Statement,
    /// `maintenance.index_build_timeout`.
    IndexBuild,
}

/// What a step writes to partwarden's bookkeeping.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Record {
    /// Nothing.
    Nothing,
    /// An event in `partwarden.partition_events`: inside the transaction of a transactional
    /// step, started before and finished after any other.
    Ledger(ledger::Entry),
    /// A row in `partwarden.schema_migrations`, inside the step's transaction.
    Migration {
        /// Its version.
        version: i32,
        /// Its name.
        name: String,
        /// SHA-256 of its file.
        checksum: String,
        /// Recorded without running it (its tables already existed).
        adopted: bool,
    },
}

impl Step {
    /// A transaction of `statements` under `lock_timeout`, recording nothing.
    pub fn transaction(
        label: impl Into<String>,
        reason: impl Into<String>,
        statements: Vec<Statement>,
    ) -> Step {
        Step {
            label: label.into(),
            reason: reason.into(),
            work: Work::Transaction {
                statements,
                wait: Wait::Lock,
            },
            record: Record::Nothing,
            lock_relations: Vec::new(),
            if_it_fails: None,
        }
    }

    /// A step of other work, recording nothing.
    pub fn of(label: impl Into<String>, reason: impl Into<String>, work: Work) -> Step {
        Step {
            work,
            ..Step::transaction(label, reason, Vec::new())
        }
    }

    /// With this record.
    pub fn recording(mut self, record: Record) -> Step {
        self.record = record;
        self
    }

    /// With these relations named on lock timeouts.
    pub fn locking(mut self, relations: Vec<String>) -> Step {
        self.lock_relations = relations;
        self
    }

    /// With its statements waiting for locks as `wait` says (a transaction's).
    pub fn waiting(mut self, how: Wait) -> Step {
        if let Work::Transaction { wait, .. } = &mut self.work {
            *wait = how;
        }
        self
    }

    /// With what a failure means.
    pub fn if_it_fails(mut self, meaning: impl Into<String>) -> Step {
        self.if_it_fails = Some(meaning.into());
        self
    }

    /// The SQL text of the step's statements, as they are sent (a script whole).
    #[cfg(test)]
    pub fn statements(&self) -> Vec<String> {
        match &self.work {
            Work::Transaction { statements, .. } => statements.iter().map(Statement::sql).collect(),
            Work::Concurrently { sql, .. } => vec![sql.clone()],
            Work::Archive(a) => vec![format!("COPY {} TO STDOUT", a.partition.quoted())],
            Work::Verify | Work::Upload | Work::Ship { .. } => Vec::new(),
        }
    }

    /// The step as `--dry-run` prints it: the statements as the server receives them, the
    /// session settings around them, and comments for what is not SQL.
    pub fn render(&self, config: &Config) -> String {
        let mut s = format!("-- {}: {}\n", self.label, self.reason);
        match &self.work {
            Work::Transaction { statements, wait } => {
                let ms = match wait {
                    Wait::Lock => config.database.lock_timeout.as_millis(),
                    Wait::Statement => config.database.statement_timeout.as_millis(),
                };
                let _ = writeln!(s, "BEGIN;\nSET LOCAL lock_timeout = '{ms}ms';");
                for st in statements {
                    let _ = writeln!(s, "{};{}", st.sql(), st.comment(config));
                }
                match &self.record {
                    Record::Nothing => {}
                    Record::Ledger(e) => {
                        let _ = writeln!(
                            s,
                            "-- and its event ({}) in partwarden.partition_events",
                            e.step.as_str()
                        );
                    }
                    Record::Migration {
                        version,
                        name,
                        checksum,
                        adopted,
                    } => {
                        let _ = writeln!(
                            s,
                            "INSERT INTO partwarden.schema_migrations (version, name, checksum, adopted) VALUES ({version}, '{name}', '{checksum}', {adopted});"
                        );
                    }
                }
                s.push_str("COMMIT;\n");
            }
            Work::Concurrently { sql, bound } => {
                let _ = writeln!(
                    s,
                    "SET lock_timeout = 0; SET statement_timeout = '{}ms'; -- its waits do not block writers\n{sql};\nSET statement_timeout = '{}ms'; SET lock_timeout = '{}ms';",
                    bound.duration(config).as_millis(),
                    config.database.statement_timeout.as_millis(),
                    config.database.lock_timeout.as_millis()
                );
            }
            Work::Archive(a) => {
                let paths = a
                    .reuse
                    .clone()
                    .unwrap_or_else(|| archive::paths(&a.dir, &a.table, &a.partition));
                let _ = writeln!(
                    s,
                    "COPY {} TO STDOUT; -- zstd into {} (or the next free version, unless that archive verifies and holds exactly these rows) with its manifest",
                    a.partition.quoted(),
                    paths.data_file(a.format).display()
                );
            }
            Work::Verify => {
                s.push_str(
                    "-- read back: size, SHA-256, rows and content digest against the manifest, rows against count(*)\n",
                );
            }
            Work::Upload => {
                let _ = writeln!(
                    s,
                    "-- upload both files to {} (multipart, never replacing an object), then read them back from the store: size, SHA-256, rows and content digest verified there",
                    config
                        .maintenance
                        .archive_store
                        .as_ref()
                        .map(|c| c.url())
                        .unwrap_or_default()
                );
            }
            Work::Ship { command } => {
                let _ = writeln!(s, "-- archive_command for both files: {command}");
            }
        }
        s
    }
}

impl Statement {
    /// The text the server receives.
    pub fn sql(&self) -> String {
        match self {
            Statement::Sql(s) => s.clone(),
            Statement::Batch(v) => v.join(";\n"),
            Statement::Script { text, .. } => text.trim_end().trim_end_matches(';').to_string(),
            Statement::SameAsArchive(t) => format!("COPY {} TO STDOUT", t.quoted()),
            Statement::Count(t) => format!("SELECT count(*) FROM {}", t.quoted()),
            Statement::Load { into, .. } => format!("COPY {} FROM STDIN", into.quoted()),
        }
    }

    fn comment(&self, config: &Config) -> String {
        match self {
            Statement::SameAsArchive(_) => format!(
                " -- its content digest must equal the archive's, else the table is kept (statement_timeout {})",
                config
                    .maintenance
                    .archive_timeout
                    .map_or("off".to_string(), |d| format!("{}ms", d.as_millis()))
            ),
            Statement::Load {
                manifest_path,
                manifest,
                ..
            } => format!(
                " -- from {} ({} rows), checked as it is sent: size, SHA-256, rows, content digest",
                archive::data_path(manifest_path, manifest)
                    .map(|p| p.display().to_string())
                    .unwrap_or_else(|_| manifest.file.clone()),
                manifest.rows
            ),
            _ => String::new(),
        }
    }
}

impl Bound {
    /// Its duration under `config`.
    pub fn duration(self, config: &Config) -> Duration {
        match self {
            Bound::Statement => config.database.statement_timeout,
            Bound::IndexBuild => config.maintenance.index_build_timeout,
        }
    }
}
