//! One maintenance pass: finish interrupted work, create partitions ahead, expire old ones.
//!
//! Run by `--run-once` and by the daemon. A pass holds the pass advisory lock, so two passes
//! (two hosts, or `--run-once` beside the daemon) never work on the same tables at once. It
//! runs in phases over all tables: first premake (so a slow expiry can never delay next
//! month's partition), then expiries. Every step is its own transaction or its own ledger
//! event; a failing step is reported and the rest of the pass still runs.
//!
//! This module owns the pass as a whole (lock, clocks, phases, the ledger's `pass` event) and
//! premake; its parts: [`report`] (what a pass did, and its text), `repair` (index repairs),
//! `expire` (an expiry from wherever it stands: detach, archive, verify, ship, drop), each
//! planned as steps and run by the step executor.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio_postgres::Client;

use crate::archive;
use crate::catalog::{self, RelName, TableSnapshot};
use crate::clock::Clocks;
use crate::config::{Config, OnExpiry, TableConfig};
use crate::db::{self, ConnectError, error_text};
use crate::drain;
use crate::expiry;
use crate::fault;
use crate::indexes;
use crate::ledger::{self, Event, Step};
use crate::lock::{self, Lock};
use crate::metrics;
use crate::migrate::{self, MIGRATIONS};
use crate::premake;
use crate::step::{Executor, StepError};

mod expire;
mod repair;
pub mod report;

use expire::expire_table;
use repair::repair_indexes;
pub use report::{Report, TableReport, runway_text};

