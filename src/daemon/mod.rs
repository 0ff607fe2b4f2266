//! The daemon: `partwarden` with no mode flag, as a systemd service.
//!
//! One loop owns everything that changes state: the database session, the leader role, the
//! pass in progress and the schedule. It waits on signals (SIGTERM/SIGINT stop, SIGHUP
//! reloads), on scheduler ticks, on the pass in progress, and (while the database is away) on
//! the next reconnect attempt. Passes run as a task that owns the session for their duration,
//! so the loop keeps answering signals while a pass runs, and ticks that come meanwhile are
//! skipped by the `Gate`.
//!
//! **One leader.** The session that runs passes holds the pass advisory lock (session level, on
//! this dedicated connection, never pooled). Other instances are standbys: they try the lock at
//! every tick, so they take over within one schedule period when the leader goes away. DDL only
//! ever runs on the lock-holding session, so when that connection is lost the leader can issue
//! no more DDL, and the server has already released its lock for the next leader.
//!
//! **Outages.** An unreachable database never stops the daemon: it retries with capped
//! exponential backoff (1 s to 60 s), logging each attempt, and resumes; a step interrupted by
//! the outage is finished by the next pass (the ledger). A database that stops *answering*
//! (a stalled network path keeps the TCP connection open) cannot hold the loop either: every
//! call the loop makes is bounded by `connect_timeout + statement_timeout` and races the
//! shutdown signal, and while a pass runs the loop checks on a fresh connection every few
//! seconds that the server still answers, abandoning the pass (its session is dropped) when
//! it does not. SIGTERM is honoured within `shutdown_timeout` in any state, and the systemd
//! watchdog is fed by the loop itself, on a monotonic clock, only while it turns and the
//! scheduler ticks.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use chrono::Utc;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_postgres::Client;

use crate::config::Config;
use crate::db;
use crate::metrics;
use crate::notify::{self, Notifier};
use crate::pass::{self, PassError};
use crate::scheduler::{Gate, Outcomes, Schedule};

mod handlers;
mod session;

use handlers::{Daemon, Flow};
use session::*;

/// First wait after a failed connection attempt; doubled after each further failure.
const RECONNECT_FIRST: Duration = Duration::from_secs(1);
/// Longest wait between connection attempts.
const RECONNECT_CAP: Duration = Duration::from_secs(60);
/// At shutdown, how long to wait for the leader lock's explicit release.
const UNLOCK_WAIT: Duration = Duration::from_secs(1);
/// While a pass runs: how often a fresh connection checks that the server still answers.
const PROBE_EVERY: Duration = Duration::from_secs(5);
/// Unanswered probes in a row after which a running pass is abandoned.
const PROBES_BEFORE_ABANDON: u32 = 2;

/// What became of a bounded call of the loop.
enum Bounded<T> {
    /// It finished.
    Done(T),
    /// It did not answer within the bound.
    TimedOut(Duration),
    /// Shutdown was asked for meanwhile.
    Shutdown,
}

/// Runs `fut` for at most `limit`, or until shutdown is asked for.
async fn bounded<T>(
    shutdown: &watch::Receiver<bool>,
    limit: Duration,
    fut: impl Future<Output = T>,
) -> Bounded<T> {
    let mut rx = shutdown.clone();
    tokio::select! {
        r = tokio::time::timeout(limit, fut) => match r {
            Ok(v) => Bounded::Done(v),
            Err(_) => Bounded::TimedOut(limit),
        },
        _ = rx.wait_for(|s| *s) => Bounded::Shutdown,
    }
}

/// The bound of one call of the loop: a connection, then one statement.
fn call_bound(config: &Config) -> Duration {
    config.database.connect_timeout + config.database.statement_timeout
}

/// Whether a fresh session can be opened and answers `SELECT 1`, within `connect_timeout`
/// each. A server that answers with an error (too many clients) is up.
async fn probe(config: &Config) -> bool {
    match db::connect(&config.database).await {
        Ok(c) => matches!(
            tokio::time::timeout(config.database.connect_timeout, c.simple_query("SELECT 1")).await,
            Ok(Ok(_))
        ),
        Err(e) => e.server_answered(),
    }
}

/// Why the daemon could not start (after start, nothing stops it but a signal).
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The scheduler could not start.
    #[error("{0}")]
    Schedule(String),
    /// Signal handlers could not be installed, or the metrics address could not be bound.
    #[error("{0}")]
    Io(String),
}

/// What this instance is, towards the database.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Role {
    /// No session.
    Disconnected(String),
    /// Connected, but the schema is not what this binary needs; no passes.
    SchemaNotCurrent(String),
    /// Connected to a server in recovery: no DDL is ever sent to it.
    InRecovery,
    /// Another session holds the pass lock.
    Standby(i32),
    /// This session holds the pass lock and runs passes.
    Leader,
}

