//! Issue "Take over the tables the application really has": a table whose whole history lives
//! in its DEFAULT partition (the application's `odds_snapshots`), drained into period
//! partitions while the application inserts, updates and deletes the rows being moved. Each
//! defect of the issue has its test here, seen failing on the code before the drain.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::support::{Server, TestDb, partwarden, path_str, private_server};

/// The application's schema, as its Alembic migrations make it: `odds_snapshots` partitioned
/// by `captured_at` with a DEFAULT partition and no other, foreign keys to three tables, the
/// application's indexes (BRIN on the key included). `confirmations` is the test's own column:
/// each confirming UPDATE adds one, so that a lost update shows in the sum.
const APP_SCHEMA: &str = include_str!("../fixtures/app_odds_snapshots.sql");

/// `[[tables]]` for `odds_snapshots` as the application keeps it: daily, 14 days.
const TABLE: &str = "[[tables]]\nname = \"public.odds_snapshots\"\npartition_key = \"captured_at\"\n\
                     interval = \"daily\"\npremake = 7\nretention = \"14 days\"\n";

/// A database on a server of its own with the application's schema and `rows` snapshots
/// spread evenly over `[now - days_back, now - 1 minute]`, all in the DEFAULT partition, and
/// a configuration for it (`maintenance_extra` added to `[maintenance]`).
async fn app_database(
    test: &str,
    rows: i64,
    days_back: i64,
    maintenance_extra: &str,
) -> (Server, TestDb, PathBuf, tokio_postgres::Client) {
    app_database_with(test, "", rows, days_back, maintenance_extra).await
}

/// As [`app_database`], running `first` (more rows) before the history is inserted.
async fn app_database_with(
    test: &str,
    first: &str,
    rows: i64,
    days_back: i64,
    maintenance_extra: &str,
) -> (Server, TestDb, PathBuf, tokio_postgres::Client) {
    let server = private_server();
    let db = TestDb::on(&server, test).await;
    let c = db.client().await;
    c.batch_execute(APP_SCHEMA).await.unwrap();
    c.batch_execute(first).await.unwrap();
    c.execute(
        "INSERT INTO odds_snapshots (event_id, bookmaker_id, captured_at, scrape_run_id) \
         SELECT g % 1000, g % 10, now() - interval '1 minute' - (g * ($2::float8 * 86400 / $1)) * interval '1 second', g % 1000 \
         FROM generate_series(1::bigint, $1) g",
        &[&rows, &(days_back as f64)],
    )
    .await
    .unwrap();
    c.batch_execute("ANALYZE odds_snapshots_default")
        .await
        .unwrap();
    // What follows [maintenance] in the file is still that section: its extra keys, then the
    // table.
    let config = db.write_config("", &format!("{maintenance_extra}{TABLE}"));
    (server, db, config, c)
}

/// `--bootstrap` with a configuration naming no table of the application's (partwarden's own
/// schema only), so that the drain under test is the one of the pass that follows.
fn bootstrap_schema_only(config: &Path) {
    let text = std::fs::read_to_string(config).unwrap().replace(TABLE, "");
    let path = config.with_file_name("bootstrap.toml");
    std::fs::write(&path, text).unwrap();
    let (code, out, err) = run(&path, "--bootstrap");
    assert_eq!(code, 0, "{out}{err}");
}

fn run(config: &Path, mode: &str) -> (i32, String, String) {
    partwarden(&["--config", path_str(config), mode], &[])
}

async fn count(c: &tokio_postgres::Client, sql: &str) -> i64 {
    c.query_one(sql, &[]).await.unwrap().get(0)
}

/// Rows written into archives, from the manifests of the table's archive directory.
fn archived_rows(db: &TestDb) -> i64 {
    let dir = db.dir.path().join("archive").join("public.odds_snapshots");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return 0;
    };
    let mut by_table: BTreeMap<String, i64> = BTreeMap::new();
    for e in entries {
        let p = e.unwrap().path();
        let n = p.file_name().unwrap().to_string_lossy().into_owned();
        if n.ends_with(".manifest.json") && !n.starts_with('.') {
            let m: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
            // Versions of one partition's archive: the last one counts.
            by_table.insert(
                m["partition_name"].to_string(),
                m["rows"].as_i64().expect("rows in the manifest"),
            );
        }
    }
    by_table.values().sum()
}