/// Held (session-level) by whoever runs passes: `--run-once`, or the daemon's leader. The bytes
/// of "pwpass__".
pub const PASS_LOCK_KEY: i64 = Lock::Pass.key();

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
    lock::try_take(client, Lock::Pass).await
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
        if let Err(pid) = lock::take(&client, Lock::Pass, config.database.lock_retry_for).await? {
            return Err(PassError::Busy(pid));
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
        dry_run: opts.dry_run,
        now,
        server_now: clocks.server,
        stop,
        out,
    };
    // The catalog, read once for every table: the planners below work from these snapshots,
    // and a table's snapshot is read again only after a step changed its partitions.
    let rels: Vec<RelName> = config
        .tables
        .iter()
        .map(|t| RelName::from(&t.name))
        .collect();
    let mut snaps: Vec<Option<TableSnapshot>> = match catalog::snapshots(&*client, &rels).await {
        Ok(s) => s.into_iter().map(Some).collect(),
        Err(e) => {
            let msg = format!("reading the catalog: {}", error_text(&e));
            for tr in &mut report.tables {
                tr.errors.push(msg.clone());
            }
            return report;
        }
    };
    // Phase 1: partitions ahead, for every table, before any expiry can take time.
    let mut manageable = vec![false; config.tables.len()];
    for (i, table) in config.tables.iter().enumerate() {
        let snap = snaps[i].as_ref().expect("read above");
        let errors = report.tables[i].errors.len();
        manageable[i] = premake_table(client, &mut ctx, table, snap, &mut report.tables[i]).await;
        let tr = &report.tables[i];
        if !opts.dry_run && (!tr.created.is_empty() || tr.errors.len() > errors) {
            snaps[i] = None;
        }
    }
    // Phase 2: index repairs.
    repair_indexes(client, &mut ctx, &rels, &manageable, &mut report.tables).await;
    // Phase 3: expiries.
    refresh(&*client, &rels, &mut snaps, &mut report.tables).await;
    // max_expired_per_pass is for the whole pass, shared oldest data first: the table whose
    // earliest partition is oldest goes first, so that no table waits behind another's backlog
    // for ever (once its oldest partitions are gone, another table's are the oldest).
    let mut budget = config.maintenance.max_expired_per_pass;
    let mut order: Vec<usize> = (0..config.tables.len()).collect();
    order.sort_by_key(|&i| {
        let earliest = snaps[i].as_ref().and_then(|s| {
            s.partitions
                .iter()
                .filter(|p| !p.is_default)
                .filter_map(|p| p.lower)
                .min()
        });
        (earliest.is_none(), earliest)
    });
    for i in order {
        let table = &config.tables[i];
        if let (true, Some(snap)) = (manageable[i], &snaps[i]) {
            let tr = &mut report.tables[i];
            let before = (tr.expired.len(), tr.errors.len());
            expire_table(client, &mut ctx, table, snap, tr, &mut budget).await;
            if !opts.dry_run && (tr.expired.len(), tr.errors.len()) != before {
                snaps[i] = None;
            }
        }
    }
    // Phase 4: statistics of the parents whose partitions changed (autovacuum never analyzes
    // a partitioned parent), each within maintenance.analyze_budget.
    analyze_parents(client, &mut ctx, &mut report.tables).await;
    if !opts.dry_run {
        refresh(&*client, &rels, &mut snaps, &mut report.tables).await;
        for (i, table) in config.tables.iter().enumerate() {
            let tr = &mut report.tables[i];
            if let Some(snap) = &snaps[i]
                && snap.exists
            {
                tr.runway = Some(premake::runway(table, snap, now));
                tr.default_partition = snap.default_partition().map(|d| d.name.clone());
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

/// Reads again, in one go, the snapshots of the tables whose partitions a step changed (those
/// set to `None`); a table whose snapshot cannot be read keeps `None` and gets the error.
async fn refresh(
    client: &Client,
    rels: &[RelName],
    snaps: &mut [Option<TableSnapshot>],
    reports: &mut [TableReport],
) {
    let stale: Vec<usize> = (0..rels.len()).filter(|&i| snaps[i].is_none()).collect();
    if stale.is_empty() {
        return;
    }
    let names: Vec<RelName> = stale.iter().map(|&i| rels[i].clone()).collect();
    match catalog::snapshots(client, &names).await {
        Ok(fresh) => {
            for (i, snap) in stale.into_iter().zip(fresh) {
                snaps[i] = Some(snap);
            }
        }
        Err(e) => {
            let msg = format!("reading the catalog: {}", error_text(&e));
            for i in stale {
                reports[i].errors.push(msg.clone());
            }
        }
    }
}

/// What every step of a pass needs besides the session and the table.
pub struct Ctx<'a> {
    /// The configuration of this pass.
    pub config: &'a Config,
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

/// Creates the partitions `table` needs, draining its DEFAULT partition first when that holds
/// rows of the periods to make ([`drain`]). Returns whether the table can be managed at all.
pub async fn premake_table(
    client: &mut Client,
    ctx: &mut Ctx<'_>,
    table: &TableConfig,
    snap: &TableSnapshot,
    tr: &mut TableReport,
) -> bool {
    if let Err(e) = premake::check_manageable(table, snap) {
        tr.errors.push(e);
        return false;
    }
    if snap.default_partition().is_some() {
        match drain_default(client, ctx, table, snap, tr).await {
            Drained::Premake => {}
            Drained::Stop => return true,
        }
    }
    let creates = match premake::plan(table, snap, ctx.now) {
        Ok(c) => c,
        Err(e) => {
            tr.errors.push(e);
            return false;
        }
    };
    for c in &creates {
        if ctx.stop.load(Ordering::SeqCst) {
            tr.notes
                .push("stopping: the remaining partitions are left to the next pass".into());
            break;
        }
        if ctx.dry_run {
            let _ = writeln!(ctx.out, "{}", c.action.render(ctx.config));
            tr.created.push(c.partition.to_string());
            continue;
        }
        let mut exec = Executor::new(client, ctx.config);
        match exec.run(&c.action).await {
            Ok(_) => {
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

/// `ANALYZE` of every parent whose partitions a step of this pass created, attached, detached
/// or filled, under `statement_timeout = maintenance.analyze_budget` (0: off). PostgreSQL's
/// autovacuum analyzes partitions, never their parent, so the planner's estimates for queries
/// on the parent (joins, row counts) come only from here. A budget that runs out cancels the
/// ANALYZE, which changes nothing, and is reported as a note, not an error.
async fn analyze_parents(client: &mut Client, ctx: &mut Ctx<'_>, reports: &mut [TableReport]) {
    let budget = ctx.config.maintenance.analyze_budget;
    if budget.is_zero() {
        return;
    }
    // Parents with rows whose statistics are missing or older than parent_stats_max_age are
    // analyzed too, changed or not (what `--check`'s planner check warns about).
    let names: Vec<String> = ctx
        .config
        .tables
        .iter()
        .map(|t| RelName::from(&t.name).quoted())
        .collect();
    let max_age = chrono::Duration::from_std(ctx.config.maintenance.parent_stats_max_age)
        .unwrap_or(chrono::Duration::MAX);
    let stale: Vec<bool> = match client
        .query(
            "SELECT p.oid IS NOT NULL AND coalesce((SELECT sum(c.relpages) FROM pg_inherits i \
                      JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = p.oid), 0) > 0 \
                    AND coalesce(greatest(s.last_analyze, s.last_autoanalyze) < now() - $2::text::interval, true) \
             FROM unnest($1::text[]) WITH ORDINALITY q(name, ord) \
             LEFT JOIN pg_class p ON p.oid = to_regclass(q.name) \
             LEFT JOIN pg_stat_all_tables s ON s.relid = p.oid ORDER BY q.ord",
            &[&names, &format!("{} seconds", max_age.num_seconds())],
        )
        .await
    {
        Ok(rows) => rows.iter().map(|r| r.get(0)).collect(),
        Err(e) => {
            tracing::warn!(error = %error_text(&e), "reading the parents' statistics ages");
            vec![false; names.len()]
        }
    };
    for ((table, tr), stale) in ctx.config.tables.iter().zip(reports.iter_mut()).zip(stale) {
        if tr.created.is_empty() && tr.expired.is_empty() && !stale {
            continue;
        }
        if ctx.stop.load(Ordering::SeqCst) {
            return;
        }
        let parent = RelName::from(&table.name);
        let step = crate::step::Step::transaction(
            format!("analyze {parent}"),
            "its partitions changed; autovacuum never analyzes a partitioned parent",
            vec![
                crate::step::Statement::Sql(format!(
                    "SET LOCAL statement_timeout = '{}ms'",
                    budget.as_millis()
                )),
                crate::step::Statement::Sql(format!("ANALYZE {}", parent.quoted())),
            ],
        )
        .locking(vec![parent.quoted()]);
        if ctx.dry_run {
            let _ = writeln!(ctx.out, "{}", step.render(ctx.config));
            continue;
        }
        if let Err(e) = Executor::new(client, ctx.config).run(&step).await {
            tr.notes
                .push(format!("statistics of {parent} not refreshed: {e}"));
        }
    }
}

/// Catch-up rounds of a drain before its swap, at most.
const CATCH_UP_ROUNDS: u32 = 6;

/// Rows a catch-up round may touch and still be the last before the swap: about the work of a
/// few milliseconds, which the swap then does while the application waits.
const CATCH_UP_SMALL: u64 = 2_000;

/// What [`premake_table`] does after [`drain_default`].
enum Drained {
    /// Make partitions the usual way: the DEFAULT partition holds no row they need.
    Premake,
    /// Nothing more for this table in this pass (a drain is under way, was refused or failed).
    Stop,
}

/// Drains `table`'s DEFAULT partition as far as this pass's budget allows: survey, plan, run;
/// again after the drain's setup, which changes what the next steps are.
async fn drain_default(
    client: &mut Client,
    ctx: &mut Ctx<'_>,
    table: &TableConfig,
    snap: &TableSnapshot,
    tr: &mut TableReport,
) -> Drained {
    let mut budget = ctx.config.maintenance.default_move_budget;
    let horizon = premake::horizon(table, ctx.now);
    // Two rounds at most: a new drain's setup, then its copy (planned from what the setup
    // recorded); a drain under way takes one.
    'rounds: for _ in 0..2 {
        let survey = match drain::survey(&*client, table, snap, horizon).await {
            Ok(Some(s)) => s,
            Ok(None) => return Drained::Premake,
            Err(e) => {
                tr.errors.push(format!(
                    "reading the DEFAULT partition of {}: {}",
                    table.name,
                    error_text(&e)
                ));
                return Drained::Stop;
            }
        };
        let (steps, progress) = match drain::plan(table, snap, &survey, ctx.now, budget) {
            drain::Plan::Premake { cleanup } => {
                if let Some(step) = cleanup {
                    if ctx.dry_run {
                        let _ = writeln!(ctx.out, "{}", step.render(ctx.config));
                    } else if let Err(e) = Executor::new(client, ctx.config).run(&step).await {
                        tr.errors.push(e.to_string());
                        return Drained::Stop;
                    }
                }
                return Drained::Premake;
            }
            drain::Plan::Refused(why) => {
                tr.errors.push(why);
                return Drained::Stop;
            }
            drain::Plan::Drain { steps, progress } => (steps, progress),
        };
        tr.notes.push(progress);
        if ctx.dry_run {
            for (_, step) in &steps {
                let _ = writeln!(ctx.out, "{}", step.render(ctx.config));
            }
            return Drained::Stop;
        }
        for (phase, step) in &steps {
            if ctx.stop.load(Ordering::SeqCst) {
                tr.notes
                    .push("stopping: the drain goes on in the next pass".into());
                return Drained::Stop;
            }
            let mut result = Executor::new(client, ctx.config).run(step).await;
            // The swap waits for the changes made during the last catch-up: catch up again
            // while a round had much to do, so that the swap has little.
            let mut rounds = 1;
            while *phase == drain::Phase::CatchUp
                && rounds < CATCH_UP_ROUNDS
                && result.as_ref().is_ok_and(|d| d.rows > CATCH_UP_SMALL)
            {
                result = Executor::new(client, ctx.config).run(step).await;
                rounds += 1;
            }
            match result {
                Ok(done) => match phase {
                    drain::Phase::Copy => budget = budget.saturating_sub(done.rows),
                    drain::Phase::Swap => {
                        tracing::info!(table = %table.name, "DEFAULT partition drained");
                        tr.created.push(format!("{} (drained)", step.label));
                        metrics::add(&metrics::PARTITIONS_CREATED, 1);
                    }
                    // The copy is planned again from what the setup recorded.
                    drain::Phase::Setup => continue 'rounds,
                    _ => {}
                },
                Err(e) => {
                    tr.errors.push(e.to_string());
                    return Drained::Stop;
                }
            }
        }
        return Drained::Stop;
    }
    Drained::Stop
}
