//! The executor: the only place partwarden changes a schema or writes an archive.
//!
//! A transactional step runs in its own transaction under `SET LOCAL lock_timeout`, so a
//! statement that would queue behind a long transaction (and make every later query of the
//! application queue behind *it*) gives up after `lock_timeout` instead. A lock timeout
//! (SQLSTATE 55P03) or deadlock (40P01) rolls the whole step back, logs who held the lock, and
//! retries with capped exponential backoff and jitter for `lock_retry_for`. One step per
//! transaction means a step that gives up leaves nothing half made, and a blocked step never
//! undoes the steps before it. Its bookkeeping (ledger event, migration row) is written in
//! the same transaction, so the bookkeeping and the catalog cannot disagree.
//!
//! A statement that cannot run in a transaction runs with `lock_timeout` off under its own
//! `statement_timeout`, bracketed by a started and a finished ledger event when it records
//! one; so do the file steps (archive, verify, ship). A crash in between leaves the event
//! started, and the next pass looks at the catalog and the files to see how far it got.

use std::time::{Duration, Instant};

use chrono::Utc;
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, Transaction};

use super::error::{Blocker, StepError, blockers_text};
use super::{Bound, Record, Statement, Step, Wait, Work};
use crate::archive::{self, ArchiveError, Manifest, Paths};
use crate::catalog::RelName;
use crate::config::Config;
use crate::db::error_text;
use crate::ledger::{self, Step as Event};

mod files;

use files::archive_outcome;

/// Backoff after the first lock timeout; doubled after each further one.
const BACKOFF_START: Duration = Duration::from_millis(100);
/// Longest single wait between attempts, so a released lock is noticed within seconds.
const BACKOFF_CAP: Duration = Duration::from_secs(5);

/// What a step did.
#[derive(Clone, Debug, Default)]
pub(crate) struct Done {
    /// Rows its statements reported (moved, counted, loaded), or the archive's rows.
    pub rows: u64,
    /// Compressed bytes of an archive written.
    pub archive_bytes: u64,
}

/// The archive of this run: written or found by an archive step, read back by a verify step,
/// compared with the table by `SameAsArchive`, shipped by a ship step.
#[derive(Clone, Debug)]
struct Archived {
    partition: RelName,
    paths: Paths,
    manifest: Manifest,
    verified: bool,
}

/// Runs steps on one session, in order. An executor lives for one plan (one expiry, one
/// bootstrap, one restore): the archive a step writes is what later steps verify, ship and
/// compare with.
pub(crate) struct Executor<'a> {
    client: &'a mut Client,
    config: &'a Config,
    archived: Option<Archived>,
}

/// Why a transaction's body stopped.
enum Abort {
    /// A statement failed (retried when it is a lock timeout or deadlock).
    Db(String, tokio_postgres::Error),
    /// A check failed: roll back, do not retry.
    Refused(StepError),
    /// The table's content digest is not the archive's: roll back, keep the table, record a
    /// failed verify.
    Changed(String),
}