/// Defect 1 and requirements 1 and 4: 200,000 snapshots over the last 30 days, all in the
/// DEFAULT partition. Before the drain, `--bootstrap` and 4 passes left 195,684 rows in it and
/// nothing expired. Now every period gets its partition, the DEFAULT partition is left with no
/// row, and the periods past the retention are expired through the archive: every row is
/// either attached or in a verified archive, and no attached partition lies wholly past the
/// retention.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_history_in_a_default_partition_gets_its_periods_and_expires() {
    let (server, db, config, c) = app_database(
        "takeover_history",
        200_000,
        30,
        "max_expired_per_pass = 20\n",
    )
    .await;
    let (code, out, err) = run(&config, "--bootstrap");
    assert_eq!(code, 0, "{out}{err}");
    for _ in 0..4 {
        let (code, out, err) = run(&config, "--run-once");
        assert_eq!(code, 0, "{out}{err}");
    }
    let left = count(&c, "SELECT count(*) FROM ONLY odds_snapshots_default").await;
    assert_eq!(left, 0, "rows left in the DEFAULT partition");
    let attached = count(&c, "SELECT count(*) FROM odds_snapshots").await;
    let archived = archived_rows(&db);
    assert_eq!(
        attached + archived,
        200_000,
        "attached {attached}, archived {archived}"
    );
    assert!(
        archived > 90_000,
        "the 16 days past the retention are archived: {archived}"
    );
    // No attached partition lies wholly past the retention (14 days before today's start).
    let past: i64 = count(
        &c,
        "SELECT count(*) FROM pg_inherits i JOIN pg_class p ON p.oid = i.inhrelid \
         WHERE i.inhparent = 'odds_snapshots'::regclass AND pg_get_expr(p.relpartbound, p.oid) <> 'DEFAULT' \
           AND (regexp_match(pg_get_expr(p.relpartbound, p.oid), 'TO \\(''([^'']+)''\\)'))[1]::timestamptz \
               <= date_trunc('day', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' - interval '14 days'",
    )
    .await;
    assert_eq!(past, 0, "attached partitions wholly past the retention");
    // Nothing of the drain is left behind.
    let leftovers = count(
        &c,
        "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE n.nspname = 'partwarden' AND c.relname LIKE 'drain%'",
    )
    .await;
    assert_eq!(leftovers, 0);
    assert_eq!(
        count(
            &c,
            "SELECT count(*) FROM pg_trigger WHERE tgname = 'partwarden_drain_capture'"
        )
        .await,
        0
    );
    server.stop();
}

/// What the application's writers saw while rows moved.
#[derive(Default, Debug)]
struct Seen {
    /// Statements that returned an error.
    failed: u64,
    /// UPDATEs and DELETEs by id that found no row although the row existed: lost writes.
    lost: u64,
    /// Statements run.
    n: u64,
    /// The longest statement.
    worst: Duration,
    /// Some of the errors.
    errors: Vec<String>,
}

impl Seen {
    fn time(&mut self, t: Instant) {
        self.n += 1;
        self.worst = self.worst.max(t.elapsed());
    }
    fn fail(&mut self, e: tokio_postgres::Error) {
        self.failed += 1;
        if self.errors.len() < 5 {
            self.errors.push(partwarden::db::error_text(&e));
        }
    }
}

/// xorshift: the test's own random ids, repeatable.
fn rng(mut seed: u64) -> impl FnMut() -> u64 {
    move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    }
}

