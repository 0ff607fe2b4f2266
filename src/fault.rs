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
