//! The executor's file steps: the archive of a run (written, or an earlier one reused when it
//! verifies and holds exactly the table's rows), its verification, its upload to an object
//! store (verified there), and archive_command; each bracketed by a started and a finished
//! ledger event.

use chrono::Utc;

use super::{Archived, Done, Executor};
use crate::archive::{self, ArchiveError, Manifest, Paths};
use crate::ledger::{self, Step as Event};
use crate::step::{ArchiveWork, Record, Step, StepError};

impl Executor<'_> {
    pub(super) async fn archive(
        &mut self,
        step: &Step,
        a: &ArchiveWork,
    ) -> Result<Done, StepError> {
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

    pub(super) async fn upload(&mut self, step: &Step) -> Result<Done, StepError> {
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

    pub(super) async fn verify(&mut self, step: &Step) -> Result<Done, StepError> {
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

    pub(super) async fn ship(&mut self, step: &Step, command: &str) -> Result<Done, StepError> {
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

pub(super) fn archive_outcome(paths: &Paths, m: &Manifest) -> ledger::Outcome {
    ledger::Outcome {
        rows: Some(m.rows as i64),
        archive_path: Some(paths.data.display().to_string()),
        checksum: Some(m.sha256.clone()),
        error: None,
    }
}
