//! One maintenance pass: finish interrupted work, create partitions ahead, expire old ones.
//!
//! Run by `--run-once` and by the daemon. A pass holds the pass advisory lock, so two passes
//! (two hosts, or `--run-once` beside the daemon) never work on the same tables at once. It
//! runs in phases over all tables: first premake (so a slow expiry can never delay next
//! month's partition), then expiries. Every step is its own transaction or its own ledger
//! event; a failing step is reported and the rest of the pass still runs.
//!
//! An expiry goes: detach (CONCURRENTLY when the table has no DEFAULT partition, bounded by
//! statement_timeout; plain DETACH under lock_timeout otherwise) → archive (write, then read
//! back and verify against `count(*)`) → archive_command, if configured → drop (in one
//! transaction that locks the detached table, checks its count still equals the archive's, and
//! records the drop). `on_expiry = "detach"` moves the table to `partwarden_archive` instead;
//! `on_expiry = "drop"` drops without an archive.

use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio_postgres::{Client, Transaction};

use crate::archive::{self, Manifest};
use crate::catalog::{self, RelName, TableSnapshot};
use crate::clock::Clocks;
use crate::config::{Config, OnExpiry, TableConfig};
use crate::db::{self, ConnectError, error_text};
use crate::ddl::{self, DdlPolicy};
use crate::expiry::{self, Start, Task, Unfinished};
use crate::fault;
use crate::indexes;
use crate::ledger::{self, Event, Step};
use crate::metrics;
use crate::migrate::{self, MIGRATIONS};
use crate::premake::{self, Runway};

/// Held (session-level) by whoever runs passes: `--run-once`, or the daemon's leader. The bytes
/// of "pwpass__".
pub const PASS_LOCK_KEY: i64 = 0x7077_7061_7373_5f5f;

/// Schema that receives tables expired with `on_expiry = "detach"` and restored archives whose
/// range is no longer free.
pub const ARCHIVE_SCHEMA: &str = "partwarden_archive";

/// How a pass runs.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// Print the plan and change nothing.
    pub dry_run: bool,
    /// The instant to plan for; `None` (always, but in a `--dry-run --now`): the database
    /// server's clock. Expiry never touches the partition holding the server's now, whatever
    /// this says.
    pub now: Option<DateTime<Utc>>,
}

/// What a pass did to one table.
#[derive(Debug, Default, Serialize)]
pub struct TableReport {
    /// `schema.table`.
    pub table: String,
    /// Partitions created (or, in a dry run, planned).
    pub created: Vec<String>,
    /// Partitions whose expiry completed (dropped or moved).
    pub expired: Vec<String>,
    /// Bytes of archives written.
    pub archived_bytes: u64,
    /// Index repairs done (or, in a dry run, planned).
    pub indexes_repaired: Vec<String>,
    /// Coverage after the pass (not in a dry run).
    pub runway: Option<Runway>,
    /// Steps that failed, one line each.
    pub errors: Vec<String>,
    /// Things seen and left alone.
    pub notes: Vec<String>,
}

/// What a pass did.
#[derive(Debug, Default, Serialize)]
pub struct Report {
    /// Whether it was a dry run.
    pub dry_run: bool,
    /// One per configured table.
    pub tables: Vec<TableReport>,
}

impl Report {
    /// Whether every step succeeded.
    pub fn ok(&self) -> bool {
        self.tables.iter().all(|t| t.errors.is_empty())
    }

    /// One line per table, then its errors and notes.
    pub fn to_text(&self) -> String {
        let mut s = String::new();
        for t in &self.tables {
            s.push_str(&t.summary_line(self.dry_run));
            s.push('\n');
            for e in &t.errors {
                s.push_str(&format!("  error: {e}\n"));
            }
            for n in &t.notes {
                s.push_str(&format!("  note: {n}\n"));
            }
        }
        s
    }
}

impl TableReport {
    /// An empty report for `table`.
    pub fn new(table: &TableConfig) -> TableReport {
        TableReport {
            table: table.name.to_string(),
            ..TableReport::default()
        }
    }

