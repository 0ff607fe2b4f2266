//! Benchmark: the odds write path against the naive path and the server-side ceiling.
//!
//! Realistic rows: 3 bookmakers, 20,000 events, 1X2 / over-under / handicap markets with lines,
//! 2-3 outcomes each. Two cycles: a fresh load, then a steady-state cycle where 20% of the
//! markets changed. For each cycle, on the same rows and from the same starting state:
//! 1. `write_batch` with batches of 1,000 and 5,000, and `OddsWriter::write_cycle` (the
//!    cycle's batches pipelined) with the same sizes; in the steady cycle the writer is the one
//!    that wrote the fresh cycle, as a scraper's is from its second cycle on;
//! 2. the naive path: one `INSERT ... ON CONFLICT` per market, one round trip each (measured on
//!    the first 20,000 markets, which is plenty for a rate);
//! 3. the server-side ceiling: the very same upsert and history statement
//!    (`partwarden.write_odds_packed`) run on the whole cycle's parameters, already loaded into
//!    an unlogged table, so no parameter crosses the wire; and the same for the statement before
//!    it (`partwarden.write_odds`, the JSON as `jsonb[]`). Ratios are taken against the faster
//!    of the two. It also runs the writer's own statement server-side, for the record: in the
//!    fresh cycle `partwarden.write_odds_new` (markets it never wrote, by plain `INSERT`), in
//!    the steady cycle `partwarden.write_odds_known` (the markets by row version).
//!
//! Within a run, the ceilings and the batched paths are each measured `--reps` times (default
//! 2), interleaved, and each takes its best repetition: the machine's slow stretches then cost
//! both sides of a ratio alike. Every repetition is printed.
//!
//! Run: `cargo run --release --example odds_write_bench -- --markets 200000` (starts its own
//! throwaway PostgreSQL, like the tests); `--runs 3` repeats the whole measurement;
//! `--no-naive` leaves out the two one-round-trip-per-market paths (slow).

mod common;
use common as pg;
#[allow(unused_imports)]
use common::Partwarden as _;

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use partwarden::odds::{self, MarketOdds};
use serde_json::json;

const NAIVE_ROWS: usize = 20_000;

/// A function of the write path, called on the fourteen parameters loaded into `bench_staging`
/// (see `load_staging`), with its counts.
macro_rules! staged {
    ($function:literal) => {
        concat!(
            "SELECT w.inserted, w.changed, w.unchanged, w.history_rows FROM bench_staging, partwarden.",
            $function,
            "(a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11, a12, a13, a14) AS w"
        )
    };
}

/// The ceiling: the very statement write_batch sends, run on its parameters already in the
/// server.
const CEILING: &str = staged!("write_odds_packed");

/// The writer's statement for the markets it knows, server-side.
const KNOWN: &str = staged!("write_odds_known");

/// The writer's statement for the markets it has no version of, server-side.
const NEW: &str = staged!("write_odds_new");

