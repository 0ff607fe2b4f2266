//! Parquet archives (`maintenance.archive_format = "parquet"`): lossless round trips through
//! `--restore`, from local disk and from the object store, and the files read where they lie
//! by DuckDB.

use std::path::Path;

use partwarden_testkit::s3_server;

use crate::lifecycle::{history, ledger, month_name, rows_hash};
use crate::support::{TestDb, partwarden, path_str};

/// Rows with every awkward value the odds tables' column types can hold: NULLs, text with
/// tabs, newlines, backslashes and non-ASCII, JSON with escapes, doubles at their extremes
/// (NaN, infinities, subnormal, negative zero), timestamps with microseconds.
async fn awkward_rows(db: &TestDb, back: u32) {
    let c = db.client().await;
    let lo = crate::lifecycle::month_start(back);
    c.execute(
        r#"INSERT INTO market_odds_history (event_id, bookmaker_slug, betpawa_market_id, line, outcomes, captured_at) VALUES
           (-2147483648, E'tab\there', E'nl\nand\\back', 'NaN', '[{"name": "ü\u00e9\"q\" \\ \t", "odds": 1.0000001}]', $1::timestamptz + interval '1.000001 second'),
           (2147483647, 'é€🎲', 'm', 'Infinity', '{"a": null, "b": [1e300, -0.0]}', $1::timestamptz + interval '2 seconds'),
           (0, 'x', 'y', '-Infinity', '[]', $1::timestamptz + interval '3.999999 seconds'),
           (1, 'x', 'y', 4.9e-324, '{}', $1::timestamptz + interval '4 seconds'),
           (2, 'x', 'y', '-0', '"s"', $1::timestamptz + interval '5 seconds'),
           (3, 'x', 'y', 0.1, 'null', $1::timestamptz + interval '6 seconds'),
           (4, 'x', 'y', NULL, '[{"odds": 2.5}]', $1::timestamptz + interval '7 seconds')"#,
        &[&lo],
    )
    .await
    .unwrap();
}

fn set_maintenance(config: &Path, keys: &str) {
    let text = std::fs::read_to_string(config).unwrap().replace(
        "archive_dir = \"archive\"",
        &format!("archive_dir = \"archive\"\n{keys}"),
    );
    std::fs::write(config, text).unwrap();
}

/// A Parquet archive on local disk: verified, dropped, restored row for row (the ordered hash
/// of every column, and the restore itself re-reads the table against the content digest).
#[tokio::test]
async fn parquet_archives_restore_row_for_row() {
    let db = TestDb::new("parquet_local").await;
    let config = history(&db, &[8, 2], "", "").await;
    set_maintenance(&config, "archive_format = \"parquet\"");
    awkward_rows(&db, 8).await;
    let before = rows_hash(&db, &month_name(8)).await;

    let (code, out, err) = partwarden(&["--config", path_str(&config), "--run-once"], &[]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(!db.exists(&month_name(8)).await);
    assert_eq!(
        ledger(&db, &month_name(8)).await,
        ["detach", "archive", "verify", "drop"]
    );
    let dir = db.dir.path().join("archive/public.market_odds_history");
    let data = dir.join(format!("public.{}.parquet", month_name(8)));
    let manifest = dir.join(format!("public.{}.manifest.json", month_name(8)));
    assert!(data.exists(), "{}", data.display());
    let m: serde_json::Value = serde_json::from_slice(&std::fs::read(&manifest).unwrap()).unwrap();
    assert_eq!(m["data_format"], "parquet");
    assert!(
        m["typed_digest"]
            .as_str()
            .unwrap()
            .starts_with("sha256-sum-typed:")
    );

    let (code, out, err) = partwarden(
        &[
            "--config",
            path_str(&config),
            "--restore",
            path_str(&manifest),
        ],
        &[],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(rows_hash(&db, &month_name(8)).await, before);
}

/// A Parquet file whose bytes were changed (and its manifest's size and SHA-256 with it, as
/// someone who rewrote both would) does not restore: its typed digest no longer matches.
#[tokio::test]
async fn a_rewritten_parquet_file_does_not_restore() {
    let db = TestDb::new("parquet_rewritten").await;
    let config = history(&db, &[8, 2], "", "").await;
    set_maintenance(&config, "archive_format = \"parquet\"");
    let (code, out, err) = partwarden(&["--config", path_str(&config), "--run-once"], &[]);
    assert_eq!(code, 0, "{out}{err}");
    let dir = db.dir.path().join("archive/public.market_odds_history");
    let manifest = dir.join(format!("public.{}.manifest.json", month_name(8)));
    // Another archive's file under this manifest: a valid Parquet file of the same columns.
    let other = TestDb::new("parquet_rewritten_other").await;
    let other_config = history(&other, &[7, 2], "", "").await;
    set_maintenance(&other_config, "archive_format = \"parquet\"");
    let (code, ..) = partwarden(&["--config", path_str(&other_config), "--run-once"], &[]);
    assert_eq!(code, 0);
    let foreign = other
        .dir
        .path()
        .join("archive/public.market_odds_history")
        .join(format!("public.{}.parquet", month_name(7)));
    let bytes = std::fs::read(&foreign).unwrap();
    let mut m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&manifest).unwrap()).unwrap();
    let data = dir.join(m["file"].as_str().unwrap());
    std::fs::remove_file(&data).unwrap();
    std::fs::write(&data, &bytes).unwrap();
    use sha2::Digest;
    m["sha256"] = hex::encode(sha2::Sha256::digest(&bytes)).into();
    m["compressed_bytes"] = bytes.len().into();
    std::fs::write(&manifest, serde_json::to_vec(&m).unwrap()).unwrap();
    let (code, out, err) = partwarden(
        &[
            "--config",
            path_str(&config),
            "--restore",
            path_str(&manifest),
        ],
        &[],
    );
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("digest"), "{err}");
    assert!(!db.exists(&month_name(8)).await, "nothing restored");
}

