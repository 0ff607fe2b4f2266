//! Issue "Any table, the truth about it", item 1: partitions and archives for any table the
//! planner accepts: generated columns, identity columns, column compression and statistics
//! targets carry over, so ATTACH succeeds, and archives of a table with a generated column
//! restore. Each test here failed on the code before its fix.

use std::path::{Path, PathBuf};

use chrono::{Datelike, Months, Utc};

use crate::support::{TestDb, partwarden, path_str};

/// A table with each kind of column that `LIKE` must carry: an identity, a STORED generated
/// column, lz4 compression and a statistics target.
const ANY_TABLE: &str = "
CREATE TABLE readings (
    id bigint GENERATED ALWAYS AS IDENTITY,
    taken_at timestamptz NOT NULL,
    note text COMPRESSION lz4,
    price numeric NOT NULL CHECK (price > 1),
    day date GENERATED ALWAYS AS ((taken_at AT TIME ZONE 'UTC')::date) STORED,
    PRIMARY KEY (id, taken_at)
) PARTITION BY RANGE (taken_at);
ALTER TABLE readings ALTER COLUMN note SET STATISTICS 500;
";

const TABLE: &str = "[[tables]]\nname = \"public.readings\"\npartition_key = \"taken_at\"\n\
                     interval = \"monthly\"\npremake = 2\nretention = \"6 months\"\n";

/// The start of the month `back` months before this one, as SQL text.
fn month_start(back: u32) -> String {
    let now = Utc::now();
    let first = now
        .date_naive()
        .with_day(1)
        .unwrap()
        .checked_sub_months(Months::new(back))
        .unwrap();
    format!("{first} 00:00:00+00")
}

async fn setup(test: &str, maintenance_extra: &str) -> (TestDb, PathBuf, tokio_postgres::Client) {
    let db = TestDb::new(test).await;
    let c = db.client().await;
    c.batch_execute(ANY_TABLE).await.unwrap();
    // What follows [maintenance] in the file is still that section: its extra keys, then the
    // table.
    let config = db.write_config("", &format!("{maintenance_extra}{TABLE}"));
    (db, config, c)
}

fn run(config: &Path, args: &[&str]) -> (i32, String, String) {
    let mut all = vec!["--config", path_str(config)];
    all.extend_from_slice(args);
    partwarden(&all, &[])
}