    /// `public.t: created 1, expired 1 (archived 1.2 MiB); runway ...`.
    pub fn summary_line(&self, dry_run: bool) -> String {
        let would = if dry_run { "would be " } else { "" };
        let list = |v: &Vec<String>| {
            if v.is_empty() {
                String::new()
            } else {
                format!(" ({})", v.join(", "))
            }
        };
        let mut s = format!(
            "{}: {}created {}{}, {}expired {}{}",
            self.table,
            would,
            self.created.len(),
            list(&self.created),
            would,
            self.expired.len(),
            list(&self.expired)
        );
        if self.archived_bytes > 0 {
            s.push_str(&format!(", archived {}", human_bytes(self.archived_bytes)));
        }
        if !self.indexes_repaired.is_empty() {
            s.push_str(&format!(
                ", {}index repairs {}",
                would,
                self.indexes_repaired.len()
            ));
        }
        if let Some(r) = &self.runway {
            s.push_str(&runway_text(r));
        }
        if !self.errors.is_empty() {
            s.push_str(&format!("; {} FAILED", self.errors.len()));
        }
        s
    }
}

/// `; runway N periods after the current one, writes fail from T`.
pub fn runway_text(r: &Runway) -> String {
    match r.writes_fail_from {
        None => "; runway unbounded (MAXVALUE or DEFAULT partition)".to_string(),
        Some(at) => format!(
            "; runway {} periods after the current one, writes fail from {}",
            r.periods_ahead,
            at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        ),
    }
}

fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < UNITS.len() {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", UNITS[i])
    }
}

/// Why a pass could not start.
#[derive(Debug, thiserror::Error)]
pub enum PassError {
    /// No connection.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// The schema is behind this binary.
    #[error("the database schema is not current (pending: {0}); run partwarden --bootstrap first")]
    SchemaBehind(String),
    /// Migrations are in a state this binary refuses.
    #[error(transparent)]
    Migrate(#[from] migrate::MigrateError),
    /// The server cannot take DDL.
    #[error("{0}")]
    Refused(String),
    /// Another pass holds the lock.
    #[error(
        "another partwarden pass is running (advisory lock {PASS_LOCK_KEY} held by pid {0}); try again later"
    )]
    Busy(i32),
    /// A query failed.
    #[error("{}", error_text(.0))]
    Db(#[from] tokio_postgres::Error),
}

/// Whether a schema exists. Asked before `CREATE SCHEMA`, because even `CREATE SCHEMA IF NOT
/// EXISTS` needs CREATE on the database, which a least-privilege role does not have when an
/// administrator created the schema for it.
pub async fn schema_exists(client: &Client, schema: &str) -> Result<bool, tokio_postgres::Error> {
    Ok(client
        .query_one(
            "SELECT to_regnamespace($1) IS NOT NULL",
            &[&crate::ident::quote_ident(schema)],
        )
        .await?
        .get(0))
}

/// Checks that every migration this binary knows is applied (and none was edited).
pub async fn require_current_schema(client: &Client) -> Result<(), PassError> {
    let applied = migrate::applied(client).await?;
    let pending = migrate::plan(MIGRATIONS, &applied)?;
    if !pending.is_empty() {
        return Err(PassError::SchemaBehind(
            pending
                .iter()
                .map(|m| m.id())
                .collect::<Vec<_>>()
                .join(", "),
        ));
    }
    Ok(())
}

/// Tries the pass lock on this session. Returns the holder's pid when another session has it.
pub async fn try_lock(client: &Client) -> Result<Result<(), i32>, tokio_postgres::Error> {
    let got: bool = client
        .query_one("SELECT pg_try_advisory_lock($1)", &[&PASS_LOCK_KEY])
        .await?
        .get(0);
    if got {
        return Ok(Ok(()));
    }
    let holder = db::advisory_holder(client, PASS_LOCK_KEY).await?;
    Ok(Err(holder.unwrap_or(0)))
}

