//! The daemon: `partwarden` with no mode flag, as a systemd service.
//!
//! One loop owns everything that changes state: the database session, the leader role, the
//! pass in progress and the schedule. It waits on signals (SIGTERM/SIGINT stop, SIGHUP
//! reloads), on scheduler ticks, on the pass in progress, and (while the database is away) on
//! the next reconnect attempt. Passes run as a task that owns the session for their duration,
//! so the loop keeps answering signals while a pass runs, and ticks that come meanwhile are
//! skipped by the [`Gate`].
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

use crate::catalog::{self, RelName};
use crate::config::Config;
use crate::db;
use crate::metrics;
use crate::notify::{self, Notifier};
use crate::pass::{self, PassError};
use crate::scheduler::{Gate, Outcomes, Schedule};

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
/// The loop waits for the next event and hands it to a [`Daemon`] handler.
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

/// What a handler tells the loop.
enum Flow {
    /// Wait for the next event.
    Continue,
    /// Shutdown was asked for (during the handler's bounded calls, or as the event itself).
    Shutdown,
}

/// The daemon's state, owned by its loop; one handler per event.
struct Daemon {
    /// Where the configuration is read again on SIGHUP.
    config_path: PathBuf,
    /// The configuration in force (shared with the pass in progress).
    config: Arc<Config>,
    /// systemd notifications.
    notifier: Notifier,
    /// True once shutdown is asked for; every bounded call races it.
    shutdown: watch::Receiver<bool>,
    /// The `/metrics` endpoint, if configured: its address and task.
    metrics_server: Option<(std::net::SocketAddr, JoinHandle<()>)>,
    /// Skips schedule ticks while a pass runs.
    gate: Arc<Gate>,
    /// Where the schedule sends its ticks (kept to restart the schedule on reload).
    tick_tx: mpsc::Sender<()>,
    /// The cron schedule and its heartbeat.
    schedule: Schedule,
    /// Set at shutdown: the pass in progress stops between steps.
    stop: Arc<AtomicBool>,
    /// The session, while connected and no pass holds it.
    client: Option<Client>,
    /// What this instance is towards the database.
    role: Role,
    /// The next wait after a failed connection attempt.
    backoff: Duration,
    /// When to try connecting next.
    next_attempt: Instant,
    /// The pass in progress, holding the session.
    running: Option<Running>,
    /// Pass outcomes, for the status line and the consecutive failure count.
    outcomes: Outcomes,
    /// Whether READY=1 was sent.
    ready_sent: bool,
    /// The last pass's summary, for the status line.
    last_pass: String,
    /// A reload changed the database settings while a pass ran: reconnect when it ends.
    reconnect_pending: bool,
    /// A pass runs as soon as this instance can lead, then on schedule.
    reconcile: bool,
    /// Liveness probes in a row that got no answer while a pass runs.
    unanswered_probes: u32,
}

impl Daemon {
    fn set_status(&self) {
        set_status(&self.notifier, &self.role, &self.last_pass, &self.outcomes);
    }

    fn bound(&self) -> Duration {
        call_bound(&self.config)
    }

    /// READY=1 the first time the daemon has a usable role.
    fn ready_if_usable(&mut self) {
        if !self.ready_sent
            && !matches!(self.role, Role::Disconnected(_) | Role::SchemaNotCurrent(_))
        {
            self.notifier.ready();
            self.ready_sent = true;
        }
    }

    fn start_pass(&mut self) {
        self.reconcile = false;
        let client = self.client.take().expect("a leader has a session");
        self.running = Some(start_pass(
            &self.gate,
            client,
            self.config.clone(),
            self.stop.clone(),
        ));
    }

    fn lost_session(&mut self) {
        lost_session(&mut self.client, &mut self.role, &mut self.next_attempt);
    }

    fn on_watchdog(&self) -> Flow {
        if self.schedule.ticking() {
            self.notifier.watchdog();
        } else {
            tracing::error!("the scheduler has stopped ticking; not feeding the watchdog");
        }
        Flow::Continue
    }

    /// While a pass runs: does the server still answer a fresh connection? After
    /// [`PROBES_BEFORE_ABANDON`] unanswered probes the pass is abandoned.
    async fn on_probe(&mut self) -> Flow {
        let answered = match bounded(&self.shutdown, self.bound(), probe(&self.config)).await {
            Bounded::Shutdown => return Flow::Shutdown,
            Bounded::TimedOut(_) => false,
            Bounded::Done(ok) => ok,
        };
        self.unanswered_probes = if answered {
            0
        } else {
            self.unanswered_probes + 1
        };
        if self.unanswered_probes >= PROBES_BEFORE_ABANDON {
            tracing::error!(
                probes = self.unanswered_probes,
                "database unreachable: it has not answered a fresh connection for {} s; abandoning the pass in progress (its session is dropped; the next pass finishes its work)",
                (PROBE_EVERY * self.unanswered_probes).as_secs()
            );
            self.running = None;
            self.gate.set_running(false);
            self.unanswered_probes = 0;
            self.outcomes.record(false);
            metrics::pass("failed");
            self.lost_session();
            self.set_status();
        }
        Flow::Continue
    }