/// Defect 1: every premake ATTACH failed with 42804 `column "day" in child table must be a
/// generated column`. Now the partitions are made, inserts through the parent take the
/// identity and compute the generated column, and each partition has the parent's
/// compression and statistics target.
#[tokio::test]
async fn partitions_carry_generated_identity_compression_and_statistics() {
    let (_db, config, c) = setup("any_table_columns", "").await;
    let (code, out, err) = run(&config, &["--bootstrap"]);
    assert_eq!(code, 0, "{out}{err}");
    let parts: i64 = c
        .query_one(
            "SELECT count(*) FROM pg_inherits WHERE inhparent = 'readings'::regclass",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(parts, 3, "{out}{err}");
    let r = c
        .query_one(
            "INSERT INTO readings (taken_at, note, price) VALUES (now(), 'x', 2) RETURNING id, day, tableoid::regclass::text",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(r.get::<_, i64>(0), 1);
    assert_eq!(r.get::<_, chrono::NaiveDate>(1), Utc::now().date_naive());
    let part: String = r.get(2);
    let (compression, stats): (String, i32) = {
        let r = c
            .query_one(
                "SELECT attcompression::text, attstattarget::int4 FROM pg_attribute WHERE attrelid = $1::text::regclass AND attname = 'note'",
                &[&part],
            )
            .await
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!((compression.as_str(), stats), ("l", 500), "{part}");
}

/// An expired partition of a table with a generated column, archived (COPY, then Parquet),
/// dropped and restored. Before: the manifest listed `day`, which COPY leaves out; the COPY
/// archive's restore failed with 22P04 `missing data for column`, and every Parquet archive
/// failed ("a row has fewer fields than the table has columns"). Now both restore row for row,
/// `day` computed again.
#[tokio::test]
async fn a_table_with_a_generated_column_archives_and_restores() {
    for format in ["copy", "parquet"] {
        let (db, config, c) = setup(
            &format!("any_table_archive_{format}"),
            &format!("archive_format = \"{format}\"\n"),
        )
        .await;
        let (code, out, err) = run(&config, &["--bootstrap"]);
        assert_eq!(code, 0, "{out}{err}");
        let (lo, hi) = (month_start(8), month_start(7));
        c.batch_execute(&format!(
            "CREATE TABLE readings_old PARTITION OF readings FOR VALUES FROM ('{lo}') TO ('{hi}');
             INSERT INTO readings (taken_at, note, price)
               SELECT '{lo}'::timestamptz + g * interval '1 hour', 'n' || g, 1.5 + g FROM generate_series(0, 499) g;"
        ))
        .await
        .unwrap();
        let digest = "SELECT count(*), sum(id)::bigint, string_agg(day::text || note || price::text, ',' ORDER BY id) FROM readings WHERE taken_at < now() - interval '6 months'";
        let before: (i64, i64, String) = {
            let r = c.query_one(digest, &[]).await.unwrap();
            (r.get(0), r.get(1), r.get(2))
        };
        let (code, out, err) = run(&config, &["--run-once"]);
        assert_eq!(code, 0, "{format}: {out}{err}");
        assert!(
            !db.exists("readings_old").await,
            "{format}: expired: {out}{err}"
        );
        let manifest = db
            .dir
            .path()
            .join("archive/public.readings/public.readings_old.manifest.json");
        let m: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&manifest).unwrap()).unwrap();
        let names: Vec<&str> = m["columns"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["id", "taken_at", "note", "price"], "{format}");
        let (code, out, err) = run(&config, &["--restore", path_str(&manifest)]);
        assert_eq!(code, 0, "{format}: {out}{err}");
        let after: (i64, i64, String) = {
            let r = c.query_one(digest, &[]).await.unwrap();
            (r.get(0), r.get(1), r.get(2))
        };
        assert_eq!(after, before, "{format}");
    }
}

/// The `routing` check of `table` in a `--check --format json` report.
fn routing_of(report: &serde_json::Value, table: &str) -> serde_json::Value {
    report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == "routing" && c["table"] == table)
        .cloned()
        .unwrap_or_else(|| panic!("no routing check for {table}: {report:#}"))
}

