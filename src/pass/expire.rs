//! Expiries of a pass: from wherever each stands (attached, pending detach, detached,
//! vanished), detach (CONCURRENTLY when the table has no DEFAULT partition, bounded by
//! statement_timeout; plain DETACH under lock_timeout otherwise) → archive (a new version
//! beside any that no longer matches) → verify (size, SHA-256, rows, content digest) →
//! archive_command, if configured → drop (in one transaction that locks the detached table,
//! re-reads it and checks its content digest is the archive's). `on_expiry = "detach"` moves
//! the table to `partwarden_archive` instead; `on_expiry = "drop"` drops without an archive.
//! Every step is in the ledger.

use super::*;

use crate::expiry::{Start, Task, Unfinished};
use crate::ledger::Entry;
use crate::step::{ArchiveWork, Bound, Record, Statement, Step as PlanStep, Wait, Work};

pub(super) async fn expire_table(
    client: &mut Client,
    ctx: &mut Ctx<'_>,
    table: &TableConfig,
    snap: &TableSnapshot,
    tr: &mut TableReport,
    budget: &mut usize,
) {
    let parent = RelName::from(&table.name);
    let gathered = async {
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
        Ok::<_, tokio_postgres::Error>(unfinished)
    }
    .await;
    let unfinished = match gathered {
        Ok(v) => v,
        Err(e) => {
            tr.errors.push(format!(
                "reading the catalog and ledger: {}",
                error_text(&e)
            ));
            return;
        }
    };
    let plan = expiry::plan(table, snap, &unfinished, ctx.now, ctx.server_now, *budget);
    // max_expired_per_pass bounds the whole pass: what this table takes, the others do not get.
    *budget = budget.saturating_sub(plan.tasks.len());
    tr.notes.extend(plan.notes);
    let has_default = snap.default_partition().is_some();
    let archive_schema = if plan.tasks.is_empty() || table.on_expiry != OnExpiry::Detach {
        true
    } else {
        match schema_exists(&*client, ARCHIVE_SCHEMA).await {
            Ok(b) => b,
            Err(e) => {
                tr.errors
                    .push(format!("reading the catalog: {}", error_text(&e)));
                return;
            }
        }
    };
    // Nothing is detached that this pass cannot archive: a detached table holds rows the
    // application no longer sees, so an archive that then fails hides them until it works.
    let refused = if ctx.dry_run || table.on_expiry != OnExpiry::Archive {
        None
    } else {
        preflight_destination(client, ctx, &plan.tasks).await.err()
    };
    for task in &plan.tasks {
        if ctx.stop.load(Ordering::SeqCst) {
            tr.notes
                .push("stopping: the remaining expiries are left to the next pass".into());
            break;
        }
        if task.start == Start::Attached && table.on_expiry == OnExpiry::Archive && !ctx.dry_run {
            let why = match &refused {
                Some(why) => Some(why.clone()),
                None => preflight_partition(client, &task.partition).await.err(),
            };
            if let Some(why) = why {
                tr.errors.push(format!(
                    "{}: not detached, since its archive could not be finished: {why}",
                    task.partition
                ));
                continue;
            }
        }
        let expiry = Expiry::plan(ctx.config, table, task, has_default, archive_schema);
        if ctx.dry_run {
            let _ = writeln!(ctx.out, "{}", expiry.render(ctx.config));
            tr.expired.push(task.partition.to_string());
            continue;
        }
        match expiry.run(client, ctx.config).await {
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
                metrics::add(&metrics::EXPIRY_FAILURES, 1);
                tr.errors.push(format!("{}: {e}", task.partition));
            }
        }
    }
}