/// The application's writers on sessions of their own until `stop`: an inserter (`captured_at`
/// = now), a confirmer (`UPDATE .. SET last_confirmed_at, confirmations + 1 WHERE id IN (...)`,
/// batches of ids of old and new rows), an updater and a deleter by id of single rows, and a
/// locker (`SELECT .. FOR UPDATE` by id). Ids `1..=old` exist at the start; the deleter takes
/// ids from the top, the others never touch those.
async fn app_writers(
    url: &str,
    old: i64,
    stop: Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<(Seen, BTreeMap<i64, i64>, BTreeSet<i64>)>> {
    let mut tasks = Vec::new();
    for role in 0..5u64 {
        let c = crate::support::connect(url).await;
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let mut seen = Seen::default();
            // id → confirmations this writer added; ids it deleted or inserted.
            let mut added: BTreeMap<i64, i64> = BTreeMap::new();
            let mut ids: BTreeSet<i64> = BTreeSet::new();
            let mut next = rng(0x9E37_79B9_7F4A_7C15 ^ role);
            let mut deleted_down_from = old;
            let confirmable = old - 20_000;
            while !stop.load(Ordering::SeqCst) {
                let t = Instant::now();
                match role {
                    0 => {
                        match c
                            .query_one(
                                "INSERT INTO odds_snapshots (event_id, bookmaker_id, scrape_run_id) VALUES (7, 3, 5) RETURNING id",
                                &[],
                            )
                            .await
                        {
                            Ok(r) => {
                                ids.insert(r.get(0));
                            }
                            Err(e) => seen.fail(e),
                        }
                    }
                    1 => {
                        let batch: Vec<i64> = (0..20)
                            .map(|_| 1 + (next() % confirmable as u64) as i64)
                            .collect::<BTreeSet<_>>()
                            .into_iter()
                            .collect();
                        match c
                            .execute(
                                "UPDATE odds_snapshots SET last_confirmed_at = now(), confirmations = confirmations + 1 WHERE id = ANY($1)",
                                &[&batch],
                            )
                            .await
                        {
                            Ok(n) => {
                                seen.lost += batch.len() as u64 - n;
                                for id in batch {
                                    *added.entry(id).or_default() += 1;
                                }
                            }
                            Err(e) => seen.fail(e),
                        }
                    }
                    2 => {
                        let id = 1 + (next() % confirmable as u64) as i64;
                        match c
                            .execute(
                                "UPDATE odds_snapshots SET confirmations = confirmations + 1 WHERE id = $1",
                                &[&id],
                            )
                            .await
                        {
                            Ok(1) => *added.entry(id).or_default() += 1,
                            Ok(_) => seen.lost += 1,
                            Err(e) => seen.fail(e),
                        }
                    }
                    3 => {
                        let id = deleted_down_from;
                        match c
                            .execute("DELETE FROM odds_snapshots WHERE id = $1", &[&id])
                            .await
                        {
                            Ok(1) => {
                                ids.insert(id);
                                deleted_down_from -= 1;
                            }
                            Ok(_) => seen.lost += 1,
                            Err(e) => seen.fail(e),
                        }
                    }
                    _ => {
                        let id = 1 + (next() % confirmable as u64) as i64;
                        let r = async {
                            c.batch_execute("BEGIN").await?;
                            let n = c
                                .query("SELECT id FROM odds_snapshots WHERE id = $1 FOR UPDATE", &[&id])
                                .await?
                                .len();
                            c.batch_execute("COMMIT").await?;
                            Ok::<usize, tokio_postgres::Error>(n)
                        }
                        .await;
                        match r {
                            Ok(1) => {}
                            Ok(_) => seen.lost += 1,
                            Err(e) => {
                                let _ = c.batch_execute("ROLLBACK").await;
                                seen.fail(e)
                            }
                        }
                    }
                }
                seen.time(t);
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            (seen, added, ids)
        }));
    }
    tasks
}