    /// SIGHUP: read the configuration again; keep the running one if it is invalid.
    async fn on_reload(&mut self) -> Flow {
        let new = match Config::load(&self.config_path) {
            Err(e) => {
                tracing::error!(error = %e, "configuration reload failed; keeping the running configuration");
                return Flow::Continue;
            }
            Ok(new) => Arc::new(new),
        };
        if new.maintenance.schedule != self.config.maintenance.schedule {
            match Schedule::start(
                &new.maintenance.schedule,
                self.gate.clone(),
                self.tick_tx.clone(),
            )
            .await
            {
                Ok(s) => std::mem::replace(&mut self.schedule, s).stop().await,
                Err(e) => {
                    tracing::error!(error = %e, "configuration reload failed; keeping the running configuration");
                    return Flow::Continue;
                }
            }
        }
        if new.metrics.listen != self.config.metrics.listen {
            if let Some((_, task)) = self.metrics_server.take() {
                task.abort();
            }
            self.metrics_server = start_metrics(&new).await.unwrap_or_else(|e| {
                tracing::error!(error = %e, "metrics endpoint not restarted");
                None
            });
        }
        // New connection settings (the password from a rotated password_file included): give
        // up the session (and the lock) and connect again with the new ones; a pass in
        // progress finishes on its session first.
        if new.database != self.config.database {
            self.reconnect_pending = true;
        }
        self.config = new;
        if self.reconnect_pending && self.running.is_none() {
            self.reconnect_pending = false;
            reconnect(&mut self.client, &mut self.role, &mut self.next_attempt);
        }
        tracing::info!("configuration reloaded");
        Flow::Continue
    }

