//! The maintenance pass (`--run-once`) and `--restore`: expiry through detach, verified
//! archive and drop; crash recovery at every step; restore round trips.

use std::path::{Path, PathBuf};

use chrono::{DateTime, Months, Utc};
use partwarden::archive;
use partwarden::period::Interval;

use crate::support::{TestDb, catalog_dump, partwarden, path_str};

/// Rows put in each old partition.
pub(crate) const ROWS: i64 = 5000;

pub(crate) fn month_start(back: u32) -> DateTime<Utc> {
    Interval::Monthly.floor(Utc::now()) - Months::new(back)
}

pub(crate) fn month_name(back: u32) -> String {
    format!(
        "market_odds_history{}",
        Interval::Monthly.suffix(month_start(back))
    )
}

/// A bootstrapped database whose history has partitions `backs` months ago, each with ROWS
/// rows, plus `extra_config` appended to the configuration. Returns the config path.
pub(crate) async fn history(
    db: &TestDb,
    backs: &[u32],
    database_extra: &str,
    extra_config: &str,
) -> PathBuf {
    let config = db.write_config(database_extra, extra_config);
    let (code, out, err) = partwarden(&["--config", path_str(&config), "--bootstrap"], &[]);
    assert_eq!(code, 0, "{out}{err}");
    let c = db.client().await;
    for back in backs {
        let (lo, hi) = (month_start(*back), month_start(*back) + Months::new(1));
        c.batch_execute(&format!(
            "CREATE TABLE IF NOT EXISTS {name} PARTITION OF market_odds_history FOR VALUES FROM ('{lo}') TO ('{hi}');
             INSERT INTO market_odds_history (event_id, bookmaker_slug, betpawa_market_id, line, outcomes, captured_at)
             SELECT g % 997, (ARRAY['betpawa','sportybet','bet9ja'])[1 + g % 3], 'm' || (g % 40),
                    CASE WHEN g % 4 = 0 THEN NULL ELSE (g % 7) / 2.0 END,
                    jsonb_build_array(jsonb_build_object('name', '1', 'odds', 1 + (g % 300) / 100.0, 'is_active', g % 11 <> 0)),
                    '{lo}'::timestamptz + (g * interval '1 second')
             FROM generate_series(1, {ROWS}) g;",
            name = month_name(*back),
            lo = lo.to_rfc3339(),
            hi = hi.to_rfc3339(),
        ))
        .await
        .unwrap();
    }
    config
}

/// An ordered hash of every row of `rel`, to compare contents exactly.
pub(crate) async fn rows_hash(db: &TestDb, rel: &str) -> (i64, String) {
    let c = db.client().await;
    let r = c
        .query_one(
            &format!(
                "SELECT count(*), coalesce(md5(string_agg(format('%s|%s|%s|%s|%s|%s|%s', id, event_id, bookmaker_slug, \
                   betpawa_market_id, line, outcomes, captured_at), ',' ORDER BY id, captured_at)), '') FROM {rel}"
            ),
            &[],
        )
        .await
        .unwrap();
    (r.get(0), r.get(1))
}

