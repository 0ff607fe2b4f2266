//! The session advisory locks partwarden takes, and the one wait loop for them.
//!
//! - [`Lock::Pass`]: held by whoever runs passes (`--run-once`, or the daemon's leader, for as
//!   long as it leads), so that two passes never work on the same tables at once.
//! - [`Lock::Bootstrap`]: serialises concurrent `--bootstrap`s.
//!
//! Both are session locks on a dedicated connection: they go with the session, so a killed
//! process or a lost connection frees them without anyone's help.

use std::time::Duration;

use tokio_postgres::GenericClient;

/// How often a waiter tries the lock again.
const RETRY_EVERY: Duration = Duration::from_millis(250);

/// One of partwarden's advisory locks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lock {
    /// One pass at a time; the daemon's leadership.
    Pass,
    /// One bootstrap at a time.
    Bootstrap,
}

impl Lock {
    /// Its `pg_advisory_lock` key: the bytes of "pwpass__" and "pwbootst".
    pub const fn key(self) -> i64 {
        match self {
            Lock::Pass => 0x7077_7061_7373_5f5f,
            Lock::Bootstrap => 0x7077_626f_6f74_7374,
        }
    }

    fn what(self) -> &'static str {
        match self {
            Lock::Pass => "pass",
            Lock::Bootstrap => "bootstrap",
        }
    }
}

/// Tries `lock` once on this session: `Ok(Err(pid))` names the backend that holds it.
pub async fn try_take(
    client: &impl GenericClient,
    lock: Lock,
) -> Result<Result<(), i32>, tokio_postgres::Error> {
    let got: bool = client
        .query_one("SELECT pg_try_advisory_lock($1)", &[&lock.key()])
        .await?
        .get(0);
    if got {
        return Ok(Ok(()));
    }
    Ok(Err(holder(client, lock).await?.unwrap_or(0)))
}

/// Takes `lock`, waiting up to `wait` for its holder (the daemon's pass, another bootstrap,
/// or the backend of a process just killed whose server side has not noticed yet). After
/// `wait`, `Ok(Err(pid))` names the holder.
pub async fn take(
    client: &impl GenericClient,
    lock: Lock,
    wait: Duration,
) -> Result<Result<(), i32>, tokio_postgres::Error> {
    let deadline = tokio::time::Instant::now() + wait;
    let mut logged = false;
    loop {
        let pid = match try_take(client, lock).await? {
            Ok(()) => return Ok(Ok(())),
            Err(pid) => pid,
        };
        if tokio::time::Instant::now() >= deadline {
            return Ok(Err(pid));
        }
        if !logged {
            tracing::info!(
                holder_pid = pid,
                "another {} holds the {} lock; waiting for it",
                lock.what(),
                lock.what()
            );
            logged = true;
        }
        tokio::time::sleep(RETRY_EVERY).await;
    }
}

/// Releases `lock` (it is also released when the session ends).
pub async fn release(client: &impl GenericClient, lock: Lock) -> Result<(), tokio_postgres::Error> {
    client
        .execute("SELECT pg_advisory_unlock($1)", &[&lock.key()])
        .await
        .map(|_| ())
}

/// The backend pid holding `lock`, if any (a bigint key: `classid` holds its high half,
/// `objid` its low half).
pub async fn holder(
    client: &impl GenericClient,
    lock: Lock,
) -> Result<Option<i32>, tokio_postgres::Error> {
    Ok(client
        .query_one(
            "SELECT min(pid) FROM pg_locks WHERE locktype = 'advisory' AND granted \
             AND (classid::bigint << 32 | objid::bigint) = $1",
            &[&lock.key()],
        )
        .await?
        .get(0))
}
