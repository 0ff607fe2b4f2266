//! Benchmark: archiving a 1,000,000-row partition.
//!
//! Compares partwarden's archive (text COPY → zstd with SHA-256 and row count, then read
//! back and verified against `count(*)`) with `pg_dump -Fc -t <partition>` (what pg_partman's
//! archiving uses) and with a plain `COPY ... (FORMAT binary) TO STDOUT` into nothing (the
//! read-speed limit). Then archives a 4,000,000-row table to show memory stays flat: the
//! process's peak RSS (VmHWM) after each.
//!
//! Each format (COPY+zstd, Parquet) is archived on local disk and to an S3-compatible store
//! (moto's server, started by the test harness: uploaded, read back and verified there).
//!
//! Run: `cargo run --release --example archive_bench` (starts its own throwaway PostgreSQL).

mod common;
use common as pg;
#[allow(unused_imports)]
use common::Partwarden as _;

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use partwarden::archive;
use partwarden::catalog::RelName;

fn main() {
    // The S3 client reads its credentials from the environment; set before any thread runs.
    // SAFETY: no other thread exists yet.
    unsafe {
        std::env::set_var("AWS_ACCESS_KEY_ID", "bench");
        std::env::set_var("AWS_SECRET_ACCESS_KEY", "bench");
    }
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(run());
}

