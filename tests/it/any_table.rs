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
    let config = db.write_config("", "");
    let text = std::fs::read_to_string(&config).unwrap().replace(
        "archive_dir = \"archive\"\n",
        &format!("archive_dir = \"archive\"\n{maintenance_extra}"),
    ) + TABLE;
    std::fs::write(&config, text).unwrap();
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
