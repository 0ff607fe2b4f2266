//! Why a step failed, with the database error kept where one caused it, so that its SQLSTATE,
//! and whether trying again may help, are not lost on the way to the report.

use std::fmt::Write as _;
use std::time::Duration;

use tokio_postgres::error::SqlState;

use crate::archive::ArchiveError;
use crate::db::error_text;

/// A session holding a lock that made a step time out.
#[derive(Clone, Debug)]
pub struct Blocker {
    /// Backend pid.
    pub pid: i32,
    /// Its `application_name`.
    pub application_name: String,
    /// Age of its transaction, in seconds (0 when none is open).
    pub xact_age_secs: f64,
    /// The lock mode it holds.
    pub mode: String,
    /// Its current or last query, shortened.
    pub query: String,
}

impl std::fmt::Display for Blocker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "pid {} ({}) holding {} in a transaction open {:.1}s: {}",
            self.pid,
            if self.application_name.is_empty() {
                "no application_name"
            } else {
                &self.application_name
            },
            self.mode,
            self.xact_age_secs,
            self.query
        )
    }
}

/// A step did not complete. A transactional step was rolled back: nothing of it remains.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    /// Kept timing out on locks for the whole `lock_retry_for`.
    #[error("{label}: gave up after {attempts} lock timeouts over {elapsed:?}{}", blockers_text(.blockers))]
    LockTimeout {
        /// The step.
        label: String,
        /// How many attempts were made.
        attempts: u32,
        /// How long it tried.
        elapsed: Duration,
        /// Who held the locks at the last attempt.
        blockers: Vec<Blocker>,
    },
    /// A statement of the step failed.
    #[error("{label}: {}", statement_error(.statement, .source))]
    Statement {
        /// The step.
        label: String,
        /// The statement (empty when it was the transaction's own BEGIN or settings).
        statement: String,
        /// The server's error.
        #[source]
        source: tokio_postgres::Error,
    },
    /// A query around the step failed (its bookkeeping, the catalog).
    #[error("{}", error_text(.0))]
    Db(#[from] tokio_postgres::Error),
    /// An archive could not be written, read or verified.
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    /// archive_command did not ship the archive.
    #[error(transparent)]
    Ship(#[from] crate::archive::ship::ShipError),
    /// A check of the step refused to go on; the reason says what happens next.
    #[error("{0}")]
    Refused(String),
    /// What the failure means for the data, before the failure.
    #[error("{meaning}: {source}")]
    Meaning {
        /// From `Step::if_it_fails`.
        meaning: String,
        /// The failure.
        #[source]
        source: Box<StepError>,
    },
}

impl StepError {
    fn db_error(&self) -> Option<&tokio_postgres::Error> {
        match self {
            StepError::Db(e) | StepError::Statement { source: e, .. } => Some(e),
            StepError::Archive(ArchiveError::Db { source, .. }) => Some(source),
            StepError::Meaning { source, .. } => source.db_error(),
            StepError::LockTimeout { .. }
            | StepError::Archive(_)
            | StepError::Ship(_)
            | StepError::Refused(_) => None,
        }
    }

    /// The SQLSTATE of the database error behind it, if any.
    pub fn code(&self) -> Option<&SqlState> {
        self.db_error().and_then(|e| e.code())
    }

    /// Whether the next pass may well succeed where this one failed: locks not had, a
    /// deadlock, a cancelled or timed-out statement, a lost connection.
    pub fn is_transient(&self) -> bool {
        match self {
            StepError::LockTimeout { .. } => return true,
            StepError::Meaning { source, .. } => return source.is_transient(),
            _ => {}
        }
        match self.db_error() {
            Some(e) if e.is_closed() => true,
            Some(e) => matches!(
                e.code(),
                Some(c) if *c == SqlState::LOCK_NOT_AVAILABLE
                    || *c == SqlState::T_R_DEADLOCK_DETECTED
                    || *c == SqlState::T_R_SERIALIZATION_FAILURE
                    || *c == SqlState::QUERY_CANCELED
                    || *c == SqlState::ADMIN_SHUTDOWN
                    || *c == SqlState::CANNOT_CONNECT_NOW
            ),
            None => false,
        }
    }
}

fn statement_error(statement: &str, e: &tokio_postgres::Error) -> String {
    if statement.is_empty() {
        error_text(e)
    } else {
        format!("{} in: {}", error_text(e), shorten(statement, 300))
    }
}

pub(crate) fn blockers_text(b: &[Blocker]) -> String {
    if b.is_empty() {
        return String::new();
    }
    let mut s = String::from("; blocked by ");
    for (i, x) in b.iter().enumerate() {
        if i > 0 {
            s.push_str(", ");
        }
        let _ = write!(s, "{x}");
    }
    s
}

/// `s` on one line, at most `max` bytes.
pub(crate) fn shorten(s: &str, max: usize) -> String {
    let one: String = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if one.len() <= max {
        return one;
    }
    let mut end = max;
    while !one.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &one[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_errors_say_whether_to_try_again() {
        let lock = StepError::LockTimeout {
            label: "detach".into(),
            attempts: 3,
            elapsed: Duration::from_secs(1),
            blockers: Vec::new(),
        };
        assert!(lock.is_transient());
        assert!(lock.code().is_none());
        let meant = StepError::Meaning {
            meaning: "archive failed".into(),
            source: Box::new(lock),
        };
        assert!(meant.is_transient());
        let changed =
            StepError::Refused("the detached table changed after its archive was written".into());
        assert!(!changed.is_transient());
        assert_eq!(
            changed.to_string(),
            "the detached table changed after its archive was written"
        );
    }
}
