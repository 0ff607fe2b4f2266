//! Benchmark (issue 23): draining a DEFAULT partition of 1,000,000 and 10,000,000 rows while 4
//! writers use the table, beside pg_partman and the copy limit, on the same data.
//!
//! The data: the application's `odds_snapshots` (`tests/fixtures/app_odds_snapshots.sql`:
//! foreign keys to three tables, four indexes and the primary key), its rows spread over the
//! last 20 days, all in the DEFAULT partition. For each size, on a fresh database each:
//! - **copy limit**: `INSERT INTO standalone SELECT * FROM ONLY odds_snapshots_default` into a
//!   table with the same indexes, no writers: what moving the rows costs at the least;
//! - **partwarden**: `--run-once` (the release binary) again and again until the DEFAULT
//!   partition is drained (daily, premake 7, retention 30 days, `default_move_budget` at its
//!   default), timed from the first pass's start to the last one's end;
//! - **pg_partman 4.7** (Debian's `postgresql-15-partman`): the table made by
//!   `create_parent(.., 'native', 'daily', p_premake := 7)` starting tomorrow, the same rows
//!   inserted into its DEFAULT partition, then `CALL partman.partition_data_proc(..)` (a
//!   transaction per day).
//!
//! Meanwhile 4 writers on sessions of their own, one statement every 5 ms each: two insert
//! snapshots (`captured_at` = now), two confirm one old snapshot by id (`UPDATE .. SET
//! confirmations = confirmations + 1 WHERE id = $1`). Printed: rows/s, the writers' maximum and
//! p99 statement times, failed statements, and lost writes (an UPDATE that found no row,
//! checked again at the end against the sum of `confirmations`).
//!
//! Run: `cargo build --release && cargo run --release --example drain_bench`
//! (`-- --sizes 1000000` for one size).

mod common;
use common as pg;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

const APP_SCHEMA: &str = include_str!("../tests/fixtures/app_odds_snapshots.sql");

const TABLE: &str = "[[tables]]\nname = \"public.odds_snapshots\"\npartition_key = \"captured_at\"\n\
                     interval = \"daily\"\npremake = 7\nretention = \"30 days\"\n";

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let sizes: Vec<i64> = pg::numbers_arg("--sizes").unwrap_or_else(|| vec![1_000_000, 10_000_000]);
    // `--only partwarden` (or `limit`, `partman`): one method alone.
    let only: Option<String> = std::env::args().skip_while(|a| a != "--only").nth(1);
    let runs = |m: &str| only.as_deref().is_none_or(|o| o == m);
    pg::ensure_partman();
    let bin = env!("CARGO_MANIFEST_DIR").to_string() + "/target/release/partwarden";
    assert!(
        Path::new(&bin).exists(),
        "{bin} is missing: cargo build --release first"
    );
    let server = pg::server_with("-c max_wal_size=4GB -c shared_buffers=512MB");
    println!(
        "draining a DEFAULT partition (odds_snapshots: 3 foreign keys, 5 indexes; rows over 20 days) while 4 writers insert and update by id; 2 cores\n"
    );
    println!(
        "| rows | method | time | rows/s | writers' max wait | writers' p99 | failed | lost |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for &rows in &sizes {
        let limit = if runs("limit") {
            let limit = copy_limit(&server, rows).await;
            println!(
                "| {rows} | copy limit (INSERT .. SELECT, no writers) | {:.1} s | {:.0} | | | | |",
                limit.as_secs_f64(),
                rows as f64 / limit.as_secs_f64()
            );
            Some(limit)
        } else {
            None
        };
        let pw = if runs("partwarden") {
            let pw = partwarden_drain(&server, &bin, rows).await;
            pw.print(rows, "partwarden (copy, catch-up, swap)");
            Some(pw)
        } else {
            None
        };
        let pm = if runs("partman") {
            let pm = partman_drain(&server, rows).await;
            pm.print(rows, "pg_partman partition_data_proc");
            Some(pm)
        } else {
            None
        };
        let rate = |o: &Outcome| o.moved.unwrap_or(rows) as f64 / o.time.as_secs_f64();
        if let (Some(limit), Some(pw), Some(pm)) = (limit, &pw, &pm) {
            println!(
                "| {rows} | rates: partwarden / copy limit {:.2}x, partwarden / pg_partman {:.2}x | | | | | | |",
                rate(pw) / (rows as f64 / limit.as_secs_f64()),
                rate(pw) / rate(pm)
            );
        }
    }
    println!(
        "\ntargets (issue 23): 0 failed, 0 lost; max wait <= lock_timeout (200 ms) + 50 ms; rate >= pg_partman and >= 0.5x the copy limit"
    );
}