    /// Time for a connection attempt: connect, decide the role, lead a first pass at once.
    async fn on_connect(&mut self) -> Flow {
        let connect = db::connect(&self.config.database);
        let connected = match bounded(&self.shutdown, self.bound(), connect).await {
            Bounded::Shutdown => return Flow::Shutdown,
            Bounded::TimedOut(t) => Err(format!("no answer within {t:?}")),
            Bounded::Done(r) => r.map_err(|e| e.to_string()),
        };
        match connected {
            Ok(c) => {
                tracing::info!("connected to PostgreSQL");
                self.backoff = RECONNECT_FIRST;
                match bounded(&self.shutdown, self.bound(), establish(&c, &self.role)).await {
                    Bounded::Shutdown => return Flow::Shutdown,
                    Bounded::TimedOut(t) => {
                        tracing::warn!(
                            retry_in_s = self.backoff.as_secs(),
                            "database unreachable: no answer within {t:?}; retrying"
                        );
                        self.role = Role::Disconnected(format!("no answer within {t:?}"));
                        self.retry_later();
                    }
                    Bounded::Done(r) => {
                        self.role = r;
                        self.client = Some(c);
                        tracing::info!(role = %self.role.describe(), "role after connecting");
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, retry_in_s = self.backoff.as_secs(), "database unreachable; retrying");
                self.role = Role::Disconnected(e);
                self.retry_later();
            }
        }
        self.ready_if_usable();
        self.set_status();
        if self.reconcile && self.role == Role::Leader {
            self.start_pass();
        }
        Flow::Continue
    }

    fn retry_later(&mut self) {
        self.next_attempt = Instant::now() + self.backoff;
        self.backoff = (self.backoff * 2).min(RECONNECT_CAP);
    }

    /// A schedule tick: check the session and the role; a leader runs a pass.
    async fn on_tick(&mut self) -> Flow {
        let Some(c) = self.client.as_ref() else {
            tracing::warn!("maintenance pass due, but the database is unreachable: skipped");
            return Flow::Continue;
        };
        if c.is_closed() {
            self.lost_session();
            self.set_status();
            return Flow::Continue;
        }
        let before = self.role.clone();
        self.role = match bounded(&self.shutdown, self.bound(), establish(c, &self.role)).await {
            Bounded::Shutdown => return Flow::Shutdown,
            Bounded::Done(r) => r,
            Bounded::TimedOut(t) => {
                tracing::warn!(
                    "database unreachable: no answer within {t:?}; dropping the session"
                );
                self.lost_session();
                self.set_status();
                return Flow::Continue;
            }
        };
        if self.role != before {
            tracing::info!(role = %self.role.describe(), "role changed");
        }
        self.ready_if_usable();
        self.set_status();
        if self.role == Role::Leader {
            self.start_pass();
        }
        Flow::Continue
    }

    /// The pass in progress ended: record it, take the session back.
    async fn on_pass_done(&mut self, (c, report): (Client, pass::Report)) -> Flow {
        self.running = None;
        self.gate.set_running(false);
        let ok = report.ok();
        self.outcomes.record(ok);
        metrics::pass(if ok { "ok" } else { "failed" });
        if ok {
            metrics::LAST_SUCCESS_UNIX.set(Utc::now().timestamp());
        }
        for t in &report.tables {
            tracing::info!(table = %t.table, created = t.created.len(), expired = t.expired.len(),
                archived_bytes = t.archived_bytes, errors = t.errors.len(), "pass: {}", t.summary_line(false));
            for e in &t.errors {
                tracing::error!(table = %t.table, error = %e, "pass step failed");
            }
        }
        if !ok {
            tracing::warn!(
                consecutive_failures = self.outcomes.consecutive_failures,
                "maintenance pass had failures"
            );
        }
        self.last_pass = pass_summary(&report, ok);
        self.unanswered_probes = 0;
        if c.is_closed() {
            self.client = Some(c);
            self.lost_session();
        } else {
            let gauges = update_gauges(&c, &self.config, &report);
            match bounded(&self.shutdown, self.bound(), gauges).await {
                Bounded::Shutdown => {
                    self.client = Some(c);
                    return Flow::Shutdown;
                }
                Bounded::Done(()) => self.client = Some(c),
                Bounded::TimedOut(t) => {
                    tracing::warn!(
                        "database unreachable: no answer within {t:?}; dropping the session"
                    );
                    self.client = Some(c);
                    self.lost_session();
                }
            }
            if self.reconnect_pending {
                self.reconnect_pending = false;
                reconnect(&mut self.client, &mut self.role, &mut self.next_attempt);
            }
        }
        self.set_status();
        Flow::Continue
    }

    /// Stops the schedule, lets the step in progress finish within shutdown_timeout, releases
    /// the leader lock.
    async fn shut_down(mut self) {
        self.notifier.stopping();
        self.notifier.status("stopping");
        self.schedule.stop().await;
        self.stop.store(true, Ordering::SeqCst);
        if let Some(handle) = self.running.take() {
            tracing::info!(
                timeout_s = self.config.daemon.shutdown_timeout.as_secs(),
                "waiting for the step in progress to finish"
            );
            match tokio::time::timeout(self.config.daemon.shutdown_timeout, handle).await {
                Ok((c, _)) => self.client = Some(c),
                Err(_) => tracing::warn!(
                    "the step in progress did not finish within shutdown_timeout; exiting anyway (the next pass finishes it)"
                ),
            }
        }
        if let Some(c) = self.client.take()
            && self.role == Role::Leader
        {
            // Closing the session releases the lock too; this only says so sooner, and waits
            // for no stalled server.
            let unlock = crate::lock::release(&c, crate::lock::Lock::Pass);
            match tokio::time::timeout(UNLOCK_WAIT, unlock).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    tracing::debug!(error = %db::error_text(&e), "releasing the leader lock")
                }
                Err(_) => {
                    tracing::debug!("releasing the leader lock: no answer; the session closes")
                }
            }
        }
        metrics::LEADER.set(0);
        if let Some((_, task)) = self.metrics_server.take() {
            task.abort();
        }
        tracing::info!("partwarden daemon stopped");
    }
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

async fn start_metrics(
    config: &Config,
) -> Result<Option<(std::net::SocketAddr, JoinHandle<()>)>, DaemonError> {
    let Some(addr) = config.metrics.listen else {
        return Ok(None);
    };
    let (local, task) = metrics::serve(addr)
        .await
        .map_err(|e| DaemonError::Io(format!("metrics endpoint {addr}: {e}")))?;
    tracing::info!(address = %local, "serving Prometheus metrics on /metrics");
    Ok(Some((local, task)))
}

