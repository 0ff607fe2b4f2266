//! Connections: every session partwarden opens is set up the same way.
//!
//! A session is in UTC with ISO dates (bounds are always read and written with `+00`), names itself
//! `partwarden` in `pg_stat_activity` (so on-call can see who holds what), and has the
//! configured `statement_timeout`. Connecting is bounded by `connect_timeout` as a whole, not
//! per host, so an unreachable server is a prompt, clear error rather than a hang.

use std::time::Duration;

use tokio_postgres::{Client, NoTls};

use crate::config::{DatabaseConfig, redact_url};
use crate::tls::TlsSettings;

/// `application_name` of partwarden's sessions, visible in `pg_stat_activity`.
pub const APPLICATION_NAME: &str = "partwarden";

/// Idle time before TCP keepalive probes start.
const TCP_KEEPALIVE_IDLE: Duration = Duration::from_secs(30);
/// Time between keepalive probes.
const TCP_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// Unanswered probes after which the connection is dropped.
const TCP_KEEPALIVE_RETRIES: u32 = 3;

/// A connection could not be made or set up.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The server did not answer within `connect_timeout`.
    #[error("cannot connect to PostgreSQL at {target}: no answer within {timeout:?}")]
    Timeout {
        /// Where we tried, without password.
        target: String,
        /// The configured connect_timeout.
        timeout: Duration,
    },
    /// The server refused, or authentication failed, or the session could not be set up.
    #[error("cannot connect to PostgreSQL at {target}: {message}")]
    Failed {
        /// Where we tried, without password.
        target: String,
        /// The reason, without password.
        message: String,
    },
}

/// The parsed connection settings, with the password from `password_file` or `PGPASSWORD`
/// applied and the user defaulted like libpq does.
pub fn pg_config(
    db: &DatabaseConfig,
) -> Result<(tokio_postgres::Config, TlsSettings), ConnectError> {
    let failed = |message: String| ConnectError::Failed {
        target: "database.url".into(),
        message: redact_url(&message),
    };
    let (rest, tls) = crate::tls::split(&db.url).map_err(failed)?;
    let mut cfg: tokio_postgres::Config = rest
        .parse()
        .map_err(|e: tokio_postgres::Error| failed(e.to_string()))?;
    cfg.ssl_mode(tls.pg_mode());
    if let Some(p) = &db.password {
        cfg.password(p.as_bytes());
    } else if cfg.get_password().is_none()
        && let Ok(p) = std::env::var("PGPASSWORD")
    {
        cfg.password(p.as_bytes());
    }
    if cfg.get_user().is_none() {
        let user = std::env::var("PGUSER")
            .or_else(|_| std::env::var("USER"))
            .unwrap_or_else(|_| "postgres".into());
        cfg.user(&user);
    }
    cfg.connect_timeout(db.connect_timeout);
    // A peer that vanished (host down, path cut) is noticed by TCP within about a minute even
    // while no query is outstanding; unacknowledged data gives up after the same.
    cfg.keepalives(true);
    cfg.keepalives_idle(TCP_KEEPALIVE_IDLE);
    cfg.keepalives_interval(TCP_KEEPALIVE_INTERVAL);
    cfg.keepalives_retries(TCP_KEEPALIVE_RETRIES);
    cfg.tcp_user_timeout(TCP_KEEPALIVE_IDLE + TCP_KEEPALIVE_INTERVAL * TCP_KEEPALIVE_RETRIES);
    cfg.application_name(APPLICATION_NAME);
    Ok((cfg, tls))
}

/// A short description of where `cfg` points, without secrets: `host:port/dbname as user`.
pub fn describe(cfg: &tokio_postgres::Config) -> String {
    use tokio_postgres::config::Host;
    let hosts: Vec<String> = cfg
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let port = cfg
                .get_ports()
                .get(i)
                .or(cfg.get_ports().first())
                .copied()
                .unwrap_or(5432);
            match h {
                Host::Tcp(s) => format!("{s}:{port}"),
                Host::Unix(p) => format!("{}:{port}", p.display()),
            }
        })
        .collect();
    let hosts = if hosts.is_empty() {
        "localhost:5432".to_string()
    } else {
        hosts.join(",")
    };
    format!(
        "{hosts}/{} as {}",
        cfg.get_dbname().or(cfg.get_user()).unwrap_or("?"),
        cfg.get_user().unwrap_or("?")
    )
}

