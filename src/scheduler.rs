//! The schedule: cron ticks in, passes that never overlap out.
//!
//! tokio-cron-scheduler fires a cron-expression job (never its fixed-interval "repeated" jobs,
//! which can stop firing for good under load: mvniekerk/tokio-cron-scheduler#113). The job
//! only offers a tick to the `Gate`: while a pass is running the tick is skipped (and
//! counted), otherwise it is handed to the daemon's loop, which runs passes one at a time. A
//! second job beats a heartbeat every few seconds; the systemd watchdog is fed only while that
//! heartbeat is fresh, so a stalled scheduler gets the service restarted.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_cron_scheduler::{Job, JobScheduler};

/// How often the heartbeat job fires.
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(5);
/// Cron expression of the heartbeat job (every 5 seconds, matching [`HEARTBEAT_EVERY`]).
const HEARTBEAT_CRON: &str = "*/5 * * * * *";

/// What happened to an offered tick.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Offer {
    /// Handed to the loop: a pass will run.
    Accepted,
    /// A pass is still running (or one is already due): skipped.
    Skipped,
}

/// Lets a tick through only when no pass is running or pending.
#[derive(Debug, Default)]
pub struct Gate {
    running: AtomicBool,
    skipped: AtomicU64,
}

impl Gate {
    /// Offers a tick: sends it on `tx` unless a pass is running or already pending.
    pub fn offer(&self, tx: &mpsc::Sender<()>) -> Offer {
        if self.running.load(Ordering::SeqCst) || tx.try_send(()).is_err() {
            self.skipped.fetch_add(1, Ordering::Relaxed);
            crate::metrics::pass("skipped");
            tracing::warn!("maintenance pass due while the previous one is still running: skipped");
            return Offer::Skipped;
        }
        Offer::Accepted
    }

    /// Marks a pass as running (true) or finished (false).
    pub fn set_running(&self, running: bool) {
        self.running.store(running, Ordering::SeqCst);
    }

    /// Ticks skipped so far.
    #[cfg(test)]
    pub fn skipped(&self) -> u64 {
        self.skipped.load(Ordering::Relaxed)
    }
}

/// Counts pass results; consecutive failures reset on success.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Outcomes {
    /// Passes run.
    pub passes: u64,
    /// Passes with a failure.
    pub failed: u64,
    /// Failures since the last success.
    pub consecutive_failures: u64,
}

impl Outcomes {
    /// Records one pass.
    pub fn record(&mut self, ok: bool) {
        self.passes += 1;
        if ok {
            self.consecutive_failures = 0;
        } else {
            self.failed += 1;
            self.consecutive_failures += 1;
        }
    }
}

/// Milliseconds on a monotonic clock (since the first call in this process): heartbeats are
/// compared on it, so a wall-clock step (NTP, a restored VM) neither starves nor fakes them.
pub fn monotonic_millis() -> i64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    START
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_millis() as i64
}

/// The running cron scheduler.
pub struct Schedule {
    scheduler: JobScheduler,
    /// [`monotonic_millis`] of the last heartbeat.
    pub heartbeat: Arc<AtomicI64>,
}

impl Schedule {
    /// Starts the maintenance job on `cron` (seconds field) and the heartbeat job.
    pub async fn start(
        cron: &str,
        gate: Arc<Gate>,
        tx: mpsc::Sender<()>,
    ) -> Result<Schedule, String> {
        let scheduler = JobScheduler::new()
            .await
            .map_err(|e| format!("starting the scheduler: {e}"))?;
        let job = Job::new_async(cron, move |_, _| {
            let gate = gate.clone();
            let tx = tx.clone();
            Box::pin(async move {
                gate.offer(&tx);
            })
        })
        .map_err(|e| format!("schedule {cron:?}: {e}"))?;
        scheduler
            .add(job)
            .await
            .map_err(|e| format!("adding the maintenance job: {e}"))?;
        let heartbeat = Arc::new(AtomicI64::new(monotonic_millis()));
        let beat = heartbeat.clone();
        let job = Job::new_async(HEARTBEAT_CRON, move |_, _| {
            let beat = beat.clone();
            Box::pin(async move {
                beat.store(monotonic_millis(), Ordering::SeqCst);
            })
        })
        .map_err(|e| format!("heartbeat job: {e}"))?;
        scheduler
            .add(job)
            .await
            .map_err(|e| format!("adding the heartbeat job: {e}"))?;
        scheduler
            .start()
            .await
            .map_err(|e| format!("starting the scheduler: {e}"))?;
        Ok(Schedule {
            scheduler,
            heartbeat,
        })
    }

    /// Whether the heartbeat is fresh: the scheduler is ticking.
    pub fn ticking(&self) -> bool {
        let age = monotonic_millis() - self.heartbeat.load(Ordering::SeqCst);
        age < (HEARTBEAT_EVERY * 3).as_millis() as i64
    }

    /// Stops firing.
    pub async fn stop(mut self) {
        if let Err(e) = self.scheduler.shutdown().await {
            tracing::debug!(error = %e, "scheduler shutdown");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// The daemon's use of the gate, with a pass that takes 2.5 ticks: passes never overlap,
    /// ticks during a pass are skipped, and a failing pass does not stop the next ones.
    #[tokio::test(start_paused = true)]
    async fn passes_never_overlap_and_late_ticks_are_skipped() {
        let gate = Arc::new(Gate::default());
        let (tx, mut rx) = mpsc::channel(1);
        let ticker = {
            let gate = gate.clone();
            tokio::spawn(async move {
                let mut every = tokio::time::interval(Duration::from_secs(1));
                for _ in 0..10 {
                    every.tick().await;
                    gate.offer(&tx);
                }
            })
        };
        let concurrent = Arc::new(AtomicUsize::new(0));
        let mut max_concurrent = 0;
        let mut outcomes = Outcomes::default();
        while let Some(()) = rx.recv().await {
            gate.set_running(true);
            let now = concurrent.fetch_add(1, Ordering::SeqCst) + 1;
            max_concurrent = max_concurrent.max(now);
            tokio::time::sleep(Duration::from_millis(2500)).await;
            concurrent.fetch_sub(1, Ordering::SeqCst);
            // Every other pass fails.
            outcomes.record(outcomes.passes % 2 == 0);
            gate.set_running(false);
            if ticker.is_finished() && rx.is_empty() {
                break;
            }
        }
        assert_eq!(max_concurrent, 1);
        // Ticks at 0..9 s; passes at 0, 3, 6, 9 s (each 2.5 s), the ticks between skipped.
        assert_eq!(outcomes.passes, 4, "{outcomes:?}");
        assert_eq!(gate.skipped(), 6);
        assert_eq!(outcomes.failed, 2);
        assert_eq!(outcomes.consecutive_failures, 1);
    }

    #[test]
    fn consecutive_failures_reset_on_success() {
        let mut o = Outcomes::default();
        o.record(false);
        o.record(false);
        assert_eq!(o.consecutive_failures, 2);
        o.record(true);
        assert_eq!((o.passes, o.failed, o.consecutive_failures), (3, 2, 0));
    }
}
