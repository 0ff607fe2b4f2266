//! Benchmark: partwarden beside pg_partman on the same 50 tables, nothing to do.
//!
//! Sets up 50 monthly-partitioned tables made by pg_partman 4.7 (`create_parent(..., 'native',
//! 'monthly', p_premake := 4, p_start_partition := ...)`, UTC bounds, a DEFAULT partition
//! each), at 3,200, 6,400 and 12,800 partitions in all (64, 128 and 256 per table; at 6,400 the
//! history starts 2016-09 as in issue 15), and times, three runs each:
//! - `SELECT partman.run_maintenance(p_analyze := false)` on an open session (the statement
//!   alone: no process start, no connection);
//! - `partwarden --run-once` (same 50 tables, premake 3): the release binary, end to end
//!   (process start, connection, schema check and lock included);
//! - `partwarden --check`: the release binary, end to end;
//! - the daemon's pass: `pass::run` on a session kept open, as the daemon runs it (the same
//!   code as `--run-once` without process start and connection).
//!
//! Installs Debian's `postgresql-15-partman` when the extension is missing (as root). The
//! server runs with `max_locks_per_transaction = 512`: `run_maintenance` locks every partition
//! and its indexes in one transaction, and at 12,800 partitions fails with "out of shared
//! memory" at the default of 64 (partwarden's idle pass locks no partition).
//! Run: `cargo build --release && cargo run --release --example partman_bench`
//! (`-- --sizes 6400` for one size).

mod common;
use common as pg;
#[allow(unused_imports)]
use common::Partwarden as _;

use std::path::Path;
use std::time::{Duration, Instant};

use chrono::{Datelike, Months, Utc};
use partwarden::period::Interval;

const TABLES: usize = 50;
const RUNS: usize = 3;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let sizes: Vec<usize> = pg::numbers_arg("--sizes").unwrap_or_else(|| vec![3200, 6400, 12800]);
    pg::ensure_partman();
    let bin = env!("CARGO_MANIFEST_DIR").to_string() + "/target/release/partwarden";
    assert!(
        Path::new(&bin).exists(),
        "{bin} is missing: cargo build --release first"
    );
    println!(
        "partwarden beside pg_partman: {TABLES} monthly tables made by pg_partman (premake 4, a DEFAULT each), \
         nothing to create or expire; {RUNS} runs; 2 cores"
    );
    println!(
        "pg_partman: the statement on an open session; partwarden: the release binary end to end\n"
    );
    println!(
        "| partitions | pg_partman run_maintenance | partwarden --run-once | ratio | partwarden --check | daemon pass |"
    );
    println!("|---|---|---|---|---|---|");
    let server = pg::server_with("-c max_locks_per_transaction=512");
    let mut rows = Vec::new();
    for &total in &sizes {
        let per_table = total / TABLES;
        let r = one_size(&server, &bin, per_table).await;
        let med = |v: &[Duration]| {
            let mut v = v.to_vec();
            v.sort();
            v[v.len() / 2].as_secs_f64()
        };
        let fmt = |v: &[Duration]| {
            v.iter()
                .map(|d| format!("{:.2}", d.as_secs_f64()))
                .collect::<Vec<_>>()
                .join(" / ")
                + " s"
        };
        println!(
            "| {} | {} | {} | {:.2}x | {} | {} |",
            r.partitions,
            fmt(&r.partman),
            fmt(&r.run_once),
            med(&r.run_once) / med(&r.partman),
            fmt(&r.check),
            fmt(&r.daemon)
        );
        rows.push((
            r.partitions,
            med(&r.partman),
            med(&r.run_once),
            med(&r.check),
            med(&r.daemon),
        ));
    }
    println!();
    for w in rows.windows(2) {
        let (a, b) = (w[0], w[1]);
        println!(
            "{} -> {} partitions (x{:.2}): pg_partman x{:.2}, --run-once x{:.2}, --check x{:.2}, daemon pass x{:.2} (medians)",
            a.0,
            b.0,
            b.0 as f64 / a.0 as f64,
            b.1 / a.1,
            b.2 / a.2,
            b.3 / a.3,
            b.4 / a.4
        );
    }
    println!(
        "\ntargets (issue 15): --run-once <= 0.5x pg_partman; --check < 1 s; at most linear growth"
    );
}

struct Figures {
    partitions: i64,
    partman: Vec<Duration>,
    run_once: Vec<Duration>,
    check: Vec<Duration>,
    daemon: Vec<Duration>,
}

