//! Prometheus metrics: process-wide counters and per-table gauges, served on `GET /metrics`
//! when `[metrics] listen` is set.
//!
//! The metrics are `prometheus-client` types (the Prometheus project's own Rust client) in one
//! registry, encoded in its OpenMetrics text format: counters are incremented where things
//! happen (the DDL executor counts lock timeouts, the pass counts partitions), the daemon
//! sets the gauges after each pass. `prometheus-client` rather than `metrics` +
//! `metrics-exporter-prometheus`: the latter brings its own HTTP listener, and serving is the
//! part that must stay ours, with the connection cap and timeouts below (a flood of idle
//! connections must never starve the daemon of descriptors). The HTTP side is a minimal
//! HTTP/1.0 responder: one request per connection, nothing else to serve.

use std::net::SocketAddr;
use std::sync::LazyLock;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Labels of a per-table or per-result series.
type Labels = Vec<(&'static str, String)>;

/// Lock timeouts (SQLSTATE 55P03) met by DDL, retried or not.
pub static LOCK_TIMEOUTS: LazyLock<Counter> = LazyLock::new(Counter::default);
/// Partitions created.
pub static PARTITIONS_CREATED: LazyLock<Counter> = LazyLock::new(Counter::default);
/// Partitions expired (dropped or moved).
pub static PARTITIONS_EXPIRED: LazyLock<Counter> = LazyLock::new(Counter::default);
/// Bytes of archives written.
pub static ARCHIVE_BYTES: LazyLock<Counter> = LazyLock::new(Counter::default);
/// Passes by result: `ok`, `failed`, `skipped` (a scheduled pass while one still ran).
pub static PASSES: LazyLock<Family<Labels, Counter>> = LazyLock::new(Family::default);
/// 1 while this instance holds the leader lock.
pub static LEADER: LazyLock<Gauge> = LazyLock::new(Gauge::default);
/// Unix time of the last successful pass (0: none yet).
pub static LAST_SUCCESS_UNIX: LazyLock<Gauge> = LazyLock::new(Gauge::default);
/// Whole periods after the current one that have partitions, per table.
static RUNWAY: LazyLock<Family<Labels, Gauge>> = LazyLock::new(Family::default);
/// 1 when the table's DEFAULT partition holds rows, per table.
static DEFAULT_HAS_ROWS: LazyLock<Family<Labels, Gauge>> = LazyLock::new(Family::default);
/// Rows in the table's DEFAULT partition (the catalog's estimate), per table.
static DEFAULT_ROWS: LazyLock<Family<Labels, Gauge>> = LazyLock::new(Family::default);
/// Blocks of the DEFAULT partition a drain under way has still to copy (0: none), per table.
static DRAIN_BLOCKS_LEFT: LazyLock<Family<Labels, Gauge>> = LazyLock::new(Family::default);
/// When writes start failing for want of a partition (Unix time), per table no `[[tables]]`
/// block manages.
static UNMANAGED_WRITES_FAIL_AT: LazyLock<Family<Labels, Gauge>> = LazyLock::new(Family::default);
/// 1 when the DEFAULT partition of a table no `[[tables]]` block manages holds rows.
static UNMANAGED_DEFAULT_HAS_ROWS: LazyLock<Family<Labels, Gauge>> = LazyLock::new(Family::default);
/// The configured premake, per table.
static PREMAKE: LazyLock<Family<Labels, Gauge>> = LazyLock::new(Family::default);
/// When writes start failing for want of a partition (Unix time), per table.
static WRITES_FAIL_AT: LazyLock<Family<Labels, Gauge>> = LazyLock::new(Family::default);
/// Expiry steps that failed (archive, verify, upload, ship, drop, ...).
pub static EXPIRY_FAILURES: LazyLock<Counter> = LazyLock::new(Counter::default);
/// Seconds between two maintenance passes on the schedule.
pub static SCHEDULE_PERIOD: LazyLock<Gauge> = LazyLock::new(Gauge::default);
/// Always 1, labelled with the version and the commit this binary was built from.
static BUILD_INFO: LazyLock<Family<Labels, Gauge>> = LazyLock::new(Family::default);

/// The registry every metric above is in, in the order they are exposed.
static REGISTRY: LazyLock<Registry> = LazyLock::new(|| {
    let mut r = Registry::default();
    r.register(
        "partwarden_runway_periods",
        "Whole periods after the current one that have partitions.",
        RUNWAY.clone(),
    );
    r.register(
        "partwarden_default_partition_has_rows",
        "1 when the table's DEFAULT partition holds rows.",
        DEFAULT_HAS_ROWS.clone(),
    );
    r.register(
        "partwarden_default_partition_rows",
        "Rows in the table's DEFAULT partition (the catalog's estimate, refreshed by ANALYZE).",
        DEFAULT_ROWS.clone(),
    );
    r.register(
        "partwarden_default_drain_blocks_left",
        "Blocks of the DEFAULT partition that the drain under way has still to copy before it swaps its partitions in (0: no drain).",
        DRAIN_BLOCKS_LEFT.clone(),
    );
    r.register(
        "partwarden_unmanaged_writes_fail_at_timestamp_seconds",
        "For a partitioned table partwarden does not manage: Unix time from which its writes fail for want of a partition; absent when a DEFAULT partition or MAXVALUE catches everything.",
        UNMANAGED_WRITES_FAIL_AT.clone(),
    );
    r.register(
        "partwarden_unmanaged_default_partition_has_rows",
        "For a partitioned table partwarden does not manage: 1 when its DEFAULT partition holds rows.",
        UNMANAGED_DEFAULT_HAS_ROWS.clone(),
    );
    r.register(
        "partwarden_premake_periods",
        "Periods after the current one the table is configured to keep ready (premake).",
        PREMAKE.clone(),
    );
    r.register(
        "partwarden_writes_fail_at_timestamp_seconds",
        "Unix time from which writes fail for want of a partition (the end of the runway); absent when a partition or DEFAULT catches everything.",
        WRITES_FAIL_AT.clone(),
    );
    r.register(
        "partwarden_schedule_period_seconds",
        "Seconds between two maintenance passes on the schedule.",
        (*SCHEDULE_PERIOD).clone(),
    );
    r.register(
        "partwarden_expiry_failures",
        "Expiry steps that failed; the partition stays detached and intact and the next pass retries.",
        (*EXPIRY_FAILURES).clone(),
    );
    r.register(
        "partwarden_build_info",
        "Always 1: the version and the git commit of this binary.",
        BUILD_INFO.clone(),
    );
    r.register(
        "partwarden_last_successful_pass_timestamp_seconds",
        "Unix time of the last pass without failures (0: none yet).",
        (*LAST_SUCCESS_UNIX).clone(),
    );
    r.register(
        "partwarden_passes",
        "Maintenance passes by result.",
        PASSES.clone(),
    );
    r.register(
        "partwarden_lock_timeouts",
        "DDL statements that hit lock_timeout.",
        (*LOCK_TIMEOUTS).clone(),
    );
    r.register(
        "partwarden_partitions_created",
        "Partitions created.",
        (*PARTITIONS_CREATED).clone(),
    );
    r.register(
        "partwarden_partitions_expired",
        "Partitions expired (dropped after a verified archive, moved, or dropped).",
        (*PARTITIONS_EXPIRED).clone(),
    );
    r.register(
        "partwarden_archive_bytes",
        "Bytes of archive files written.",
        (*ARCHIVE_BYTES).clone(),
    );
    r.register(
        "partwarden_leader",
        "1 while this instance holds the leader lock and runs passes.",
        (*LEADER).clone(),
    );
    r
});

/// The tables whose per-table gauges are set, so that a reload can remove the others'.
static TABLES: LazyLock<std::sync::Mutex<std::collections::BTreeSet<String>>> =
    LazyLock::new(Default::default);

/// Removes the per-table gauges of every table not in `keep`.
pub fn retain_tables(keep: &[String]) {
    let mut known = TABLES.lock().unwrap_or_else(|e| e.into_inner());
    let gone: Vec<String> = known
        .iter()
        .filter(|t| !keep.contains(t))
        .cloned()
        .collect();
    for t in gone {
        let labels: Labels = vec![("table", t.clone())];
        for family in [
            &*RUNWAY,
            &*DEFAULT_HAS_ROWS,
            &*PREMAKE,
            &*WRITES_FAIL_AT,
            &*DEFAULT_ROWS,
            &*DRAIN_BLOCKS_LEFT,
        ] {
            family.remove(&labels);
        }
        known.remove(&t);
    }
}

fn remember(table: &str) {
    TABLES
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(table.to_string());
}

/// Records the gauges of one table after a pass.
pub fn set_table(
    table: &str,
    premake: u32,
    runway_periods: u32,
    writes_fail_at: Option<i64>,
    default_has_rows: bool,
) {
    remember(table);
    let labels: Labels = vec![("table", table.to_string())];
    PREMAKE.get_or_create(&labels).set(i64::from(premake));
    match writes_fail_at {
        Some(t) => {
            WRITES_FAIL_AT.get_or_create(&labels).set(t);
        }
        None => {
            WRITES_FAIL_AT.remove(&labels);
        }
    }
    RUNWAY.get_or_create(&labels).set(i64::from(runway_periods));
    DEFAULT_HAS_ROWS
        .get_or_create(&labels)
        .set(i64::from(default_has_rows));
}

/// Records a table's DEFAULT partition rows (estimate) and the blocks its drain has left.
pub fn set_default(table: &str, rows: i64, drain_blocks_left: i64) {
    remember(table);
    let labels: Labels = vec![("table", table.to_string())];
    DEFAULT_ROWS.get_or_create(&labels).set(rows);
    DRAIN_BLOCKS_LEFT
        .get_or_create(&labels)
        .set(drain_blocks_left);
}

/// Replaces the gauges of the tables partwarden does not manage with `found`'s.
pub fn set_unmanaged(found: &[crate::unmanaged::Unmanaged]) {
    UNMANAGED_WRITES_FAIL_AT.clear();
    UNMANAGED_DEFAULT_HAS_ROWS.clear();
    for u in found.iter().filter(|u| u.key.is_some()) {
        let labels: Labels = vec![("table", u.table.to_string())];
        if let Some(w) = u.writes_fail_from {
            UNMANAGED_WRITES_FAIL_AT
                .get_or_create(&labels)
                .set(w.timestamp());
        }
        UNMANAGED_DEFAULT_HAS_ROWS
            .get_or_create(&labels)
            .set(i64::from(u.default_has_rows));
    }
}

/// Counts one pass with `result` (`ok`, `failed`, `skipped`).
pub fn pass(result: &'static str) {
    PASSES
        .get_or_create(&vec![("result", result.to_string())])
        .inc();
}

/// Adds `n` to a counter.
pub fn add(counter: &Counter, n: u64) {
    counter.inc_by(n);
}

/// The exposition text (OpenMetrics).
pub fn render() -> String {
    let _ = BUILD_INFO
        .get_or_create(&vec![
            ("version", env!("CARGO_PKG_VERSION").to_string()),
            ("commit", crate::cli::COMMIT.to_string()),
        ])
        .set(1);
    // Every result shows from the start, at 0, so that alerts on rates see a series.
    for result in ["ok", "failed", "skipped"] {
        let _ = PASSES.get_or_create(&vec![("result", result.to_string())]);
    }
    let mut s = String::new();
    prometheus_client::encoding::text::encode(&mut s, &REGISTRY).expect("encoding to a String");
    s
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
                    (
                        "200 OK",
                        render(),
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )
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