/// Defect 2: routing probes cried wolf. On the application's `odds_snapshots` (foreign keys
/// to events, bookmakers and scrape_runs) every placeholder probe failed with 23503, and on a
/// table whose CHECKs the placeholders do not meet with 23514: `--check` was critical though
/// every row routes right. Now probes copy a real row with the key changed, and an error the
/// promised partition raises proves the row got there. Only "no partition" and a wrong
/// landing fail, and a CHECK partwarden itself left on the DEFAULT partition, which refuses
/// the application's writes of the current instant, is critical.
#[tokio::test]
async fn routing_probes_fail_only_when_routing_does() {
    let db = TestDb::new("any_table_routing").await;
    let c = db.client().await;
    c.batch_execute(include_str!("../fixtures/app_odds_snapshots.sql"))
        .await
        .unwrap();
    c.batch_execute(
        "CREATE TABLE quotes (
             bookmaker text NOT NULL CHECK (length(bookmaker) >= 3),
             price numeric NOT NULL CHECK (price > 1),
             quoted_at timestamptz NOT NULL
         ) PARTITION BY RANGE (quoted_at);",
    )
    .await
    .unwrap();
    let config = db.write_config("", "");
    let text = std::fs::read_to_string(&config).unwrap()
        + "[[tables]]\nname = \"public.odds_snapshots\"\npartition_key = \"captured_at\"\ninterval = \"daily\"\npremake = 2\n\
           [[tables]]\nname = \"public.quotes\"\npartition_key = \"quoted_at\"\ninterval = \"monthly\"\npremake = 2\n";
    std::fs::write(&config, text).unwrap();
    let (code, out, err) = partwarden(&["--config", path_str(&config), "--bootstrap"], &[]);
    assert_eq!(code, 0, "{out}{err}");
    // An empty odds_snapshots is probed with placeholders (FK refused by the partition);
    // with a row, the row is copied.
    let (_, report) = crate::support::check_json(&config);
    for t in ["public.odds_snapshots", "public.quotes"] {
        let r = routing_of(&report, t);
        assert_eq!(r["status"], "ok", "{r:#}");
    }
    c.batch_execute(
        "INSERT INTO odds_snapshots (event_id, bookmaker_id, scrape_run_id) VALUES (5, 2, 9);
         INSERT INTO quotes VALUES ('betpawa', 1.5, now());",
    )
    .await
    .unwrap();
    let (_, report) = crate::support::check_json(&config);
    for t in ["public.odds_snapshots", "public.quotes"] {
        let r = routing_of(&report, t);
        assert_eq!(r["status"], "ok", "{r:#}");
        assert!(r["details"]["copied_from"].is_string(), "{r:#}");
    }
    // A DEFAULT partition that takes the current instant and carries the CHECK an older
    // partwarden left: a write of now fails there, and routing says so.
    c.batch_execute(
        "DROP TABLE quotes;
         CREATE TABLE quotes (bookmaker text NOT NULL, price numeric NOT NULL, quoted_at timestamptz NOT NULL)
             PARTITION BY RANGE (quoted_at);
         CREATE TABLE quotes_default PARTITION OF quotes DEFAULT;
         INSERT INTO quotes VALUES ('betpawa', 2, now() - interval '1 day');
         ALTER TABLE quotes_default ADD CONSTRAINT partwarden_default_exclusion
             CHECK (quoted_at IS NULL OR quoted_at < now() - interval '1 hour' OR quoted_at >= now() + interval '1 day') NOT VALID;",
    )
    .await
    .unwrap();
    let (code, report) = crate::support::check_json(&config);
    assert_eq!(code, 2, "{report:#}");
    let r = routing_of(&report, "public.quotes");
    assert_eq!(r["status"], "critical", "{r:#}");
    assert!(
        r["message"]
            .as_str()
            .unwrap()
            .contains("partwarden_default_exclusion"),
        "{r:#}"
    );
}

/// The check of `id` for `table` in a report.
fn check_of(report: &serde_json::Value, id: &str, table: &str) -> Option<serde_json::Value> {
    report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == id && c["table"] == table)
        .cloned()
}