/// Defect 2 and requirements 2 and 5: 300,000 rows in the DEFAULT partition (the last 20 days
/// and the 2 days ahead), drained by a pass while the application inserts, confirms batches of
/// old rows by id, updates and deletes single rows by id and locks rows with FOR UPDATE. Before
/// the drain, a NOT VALID CHECK on the DEFAULT partition made the updates of rows waiting to move
/// fail with 23514. Now: 0 failed, 0 lost, every confirmation counted, and no writer waits
/// longer than lock_timeout (200 ms) + 50 ms.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn moving_rows_out_of_the_default_partition_fails_and_loses_no_write() {
    let rows = 300_000;
    // Rows dated the day after tomorrow first (ids 1..20,000), as in the reproduction:
    // the writers update them while they wait to move.
    let (server, db, config, c) = app_database_with(
        "takeover_writes",
        "INSERT INTO odds_snapshots (event_id, bookmaker_id, captured_at) \
         SELECT g % 1000, g % 10, now() + interval '2 days' + g * interval '100 ms' FROM generate_series(1, 20000) g",
        rows,
        10,
        "",
    )
    .await;
    let old = count(&c, "SELECT max(id) FROM odds_snapshots").await;
    bootstrap_schema_only(&config);
    let before = count(&c, "SELECT count(*) FROM ONLY odds_snapshots_default").await;
    assert_eq!(before, old);
    let stop = Arc::new(AtomicBool::new(false));
    let writers = app_writers(&db.url, old, stop.clone()).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let cfg = config.clone();
    let (code, out, err) = tokio::task::spawn_blocking(move || run(&cfg, "--run-once"))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::SeqCst);
    let mut seen = Vec::new();
    let mut added: BTreeMap<i64, i64> = BTreeMap::new();
    let (mut inserted, mut deleted) = (BTreeSet::new(), BTreeSet::new());
    for (i, w) in writers.into_iter().enumerate() {
        let (s, a, ids) = w.await.unwrap();
        for (id, n) in a {
            *added.entry(id).or_default() += n;
        }
        match i {
            0 => inserted = ids,
            3 => deleted = ids,
            _ => {}
        }
        seen.push(s);
    }
    eprintln!("{seen:#?}\n{err}");
    assert_eq!(code, 0, "{out}{err}");
    for (i, s) in seen.iter().enumerate() {
        assert_eq!((s.failed, s.lost), (0, 0), "writer {i}: {s:?}");
        assert!(s.n > 50, "writer {i} ran {} statements", s.n);
        assert!(
            s.worst <= Duration::from_millis(250),
            "writer {i} waited {:?}",
            s.worst
        );
    }
    assert!(
        out.contains("drained"),
        "the pass drained the DEFAULT partition: {out}{err}"
    );
    // Every row is where it should be, once, with every confirmation.
    let total = count(&c, "SELECT count(*) FROM odds_snapshots").await;
    assert_eq!(total, old + inserted.len() as i64 - deleted.len() as i64);
    assert_eq!(
        count(&c, "SELECT count(DISTINCT id) FROM odds_snapshots").await,
        total,
        "a row is duplicated"
    );
    let ids: Vec<i64> = deleted.iter().copied().collect();
    assert_eq!(
        count(
            &c,
            &format!(
                "SELECT count(*) FROM odds_snapshots WHERE id = ANY(ARRAY[{}]::bigint[])",
                ids.iter()
                    .map(|i| i.to_string())
                    .collect::<Vec<_>>()
                    .join(",")
            )
        )
        .await,
        0,
        "a deleted row came back"
    );
    let want: i64 = added.values().sum();
    assert_eq!(
        count(
            &c,
            "SELECT coalesce(sum(confirmations), 0)::bigint FROM odds_snapshots"
        )
        .await,
        want,
        "confirmations lost"
    );
    let left = count(
        &c,
        "SELECT count(*) FROM ONLY odds_snapshots_default WHERE captured_at < now() + interval '7 days'",
    )
    .await;
    assert_eq!(left, 0);
    server.stop();
}