/// A fresh database with the application's schema and `rows` snapshots in the DEFAULT
/// partition, spread over the last 20 days.
async fn app_db(
    server: &pg::Server,
    name: &str,
    rows: i64,
) -> (pg::TestDb, tokio_postgres::Client) {
    let db = pg::TestDb::on(server, name).await;
    let c = db.client().await;
    c.batch_execute(APP_SCHEMA).await.unwrap();
    insert_history(&c, rows).await;
    (db, c)
}

async fn insert_history(c: &tokio_postgres::Client, rows: i64) {
    c.execute(
        "INSERT INTO odds_snapshots (event_id, bookmaker_id, captured_at, scrape_run_id) \
         SELECT g % 1000, g % 10, now() - interval '1 minute' - (g * (20.0 * 86400 / $1)) * interval '1 second', g % 1000 \
         FROM generate_series(1::bigint, $1) g",
        &[&rows],
    )
    .await
    .unwrap();
    for sql in ["VACUUM ANALYZE odds_snapshots_default", "CHECKPOINT"] {
        c.batch_execute(sql).await.unwrap();
    }
}

async fn copy_limit(server: &pg::Server, rows: i64) -> Duration {
    let (_db, c) = app_db(server, "drain_limit", rows).await;
    c.batch_execute(
        "CREATE TABLE standalone (LIKE odds_snapshots INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING INDEXES)",
    )
    .await
    .unwrap();
    let t = Instant::now();
    c.batch_execute("INSERT INTO standalone SELECT * FROM ONLY odds_snapshots_default")
        .await
        .unwrap();
    t.elapsed()
}

/// What a drain took and what the writers saw.
struct Outcome {
    time: Duration,
    waits: Vec<Duration>,
    failed: u64,
    lost: i64,
    passes: usize,
    /// Rows moved when the method failed before the end.
    moved: Option<i64>,
    /// Why it failed.
    error: Option<String>,
    /// Passes that gave up (and were retried).
    failed_passes: usize,
}

impl Outcome {
    fn print(&self, rows: i64, method: &str) {
        let mut w = self.waits.clone();
        w.sort();
        let max = w.last().copied().unwrap_or_default();
        let p99 = w.get(w.len() * 99 / 100).copied().unwrap_or_default();
        let passes = if self.passes > 0 {
            format!(
                " ({} passes, {} of them gave up)",
                self.passes, self.failed_passes
            )
        } else {
            String::new()
        };
        let moved = self.moved.unwrap_or(rows);
        let failed_with = self
            .error
            .as_ref()
            .map(|e| format!(" (failed after moving {moved} rows: {e})"))
            .unwrap_or_default();
        println!(
            "| {rows} | {method}{passes}{failed_with} | {:.1} s | {:.0} | {:.0} ms | {:.1} ms | {} | {} |",
            self.time.as_secs_f64(),
            moved as f64 / self.time.as_secs_f64(),
            max.as_secs_f64() * 1000.0,
            p99.as_secs_f64() * 1000.0,
            self.failed,
            self.lost
        );
    }
}

/// What one writer saw: its statement times, failed statements, updates that found their row,
/// updates that found none.
type Seen = (Vec<Duration>, u64, i64, i64);