/// The same for the statement before 0008: `write_odds`, the JSON as jsonb[].
const PREVIOUS_CEILING: &str = "SELECT w.* FROM bench_previous_staging, \
     partwarden.write_odds(a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11, a12) AS w";

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let markets: usize = std::env::args()
        .skip_while(|a| a != "--markets")
        .nth(1)
        .map(|s| s.parse().expect("--markets takes a number"))
        .unwrap_or(200_000);
    let runs: usize = std::env::args()
        .skip_while(|a| a != "--runs")
        .nth(1)
        .map(|s| s.parse().expect("--runs takes a number"))
        .unwrap_or(1);
    let reps: usize = std::env::args()
        .skip_while(|a| a != "--reps")
        .nth(1)
        .map(|s| s.parse().expect("--reps takes a number"))
        .unwrap_or(2);
    let with_naive = !std::env::args().any(|a| a == "--no-naive");
    // Default durability: every commit is flushed, as in production. (The tests' server runs
    // with fsync off, which would flatter the naive path's one-commit-per-row.) Autovacuum is
    // off so that no worker started by one measurement's writes runs during the next one: the
    // benchmark vacuums and analyzes itself between measurements (see `reset`), and every timed
    // run starts right after a CHECKPOINT, so each side of a ratio pays the same full-page writes.
    let server = pg::durable_server_with("-c autovacuum=off");
    let db = pg::TestDb::on(&server, "bench_odds").await;
    let config = db.config();
    db.bootstrap(&config).await;
    let c = db.client().await;
    let t0 = DateTime::from_timestamp(Utc::now().timestamp() - 600, 0).unwrap();
    let fresh = generate(markets, t0, 0.0, 1);
    let steady = generate(markets, t0 + chrono::Duration::minutes(5), 0.2, 2);
    println!(
        "odds write benchmark: {markets} markets (3 bookmakers, 20,000 events), {} cores, PostgreSQL {}, fsync and synchronous_commit on",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        c.query_one("SHOW server_version", &[])
            .await
            .unwrap()
            .get::<_, String>(0)
    );

    let mut results = Vec::new();
    for (cycle, rows, setup) in [
        ("fresh", &fresh, None),
        ("steady (20% changed)", &steady, Some(&fresh)),
    ] {
        println!();
        println!("== {cycle} cycle");
        let line = |label: &str, n: usize, d: Duration, extra: String| {
            let rate = n as f64 / d.as_secs_f64();
            println!(
                "{label:<44} {n:>8} rows {:>8.2} s {:>10.0} rows/s  {extra}",
                d.as_secs_f64(),
                rate
            );
            rate
        };
        let mut ceilings = Vec::new();
        let mut batch_rates = Vec::new();
        let (prepared, _) = odds::prepare(rows);
        for run in 1..=runs {
            if runs > 1 {
                println!("-- run {run} of {runs}");
            }
            // Every quantity of the run is measured `reps` times, interleaved (ceilings, then
            // paths, then again), and the best of its repetitions is taken: a slow stretch of
            // this shared machine then costs both sides of a ratio alike. Every repetition is
            // printed.
            let mut best = Best::default();
            for rep in 1..=reps {
                if reps > 1 {
                    println!("   repetition {rep} of {reps}");
                }
                // Ceilings: each statement over its parameters loaded into an unlogged table.
                reset(&c, setup).await;
                load_staging(&c, &odds::Packed::new(&prepared)).await;
                let (d, done) = server_side(&c, CEILING).await;
                best.packed_ceiling = best.packed_ceiling.max(line(
                    "server-side: write_odds_packed (ceiling)",
                    rows.len(),
                    d,
                    counts(&done),
                ));
                reset(&c, setup).await;
                load_previous_staging(&c, &prepared).await;
                let (d, done) = server_side(&c, PREVIOUS_CEILING).await;
                best.previous_ceiling = best.previous_ceiling.max(line(
                    "server-side: write_odds, jsonb[] (ceiling)",
                    rows.len(),
                    d,
                    counts(&done),
                ));
                for (i, size) in [1000, 5000].into_iter().enumerate() {
                    reset(&c, setup).await;
                    checkpoint(&c).await;
                    let t = Instant::now();
                    let mut total = odds::WriteSummary::default();
                    for chunk in rows.chunks(size) {
                        total += odds::write_batch(&c, chunk).await.unwrap();
                    }
                    best.write_batch[i] = best.write_batch[i].max(line(
                        &format!("write_batch, batches of {size}"),
                        rows.len(),
                        t.elapsed(),
                        counts(&total),
                    ));
                }
                if setup.is_none() {
                    // What no path that sends JSON avoids and the ceiling does not pay: the
                    // server parsing the JSON text into jsonb.
                    let d = json_parse(&c, &prepared).await;
                    println!(
                        "{:<44} {:>8} rows {:>8.2} s   (the JSON of 5,000-market batches)",
                        "server-side: parsing the JSON alone",
                        rows.len(),
                        d.as_secs_f64()
                    );
                    best.parse = Some(best.parse.map_or(d, |b: Duration| b.min(d)));
                }
                // OddsWriter::write_cycle: in the steady cycle, the writer that wrote the fresh
                // one, as a scraper's is from its second cycle on.
                for (i, size) in [1000, 5000].into_iter().enumerate() {
                    let mut writer = odds::OddsWriter::new();
                    reset_by(&c, setup, &mut writer, size).await;
                    let before = writer.stats();
                    checkpoint(&c).await;
                    let t = Instant::now();
                    let total = writer.write_cycle(&c, rows, size).await.unwrap();
                    let d = t.elapsed();
                    let stats = writer.stats();
                    best.write_cycle[i] = best.write_cycle[i].max(line(
                        &format!("OddsWriter::write_cycle, batches of {size}"),
                        rows.len(),
                        d,
                        format!(
                            "{}; sent without JSON {}, resent {}, upserted as existing {}",
                            counts(&total),
                            stats.sent_as_versions - before.sent_as_versions,
                            stats.resent - before.resent,
                            stats.new_existed - before.new_existed
                        ),
                    ));
                }
            }
            // The target is measured against the faster of the two ceilings.
            let ceiling = best.packed_ceiling.max(best.previous_ceiling);
            let path = best.write_cycle[0].max(best.write_cycle[1]);
            let best_path = path.max(best.write_batch[0]).max(best.write_batch[1]);
            println!(
                "/ ceiling (the faster one), best of {reps}, batches of 1000 / 5000: write_batch {:.2} / {:.2}, write_cycle {:.2} / {:.2}; best {:.2} (target >= 0.8)",
                best.write_batch[0] / ceiling,
                best.write_batch[1] / ceiling,
                best.write_cycle[0] / ceiling,
                best.write_cycle[1] / ceiling,
                best_path / ceiling
            );
            if let Some(parse) = best.parse {
                // A path that sends the JSON as text and runs the ceiling's statement costs at
                // best the ceiling's work plus the parse.
                let bound = rows.len() as f64 / (rows.len() as f64 / ceiling + parse.as_secs_f64());
                println!(
                    "the ceiling's statement plus the parse (best {:.2} s): {:.2} of the ceiling; write_cycle / that: {:.2}",
                    parse.as_secs_f64(),
                    bound / ceiling,
                    path / bound
                );
            }
            // For the record: the writer's own statement run server-side. In the fresh cycle
            // every market is new to it (write_odds_new); in the steady cycle it knows every
            // market (write_odds_known).
            let mut writer = odds::OddsWriter::new();
            reset_by(&c, setup, &mut writer, 5000).await;
            let (known, unknown) = writer.statements_for(&prepared);
            let (packed, sql) = if setup.is_some() {
                assert!(unknown.is_empty(), "the writer knows every market");
                (known, KNOWN)
            } else {
                assert!(known.is_empty(), "the writer knows no market");
                (unknown, NEW)
            };
            load_staging(&c, &packed).await;
            let (d, done) = server_side(&c, sql).await;
            let own = line(
                "server-side: the OddsWriter's statement",
                rows.len(),
                d,
                counts(&done),
            );
            println!(
                "write_cycle / its own statement server-side: {:.2}",
                path / own
            );
            ceilings.push(ceiling);
            batch_rates.push(best_path);
        }
        if !with_naive {
            continue;
        }
        reset(&c, setup).await;
        checkpoint(&c).await;
        let naive_rows = &rows[..rows.len().min(NAIVE_ROWS)];
        let d = naive(&c, naive_rows).await;
        let naive = line(
            "naive: one INSERT ... ON CONFLICT per market",
            naive_rows.len(),
            d,
            String::new(),
        );
        // For reference: the library called once per market, i.e. the same work as write_batch
        // (upsert and change-only history) in one round trip per market.
        reset(&c, setup).await;
        checkpoint(&c).await;
        let t = Instant::now();
        for r in naive_rows {
            odds::write_batch(&c, std::slice::from_ref(r))
                .await
                .unwrap();
        }
        line(
            "(reference) write_batch with one market per call",
            naive_rows.len(),
            t.elapsed(),
            String::new(),
        );
        let (best, ceiling) = (batch_rates[runs - 1], ceilings[runs - 1]);
        println!(
            "best path / ceiling = {:.2} (target >= 0.8)   best path / naive = {:.1}x (target >= 20x)",
            best / ceiling,
            best / naive
        );
        results.push((cycle, best, ceiling, naive));
    }
    println!();
    if !with_naive {
        println!("(--no-naive: the naive paths and the targets against them were not measured)");
        return;
    }
    let ok = results
        .iter()
        .all(|(_, best, ceiling, naive)| best / ceiling >= 0.8 && best / naive >= 20.0);
    println!(
        "targets met in both cycles (best batch size): {}",
        if ok { "yes" } else { "NO" }
    );
}

