//! The daemon's state and one handler per event: watchdog, probe, reload, connect, tick,
//! pass done, shutdown.

use super::*;

/// What a handler tells the loop.
pub(super) enum Flow {
    /// Wait for the next event.
    Continue,
    /// Shutdown was asked for (during the handler's bounded calls, or as the event itself).
    Shutdown,
}

/// The daemon's state, owned by its loop; one handler per event.
pub(super) struct Daemon {
    /// Where the configuration is read again on SIGHUP.
    pub(super) config_path: PathBuf,
    /// The configuration in force (shared with the pass in progress).
    pub(super) config: Arc<Config>,
    /// systemd notifications.
    pub(super) notifier: Notifier,
    /// True once shutdown is asked for; every bounded call races it.
    pub(super) shutdown: watch::Receiver<bool>,
    /// The `/metrics` endpoint, if configured: its address and task.
    pub(super) metrics_server: Option<(std::net::SocketAddr, JoinHandle<()>)>,
    /// Skips schedule ticks while a pass runs.
    pub(super) gate: Arc<Gate>,
    /// Where the schedule sends its ticks (kept to restart the schedule on reload).
    pub(super) tick_tx: mpsc::Sender<()>,
    /// The cron schedule and its heartbeat.
    pub(super) schedule: Schedule,
    /// Set at shutdown: the pass in progress stops between steps.
    pub(super) stop: Arc<AtomicBool>,
    /// The session, while connected and no pass holds it.
    pub(super) client: Option<Client>,
    /// What this instance is towards the database.
    pub(super) role: Role,
    /// The next wait after a failed connection attempt.
    pub(super) backoff: Duration,
    /// When to try connecting next.
    pub(super) next_attempt: Instant,
    /// The pass in progress, holding the session.
    pub(super) running: Option<Running>,
    /// Pass outcomes, for the status line and the consecutive failure count.
    pub(super) outcomes: Outcomes,
    /// Whether READY=1 was sent.
    pub(super) ready_sent: bool,
    /// The last pass's summary, for the status line.
    pub(super) last_pass: String,
    /// A reload changed the database settings while a pass ran: reconnect when it ends.
    pub(super) reconnect_pending: bool,
    /// A pass runs as soon as this instance can lead, then on schedule.
    pub(super) reconcile: bool,
    /// Liveness probes in a row that got no answer while a pass runs.
    pub(super) unanswered_probes: u32,
}

impl Daemon {
    pub(super) fn set_status(&self) {
        set_status(&self.notifier, &self.role, &self.last_pass, &self.outcomes);
    }

    pub(super) fn bound(&self) -> Duration {
        call_bound(&self.config)
    }

    /// READY=1 the first time the daemon has a usable role.
    pub(super) fn ready_if_usable(&mut self) {
        if !self.ready_sent
            && !matches!(self.role, Role::Disconnected(_) | Role::SchemaNotCurrent(_))
        {
            self.notifier.ready();
            self.ready_sent = true;
        }
    }

    pub(super) fn start_pass(&mut self) {
        self.reconcile = false;
        let client = self.client.take().expect("a leader has a session");
        self.running = Some(start_pass(
            &self.gate,
            client,
            self.config.clone(),
            self.stop.clone(),
        ));
    }

    pub(super) fn lost_session(&mut self) {
        lost_session(&mut self.client, &mut self.role, &mut self.next_attempt);
    }

    pub(super) fn on_watchdog(&self) -> Flow {
        if self.schedule.ticking() {
            self.notifier.watchdog();
        } else {
            tracing::error!("the scheduler has stopped ticking; not feeding the watchdog");
        }
        Flow::Continue
    }

    /// While a pass runs: does the server still answer a fresh connection? After
    /// [`PROBES_BEFORE_ABANDON`] unanswered probes the pass is abandoned.
    pub(super) async fn on_probe(&mut self) -> Flow {
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
    pub(super) async fn on_reload(&mut self) -> Flow {
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
            // The new address is bound before the old endpoint stops: one that cannot be
            // bound leaves the running endpoint serving (a daemon without metrics looks down).
            match start_metrics(&new).await {
                Ok(started) => {
                    if let Some((_, task)) = std::mem::replace(&mut self.metrics_server, started) {
                        task.abort();
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "metrics endpoint not moved; the running one keeps serving");
                }
            }
        }
        // New connection settings (the password from a rotated password_file included): give
        // up the session (and the lock) and connect again with the new ones; a pass in
        // progress finishes on its session first.
        if new.database != self.config.database {
            self.reconnect_pending = true;
        }
        self.config = new;
        metrics::SCHEDULE_PERIOD.set(self.config.maintenance.schedule_period.as_secs() as i64);
        // A table no longer configured has no gauges: frozen values would page for a table
        // nobody manages (PartwardenWritesFailSoon).
        let tables: Vec<String> = self
            .config
            .tables
            .iter()
            .map(|t| t.name.to_string())
            .collect();
        metrics::retain_tables(&tables);
        if self.reconnect_pending && self.running.is_none() {
            self.reconnect_pending = false;
            reconnect(&mut self.client, &mut self.role, &mut self.next_attempt);
        }
        tracing::info!("configuration reloaded");
        Flow::Continue
    }

    /// Time for a connection attempt: connect, decide the role, lead a first pass at once.
    pub(super) async fn on_connect(&mut self) -> Flow {
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

    pub(super) fn retry_later(&mut self) {
        self.next_attempt = Instant::now() + self.backoff;
        self.backoff = (self.backoff * 2).min(RECONNECT_CAP);
    }

    /// A schedule tick: check the session and the role; a leader runs a pass.
    pub(super) async fn on_tick(&mut self) -> Flow {
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
    pub(super) async fn on_pass_done(&mut self, (c, report): (Client, pass::Report)) -> Flow {
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
    pub(super) async fn shut_down(mut self) {
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