/// Sets up the 50 tables with `per_table` partitions each (the DEFAULT one included) in a
/// database of their own, and times the three.
async fn one_size(server: &pg::Server, bin: &str, per_table: usize) -> Figures {
    let db = pg::TestDb::on(server, &format!("bench_partman_{per_table}")).await;
    let c = db.client().await;
    c.batch_execute(&format!("ALTER DATABASE {} SET timezone = 'UTC'", db.name))
        .await
        .unwrap();
    let c = db.client().await;
    c.batch_execute("CREATE SCHEMA partman; CREATE EXTENSION pg_partman SCHEMA partman")
        .await
        .unwrap();
    // per_table - 1 ranges ending four months ahead: the first starts per_table - 6 months
    // before this month.
    let this_month = Interval::Monthly.floor(Utc::now());
    let start = this_month - Months::new(per_table as u32 - 6);
    let start = format!("{:04}-{:02}-01", start.year(), start.month());
    let mut tables = String::new();
    let t0 = Instant::now();
    for t in 0..TABLES {
        c.batch_execute(&format!(
            "CREATE TABLE public.t{t:02} (id bigint GENERATED ALWAYS AS IDENTITY, at timestamptz NOT NULL, v int, \
             PRIMARY KEY (id, at)) PARTITION BY RANGE (at); CREATE INDEX ON public.t{t:02} (v); \
             SELECT partman.create_parent('public.t{t:02}', 'at', 'native', 'monthly', p_premake := 4, \
             p_start_partition := '{start}')"
        ))
        .await
        .unwrap();
        tables.push_str(&format!(
            "[[tables]]\nname = \"public.t{t:02}\"\npartition_key = \"at\"\npremake = 3\n\n"
        ));
    }
    let partitions = count_partitions(&c).await;
    eprintln!(
        "set up {partitions} partitions (from {start}) in {:.0} s",
        t0.elapsed().as_secs_f64()
    );
    let config_path = db.write_config("", &tables);
    let config = partwarden::config::Config::load(&config_path).unwrap();
    db.bootstrap(&config).await;
    let config_arg = config_path.to_str().unwrap().to_string();
    let run = |args: &'static [&'static str]| {
        let config_arg = config_arg.clone();
        move || {
            let t = Instant::now();
            let out = std::process::Command::new(bin)
                .arg("--config")
                .arg(&config_arg)
                .args(args)
                .output()
                .unwrap();
            let took = t.elapsed();
            let text = String::from_utf8_lossy(&out.stdout).to_string()
                + &String::from_utf8_lossy(&out.stderr);
            (took, out.status.code(), text)
        }
    };
    // One untimed pass first: it must find nothing to do (pg_partman premade more).
    let (_, code, text) = run(&["--run-once"])();
    assert_eq!(code, Some(0), "{text}");
    assert!(
        !text.contains("created 1") && !text.contains("created 2"),
        "the first pass had work to do:\n{text}"
    );
    c.batch_execute("SELECT partman.run_maintenance(p_analyze := false)")
        .await
        .unwrap();
    let mut f = Figures {
        partitions,
        partman: Vec::new(),
        run_once: Vec::new(),
        check: Vec::new(),
        daemon: Vec::new(),
    };
    let mut session = partwarden::db::connect(&config.database).await.unwrap();
    for _ in 0..RUNS {
        let t = Instant::now();
        c.batch_execute("SELECT partman.run_maintenance(p_analyze := false)")
            .await
            .unwrap();
        f.partman.push(t.elapsed());
        let (took, code, text) = run(&["--run-once"])();
        assert_eq!(code, Some(0), "{text}");
        f.run_once.push(took);
        let (took, code, text) = run(&["--check"])();
        assert!(code.unwrap_or(9) <= 1, "{text}");
        f.check.push(took);
        let t = Instant::now();
        let report = pg::run_pass(&mut session, &config).await;
        f.daemon.push(t.elapsed());
        assert!(report.ok(), "{}", report.to_text());
        assert!(report.tables.iter().all(|t| t.created.is_empty()));
    }
    // Nothing was created by anyone while timing.
    let after = count_partitions(&c).await;
    assert_eq!(
        after, partitions,
        "something created partitions while timing"
    );
    f
}

/// Partitions of the 50 tables, DEFAULT ones included.
async fn count_partitions(c: &tokio_postgres::Client) -> i64 {
    c.query_one(
        "SELECT count(*) FROM pg_inherits i JOIN pg_class p ON p.oid = i.inhparent \
         WHERE p.relname ~ '^t[0-9]{2}$' AND p.relnamespace = 'public'::regnamespace",
        &[],
    )
    .await
    .unwrap()
    .get(0)
}
