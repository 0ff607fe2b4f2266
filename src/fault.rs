//! Fault injection for crash tests: `PARTWARDEN_FAILPOINT=<name>` makes the process abort at
//! the named point, as a `kill -9` would, with no destructor, flush or rollback run.
//!
//! The points sit between the steps of an expiry (after the detach, after the archive file,
//! after the manifest, after verification, ...), so the tests can prove that a pass started
//! after a crash at any of them finishes the job with nothing lost. Unset, it costs one
//! environment lookup per point.

/// Environment variable naming the point to abort at.
pub const ENV: &str = "PARTWARDEN_FAILPOINT";

/// Aborts the process if `PARTWARDEN_FAILPOINT` names this point.
pub fn point(name: &str) {
    if std::env::var(ENV).is_ok_and(|v| v == name) {
        eprintln!("partwarden: failpoint {name}: aborting");
        std::process::abort();
    }
}

/// Environment variable naming a point to pause at, and for how long: `<name>:<millis>`.
pub const PAUSE_ENV: &str = "PARTWARDEN_PAUSEPOINT";

/// Sleeps if `PARTWARDEN_PAUSEPOINT` names this point, so that a test can change the database
/// at that instant (for example, write to a table between its verification and its drop).
pub async fn pause(name: &str) {
    let Ok(v) = std::env::var(PAUSE_ENV) else {
        return;
    };
    if let Some((n, ms)) = v.split_once(':')
        && n == name
        && let Ok(ms) = ms.parse::<u64>()
    {
        eprintln!("partwarden: pausepoint {name}: sleeping {ms} ms");
        tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
    }
}
