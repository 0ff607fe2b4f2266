//! Issue "Partitions planned from the catalog's truth": partitions made by the application's
//! Alembic migration in `Africa/Lagos` (bare dates read at +01), beside partwarden's own, with
//! the real binary and a real PostgreSQL: no instant of the window is left without a partition.

use chrono::{DateTime, Duration, Months, NaiveDate, TimeZone, Utc};
use serde_json::Value;

use crate::bootstrap::ALEMBIC_DDL;
use crate::support::{TestDb, check_json, partwarden, path_str};

/// The first day of the month `offset` months from now's, as a local date.
fn month_date(offset: i32) -> NaiveDate {
    let today = Utc::now().date_naive();
    let first = NaiveDate::from_ymd_opt(
        chrono::Datelike::year(&today),
        chrono::Datelike::month(&today),
        1,
    )
    .unwrap();
    if offset >= 0 {
        first + Months::new(offset as u32)
    } else {
        first - Months::new(offset.unsigned_abs())
    }
}

/// The application's schema with partitions made as its migration makes them, in a session at
/// `Africa/Lagos`: months -3, -1 (so -2 is a hole), the current one and the next.
async fn lagos_database(db: &TestDb) {
    let c = db.client().await;
    c.batch_execute(ALEMBIC_DDL).await.unwrap();
    c.batch_execute("SET TimeZone = 'Africa/Lagos'")
        .await
        .unwrap();
    for offset in [-3, -1, 0, 1] {
        let (lo, hi) = (month_date(offset), month_date(offset + 1));
        c.batch_execute(&format!(
            "CREATE TABLE market_odds_history_{} PARTITION OF market_odds_history FOR VALUES FROM ('{lo}') TO ('{hi}')",
            lo.format("%Y_%m")
        ))
        .await
        .unwrap();
    }
}

/// Every bound of every partition of the history table, in UTC.
async fn bounds(db: &TestDb) -> Vec<DateTime<Utc>> {
    let c = db.client().await;
    let rows = c
        .query(
            "SELECT (regexp_match(pg_get_expr(c.relpartbound, c.oid), 'FROM \\(''([^'']+)''\\) TO \\(''([^'']+)''\\)'))[1:2] \
             FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
             WHERE i.inhparent = 'market_odds_history'::regclass",
            &[],
        )
        .await
        .unwrap();
    let mut out = Vec::new();
    for r in rows {
        let pair: Vec<String> = r.get(0);
        for b in pair {
            let t: DateTime<Utc> = c
                .query_one("SELECT $1::text::timestamptz", &[&b])
                .await
                .unwrap()
                .get(0);
            out.push(t);
        }
    }
    out.sort();
    out.dedup();
    out
}

/// Inserts one row at each instant, each in a savepoint of a transaction that is rolled back;
/// returns the instants that no partition took.
async fn refused(db: &TestDb, instants: &[DateTime<Utc>]) -> Vec<DateTime<Utc>> {
    let mut c = db.client().await;
    let tx = c.transaction().await.unwrap();
    let mut out = Vec::new();
    for t in instants {
        tx.batch_execute("SAVEPOINT p").await.unwrap();
        let r = tx
            .execute(
                "INSERT INTO market_odds_history (event_id, bookmaker_slug, betpawa_market_id, outcomes, captured_at) \
                 VALUES (1, 'betpawa', 'm', '[]', $1)",
                &[t],
            )
            .await;
        match r {
            Ok(_) => tx.batch_execute("RELEASE SAVEPOINT p").await.unwrap(),
            Err(e) => {
                assert_eq!(e.code().map(|c| c.code()), Some("23514"), "{e}");
                tx.batch_execute("ROLLBACK TO SAVEPOINT p").await.unwrap();
                out.push(*t);
            }
        }
    }
    tx.rollback().await.unwrap();
    out
}

fn check_of<'a>(report: &'a Value, id: &str) -> &'a Value {
    report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == id)
        .unwrap()
}

/// Probes every 15 minutes from 3 hours before to 3 hours after every partition bound inside
/// the window, and every 6 hours across the whole window.
async fn probe_window(db: &TestDb) -> (usize, Vec<DateTime<Utc>>) {
    let b = bounds(db).await;
    let (first, last) = (b[0], *b.last().unwrap());
    let mut instants = Vec::new();
    for edge in &b {
        let mut t = *edge - Duration::hours(3);
        while t <= *edge + Duration::hours(3) {
            if t >= first && t < last {
                instants.push(t);
            }
            t += Duration::minutes(15);
        }
    }
    let mut t = first;
    while t < last {
        instants.push(t);
        t += Duration::hours(6);
    }
    instants.push(last - Duration::microseconds(1));
    instants.sort();
    instants.dedup();
    let n = instants.len();
    (n, refused(db, &instants).await)
}