/// A run's best rates (rows/s), over its repetitions.
#[derive(Default)]
struct Best {
    packed_ceiling: f64,
    previous_ceiling: f64,
    /// Batches of 1,000 and 5,000.
    write_batch: [f64; 2],
    write_cycle: [f64; 2],
    /// The fresh cycle's JSON parse, server-side.
    parse: Option<Duration>,
}

/// How long the server takes to parse `rows`' outcomes and market_groups JSON as
/// `write_odds_packed` receives it (one array of each per batch of 5,000), timed inside the
/// server: the text is already there, only the text-to-jsonb conversions are timed.
async fn json_parse(c: &tokio_postgres::Client, rows: &[&MarketOdds]) -> Duration {
    c.batch_execute(
        "CREATE OR REPLACE FUNCTION pg_temp.parse_seconds(texts text[]) RETURNS float8 \
         LANGUAGE plpgsql AS $$ \
         DECLARE t text; j jsonb; started timestamptz := clock_timestamp(); \
         BEGIN FOREACH t IN ARRAY texts LOOP j := t::jsonb; END LOOP; \
         RETURN extract(epoch FROM clock_timestamp() - started); END $$",
    )
    .await
    .unwrap();
    let mut texts = Vec::new();
    for chunk in rows.chunks(5000) {
        let outcomes: Vec<&serde_json::Value> = chunk.iter().map(|r| &r.outcomes).collect();
        let groups: Vec<Vec<&serde_json::Value>> = chunk
            .iter()
            .map(|r| r.market_groups.iter().collect())
            .collect();
        texts.push(serde_json::to_string(&outcomes).unwrap());
        texts.push(serde_json::to_string(&groups).unwrap());
    }
    let seconds: f64 = c
        .query_one("SELECT pg_temp.parse_seconds($1)", &[&texts])
        .await
        .unwrap()
        .get(0);
    Duration::from_secs_f64(seconds)
}

