//! Expiries of a pass: from wherever each stands (attached, pending detach, detached,
//! vanished), detach (CONCURRENTLY when the table has no DEFAULT partition, bounded by
//! statement_timeout; plain DETACH under lock_timeout otherwise) → archive (a new version
//! beside any that no longer matches) → verify (size, SHA-256, rows, content digest) →
//! archive_command, if configured → drop (in one transaction that locks the detached table,
//! re-reads it and checks its content digest is the archive's). `on_expiry = "detach"` moves
//! the table to `partwarden_archive` instead; `on_expiry = "drop"` drops without an archive.
//! Every step is in the ledger.

use super::*;
use std::path::Path;
use std::time::Duration;

use tokio_postgres::Transaction;

use crate::archive::Manifest;
use crate::expiry::{Start, Task, Unfinished};
use crate::ledger::{Event, Step};

pub(super) async fn expire_table(
    client: &mut Client,
    ctx: &mut Ctx<'_>,
    table: &TableConfig,
    tr: &mut TableReport,
) {
    let parent = RelName::from(&table.name);
    let gathered = async {
        let snap = catalog::snapshot(&*client, &parent).await?;
        let mut unfinished = Vec::new();
        for l in ledger::in_flight(&*client, &parent).await? {
            let exists: bool = client
                .query_one(
                    "SELECT to_regclass($1) IS NOT NULL",
                    &[&l.partition.quoted()],
                )
                .await?
                .get(0);
            unfinished.push(Unfinished { ledger: l, exists });
        }
        Ok::<_, tokio_postgres::Error>((snap, unfinished))
    }
    .await;
    let (snap, unfinished) = match gathered {
        Ok(v) => v,
        Err(e) => {
            tr.errors.push(format!(
                "reading the catalog and ledger: {}",
                error_text(&e)
            ));
            return;
        }
    };
    let plan = expiry::plan(
        table,
        &snap,
        &unfinished,
        ctx.now,
        ctx.server_now,
        ctx.config.maintenance.max_expired_per_pass,
    );
    tr.notes.extend(plan.notes);
    let has_default = snap.default_partition().is_some();
    for task in &plan.tasks {
        if ctx.stop.load(Ordering::SeqCst) {
            tr.notes
                .push("stopping: the remaining expiries are left to the next pass".into());
            break;
        }
        if ctx.dry_run {
            let _ = writeln!(
                ctx.out,
                "{}",
                describe_expiry(ctx.config, ctx.policy, table, task, has_default)
            );
            tr.expired.push(task.partition.to_string());
            continue;
        }
        let expiring = Expiring {
            config: ctx.config,
            policy: ctx.policy,
            table,
            parent: &parent,
            task,
        };
        match expiring.run(client, has_default).await {
            Ok(bytes) => {
                tr.archived_bytes += bytes;
                tr.expired.push(task.partition.to_string());
                metrics::add(&metrics::PARTITIONS_EXPIRED, 1);
                metrics::add(&metrics::ARCHIVE_BYTES, bytes);
            }
            Err(e) => {
                tracing::error!(
                    partition = %task.partition,
                    error = %e,
                    sqlstate = e.code().map(|c| c.code()),
                    transient = e.is_transient(),
                    "expiry step failed"
                );
                tr.errors.push(format!("{}: {e}", task.partition));
            }
        }
    }
}