/// `--run-once`: connect, check the schema, take the pass lock, run one pass.
pub async fn run_once(
    config: &Config,
    opts: Options,
    out: &mut (dyn Write + Send),
) -> Result<Report, PassError> {
    let mut client = db::connect(&config.database).await?;
    require_current_schema(&client).await?;
    if !opts.dry_run {
        db::require_primary(&client)
            .await
            .map_err(PassError::Refused)?;
    }
    if !opts.dry_run {
        // Another pass (the daemon's, or the backend of a pass whose process was just killed
        // and whose server side has not noticed yet) may hold the lock: wait for it, as
        // bootstrap does, up to lock_retry_for.
        let deadline = tokio::time::Instant::now() + config.database.lock_retry_for;
        let mut logged = false;
        while let Err(pid) = try_lock(&client).await? {
            if tokio::time::Instant::now() >= deadline {
                return Err(PassError::Busy(pid));
            }
            if !logged {
                tracing::info!(
                    holder_pid = pid,
                    "another pass holds the pass lock; waiting for it"
                );
                logged = true;
            }
            tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        }
    }
    Ok(run(&mut client, config, opts, &AtomicBool::new(false), out).await)
}

/// One pass over every configured table, on a session that holds the pass lock (or, in a dry
/// run, any session). Never fails as a whole: failures are in the report.
///
/// `stop` is checked between steps: once it is set, the step in progress finishes and no new
/// one starts (the daemon sets it on SIGTERM); the ledger lets the next pass go on.
pub async fn run(
    client: &mut Client,
    config: &Config,
    opts: Options,
    stop: &AtomicBool,
    out: &mut (dyn Write + Send),
) -> Report {
    fault::pause("pass_start").await;
    let policy = DdlPolicy::from_config(&config.database);
    let mut report = Report {
        dry_run: opts.dry_run,
        tables: config.tables.iter().map(TableReport::new).collect(),
    };
    let clocks = match Clocks::read(&*client).await {
        Ok(c) => c,
        Err(e) => {
            let msg = format!("reading the server's clock: {}", error_text(&e));
            for tr in &mut report.tables {
                tr.errors.push(msg.clone());
            }
            return report;
        }
    };
    if let Err(why) = clocks.check(config.database.max_clock_skew) {
        for tr in &mut report.tables {
            if opts.dry_run {
                tr.notes.push(why.clone());
            } else {
                tr.errors.push(why.clone());
            }
        }
        if !opts.dry_run {
            tracing::error!("{why}");
            return report;
        }
    }
    let now = opts.now.unwrap_or(clocks.server);
    let started_at = clocks.server;
    // The archive directory exists from the first pass on, so that --check can tell a missing
    // one (removed, unmounted) from one that was never needed yet.
    if !opts.dry_run
        && config
            .tables
            .iter()
            .any(|t| t.on_expiry == OnExpiry::Archive)
        && let Err(e) = archive::create_private_dir(&config.maintenance.archive_dir)
    {
        let msg = format!(
            "archive directory {}: {e}",
            config.maintenance.archive_dir.display()
        );
        for (t, tr) in config.tables.iter().zip(report.tables.iter_mut()) {
            if t.on_expiry == OnExpiry::Archive {
                tr.errors.push(msg.clone());
            }
        }
    }
    let mut ctx = Ctx {
        config,
        policy: &policy,
        dry_run: opts.dry_run,
        now,
        server_now: clocks.server,
        stop,
        out,
    };
    // Phase 1: partitions ahead, for every table, before any expiry can take time.
    let mut manageable = vec![false; config.tables.len()];
    for (i, table) in config.tables.iter().enumerate() {
        let tr = &mut report.tables[i];
        match catalog::snapshot(&*client, &RelName::from(&table.name)).await {
            Ok(snap) => {
                manageable[i] = premake_table(client, &mut ctx, table, &snap, tr).await;
            }
            Err(e) => tr
                .errors
                .push(format!("reading the catalog: {}", error_text(&e))),
        }
    }
    // Phase 2: index repairs.
    for (i, table) in config.tables.iter().enumerate() {
        if manageable[i] {
            repair_indexes(client, &mut ctx, table, &mut report.tables[i]).await;
        }
    }
    // Phase 3: expiries.
    for (i, table) in config.tables.iter().enumerate() {
        if manageable[i] {
            expire_table(client, &mut ctx, table, &mut report.tables[i]).await;
        }
    }
    if !opts.dry_run {
        for (i, table) in config.tables.iter().enumerate() {
            let tr = &mut report.tables[i];
            match catalog::snapshot(&*client, &RelName::from(&table.name)).await {
                Ok(snap) if snap.exists => tr.runway = Some(premake::runway(table, &snap, now)),
                Ok(_) => {}
                Err(e) => tr
                    .errors
                    .push(format!("reading the catalog: {}", error_text(&e))),
            }
            let event = Event {
                table: &RelName::from(&table.name),
                partition: None,
                lower: None,
                upper: None,
                step: Step::Pass,
            };
            let outcome = ledger::Outcome {
                rows: Some((tr.created.len() + tr.expired.len()) as i64),
                error: (!tr.errors.is_empty()).then(|| tr.errors.join("; ")),
                ..Default::default()
            };
            if let Err(e) = ledger::record(&*client, &event, started_at, &outcome).await {
                tr.errors.push(format!(
                    "recording the pass in the ledger: {}",
                    error_text(&e)
                ));
            }
        }
    }
    report
}

