//! systemd notifications (`sd_notify`): READY, STATUS, WATCHDOG, STOPPING, through the
//! `sd-notify` crate.
//!
//! Everything here is a no-op when `NOTIFY_SOCKET` is unset, so the daemon runs the same under
//! systemd, in a terminal and in tests (which provide a socket of their own). A notification
//! that cannot be delivered is logged at debug level and otherwise ignored: it is never worth
//! stopping the daemon for.

use std::time::Duration;

use sd_notify::NotifyState;

/// Sends notifications to the service manager, if there is one.
#[derive(Debug, Default)]
pub struct Notifier {
    /// Whether `NOTIFY_SOCKET` was set at start.
    enabled: bool,
}

impl Notifier {
    /// From `NOTIFY_SOCKET`; a no-op notifier when it is unset.
    pub fn from_env() -> Notifier {
        Notifier {
            enabled: std::env::var_os("NOTIFY_SOCKET").is_some_and(|s| !s.is_empty()),
        }
    }

    fn send(&self, state: NotifyState<'_>) {
        if !self.enabled {
            return;
        }
        if let Err(e) = sd_notify::notify(std::slice::from_ref(&state)) {
            tracing::debug!(error = %e, state = %state, "systemd notification not delivered");
        }
    }

    /// `READY=1`.
    pub fn ready(&self) {
        self.send(NotifyState::Ready);
    }

    /// `STATUS=...` (one line).
    pub fn status(&self, text: &str) {
        self.send(NotifyState::Status(&text.replace('\n', " ")));
    }

    /// `WATCHDOG=1`.
    pub fn watchdog(&self) {
        self.send(NotifyState::Watchdog);
    }

    /// `STOPPING=1`.
    pub fn stopping(&self) {
        self.send(NotifyState::Stopping);
    }
}

/// The watchdog period systemd asks for (`WATCHDOG_USEC`, for this process), if any.
pub fn watchdog_interval() -> Option<Duration> {
    sd_notify::watchdog_enabled().filter(|d| !d.is_zero())
}
