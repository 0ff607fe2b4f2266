//! Prometheus metrics: process-wide counters and per-table gauges, served as text on
//! `GET /metrics` when `[metrics] listen` is set.
//!
//! Counters are plain atomics incremented where things happen (the DDL executor counts lock
//! timeouts, the pass counts partitions); the daemon sets the gauges after each pass. The HTTP
//! side is a minimal HTTP/1.0 responder: one request per connection, nothing else to serve.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Lock timeouts (SQLSTATE 55P03) met by DDL, retried or not.
pub static LOCK_TIMEOUTS: AtomicU64 = AtomicU64::new(0);
/// Partitions created.
pub static PARTITIONS_CREATED: AtomicU64 = AtomicU64::new(0);
/// Partitions expired (dropped or moved).
pub static PARTITIONS_EXPIRED: AtomicU64 = AtomicU64::new(0);
/// Bytes of archives written.
pub static ARCHIVE_BYTES: AtomicU64 = AtomicU64::new(0);
/// Passes that completed without error.
pub static PASSES_OK: AtomicU64 = AtomicU64::new(0);
/// Passes with at least one failed step.
pub static PASSES_FAILED: AtomicU64 = AtomicU64::new(0);
/// Scheduled passes skipped because one was still running.
pub static PASSES_SKIPPED: AtomicU64 = AtomicU64::new(0);
/// 1 while this instance holds the leader lock.
pub static LEADER: AtomicU64 = AtomicU64::new(0);
/// Unix time of the last successful pass (0: none yet).
pub static LAST_SUCCESS_UNIX: AtomicU64 = AtomicU64::new(0);

/// Per-table gauges: table → (runway periods, default partition has rows).
static TABLES: Mutex<BTreeMap<String, (u32, bool)>> = Mutex::new(BTreeMap::new());

/// Records the gauges of one table after a pass.
pub fn set_table(table: &str, runway_periods: u32, default_has_rows: bool) {
    TABLES
        .lock()
        .expect("metrics lock")
        .insert(table.to_string(), (runway_periods, default_has_rows));
}

/// Adds `n` to a counter.
pub fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