/// What every step of a pass needs besides the session and the table.
pub struct Ctx<'a> {
    /// The configuration of this pass.
    pub config: &'a Config,
    /// Lock timeout and retries of DDL.
    pub policy: &'a DdlPolicy,
    /// Print the plan and change nothing.
    pub dry_run: bool,
    /// The instant plans are made for (the server's clock, or `--now` in a dry run).
    pub now: DateTime<Utc>,
    /// The server's clock: expiry never touches the partition holding it or a later one.
    pub server_now: DateTime<Utc>,
    /// Set to stop between steps.
    pub stop: &'a AtomicBool,
    /// Where `--dry-run` prints the plan.
    pub out: &'a mut (dyn Write + Send),
}

/// Creates the partitions `table` needs. Returns whether the table can be managed at all.
pub async fn premake_table(
    client: &mut Client,
    ctx: &mut Ctx<'_>,
    table: &TableConfig,
    snap: &TableSnapshot,
    tr: &mut TableReport,
) -> bool {
    let creates = match premake::plan(table, snap, ctx.now) {
        Ok(c) => c,
        Err(e) => {
            tr.errors.push(e);
            return false;
        }
    };
    let parent = RelName::from(&table.name);
    for c in &creates {
        if ctx.stop.load(Ordering::SeqCst) {
            tr.notes
                .push("stopping: the remaining partitions are left to the next pass".into());
            break;
        }
        if ctx.dry_run {
            if let Some(prepare) = &c.prepare {
                let _ = writeln!(ctx.out, "{}", prepare.to_sql(ctx.policy));
            }
            let _ = writeln!(ctx.out, "{}", c.action.to_sql(ctx.policy));
            tr.created.push(c.partition.to_string());
            continue;
        }
        let event = Event {
            table: &parent,
            partition: Some(&c.partition),
            lower: Some(c.period.start),
            upper: Some(c.period.end),
            step: Step::Create,
        };
        if let Some(prepare) = &c.prepare
            && let Err(e) = ddl::execute(client, ctx.policy, prepare, None).await
        {
            tr.errors.push(e.to_string());
            break;
        }
        match ddl::execute(client, ctx.policy, &c.action, Some(&event)).await {
            Ok(outcome) => {
                let moved: u64 = outcome.rows.iter().sum();
                if moved > 0 {
                    tracing::info!(partition = %c.partition, rows = moved, "rows moved out of the DEFAULT partition");
                }
                tr.created.push(c.partition.to_string());
                metrics::add(&metrics::PARTITIONS_CREATED, 1);
            }
            Err(e) => {
                // Later periods depend on nothing here, but a failure usually means the same
                // lock is in the way: stop for this table and let the next pass retry.
                tr.errors.push(e.to_string());
                break;
            }
        }
    }
    true
}

/// Repairs what the `indexes` check reports: leftover INVALID indexes are dropped
/// concurrently, missing partition indexes built concurrently (or an existing matching one
/// reused) and attached to the parent index.
async fn repair_indexes(
    client: &mut Client,
    ctx: &mut Ctx<'_>,
    table: &TableConfig,
    tr: &mut TableReport,
) {
    let parent = RelName::from(&table.name);
    let snap = match indexes::snapshot(&*client, &parent).await {
        Ok(s) => s,
        Err(e) => {
            tr.errors
                .push(format!("reading indexes: {}", error_text(&e)));
            return;
        }
    };
    let (repairs, left) = indexes::plan(&parent, &snap);
    tr.notes.extend(left);
    for repair in &repairs {
        if ctx.stop.load(Ordering::SeqCst) {
            break;
        }
        if ctx.dry_run {
            let mut text = format!("-- {}\n", repair.label());
            for st in repair.statements() {
                text.push_str(&st);
                text.push_str(";\n");
            }
            let _ = writeln!(ctx.out, "{text}");
            tr.indexes_repaired.push(repair.label());
            continue;
        }
        match run_repair(client, ctx.config, ctx.policy, repair).await {
            Ok(()) => {
                tracing::info!(repair = %repair.label(), "index repaired");
                tr.indexes_repaired.push(repair.label());
            }
            Err(e) => tr.errors.push(format!("{}: {e}", repair.label())),
        }
    }
}