/// Runs a server-side statement (`CEILING`, `PREVIOUS_CEILING`, `KNOWN` or `NEW`) right after a
/// checkpoint: how long it took and what it wrote.
async fn server_side(c: &tokio_postgres::Client, sql: &str) -> (Duration, odds::WriteSummary) {
    checkpoint(c).await;
    let t = Instant::now();
    let r = c.query_one(sql, &[]).await.unwrap();
    let d = t.elapsed();
    let n = |i: usize| r.get::<_, i64>(i) as u64;
    let done = odds::WriteSummary {
        inserted: n(0),
        changed: n(1),
        unchanged: n(2),
        history_rows: n(3),
        ..odds::WriteSummary::default()
    };
    (d, done)
}

/// Empty tables, then (for the steady cycle) the fresh cycle loaded server-side.
async fn reset(c: &tokio_postgres::Client, setup: Option<&Vec<MarketOdds>>) {
    c.batch_execute("TRUNCATE market_odds_current, market_odds_history")
        .await
        .unwrap();
    c.batch_execute("VACUUM ANALYZE market_odds_current")
        .await
        .unwrap();
    if let Some(rows) = setup {
        let (rows, _) = odds::prepare(rows);
        load_staging(c, &odds::Packed::new(&rows)).await;
        c.query_one(CEILING, &[]).await.unwrap();
        c.batch_execute("VACUUM ANALYZE market_odds_current")
            .await
            .unwrap();
    }
}

/// A checkpoint before a timed run: the run then writes a full page image of every page it
/// touches first, whichever side of the ratio it is.
async fn checkpoint(c: &tokio_postgres::Client) {
    c.batch_execute("CHECKPOINT").await.unwrap();
}

