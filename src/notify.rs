//! systemd notifications (`sd_notify`): READY, STATUS, WATCHDOG, STOPPING.
//!
//! A datagram to the socket named by `NOTIFY_SOCKET` (a path, or `@name` for the abstract
//! namespace). Everything here is a no-op when the variable is unset, so the daemon runs the
//! same under systemd, in a terminal and in tests (which provide a socket of their own).

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

/// Where notifications go, if anywhere.
#[derive(Debug)]
pub struct Notifier {
    socket: Option<(UnixDatagram, String)>,
}

impl Notifier {
    /// From `NOTIFY_SOCKET`; a no-op notifier when it is unset or unusable.
    pub fn from_env() -> Notifier {
        let socket = std::env::var("NOTIFY_SOCKET")
            .ok()
            .filter(|s| !s.is_empty())
            .and_then(|path| match UnixDatagram::unbound() {
                Ok(s) => Some((s, path)),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot create a socket for systemd notifications");
                    None
                }
            });
        Notifier { socket }
    }

    /// Sends `state` (e.g. `READY=1`). Failures are logged at debug level and otherwise ignored:
    /// a notification is never worth stopping the daemon for.
    pub fn send(&self, state: &str) {
        let Some((socket, path)) = &self.socket else {
            return;
        };
        let result = if let Some(name) = path.strip_prefix('@') {
            use std::os::linux::net::SocketAddrExt;
            std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
                .and_then(|addr| socket.send_to_addr(state.as_bytes(), &addr))
        } else {
            socket.send_to(state.as_bytes(), path)
        };
        if let Err(e) = result {
            tracing::debug!(error = %e, state, "systemd notification not delivered");
        }
    }

    /// `READY=1`.
    pub fn ready(&self) {
        self.send("READY=1");
    }

    /// `STATUS=...` (one line).
    pub fn status(&self, text: &str) {
        self.send(&format!("STATUS={}", text.replace('\n', " ")));
    }

    /// `WATCHDOG=1`.
    pub fn watchdog(&self) {
        self.send("WATCHDOG=1");
    }

    /// `STOPPING=1`.
    pub fn stopping(&self) {
        self.send("STOPPING=1");
    }
}

/// The watchdog period systemd asks for (`WATCHDOG_USEC`), if any.
pub fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID")
        && pid.parse::<u32>().ok() != Some(std::process::id())
    {
        return None;
    }
    (usec > 0).then(|| Duration::from_micros(usec))
}