/// Defect 3 and requirement 2: a drain that gives up (a session holds SHARE UPDATE EXCLUSIVE
/// on the parent for longer than lock_retry_for) leaves nothing that refuses a write. Before,
/// the NOT VALID CHECK of the first transaction stayed on the DEFAULT partition, and every
/// write of the range it excluded failed until a later pass succeeded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_that_gives_up_leaves_nothing_that_refuses_a_write() {
    let (server, db, config, c) = app_database("takeover_gives_up", 20_000, 3, "").await;
    bootstrap_schema_only(&config);
    let holder = db.client().await;
    holder
        .batch_execute("BEGIN; LOCK TABLE ONLY odds_snapshots IN SHARE UPDATE EXCLUSIVE MODE")
        .await
        .unwrap();
    let (code, out, err) = run(&config, "--run-once");
    assert_ne!(code, 0, "the pass gives up: {out}{err}");
    // Writes of every instant the drain touched still succeed: the current instant, ahead of
    // it, and updates of rows waiting to move.
    let ids: Vec<i64> = c
        .query(
            "SELECT id FROM odds_snapshots ORDER BY captured_at LIMIT 5",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    for sql in [
        "INSERT INTO odds_snapshots (event_id, bookmaker_id) VALUES (1, 1)",
        "INSERT INTO odds_snapshots (event_id, bookmaker_id, captured_at) VALUES (1, 1, now() + interval '6 minutes')",
        "INSERT INTO odds_snapshots (event_id, bookmaker_id, captured_at) VALUES (1, 1, now() + interval '2 days')",
        "INSERT INTO odds_snapshots (event_id, bookmaker_id, captured_at) VALUES (1, 1, now() - interval '2 days')",
    ] {
        c.batch_execute(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
    let n = c
        .execute(
            "UPDATE odds_snapshots SET last_confirmed_at = now() WHERE id = ANY($1)",
            &[&ids],
        )
        .await
        .unwrap();
    assert_eq!(n, 5);
    // No CHECK of partwarden's on the DEFAULT partition.
    assert_eq!(
        count(
            &c,
            "SELECT count(*) FROM pg_constraint WHERE conrelid = 'odds_snapshots_default'::regclass AND conname LIKE 'partwarden%'"
        )
        .await,
        0
    );
    holder.batch_execute("COMMIT").await.unwrap();
    // The next pass finishes the drain, with the writes made meanwhile.
    let (code, out, err) = run(&config, "--run-once");
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(
        count(&c, "SELECT count(*) FROM ONLY odds_snapshots_default").await,
        0
    );
    assert_eq!(
        count(&c, "SELECT count(*) FROM odds_snapshots").await,
        20_004
    );
    server.stop();
}

/// What identifies the table's content: rows, distinct ids, and two sums.
async fn fingerprint(c: &tokio_postgres::Client) -> (i64, i64, i64, i64) {
    let r = c
        .query_one(
            "SELECT count(*), count(DISTINCT id), coalesce(sum(id), 0)::bigint, coalesce(sum(event_id), 0)::bigint FROM odds_snapshots",
            &[],
        )
        .await
        .unwrap();
    (r.get(0), r.get(1), r.get(2), r.get(3))
}

/// Requirement 3: a drain spread over passes (`default_move_budget` 2,000 rows for 150,000
/// rows) and killed with SIGKILL at 30 random instants of its passes: after every kill the
/// table holds exactly its rows (none lost, none twice), and later passes finish the drain,
/// leaving nothing of it behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_killed_at_random_instants_loses_and_duplicates_nothing() {
    let (server, _db, config, c) = app_database(
        "takeover_kill9",
        150_000,
        10,
        "default_move_budget = 2000\n",
    )
    .await;
    bootstrap_schema_only(&config);
    let before = fingerprint(&c).await;
    // The first pass sets the drain up and copies; how long the passes after it take (the
    // shorter of two, a copy each) aims the kills inside passes.
    let (code, out, err) = run(&config, "--run-once");
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("blocks copied"), "{out}");
    let mut span = u64::MAX;
    for _ in 0..2 {
        let timed = Instant::now();
        let (code, out, err) = run(&config, "--run-once");
        assert_eq!(code, 0, "{out}{err}");
        span = span.min(timed.elapsed().as_millis() as u64);
    }
    let span = span.max(20);
    // --check shows the drain under way and how far it is.
    let (_, report) = crate::support::check_json(&config);
    let d = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == "default_partition")
        .unwrap_or_else(|| panic!("{report:#}"));
    assert_eq!(d["status"], "warning", "{d:#}");
    let drain = &d["details"]["drain"];
    assert!(
        drain["blocks_copied"].as_i64().unwrap() < drain["blocks"].as_i64().unwrap(),
        "{d:#}"
    );
    assert!(drain["periods_pending"].as_i64().unwrap() >= 10, "{d:#}");
    assert!(drain["passes_left"].as_i64().unwrap() >= 2, "{d:#}");
    assert!(
        d["message"].as_str().unwrap().contains("being drained"),
        "{d:#}"
    );
    let mut next = rng(0x5DEE_CE66_D1CE_4E5B);
    let mut killed_mid_run = 0;
    for i in 0..30 {
        let mut child = crate::faults::spawn(&config, &[]);
        std::thread::sleep(Duration::from_millis(next() % span));
        if child.try_wait().unwrap().is_none() {
            killed_mid_run += 1;
        }
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(fingerprint(&c).await, before, "after kill {i}");
    }
    eprintln!("{killed_mid_run} of 30 kills landed mid-pass (span {span} ms)");
    assert!(
        killed_mid_run >= 10,
        "only {killed_mid_run} kills landed mid-pass"
    );
    let mut drained = false;
    for _ in 0..150 {
        let (code, out, err) = run(&config, "--run-once");
        assert_eq!(code, 0, "{out}{err}");
        assert_eq!(fingerprint(&c).await, before);
        if count(&c, "SELECT count(*) FROM partwarden.default_drains").await == 0
            && count(&c, "SELECT count(*) FROM ONLY odds_snapshots_default").await == 0
        {
            drained = true;
            break;
        }
    }
    assert!(drained, "the drain did not finish");
    assert_eq!(
        count(
            &c,
            "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = 'partwarden' AND c.relname LIKE 'drain%'"
        )
        .await,
        0
    );
    server.stop();
}
