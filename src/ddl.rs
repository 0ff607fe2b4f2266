//! The DDL executor: the only place partwarden changes the schema of managed tables.
//!
//! A planner produces [`Action`]s, each one transaction's worth of statements with the reason
//! it is needed. This module runs an action in its own transaction under `SET LOCAL
//! lock_timeout`, so a statement that would queue behind a long transaction (and make every
//! later query of the application queue behind *it*) gives up after `lock_timeout` instead. A
//! lock timeout (SQLSTATE 55P03) or deadlock (40P01) rolls the whole action back, logs who held
//! the lock, and retries with capped exponential backoff and jitter for a bounded time. One
//! action per transaction means a step that gives up leaves nothing half made, and a blocked
//! step never undoes the steps before it.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, Transaction};

use crate::db::error_text;

/// One step of a plan: statements that run together in one transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Action {
    /// Short label for logs and summaries: `create partition public.market_odds_history_2026_12`.
    pub label: String,
    /// Why the planner wants it, printed by `--dry-run`.
    pub reason: String,
    /// The statements, in order; every identifier quoted, every value computed by partwarden.
    pub statements: Vec<String>,
    /// Relations whose lock holders are worth naming when a statement times out.
    pub lock_relations: Vec<String>,
}

/// Run-time limits of DDL, from `[database]`.
#[derive(Clone, Copy, Debug)]
pub struct DdlPolicy {
    /// `SET LOCAL lock_timeout` of every action.
    pub lock_timeout: Duration,
    /// How long an action keeps retrying after lock timeouts.
    pub retry_for: Duration,
}

impl DdlPolicy {
    /// The policy the configuration asks for.
    pub fn from_config(db: &crate::config::DatabaseConfig) -> DdlPolicy {
        DdlPolicy {
            lock_timeout: db.lock_timeout,
            retry_for: db.lock_retry_for,
        }
    }
}

/// Backoff after the first lock timeout; doubled after each further one.
const BACKOFF_START: Duration = Duration::from_millis(100);
/// Longest single wait between attempts, so a released lock is noticed within seconds.
const BACKOFF_CAP: Duration = Duration::from_secs(5);

/// A session holding a lock that made an action time out.
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

/// An action did not complete; its transaction was rolled back.
#[derive(Debug, thiserror::Error)]
pub enum DdlError {
    /// Kept timing out on locks for the whole `retry_for`.
    #[error("{label}: gave up after {attempts} lock timeouts over {elapsed:?}{}", blockers_text(.blockers))]
    LockTimeout {
        /// The action.
        label: String,
        /// How many attempts were made.
        attempts: u32,
        /// How long it tried.
        elapsed: Duration,
        /// Who held the locks at the last attempt.
        blockers: Vec<Blocker>,
    },
    /// A statement failed for another reason.
    #[error("{label}: {message}")]
    Failed {
        /// The action.
        label: String,
        /// The server's message (with SQLSTATE) and the statement that failed.
        message: String,
        /// The underlying error, for SQLSTATE inspection.
        #[source]
        source: tokio_postgres::Error,
    },
}

fn blockers_text(b: &[Blocker]) -> String {
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

impl Action {
    /// The action as SQL text, exactly as [`execute`] sends it, for `--dry-run`.
    pub fn to_sql(&self, policy: &DdlPolicy) -> String {
        let mut s = format!(
            "-- {}: {}\nBEGIN;\nSET LOCAL lock_timeout = '{}ms';\n",
            self.label,
            self.reason,
            policy.lock_timeout.as_millis()
        );
        for st in &self.statements {
            s.push_str(st);
            s.push_str(";\n");
        }
        s.push_str("COMMIT;\n");
        s
    }
}

/// What [`execute`] did.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// Rows each statement reported (0 for DDL), in statement order.
    pub rows: Vec<u64>,
    /// Attempts made (1 when no lock timeout happened).
    pub attempts: u32,
    /// Wall time including retries.
    pub elapsed: Duration,
}

/// Runs `action` in its own transaction under the policy's lock_timeout, retrying lock
/// timeouts. Returns an error when a statement fails, or when lock timeouts persist for
/// `retry_for`; the transaction is then rolled back and nothing of the action remains.
/// When `record` is given, the event is written to the ledger inside the same transaction, with
/// the rows the statements reported, so the ledger and the catalog cannot disagree.
pub async fn execute(
    client: &mut Client,
    policy: &DdlPolicy,
    action: &Action,
    record: Option<&crate::ledger::Event<'_>>,
) -> Result<Outcome, DdlError> {
    let statements = &action.statements;
    let started_at = chrono::Utc::now();
    let (rows, attempts, elapsed) = with_lock_retry(
        client,
        policy,
        &action.label,
        &action.lock_relations,
        async |tx: &Transaction<'_>| {
            let mut rows = Vec::with_capacity(statements.len());
            for st in statements {
                rows.push(
                    tx.execute(st.as_str(), &[])
                        .await
                        .map_err(|e| (st.clone(), e))?,
                );
            }
            if let Some(event) = record {
                let outcome = crate::ledger::Outcome {
                    rows: Some(rows.iter().sum::<u64>() as i64),
                    ..Default::default()
                };
                crate::ledger::record(tx, event, started_at, &outcome)
                    .await
                    .map_err(|e| ("INSERT INTO partwarden.partition_events".to_string(), e))?;
            }
            Ok(rows)
        },
    )
    .await?;
    tracing::info!(action = %action.label, attempts, elapsed_ms = elapsed.as_millis() as u64, "action committed");
    Ok(Outcome {
        rows,
        attempts,
        elapsed,
    })
}

