//! `--bootstrap`: fresh install, idempotence, adoption, refusals, partitions, locks.

use chrono::{DateTime, Utc};
use partwarden::bootstrap::{self, Options};
use partwarden::catalog::{self, RelName};
use partwarden::migrate::MIGRATIONS;
use partwarden::period::{Interval, Period};

use crate::support::{
    Partwarden as _, TestDb, bootstrap_cli, catalog_dump, check_json, partwarden, path_str,
};

fn ids(ms: &[partwarden::migrate::Migration]) -> String {
    ms.iter().map(|m| m.id()).collect::<Vec<_>>().join(", ")
}

/// `N applied [0001_..., 0002_..., ...]`: every migration this binary knows.
fn all_applied() -> String {
    format!("{} applied [{}]", MIGRATIONS.len(), ids(MIGRATIONS))
}

fn month_name(t: DateTime<Utc>) -> String {
    format!("market_odds_history{}", Interval::Monthly.suffix(t))
}

async fn run(
    _db: &TestDb,
    config: &partwarden::config::Config,
    now: DateTime<Utc>,
) -> bootstrap::Summary {
    let mut out = Vec::new();
    bootstrap::run(
        config,
        Options {
            dry_run: false,
            now: Some(now),
        },
        &mut out,
    )
    .await
    .expect("bootstrap runs")
}