async fn run() {
    let db = pg::TestDb::new("bench_archive").await;
    let c = db.client().await;
    c.batch_execute(include_str!("../schema/0001_odds_schema.sql"))
        .await
        .unwrap();
    println!(
        "partwarden archive benchmark (PostgreSQL {}, {} cores)",
        server_version(&c).await,
        num_cpus()
    );
    for (name, rows) in [("bench_1m", 1_000_000), ("bench_4m", 4_000_000)] {
        let t = Instant::now();
        c.batch_execute(&format!(
            "CREATE TABLE {name} (LIKE market_odds_history INCLUDING DEFAULTS);
             INSERT INTO {name} (event_id, bookmaker_slug, betpawa_market_id, line, outcomes, captured_at)
             SELECT 100000 + g % 20000, (ARRAY['betpawa','sportybet','bet9ja'])[1 + g % 3], (g % 40)::text,
                    CASE WHEN g % 3 = 0 THEN NULL ELSE 0.5 + (g % 8) END,
                    jsonb_build_array(
                      jsonb_build_object('name', '1', 'odds', round((1.2 + random() * 4)::numeric, 2), 'is_active', true),
                      jsonb_build_object('name', 'X', 'odds', round((2.5 + random() * 2)::numeric, 2), 'is_active', true),
                      jsonb_build_object('name', '2', 'odds', round((1.5 + random() * 6)::numeric, 2), 'is_active', g % 17 <> 0)),
                    timestamptz '2026-03-01 00:00:00+00' + g * interval '2 seconds'
             FROM generate_series(1, {rows}) g;"
        ))
        .await
        .unwrap();
        c.batch_execute(&format!("VACUUM ANALYZE {name}"))
            .await
            .unwrap();
        println!(
            "loaded {rows} rows into {name} in {:.1} s",
            t.elapsed().as_secs_f64()
        );
    }
    println!();

    let table = RelName {
        schema: "public".into(),
        name: "market_odds_history".into(),
    };
    let out = db.dir.path().join("archive");

    let mut binary_read = Duration::ZERO;
    // The read-speed limits: binary COPY (the reference) and text COPY (what the archive
    // reads), discarded.
    for (label, sql) in [
        (
            "COPY (FORMAT binary) TO STDOUT > /dev/null",
            "COPY public.bench_1m TO STDOUT (FORMAT binary)",
        ),
        (
            "COPY (FORMAT text) TO STDOUT > /dev/null",
            "COPY public.bench_1m TO STDOUT",
        ),
    ] {
        let t = Instant::now();
        let mut bytes = 0u64;
        let stream = c.copy_out(sql).await.unwrap();
        futures_util::pin_mut!(stream);
        while let Some(chunk) = stream.next().await {
            bytes += chunk.unwrap().len() as u64;
        }
        println!(
            "{:<46} {:>8.2} s  {:>8.1} MB (uncompressed)",
            label,
            secs(t.elapsed()),
            mb(bytes)
        );
        if binary_read.is_zero() {
            binary_read = t.elapsed();
        }
    }

    // pg_dump -Fc.
    let server = pg::server();
    let dump = db.dir.path().join("bench_1m.dump");
    let t = Instant::now();
    let status = std::process::Command::new("pg_dump")
        .args([
            "-Fc",
            "-h",
            &server.host,
            "-p",
            &server.port.to_string(),
            "-U",
            &server.user,
            "-d",
            &db.name,
            "-t",
            "public.bench_1m",
            "-f",
        ])
        .arg(&dump)
        .status()
        .expect("pg_dump runs");
    let pg_dump = t.elapsed();
    assert!(status.success());
    let pg_dump_size = std::fs::metadata(&dump).unwrap().len();
    println!(
        "{:<46} {:>8.2} s  {:>8.1} MB",
        "pg_dump -Fc -t bench_1m",
        secs(pg_dump),
        mb(pg_dump_size)
    );

    // partwarden: write + verify, 1M then 4M rows, for each format on local disk and in an
    // S3-compatible store (moto, started like the PostgreSQL server); peak RSS after each.
    let mut client = partwarden::db::connect(&db.config().database)
        .await
        .unwrap();
    let s3 = pg::s3_server();
    s3.create_bucket("bench-archive");
    let store = |prefix: &str| {
        archive::store::Store::open(&partwarden::config::StoreConfig {
            bucket: "bench-archive".into(),
            prefix: prefix.into(),
            endpoint: Some(s3.endpoint.clone()),
            region: Some("us-east-1".into()),
        })
        .unwrap()
    };
    let read_limit = binary_read;
    let mut results = Vec::new();
    for (format, to_store) in [
        (archive::DataFormat::Copy, false),
        (archive::DataFormat::Parquet, false),
        (archive::DataFormat::Copy, true),
        (archive::DataFormat::Parquet, true),
    ] {
        // `--only parquet-store` (or copy-disk, parquet-disk, copy-store) runs one variant, so
        // that its peak RSS is its own.
        let variant = format!(
            "{}-{}",
            if format == archive::DataFormat::Copy {
                "copy"
            } else {
                "parquet"
            },
            if to_store { "store" } else { "disk" }
        );
        if let Some(only) = std::env::args().skip_while(|a| a != "--only").nth(1)
            && only != variant
        {
            continue;
        }
        // The peak RSS of each variant on its own: reset the high-water mark before it.
        let _ = std::fs::write("/proc/self/clear_refs", "5");
        for name in ["bench_1m", "bench_4m"] {
            let partition = RelName {
                schema: "public".into(),
                name: name.into(),
            };
            let dir = out.join(format!("{format:?}-{to_store}"));
            let paths = archive::paths(&dir, &table, &partition);
            let src = archive::Source {
                table: &table,
                partition: &partition,
                lower: None,
                upper: None,
                key: "captured_at",
            };
            let t = Instant::now();
            let m = archive::write(&mut client, &src, &paths, None, format)
                .await
                .unwrap();
            let write = t.elapsed();
            let t = Instant::now();
            if to_store {
                // What the upload step does: upload, read back from the store, verify there.
                let scratch = paths.dir.join(".scratch");
                archive::create_private_dir(&scratch).unwrap();
                store(&format!("{format:?}"))
                    .publish(&paths, &m, &scratch)
                    .await
                    .unwrap();
            } else {
                archive::verify(&client, &paths, &partition).await.unwrap();
            }
            let verify = t.elapsed();
            let label = format!(
                "{} {}{name}",
                match format {
                    archive::DataFormat::Copy => "COPY+zstd",
                    archive::DataFormat::Parquet => "Parquet",
                },
                if to_store {
                    "to the store, "
                } else {
                    "on disk, "
                }
            );
            println!(
                "{:<46} {:>8.2} s  {:>8.1} MB  (write {:.2} s + verify{} {:.2} s; {:.2}x the read limit; peak RSS {} KiB)",
                label,
                secs(write + verify),
                mb(m.compressed_bytes),
                secs(write),
                if to_store {
                    " = upload, read back, verify in the store"
                } else {
                    ""
                },
                secs(verify),
                secs(write + verify)
                    / secs(read_limit)
                    / if name == "bench_4m" { 4.0 } else { 1.0 },
                peak_rss_kb()
            );
            results.push((
                format,
                to_store,
                name,
                write + verify,
                m.compressed_bytes,
                peak_rss_kb(),
            ));
        }
    }
    println!();
    if results.is_empty() {
        return;
    }
    let (_, _, _, t1, s1, rss1) = results[0];
    println!(
        "1M rows, COPY on disk: {:.2} s vs pg_dump -Fc {:.2} s ({:.2}x); size {:.1} MB vs {:.1} MB ({:.2}x)",
        secs(t1),
        secs(pg_dump),
        secs(pg_dump) / secs(t1),
        mb(s1),
        mb(pg_dump_size),
        s1 as f64 / pg_dump_size as f64
    );
    let within = results.iter().all(|(_, _, name, t, _, _)| {
        let scale = if *name == "bench_4m" { 4.0 } else { 1.0 };
        secs(*t) <= 1.5 * scale * secs(read_limit)
    });
    let parquet_1m = results
        .iter()
        .find(|r| r.0 == archive::DataFormat::Parquet && r.2 == "bench_1m")
        .map(|r| r.4)
        .unwrap_or(0);
    // Per variant: the peak after 4M rows within 10% of the peak after 1M rows.
    let flat = results
        .chunks(2)
        .all(|pair| (pair[1].5 as f64) <= pair[0].5 as f64 * 1.10);
    println!(
        "targets: every variant within 1.5x the binary COPY read limit: {}; Parquet no larger than pg_dump -Fc: {} ({:.1} MB vs {:.1} MB); flat memory (each variant's peak RSS at 4M rows within 10% of its peak at 1M): {}",
        yes(within),
        yes(parquet_1m <= pg_dump_size),
        mb(parquet_1m),
        mb(pg_dump_size),
        yes(flat)
    );
    let _ = rss1;
}

fn yes(b: bool) -> &'static str {
    if b { "yes" } else { "NO" }
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

fn mb(b: u64) -> f64 {
    b as f64 / 1e6
}

fn peak_rss_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn num_cpus() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

async fn server_version(c: &tokio_postgres::Client) -> String {
    c.query_one("SHOW server_version", &[])
        .await
        .unwrap()
        .get(0)
}
