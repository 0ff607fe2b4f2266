//! Benchmark: a maintenance pass under load, with a long reader in the way.
//!
//! Writers insert into the current month every 10 ms while a reader holds a transaction on
//! `market_odds_history` open for 20 s, and a pass creates one partition and expires one
//! (detach, archive, verify, drop). Prints the writers' max and p99 insert latency during the
//! pass, when the new partition became usable, how long the pass took and when the expiry
//! completed relative to the reader's end. Then, for scale, the same reader in front of a plain
//! `CREATE TABLE ... PARTITION OF` (what most tools do), which queues for ACCESS EXCLUSIVE.
//!
//! Run: `cargo run --release --example lifecycle_bench [-- --reader-secs 20]`
//! (starts its own throwaway PostgreSQL, like the tests).

mod common;
use common as pg;
#[allow(unused_imports)]
use common::Partwarden as _;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use chrono::{Months, Utc};
use partwarden::db;
use partwarden::period::Interval;
use tokio::sync::Mutex;

const WRITERS: usize = 2;
const WRITE_EVERY: Duration = Duration::from_millis(10);

#[tokio::main(flavor = "multi_thread", worker_threads = 4)]
async fn main() {
    let reader_secs: u64 = std::env::args()
        .skip_while(|a| a != "--reader-secs")
        .nth(1)
        .map(|s| s.parse().expect("--reader-secs takes a number"))
        .unwrap_or(20);
    let db = pg::TestDb::new("bench_lifecycle").await;
    let base = db.config_with("", "[[tables]]\nname = \"public.market_odds_history\"\npremake = 3\nretention = \"6 months\"\n");
    db.bootstrap(&base).await;
    let setup = db.client().await;
    let old = Interval::Monthly.floor(Utc::now()) - Months::new(8);
    setup
        .batch_execute(&format!(
            "CREATE TABLE market_odds_history_old PARTITION OF market_odds_history FOR VALUES FROM ('{}') TO ('{}');
             INSERT INTO market_odds_history (event_id, bookmaker_slug, betpawa_market_id, outcomes, captured_at)
             SELECT g % 5000, 'betpawa', 'm' || g % 40, '[{{\"name\":\"1\",\"odds\":1.85,\"is_active\":true}}]',
                    '{}'::timestamptz + g * interval '10 seconds' FROM generate_series(1, 200000) g;",
            old.to_rfc3339(),
            (old + Months::new(1)).to_rfc3339(),
            old.to_rfc3339()
        ))
        .await
        .unwrap();
    // Bootstrap again: it fills the periods between the old partition and now that are within
    // retention, so that the pass below has exactly one partition to create and one to expire.
    db.bootstrap(&base).await;
    // The pass's configuration: one more premade period than bootstrap made, 6 months retention.
    let config = db.config_with("", "[[tables]]\nname = \"public.market_odds_history\"\npremake = 4\nretention = \"6 months\"\n");
    let lock_timeout = config.database.lock_timeout;
    let new_period_start = {
        let mut t = Interval::Monthly.floor(Utc::now());
        for _ in 0..4 {
            t = Interval::Monthly.next(t);
        }
        t
    };

    println!(
        "partwarden lifecycle benchmark: {WRITERS} writers every {WRITE_EVERY:?}, a reader holding a transaction for {reader_secs} s, lock_timeout {lock_timeout:?}"
    );
    println!();
    println!(
        "== partwarden pass (CREATE + CHECK + ATTACH; DETACH CONCURRENTLY, archive, verify, drop)"
    );
    let (writers, stop, samples) = start_writers(&db).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let reader_end = hold_reader(&db, Duration::from_secs(reader_secs)).await;
    tokio::time::sleep(Duration::from_millis(200)).await;

    let t0 = Instant::now();
    let probe = {
        let c = db.client().await;
        tokio::spawn(async move {
            let sql = format!(
                "INSERT INTO market_odds_history (event_id, bookmaker_slug, betpawa_market_id, outcomes, captured_at) \
                 VALUES (1, 'probe', 'p', '[]', '{}')",
                new_period_start.to_rfc3339()
            );
            loop {
                if c.execute(sql.as_str(), &[]).await.is_ok() {
                    return t0.elapsed();
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    let mut client = db::connect(&config.database).await.unwrap();
    let report = pg::run_pass(&mut client, &config).await;
    let pass_took = t0.elapsed();
    let usable_after = probe.await.unwrap();
    let reader_ended = reader_end
        .lock()
        .await
        .expect("reader ended before the pass did");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let during = stop_writers(writers, &stop, &samples, t0, t0 + pass_took).await;
    let (max, p99) = stats(&during);
    let t = &report.tables[0];
    println!("pass: {}", t.summary_line(false));
    for e in &t.errors {
        println!("  error: {e}");
    }
    println!(
        "pass took                          {:>8.1} ms",
        ms(pass_took)
    );
    println!(
        "new partition usable after         {:>8.1} ms   (target < 1000 ms)",
        ms(usable_after)
    );
    println!(
        "reader ended at                    {:>8.1} ms;  expiry completed at {:.1} ms ({} the reader)",
        ms(reader_ended.duration_since(t0)),
        ms(pass_took),
        if pass_took >= reader_ended.duration_since(t0) {
            "after"
        } else {
            "BEFORE"
        }
    );
    println!("writer inserts during the pass     {:>8}", during.len());
    println!(
        "writer max latency                 {:>8.1} ms   (target <= lock_timeout + 50 ms = {:.0} ms)",
        ms(max),
        ms(lock_timeout) + 50.0
    );
    println!("writer p99 latency                 {:>8.1} ms", ms(p99));
    let ok = max <= lock_timeout + Duration::from_millis(50)
        && usable_after < Duration::from_secs(1)
        && t.errors.is_empty()
        && t.expired.len() == 1
        && t.created.len() == 1;
    println!("targets met: {}", if ok { "yes" } else { "NO" });

    println!();
    println!(
        "== for scale: plain CREATE TABLE ... PARTITION OF behind the same kind of reader (5 s)"
    );
    let (writers, stop, samples) = start_writers(&db).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let _reader_end = hold_reader(&db, Duration::from_secs(5)).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let t0 = Instant::now();
    let naive_start = Interval::Monthly.next(new_period_start);
    setup
        .batch_execute(&format!(
            "CREATE TABLE market_odds_history_naive PARTITION OF market_odds_history FOR VALUES FROM ('{}') TO ('{}')",
            naive_start.to_rfc3339(),
            Interval::Monthly.next(naive_start).to_rfc3339()
        ))
        .await
        .unwrap();
    let took = t0.elapsed();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let during = stop_writers(
        writers,
        &stop,
        &samples,
        t0,
        t0 + took + Duration::from_millis(100),
    )
    .await;
    let (max, p99) = stats(&during);
    println!("CREATE ... PARTITION OF took       {:>8.1} ms", ms(took));
    println!("writer max latency                 {:>8.1} ms", ms(max));
    println!("writer p99 latency                 {:>8.1} ms", ms(p99));
}

type Samples = Arc<Mutex<Vec<(Instant, Duration)>>>;

async fn start_writers(
    db: &pg::TestDb,
) -> (Vec<tokio::task::JoinHandle<()>>, Arc<AtomicBool>, Samples) {
    let stop = Arc::new(AtomicBool::new(false));
    let samples: Samples = Arc::new(Mutex::new(Vec::new()));
    let mut handles = Vec::new();
    for w in 0..WRITERS {
        let c = db.client().await;
        let stop = stop.clone();
        let samples = samples.clone();
        handles.push(tokio::spawn(async move {
            let st = c
                .prepare(
                    "INSERT INTO market_odds_history (event_id, bookmaker_slug, betpawa_market_id, outcomes) \
                     VALUES ($1, 'betpawa', '1x2', '[{\"name\":\"1\",\"odds\":1.85,\"is_active\":true}]')",
                )
                .await
                .unwrap();
            let mut tick = tokio::time::interval(WRITE_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut i = 0i32;
            while !stop.load(Ordering::SeqCst) {
                tick.tick().await;
                let start = Instant::now();
                c.execute(&st, &[&(w as i32 * 1_000_000 + i)]).await.expect("writer insert");
                samples.lock().await.push((start, start.elapsed()));
                i += 1;
            }
        }));
    }
    (handles, stop, samples)
}

/// Stops the writers and returns the latencies of the inserts that started in `[from, to]`.
async fn stop_writers(
    writers: Vec<tokio::task::JoinHandle<()>>,
    stop: &AtomicBool,
    samples: &Samples,
    from: Instant,
    to: Instant,
) -> Vec<Duration> {
    stop.store(true, Ordering::SeqCst);
    for w in writers {
        w.await.unwrap();
    }
    samples
        .lock()
        .await
        .iter()
        .filter(|(at, _)| *at >= from && *at <= to)
        .map(|(_, l)| *l)
        .collect()
}

/// Opens a transaction that reads the history table and keeps it open for `hold`; the
/// returned cell gets the instant it ended.
async fn hold_reader(db: &pg::TestDb, hold: Duration) -> Arc<Mutex<Option<Instant>>> {
    let c = db.client().await;
    c.batch_execute("SET application_name = 'bench_long_reader'; BEGIN; SELECT count(*) FROM market_odds_history")
        .await
        .unwrap();
    let ended = Arc::new(Mutex::new(None));
    let cell = ended.clone();
    tokio::spawn(async move {
        tokio::time::sleep(hold).await;
        c.batch_execute("COMMIT").await.unwrap();
        *cell.lock().await = Some(Instant::now());
    });
    ended
}

fn stats(v: &[Duration]) -> (Duration, Duration) {
    if v.is_empty() {
        return (Duration::ZERO, Duration::ZERO);
    }
    let mut s = v.to_vec();
    s.sort();
    let p99 = s[((s.len() as f64 * 0.99).ceil() as usize)
        .saturating_sub(1)
        .min(s.len() - 1)];
    (*s.last().unwrap(), p99)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
