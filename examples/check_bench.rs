//! Benchmark: `--check` on a table with 60 monthly partitions and 10,000,000 rows.
//!
//! The check is catalog queries, EXISTS on the DEFAULT partition and rolled-back routing
//! probes: nothing that grows with the data. Prints the time of the library call and of the
//! real binary (process start and connection included), five runs each.
//!
//! Run: `cargo run --release --example check_bench [-- --rows 10000000]` (starts its own
//! throwaway PostgreSQL, like the tests).

mod common;
use common as pg;
#[allow(unused_imports)]
use common::Partwarden as _;

use std::time::{Duration, Instant};

use chrono::{Months, Utc};
use partwarden::check;
use partwarden::period::Interval;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let rows: i64 = std::env::args()
        .skip_while(|a| a != "--rows")
        .nth(1)
        .map(|s| s.parse().expect("--rows takes a number"))
        .unwrap_or(10_000_000);
    let db = pg::TestDb::new("bench_check").await;
    // Keep forever, so the 56 months of history are not expired by the pass below.
    let config_path = db.write_config(
        "",
        "[[tables]]\nname = \"public.market_odds_history\"\npremake = 3\n",
    );
    let config = partwarden::config::Config::load(&config_path).unwrap();
    db.bootstrap(&config).await;
    let c = db.client().await;
    let first = Interval::Monthly.floor(Utc::now()) - Months::new(56);
    c.batch_execute(&format!(
        "CREATE TABLE market_odds_history_first PARTITION OF market_odds_history FOR VALUES FROM ('{}') TO ('{}')",
        first.to_rfc3339(),
        (first + Months::new(1)).to_rfc3339()
    ))
    .await
    .unwrap();
    // Fill the 55 months between with a pass (gap fill), then load the rows across all 60.
    let mut client = partwarden::db::connect(&config.database).await.unwrap();
    let r = pg::run_pass(&mut client, &config).await;
    assert!(r.ok(), "{}", r.to_text());
    let parts: i64 = c
        .query_one(
            "SELECT count(*) FROM pg_inherits WHERE inhparent = 'market_odds_history'::regclass",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let span_secs = (Interval::Monthly.floor(Utc::now()) + Months::new(4) - first).num_seconds();
    let t = Instant::now();
    c.batch_execute(&format!(
        "INSERT INTO market_odds_history (event_id, bookmaker_slug, betpawa_market_id, line, outcomes, captured_at)
         SELECT g % 20000, (ARRAY['betpawa','sportybet','bet9ja'])[1 + g % 3], (g % 40)::text, NULL,
                '[{{\"name\":\"1\",\"odds\":1.85,\"is_active\":true}}]',
                '{}'::timestamptz + ((g::float8 / {rows}) * {span_secs}) * interval '1 second'
         FROM generate_series(0, {rows} - 1) g",
        first.to_rfc3339()
    ))
    .await
    .unwrap();
    c.batch_execute("ANALYZE market_odds_history")
        .await
        .unwrap();
    println!(
        "partwarden --check benchmark: {parts} partitions, {rows} rows (loaded in {:.0} s)",
        t.elapsed().as_secs_f64()
    );

    let mut lib = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        let report = check::run(&config, None).await;
        lib.push(t.elapsed());
        assert!(
            report.status <= check::Status::Warning,
            "{}",
            report.to_text(false)
        );
    }
    let bin = env!("CARGO_MANIFEST_DIR").to_string() + "/target/release/partwarden";
    let mut binary = Vec::new();
    if std::path::Path::new(&bin).exists() {
        for _ in 0..5 {
            let t = Instant::now();
            let out = std::process::Command::new(&bin)
                .args(["--config", config_path.to_str().unwrap(), "--check"])
                .output()
                .unwrap();
            binary.push(t.elapsed());
            assert!(
                out.status.code().unwrap_or(9) <= 1,
                "{}",
                String::from_utf8_lossy(&out.stdout)
            );
        }
    }
    let show = |label: &str, v: &mut Vec<Duration>| {
        if v.is_empty() {
            println!("{label:<40} (not run: build it with cargo build --release)");
            return;
        }
        v.sort();
        println!(
            "{label:<40} min {:>6.1} ms  median {:>6.1} ms  max {:>6.1} ms   (target < 1000 ms)",
            v[0].as_secs_f64() * 1e3,
            v[v.len() / 2].as_secs_f64() * 1e3,
            v[v.len() - 1].as_secs_f64() * 1e3
        );
    };
    show("check::run (library, 5 runs)", &mut lib);
    show("partwarden --check (binary, 5 runs)", &mut binary);
}