/// Defect 3: a partitioned table nobody configured (here one ending this month, and one whose
/// rows sit in its DEFAULT partition, as the application's `odds_snapshots`) did not appear
/// in `--check`. Now each is a warning with its runway, holes and DEFAULT rows and the
/// `[[tables]]` block that would manage it; `ignore_tables` and `watch_unmanaged` leave them
/// out.
#[tokio::test]
async fn tables_nobody_configured_are_watched() {
    let db = TestDb::new("any_table_unmanaged").await;
    let config = db.write_config("", "");
    let (code, out, err) = partwarden(&["--config", path_str(&config), "--bootstrap"], &[]);
    assert_eq!(code, 0, "{out}{err}");
    let c = db.client().await;
    let this = month_start(0);
    c.batch_execute(&format!(
        "CREATE TABLE side_log (at timestamptz NOT NULL, v int) PARTITION BY RANGE (at);
         CREATE TABLE side_log_a PARTITION OF side_log FOR VALUES FROM ('{this}') TO ('{this}'::timestamptz + interval '1 month');
         CREATE TABLE snaps (id bigserial, captured_at timestamptz NOT NULL) PARTITION BY RANGE (captured_at);
         CREATE TABLE snaps_default PARTITION OF snaps DEFAULT;
         INSERT INTO snaps (captured_at) VALUES (now());
         CREATE TABLE by_list (k text NOT NULL) PARTITION BY LIST (k);"
    ))
    .await
    .unwrap();
    let (_, report) = crate::support::check_json(&config);
    let side =
        check_of(&report, "unmanaged", "public.side_log").unwrap_or_else(|| panic!("{report:#}"));
    assert_eq!(side["status"], "warning", "{side:#}");
    let msg = side["message"].as_str().unwrap();
    assert!(
        msg.contains("not managed by partwarden: writes fail from"),
        "{msg}"
    );
    assert!(
        msg.contains("partition_key = \"at\"") && msg.contains("interval = \"monthly\""),
        "{msg}"
    );
    let snaps = check_of(&report, "unmanaged", "public.snaps").unwrap();
    assert_eq!(snaps["status"], "warning");
    assert!(
        snaps["message"]
            .as_str()
            .unwrap()
            .contains("DEFAULT partition holds rows"),
        "{snaps:#}"
    );
    assert_eq!(
        check_of(&report, "unmanaged", "public.by_list").unwrap()["status"],
        "ok"
    );
    // Ignored, then not watched at all.
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text.replace(
            "archive_dir = \"archive\"\n",
            "archive_dir = \"archive\"\nignore_tables = [\"public.snaps\"]\n",
        ),
    )
    .unwrap();
    let (_, report) = crate::support::check_json(&config);
    assert!(check_of(&report, "unmanaged", "public.snaps").is_none());
    assert!(check_of(&report, "unmanaged", "public.side_log").is_some());
    std::fs::write(
        &config,
        text.replace(
            "archive_dir = \"archive\"\n",
            "archive_dir = \"archive\"\nwatch_unmanaged = false\n",
        ),
    )
    .unwrap();
    let (_, report) = crate::support::check_json(&config);
    assert!(check_of(&report, "unmanaged", "public.side_log").is_none());
}

/// Items 4 and 5: the parent of a partitioned table with rows and no statistics (autovacuum
/// never analyzes a partitioned parent) is a warning in `--check`'s `planner` check, with the
/// partition count and the planning time of a query of the current period; a pass analyzes
/// it, and the check is ok.
#[tokio::test]
async fn a_pass_analyzes_the_parent_and_check_reports_planning() {
    let (db, config, c) = setup("any_table_planner", "").await;
    let (code, out, err) = run(&config, &["--bootstrap"]);
    assert_eq!(code, 0, "{out}{err}");
    c.batch_execute(
        "INSERT INTO readings (taken_at, note, price) SELECT now() - g * interval '1 minute', 'n', 2 FROM generate_series(1, 2000) g",
    )
    .await
    .unwrap();
    // Partitions' page counts as autovacuum would leave them (it vacuums partitions only).
    c.batch_execute("VACUUM readings").await.unwrap();
    let (_, report) = crate::support::check_json(&config);
    let p = check_of(&report, "planner", "public.readings").unwrap_or_else(|| panic!("{report:#}"));
    assert_eq!(p["status"], "warning", "{p:#}");
    assert!(
        p["message"]
            .as_str()
            .unwrap()
            .contains("never been analyzed"),
        "{p:#}"
    );
    assert!(p["details"]["planning_ms"].as_f64().is_some(), "{p:#}");
    assert_eq!(p["details"]["partitions"], 3);
    let (code, out, err) = run(&config, &["--run-once"]);
    assert_eq!(code, 0, "{out}{err}");
    let analyzed: bool = c
        .query_one(
            "SELECT last_analyze IS NOT NULL FROM pg_stat_all_tables WHERE relid = 'readings'::regclass",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(analyzed, "{out}{err}");
    let (_, report) = crate::support::check_json(&config);
    assert_eq!(
        check_of(&report, "planner", "public.readings").unwrap()["status"],
        "ok"
    );
    let _ = db;
}
