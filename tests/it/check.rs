//! `--check`: each check driven into its states, through the real binary.

use chrono::{Months, Utc};
use partwarden::period::Interval;
use serde_json::Value;

use crate::support::{TestDb, check_json, partwarden, path_str};

fn month(back_or_ahead: i32) -> String {
    let start = Interval::Monthly.floor(Utc::now());
    let t = if back_or_ahead >= 0 {
        start + Months::new(back_or_ahead as u32)
    } else {
        start - Months::new((-back_or_ahead) as u32)
    };
    format!("market_odds_history{}", Interval::Monthly.suffix(t))
}

/// A healthy database: bootstrapped and one pass run.
async fn healthy(db: &TestDb) -> std::path::PathBuf {
    let config = db.write_config("", "");
    let (code, out, err) = partwarden(&["--config", path_str(&config), "--bootstrap"], &[]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = partwarden(&["--config", path_str(&config), "--run-once"], &[]);
    assert_eq!(code, 0, "{out}{err}");
    config
}

fn status_of<'a>(report: &'a Value, id: &str) -> Vec<&'a str> {
    report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["id"] == id)
        .map(|c| c["status"].as_str().unwrap())
        .collect()
}

fn message_of(report: &Value, id: &str, table: &str) -> String {
    report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == id && c["table"] == table)
        .map(|c| c["message"].as_str().unwrap().to_string())
        .unwrap_or_default()
}

const H: &str = "public.market_odds_history";

#[tokio::test]
async fn a_healthy_database_is_ok() {
    let db = TestDb::new("check_ok").await;
    let config = healthy(&db).await;
    let (code, report) = check_json(&config);
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(report["status"], "ok");
    assert_eq!(report["version"], env!("CARGO_PKG_VERSION"));
    let ids: Vec<&str> = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap())
        .collect();
    for id in [
        "connection",
        "schema",
        "runway",
        "coverage",
        "routing",
        "default_partition",
        "indexes",
        "expiry",
        "maintenance",
    ] {
        assert!(ids.contains(&id), "{id} missing from {ids:?}");
    }
    assert!(message_of(&report, "runway", H).contains("writes fail from"));
    // Probes leave nothing behind.
    let c = db.client().await;
    let rows: i64 = c
        .query_one("SELECT count(*) FROM market_odds_history", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows, 0);

    // Text output: one line per check, then the summary; no colour off a terminal.
    let (code, out, _) = partwarden(&["--config", path_str(&config), "--check"], &[]);
    assert_eq!(code, 0);
    assert!(
        out.lines()
            .last()
            .unwrap()
            .starts_with("OK: 0 critical, 0 warning, 0 unknown"),
        "{out}"
    );
    assert!(out.lines().any(|l| l.starts_with("OK   routing")), "{out}");
    assert!(!out.contains('\x1b'));
}

#[tokio::test]
async fn missing_partitions_warn_then_go_critical() {
    let db = TestDb::new("check_runway").await;
    let config = healthy(&db).await;
    let c = db.client().await;
    c.batch_execute(&format!("DROP TABLE {}", month(3)))
        .await
        .unwrap();
    let (code, report) = check_json(&config);
    assert_eq!(code, 1, "{report:#}");
    assert_eq!(status_of(&report, "runway"), ["warning"]);
    assert!(
        message_of(&report, "runway", H).contains("2 of 3 periods ahead"),
        "{report:#}"
    );

    c.batch_execute(&format!("DROP TABLE {}", month(0)))
        .await
        .unwrap();
    let (code, report) = check_json(&config);
    assert_eq!(code, 2, "{report:#}");
    assert_eq!(status_of(&report, "runway"), ["critical"]);
    assert!(
        message_of(&report, "runway", H).contains("writes fail now"),
        "{report:#}"
    );

    // A pass repairs both.
    assert_eq!(
        partwarden(&["--config", path_str(&config), "--run-once"], &[]).0,
        0
    );
    assert_eq!(check_json(&config).0, 0);
}

#[tokio::test]
async fn a_default_partition_with_a_row_is_critical() {
    let db = TestDb::new("check_default").await;
    let config = healthy(&db).await;
    let c = db.client().await;
    c.batch_execute(
        "CREATE TABLE market_odds_history_default PARTITION OF market_odds_history DEFAULT;
         INSERT INTO market_odds_history (event_id, bookmaker_slug, betpawa_market_id, outcomes, captured_at)
         VALUES (1, 'betpawa', 'x', '[]', '2045-01-01 00:00:00+00')",
    )
    .await
    .unwrap();
    let (code, report) = check_json(&config);
    assert_eq!(code, 2, "{report:#}");
    assert_eq!(status_of(&report, "default_partition"), ["critical"]);
    // Routing past the last partition now goes to the DEFAULT partition, and says so.
    assert!(
        message_of(&report, "routing", H).contains("DEFAULT partition"),
        "{report:#}"
    );
    c.batch_execute("DELETE FROM market_odds_history_default")
        .await
        .unwrap();
    let (_, report) = check_json(&config);
    assert_eq!(status_of(&report, "default_partition"), ["ok"]);
}