/// Whether the archives of `tasks` can be written now: the archive (or spool) directory is
/// created if missing and takes a probe file, has room for the partitions still attached
/// (their size on disk, an upper bound of their compressed archives), and the object store,
/// if any, takes a probe object.
async fn preflight_destination(
    client: &Client,
    ctx: &Ctx<'_>,
    tasks: &[Task],
) -> Result<(), String> {
    let attached: Vec<String> = tasks
        .iter()
        .filter(|t| t.start == Start::Attached)
        .map(|t| t.partition.quoted())
        .collect();
    if attached.is_empty() {
        return Ok(());
    }
    let m = &ctx.config.maintenance;
    let dir = &m.archive_dir;
    archive::create_private_dir(dir).map_err(|e| e.to_string())?;
    let probe = dir.join(format!(
        ".partwarden-preflight-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::File::create(&probe)
        .map_err(|e| format!("archive directory {} is not writable: {e}", dir.display()))?;
    let _ = std::fs::remove_file(&probe);
    let needed: i64 = client
        .query_one(
            "SELECT coalesce(sum(pg_relation_size(to_regclass(n))), 0)::bigint FROM unnest($1::text[]) n",
            &[&attached],
        )
        .await
        .map_err(|e| format!("reading the partitions' sizes: {}", error_text(&e)))?
        .get(0);
    let free = nix::sys::statvfs::statvfs(dir.as_path())
        .map(|s| s.blocks_available() * s.fragment_size())
        .unwrap_or(u64::MAX);
    if free < needed as u64 {
        return Err(format!(
            "archive directory {} has {} MiB free, the partitions due need up to {} MiB",
            dir.display(),
            free >> 20,
            (needed as u64) >> 20
        ));
    }
    if let Some(store) = &m.archive_store {
        let probed = match archive::store::Store::open(store) {
            Ok(s) => s.probe().await,
            Err(e) => Err(e),
        };
        probed.map_err(|e| format!("the archive store {} cannot be written: {e}", store.url()))?;
    }
    Ok(())
}

/// Whether this session may archive and then drop `partition`: it can read it (COPY) and its
/// role is its owner or a member of the owner (DROP).
async fn preflight_partition(client: &Client, partition: &RelName) -> Result<(), String> {
    let row = client
        .query_opt(
            "SELECT has_table_privilege(c.oid, 'SELECT'), pg_has_role(c.relowner, 'USAGE'), c.relowner::regrole::text \
             FROM pg_class c WHERE c.oid = to_regclass($1)",
            &[&partition.quoted()],
        )
        .await
        .map_err(|e| format!("reading its privileges: {}", error_text(&e)))?;
    let Some(row) = row else {
        return Ok(()); // gone: the expiry records it as vanished
    };
    let (read, own, owner): (bool, bool, String) = (row.get(0), row.get(1), row.get(2));
    if !read {
        return Err(format!(
            "partwarden's role may not read it (no SELECT privilege; owner {owner})"
        ));
    }
    if !own {
        return Err(format!(
            "partwarden's role may not drop it (owned by {owner}; make partwarden's role a member of it, or hand the table over)"
        ));
    }
    Ok(())
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

    pub fn drop(p: &RelName) -> String {
        format!("DROP TABLE {}", p.quoted())
    }
}

/// One expiry as steps: the detach steps from where it stands, then the steps that dispose of
/// the detached table.
struct Expiry<'a> {
    task: &'a Task,
    entry: Entry,
    detach: Vec<PlanStep>,
    dispose: Vec<PlanStep>,
}

/// Whether the expiry archives (its steps include an upload).
fn table_archives(e: &Expiry<'_>) -> bool {
    e.dispose.iter().any(|s| matches!(s.work, Work::Upload))
}

impl<'a> Expiry<'a> {
    fn plan(
        config: &Config,
        table: &TableConfig,
        task: &'a Task,
        has_default: bool,
        archive_schema_exists: bool,
    ) -> Expiry<'a> {
        let parent = RelName::from(&table.name);
        let p = &task.partition;
        let entry = Entry {
            table: parent.clone(),
            partition: Some(p.clone()),
            lower: task.lower,
            upper: task.upper,
            step: Step::Detach,
        };
        let ledger = |step: Step| Record::Ledger(entry.with_step(step));
        let locks = vec![parent.quoted(), p.quoted()];
        let mut detach = Vec::new();
        match task.start {
            Start::Attached if has_default => detach.push(
                PlanStep::transaction(
                    format!("detach {p}"),
                    "a plain DETACH, under lock_timeout: the table has a DEFAULT partition, which DETACH CONCURRENTLY refuses",
                    vec![Statement::Sql(sql::detach(&parent, p, false))],
                )
                .recording(ledger(Step::Detach))
                .locking(locks.clone()),
            ),
            Start::Attached => detach.push(
                PlanStep::of(
                    format!("detach {p}"),
                    "DETACH CONCURRENTLY: it waits for older transactions without blocking writers",
                    Work::Concurrently {
                        sql: sql::detach(&parent, p, true),
                        bound: Bound::Statement,
                    },
                )
                .recording(ledger(Step::Detach))
                .locking(locks.clone())
                .if_it_fails("DETACH CONCURRENTLY failed (if it was interrupted, the partition is pending detach and the next pass finalizes it)"),
            ),
            Start::PendingDetach => {
                // FINALIZE waits for transactions older than the detach like the detach
                // itself; it holds no lock writers need, so it gets statement_timeout rather
                // than lock_timeout.
                detach.push(
                    PlanStep::transaction(
                        format!("finalize detach {p}"),
                        "a DETACH CONCURRENTLY was interrupted: the partition is pending detach",
                        vec![Statement::Sql(sql::finalize(&parent, p))],
                    )
                    .waiting(Wait::Statement)
                    .recording(ledger(Step::Finalize))
                    .locking(locks.clone()),
                );
            }
            Start::Detached | Start::Vanished => {}
        }
        let mut dispose = Vec::new();
        let drop = |check: Statement, reason: &str| {
            PlanStep::transaction(
                format!("drop {p}"),
                reason,
                vec![
                    Statement::Sql(sql::lock(p)),
                    check,
                    Statement::Sql(sql::drop(p)),
                ],
            )
            .recording(ledger(Step::Drop))
            .locking(vec![p.quoted()])
        };
        match table.on_expiry {
            OnExpiry::Drop => dispose.push(drop(
                Statement::Count(p.clone()),
                "on_expiry = \"drop\": dropped without an archive",
            )),
            OnExpiry::Detach => {
                let mut statements = Vec::new();
                if !archive_schema_exists {
                    statements.push(Statement::Sql(sql::create_archive_schema()));
                }
                statements.push(Statement::Sql(sql::move_to_archive_schema(p)));
                dispose.push(
                    PlanStep::transaction(
                        format!("move {p}"),
                        format!("on_expiry = \"detach\": kept in {ARCHIVE_SCHEMA}"),
                        statements,
                    )
                    .recording(ledger(Step::Move))
                    .locking(vec![p.quoted()]),
                );
            }
            OnExpiry::Archive => {
                let dir = &config.maintenance.archive_dir;
                dispose.push(
                    PlanStep::of(
                        format!("archive {p}"),
                        "its rows leave the database only into a verified archive",
                        Work::Archive(Box::new(ArchiveWork {
                            table: parent.clone(),
                            partition: p.clone(),
                            lower: task.lower,
                            upper: task.upper,
                            key: table.partition_key.as_str().to_string(),
                            dir: dir.clone(),
                            reuse: archive::latest(dir, &parent, p),
                            format: config.maintenance.archive_format,
                        })),
                    )
                    .recording(ledger(Step::Archive))
                    .if_it_fails("archive failed, the table stays detached and intact"),
                );
                match &config.maintenance.archive_store {
                    // Verified where it will live: read back from the store.
                    Some(store) => dispose.push(
                        PlanStep::of(
                            format!("upload {p}"),
                            format!(
                                "archive_dir is {}: uploaded, then read back from the store and verified there",
                                store.url()
                            ),
                            Work::Upload,
                        )
                        .recording(ledger(Step::Upload))
                        .if_it_fails(
                            "the archive is not in the object store, verified; the table stays detached and intact, and the next pass retries",
                        ),
                    ),
                    None => dispose.push(
                        PlanStep::of(format!("verify {p}"), "nothing is dropped unverified", Work::Verify)
                            .recording(ledger(Step::Verify))
                            .if_it_fails("archive did not verify, the table stays detached and intact"),
                    ),
                }
                if let Some(command) = &config.maintenance.archive_command {
                    dispose.push(
                        PlanStep::of(
                            format!("ship {p}"),
                            "maintenance.archive_command is set",
                            Work::Ship {
                                command: command.clone(),
                            },
                        )
                        .recording(ledger(Step::Ship))
                        .if_it_fails("archive_command failed, the table stays detached and is retried next pass"),
                    );
                }
                dispose.push(drop(
                    Statement::SameAsArchive(p.clone()),
                    "archived and verified; the drop locks the table and checks it still holds exactly the archive's rows",
                ));
            }
        }
        Expiry {
            task,
            entry,
            detach,
            dispose,
        }
    }

    /// The `--dry-run` text: the very steps [`Expiry::run`] runs.
    fn render(&self, config: &Config) -> String {
        let mut s = format!("-- expire {}: {}\n", self.task.partition, self.task.reason);
        match self.task.start {
            Start::Detached => s.push_str("-- already detached\n"),
            Start::Vanished => {
                s.push_str("-- the table no longer exists; the ledger records that it vanished\n");
                return s;
            }
            _ => {}
        }
        for step in self.detach.iter().chain(&self.dispose) {
            s.push_str(&step.render(config));
        }
        s
    }

    /// Runs the expiry from where it stands. Returns archive bytes written.
    async fn run(&self, client: &mut Client, config: &Config) -> Result<u64, StepError> {
        if self.task.start == Start::Vanished {
            let outcome = ledger::Outcome {
                error: Some("the table no longer exists; it was not dropped by partwarden".into()),
                ..Default::default()
            };
            let drop = self.entry.with_step(Step::Drop);
            ledger::record(&*client, &drop.event(), Utc::now(), &outcome).await?;
            return Err(StepError::Refused(
                "detached earlier, but the table no longer exists (dropped by someone else?); recorded in the ledger, nothing left to do".into(),
            ));
        }
        let mut exec = Executor::new(client, config);
        for step in &self.detach {
            exec.run(step).await?;
        }
        fault::point("after_detach");
        let mut written = 0;
        for step in &self.dispose {
            if matches!(
                step.record,
                Record::Ledger(Entry {
                    step: Step::Drop,
                    ..
                })
            ) {
                fault::point("after_ship");
                fault::pause("before_drop").await;
            }
            written += exec.run(step).await?.archive_bytes;
            if matches!(step.work, Work::Verify | Work::Upload) {
                fault::point("after_verify");
            }
        }
        if config.maintenance.archive_store.is_some() && table_archives(self) {
            // The archive is in the store, verified, and the table is gone: the spool's copy
            // has served its purpose.
            for path in exec.spooled() {
                if let Err(e) = std::fs::remove_file(&path) {
                    tracing::warn!(file = %path.display(), error = %e, "could not remove a spooled archive file");
                }
            }
        }
        tracing::info!(partition = %self.task.partition, "expired");
        Ok(written)
    }
}