/// The `--dry-run` text of one expiry.
fn describe_expiry(
    config: &Config,
    policy: &DdlPolicy,
    table: &TableConfig,
    task: &Task,
    has_default: bool,
) -> String {
    let parent = RelName::from(&table.name);
    let p = &task.partition;
    let lock_timeout = policy.lock_timeout.as_millis();
    let mut s = format!("-- expire {}: {}\n", task.partition, task.reason);
    match task.start {
        Start::Attached if has_default => s.push_str(&format!(
            "BEGIN;\nSET LOCAL lock_timeout = '{lock_timeout}ms';\n{};\nCOMMIT;\n",
            sql::detach(&parent, p, false)
        )),
        Start::Attached => s.push_str(&format!(
            "SET lock_timeout = 0; -- bounded by statement_timeout ({}s) instead\n{};\nRESET lock_timeout;\n",
            config.database.statement_timeout.as_secs(),
            sql::detach(&parent, p, true)
        )),
        Start::PendingDetach => s.push_str(&format!(
            "BEGIN;\nSET LOCAL lock_timeout = '{}ms';\n{};\nCOMMIT;\n",
            config.database.statement_timeout.as_millis(),
            sql::finalize(&parent, p)
        )),
        Start::Detached => s.push_str("-- already detached\n"),
        Start::Vanished => {
            s.push_str("-- the table no longer exists; the ledger records that it vanished\n");
            return s;
        }
    }
    match table.on_expiry {
        OnExpiry::Archive => {
            let dir = &config.maintenance.archive_dir;
            let paths = archive::latest(dir, &parent, p)
                .unwrap_or_else(|| archive::paths(dir, &parent, p));
            s.push_str(&format!(
                "{}; -- zstd into {} (or the next free version) with its manifest, read back: size, SHA-256, rows and content digest verified\n",
                sql::reread(p),
                paths.data.display(),
            ));
            if let Some(cmd) = &config.maintenance.archive_command {
                s.push_str(&format!("-- archive_command for both files: {cmd}\n"));
            }
            s.push_str(&format!(
                "BEGIN;\nSET LOCAL lock_timeout = '{lock_timeout}ms';\n{};\n{}; -- its content digest must equal the archive's, else the table is kept\n{};\nCOMMIT;\n",
                sql::lock(p),
                sql::reread(p),
                sql::drop(p)
            ));
        }
        OnExpiry::Detach => s.push_str(&format!(
            "BEGIN;\nSET LOCAL lock_timeout = '{lock_timeout}ms';\n{}; -- unless it exists\n{};\nCOMMIT;\n",
            sql::create_archive_schema(),
            sql::move_to_archive_schema(p)
        )),
        OnExpiry::Drop => s.push_str(&format!(
            "BEGIN;\nSET LOCAL lock_timeout = '{lock_timeout}ms';\n{};\nCOMMIT;\n",
            sql::drop(p)
        )),
    }
    s
}

