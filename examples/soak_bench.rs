//! Soak: the daemon on a 1-second schedule for 10 minutes while writers use the upsert module at
//! a steady rate and readers query history. Prints passes run, failed writes (target 0), and the
//! daemon's RSS and open file descriptors at the start and at the end (target: flat).
//!
//! Run: `cargo build --release && cargo run --release --example soak_bench [-- --minutes 10]`
//! (the daemon is the release binary; its own throwaway PostgreSQL).

mod common;
use common as pg;
#[allow(unused_imports)]
use common::Partwarden as _;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chrono::{Months, Utc};
use partwarden::odds::{self, MarketOdds};
use partwarden::period::Interval;
use serde_json::json;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let minutes: u64 = std::env::args()
        .skip_while(|a| a != "--minutes")
        .nth(1)
        .map(|s| s.parse().expect("--minutes takes a number"))
        .unwrap_or(10);
    let bin = format!("{}/target/release/partwarden", env!("CARGO_MANIFEST_DIR"));
    if !std::path::Path::new(&bin).exists() {
        eprintln!("build the daemon first: cargo build --release");
        std::process::exit(2);
    }
    let db = pg::TestDb::new("bench_soak").await;
    let path = db.write_config("", "");
    let text = std::fs::read_to_string(&path).unwrap().replace(
        "archive_dir = \"archive\"\n",
        "archive_dir = \"archive\"\nschedule = \"* * * * * *\"\n",
    );
    std::fs::write(&path, text).unwrap();
    let config = partwarden::config::Config::load(&path).unwrap();
    db.bootstrap(&config).await;
    let c = db.client().await;
    // Twenty expired months with rows, for the daemon to archive during the soak.
    for back in 8..28u32 {
        let lo = Interval::Monthly.floor(Utc::now()) - Months::new(back);
        c.batch_execute(&format!(
            "CREATE TABLE market_odds_history{} PARTITION OF market_odds_history FOR VALUES FROM ('{}') TO ('{}');
             INSERT INTO market_odds_history (event_id, bookmaker_slug, betpawa_market_id, outcomes, captured_at)
             SELECT g, 'betpawa', 'm', '[]', '{}'::timestamptz + g * interval '1 minute' FROM generate_series(1, 20000) g",
            Interval::Monthly.suffix(lo),
            lo.to_rfc3339(),
            (lo + Months::new(1)).to_rfc3339(),
            lo.to_rfc3339()
        ))
        .await
        .unwrap();
    }
    let log = db.dir.path().join("daemon.log");
    let mut daemon = std::process::Command::new(&bin)
        .args(["--config", path.to_str().unwrap()])
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let pid = daemon.id();

    let stop = Arc::new(AtomicBool::new(false));
    let writes = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let reads = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for w in 0..2i32 {
        let c = db.client().await;
        let (stop, writes, failed) = (stop.clone(), writes.clone(), failed.clone());
        tasks.push(tokio::spawn(async move {
            let mut round = 0u64;
            while !stop.load(Ordering::SeqCst) {
                let at = Utc::now();
                let batch: Vec<MarketOdds> = (0..500)
                    .map(|i| MarketOdds {
                        event_id: w * 10_000 + i,
                        bookmaker_slug: "betpawa".into(),
                        betpawa_market_id: "1x2".into(),
                        betpawa_market_name: "1X2".into(),
                        line: None,
                        handicap_type: None,
                        handicap_home: None,
                        handicap_away: None,
                        outcomes: json!([{"name": "1", "odds": 1.5 + (round + i as u64).is_multiple_of(5) as u8 as f64 * (round % 7) as f64 / 10.0, "is_active": true}]),
                        market_groups: None,
                        unavailable_at: None,
                        scraped_at: at,
                    })
                    .collect();
                match odds::write_batch(&c, &batch).await {
                    Ok(_) => writes.fetch_add(1, Ordering::Relaxed),
                    Err(e) => {
                        eprintln!("write failed: {e}");
                        failed.fetch_add(1, Ordering::Relaxed)
                    }
                };
                round += 1;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }));
    }
    {
        let c = db.client().await;
        let (stop, reads) = (stop.clone(), reads.clone());
        tasks.push(tokio::spawn(async move {
            let mut i = 0i32;
            while !stop.load(Ordering::SeqCst) {
                let _ = c
                    .query_one(
                        "SELECT count(*) FROM market_odds_history WHERE event_id = $1 AND captured_at > now() - interval '1 hour'",
                        &[&(i % 500)],
                    )
                    .await
                    .unwrap();
                reads.fetch_add(1, Ordering::Relaxed);
                i += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(10)).await;
    let start = (rss_kb(pid), fds(pid));
    let started = Instant::now();
    let total = Duration::from_secs(minutes * 60);
    while started.elapsed() < total {
        tokio::time::sleep(Duration::from_secs(30)).await;
        eprintln!(
            "{:>4} s: writes {} failed {} reads {} rss {} KiB fds {}",
            started.elapsed().as_secs(),
            writes.load(Ordering::Relaxed),
            failed.load(Ordering::Relaxed),
            reads.load(Ordering::Relaxed),
            rss_kb(pid),
            fds(pid)
        );
    }
    let end = (rss_kb(pid), fds(pid));
    stop.store(true, Ordering::SeqCst);
    for t in tasks {
        t.await.unwrap();
    }
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let status = daemon.wait().unwrap();
    let passes: i64 = c
        .query_one(
            "SELECT count(*) FROM partwarden.partition_events WHERE step = 'pass'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let failed_passes: i64 = c
        .query_one("SELECT count(*) FROM partwarden.partition_events WHERE step = 'pass' AND error IS NOT NULL", &[])
        .await
        .unwrap()
        .get(0);
    let expired: i64 = c
        .query_one("SELECT count(*) FROM partwarden.partition_events WHERE step = 'drop' AND finished_at IS NOT NULL", &[])
        .await
        .unwrap()
        .get(0);
    println!(
        "partwarden soak: daemon on a 1 s schedule for {minutes} min, 2 writers (500 markets / 200 ms), 1 reader (every 100 ms)"
    );
    println!(
        "passes run                 {passes} ({failed_passes} with a failure); partitions expired {expired}"
    );
    println!(
        "odds batches written       {} ; failed writes {} (target 0)",
        writes.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed)
    );
    println!(
        "history reads              {}",
        reads.load(Ordering::Relaxed)
    );
    println!(
        "daemon RSS                 {} KiB at start, {} KiB at end",
        start.0, end.0
    );
    println!(
        "daemon open fds            {} at start, {} at end",
        start.1, end.1
    );
    println!("daemon exit on SIGTERM     {:?}", status.code());
}

fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}