async fn run_repair(
    client: &mut Client,
    config: &Config,
    policy: &DdlPolicy,
    repair: &indexes::Repair,
) -> Result<(), String> {
    let statements = repair.statements();
    for st in &statements {
        if st.contains(" CONCURRENTLY ") {
            // Cannot run in a transaction block; waits for older transactions without blocking
            // writers, so it is bounded by a statement timeout rather than lock_timeout.
            let timeout = if st.starts_with("CREATE") {
                config.maintenance.index_build_timeout
            } else {
                config.database.statement_timeout
            };
            let result = async {
                client
                    .execute(
                        "SELECT set_config('lock_timeout', '0', false), set_config('statement_timeout', $1, false)",
                        &[&format!("{}ms", timeout.as_millis())],
                    )
                    .await?;
                let r = client.batch_execute(st).await;
                client
                    .execute(
                        "SELECT set_config('statement_timeout', $1, false)",
                        &[&format!("{}ms", config.database.statement_timeout.as_millis())],
                    )
                    .await?;
                client.batch_execute("RESET lock_timeout").await?;
                r
            }
            .await;
            result.map_err(|e| format!("{}: {st}", error_text(&e)))?;
        } else {
            let label = repair.label();
            ddl::with_lock_retry(client, policy, &label, &[], async |tx: &Transaction<'_>| {
                tx.execute(st.as_str(), &[])
                    .await
                    .map_err(|e| (st.clone(), e))?;
                Ok(())
            })
            .await
            .map_err(|e| e.to_string())?;
        }
    }
    Ok(())
}