async fn load_staging(c: &tokio_postgres::Client, packed: &odds::Packed<'_>) {
    c.batch_execute("DROP TABLE IF EXISTS bench_staging")
        .await
        .unwrap();
    c.query_typed(
        "CREATE UNLOGGED TABLE bench_staging AS SELECT $1::int4[] AS a1, $2::text[] AS a2, $3::text[] AS a3, \
         $4::text[] AS a4, $5::float8[] AS a5, $6::text[] AS a6, $7::float8[] AS a7, $8::float8[] AS a8, \
         $9::jsonb AS a9, $10::jsonb AS a10, $11::timestamptz[] AS a11, $12::timestamptz[] AS a12, \
         $13::xid[] AS a13, $14::tid[] AS a14",
        &packed.params(),
    )
    .await
    .unwrap();
}

/// `write_odds`'s parameters (the JSON as jsonb[]) in an unlogged table.
async fn load_previous_staging(c: &tokio_postgres::Client, rows: &[&MarketOdds]) {
    c.batch_execute("DROP TABLE IF EXISTS bench_previous_staging")
        .await
        .unwrap();
    let event_id: Vec<i32> = rows.iter().map(|r| r.event_id).collect();
    let slug: Vec<&str> = rows.iter().map(|r| r.bookmaker_slug.as_str()).collect();
    let market: Vec<&str> = rows.iter().map(|r| r.betpawa_market_id.as_str()).collect();
    let name: Vec<&str> = rows
        .iter()
        .map(|r| r.betpawa_market_name.as_str())
        .collect();
    let line: Vec<Option<f64>> = rows.iter().map(|r| r.line).collect();
    let htype: Vec<Option<&str>> = rows.iter().map(|r| r.handicap_type.as_deref()).collect();
    let hhome: Vec<Option<f64>> = rows.iter().map(|r| r.handicap_home).collect();
    let haway: Vec<Option<f64>> = rows.iter().map(|r| r.handicap_away).collect();
    let outcomes: Vec<&serde_json::Value> = rows.iter().map(|r| &r.outcomes).collect();
    let groups: Vec<Option<&serde_json::Value>> =
        rows.iter().map(|r| r.market_groups.as_ref()).collect();
    let unavailable: Vec<Option<DateTime<Utc>>> = rows.iter().map(|r| r.unavailable_at).collect();
    let scraped: Vec<DateTime<Utc>> = rows.iter().map(|r| r.scraped_at).collect();
    c.execute(
        "CREATE UNLOGGED TABLE bench_previous_staging AS SELECT $1::int4[] AS a1, $2::text[] AS a2, \
         $3::text[] AS a3, $4::text[] AS a4, $5::float8[] AS a5, $6::text[] AS a6, $7::float8[] AS a7, \
         $8::float8[] AS a8, $9::jsonb[] AS a9, $10::jsonb[] AS a10, $11::timestamptz[] AS a11, \
         $12::timestamptz[] AS a12",
        &[
            &event_id, &slug, &market, &name, &line, &htype, &hhome, &haway, &outcomes, &groups,
            &unavailable, &scraped,
        ],
    )
    .await
    .unwrap();
}

fn counts(s: &odds::WriteSummary) -> String {
    format!(
        "inserted {} changed {} unchanged {} history {}",
        s.inserted, s.changed, s.unchanged, s.history_rows
    )
}

/// Empty tables, then (for the steady cycle) the fresh cycle written by `writer` in batches of
/// `size`, so that it knows what it wrote, as a scraper does from its second cycle on.
async fn reset_by(
    c: &tokio_postgres::Client,
    setup: Option<&Vec<MarketOdds>>,
    writer: &mut odds::OddsWriter,
    size: usize,
) {
    reset(c, None).await;
    if let Some(rows) = setup {
        for chunk in rows.chunks(size) {
            writer.write(c, chunk).await.unwrap();
        }
        c.batch_execute("VACUUM ANALYZE market_odds_current")
            .await
            .unwrap();
    }
}