#[tokio::test]
async fn broken_indexes_are_reported_then_repaired_by_a_pass() {
    let db = TestDb::new("check_indexes").await;
    let config = healthy(&db).await;
    let c = db.client().await;
    // A parent index built ON ONLY and never finished: every partition lacks it.
    c.batch_execute("CREATE INDEX idx_moh_line ON ONLY market_odds_history (line)")
        .await
        .unwrap();
    // A failed CREATE INDEX CONCURRENTLY leaves an INVALID index behind.
    c.batch_execute(
        "INSERT INTO market_odds_history (event_id, bookmaker_slug, betpawa_market_id, outcomes) VALUES (1, 'a', 'b', '[]'), (1, 'a', 'b', '[]')",
    )
    .await
    .unwrap();
    let failed = c
        .batch_execute(&format!(
            "CREATE UNIQUE INDEX CONCURRENTLY leftover_idx ON {} (event_id)",
            month(0)
        ))
        .await;
    assert!(failed.is_err());
    let (code, report) = check_json(&config);
    assert_eq!(code, 1, "{report:#}");
    let msg = message_of(&report, "indexes", H);
    assert!(
        msg.contains("idx_moh_line is missing on 4 partitions"),
        "{msg}"
    );
    assert!(msg.contains("leftover_idx"), "{msg}");

    let (code, out, err) = partwarden(&["--config", path_str(&config), "--run-once"], &[]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("index repairs 5"), "{out}");
    let (code, report) = check_json(&config);
    assert_eq!(code, 0, "{report:#}");
    let gone: bool = c
        .query_one("SELECT to_regclass('leftover_idx') IS NULL", &[])
        .await
        .unwrap()
        .get(0);
    assert!(gone);
    let valid: bool = c
        .query_one(
            "SELECT indisvalid FROM pg_index WHERE indexrelid = 'idx_moh_line'::regclass",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        valid,
        "the partitioned index became valid once every partition had it"
    );
}

#[tokio::test]
async fn a_missing_unique_key_is_critical() {
    let db = TestDb::new("check_unique").await;
    let config = healthy(&db).await;
    let c = db.client().await;
    c.batch_execute("DROP INDEX idx_moc_unique").await.unwrap();
    let (code, report) = check_json(&config);
    assert_eq!(code, 2, "{report:#}");
    assert!(
        message_of(&report, "indexes", "public.market_odds_current")
            .contains("idx_moc_unique is missing")
    );
    assert!(message_of(&report, "schema", "public.market_odds_current").contains("idx_moc_unique"));
}

#[tokio::test]
async fn a_pending_detach_is_reported() {
    let db = TestDb::new("check_pending").await;
    let config = healthy(&db).await;
    let c = db.client().await;
    let reader = db.client().await;
    reader
        .batch_execute("BEGIN; SELECT count(*) FROM market_odds_history")
        .await
        .unwrap();
    c.batch_execute("SET statement_timeout = '300ms'")
        .await
        .unwrap();
    let r = c
        .batch_execute(&format!(
            "ALTER TABLE market_odds_history DETACH PARTITION {} CONCURRENTLY",
            month(3)
        ))
        .await;
    assert!(r.is_err(), "interrupted by statement_timeout");
    reader.batch_execute("COMMIT").await.unwrap();
    let (code, report) = check_json(&config);
    assert!(
        message_of(&report, "expiry", H).contains("pending detach"),
        "{report:#}"
    );
    // A pending partition receives no rows: routing to it fails, which is critical.
    assert_eq!(code, 2, "{report:#}");
    assert!(
        message_of(&report, "routing", H).contains("is pending detach"),
        "{report:#}"
    );
    // Inserts for a pending partition's range fail: the runway ends where it starts.
    assert!(
        message_of(&report, "runway", H).contains("2 of 3 periods ahead"),
        "{report:#}"
    );
}

#[tokio::test]
async fn an_unreachable_database_is_unknown_in_text_and_json() {
    let db = TestDb::new("check_unreachable").await;
    let config = db.dir.path().join("config.toml");
    std::fs::write(&config, "[database]\nurl = \"postgresql://odds:s3cret@127.0.0.1:1/odds\"\nconnect_timeout = \"2s\"\n").unwrap();
    let (code, report) = check_json(&config);
    assert_eq!(code, 3);
    assert_eq!(report["status"], "unknown");
    assert_eq!(status_of(&report, "connection"), ["unknown"]);
    let (code, out, err) = partwarden(&["--config", path_str(&config), "--check"], &[]);
    assert_eq!(code, 3);
    assert!(
        out.contains("UNKNOWN") && !out.contains("s3cret") && !err.contains("s3cret"),
        "{out}{err}"
    );

    // An unreadable configuration is UNKNOWN too, still valid JSON.
    std::fs::write(&config, "[database]\nbogus = 1\n").unwrap();
    let (code, report) = check_json(&config);
    assert_eq!(code, 3);
    assert_eq!(status_of(&report, "configuration"), ["unknown"]);
}

#[tokio::test]
async fn a_database_never_bootstrapped_is_critical() {
    let db = TestDb::new("check_fresh").await;
    let config = db.write_config("", "");
    let (code, report) = check_json(&config);
    assert_eq!(code, 2, "{report:#}");
    assert!(
        report["checks"][1]["message"]
            .as_str()
            .unwrap()
            .contains("run partwarden --bootstrap")
    );
}