impl Role {
    fn describe(&self) -> String {
        match self {
            Role::Disconnected(why) => format!("waiting for the database: {why}"),
            Role::SchemaNotCurrent(why) => format!("schema not current: {why}"),
            Role::InRecovery => "standby: the server is in recovery".into(),
            Role::Standby(pid) => format!("standby: pid {pid} holds the leader lock"),
            Role::Leader => "leader".into(),
        }
    }
}

/// A pass in progress, owning the session until it ends. It is polled by the daemon's loop
/// itself rather than spawned, so the loop is the only owner of the session at all times.
type Running = Pin<Box<dyn Future<Output = (Client, pass::Report)>>>;

/// Runs the daemon until `shutdown` completes. Returns an error only when it cannot start.
///
/// The daemon runs until `shutdown` completes (in the manner of mini-redis's
/// `server::run(listener, shutdown)`): the binary passes [`signals`], a test may pass anything.
/// The loop waits for the next event and hands it to a `Daemon` handler.
pub async fn run(
    config_path: PathBuf,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), DaemonError> {
    let io = |what: &str, e: std::io::Error| DaemonError::Io(format!("{what}: {e}"));
    let mut sighup = signal(SignalKind::hangup()).map_err(|e| io("SIGHUP handler", e))?;
    // Shutdown becomes a value every bounded call can watch, not only the loop's select.
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = shutdown_tx.send(true);
    });
    let config = Arc::new(config);
    let metrics_server = start_metrics(&config).await?;
    let gate = Arc::new(Gate::default());
    let (tick_tx, mut ticks) = mpsc::channel::<()>(1);
    let schedule = Schedule::start(&config.maintenance.schedule, gate.clone(), tick_tx.clone())
        .await
        .map_err(DaemonError::Schedule)?;
    // Fed from the loop itself: if the loop stops turning, systemd restarts the service.
    let watchdog_every = notify::watchdog_interval().map(|every| every / 2);
    let mut watchdog_tick =
        tokio::time::interval(watchdog_every.unwrap_or(Duration::from_secs(3600)));
    let mut probe_tick = tokio::time::interval(PROBE_EVERY);
    probe_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tracing::info!(schedule = %config.maintenance.schedule, tables = config.tables.len(), "partwarden daemon starting");
    metrics::SCHEDULE_PERIOD.set(config.maintenance.schedule_period.as_secs() as i64);

    let mut d = Daemon {
        config_path,
        config,
        notifier: Notifier::from_env(),
        shutdown: shutdown_rx,
        metrics_server,
        gate,
        tick_tx,
        schedule,
        stop: Arc::new(AtomicBool::new(false)),
        client: None,
        role: Role::Disconnected("not connected yet".into()),
        backoff: RECONNECT_FIRST,
        next_attempt: Instant::now(),
        running: None,
        outcomes: Outcomes::default(),
        ready_sent: false,
        last_pass: String::from("no pass yet"),
        reconnect_pending: false,
        reconcile: true,
        unanswered_probes: 0,
    };
    d.set_status();
    loop {
        let flow = tokio::select! {
            _ = async { let mut rx = d.shutdown.clone(); rx.wait_for(|s| *s).await.map(|_| ()) } => Flow::Shutdown,
            _ = watchdog_tick.tick(), if watchdog_every.is_some() => d.on_watchdog(),
            _ = probe_tick.tick(), if d.running.is_some() => d.on_probe().await,
            _ = sighup.recv() => d.on_reload().await,
            _ = tokio::time::sleep_until(d.next_attempt), if d.client.is_none() && d.running.is_none() => d.on_connect().await,
            Some(()) = ticks.recv(), if d.running.is_none() => d.on_tick().await,
            done = join(&mut d.running) => d.on_pass_done(done).await,
        };
        if let Flow::Shutdown = flow {
            break;
        }
    }
    d.shut_down().await;
    Ok(())
}

/// Completes on the first SIGTERM or SIGINT: the daemon's shutdown in production. Fails only
/// when the handlers cannot be installed.
pub fn signals() -> Result<impl Future<Output = ()> + Send + 'static, DaemonError> {
    let io = |what: &str, e: std::io::Error| DaemonError::Io(format!("{what}: {e}"));
    let mut sigterm = signal(SignalKind::terminate()).map_err(|e| io("SIGTERM handler", e))?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(|e| io("SIGINT handler", e))?;
    Ok(async move {
        tokio::select! {
            _ = sigterm.recv() => tracing::info!("SIGTERM: shutting down"),
            _ = sigint.recv() => tracing::info!("SIGINT: shutting down"),
        }
    })
}