/// Why a step of an expiry failed: the report's line, with the database error kept where
/// one caused it, so that its SQLSTATE, and whether trying again may help, are not lost.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    /// A query failed.
    #[error("{}", error_text(.0))]
    Db(#[from] tokio_postgres::Error),
    /// A DDL transaction failed, or kept timing out on locks.
    #[error(transparent)]
    Ddl(#[from] ddl::DdlError),
    /// An archive could not be written, read or verified.
    #[error(transparent)]
    Archive(#[from] archive::ArchiveError),
    /// The step cannot go on, for the reason given.
    #[error("{message}")]
    Failed {
        /// What happened and what happens next.
        message: String,
        /// The database error behind it, if any.
        source: Option<tokio_postgres::Error>,
    },
}

impl StepError {
    fn msg(message: impl Into<String>) -> StepError {
        StepError::Failed {
            message: message.into(),
            source: None,
        }
    }

    fn db_error(&self) -> Option<&tokio_postgres::Error> {
        match self {
            StepError::Db(e) => Some(e),
            StepError::Ddl(ddl::DdlError::Failed { source, .. }) => Some(source),
            StepError::Ddl(ddl::DdlError::LockTimeout { .. }) => None,
            StepError::Failed { source, .. } => source.as_ref(),
            StepError::Archive(archive::ArchiveError::Db { source, .. }) => Some(source),
            StepError::Archive(_) => None,
        }
    }

    /// The SQLSTATE of the database error behind it, if any.
    pub fn code(&self) -> Option<&tokio_postgres::error::SqlState> {
        self.db_error().and_then(|e| e.code())
    }

    /// Whether the next pass may well succeed where this one failed: locks not had, a
    /// deadlock, a cancelled or timed-out statement, a lost connection.
    pub fn is_transient(&self) -> bool {
        use tokio_postgres::error::SqlState;
        if matches!(self, StepError::Ddl(ddl::DdlError::LockTimeout { .. })) {
            return true;
        }
        match self.db_error() {
            Some(e) if e.is_closed() => true,
            Some(e) => matches!(
                e.code(),
                Some(c) if *c == SqlState::LOCK_NOT_AVAILABLE
                    || *c == SqlState::T_R_DEADLOCK_DETECTED
                    || *c == SqlState::T_R_SERIALIZATION_FAILURE
                    || *c == SqlState::QUERY_CANCELED
                    || *c == SqlState::ADMIN_SHUTDOWN
                    || *c == SqlState::CANNOT_CONNECT_NOW
            ),
            None => false,
        }
    }
}

/// The statements of an expiry, built in one place for the executor and for `--dry-run`, so
/// that what a dry run prints is what runs.
mod sql {
    use super::ARCHIVE_SCHEMA;
    use crate::catalog::RelName;

    pub fn detach(parent: &RelName, p: &RelName, concurrently: bool) -> String {
        format!(
            "ALTER TABLE {} DETACH PARTITION {}{}",
            parent.quoted(),
            p.quoted(),
            if concurrently { " CONCURRENTLY" } else { "" }
        )
    }

    pub fn finalize(parent: &RelName, p: &RelName) -> String {
        format!(
            "ALTER TABLE {} DETACH PARTITION {} FINALIZE",
            parent.quoted(),
            p.quoted()
        )
    }

    pub fn create_archive_schema() -> String {
        format!("CREATE SCHEMA {ARCHIVE_SCHEMA}")
    }

    pub fn move_to_archive_schema(p: &RelName) -> String {
        format!("ALTER TABLE {} SET SCHEMA {ARCHIVE_SCHEMA}", p.quoted())
    }

    pub fn lock(p: &RelName) -> String {
        format!("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE", p.quoted())
    }

    pub fn reread(p: &RelName) -> String {
        format!("COPY {} TO STDOUT", p.quoted())
    }

    pub fn drop(p: &RelName) -> String {
        format!("DROP TABLE {}", p.quoted())
    }
}

/// One expiry in progress.
struct Expiring<'a> {
    config: &'a Config,
    policy: &'a DdlPolicy,
    table: &'a TableConfig,
    parent: &'a RelName,
    task: &'a Task,
}

impl Expiring<'_> {
    fn event(&self, step: Step) -> Event<'_> {
        Event {
            table: self.parent,
            partition: Some(&self.task.partition),
            lower: self.task.lower,
            upper: self.task.upper,
            step,
        }
    }

    /// Runs the expiry from where it stands. Returns archive bytes written.
    async fn run(&self, client: &mut Client, has_default: bool) -> Result<u64, StepError> {
        match self.task.start {
            Start::Attached if has_default => self.detach_plain(client).await?,
            Start::Attached => self.detach_concurrently(client).await?,
            Start::PendingDetach => self.finalize(client).await?,
            Start::Detached => {}
            Start::Vanished => {
                let outcome = ledger::Outcome {
                    error: Some(
                        "the table no longer exists; it was not dropped by partwarden".into(),
                    ),
                    ..Default::default()
                };
                ledger::record(&*client, &self.event(Step::Drop), Utc::now(), &outcome).await?;
                return Err(StepError::msg(
                    "detached earlier, but the table no longer exists (dropped by someone else?); recorded in the ledger, nothing left to do",
                ));
            }
        }
        fault::point("after_detach");
        match self.table.on_expiry {
            OnExpiry::Drop => {
                self.drop(client, None, None).await?;
                Ok(0)
            }
            OnExpiry::Detach => {
                self.move_to_archive_schema(client).await?;
                Ok(0)
            }
            OnExpiry::Archive => self.archive_and_drop(client).await,
        }
    }

    /// Runs a step that is not one transaction between a started and a finished ledger event
    /// (the bracket), recording the outcome `outcome_of` derives from its result; a crash in
    /// between leaves the step started, and the next pass looks at the catalog and the files.
    async fn bracket<T, E>(
        &self,
        client: &mut Client,
        step: Step,
        act: impl AsyncFnOnce(&mut Client) -> Result<T, E>,
        outcome_of: impl FnOnce(&Result<T, E>) -> ledger::Outcome,
    ) -> Result<Result<T, E>, StepError> {
        let id = ledger::start(&*client, &self.event(step)).await?;
        let result = act(client).await;
        ledger::finish(&*client, id, &outcome_of(&result)).await?;
        Ok(result)
    }

    async fn detach_concurrently(&self, client: &mut Client) -> Result<(), StepError> {
        let sql = sql::detach(self.parent, &self.task.partition, true);
        // Its wait for older transactions does not block writers, so it runs without the short
        // lock_timeout (which would cancel it half way and leave it pending), bounded by
        // statement_timeout instead.
        let detach = async |client: &mut Client| {
            client.batch_execute("SET lock_timeout = 0").await?;
            let r = client.batch_execute(&sql).await;
            client.batch_execute("RESET lock_timeout").await?;
            r
        };
        let result = self
            .bracket(client, Step::Detach, detach, |r| ledger::Outcome {
                error: r.as_ref().err().map(error_text),
                ..Default::default()
            })
            .await?;
        result.map_err(|e| StepError::Failed {
            message: format!(
                "DETACH CONCURRENTLY: {} (if it was interrupted, the partition is pending detach and the next pass finalizes it)",
                error_text(&e)
            ),
            source: Some(e),
        })?;
        tracing::info!(partition = %self.task.partition, "detached concurrently");
        Ok(())
    }

    async fn detach_plain(&self, client: &mut Client) -> Result<(), StepError> {
        let sql = sql::detach(self.parent, &self.task.partition, false);
        self.transaction(client, self.policy, "detach", Step::Detach, &[sql], None)
            .await
            .map(|_| ())
    }

    async fn finalize(&self, client: &mut Client) -> Result<(), StepError> {
        // FINALIZE waits for transactions older than the detach like the detach itself; it
        // holds no lock writers need, so it gets statement_timeout rather than lock_timeout.
        let long = DdlPolicy {
            lock_timeout: self.config.database.statement_timeout,
            retry_for: Duration::ZERO,
        };
        let sql = sql::finalize(self.parent, &self.task.partition);
        self.transaction(
            client,
            &long,
            "finalize detach",
            Step::Finalize,
            &[sql],
            None,
        )
        .await
        .map(|_| ())
    }

    async fn move_to_archive_schema(&self, client: &mut Client) -> Result<(), StepError> {
        let mut statements = Vec::new();
        if !schema_exists(client, ARCHIVE_SCHEMA).await? {
            statements.push(sql::create_archive_schema());
        }
        statements.push(sql::move_to_archive_schema(&self.task.partition));
        self.transaction(client, self.policy, "move", Step::Move, &statements, None)
            .await
            .map(|_| ())
    }

    /// Runs `statements` in one transaction with the ledger event, under `policy`.
    async fn transaction(
        &self,
        client: &mut Client,
        policy: &DdlPolicy,
        what: &str,
        step: Step,
        statements: &[String],
        outcome: Option<&ledger::Outcome>,
    ) -> Result<(), StepError> {
        let started_at = Utc::now();
        let event = self.event(step);
        let label = format!("{what} {}", self.task.partition);
        let default_outcome = ledger::Outcome::default();
        let outcome = outcome.unwrap_or(&default_outcome);
        ddl::with_lock_retry(
            client,
            policy,
            &label,
            &[self.parent.quoted(), self.task.partition.quoted()],
            async |tx: &Transaction<'_>| {
                for st in statements {
                    tx.execute(st.as_str(), &[])
                        .await
                        .map_err(|e| (st.clone(), e))?;
                }
                ledger::record(tx, &event, started_at, outcome)
                    .await
                    .map_err(|e| ("INSERT INTO partwarden.partition_events".to_string(), e))
            },
        )
        .await?;
        tracing::info!(partition = %self.task.partition, step = step.as_str(), "committed");
        Ok(())
    }

    async fn archive_and_drop(&self, client: &mut Client) -> Result<u64, StepError> {
        let dir = &self.config.maintenance.archive_dir;
        let timeout = self.config.maintenance.archive_timeout;
        let mut written = 0;
        // A complete archive from a pass that stopped after writing it is reused, but only if
        // it verifies and the table still holds exactly its rows; otherwise a new version is
        // written beside it (a published archive is never replaced).
        let mut reuse: Option<(archive::Paths, Manifest)> = None;
        if let Some(paths) = archive::latest(dir, self.parent, &self.task.partition) {
            let started_at = Utc::now();
            match self.verify_reusable(client, &paths).await {
                Ok(m) => {
                    let outcome = archive_outcome(&paths.data, &m);
                    ledger::record(&*client, &self.event(Step::Verify), started_at, &outcome)
                        .await?;
                    reuse = Some((paths, m));
                }
                Err(e) => {
                    tracing::warn!(partition = %self.task.partition, error = %e, "the existing archive cannot be reused; writing a new version beside it");
                }
            }
        }
        let (paths, manifest) = match reuse {
            Some(v) => v,
            None => {
                // The data file of a write interrupted before its manifest is this table's
                // own leftover when the ledger's last step for it is an unfinished archive.
                let reclaim = ledger::in_flight(&*client, self.parent)
                    .await?
                    .iter()
                    .any(|l| {
                        l.partition == self.task.partition
                            && l.last_step == Step::Archive
                            && !l.last_finished
                    });
                let paths = archive::next_version(dir, self.parent, &self.task.partition, reclaim)
                    .map_err(|e| {
                        StepError::msg(format!(
                            "archive failed, the table stays detached and intact: {e}"
                        ))
                    })?;
                let src = archive::Source {
                    table: self.parent,
                    partition: &self.task.partition,
                    lower: self.task.lower,
                    upper: self.task.upper,
                    key: self.table.partition_key.as_str(),
                };
                let write =
                    async |client: &mut Client| archive::write(client, &src, &paths, timeout).await;
                let result = self
                    .bracket(client, Step::Archive, write, |r| {
                        result_outcome(&paths.data, r)
                    })
                    .await?;
                let m = result.map_err(|e| {
                    StepError::msg(format!(
                        "archive failed, the table stays detached and intact: {e}"
                    ))
                })?;
                written = m.compressed_bytes;
                fault::point("after_archive");

                let verify = async |client: &mut Client| {
                    archive::verify(&*client, &paths, &self.task.partition).await
                };
                let result = self
                    .bracket(client, Step::Verify, verify, |r| {
                        result_outcome(&paths.data, r)
                    })
                    .await?;
                let m = result.map_err(|e| {
                    StepError::msg(format!(
                        "archive did not verify, the table stays detached and intact: {e}"
                    ))
                })?;
                (paths, m)
            }
        };
        fault::point("after_verify");

        if let Some(cmd) = &self.config.maintenance.archive_command {
            let shipped = ledger::finished_since_detach(
                &*client,
                self.parent,
                &self.task.partition,
                Step::Ship,
                Some(&manifest.sha256),
            )
            .await?;
            if !shipped {
                let timeout = self.config.maintenance.archive_command_timeout;
                let database = &self.config.database;
                let ship = async |_: &mut Client| {
                    run_archive_command(cmd, &paths.data, timeout, database).await?;
                    run_archive_command(cmd, &paths.manifest, timeout, database).await
                };
                let result = self
                    .bracket(client, Step::Ship, ship, |r| ledger::Outcome {
                        error: r.as_ref().err().cloned(),
                        ..archive_outcome(&paths.data, &manifest)
                    })
                    .await?;
                result.map_err(|e| StepError::msg(format!("archive_command failed, the table stays detached and is retried next pass: {e}")))?;
            }
        }
        fault::point("after_ship");
        fault::pause("before_drop").await;
        self.drop(
            client,
            Some(&manifest),
            Some(archive_outcome(&paths.data, &manifest)),
        )
        .await?;
        Ok(written)
    }

    /// Checks that an archive found from an earlier pass can stand for the table: the file
    /// verifies against its manifest, and the table's content digest (read now, without a
    /// lock; the drop checks again under its own) is the manifest's.
    async fn verify_reusable(
        &self,
        client: &mut Client,
        paths: &archive::Paths,
    ) -> Result<Manifest, StepError> {
        let m = archive::verify(&*client, paths, &self.task.partition).await?;
        let Some(expected) = &m.content_digest else {
            return Err(StepError::msg(
                "its manifest has no content digest (written by an older partwarden)",
            ));
        };
        let timeout = self.config.maintenance.archive_timeout;
        let tx = client
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await?;
        tx.batch_execute(&archive::statement_timeout_sql(timeout))
            .await?;
        let (_, digest) = archive::table_digest(&tx, &self.task.partition).await?;
        tx.commit().await?;
        if &digest != expected {
            return Err(StepError::msg(format!(
                "the table changed after {} was written (content digest {digest}, archive {expected})",
                paths.data.display()
            )));
        }
        Ok(m)
    }

    /// Drops the detached table in one transaction that first locks it and, when an archive is
    /// given, checks under that lock that the table's content digest is still the archive's.
    /// A table that changed is kept: the mismatch is recorded in the ledger as a failed
    /// `verify` (so `--check` reports it as critical) and the next pass writes a new archive
    /// version beside the old one.
    async fn drop(
        &self,
        client: &mut Client,
        archived: Option<&Manifest>,
        outcome: Option<ledger::Outcome>,
    ) -> Result<(), StepError> {
        let p = self.task.partition.quoted();
        let started_at = Utc::now();
        let event = self.event(Step::Drop);
        let label = format!("drop {}", self.task.partition);
        let lock = sql::lock(&self.task.partition);
        let count = format!("SELECT count(*) FROM {p}");
        let drop = sql::drop(&self.task.partition);
        let timeout = archive::statement_timeout_sql(self.config.maintenance.archive_timeout);
        let base = outcome.unwrap_or_default();
        let checked = ddl::with_lock_retry(
            client,
            self.policy,
            &label,
            std::slice::from_ref(&p),
            async |tx: &Transaction<'_>| {
                tx.execute(lock.as_str(), &[]).await.map_err(|e| (lock.clone(), e))?;
                let n = match archived {
                    Some(m) => {
                        tx.batch_execute(&timeout).await.map_err(|e| (timeout.clone(), e))?;
                        let (n, digest) = match archive::table_digest(tx, &self.task.partition).await {
                            Ok(v) => v,
                            Err(archive::ArchiveError::Db { source, .. }) => {
                                return Err((format!("COPY {p} TO STDOUT"), source));
                            }
                            Err(e) => return Ok(Err(e.to_string())),
                        };
                        if m.content_digest.as_deref() != Some(digest.as_str()) {
                            return Ok(Err(format!(
                                "the detached table changed after its archive was written ({n} rows now, {} archived; content digest {digest}, archive {}); not dropped, the next pass archives it again as a new version",
                                m.rows,
                                m.content_digest.as_deref().unwrap_or("none")
                            )));
                        }
                        n as i64
                    }
                    None => tx
                        .query_one(count.as_str(), &[])
                        .await
                        .map_err(|e| (count.clone(), e))?
                        .get(0),
                };
                tx.execute(drop.as_str(), &[]).await.map_err(|e| (drop.clone(), e))?;
                let outcome = ledger::Outcome {
                    rows: Some(n),
                    ..base.clone()
                };
                ledger::record(tx, &event, started_at, &outcome)
                    .await
                    .map_err(|e| ("INSERT INTO partwarden.partition_events".to_string(), e))?;
                Ok(Ok(()))
            },
        )
        .await?;
        if let Err(why) = checked.0 {
            let outcome = ledger::Outcome {
                error: Some(why.clone()),
                ..base.clone()
            };
            ledger::record(&*client, &self.event(Step::Verify), started_at, &outcome).await?;
            return Err(StepError::msg(why));
        }
        tracing::info!(partition = %self.task.partition, "dropped");
        Ok(())
    }
}

/// The ledger outcome of an archive write or verification.
fn result_outcome(
    data: &Path,
    result: &Result<Manifest, archive::ArchiveError>,
) -> ledger::Outcome {
    match result {
        Ok(m) => archive_outcome(data, m),
        Err(e) => ledger::Outcome {
            error: Some(e.to_string()),
            ..Default::default()
        },
    }
}

fn archive_outcome(data: &Path, m: &Manifest) -> ledger::Outcome {
    ledger::Outcome {
        rows: Some(m.rows as i64),
        archive_path: Some(data.display().to_string()),
        checksum: Some(m.sha256.clone()),
        error: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_errors_say_whether_to_try_again() {
        let lock = StepError::Ddl(ddl::DdlError::LockTimeout {
            label: "detach".into(),
            attempts: 3,
            elapsed: Duration::from_secs(1),
            blockers: Vec::new(),
        });
        assert!(lock.is_transient());
        assert!(lock.code().is_none());
        let changed = StepError::msg("the detached table changed after its archive was written");
        assert!(!changed.is_transient());
        assert_eq!(
            changed.to_string(),
            "the detached table changed after its archive was written"
        );
    }
}