/// The 4 writers until `stop`.
fn writers(url: &str, max_id: i64, stop: Arc<AtomicBool>) -> Vec<tokio::task::JoinHandle<Seen>> {
    (0..4u64)
        .map(|w| {
            let url = url.to_string();
            let stop = stop.clone();
            tokio::spawn(async move {
                let c = pg::connect(&url).await;
                let (mut waits, mut failed, mut updated, mut missed) = (Vec::new(), 0u64, 0i64, 0i64);
                let mut seed = 0x9E37_79B9_7F4A_7C15u64 ^ w;
                while !stop.load(Ordering::SeqCst) {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    let t = Instant::now();
                    if w < 2 {
                        if c
                            .execute(
                                "INSERT INTO odds_snapshots (event_id, bookmaker_id, scrape_run_id) VALUES (7, 3, 5)",
                                &[],
                            )
                            .await
                            .is_err()
                        {
                            failed += 1;
                        }
                    } else {
                        let id = 1 + (seed % max_id as u64) as i64;
                        match c
                            .execute(
                                "UPDATE odds_snapshots SET confirmations = confirmations + 1, last_confirmed_at = now() WHERE id = $1",
                                &[&id],
                            )
                            .await
                        {
                            Ok(1) => updated += 1,
                            Ok(_) => missed += 1,
                            Err(_) => failed += 1,
                        }
                    }
                    waits.push(t.elapsed());
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                (waits, failed, updated, missed)
            })
        })
        .collect()
}

/// Stops the writers and checks the table: lost = updates that missed their row, plus
/// confirmations that the table lacks.
async fn finish(
    c: &tokio_postgres::Client,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<Seen>>,
    time: Duration,
    passes: usize,
) -> Outcome {
    stop.store(true, Ordering::SeqCst);
    let (mut waits, mut failed, mut updated, mut missed) = (Vec::new(), 0, 0, 0);
    for t in tasks {
        let (w, f, u, m) = t.await.unwrap();
        waits.extend(w);
        failed += f;
        updated += u;
        missed += m;
    }
    let confirmed: i64 = c
        .query_one(
            "SELECT coalesce(sum(confirmations), 0)::bigint FROM odds_snapshots",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    Outcome {
        time,
        waits,
        failed,
        lost: missed + (updated - confirmed).max(0),
        passes,
        moved: None,
        error: None,
        failed_passes: 0,
    }
}

async fn partwarden_drain(server: &pg::Server, bin: &str, rows: i64) -> Outcome {
    let (db, c) = app_db(server, "drain_partwarden", rows).await;
    let config = db.write_config("", "");
    // partwarden's own schema first (no table of the application's), then the table.
    let run = |args: &[&str]| {
        let out = std::process::Command::new(bin)
            .args(args)
            .env("RUST_LOG", "warn")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&["--config", config.to_str().unwrap(), "--bootstrap"]);
    let text = std::fs::read_to_string(&config).unwrap() + TABLE;
    std::fs::write(&config, text).unwrap();
    c.batch_execute("CHECKPOINT").await.unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let tasks = writers(&db.url, rows, stop.clone());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let t = Instant::now();
    let mut passes = 0;
    let mut failed_passes = 0;
    loop {
        let cfg = config.clone();
        let b = bin.to_string();
        let ok = tokio::task::spawn_blocking(move || {
            let out = std::process::Command::new(b)
                .args(["--config", cfg.to_str().unwrap(), "--run-once"])
                .env("RUST_LOG", "info")
                .output()
                .unwrap();
            // The passes' step log (durations of every step), for `DRAIN_BENCH_LOG=path`.
            if let Ok(path) = std::env::var("DRAIN_BENCH_LOG") {
                use std::io::Write as _;
                let mut f = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .unwrap();
                f.write_all(&out.stderr).unwrap();
            }
            // A pass that gives up (a lock not had within lock_timeout) is counted, and the
            // next one goes on.
            out.status.success()
        })
        .await
        .unwrap();
        if !ok {
            failed_passes += 1;
        }
        passes += 1;
        let left: i64 = c
            .query_one("SELECT count(*) FROM partwarden.default_drains", &[])
            .await
            .unwrap()
            .get(0);
        if left == 0 || passes >= 50 {
            break;
        }
    }
    let time = t.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut out = finish(&c, stop, tasks, time, passes).await;
    out.failed_passes = failed_passes;
    let in_default: i64 = c
        .query_one(
            "SELECT count(*) FROM ONLY odds_snapshots_default WHERE captured_at < now() - interval '1 minute'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        in_default, 0,
        "partwarden left rows in the DEFAULT partition"
    );
    out
}

async fn partman_drain(server: &pg::Server, rows: i64) -> Outcome {
    let db = pg::TestDb::on(server, "drain_partman").await;
    let c = db.client().await;
    c.batch_execute(
        APP_SCHEMA
            .replace(
                "CREATE TABLE odds_snapshots_default PARTITION OF odds_snapshots DEFAULT;",
                "",
            )
            .as_str(),
    )
    .await
    .unwrap();
    c.batch_execute(
        "CREATE SCHEMA partman; CREATE EXTENSION pg_partman SCHEMA partman;
         SELECT partman.create_parent('public.odds_snapshots', 'captured_at', 'native', 'daily',
             p_premake := 7, p_start_partition := to_char(now() + interval '1 day', 'YYYY-MM-DD'));",
    )
    .await
    .unwrap();
    insert_history(&c, rows).await;
    let stop = Arc::new(AtomicBool::new(false));
    let tasks = writers(&db.url, rows, stop.clone());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let t = Instant::now();
    let mover = db.client().await;
    let result = mover
        .batch_execute(
            "CALL partman.partition_data_proc('public.odds_snapshots', p_batch := 100000, p_wait := 0, p_quiet := true)",
        )
        .await;
    let time = t.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut out = finish(&c, stop, tasks, time, 0).await;
    // With writers inserting rows of today, its last batch (today) fails: ATTACH finds their
    // rows in the DEFAULT partition. The rate is that of the rows it moved before.
    if let Err(e) = result {
        let moved: i64 = c
            .query_one(
                "SELECT count(*) FROM odds_snapshots WHERE tableoid <> 'odds_snapshots_default'::regclass AND confirmations >= 0 AND captured_at < now() - interval '1 minute'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        out.moved = Some(moved);
        out.error = Some(
            partwarden::db::error_text(&e)
                .lines()
                .next()
                .unwrap_or_default()
                .to_string(),
        );
    }
    out
}
