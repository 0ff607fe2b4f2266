//! Benchmark: 50 managed tables x 120 monthly partitions.
//!
//! Prints the time of one pass with nothing to do, of one that creates one partition per table,
//! and of `--check`, at 120 and at 240 partitions per table, to show how each grows when the
//! partition count doubles. Targets on this machine: under 5 s, under 30 s and under 3 s at 120.
//!
//! Run: `cargo run --release --example scale_bench` (its own throwaway PostgreSQL).

mod common;
use common as pg;
#[allow(unused_imports)]
use common::Partwarden as _;

use std::time::{Duration, Instant};

use chrono::{Months, Utc};
use partwarden::check;
use partwarden::period::Interval;

const TABLES: usize = 50;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let db = pg::TestDb::new("bench_scale").await;
    let c = db.client().await;
    let mut tables = String::new();
    for t in 0..TABLES {
        c.batch_execute(&format!(
            "CREATE TABLE public.t{t:02} (id bigint GENERATED ALWAYS AS IDENTITY, at timestamptz NOT NULL, v int, \
             PRIMARY KEY (id, at)) PARTITION BY RANGE (at); CREATE INDEX ON public.t{t:02} (v)"
        ))
        .await
        .unwrap();
        tables.push_str(&format!(
            "[[tables]]\nname = \"public.t{t:02}\"\npartition_key = \"at\"\npremake = 3\n\n"
        ));
    }
    let config = db.config_with("", &tables);
    let mut client = partwarden::db::connect(&config.database).await.unwrap();
    // The migrations, as bootstrap would run them (the tables are the application's).
    db.bootstrap(&config).await;

    println!(
        "partwarden scale benchmark: {TABLES} tables, monthly partitions (keep forever), 2 cores"
    );
    let mut previous: Option<(f64, f64, f64)> = None;
    for per_table in [120u32, 240] {
        // History back to per_table - 4 months ago: the pass's gap fill makes the partitions.
        let earliest = Interval::Monthly.floor(Utc::now()) - Months::new(per_table - 4);
        for t in 0..TABLES {
            let name = format!("t{t:02}{}", Interval::Monthly.suffix(earliest));
            c.batch_execute(&format!(
                "CREATE TABLE IF NOT EXISTS public.{name} PARTITION OF public.t{t:02} FOR VALUES FROM ('{}') TO ('{}')",
                earliest.to_rfc3339(),
                (earliest + Months::new(1)).to_rfc3339()
            ))
            .await
            .unwrap();
        }
        let (setup, created) = timed_pass(&mut client, &config).await;
        println!(
            "\n== {per_table} partitions per table ({} in all; set up by a pass creating {created} in {:.1} s)",
            per_table as usize * TABLES,
            setup.as_secs_f64()
        );
        let (noop, created) = timed_pass(&mut client, &config).await;
        assert_eq!(created, 0);
        // One partition per table to create: drop the last premade one of each.
        let last = Interval::Monthly.floor(Utc::now()) + Months::new(3);
        for t in 0..TABLES {
            c.batch_execute(&format!(
                "DROP TABLE public.t{t:02}{}",
                Interval::Monthly.suffix(last)
            ))
            .await
            .unwrap();
        }
        let (one_each, created) = timed_pass(&mut client, &config).await;
        assert_eq!(created, TABLES);
        let check_t = time(|| async {
            let report = check::run(&config, None).await;
            assert!(
                report.status <= check::Status::Warning,
                "{}",
                report.to_text(false)
            );
        })
        .await;
        println!(
            "pass with nothing to do            {:>8.2} s   (target < 5 s at 120)",
            noop.as_secs_f64()
        );
        println!(
            "pass creating one per table        {:>8.2} s   (target < 30 s at 120)",
            one_each.as_secs_f64()
        );
        println!(
            "--check                            {:>8.2} s   (target < 3 s at 120)",
            check_t.as_secs_f64()
        );
        let now = (
            noop.as_secs_f64(),
            one_each.as_secs_f64(),
            check_t.as_secs_f64(),
        );
        if let Some(p) = previous {
            println!(
                "growth when partitions double: nothing-to-do pass x{:.2}, one-per-table pass x{:.2}, --check x{:.2}",
                now.0 / p.0,
                now.1 / p.1,
                now.2 / p.2
            );
        }
        previous = Some(now);
    }
}

/// Runs one pass; returns how long it took and how many partitions it created.
async fn timed_pass(
    client: &mut tokio_postgres::Client,
    config: &partwarden::config::Config,
) -> (Duration, usize) {
    let t = Instant::now();
    let r = pg::run_pass(client, config).await;
    assert!(r.ok(), "{}", r.to_text());
    (t.elapsed(), r.tables.iter().map(|t| t.created.len()).sum())
}

async fn time<F, Fut>(f: F) -> Duration
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let t = Instant::now();
    f().await;
    t.elapsed()
}