async fn expire_table(
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
                tracing::error!(partition = %task.partition, error = %e, "expiry step failed");
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
    async fn run(&self, client: &mut Client, has_default: bool) -> Result<u64, String> {
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
                ledger::record(&*client, &self.event(Step::Drop), Utc::now(), &outcome)
                    .await
                    .map_err(|e| error_text(&e))?;
                return Err("detached earlier, but the table no longer exists (dropped by someone else?); recorded in the ledger, nothing left to do".into());
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

    async fn detach_concurrently(&self, client: &mut Client) -> Result<(), String> {
        let id = ledger::start(&*client, &self.event(Step::Detach))
            .await
            .map_err(|e| error_text(&e))?;
        let sql = sql::detach(self.parent, &self.task.partition, true);
        // Its wait for older transactions does not block writers, so it runs without the short
        // lock_timeout (which would cancel it half way and leave it pending), bounded by
        // statement_timeout instead.
        let result = async {
            client.batch_execute("SET lock_timeout = 0").await?;
            let r = client.batch_execute(&sql).await;
            client.batch_execute("RESET lock_timeout").await?;
            r
        }
        .await;
        let outcome = ledger::Outcome {
            error: result.as_ref().err().map(error_text),
            ..Default::default()
        };
        ledger::finish(&*client, id, &outcome)
            .await
            .map_err(|e| error_text(&e))?;
        result.map_err(|e| {
            format!(
                "DETACH CONCURRENTLY: {} (if it was interrupted, the partition is pending detach and the next pass finalizes it)",
                error_text(&e)
            )
        })?;
        tracing::info!(partition = %self.task.partition, "detached concurrently");
        Ok(())
    }

    async fn detach_plain(&self, client: &mut Client) -> Result<(), String> {
        let sql = sql::detach(self.parent, &self.task.partition, false);
        self.transaction(client, self.policy, "detach", Step::Detach, &[sql], None)
            .await
            .map(|_| ())
    }

    async fn finalize(&self, client: &mut Client) -> Result<(), String> {
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

    async fn move_to_archive_schema(&self, client: &mut Client) -> Result<(), String> {
        let mut statements = Vec::new();
        if !schema_exists(client, ARCHIVE_SCHEMA)
            .await
            .map_err(|e| error_text(&e))?
        {
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
    ) -> Result<(), String> {
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
        .await
        .map_err(|e| e.to_string())?;
        tracing::info!(partition = %self.task.partition, step = step.as_str(), "committed");
        Ok(())
    }

    async fn archive_and_drop(&self, client: &mut Client) -> Result<u64, String> {
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
                        .await
                        .map_err(|e| error_text(&e))?;
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
                    .await
                    .map_err(|e| error_text(&e))?
                    .iter()
                    .any(|l| {
                        l.partition == self.task.partition
                            && l.last_step == Step::Archive
                            && !l.last_finished
                    });
                let paths = archive::next_version(dir, self.parent, &self.task.partition, reclaim)
                    .map_err(|e| {
                        format!("archive failed, the table stays detached and intact: {e}")
                    })?;
                let src = archive::Source {
                    table: self.parent,
                    partition: &self.task.partition,
                    lower: self.task.lower,
                    upper: self.task.upper,
                    key: self.table.partition_key.as_str(),
                };
                let id = ledger::start(&*client, &self.event(Step::Archive))
                    .await
                    .map_err(|e| error_text(&e))?;
                let result = archive::write(client, &src, &paths, timeout).await;
                let outcome = result_outcome(&paths.data, &result);
                ledger::finish(&*client, id, &outcome)
                    .await
                    .map_err(|e| error_text(&e))?;
                let m = result.map_err(|e| {
                    format!("archive failed, the table stays detached and intact: {e}")
                })?;
                written = m.compressed_bytes;
                fault::point("after_archive");

                let id = ledger::start(&*client, &self.event(Step::Verify))
                    .await
                    .map_err(|e| error_text(&e))?;
                let result = archive::verify(&*client, &paths, &self.task.partition).await;
                let outcome = result_outcome(&paths.data, &result);
                ledger::finish(&*client, id, &outcome)
                    .await
                    .map_err(|e| error_text(&e))?;
                let m = result.map_err(|e| {
                    format!("archive did not verify, the table stays detached and intact: {e}")
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
            .await
            .map_err(|e| error_text(&e))?;
            if !shipped {
                let id = ledger::start(&*client, &self.event(Step::Ship))
                    .await
                    .map_err(|e| error_text(&e))?;
                let timeout = self.config.maintenance.archive_command_timeout;
                let database = &self.config.database;
                let mut result = run_archive_command(cmd, &paths.data, timeout, database).await;
                if result.is_ok() {
                    result = run_archive_command(cmd, &paths.manifest, timeout, database).await;
                }
                let mut outcome = archive_outcome(&paths.data, &manifest);
                outcome.error = result.as_ref().err().cloned();
                ledger::finish(&*client, id, &outcome)
                    .await
                    .map_err(|e| error_text(&e))?;
                result.map_err(|e| format!("archive_command failed, the table stays detached and is retried next pass: {e}"))?;
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
    ) -> Result<Manifest, String> {
        let m = archive::verify(&*client, paths, &self.task.partition)
            .await
            .map_err(|e| e.to_string())?;
        let Some(expected) = &m.content_digest else {
            return Err(
                "its manifest has no content digest (written by an older partwarden)".into(),
            );
        };
        let timeout = self.config.maintenance.archive_timeout;
        let tx = client
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await
            .map_err(|e| error_text(&e))?;
        tx.batch_execute(&archive::statement_timeout_sql(timeout))
            .await
            .map_err(|e| error_text(&e))?;
        let (_, digest) = archive::table_digest(&tx, &self.task.partition)
            .await
            .map_err(|e| e.to_string())?;
        tx.commit().await.map_err(|e| error_text(&e))?;
        if &digest != expected {
            return Err(format!(
                "the table changed after {} was written (content digest {digest}, archive {expected})",
                paths.data.display()
            ));
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
    ) -> Result<(), String> {
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
        .await
        .map_err(|e| e.to_string())?;
        if let Err(why) = checked.0 {
            let outcome = ledger::Outcome {
                error: Some(why.clone()),
                ..base.clone()
            };
            ledger::record(&*client, &self.event(Step::Verify), started_at, &outcome)
                .await
                .map_err(|e| error_text(&e))?;
            return Err(why);
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

/// Runs `archive_command` for one file, with `%p`, `%f` and `%%` replaced (paths quoted for the
/// shell).
///
/// The command runs in a process group of its own, and on timeout the whole group is killed:
/// killing only `sh` would leave its children running, reparented to init. It gets this
/// process's environment less every database secret ([`child_env_removals`]).
pub async fn run_archive_command(
    cmd: &str,
    path: &Path,
    timeout: Duration,
    database: &crate::config::DatabaseConfig,
) -> Result<(), String> {
    let file = path
        .file_name()
        .and_then(|f| f.to_str())
        .unwrap_or_default();
    let expanded = expand_command(cmd, &path.display().to_string(), file);
    let mut command = tokio::process::Command::new("sh");
    command
        .arg("-c")
        .arg(&expanded)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    for key in child_env_removals(database) {
        command.env_remove(key);
    }
    let child = command
        .spawn()
        .map_err(|e| format!("cannot start sh: {e}"))?;
    let pgid = child.id().map(|id| nix::unistd::Pid::from_raw(id as i32));
    match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Err(_) => {
            if let Some(pgid) = pgid {
                // The group's leader is sh itself; its children share the group.
                let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
            }
            Err(format!(
                "killed (with its process group) after {timeout:?} for {file}"
            ))
        }
        Ok(Err(e)) => Err(format!("waiting for it: {e}")),
        Ok(Ok(out)) if out.status.success() => Ok(()),
        Ok(Ok(out)) => {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let last = stderr
                .lines()
                .last()
                .unwrap_or("")
                .chars()
                .take(200)
                .collect::<String>();
            Err(format!(
                "{} for {file}: {}",
                out.status,
                crate::config::redact_url(&last)
            ))
        }
    }
}

/// The environment variables a child process must not inherit: libpq's (`PG*`: `PGPASSWORD`,
/// `PGPASSFILE`, ...), partwarden's own overrides (`PARTWARDEN*`, which may hold the database
/// URL), and any other whose value contains the database password or connection string.
pub fn child_env_removals(database: &crate::config::DatabaseConfig) -> Vec<std::ffi::OsString> {
    let mut secrets: Vec<String> = Vec::new();
    if let Some(p) = &database.password {
        secrets.push(p.clone());
    }
    if let Ok((cfg, _)) = db::pg_config(database)
        && let Some(p) = cfg.get_password()
    {
        secrets.push(String::from_utf8_lossy(p).into_owned());
    }
    secrets.push(database.url.clone());
    secrets.retain(|s| !s.is_empty());
    std::env::vars_os()
        .filter(|(k, v)| {
            let k = k.to_string_lossy();
            let v = v.to_string_lossy();
            k.starts_with("PG")
                || k.starts_with("PARTWARDEN")
                || secrets.iter().any(|s| v.contains(s.as_str()))
        })
        .map(|(k, _)| k)
        .collect()
}

/// PostgreSQL-style `%p` / `%f` / `%%` expansion, with single-quoted shell words.
fn expand_command(cmd: &str, path: &str, file: &str) -> String {
    let quote = |s: &str| format!("'{}'", s.replace('\'', "'\\''"));
    let mut out = String::new();
    let mut chars = cmd.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '%' {
            match chars.peek() {
                Some('p') => {
                    chars.next();
                    out.push_str(&quote(path));
                }
                Some('f') => {
                    chars.next();
                    out.push_str(&quote(file));
                }
                Some('%') => {
                    chars.next();
                    out.push('%');
                }
                _ => out.push('%'),
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archive_command_expansion_quotes_paths() {
        assert_eq!(
            expand_command(
                "cp %p /backup/%f && echo 100%%",
                "/a b/it's.zst",
                "it's.zst"
            ),
            "cp '/a b/it'\\''s.zst' /backup/'it'\\''s.zst' && echo 100%"
        );
    }

    #[test]
    fn bytes_are_human() {
        assert_eq!(human_bytes(12), "12 B");
        assert_eq!(human_bytes(27_900_000), "26.6 MiB");
    }
}