/// One statement per market, one round trip each, as the application does today.
async fn naive(c: &tokio_postgres::Client, rows: &[MarketOdds]) -> Duration {
    let st = c
        .prepare(
            "INSERT INTO market_odds_current (event_id, bookmaker_slug, betpawa_market_id, betpawa_market_name, line, \
               handicap_type, handicap_home, handicap_away, outcomes, market_groups, unavailable_at, last_updated_at, last_confirmed_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $12) \
             ON CONFLICT (event_id, bookmaker_slug, betpawa_market_id, (coalesce(line, 0::double precision))) DO UPDATE SET \
               betpawa_market_name = EXCLUDED.betpawa_market_name, outcomes = EXCLUDED.outcomes, \
               market_groups = EXCLUDED.market_groups, unavailable_at = EXCLUDED.unavailable_at, \
               last_updated_at = CASE WHEN market_odds_current.outcomes = EXCLUDED.outcomes \
                                      THEN market_odds_current.last_updated_at ELSE EXCLUDED.last_updated_at END, \
               last_confirmed_at = EXCLUDED.last_confirmed_at",
        )
        .await
        .unwrap();
    let t = Instant::now();
    for r in rows {
        c.execute(
            &st,
            &[
                &r.event_id,
                &r.bookmaker_slug,
                &r.betpawa_market_id,
                &r.betpawa_market_name,
                &r.line,
                &r.handicap_type,
                &r.handicap_home,
                &r.handicap_away,
                &r.outcomes,
                &r.market_groups,
                &r.unavailable_at,
                &r.scraped_at,
            ],
        )
        .await
        .unwrap();
    }
    t.elapsed()
}

/// `n` markets: for each event and bookmaker, 1X2, over/under 1.5/2.5/3.5 and Asian handicap
/// -1/0/+1, until `n`. `changed` of them (deterministically picked) get new odds.
fn generate(n: usize, at: DateTime<Utc>, changed: f64, variant: u64) -> Vec<MarketOdds> {
    let bookmakers = ["betpawa", "sportybet", "bet9ja"];
    let kinds: [(&str, Option<f64>); 7] = [
        ("1x2", None),
        ("ou", Some(1.5)),
        ("ou", Some(2.5)),
        ("ou", Some(3.5)),
        ("ah", Some(-1.0)),
        ("ah", Some(0.0)),
        ("ah", Some(1.0)),
    ];
    let mut v = Vec::with_capacity(n);
    let mut i = 0usize;
    'outer: for kind in kinds {
        for event in 0..20_000i32 {
            for b in bookmakers {
                if v.len() == n {
                    break 'outer;
                }
                let h = (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
                let is_changed = (h % 1000) < (changed * 1000.0) as u64;
                let bump = if is_changed {
                    variant as f64 * 0.05
                } else {
                    0.05
                };
                let odds =
                    |base: f64| ((base + bump + (h % 7) as f64 * 0.01) * 100.0).round() / 100.0;
                let outcomes = match kind.0 {
                    "1x2" => json!([
                        {"name": "1", "odds": odds(1.8), "is_active": true},
                        {"name": "X", "odds": odds(3.3), "is_active": true},
                        {"name": "2", "odds": odds(4.1), "is_active": true}
                    ]),
                    "ou" => json!([
                        {"name": "Over", "odds": odds(1.9), "is_active": true},
                        {"name": "Under", "odds": odds(1.85), "is_active": true}
                    ]),
                    _ => json!([
                        {"name": "1", "odds": odds(1.95), "is_active": true},
                        {"name": "2", "odds": odds(1.8), "is_active": true}
                    ]),
                };
                v.push(MarketOdds {
                    event_id: 100_000 + event,
                    bookmaker_slug: b.into(),
                    betpawa_market_id: kind.0.into(),
                    betpawa_market_name: match kind.0 {
                        "1x2" => "1X2".into(),
                        "ou" => "Over/Under".into(),
                        _ => "Asian Handicap".into(),
                    },
                    line: kind.1,
                    handicap_type: (kind.0 == "ah").then(|| "asian".to_string()),
                    handicap_home: kind.1.filter(|_| kind.0 == "ah"),
                    handicap_away: kind.1.filter(|_| kind.0 == "ah").map(|l| -l),
                    outcomes,
                    market_groups: Some(json!(["main"])),
                    unavailable_at: None,
                    scraped_at: at,
                });
                i += 1;
            }
        }
    }
    v
}