impl<'a> Executor<'a> {
    /// An executor on `client` with the limits of `config`.
    pub fn new(client: &'a mut Client, config: &'a Config) -> Executor<'a> {
        Executor {
            client,
            config,
            archived: None,
        }
    }

    /// The local files of the archive of this run (data and manifest), if there is one.
    pub fn spooled(&self) -> Vec<std::path::PathBuf> {
        self.archived
            .iter()
            .flat_map(|a| [a.paths.dir.join(&a.manifest.file), a.paths.manifest.clone()])
            .collect()
    }

    /// Runs one step. On failure, a transactional step has left nothing behind.
    pub async fn run(&mut self, step: &Step) -> Result<Done, StepError> {
        let result = match &step.work {
            Work::Transaction { statements, wait } => {
                self.transaction(step, statements, *wait).await
            }
            Work::Concurrently { sql, bound } => self.concurrently(step, sql, *bound).await,
            Work::Archive(a) => self.archive(step, a).await,
            Work::Verify => self.verify(step).await,
            Work::Upload => self.upload(step).await,
            Work::Ship { command } => self.ship(step, command).await,
        };
        match (&step.if_it_fails, result) {
            (Some(meaning), Err(e)) => Err(StepError::Meaning {
                meaning: meaning.clone(),
                source: Box::new(e),
            }),
            (_, r) => r,
        }
    }

    async fn transaction(
        &mut self,
        step: &Step,
        statements: &[Statement],
        wait: Wait,
    ) -> Result<Done, StepError> {
        let db = &self.config.database;
        let (lock_timeout, retry_for) = match wait {
            Wait::Lock => (db.lock_timeout, db.lock_retry_for),
            Wait::Statement => (db.statement_timeout, Duration::ZERO),
        };
        let started_at = Utc::now();
        let archived = self.archived.as_ref().filter(|a| a.verified);
        let archive_timeout = self.config.maintenance.archive_timeout;
        let record = &step.record;
        let run = with_lock_retry(
            self.client,
            lock_timeout,
            retry_for,
            &step.label,
            &step.lock_relations,
            async |tx: &Transaction<'_>| {
                let mut rows = 0u64;
                let mut outcome = ledger::Outcome::default();
                for st in statements {
                    let text = st.sql();
                    let db = |e| Abort::Db(text.clone(), e);
                    match st {
                        Statement::Sql(sql) => rows += tx.execute(sql.as_str(), &[]).await.map_err(db)?,
                        Statement::Batch(_) => tx.batch_execute(&text).await.map_err(db)?,
                        Statement::Script { name, text } => tx
                            .batch_execute(text)
                            .await
                            .map_err(|e| Abort::Db(name.clone(), e))?,
                        Statement::Count(_) => {
                            let n: i64 = tx.query_one(text.as_str(), &[]).await.map_err(db)?.get(0);
                            rows += n as u64;
                        }
                        Statement::SameAsArchive(t) => {
                            let Some(a) = archived else {
                                return Err(Abort::Refused(StepError::Refused(format!(
                                    "{t}: no verified archive to compare it with; not dropped"
                                ))));
                            };
                            let timeout = archive::statement_timeout_sql(archive_timeout);
                            tx.batch_execute(&timeout).await.map_err(|e| Abort::Db(timeout.clone(), e))?;
                            let (n, digest) = match archive::table_digest(tx, t).await {
                                Ok(v) => v,
                                Err(ArchiveError::Db { source, .. }) => return Err(db(source)),
                                Err(e) => return Err(Abort::Refused(e.into())),
                            };
                            let m = &a.manifest;
                            if m.content_digest.as_deref() != Some(digest.as_str()) {
                                return Err(Abort::Changed(format!(
                                    "the detached table changed after its archive was written ({n} rows now, {} archived; content digest {digest}, archive {}); not dropped, the next pass archives it again as a new version",
                                    m.rows,
                                    m.content_digest.as_deref().unwrap_or("none")
                                )));
                            }
                            rows += n;
                            outcome = archive_outcome(&a.paths, m);
                        }
                        Statement::Load {
                            manifest_path,
                            manifest,
                            into,
                        } => {
                            rows += match archive::copy_into(tx, manifest_path, manifest, into).await {
                                Ok(n) => n,
                                Err(ArchiveError::Db { source, .. }) => return Err(db(source)),
                                Err(e) => return Err(Abort::Refused(e.into())),
                            };
                            outcome.archive_path = archive::data_path(manifest_path, manifest)
                                .ok()
                                .map(|p| p.display().to_string());
                            outcome.checksum = Some(manifest.sha256.clone());
                        }
                    }
                }
                match record {
                    Record::Nothing => {}
                    Record::Ledger(entry) => {
                        let outcome = ledger::Outcome {
                            rows: Some(rows as i64),
                            ..outcome
                        };
                        ledger::record(tx, &entry.event(), started_at, &outcome)
                            .await
                            .map_err(|e| Abort::Db("INSERT INTO partwarden.partition_events".into(), e))?;
                    }
                    Record::Migration {
                        version,
                        name,
                        checksum,
                        adopted,
                    } => {
                        tx.execute(
                            "INSERT INTO partwarden.schema_migrations (version, name, checksum, adopted) VALUES ($1, $2, $3, $4)",
                            &[version, name, checksum, adopted],
                        )
                        .await
                        .map_err(|e| Abort::Db("INSERT INTO partwarden.schema_migrations".into(), e))?;
                    }
                }
                Ok(rows)
            },
        )
        .await;
        match run {
            Ok((rows, attempts)) => {
                let ms = (Utc::now() - started_at).num_milliseconds();
                tracing::info!(step = %step.label, attempts, rows, ms, "committed");
                Ok(Done {
                    rows,
                    ..Done::default()
                })
            }
            Err(Abort::Changed(why)) => {
                // Kept: the mismatch goes into the ledger as a failed verify, which `--check`
                // reports as critical until a new archive version is written and verified.
                if let Record::Ledger(entry) = &step.record {
                    let outcome = ledger::Outcome {
                        error: Some(why.clone()),
                        ..self
                            .archived
                            .as_ref()
                            .map(|a| archive_outcome(&a.paths, &a.manifest))
                            .unwrap_or_default()
                    };
                    let verify = entry.with_step(Event::Verify);
                    ledger::record(&*self.client, &verify.event(), started_at, &outcome).await?;
                }
                Err(StepError::Refused(why))
            }
            Err(Abort::Refused(e)) => Err(e),
            Err(Abort::Db(statement, source)) => Err(StepError::Statement {
                label: step.label.clone(),
                statement,
                source,
            }),
        }
    }

    async fn concurrently(
        &mut self,
        step: &Step,
        sql: &str,
        bound: Bound,
    ) -> Result<Done, StepError> {
        let client = &mut *self.client;
        let started = match &step.record {
            Record::Ledger(entry) => Some(ledger::start(&*client, &entry.event()).await?),
            _ => None,
        };
        let ms = |d: Duration| format!("{}ms", d.as_millis());
        let session = ms(self.config.database.statement_timeout);
        let session_lock = ms(self.config.database.lock_timeout);
        let result = async {
            client
                .execute(
                    "SELECT set_config('lock_timeout', '0', false), set_config('statement_timeout', $1, false)",
                    &[&ms(bound.duration(self.config))],
                )
                .await?;
            let r = client.batch_execute(sql).await;
            client
                .execute(
                    "SELECT set_config('statement_timeout', $1, false), set_config('lock_timeout', $2, false)",
                    &[&session, &session_lock],
                )
                .await?;
            Ok::<_, tokio_postgres::Error>(r)
        }
        .await?;
        if let Some(id) = started {
            let outcome = ledger::Outcome {
                error: result.as_ref().err().map(error_text),
                ..Default::default()
            };
            ledger::finish(&*client, id, &outcome).await?;
        }
        result.map_err(|source| StepError::Statement {
            label: step.label.clone(),
            statement: sql.to_string(),
            source,
        })?;
        tracing::info!(step = %step.label, "done");
        Ok(Done { ..Done::default() })
    }
}