async fn partition_bounds(db: &TestDb) -> Vec<(String, String)> {
    let c = db.client().await;
    c.query(
        "SELECT c.relname::text, pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i \
         JOIN pg_class c ON c.oid = i.inhrelid \
         WHERE i.inhparent = 'public.market_odds_history'::regclass ORDER BY 1",
        &[],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect()
}

#[tokio::test]
async fn fresh_bootstrap_creates_schema_and_partitions() {
    let db = TestDb::new("fresh").await;
    let config = db.write_config("", "");
    let (code, stdout, stderr) = partwarden(&["--config", path_str(&config), "--bootstrap"], &[]);
    assert_eq!(code, 0, "stdout: {stdout}\nstderr: {stderr}");
    assert!(stdout.contains(&all_applied()), "{stdout}");
    assert!(stdout.contains("4 partitions created"), "{stdout}");

    // Shape, checked against the catalog field by field (`--check`'s schema check compares
    // every column, key and index of both tables with the expected shape).
    let c = db.client().await;
    let (_, report) = check_json(&config);
    let schema: Vec<_> = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["id"] == "schema" && c["table"].is_string())
        .collect();
    assert_eq!(schema.len(), 2, "{report:#}");
    for c in schema {
        assert_eq!(c["status"], "ok", "{c:#}");
    }
    // Exact types as the application declares them.
    let types: Vec<String> = c
        .query(
            "SELECT attname || ' ' || format_type(atttypid, atttypmod) FROM pg_attribute \
             WHERE attrelid = 'market_odds_current'::regclass AND attnum > 0 ORDER BY attnum",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(types[2], "bookmaker_slug character varying(20)");
    assert_eq!(types[5], "line double precision");
    let unique: String = c
        .query_one("SELECT pg_get_indexdef('idx_moc_unique'::regclass)", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        unique,
        "CREATE UNIQUE INDEX idx_moc_unique ON public.market_odds_current USING btree (event_id, bookmaker_slug, betpawa_market_id, COALESCE(line, (0)::double precision))"
    );
    let pk: String = c
        .query_one(
            "SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conname = 'pk_market_odds_current'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(pk, "PRIMARY KEY (id)");

    // Partitions: current month and three after, bounds in UTC.
    let now = Utc::now();
    let mut start = Interval::Monthly.floor(now);
    let mut expected = Vec::new();
    for _ in 0..4 {
        let end = Interval::Monthly.next(start);
        expected.push((
            month_name(start),
            format!(
                "FOR VALUES FROM ('{}') TO ('{}')",
                start.format("%Y-%m-%d %H:%M:%S+00"),
                end.format("%Y-%m-%d %H:%M:%S+00")
            ),
        ));
        start = end;
    }
    assert_eq!(partition_bounds(&db).await, expected);

    // Every parent index is attached on every partition, and the partitioned indexes are valid.
    let invalid: i64 = c
        .query_one(
            "SELECT count(*) FROM pg_index WHERE NOT indisvalid AND indrelid IN \
             (SELECT inhrelid FROM pg_inherits WHERE inhparent = 'market_odds_history'::regclass \
              UNION SELECT 'market_odds_history'::regclass)",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(invalid, 0);
    let child_indexes: i64 = c
        .query_one(
            "SELECT count(*) FROM pg_inherits i JOIN pg_index x ON x.indexrelid = i.inhrelid \
             WHERE i.inhparent IN ('idx_moh_event_market_time'::regclass, 'idx_moh_bookmaker_market'::regclass, \
                                   'market_odds_history_pkey'::regclass)",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(child_indexes, 12, "3 indexes on each of 4 partitions");
    // No leftover bound CHECK on the partitions.
    let checks: i64 = c
        .query_one(
            "SELECT count(*) FROM pg_constraint WHERE conname = 'partwarden_bound_check'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(checks, 0);

    // A row for now routes; the bookkeeping recorded the migration with its checksum.
    c.execute(
        "INSERT INTO market_odds_history (event_id, bookmaker_slug, betpawa_market_id, outcomes) \
         VALUES (1, 'betpawa', '1x2', '[]')",
        &[],
    )
    .await
    .unwrap();
    let (version, adopted, checksum): (i32, bool, String) = {
        let r = c
            .query_one(
                "SELECT version, adopted, checksum FROM partwarden.schema_migrations WHERE version = 1",
                &[],
            )
            .await
            .unwrap();
        (r.get(0), r.get(1), r.get(2))
    };
    assert_eq!((version, adopted), (1, false));
    assert_eq!(checksum, partwarden::migrate::MIGRATIONS[0].checksum());
}

#[tokio::test]
async fn second_bootstrap_is_a_noop_that_says_so() {
    let db = TestDb::new("idempotent").await;
    let config = db.write_config("", "");
    let (code, _, stderr) = partwarden(&["--config", path_str(&config), "--bootstrap"], &[]);
    assert_eq!(code, 0, "{stderr}");
    let c = db.client().await;
    let before = catalog_dump(&c).await;
    let (code, stdout, stderr) = partwarden(&["--config", path_str(&config), "--bootstrap"], &[]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains(&format!(
            "migrations: up to date ({} already applied), nothing to do",
            MIGRATIONS.len()
        )),
        "{stdout}"
    );
    assert!(stdout.contains("no partition needed"), "{stdout}");
    assert_eq!(catalog_dump(&c).await, before);
}

/// What the application's Alembic revision n8o7p0q1r4s5 runs, in SQLAlchemy's spelling.
pub const ALEMBIC_DDL: &str = "
CREATE TABLE market_odds_current (
    id BIGSERIAL NOT NULL,
    event_id INTEGER NOT NULL,
    bookmaker_slug VARCHAR(20) NOT NULL,
    betpawa_market_id VARCHAR(50) NOT NULL,
    betpawa_market_name VARCHAR(255) NOT NULL,
    line FLOAT,
    handicap_type VARCHAR(50),
    handicap_home FLOAT,
    handicap_away FLOAT,
    outcomes JSONB NOT NULL,
    market_groups JSONB,
    unavailable_at TIMESTAMP WITH TIME ZONE,
    last_updated_at TIMESTAMP WITH TIME ZONE DEFAULT now() NOT NULL,
    last_confirmed_at TIMESTAMP WITH TIME ZONE DEFAULT now() NOT NULL,
    CONSTRAINT pk_market_odds_current PRIMARY KEY (id)
);
CREATE UNIQUE INDEX idx_moc_unique ON market_odds_current (event_id, bookmaker_slug, betpawa_market_id, COALESCE(line, 0));
CREATE INDEX idx_moc_event ON market_odds_current (event_id);
CREATE INDEX idx_moc_bookmaker ON market_odds_current (bookmaker_slug);
CREATE INDEX idx_moc_event_bookmaker ON market_odds_current (event_id, bookmaker_slug);
CREATE TABLE market_odds_history (
    id BIGSERIAL NOT NULL,
    event_id INTEGER NOT NULL,
    bookmaker_slug VARCHAR(20) NOT NULL,
    betpawa_market_id VARCHAR(50) NOT NULL,
    line FLOAT,
    outcomes JSONB NOT NULL,
    captured_at TIMESTAMP WITH TIME ZONE DEFAULT now() NOT NULL,
    PRIMARY KEY (id, captured_at)
) PARTITION BY RANGE (captured_at);
CREATE INDEX idx_moh_event_market_time ON market_odds_history (event_id, betpawa_market_id, captured_at DESC);
CREATE INDEX idx_moh_bookmaker_market ON market_odds_history (bookmaker_slug, betpawa_market_id);
";

async fn alembic_database(db: &TestDb, months: &[DateTime<Utc>]) {
    let c = db.client().await;
    c.batch_execute(ALEMBIC_DDL).await.unwrap();
    for m in months {
        let p = Period::containing(Interval::Monthly, *m);
        c.batch_execute(&format!(
            "CREATE TABLE {} PARTITION OF market_odds_history FOR VALUES FROM ('{}') TO ('{}');\
             INSERT INTO market_odds_history (event_id, bookmaker_slug, betpawa_market_id, outcomes, captured_at) \
             SELECT g, 'betpawa', '1x2', '[]', '{}'::timestamptz + g * interval '1 minute' FROM generate_series(1, 100) g",
            month_name(p.start),
            p.start.format("%Y-%m-%d"),
            p.end.format("%Y-%m-%d"),
            p.start.to_rfc3339()
        ))
        .await
        .unwrap();
    }
}

#[tokio::test]
async fn adopts_an_alembic_created_database() {
    let db = TestDb::new("adopt").await;
    let now = Utc::now();
    let m = |k: u32| Interval::Monthly.floor(now) - chrono::Months::new(k);
    // The application made partitions three months ago and this month, but not in between.
    alembic_database(&db, &[m(3), m(0)]).await;
    let c = db.client().await;
    let rows_before: i64 = c
        .query_one("SELECT count(*) FROM market_odds_history", &[])
        .await
        .unwrap()
        .get(0);

    let config = db.write_config("", "");
    let (code, stdout, stderr) = partwarden(&["--config", path_str(&config), "--bootstrap"], &[]);
    assert_eq!(code, 0, "stdout: {stdout}\nstderr: {stderr}");
    assert!(
        stdout.contains(&format!(
            "{} applied [{}], 1 adopted [0001_odds_schema]",
            MIGRATIONS.len() - 1,
            ids(&MIGRATIONS[1..])
        )),
        "{stdout}"
    );
    // Two gap months filled, three premade.
    assert!(stdout.contains("5 partitions created"), "{stdout}");
    let adopted: bool = c
        .query_one(
            "SELECT adopted FROM partwarden.schema_migrations WHERE version = 1",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(adopted);
    let rows_after: i64 = c
        .query_one("SELECT count(*) FROM market_odds_history", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows_after, rows_before);
    let names: Vec<String> = partition_bounds(&db)
        .await
        .into_iter()
        .map(|p| p.0)
        .collect();
    let expected: Vec<String> = (0..=6)
        .map(|k| month_name(m(3) + chrono::Months::new(k)))
        .collect();
    assert_eq!(names, expected);
}

#[tokio::test]
async fn refuses_a_table_of_another_shape_and_changes_nothing() {
    let db = TestDb::new("mismatch").await;
    let c = db.client().await;
    let ddl = ALEMBIC_DDL
        .replace("    line FLOAT,\n    handicap_type", "    line REAL,\n    handicap_type")
        .replace(
            "CREATE UNIQUE INDEX idx_moc_unique ON market_odds_current (event_id, bookmaker_slug, betpawa_market_id, COALESCE(line, 0));",
            "CREATE UNIQUE INDEX idx_moc_unique ON market_odds_current (event_id, bookmaker_slug, betpawa_market_id, line);",
        )
        .replace("CREATE INDEX idx_moh_bookmaker_market ON market_odds_history (bookmaker_slug, betpawa_market_id);", "");
    c.batch_execute(&ddl).await.unwrap();
    let before = catalog_dump(&c).await;
    let config = db.write_config("", "");
    let (code, stdout, stderr) = partwarden(&["--config", path_str(&config), "--bootstrap"], &[]);
    assert_eq!(code, 1, "stdout: {stdout}\nstderr: {stderr}");
    for expected in [
        "public.market_odds_current.line: type is real, expected double precision",
        "public.market_odds_current: index idx_moc_unique is USING btree (event_id, bookmaker_slug, betpawa_market_id, line), expected USING btree (event_id, bookmaker_slug, betpawa_market_id, COALESCE(line, (0)::double precision))",
        "public.market_odds_history: index idx_moh_bookmaker_market is missing",
        "nothing was changed",
    ] {
        assert!(
            stderr.contains(expected),
            "missing {expected:?} in {stderr}"
        );
    }
    assert_eq!(
        catalog_dump(&c).await,
        before,
        "nothing changed, not even the partwarden schema"
    );
}

#[tokio::test]
async fn refuses_an_edited_migration() {
    let db = TestDb::new("edited").await;
    let config = db.write_config("", "");
    bootstrap_cli(&config);
    let c = db.client().await;
    // What an edited 0001 file looks like from the database's side: the checksums differ.
    c.execute(
        "UPDATE partwarden.schema_migrations SET checksum = repeat('0', 64)",
        &[],
    )
    .await
    .unwrap();
    let (code, _, stderr) = partwarden(&["--config", path_str(&config), "--bootstrap"], &[]);
    assert_eq!(code, 1);
    assert!(
        stderr.contains("migration 0001_odds_schema was edited after it was applied"),
        "{stderr}"
    );
}

#[tokio::test]
async fn dry_run_prints_every_statement_and_changes_nothing() {
    let db = TestDb::new("dry_run").await;
    let c = db.client().await;
    let before = catalog_dump(&c).await;
    let config = db.write_config("", "");
    let (code, stdout, stderr) = partwarden(
        &[
            "--config",
            path_str(&config),
            "--bootstrap",
            "--dry-run",
            "--now",
            "2027-01-15T00:00:00Z",
        ],
        &[],
    );
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(catalog_dump(&c).await, before);
    assert!(
        stdout.contains("CREATE TABLE public.market_odds_current"),
        "{stdout}"
    );
    assert!(stdout.contains("SET LOCAL lock_timeout = '200ms';"));
    assert!(stdout.contains(
        "ALTER TABLE \"public\".\"market_odds_history\" ATTACH PARTITION \"public\".\"market_odds_history_2027_04\" FOR VALUES FROM ('2027-04-01 00:00:00+00') TO ('2027-05-01 00:00:00+00')"
    ));
    assert!(stdout.contains("4 partitions would be created"), "{stdout}");
    // The migration comes before the partitions.
    assert!(
        stdout
            .find("CREATE TABLE public.market_odds_history")
            .unwrap()
            < stdout.find("ATTACH PARTITION").unwrap()
    );
}

#[tokio::test]
async fn moves_rows_out_of_a_default_partition() {
    let db = TestDb::new("default_part").await;
    let c = db.client().await;
    c.batch_execute(ALEMBIC_DDL).await.unwrap();
    let now: DateTime<Utc> = "2026-11-25T12:00:00Z".parse().unwrap();
    c.batch_execute(
        "CREATE TABLE market_odds_history_default PARTITION OF market_odds_history DEFAULT;
         INSERT INTO market_odds_history (event_id, bookmaker_slug, betpawa_market_id, outcomes, captured_at)
         SELECT g, 'betpawa', '1x2', '[]', timestamptz '2026-11-30 23:59:59.999999+00' - g * interval '1 hour'
         FROM generate_series(0, 49) g;
         INSERT INTO market_odds_history (event_id, bookmaker_slug, betpawa_market_id, outcomes, captured_at)
         VALUES (7, 'betpawa', '1x2', '[]', '2026-12-01 00:00:00+00'), (8, 'betpawa', '1x2', '[]', '2031-01-01 00:00:00+00');",
    )
    .await
    .unwrap();
    let summary = run(&db, &db.config(), now).await;
    assert!(summary.ok(), "{}", summary.to_text());
    let count = |rel: &'static str| {
        let c = &c;
        async move {
            c.query_one(&format!("SELECT count(*) FROM {rel}"), &[])
                .await
                .unwrap()
                .get::<_, i64>(0)
        }
    };
    // The DEFAULT partition is drained whole (src/drain.rs): the period being written is
    // made like any other, with its rows copied in and swapped in at once.
    assert_eq!(count("market_odds_history_2026_11").await, 50);
    assert_eq!(count("market_odds_history_2026_12").await, 1);
    assert_eq!(
        count("ONLY market_odds_history_default").await,
        1,
        "the row outside every period stays"
    );
    assert_eq!(count("market_odds_history").await, 52);
}

#[tokio::test]
async fn lock_timeouts_are_retried_then_given_up_without_leftovers() {
    let db = TestDb::new("locked").await;
    let config = db.config();
    let now: DateTime<Utc> = "2026-11-25T12:00:00Z".parse().unwrap();
    // Migrations only, then a session that holds a lock ATTACH needs.
    let mut first = db.config();
    first.tables[0].premake = 1;
    let s = run(&db, &first, now).await;
    assert!(s.ok());
    let blocker = db.client().await;
    blocker
        .batch_execute(
            "SET application_name = 'long_report'; BEGIN; LOCK TABLE market_odds_history IN SHARE UPDATE EXCLUSIVE MODE",
        )
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let summary = run(&db, &config, now).await;
    let elapsed = started.elapsed();
    let err = summary.tables[0].error.clone().expect("the table failed");
    assert!(
        err.contains("gave up after") && err.contains("long_report"),
        "{err}"
    );
    assert!(
        elapsed < std::time::Duration::from_secs(10),
        "bounded by lock_retry_for: {elapsed:?}"
    );
    // Nothing half made: no standalone table named like a partition was left behind.
    let c = db.client().await;
    let strays: i64 = c
        .query_one(
            "SELECT count(*) FROM pg_class WHERE relname LIKE 'market_odds_history_20%' AND NOT relispartition AND relkind = 'r'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(strays, 0);
    blocker.batch_execute("COMMIT").await.unwrap();
    let summary = run(&db, &config, now).await;
    assert!(summary.ok(), "{}", summary.to_text());
    assert_eq!(summary.tables[0].created.len(), 2);
}

#[tokio::test]
async fn concurrent_bootstraps_do_not_race() {
    let db = TestDb::new("concurrent").await;
    let config = db.write_config("", "");
    let p = path_str(&config).to_string();
    let a = std::thread::spawn({
        let p = p.clone();
        move || partwarden(&["--config", &p, "--bootstrap"], &[])
    });
    let b = std::thread::spawn(move || partwarden(&["--config", &p, "--bootstrap"], &[]));
    let (a, b) = (a.join().unwrap(), b.join().unwrap());
    assert_eq!((a.0, b.0), (0, 0), "{a:?}\n{b:?}");
    let outputs = format!("{}{}", a.1, b.1);
    assert_eq!(outputs.matches(&all_applied()).count(), 1, "{outputs}");
    assert_eq!(outputs.matches("nothing to do").count(), 1, "{outputs}");
    let c = db.client().await;
    let n: i64 = c
        .query_one("SELECT count(*) FROM pg_inherits", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 4 + 4 * 3, "4 partitions, and their 12 attached indexes");
}

#[tokio::test]
async fn intervals_weekly_and_daily_fill_gaps() {
    let db = TestDb::new("intervals").await;
    let c = db.client().await;
    c.batch_execute(ALEMBIC_DDL).await.unwrap();
    c.batch_execute(
        "CREATE TABLE public.ticks (id bigint, at timestamptz NOT NULL) PARTITION BY RANGE (at);
         CREATE TABLE public.ticks_2026_11_20 PARTITION OF public.ticks FOR VALUES FROM ('2026-11-20 00:00:00+00') TO ('2026-11-21 00:00:00+00');
         CREATE TABLE public.weekly (id bigint, at timestamptz NOT NULL) PARTITION BY RANGE (at);
         CREATE TABLE public.weekly_2026_w45 PARTITION OF public.weekly FOR VALUES FROM ('2026-11-02 00:00:00+00') TO ('2026-11-09 00:00:00+00');",
    )
    .await
    .unwrap();
    let config = db.config_with(
        "",
        "[[tables]]\nname = \"public.ticks\"\npartition_key = \"at\"\ninterval = \"daily\"\npremake = 2\n\n\
         [[tables]]\nname = \"public.weekly\"\npartition_key = \"at\"\ninterval = \"weekly\"\npremake = 1\n",
    );
    let now: DateTime<Utc> = "2026-11-25T12:00:00Z".parse().unwrap();
    let s = run(&db, &config, now).await;
    assert!(s.ok(), "{}", s.to_text());
    assert_eq!(
        s.tables[0].created.len(),
        7,
        "Nov 21..25, then 26 and 27: {:?}",
        s.tables[0].created
    );
    assert_eq!(s.tables[0].created[0], "public.ticks_2026_11_21");
    assert_eq!(
        s.tables[1].created,
        [
            "public.weekly_2026_w46",
            "public.weekly_2026_w47",
            "public.weekly_2026_w48",
            "public.weekly_2026_w49"
        ]
    );
    let snap = catalog::snapshot(
        &c,
        &RelName {
            schema: "public".into(),
            name: "weekly".into(),
        },
    )
    .await
    .unwrap();
    let last = snap.partitions.last().unwrap();
    assert_eq!(
        last.upper.unwrap(),
        "2026-12-07T00:00:00Z".parse::<DateTime<Utc>>().unwrap()
    );
    // Idempotent.
    let s = run(&db, &config, now).await;
    assert!(s.tables.iter().all(|t| t.created.is_empty()));
}