/// Parquet to the object store, and back with `--restore s3://...`.
#[tokio::test]
async fn parquet_archives_in_the_store_restore_row_for_row() {
    let s3 = s3_server();
    s3.create_bucket("pw-parquet");
    let db = TestDb::new("parquet_store").await;
    let config = history(&db, &[8, 2], "", "").await;
    let text = std::fs::read_to_string(&config).unwrap().replace(
        "archive_dir = \"archive\"",
        "archive_dir = \"s3://pw-parquet/odds\"\nspool_dir = \"spool\"\narchive_format = \"parquet\"",
    );
    std::fs::write(&config, text).unwrap();
    awkward_rows(&db, 8).await;
    let before = rows_hash(&db, &month_name(8)).await;
    let env = s3.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (code, out, err) = partwarden(&["--config", path_str(&config), "--run-once"], &env);
    assert_eq!(code, 0, "{out}{err}");
    assert!(!db.exists(&month_name(8)).await);
    let stem = format!("odds/public.market_odds_history/public.{}", month_name(8));
    assert_eq!(
        s3.keys("pw-parquet", "odds/"),
        [format!("{stem}.manifest.json"), format!("{stem}.parquet")]
    );
    let url = format!("s3://pw-parquet/{stem}.manifest.json");
    let (code, out, err) = partwarden(&["--config", path_str(&config), "--restore", &url], &env);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(rows_hash(&db, &month_name(8)).await, before);
}

/// DuckDB reads the archived months where they lie and gets the same rows and aggregates as
/// the partitions had: count, first and last `captured_at`, and the sum of the first outcome's
/// odds.
#[tokio::test]
async fn duckdb_reads_the_parquet_archives_where_they_lie() {
    let db = TestDb::new("parquet_duckdb").await;
    let config = history(&db, &[9, 8, 2], "", "").await;
    set_maintenance(&config, "archive_format = \"parquet\"");
    let c = db.client().await;
    let expected: String = c
        .query_one(
            &format!(
                "SELECT format('%s|%s|%s|%s', count(*), \
                    to_char(min(captured_at) AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US'), \
                    to_char(max(captured_at) AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US'), \
                    round(sum((outcomes->0->>'odds')::numeric), 6)) \
                 FROM (SELECT * FROM {} UNION ALL SELECT * FROM {}) t",
                month_name(9),
                month_name(8)
            ),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let (code, out, err) = partwarden(&["--config", path_str(&config), "--run-once"], &[]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(!db.exists(&month_name(9)).await && !db.exists(&month_name(8)).await);
    let glob = db
        .dir
        .path()
        .join("archive/public.market_odds_history/*.parquet");
    // The README's query, over every archived month of the table.
    let script = format!(
        "import duckdb\n\
         r = duckdb.sql(\"\"\"SELECT count(*), strftime(min(captured_at) AT TIME ZONE 'UTC', '%Y-%m-%d %H:%M:%S.%f'), \
            strftime(max(captured_at) AT TIME ZONE 'UTC', '%Y-%m-%d %H:%M:%S.%f'), \
            round(sum(CAST(json_extract_string(outcomes, '$[0].odds') AS DECIMAL(18,6))), 6) \
            FROM read_parquet('{}')\"\"\").fetchone()\n\
         print('|'.join(str(x) for x in r))\n",
        glob.display()
    );
    let run = std::process::Command::new("python3")
        .args(["-c", &script])
        .output()
        .expect("python3 runs");
    let got = String::from_utf8_lossy(&run.stdout).trim().to_string();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert_eq!(got, expected);
}
