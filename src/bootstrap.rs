//! `partwarden --bootstrap`: bring a database to the odds schema, then give every configured
//! table its partitions.
//!
//! Steps, each its own transaction: take the bootstrap advisory lock (two installers cannot
//! race); apply or adopt pending migrations; for every `[[tables]]` entry, create the
//! partitions the premake planner asks for. A table that cannot be managed (wrong shape, name
//! taken, lock timeouts that persist) is reported and does not stop the others.

use std::io::Write;

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio_postgres::Client;

use crate::catalog::{self, RelName};
use crate::clock::Clocks;
use crate::config::Config;
use crate::db::{self, ConnectError};
use crate::migrate::{self, MIGRATIONS, MigrateError};
use crate::pass;
use crate::premake::{self, Runway};
use crate::step::Executor;

/// How a bootstrap runs.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// Print the plan (every statement, in order) and change nothing.
    pub dry_run: bool,
    /// The instant to plan partitions for; `None` (always, but in a `--dry-run --now`): the
    /// database server's clock.
    pub now: Option<DateTime<Utc>>,
}

/// What a bootstrap did (or, in a dry run, would do).
#[derive(Debug, Default, Serialize)]
pub struct Summary {
    /// Whether this was a dry run.
    pub dry_run: bool,
    /// Migrations applied by this run.
    pub migrations_applied: Vec<String>,
    /// Migrations recorded as adopted by this run.
    pub migrations_adopted: Vec<String>,
    /// Migrations that were already recorded.
    pub migrations_already_applied: usize,
    /// One entry per configured table.
    pub tables: Vec<TableSummary>,
}

/// Partitions of one table.
#[derive(Debug, Serialize)]
pub struct TableSummary {
    /// `schema.table`.
    pub table: String,
    /// Partitions created (or planned).
    pub created: Vec<String>,
    /// Coverage after the run; `None` in a dry run or when the table failed.
    pub runway: Option<Runway>,
    /// Why the table could not be completed.
    pub error: Option<String>,
}

impl Summary {
    /// Whether every table succeeded.
    pub fn ok(&self) -> bool {
        self.tables.iter().all(|t| t.error.is_none())
    }

    /// The human summary, a few lines.
    pub fn to_text(&self) -> String {
        let mut s = String::new();
        let verb = if self.dry_run { "would be " } else { "" };
        if self.migrations_applied.is_empty() && self.migrations_adopted.is_empty() {
            s.push_str(&format!(
                "migrations: up to date ({} already applied), nothing to do\n",
                self.migrations_already_applied
            ));
        } else {
            let mut parts = Vec::new();
            if !self.migrations_applied.is_empty() {
                parts.push(format!(
                    "{} {verb}applied [{}]",
                    self.migrations_applied.len(),
                    self.migrations_applied.join(", ")
                ));
            }
            if !self.migrations_adopted.is_empty() {
                parts.push(format!(
                    "{} {verb}adopted [{}]",
                    self.migrations_adopted.len(),
                    self.migrations_adopted.join(", ")
                ));
            }
            parts.push(format!(
                "{} already applied",
                self.migrations_already_applied
            ));
            s.push_str(&format!("migrations: {}\n", parts.join(", ")));
        }
        for t in &self.tables {
            if let Some(e) = &t.error {
                s.push_str(&format!("{}: FAILED: {e}\n", t.table));
                continue;
            }
            let created = if t.created.is_empty() {
                "no partition needed".to_string()
            } else {
                format!(
                    "{} partitions {verb}created ({})",
                    t.created.len(),
                    t.created.join(", ")
                )
            };
            let runway = t.runway.as_ref().map(pass::runway_text).unwrap_or_default();
            s.push_str(&format!("{}: {created}{runway}\n", t.table));
        }
        s
    }
}

/// Why bootstrap stopped before it could look at the tables.
#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    /// No connection.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// Migrations refused or failed.
    #[error(transparent)]
    Migrate(#[from] MigrateError),
    /// The server cannot take DDL.
    #[error("{0}")]
    Refused(String),
}

/// Runs the bootstrap. Dry-run output (the SQL) goes to `out`. Returns the summary; table
/// failures are inside it, see [`Summary::ok`].
pub async fn run(
    config: &Config,
    opts: Options,
    out: &mut (dyn Write + Send),
) -> Result<Summary, BootstrapError> {
    let mut client = db::connect(&config.database).await?;
    let clocks = Clocks::read(&client)
        .await
        .map_err(|e| BootstrapError::Refused(db::error_text(&e)))?;
    if !opts.dry_run {
        db::require_primary(&client)
            .await
            .map_err(BootstrapError::Refused)?;
        clocks
            .check(config.database.max_clock_skew)
            .map_err(BootstrapError::Refused)?;
        migrate::lock(&client, config.database.lock_retry_for).await?;
    }
    let result = run_locked(&mut client, config, opts, clocks.server, out).await;
    if !opts.dry_run
        && let Err(e) = migrate::unlock(&client).await
    {
        tracing::warn!(error = %db::error_text(&e), "could not release the bootstrap lock; it goes with the session");
    }
    result
}

async fn run_locked(
    client: &mut Client,
    config: &Config,
    opts: Options,
    server_now: DateTime<Utc>,
    out: &mut (dyn Write + Send),
) -> Result<Summary, BootstrapError> {
    let now = opts.now.unwrap_or(server_now);
    let steps = migrate::steps(&*client, MIGRATIONS).await?;
    let mut summary = Summary {
        dry_run: opts.dry_run,
        migrations_already_applied: MIGRATIONS.len() - steps.len(),
        ..Summary::default()
    };
    for pending in &steps {
        if opts.dry_run {
            let _ = writeln!(out, "{}", pending.step.render(config));
        } else {
            Executor::new(client, config)
                .run(&pending.step)
                .await
                .map_err(MigrateError::from)?;
        }
        let id = pending.migration.id();
        if pending.adopt {
            summary.migrations_adopted.push(id);
        } else {
            summary.migrations_applied.push(id);
        }
    }
    for table in &config.tables {
        let rel = RelName::from(&table.name);
        let mut tr = pass::TableReport::new(table);
        match catalog::snapshot(&*client, &rel).await {
            Err(e) => tr.errors.push(db::error_text(&e)),
            Ok(mut snap) => {
                // In a dry run on a fresh database, plan against the table the migrations
                // would create.
                if opts.dry_run
                    && !snap.exists
                    && let Some(t) = steps
                        .iter()
                        .filter(|s| !s.adopt)
                        .flat_map(|s| s.migration.adopts.iter())
                        .find(|t| t.rel_name() == rel)
                {
                    snap = t.as_snapshot();
                }
                pass::premake_table(
                    client,
                    &mut pass::Ctx {
                        config,
                        dry_run: opts.dry_run,
                        now,
                        server_now,
                        stop: &std::sync::atomic::AtomicBool::new(false),
                        out: &mut *out,
                    },
                    table,
                    &snap,
                    &mut tr,
                )
                .await;
            }
        }
        if !opts.dry_run && tr.errors.is_empty() {
            match catalog::snapshot(&*client, &rel).await {
                Ok(after) => tr.runway = Some(premake::runway(table, &after, now)),
                Err(e) => tr.errors.push(db::error_text(&e)),
            }
        }
        summary.tables.push(TableSummary {
            table: tr.table,
            created: tr.created,
            runway: tr.runway,
            error: (!tr.errors.is_empty()).then(|| tr.errors.join("; ")),
        });
    }
    Ok(summary)
}