/// Opens a session and sets it up (UTC, statement_timeout). The connection task is spawned on
/// the current runtime and ends when the returned client is dropped.
pub async fn connect(db: &DatabaseConfig) -> Result<Client, ConnectError> {
    let (cfg, tls) = pg_config(db)?;
    let target = describe(&cfg);
    let failed = |message: String| ConnectError::Failed {
        target: target.clone(),
        message: redact_url(&message),
    };
    let client = match tls.client_config().map_err(failed)? {
        None => open(&cfg, NoTls, db.connect_timeout, &target).await?,
        Some(rustls) => {
            let connector = tokio_postgres_rustls::MakeRustlsConnect::new(rustls);
            open(&cfg, connector, db.connect_timeout, &target).await?
        }
    };
    // Bounded like the connection itself: a server that accepted the connection but stopped
    // answering must not hold the caller.
    match tokio::time::timeout(db.connect_timeout, setup_session(&client, db)).await {
        Err(_) => Err(ConnectError::Timeout {
            target,
            timeout: db.connect_timeout,
        }),
        Ok(Err(e)) => Err(ConnectError::Failed {
            target,
            message: format!("session set-up failed: {}", error_text(&e)),
        }),
        Ok(Ok(())) => Ok(client),
    }
}

/// Connects within `timeout` and spawns the connection task.
async fn open<T>(
    cfg: &tokio_postgres::Config,
    tls: T,
    timeout: Duration,
    target: &str,
) -> Result<Client, ConnectError>
where
    T: tokio_postgres::tls::MakeTlsConnect<tokio_postgres::Socket> + 'static + Send,
    T::TlsConnect: Send,
    T::Stream: Send + 'static,
    <T::TlsConnect as tokio_postgres::tls::TlsConnect<tokio_postgres::Socket>>::Future: Send,
{
    let (client, connection) = match tokio::time::timeout(timeout, cfg.connect(tls)).await {
        Err(_) => {
            return Err(ConnectError::Timeout {
                target: target.to_string(),
                timeout,
            });
        }
        Ok(Err(e)) => {
            return Err(ConnectError::Failed {
                target: target.to_string(),
                message: redact_url(&error_text(&e)),
            });
        }
        Ok(Ok(pair)) => pair,
    };
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "connection closed");
        }
    });
    Ok(client)
}

async fn setup_session(client: &Client, db: &DatabaseConfig) -> Result<(), tokio_postgres::Error> {
    let statement_timeout = format!("{}ms", db.statement_timeout.as_millis());
    let lock_timeout = format!("{}ms", db.lock_timeout.as_millis());
    // UTC and ISO dates: bounds and archived timestamps are always written with +00 and read
    // back unambiguously. Exact float output, so an archive restores bit for bit. A backend
    // whose client vanished (killed, network gone) stops its statement within a second instead
    // of holding locks until it finishes (PostgreSQL 14+). Notices (`... already exists,
    // skipping`) are not news to an operator: only warnings and errors come back. Every
    // statement, catalog reads included, waits at most lock_timeout for a lock: a pass or
    // --check never queues behind a session holding a table (pg_get_expr takes AccessShareLock
    // on each partition, which `LOCK TABLE parent` holds exclusively).
    client
        .execute(
            "SELECT set_config('TimeZone', 'UTC', false), set_config('DateStyle', 'ISO, MDY', false), \
                    set_config('IntervalStyle', 'postgres', false), set_config('extra_float_digits', '3', false), \
                                        set_config('bytea_output', 'hex', false), set_config('statement_timeout', $1, false), \
                    set_config('client_connection_check_interval', '1s', false), \
                    set_config('client_min_messages', 'warning', false), \
                    set_config('lock_timeout', $2, false)",
            &[&statement_timeout, &lock_timeout],
        )
        .await?;
    Ok(())
}

impl ConnectError {
    /// Whether the server itself answered (with an error such as "too many clients" or a
    /// failed authentication), as opposed to no answer at all: a server that answers is up.
    pub fn server_answered(&self) -> bool {
        matches!(self, ConnectError::Failed { message, .. } if message.contains("(SQLSTATE "))
    }
}

pub use crate::dberror::error_text;

/// Refuses a server in recovery (a standby): partwarden sends DDL only to a primary. Returns
/// the one-line reason when the server is a standby.
pub async fn require_primary(client: &Client) -> Result<(), String> {
    let recovery: bool = client
        .query_one("SELECT pg_is_in_recovery()", &[])
        .await
        .map_err(|e| error_text(&e))?
        .get(0);
    if recovery {
        return Err("the server is in recovery (a standby): partwarden sends DDL only to a primary; point database.url at the primary, or list every host with target_session_attrs=read-write".into());
    }
    Ok(())
}
