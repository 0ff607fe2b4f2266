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
use super::{ArchiveWork, Bound, Record, Statement, Step, Wait, Work};
use crate::archive::{self, ArchiveError, Manifest, Paths};
use crate::catalog::RelName;
use crate::config::Config;
use crate::db::error_text;
use crate::ledger::{self, Step as Event};

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
                tracing::info!(step = %step.label, attempts, rows, "committed");
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

    async fn archive(&mut self, step: &Step, a: &ArchiveWork) -> Result<Done, StepError> {
        let entry = match &step.record {
            Record::Ledger(e) => e.clone(),
            _ => {
                return Err(StepError::Refused(
                    "an archive step records a ledger event".into(),
                ));
            }
        };
        if let Some(paths) = &a.reuse {
            let started_at = Utc::now();
            match self.reusable(a, paths).await {
                Ok(m) => {
                    let verify = entry.with_step(Event::Verify);
                    let outcome = archive_outcome(paths, &m);
                    ledger::record(&*self.client, &verify.event(), started_at, &outcome).await?;
                    let rows = m.rows;
                    self.archived = Some(Archived {
                        partition: a.partition.clone(),
                        paths: paths.clone(),
                        manifest: m,
                        verified: true,
                    });
                    return Ok(Done {
                        rows,
                        ..Done::default()
                    });
                }
                Err(e) => {
                    tracing::warn!(partition = %a.partition, error = %e, "the existing archive cannot be reused; writing a new version beside it");
                }
            }
        }
        // The data file of a write interrupted before its manifest is this table's own
        // leftover when the ledger's last step for it is an unfinished archive.
        let reclaim = ledger::in_flight(&*self.client, &a.table)
            .await?
            .iter()
            .any(|l| {
                l.partition == a.partition && l.last_step == Event::Archive && !l.last_finished
            });
        let mut paths = archive::next_version(&a.dir, &a.table, &a.partition, reclaim)?;
        // With an object store, a version whose name is taken there is not free either.
        if let Some(store) = self.store()? {
            while store.exists(&store.key(&paths.data)).await?
                || store.exists(&store.key(&paths.parquet)).await?
                || store.exists(&store.key(&paths.manifest)).await?
            {
                paths = archive::version_paths(&a.dir, &a.table, &a.partition, paths.version + 1);
            }
        }
        let src = archive::Source {
            table: &a.table,
            partition: &a.partition,
            lower: a.lower,
            upper: a.upper,
            key: &a.key,
        };
        let id = ledger::start(&*self.client, &entry.event()).await?;
        let result = archive::write(
            self.client,
            &src,
            &paths,
            self.config.maintenance.archive_timeout,
            a.format,
        )
        .await;
        ledger::finish(&*self.client, id, &result_outcome(&paths, &result)).await?;
        let m = result?;
        let done = Done {
            rows: m.rows,
            archive_bytes: m.compressed_bytes,
        };
        self.archived = Some(Archived {
            partition: a.partition.clone(),
            paths,
            manifest: m,
            verified: false,
        });
        crate::fault::point("after_archive");
        Ok(done)
    }

    /// Checks that an archive found from an earlier pass can stand for the table: the file
    /// verifies against its manifest, and the table's content digest (read now, without a
    /// lock; the drop checks again under its own) is the manifest's.
    async fn reusable(&mut self, a: &ArchiveWork, paths: &Paths) -> Result<Manifest, StepError> {
        let m = archive::verify(&*self.client, paths, &a.partition).await?;
        let Some(expected) = &m.content_digest else {
            return Err(StepError::Refused(
                "its manifest has no content digest (written by an older partwarden)".into(),
            ));
        };
        let tx = self
            .client
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await?;
        tx.batch_execute(&archive::statement_timeout_sql(
            self.config.maintenance.archive_timeout,
        ))
        .await?;
        let (_, digest) = archive::table_digest(&tx, &a.partition).await?;
        tx.commit().await?;
        if &digest != expected {
            return Err(StepError::Refused(format!(
                "the table changed after {} was written (content digest {digest}, archive {expected})",
                paths.data.display()
            )));
        }
        // In the store, the version must be absent (to be uploaded) or this very archive.
        if let Some(store) = self.store()? {
            let local = paths.dir.join(&m.file);
            let data = store.key(&local);
            let manifest = store.key(&paths.manifest);
            let scratch = scratch(paths);
            let checked = async {
                if store.exists(&manifest).await? {
                    // Published there: both objects must verify in the store.
                    store.verify(&data, &manifest, &m, &scratch).await
                } else if store.holds(&data, &local, &scratch).await? == Some(false) {
                    // A data object without a manifest that is not this file.
                    Err(archive::ArchiveError::Mismatch {
                        path: store.url_of(&data).into(),
                        message: "an object with other content exists under this key".into(),
                    })
                } else {
                    Ok(())
                }
            }
            .await;
            let _ = std::fs::remove_dir_all(&scratch);
            checked.map_err(|e| {
                StepError::Refused(format!("its copy in the store cannot be this archive: {e}"))
            })?;
        }
        Ok(m)
    }

    /// The object store of `archive_dir = "s3://..."`, if there is one.
    fn store(&self) -> Result<Option<archive::store::Store>, StepError> {
        match &self.config.maintenance.archive_store {
            Some(c) => Ok(Some(archive::store::Store::open(c)?)),
            None => Ok(None),
        }
    }

    async fn upload(&mut self, step: &Step) -> Result<Done, StepError> {
        // Written (and, when reused, verified) locally; it is verified where it matters, in
        // the store, below.
        let Some(a) = self.archived.clone() else {
            return Err(StepError::Refused("no archive to upload".into()));
        };
        let Some(store) = self.store()? else {
            return Err(StepError::Refused("no object store is configured".into()));
        };
        let id = match &step.record {
            Record::Ledger(e) => Some(ledger::start(&*self.client, &e.event()).await?),
            _ => None,
        };
        let scratch = scratch(&a.paths);
        let client = &*self.client;
        let result = async {
            archive::create_private_dir(&scratch)?;
            let published = store.publish(&a.paths, &a.manifest, &scratch).await?;
            // And as many rows as the table (the drop compares the content under its lock).
            let count: i64 = client
                .query_one(
                    &format!("SELECT count(*) FROM {}", a.partition.quoted()),
                    &[],
                )
                .await
                .map_err(|source| archive::ArchiveError::Db {
                    what: "counting the table's rows",
                    source,
                })?
                .get(0);
            if count as u64 != a.manifest.rows {
                return Err(archive::ArchiveError::Mismatch {
                    path: published.0.clone().into(),
                    message: format!(
                        "archive has {} rows, table {} has {count}",
                        a.manifest.rows, a.partition
                    ),
                });
            }
            Ok(published)
        }
        .await;
        let _ = std::fs::remove_dir_all(&scratch);
        if let Some(id) = id {
            let outcome = match &result {
                Ok((url, _)) => ledger::Outcome {
                    archive_path: Some(url.clone()),
                    ..archive_outcome(&a.paths, &a.manifest)
                },
                Err(e) => ledger::Outcome {
                    error: Some(e.to_string()),
                    ..Default::default()
                },
            };
            ledger::finish(&*self.client, id, &outcome).await?;
        }
        let (url, written) = result?;
        tracing::info!(object = %url, written, "archive in the object store, verified there");
        self.archived = Some(Archived {
            verified: true,
            ..a.clone()
        });
        Ok(Done {
            rows: a.manifest.rows,
            ..Done::default()
        })
    }

    async fn verify(&mut self, step: &Step) -> Result<Done, StepError> {
        let Some(a) = self.archived.clone() else {
            return Err(StepError::Refused(
                "no archive was written to verify".into(),
            ));
        };
        if a.verified {
            return Ok(Done {
                rows: a.manifest.rows,
                ..Done::default()
            });
        }
        let id = match &step.record {
            Record::Ledger(e) => Some(ledger::start(&*self.client, &e.event()).await?),
            _ => None,
        };
        let result = archive::verify(&*self.client, &a.paths, &a.partition).await;
        if let Some(id) = id {
            ledger::finish(&*self.client, id, &result_outcome(&a.paths, &result)).await?;
        }
        let m = result?;
        let rows = m.rows;
        self.archived = Some(Archived {
            manifest: m,
            verified: true,
            ..a
        });
        Ok(Done {
            rows,
            ..Done::default()
        })
    }

    async fn ship(&mut self, step: &Step, command: &str) -> Result<Done, StepError> {
        let Some(a) = self.archived.clone().filter(|a| a.verified) else {
            return Err(StepError::Refused("no verified archive to ship".into()));
        };
        let Record::Ledger(entry) = &step.record else {
            return Err(StepError::Refused(
                "a ship step records a ledger event".into(),
            ));
        };
        let shipped = ledger::finished_since_detach(
            &*self.client,
            &entry.table,
            &a.partition,
            Event::Ship,
            Some(&a.manifest.sha256),
        )
        .await?;
        if shipped {
            return Ok(Done { ..Done::default() });
        }
        let timeout = self.config.maintenance.archive_command_timeout;
        let database = &self.config.database;
        let id = ledger::start(&*self.client, &entry.event()).await?;
        let result = async {
            crate::archive::ship::run(command, &a.paths.data, timeout, database).await?;
            crate::archive::ship::run(command, &a.paths.manifest, timeout, database).await
        }
        .await;
        let outcome = ledger::Outcome {
            error: result.as_ref().err().map(ToString::to_string),
            ..archive_outcome(&a.paths, &a.manifest)
        };
        ledger::finish(&*self.client, id, &outcome).await?;
        result?;
        Ok(Done { ..Done::default() })
    }
}

/// A private working directory beside an archive's files, for what is read back from a store.
fn scratch(paths: &Paths) -> std::path::PathBuf {
    paths.dir.join(format!(".store-{}", std::process::id()))
}

/// The ledger outcome of an archive write or verification.
fn result_outcome(paths: &Paths, result: &Result<Manifest, ArchiveError>) -> ledger::Outcome {
    match result {
        Ok(m) => archive_outcome(paths, m),
        Err(e) => ledger::Outcome {
            error: Some(e.to_string()),
            ..Default::default()
        },
    }
}

fn archive_outcome(paths: &Paths, m: &Manifest) -> ledger::Outcome {
    ledger::Outcome {
        rows: Some(m.rows as i64),
        archive_path: Some(paths.data.display().to_string()),
        checksum: Some(m.sha256.clone()),
        error: None,
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