/// Decides the role of a connected session: in recovery, schema not current, leader (lock
/// taken now or held already), or standby.
async fn establish(client: &Client, current: &Role) -> Role {
    if *current == Role::Leader {
        // Still ours as long as the session lives; check it answers.
        return match client.simple_query("SELECT 1").await {
            Ok(_) => Role::Leader,
            Err(e) => Role::Disconnected(db::error_text(&e)),
        };
    }
    let recovery = match client.query_one("SELECT pg_is_in_recovery()", &[]).await {
        Ok(r) => r.get::<_, bool>(0),
        Err(e) => return Role::Disconnected(db::error_text(&e)),
    };
    if recovery {
        return Role::InRecovery;
    }
    if let Err(e) = pass::require_current_schema(client).await {
        if !matches!(current, Role::SchemaNotCurrent(_)) {
            tracing::error!(error = %e, "not running passes until the schema is current");
        }
        return match e {
            PassError::Db(e) => Role::Disconnected(db::error_text(&e)),
            other => Role::SchemaNotCurrent(other.to_string()),
        };
    }
    match pass::try_lock(client).await {
        Ok(Ok(())) => {
            tracing::info!("became leader: this instance runs the maintenance passes");
            metrics::LEADER.set(1);
            Role::Leader
        }
        Ok(Err(pid)) => {
            if *current != Role::Standby(pid) {
                tracing::info!(
                    leader_pid = pid,
                    "standby: another instance holds the leader lock"
                );
            }
            Role::Standby(pid)
        }
        Err(e) => Role::Disconnected(db::error_text(&e)),
    }
}

/// Gives up the session (and with it the leader lock) to connect again with reloaded settings.
fn reconnect(client: &mut Option<Client>, role: &mut Role, next_attempt: &mut Instant) {
    tracing::info!("database settings changed: reconnecting with the reloaded ones");
    *client = None;
    metrics::LEADER.set(0);
    *role = Role::Disconnected("reconnecting with the reloaded settings".into());
    *next_attempt = Instant::now();
}

fn lost_session(client: &mut Option<Client>, role: &mut Role, next_attempt: &mut Instant) {
    if *role == Role::Leader {
        tracing::error!(
            "lost the database session: no more DDL from this instance until it reconnects and leads again"
        );
    } else {
        tracing::warn!("lost the database session; reconnecting");
    }
    *client = None;
    *role = Role::Disconnected("session lost".into());
    metrics::LEADER.set(0);
    *next_attempt = Instant::now();
}

fn start_pass(
    gate: &Arc<Gate>,
    mut client: Client,
    config: Arc<Config>,
    stop: Arc<AtomicBool>,
) -> Running {
    gate.set_running(true);
    Box::pin(async move {
        let opts = pass::Options {
            dry_run: false,
            now: None,
        };
        let started = std::time::Instant::now();
        let report = pass::run(&mut client, &config, opts, &stop, &mut std::io::sink()).await;
        tracing::info!(
            elapsed_ms = started.elapsed().as_millis() as u64,
            ok = report.ok(),
            "maintenance pass finished"
        );
        (client, report)
    })
}

async fn join(running: &mut Option<Running>) -> (Client, pass::Report) {
    match running {
        Some(pass) => pass.as_mut().await,
        None => std::future::pending().await,
    }
}

fn pass_summary(report: &pass::Report, ok: bool) -> String {
    let created: usize = report.tables.iter().map(|t| t.created.len()).sum();
    let expired: usize = report.tables.iter().map(|t| t.expired.len()).sum();
    let runway = report
        .tables
        .iter()
        .filter_map(|t| {
            t.runway
                .as_ref()
                .map(|r| format!("{} {} periods", t.table, r.periods_ahead))
        })
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "last pass {} at {} (created {created}, expired {expired}); runway {runway}",
        if ok { "ok" } else { "FAILED" },
        Utc::now().format("%H:%M:%SZ")
    )
}

fn set_status(notifier: &Notifier, role: &Role, last_pass: &str, outcomes: &Outcomes) {
    let failures = if outcomes.consecutive_failures > 0 {
        format!(
            "; {} consecutive failed passes",
            outcomes.consecutive_failures
        )
    } else {
        String::new()
    };
    notifier.status(&format!("{}; {last_pass}{failures}", role.describe()));
}

async fn update_gauges(client: &Client, config: &Config, report: &pass::Report) {
    for (table, tr) in config.tables.iter().zip(&report.tables) {
        let rel = RelName::from(&table.name);
        let has_rows = match catalog::snapshot(client, &rel).await {
            Ok(snap) => match snap.default_partition() {
                None => false,
                Some(d) => client
                    .query_one(
                        &format!("SELECT EXISTS (SELECT 1 FROM ONLY {})", d.name.quoted()),
                        &[],
                    )
                    .await
                    .map(|r| r.get::<_, bool>(0))
                    .unwrap_or(false),
            },
            Err(_) => false,
        };
        let periods = tr.runway.as_ref().map_or(0, |r| r.periods_ahead);
        metrics::set_table(&tr.table, periods, has_rows);
    }
}