/// The Lagos case in a table configured in UTC: before the fix, `--bootstrap` left one-hour
/// holes at each edge between a Lagos-made and a UTC-made partition (one in the future, at the
/// end of the operator's last partition, where `--check` said "writes fail from ...T23:00:00Z"
/// and `--run-once` created nothing), and the whole month before a Lagos-made partition with no
/// partition at all.
#[tokio::test]
async fn lagos_made_partitions_in_a_utc_table_leave_no_hole() {
    let db = TestDb::new("lagos_utc").await;
    lagos_database(&db).await;
    let config = db.write_config("", "");
    let (code, out, err) = partwarden(&["--config", path_str(&config), "--bootstrap"], &[]);
    assert_eq!(code, 0, "{out}{err}");
    let (probed, holes) = probe_window(&db).await;
    assert!(probed > 300, "{probed}");
    eprintln!(
        "probed {probed} instants around {} bounds",
        bounds(&db).await.len()
    );
    assert!(
        holes.is_empty(),
        "{} of {probed} instants refused: {holes:?}\n{out}",
        holes.len()
    );
    // A pass has nothing left to do, and --check sees no gap and a full runway.
    let (code, out, err) = partwarden(&["--config", path_str(&config), "--run-once"], &[]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("created 0"), "{out}");
    let (_, report) = check_json(&config);
    let coverage = check_of(&report, "coverage");
    assert_eq!(
        coverage["details"]["gaps"],
        serde_json::json!([]),
        "{coverage}"
    );
    assert_eq!(check_of(&report, "runway")["status"], "ok", "{report:#}");
    // The Lagos-made partitions are misaligned in UTC: said, but not a gap.
    assert!(
        coverage["message"]
            .as_str()
            .unwrap()
            .contains("not aligned"),
        "{coverage}"
    );
    // The first partition partwarden made after the operator's last starts at its bound.
    let next_lagos_end = Utc
        .from_local_datetime(&month_date(2).and_hms_opt(0, 0, 0).unwrap())
        .unwrap()
        - Duration::hours(1);
    let b = bounds(&db).await;
    assert!(b.contains(&next_lagos_end), "{b:?}");
}

/// The same partitions in a table configured with `time_zone = "Africa/Lagos"`: they are
/// aligned, the hole month gets a whole Lagos month, and `--check` calls the coverage clean.
#[tokio::test]
async fn lagos_made_partitions_in_a_lagos_table_are_aligned() {
    let db = TestDb::new("lagos_lagos").await;
    lagos_database(&db).await;
    let config = db.write_config(
        "",
        "[[tables]]\nname = \"public.market_odds_history\"\ntime_zone = \"Africa/Lagos\"\n",
    );
    let (code, out, err) = partwarden(&["--config", path_str(&config), "--bootstrap"], &[]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(!out.contains("_from_"), "no clipped partition: {out}");
    let (probed, holes) = probe_window(&db).await;
    assert!(
        holes.is_empty(),
        "{} of {probed} refused: {holes:?}",
        holes.len()
    );
    let (_, report) = check_json(&config);
    assert_eq!(check_of(&report, "coverage")["status"], "ok", "{report:#}");
    assert_eq!(check_of(&report, "runway")["status"], "ok", "{report:#}");
}

/// An unknown zone is a configuration error: exit 78, one line naming the key.
#[test]
fn an_unknown_time_zone_is_a_configuration_error() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        "[[tables]]\nname = \"public.market_odds_history\"\ntime_zone = \"Mars/Olympus\"\n",
    )
    .unwrap();
    let (code, out, err) = partwarden(&["--config", path_str(&config), "--run-once"], &[]);
    assert_eq!(code, 78, "{out}{err}");
    assert!(
        err.contains("tables[0].time_zone") && err.contains("Mars/Olympus"),
        "{err}"
    );
}

/// `pg_dump --schema-only` of `db`, less partwarden's schemas and the partitions, with
/// comments, `SET`s and blank lines left out.
fn schema_dump(db: &TestDb) -> String {
    let out = std::process::Command::new("pg_dump")
        .args([
            "--schema-only",
            "--no-owner",
            "--no-privileges",
            "--exclude-schema=partwarden",
            "--exclude-schema=partwarden_archive",
            "--exclude-table=public.market_odds_history_2*",
            "--exclude-table=public.market_odds_history_default",
            "-d",
            &db.url,
        ])
        .output()
        .expect("pg_dump (Debian's postgresql-client) runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter(|l| {
            !l.is_empty()
                && !l.starts_with("--")
                && !l.starts_with("SET ")
                && !l.starts_with("SELECT pg_catalog.set_config")
                // pg_dump's per-run random token
                && !l.starts_with("\\restrict")
                && !l.starts_with("\\unrestrict")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Issue "Partitions planned from the catalog's truth", item 5: a fresh bootstrap creates
/// exactly what the application's migration creates (the history table's primary key was
/// named `pk_market_odds_history`, the application's is `market_odds_history_pkey`), and an
/// adopted database keeps its names.
#[tokio::test]
async fn a_fresh_bootstrap_is_the_applications_schema_name_for_name() {
    let fresh = TestDb::new("schema_fresh").await;
    let config = fresh.write_config("", "");
    let (code, out, err) = partwarden(&["--config", path_str(&config), "--bootstrap"], &[]);
    assert_eq!(code, 0, "{out}{err}");
    let app = TestDb::new("schema_app").await;
    app.client().await.batch_execute(ALEMBIC_DDL).await.unwrap();
    let config = app.write_config("", "");
    let (code, out, err) = partwarden(&["--config", path_str(&config), "--bootstrap"], &[]);
    assert_eq!(code, 0, "{out}{err}");
    let (a, b) = (schema_dump(&fresh), schema_dump(&app));
    if a != b {
        let only = |x: &str, y: &str| {
            x.lines()
                .filter(|l| !y.lines().any(|m| m == *l))
                .collect::<Vec<_>>()
                .join("\n")
        };
        panic!(
            "fresh bootstrap only:\n{}\n\napplication only:\n{}",
            only(&a, &b),
            only(&b, &a)
        );
    }
    // Bootstrap prints no NOTICE lines (they are not news to an operator), first or again.
    assert!(!err.contains("NOTICE"), "{err}");
    let config = fresh.write_config("", "");
    let (code, out, err) = partwarden(&["--config", path_str(&config), "--bootstrap"], &[]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(!err.contains("NOTICE"), "{err}");
}