/// The exposition text.
pub fn render() -> String {
    let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
    let mut s = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, lines: Vec<String>| {
        s.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
        for l in lines {
            s.push_str(&l);
            s.push('\n');
        }
    };
    let tables = TABLES.lock().expect("metrics lock").clone();
    metric(
        "partwarden_runway_periods",
        "gauge",
        "Whole periods after the current one that have partitions.",
        tables
            .iter()
            .map(|(t, (r, _))| format!("partwarden_runway_periods{{table=\"{}\"}} {r}", escape(t)))
            .collect(),
    );
    metric(
        "partwarden_default_partition_has_rows",
        "gauge",
        "1 when the table's DEFAULT partition holds rows.",
        tables
            .iter()
            .map(|(t, (_, d))| {
                format!(
                    "partwarden_default_partition_has_rows{{table=\"{}\"}} {}",
                    escape(t),
                    u8::from(*d)
                )
            })
            .collect(),
    );
    metric(
        "partwarden_last_successful_pass_timestamp_seconds",
        "gauge",
        "Unix time of the last pass without failures (0: none yet).",
        vec![format!(
            "partwarden_last_successful_pass_timestamp_seconds {}",
            get(&LAST_SUCCESS_UNIX)
        )],
    );
    metric(
        "partwarden_passes_total",
        "counter",
        "Maintenance passes by result.",
        vec![
            format!(
                "partwarden_passes_total{{result=\"ok\"}} {}",
                get(&PASSES_OK)
            ),
            format!(
                "partwarden_passes_total{{result=\"failed\"}} {}",
                get(&PASSES_FAILED)
            ),
            format!(
                "partwarden_passes_total{{result=\"skipped\"}} {}",
                get(&PASSES_SKIPPED)
            ),
        ],
    );
    metric(
        "partwarden_lock_timeouts_total",
        "counter",
        "DDL statements that hit lock_timeout.",
        vec![format!(
            "partwarden_lock_timeouts_total {}",
            get(&LOCK_TIMEOUTS)
        )],
    );
    metric(
        "partwarden_partitions_created_total",
        "counter",
        "Partitions created.",
        vec![format!(
            "partwarden_partitions_created_total {}",
            get(&PARTITIONS_CREATED)
        )],
    );
    metric(
        "partwarden_partitions_expired_total",
        "counter",
        "Partitions expired (dropped after a verified archive, moved, or dropped).",
        vec![format!(
            "partwarden_partitions_expired_total {}",
            get(&PARTITIONS_EXPIRED)
        )],
    );
    metric(
        "partwarden_archive_bytes_total",
        "counter",
        "Bytes of archive files written.",
        vec![format!(
            "partwarden_archive_bytes_total {}",
            get(&ARCHIVE_BYTES)
        )],
    );
    metric(
        "partwarden_leader",
        "gauge",
        "1 while this instance holds the leader lock and runs passes.",
        vec![format!("partwarden_leader {}", get(&LEADER))],
    );
    s
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Connections served at once. Further ones wait in the kernel's listen backlog, holding no
/// descriptor of ours: a flood of idle clients cannot starve the daemon of the descriptors its
/// database sessions need.
const MAX_CONNECTIONS: usize = 16;
/// Connections the kernel completes and queues for us beyond those served (capped by
/// `net.core.somaxconn`): clients over the cap wait there, costing us nothing.
const LISTEN_BACKLOG: u32 = 4096;
/// How long a client may take to send its request head (Prometheus sends it at once).
const HEAD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);
/// Largest request head read.
const MAX_HEAD_BYTES: usize = 2048;
/// First pause after a failed accept (out of descriptors, say), doubled up to the cap: a
/// failing accept must not spin the CPU.
const ACCEPT_BACKOFF_FIRST: std::time::Duration = std::time::Duration::from_millis(50);
/// Longest pause after failed accepts.
const ACCEPT_BACKOFF_CAP: std::time::Duration = std::time::Duration::from_secs(2);

/// Serves `GET /metrics` on `addr` until the task is dropped. Returns the bound address.
pub async fn serve(addr: SocketAddr) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    let listener = socket.listen(LISTEN_BACKLOG)?;
    let local = listener.local_addr()?;
    let permits = std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let task = tokio::spawn(async move {
        let mut backoff = ACCEPT_BACKOFF_FIRST;
        loop {
            let permit = permits
                .clone()
                .acquire_owned()
                .await
                .expect("the semaphore is never closed");
            let mut stream = match listener.accept().await {
                Ok((stream, _)) => {
                    backoff = ACCEPT_BACKOFF_FIRST;
                    stream
                }
                Err(e) => {
                    tracing::warn!(error = %e, pause_ms = backoff.as_millis() as u64, "metrics endpoint: accept failed; pausing");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(ACCEPT_BACKOFF_CAP);
                    continue;
                }
            };
            tokio::spawn(async move {
                let _permit = permit;
                // Read the request head (it may come in pieces), bounded in size and time.
                let mut buf = Vec::with_capacity(512);
                let head = async {
                    let mut chunk = [0u8; 512];
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < MAX_HEAD_BYTES {
                        match stream.read(&mut chunk).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                };
                if tokio::time::timeout(HEAD_TIMEOUT, head).await.is_err() {
                    return;
                }
                let request = String::from_utf8_lossy(&buf);
                let (status, body, ctype) = if request.starts_with("GET /metrics ")
                    || request.starts_with("GET /metrics?")
                {
                    ("200 OK", render(), "text/plain; version=0.0.4")
                } else {
                    (
                        "404 Not Found",
                        "not found; try /metrics\n".to_string(),
                        "text/plain",
                    )
                };
                let response = format!(
                    "HTTP/1.0 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let write = async {
                    let _ = stream.write_all(response.as_bytes()).await;
                    let _ = stream.shutdown().await;
                };
                let _ = tokio::time::timeout(HEAD_TIMEOUT, write).await;
            });
        }
    });
    Ok((local, task))
}