/// Runs `body` in a transaction with `SET LOCAL lock_timeout`, committing when it succeeds and
/// retrying the whole transaction on lock timeout or deadlock. `body` reports the failing
/// statement with its error. Returns the body's value, the attempts and the time taken.
pub async fn with_lock_retry<T>(
    client: &mut Client,
    policy: &DdlPolicy,
    label: &str,
    lock_relations: &[String],
    mut body: impl AsyncFnMut(&Transaction<'_>) -> Result<T, (String, tokio_postgres::Error)>,
) -> Result<(T, u32, Duration), DdlError> {
    let started = Instant::now();
    let mut backoff = BACKOFF_START;
    let mut attempts = 0u32;
    let failed = |statement: &str, e: tokio_postgres::Error| DdlError::Failed {
        label: label.to_string(),
        message: if statement.is_empty() {
            error_text(&e)
        } else {
            format!("{} in: {}", error_text(&e), shorten(statement, 300))
        },
        source: e,
    };
    loop {
        attempts += 1;
        let result = async {
            let tx = client.transaction().await.map_err(|e| (String::new(), e))?;
            let timeout = format!("{}ms", policy.lock_timeout.as_millis());
            tx.execute("SELECT set_config('lock_timeout', $1, true)", &[&timeout])
                .await
                .map_err(|e| (String::new(), e))?;
            let value = body(&tx).await?;
            tx.commit().await.map_err(|e| ("COMMIT".to_string(), e))?;
            Ok::<T, (String, tokio_postgres::Error)>(value)
        }
        .await;
        let (statement, e) = match result {
            Ok(v) => return Ok((v, attempts, started.elapsed())),
            Err(pair) => pair,
        };
        let retryable = matches!(
            e.code(),
            Some(c) if *c == SqlState::LOCK_NOT_AVAILABLE || *c == SqlState::T_R_DEADLOCK_DETECTED
        );
        if !retryable {
            return Err(failed(&statement, e));
        }
        if e.code() == Some(&SqlState::LOCK_NOT_AVAILABLE) {
            crate::metrics::add(&crate::metrics::LOCK_TIMEOUTS, 1);
        }
        let blockers = find_blockers(client, lock_relations).await;
        let elapsed = started.elapsed();
        if elapsed + backoff > policy.retry_for {
            return Err(DdlError::LockTimeout {
                label: label.to_string(),
                attempts,
                elapsed,
                blockers,
            });
        }
        tracing::warn!(
            action = label,
            attempt = attempts,
            retry_in_ms = backoff.as_millis() as u64,
            blocked_by = %blockers_text(&blockers).trim_start_matches("; blocked by "),
            "lock not available within lock_timeout; rolled back, will retry"
        );
        tokio::time::sleep(jitter(backoff)).await;
        backoff = (backoff * 2).min(BACKOFF_CAP);
    }
}

/// Half to full `d`, so that several waiters do not retry in lock step.
fn jitter(d: Duration) -> Duration {
    let f: f64 = 0.5 + rand::random::<f64>() * 0.5;
    d.mul_f64(f)
}

/// Sessions holding granted locks on `relations`, oldest transaction first. Best effort: a
/// failure to look is logged and yields an empty list.
pub async fn find_blockers(client: &Client, relations: &[String]) -> Vec<Blocker> {
    if relations.is_empty() {
        return Vec::new();
    }
    let rows = client
        .query(
            "SELECT a.pid, coalesce(a.application_name, ''), \
                    coalesce(extract(epoch FROM now() - a.xact_start)::float8, 0), \
                    l.mode, left(regexp_replace(coalesce(a.query, ''), '\\s+', ' ', 'g'), 200) \
             FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid \
             WHERE l.granted AND l.locktype = 'relation' AND a.pid <> pg_backend_pid() \
               AND l.relation IN (SELECT to_regclass(r) FROM unnest($1::text[]) AS r) \
             ORDER BY a.xact_start NULLS LAST, a.pid",
            &[&relations],
        )
        .await;
    match rows {
        Ok(rows) => rows
            .iter()
            .map(|r| Blocker {
                pid: r.get(0),
                application_name: r.get(1),
                xact_age_secs: r.get(2),
                mode: r.get(3),
                query: r.get(4),
            })
            .collect(),
        Err(e) => {
            tracing::debug!(error = %error_text(&e), "could not look up lock holders");
            Vec::new()
        }
    }
}

fn shorten(s: &str, max: usize) -> String {
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