/// Runs `body` in a transaction with `SET LOCAL lock_timeout`, committing when it succeeds and
/// retrying the whole transaction on lock timeout or deadlock for `retry_for`. Returns the
/// body's value and the attempts made.
async fn with_lock_retry<T>(
    client: &mut Client,
    lock_timeout: Duration,
    retry_for: Duration,
    label: &str,
    lock_relations: &[String],
    mut body: impl AsyncFnMut(&Transaction<'_>) -> Result<T, Abort>,
) -> Result<(T, u32), Abort> {
    let started = Instant::now();
    let mut backoff = BACKOFF_START;
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        let result = async {
            let tx = client
                .transaction()
                .await
                .map_err(|e| Abort::Db(String::new(), e))?;
            let timeout = format!("{}ms", lock_timeout.as_millis());
            tx.execute("SELECT set_config('lock_timeout', $1, true)", &[&timeout])
                .await
                .map_err(|e| Abort::Db(String::new(), e))?;
            // On error the transaction is dropped here, unfinished: rolled back.
            let value = body(&tx).await?;
            tx.commit()
                .await
                .map_err(|e| Abort::Db("COMMIT".into(), e))?;
            Ok::<T, Abort>(value)
        }
        .await;
        let e = match result {
            Ok(v) => return Ok((v, attempts)),
            Err(Abort::Db(statement, e)) => (statement, e),
            Err(other) => return Err(other),
        };
        let (statement, e) = e;
        let retryable = matches!(
            e.code(),
            Some(c) if *c == SqlState::LOCK_NOT_AVAILABLE || *c == SqlState::T_R_DEADLOCK_DETECTED
        );
        if !retryable {
            return Err(Abort::Db(statement, e));
        }
        if e.code() == Some(&SqlState::LOCK_NOT_AVAILABLE) {
            crate::metrics::add(&crate::metrics::LOCK_TIMEOUTS, 1);
        }
        let blockers = find_blockers(client, lock_relations).await;
        let elapsed = started.elapsed();
        if elapsed + backoff > retry_for {
            return Err(Abort::Refused(StepError::LockTimeout {
                label: label.to_string(),
                attempts,
                elapsed,
                blockers,
            }));
        }
        tracing::warn!(
            step = label,
            attempt = attempts,
            retry_in_ms = backoff.as_millis() as u64,
            blocked_by = %blockers_text(&blockers).trim_start_matches("; blocked by "),
            "lock not available within lock_timeout; rolled back, will retry"
        );
        tokio::time::sleep(jitter(backoff)).await;
        backoff = (backoff * 2).min(BACKOFF_CAP);
    }
}

/// Half to full `d`, so that several waiters do not retry in lock step.
fn jitter(d: Duration) -> Duration {
    let f: f64 = 0.5 + rand::random::<f64>() * 0.5;
    d.mul_f64(f)
}

/// Sessions holding granted locks on `relations`, oldest transaction first. Best effort: a
/// failure to look is logged and yields an empty list.
async fn find_blockers(client: &Client, relations: &[String]) -> Vec<Blocker> {
    if relations.is_empty() {
        return Vec::new();
    }
    let rows = client
        .query(
            "SELECT a.pid, coalesce(a.application_name, ''), \
                    coalesce(extract(epoch FROM now() - a.xact_start)::float8, 0), \
                    l.mode, left(regexp_replace(coalesce(a.query, ''), '\\s+', ' ', 'g'), 200) \
             FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid \
             WHERE l.granted AND l.locktype = 'relation' AND a.pid <> pg_backend_pid() \
               AND l.relation IN (SELECT to_regclass(r) FROM unnest($1::text[]) AS r) \
             ORDER BY a.xact_start NULLS LAST, a.pid",
            &[&relations],
        )
        .await;
    match rows {
        Ok(rows) => rows
            .iter()
            .map(|r| Blocker {
                pid: r.get(0),
                application_name: r.get(1),
                xact_age_secs: r.get(2),
                mode: r.get(3),
                query: r.get(4),
            })
            .collect(),
        Err(e) => {
            tracing::debug!(error = %error_text(&e), "could not look up lock holders");
            Vec::new()
        }
    }
}