pub(crate) async fn ledger(db: &TestDb, partition: &str) -> Vec<String> {
    db.client()
        .await
        .query(
            "SELECT step || CASE WHEN finished_at IS NULL THEN ' (unfinished)' ELSE '' END \
                   || CASE WHEN error IS NULL THEN '' ELSE ' error' END \
             FROM partwarden.partition_events WHERE partition_name = $1 ORDER BY id",
            &[&partition],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

fn archive_dir(db: &TestDb) -> PathBuf {
    db.dir
        .path()
        .join("archive")
        .join("public.market_odds_history")
}

fn manifest_path(db: &TestDb, back: u32) -> PathBuf {
    archive_dir(db).join(format!("public.{}.manifest.json", month_name(back)))
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn run_once(config: &Path, env: &[(&str, &str)]) -> (i32, String, String) {
    partwarden(&["--config", path_str(config), "--run-once"], env)
}

/// `--restore` of the archive of the partition `back` months ago.
fn restore(config: &Path, db: &TestDb, back: u32) -> (i32, String, String) {
    let manifest = manifest_path(db, back);
    partwarden(
        &[
            "--config",
            path_str(config),
            "--restore",
            path_str(&manifest),
        ],
        &[],
    )
}

#[tokio::test]
async fn expiry_archives_verifies_and_drops() {
    let db = TestDb::new("expiry_archive").await;
    let config = history(&db, &[8, 7, 2], "", "").await;
    let before = rows_hash(&db, &month_name(8)).await;
    let (code, out, err) = run_once(&config, &[]);
    assert_eq!(code, 0, "{out}{err}");
    // 8 and 7 months ago are past the 6 months retention; 2 months ago is not. The holes
    // between 7 and 2 months ago that are within retention were filled.
    assert!(
        out.contains(&format!(
            "expired 2 (public.{}, public.{})",
            month_name(8),
            month_name(7)
        )),
        "{out}"
    );
    assert!(out.contains("archived"), "{out}");
    assert!(!db.exists(&month_name(8)).await && !db.exists(&month_name(7)).await);
    assert!(db.exists(&month_name(2)).await);
    assert_eq!(
        ledger(&db, &month_name(8)).await,
        ["detach", "archive", "verify", "drop"]
    );

    // The archive is complete on its own: checksum, size and tuple count match the manifest.
    let m = archive::read_manifest(&manifest_path(&db, 8)).unwrap();
    assert_eq!(m.rows as i64, before.0);
    assert_eq!(
        archive::check_file(&manifest_path(&db, 8), &m)
            .await
            .unwrap(),
        ROWS as u64
    );
    assert_eq!(m.lower, Some(month_start(8)));
    assert_eq!(
        m.key_min,
        Some(month_start(8) + chrono::Duration::seconds(1))
    );
    assert_eq!(
        m.key_max,
        Some(month_start(8) + chrono::Duration::seconds(ROWS))
    );
    assert_eq!(m.columns.len(), 7);
    // Only final files, no temporaries.
    let mut expected = vec![
        format!("public.{}.manifest.json", month_name(7)),
        format!("public.{}.pgcopy.zst", month_name(7)),
        format!("public.{}.manifest.json", month_name(8)),
        format!("public.{}.pgcopy.zst", month_name(8)),
    ];
    expected.sort();
    assert_eq!(files_in(&archive_dir(&db)), expected);

    // A second pass has nothing to do.
    let (code, out, _) = run_once(&config, &[]);
    assert_eq!(code, 0);
    assert!(out.contains("created 0, expired 0"), "{out}");

    // Restore: identical row for row, attached back where it was.
    let (code, out, err) = restore(&config, &db, 8);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("attached to its table"), "{out}");
    assert_eq!(rows_hash(&db, &month_name(8)).await, before);
    let routed: i64 = db
        .client()
        .await
        .query_one(
            &format!(
                "SELECT count(*) FROM market_odds_history WHERE captured_at >= '{}' AND captured_at < '{}'",
                month_start(8).to_rfc3339(),
                (month_start(8) + Months::new(1)).to_rfc3339()
            ),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(routed, ROWS, "visible through the parent again");

    // Restoring again: the range is taken now, so it goes standalone to partwarden_archive.
    let (code, out, err) = restore(&config, &db, 8);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains(&format!("partwarden_archive.{}", month_name(8)))
            && out.contains("standalone"),
        "{out}"
    );
    assert_eq!(
        rows_hash(&db, &format!("partwarden_archive.{}", month_name(8))).await,
        before
    );
}

#[tokio::test]
async fn a_crash_at_every_step_is_finished_by_the_next_pass() {
    for point in [
        "after_detach",
        "archive_temp_written",
        "archive_data_written",
        "after_archive",
        "after_verify",
        "after_ship",
    ] {
        let db = TestDb::new(&format!("crash_{point}")).await;
        let shipped = db.dir.path().join("shipped");
        std::fs::create_dir_all(&shipped).unwrap();
        let cmd = format!(
            "[maintenance]\narchive_dir = \"archive\"\narchive_command = \"cp %p {}/%f\"\n",
            shipped.display()
        );
        // Replace the harness's [maintenance] section with one that ships archives.
        let config = history(&db, &[8], "", "").await;
        let text = std::fs::read_to_string(&config)
            .unwrap()
            .replace("[maintenance]\narchive_dir = \"archive\"\n", &cmd);
        std::fs::write(&config, text).unwrap();
        let before = rows_hash(&db, &month_name(8)).await;

        let (code, out, err) = run_once(&config, &[("PARTWARDEN_FAILPOINT", point)]);
        assert_eq!(code, -1, "{point}: the process was aborted: {out}{err}");
        assert!(err.contains(&format!("failpoint {point}")), "{err}");

        let (code, out, err) = run_once(&config, &[]);
        assert_eq!(code, 0, "{point}: {out}{err}");
        assert!(
            out.contains(&format!("expired 1 (public.{})", month_name(8))),
            "{point}: {out}"
        );
        assert!(!db.exists(&month_name(8)).await, "{point}");
        let steps = ledger(&db, &month_name(8)).await;
        assert_eq!(
            steps.last().map(String::as_str),
            Some("drop"),
            "{point}: {steps:?}"
        );
        assert_eq!(steps.iter().filter(|s| s.as_str() == "drop").count(), 1);
        // Exactly one archive, verified, holding every row; shipped once; no temporaries.
        let m = archive::read_manifest(&manifest_path(&db, 8)).unwrap();
        assert_eq!(
            archive::check_file(&manifest_path(&db, 8), &m)
                .await
                .unwrap() as i64,
            before.0,
            "{point}"
        );
        assert_eq!(
            files_in(&archive_dir(&db)).len(),
            2,
            "{point}: {:?}",
            files_in(&archive_dir(&db))
        );
        assert_eq!(files_in(&shipped).len(), 2, "{point}");
        let (code, _, err) = restore(&config, &db, 8);
        assert_eq!(code, 0, "{err}");
        assert_eq!(
            rows_hash(&db, &month_name(8)).await,
            before,
            "{point}: zero rows lost"
        );
    }
}

#[tokio::test]
async fn an_interrupted_detach_concurrently_is_finalized_by_the_next_pass() {
    let db = TestDb::new("pending_detach").await;
    let config = history(&db, &[8], "statement_timeout = \"1s\"\n", "").await;
    let before = rows_hash(&db, &month_name(8)).await;
    // A reader with an old transaction on the parent: DETACH CONCURRENTLY waits for it and
    // statement_timeout interrupts it, leaving the partition pending detach.
    let reader = db.client().await;
    reader
        .batch_execute("BEGIN; SELECT count(*) FROM market_odds_history")
        .await
        .unwrap();
    let (code, out, err) = run_once(&config, &[]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains("pending detach"), "{out}");
    let pending: bool = db
        .client()
        .await
        .query_one(
            "SELECT inhdetachpending FROM pg_inherits WHERE inhrelid = to_regclass($1)",
            &[&month_name(8)],
        )
        .await
        .unwrap()
        .get(0);
    assert!(pending);
    // Writers are not affected meanwhile.
    db.client()
        .await
        .execute(
            "INSERT INTO market_odds_history (event_id, bookmaker_slug, betpawa_market_id, outcomes) VALUES (1, 'betpawa', 'x', '[]')",
            &[],
        )
        .await
        .unwrap();
    reader.batch_execute("COMMIT").await.unwrap();
    let (code, out, err) = run_once(&config, &[]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(
        ledger(&db, &month_name(8)).await,
        [
            "detach (unfinished) error",
            "finalize",
            "archive",
            "verify",
            "drop"
        ]
    );
    let m = archive::read_manifest(&manifest_path(&db, 8)).unwrap();
    assert_eq!(m.rows as i64, before.0);
}

#[tokio::test]
async fn an_unusable_archive_directory_keeps_the_table() {
    let db = TestDb::new("unwritable").await;
    // A regular file where the archive directory should be: nobody, root included, can
    // create a directory below it.
    let blocker = db.dir.path().join("archive");
    std::fs::write(&blocker, "not a directory").unwrap();
    let config = history(&db, &[8], "", "").await;
    let before = rows_hash(&db, &month_name(8)).await;
    let (code, out, err) = run_once(&config, &[]);
    assert_eq!(code, 1, "{out}{err}");
    // The pre-flight (issue "round two", item 1): nothing is detached that this pass cannot
    // archive, so the application keeps seeing the rows (before: detached, then "archive
    // failed, the table stays detached and intact").
    assert!(out.contains("not detached"), "{out}");
    assert_eq!(rows_hash(&db, &month_name(8)).await, before, "intact");
    assert!(ledger(&db, &month_name(8)).await.is_empty());

    // After the fix, the next pass completes the expiry.
    std::fs::remove_file(&blocker).unwrap();
    let (code, out, err) = run_once(&config, &[]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(!db.exists(&month_name(8)).await);
    let m = archive::read_manifest(&manifest_path(&db, 8)).unwrap();
    assert_eq!(m.rows as i64, before.0);
}

#[tokio::test]
async fn a_failing_archive_command_keeps_the_table_until_it_succeeds() {
    let db = TestDb::new("archive_command").await;
    let config = history(&db, &[8], "", "").await;
    let text = std::fs::read_to_string(&config).unwrap();
    let failing = text.replace(
        "archive_dir = \"archive\"\n",
        "archive_dir = \"archive\"\narchive_command = \"test -e /nonexistent/%f\"\n",
    );
    std::fs::write(&config, &failing).unwrap();
    let (code, out, _) = run_once(&config, &[]);
    assert_eq!(code, 1);
    assert!(out.contains("archive_command failed"), "{out}");
    assert!(db.exists(&month_name(8)).await);
    let shipped = db.dir.path().join("shipped");
    std::fs::create_dir_all(&shipped).unwrap();
    let working = text.replace(
        "archive_dir = \"archive\"\n",
        &format!(
            "archive_dir = \"archive\"\narchive_command = \"cp %p {}/%f\"\n",
            shipped.display()
        ),
    );
    std::fs::write(&config, &working).unwrap();
    let (code, out, err) = run_once(&config, &[]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(!db.exists(&month_name(8)).await);
    assert_eq!(
        files_in(&shipped),
        [
            format!("public.{}.manifest.json", month_name(8)),
            format!("public.{}.pgcopy.zst", month_name(8))
        ]
    );
    assert_eq!(
        ledger(&db, &month_name(8)).await,
        [
            "detach",
            "archive",
            "verify",
            "ship (unfinished) error",
            "verify",
            "ship",
            "drop"
        ]
    );
}

#[tokio::test]
async fn on_expiry_detach_and_drop() {
    let db = TestDb::new("on_expiry").await;
    let config = history(&db, &[9, 8], "", "").await;
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        format!("{text}\n[[tables]]\nname = \"public.market_odds_history\"\nretention = \"8 months\"\non_expiry = \"detach\"\n"),
    )
    .unwrap();
    let (code, out, err) = run_once(&config, &[]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        db.exists(&format!("partwarden_archive.{}", month_name(9)))
            .await
    );
    assert!(
        db.exists(&month_name(8)).await,
        "8 months is not past an 8 months retention yet"
    );
    assert_eq!(ledger(&db, &month_name(9)).await, ["detach", "move"]);

    std::fs::write(
        &config,
        format!("{text}\n[[tables]]\nname = \"public.market_odds_history\"\nretention = \"7 months\"\non_expiry = \"drop\"\n"),
    )
    .unwrap();
    let (code, out, err) = run_once(&config, &[]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(!db.exists(&month_name(8)).await);
    assert_eq!(ledger(&db, &month_name(8)).await, ["detach", "drop"]);
    assert!(files_in(&archive_dir(&db)).is_empty());
}

#[tokio::test]
async fn a_table_with_a_default_partition_expires_with_plain_detach() {
    let db = TestDb::new("default_expiry").await;
    let config = history(&db, &[8], "", "").await;
    let c = db.client().await;
    c.batch_execute(
        "CREATE TABLE market_odds_history_default PARTITION OF market_odds_history DEFAULT;
         INSERT INTO market_odds_history (event_id, bookmaker_slug, betpawa_market_id, outcomes, captured_at)
         VALUES (1, 'betpawa', 'x', '[]', '2040-01-01 00:00:00+00')",
    )
    .await
    .unwrap();
    let (code, out, err) = run_once(&config, &[]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(!db.exists(&month_name(8)).await);
    assert_eq!(
        ledger(&db, &month_name(8)).await,
        ["detach", "archive", "verify", "drop"]
    );
    assert!(out.contains("runway unbounded"), "{out}");
}

#[tokio::test]
async fn dry_run_pass_changes_nothing() {
    let db = TestDb::new("pass_dry_run").await;
    let config = history(&db, &[8, 3], "", "").await;
    let c = db.client().await;
    let before = catalog_dump(&c).await;
    let events: i64 = c
        .query_one("SELECT count(*) FROM partwarden.partition_events", &[])
        .await
        .unwrap()
        .get(0);
    let (code, out, err) = partwarden(
        &["--config", path_str(&config), "--run-once", "--dry-run"],
        &[],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("DETACH PARTITION")
            && out.contains("CONCURRENTLY")
            && out.contains("DROP TABLE"),
        "{out}"
    );
    assert!(
        out.contains(&format!("create partition public.{}", month_name(2))),
        "gap fill planned: {out}"
    );
    assert_eq!(catalog_dump(&c).await, before);
    let after: i64 = c
        .query_one("SELECT count(*) FROM partwarden.partition_events", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(after, events);
    assert!(!db.dir.path().join("archive").exists());

    // --now plans for another instant: in three months, month 3 back is expired too... only
    // with --dry-run.
    let later = Utc::now() + Months::new(4);
    let (code, out, _) = crate::support::dry_run_pass_at(&config, later);
    assert_eq!(code, 0);
    assert!(
        out.contains(&format!("expire public.{}", month_name(3))),
        "{out}"
    );
    assert_eq!(
        partwarden(
            &[
                "--config",
                path_str(&config),
                "--run-once",
                "--now",
                &later.to_rfc3339()
            ],
            &[]
        )
        .0,
        2
    );
}

#[tokio::test]
async fn run_once_refuses_a_database_that_was_not_bootstrapped() {
    let db = TestDb::new("not_bootstrapped").await;
    let config = db.write_config("", "");
    let (code, _, err) = run_once(&config, &[]);
    assert_eq!(code, 1);
    assert!(err.contains("run partwarden --bootstrap first"), "{err}");
}

/// Issue "One plan, many renderers": `--dry-run` prints what runs. The DDL statements the
/// server receives during a real pass (captured by an event trigger, committed ones only) are
/// each, to the letter, a statement of the dry run made just before on the same state, and
/// every DDL statement of the dry run runs. The state has work of every kind: partitions to
/// premake and holes to fill, a partition to expire (detach concurrently, archive, drop) and
/// a parent index that no partition has (built concurrently and attached).
#[tokio::test]
async fn dry_run_prints_the_statements_the_server_receives() {
    let db = TestDb::new("dry_run_fidelity").await;
    let config = history(&db, &[8, 3], "", "").await;
    let c = db.client().await;
    c.batch_execute(&format!("DROP TABLE IF EXISTS {}", month_name(2)))
        .await
        .unwrap();
    // A parent index built ON ONLY and never finished: every partition lacks it (repairs:
    // CREATE INDEX CONCURRENTLY and ALTER INDEX ... ATTACH PARTITION, outside a transaction).
    c.batch_execute("CREATE INDEX idx_moh_line ON ONLY market_odds_history (line)")
        .await
        .unwrap();
    let (code, plan, err) = partwarden(
        &["--config", path_str(&config), "--run-once", "--dry-run"],
        &[],
    );
    assert!(code == 0 || code == 1, "{plan}{err}");
    c.batch_execute(
        "CREATE TABLE ddl_seen (id bigserial PRIMARY KEY, query text NOT NULL);
         CREATE FUNCTION ddl_seen() RETURNS event_trigger LANGUAGE plpgsql AS
           $$ BEGIN INSERT INTO ddl_seen (query) VALUES (current_query()); END $$;
         CREATE EVENT TRIGGER ddl_seen ON ddl_command_start EXECUTE FUNCTION ddl_seen();",
    )
    .await
    .unwrap();
    let (code, out, err) = run_once(&config, &[]);
    assert_eq!(code, 0, "{out}{err}");
    c.batch_execute("DROP EVENT TRIGGER ddl_seen")
        .await
        .unwrap();
    let seen: Vec<String> = c
        .query("SELECT query FROM ddl_seen ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| {
            r.get::<_, String>(0)
                .trim()
                .trim_end_matches(';')
                .to_string()
        })
        .collect();
    let printed: Vec<String> = plan
        .lines()
        .map(|l| {
            l.split(" -- ")
                .next()
                .unwrap()
                .trim()
                .trim_end_matches(';')
                .to_string()
        })
        .filter(|l| {
            ["CREATE ", "ALTER ", "DROP "]
                .iter()
                .any(|k| l.starts_with(k))
        })
        .collect();
    assert!(seen.len() >= 8, "{seen:#?}");
    for q in &seen {
        assert!(
            printed.contains(q),
            "ran but not printed by --dry-run: {q}\n\nprinted:\n{}",
            printed.join("\n")
        );
    }
    for q in &printed {
        assert!(
            seen.contains(q),
            "printed by --dry-run but did not run: {q}\n\nran:\n{}",
            seen.join("\n")
        );
    }
}

/// Records every DDL command the server receives in this database (the whole text of the
/// query that carried it), until [`stop_ddl_capture`].
async fn start_ddl_capture(c: &tokio_postgres::Client) {
    c.batch_execute(
        "CREATE TABLE ddl_seen (id bigserial PRIMARY KEY, query text NOT NULL);
         CREATE FUNCTION ddl_seen() RETURNS event_trigger LANGUAGE plpgsql AS
           $$ BEGIN INSERT INTO ddl_seen (query) VALUES (current_query()); END $$;
         CREATE EVENT TRIGGER ddl_seen ON ddl_command_start EXECUTE FUNCTION ddl_seen();",
    )
    .await
    .unwrap();
}

/// The queries captured since [`start_ddl_capture`], in order, each once.
async fn stop_ddl_capture(c: &tokio_postgres::Client) -> Vec<String> {
    c.batch_execute("DROP EVENT TRIGGER ddl_seen")
        .await
        .unwrap();
    let mut seen: Vec<String> = Vec::new();
    for r in c
        .query("SELECT query FROM ddl_seen ORDER BY id", &[])
        .await
        .unwrap()
    {
        let q = r
            .get::<_, String>(0)
            .trim_end()
            .trim_end_matches(';')
            .to_string();
        if !seen.contains(&q) {
            seen.push(q);
        }
    }
    seen
}

/// Every query that carried DDL is in what the dry run printed, to the letter (a migration's
/// script whole); and nothing the dry run printed as DDL is left once those are taken out.
fn assert_dry_run_is_what_ran(printed: &str, seen: &[String]) {
    let mut left = printed.to_string();
    for q in seen {
        assert!(
            printed.contains(q.as_str()),
            "ran but not printed by --dry-run: {q}\n\nprinted:\n{printed}"
        );
        left = left.replace(q.as_str(), "");
    }
    for line in left.lines() {
        let l = line.split("--").next().unwrap().trim();
        assert!(
            !["CREATE ", "ALTER ", "DROP "]
                .iter()
                .any(|k| l.starts_with(k)),
            "printed by --dry-run but did not run: {l}\n\nran:\n{}",
            seen.join("\n")
        );
    }
}

/// Issue "One plan, many renderers": the bootstrap's `--dry-run` prints the migrations
/// (scripts whole, with the `partwarden` schema when it is missing, and the bookkeeping) and
/// the partitions, and the real bootstrap then sends the server exactly those: on a fresh
/// database, and on one where an administrator made the `partwarden` schema beforehand (the
/// dry run used to print a CREATE SCHEMA that the run then skipped).
#[tokio::test]
async fn bootstrap_dry_run_prints_the_statements_the_server_receives() {
    for schema_made in [false, true] {
        let db = TestDb::new(&format!("bootstrap_fidelity_{schema_made}")).await;
        let config = db.write_config("", "");
        let c = db.client().await;
        if schema_made {
            c.batch_execute("CREATE SCHEMA partwarden").await.unwrap();
        }
        let (code, plan, err) = partwarden(
            &["--config", path_str(&config), "--bootstrap", "--dry-run"],
            &[],
        );
        assert_eq!(code, 0, "{plan}{err}");
        start_ddl_capture(&c).await;
        let (code, out, err) = partwarden(&["--config", path_str(&config), "--bootstrap"], &[]);
        assert_eq!(code, 0, "{out}{err}");
        let seen = stop_ddl_capture(&c).await;
        assert_eq!(
            seen.iter().any(|q| q == "CREATE SCHEMA partwarden"),
            !schema_made,
            "{seen:#?}"
        );
        assert!(seen.len() >= 10, "{seen:#?}");
        assert_dry_run_is_what_ran(&plan, &seen);
    }
}

/// The same for `--restore`: the load (table, COPY, validated CHECK) and the attach.
#[tokio::test]
async fn restore_dry_run_prints_the_statements_the_server_receives() {
    let db = TestDb::new("restore_fidelity").await;
    let config = history(&db, &[8], "", "").await;
    let (code, out, err) = run_once(&config, &[]);
    assert_eq!(code, 0, "{out}{err}");
    let c = db.client().await;
    let manifest = manifest_path(&db, 8);
    let (code, plan, err) = partwarden(
        &[
            "--config",
            path_str(&config),
            "--restore",
            path_str(&manifest),
            "--dry-run",
        ],
        &[],
    );
    assert_eq!(code, 0, "{plan}{err}");
    start_ddl_capture(&c).await;
    let (code, out, err) = restore(&config, &db, 8);
    assert_eq!(code, 0, "{out}{err}");
    let seen = stop_ddl_capture(&c).await;
    assert!(
        seen.iter().any(|q| q.contains("ATTACH PARTITION")) && seen.len() >= 4,
        "{seen:#?}"
    );
    assert_dry_run_is_what_ran(&plan, &seen);
}
