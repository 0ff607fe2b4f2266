//! Fault injection with the real binary: kill -9 at random instants, a terminated backend
//! during DETACH CONCURRENTLY, an archive directory that fills up.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use chrono::{DateTime, Months, Utc};
use partwarden::period::Interval;
use sha2::{Digest, Sha256};

use crate::support::{TestDb, bootstrap_cli, bootstrapped, partwarden, path_str};

const ROWS: i64 = 3000;

pub(crate) fn start(back: u32) -> DateTime<Utc> {
    Interval::Monthly.floor(Utc::now()) - Months::new(back)
}

pub(crate) fn name(back: u32) -> String {
    format!(
        "market_odds_history{}",
        Interval::Monthly.suffix(start(back))
    )
}

/// The name of the partition `ahead` months after this one.
pub(crate) fn name_ahead(ahead: u32) -> String {
    format!(
        "market_odds_history{}",
        Interval::Monthly.suffix(Interval::Monthly.floor(Utc::now()) + Months::new(ahead))
    )
}

/// Creates the partition `back` months ago with ROWS rows; returns the hash of its content.
pub(crate) async fn old_partition(c: &tokio_postgres::Client, back: u32) -> String {
    let (lo, hi) = (start(back), start(back) + Months::new(1));
    c.batch_execute(&format!(
        "CREATE TABLE {n} PARTITION OF market_odds_history FOR VALUES FROM ('{lo}') TO ('{hi}');
         INSERT INTO market_odds_history (event_id, bookmaker_slug, betpawa_market_id, line, outcomes, captured_at)
         SELECT g, 'betpawa', 'm' || g % 17, CASE WHEN g % 3 = 0 THEN NULL ELSE g / 7.0 END,
                jsonb_build_array(jsonb_build_object('name', '1', 'odds', 1 + g % 90 / 10.0, 'is_active', true)),
                '{lo}'::timestamptz + g * interval '17 seconds'
         FROM generate_series(1, {ROWS}) g",
        n = name(back),
        lo = lo.to_rfc3339(),
        hi = hi.to_rfc3339()
    ))
    .await
    .unwrap();
    table_hash(c, &name(back)).await
}

/// SHA-256 of the sorted lines of `COPY table TO STDOUT`, in partwarden's session settings.
pub(crate) async fn table_hash(c: &tokio_postgres::Client, table: &str) -> String {
    c.batch_execute("SET DateStyle = 'ISO, MDY'; SET extra_float_digits = 3")
        .await
        .unwrap();
    let stream = c
        .copy_out(&format!("COPY {table} TO STDOUT"))
        .await
        .unwrap();
    let mut bytes = Vec::new();
    futures_util::pin_mut!(stream);
    use futures_util::StreamExt;
    while let Some(chunk) = stream.next().await {
        bytes.extend_from_slice(&chunk.unwrap());
    }
    lines_hash(&bytes)
}

pub(crate) fn lines_hash(bytes: &[u8]) -> String {
    let mut lines: Vec<&[u8]> = bytes
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .collect();
    lines.sort();
    let mut h = Sha256::new();
    for l in &lines {
        h.update(l);
        h.update(b"\n");
    }
    format!("{}:{}", lines.len(), hex::encode(h.finalize()))
}

pub(crate) fn archive_hash(dir: &Path, partition: &str) -> Option<String> {
    let file = std::fs::File::open(dir.join(format!("public.{partition}.pgcopy.zst"))).ok()?;
    let mut bytes = Vec::new();
    zstd::Decoder::new(file)
        .unwrap()
        .read_to_end(&mut bytes)
        .unwrap();
    Some(lines_hash(&bytes))
}

pub(crate) async fn attached(c: &tokio_postgres::Client, partition: &str) -> bool {
    c.query_one(
        "SELECT EXISTS (SELECT 1 FROM pg_inherits WHERE inhrelid = to_regclass($1))",
        &[&partition],
    )
    .await
    .unwrap()
    .get(0)
}

pub(crate) fn spawn(config: &Path, env: &[(&str, &str)]) -> std::process::Child {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_partwarden"));
    cmd.args(["--config", path_str(config), "--run-once"])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.spawn().unwrap()
}

#[tokio::test]
async fn kill_9_at_fifty_random_instants_loses_nothing() {
    let db = TestDb::new("kill9").await;
    let config = db.write_config("", "");
    let text = std::fs::read_to_string(&config).unwrap().replace(
        "archive_dir = \"archive\"\n",
        "archive_dir = \"archive\"\nmax_expired_per_pass = 2\n",
    );
    std::fs::write(&config, text).unwrap();
    bootstrap_cli(&config);
    let c = db.client().await;
    let mut expected: BTreeMap<String, String> = BTreeMap::new();
    let mut seed: u64 = 0x2545_F491_4F6C_DD1D;
    let mut rand = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let future = format!(
        "market_odds_history{}",
        Interval::Monthly.suffix(Interval::Monthly.floor(Utc::now()) + Months::new(3))
    );
    // How long a pass with one expiry takes here, to aim the kills inside passes: the
    // shortest of three, since a first pass (or one slowed by a busy machine) can take several
    // times as long, and kills aimed over that span mostly land after the pass ended.
    let mut span = u64::MAX;
    for back in 60..63 {
        expected.insert(name(back), old_partition(&c, back).await);
        let timed = Instant::now();
        assert_eq!(
            partwarden(&["--config", path_str(&config), "--run-once"], &[]).0,
            0
        );
        span = span.min(timed.elapsed().as_millis() as u64);
    }
    let span = span.max(20);
    let mut killed_mid_run = 0;
    for i in 0..50u32 {
        // Fresh work for every run: an expired partition with rows, and a missing future one.
        let back = 8 + i;
        expected.insert(name(back), old_partition(&c, back).await);
        c.batch_execute(&format!("DROP TABLE IF EXISTS {future}"))
            .await
            .unwrap();
        let mut child = spawn(&config, &[]);
        std::thread::sleep(Duration::from_millis(rand() % span));
        if child.try_wait().unwrap().is_none() {
            killed_mid_run += 1;
        }
        let _ = child.kill(); // SIGKILL
        let _ = child.wait();
        let (code, out, err) = partwarden(&["--config", path_str(&config), "--run-once"], &[]);
        assert_eq!(code, 0, "clean pass after kill {i}: {out}{err}");
    }
    // Drain what is left, then check every row ever inserted.
    for _ in 0..30 {
        let (code, out, err) = partwarden(&["--config", path_str(&config), "--run-once"], &[]);
        assert_eq!(code, 0, "{out}{err}");
        if out.contains("expired 0") {
            break;
        }
    }
    assert!(
        killed_mid_run >= 20,
        "most kills hit a running pass: {killed_mid_run} of 50 (span {span} ms)"
    );
    let dir = db
        .dir
        .path()
        .join("archive")
        .join("public.market_odds_history");
    for (partition, hash) in &expected {
        let archived = archive_hash(&dir, partition);
        let is_attached = attached(&c, partition).await;
        assert!(!is_attached, "{partition} should have expired");
        assert_eq!(
            archived.as_deref(),
            Some(hash.as_str()),
            "{partition}: archive holds every row"
        );
        let manifest = dir.join(format!("public.{partition}.manifest.json"));
        let m = partwarden::archive::read_manifest(&manifest).unwrap();
        assert_eq!(
            partwarden::archive::check_file(&manifest, &m)
                .await
                .unwrap() as i64,
            ROWS
        );
    }
    // No temporary files; one data file and one manifest per partition.
    let files: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(files.len(), 2 * expected.len(), "{files:?}");
    assert!(files.iter().all(|f| !f.starts_with('.')), "{files:?}");
    // The ledger shows every expiry finished, and the future partition is there.
    // (What `ledger::in_flight` reads: the latest event of every partition, which must be a
    // finished drop.)
    let unfinished: Vec<String> = c
        .query(
            "SELECT format('%s.%s %s %s', partition_schema, partition_name, step, finished_at IS NOT NULL) \
             FROM (SELECT DISTINCT ON (partition_schema, partition_name) * \
                   FROM partwarden.partition_events \
                   WHERE table_name = 'public.market_odds_history' AND partition_name IS NOT NULL \
                     AND step IN ('detach', 'finalize', 'archive', 'verify', 'ship', 'upload', 'drop', 'move') \
                   ORDER BY partition_schema, partition_name, id DESC) e \
             WHERE NOT (step IN ('drop', 'move') AND finished_at IS NOT NULL)",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(unfinished.is_empty(), "{unfinished:?}");
    assert!(attached(&c, &future).await);
}

#[tokio::test]
async fn a_backend_terminated_during_detach_concurrently_is_finalized_next_pass() {
    let db = TestDb::new("terminate").await;
    let config = db.write_config("", "");
    bootstrap_cli(&config);
    let c = db.client().await;
    let hash = old_partition(&c, 8).await;
    // A reader keeps DETACH CONCURRENTLY waiting.
    let reader = db.client().await;
    reader
        .batch_execute("BEGIN; SELECT count(*) FROM market_odds_history")
        .await
        .unwrap();
    let mut child = spawn(&config, &[]);
    let deadline = Instant::now() + Duration::from_secs(15);
    let pid: i32 = loop {
        let row = c
            .query_opt(
                "SELECT pid FROM pg_stat_activity WHERE application_name = 'partwarden' \
                 AND query LIKE '%DETACH PARTITION%CONCURRENTLY%' AND state = 'active'",
                &[],
            )
            .await
            .unwrap();
        if let Some(r) = row {
            break r.get(0);
        }
        assert!(Instant::now() < deadline, "the detach never started");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let terminated: bool = c
        .query_one("SELECT pg_terminate_backend($1)", &[&pid])
        .await
        .unwrap()
        .get(0);
    assert!(terminated);
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(1));
    let pending: bool = c
        .query_one(
            "SELECT inhdetachpending FROM pg_inherits WHERE inhrelid = to_regclass($1)",
            &[&name(8)],
        )
        .await
        .unwrap()
        .get(0);
    assert!(pending, "interrupted: pending detach");
    reader.batch_execute("COMMIT").await.unwrap();
    let (code, out, err) = partwarden(&["--config", path_str(&config), "--run-once"], &[]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(!attached(&c, &name(8)).await);
    let dir = db
        .dir
        .path()
        .join("archive")
        .join("public.market_odds_history");
    assert_eq!(archive_hash(&dir, &name(8)).as_deref(), Some(hash.as_str()));
}

#[tokio::test]
async fn a_full_archive_directory_keeps_the_table_and_check_goes_critical() {
    let db = TestDb::new("disk_full").await;
    let config = db.write_config("", "");
    bootstrap_cli(&config);
    let c = db.client().await;
    let hash = old_partition(&c, 8).await;
    // A 4 KiB file-size limit, with SIGXFSZ ignored so that writes fail with EFBIG instead of
    // killing the process: what a full disk looks like to the archive writer.
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "trap '' XFSZ; ulimit -f 8; exec {} --config {} --run-once",
            env!("CARGO_BIN_EXE_partwarden"),
            path_str(&config)
        ))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("archive failed, the table stays detached and intact"),
        "{stdout}"
    );
    assert_eq!(table_hash(&c, &name(8)).await, hash, "detached and intact");
    let dir: PathBuf = db
        .dir
        .path()
        .join("archive")
        .join("public.market_odds_history");
    let leftovers: Vec<String> = std::fs::read_dir(&dir)
        .map(|d| {
            d.map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect()
        })
        .unwrap_or_default();
    assert!(
        leftovers.is_empty(),
        "a failed write leaves no file behind: {leftovers:?}"
    );
    let (code, check, _) = partwarden(&["--config", path_str(&config), "--check"], &[]);
    assert_eq!(code, 2, "{check}");
    assert!(
        check.lines().any(|l| l.starts_with("CRIT expiry")),
        "{check}"
    );
    // Space again: the next pass completes.
    let (code, out, err) = partwarden(&["--config", path_str(&config), "--run-once"], &[]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(archive_hash(&dir, &name(8)).as_deref(), Some(hash.as_str()));
    let (code, check, _) = partwarden(&["--config", path_str(&config), "--check"], &[]);
    assert_eq!(code, 0, "{check}");
}

#[tokio::test]
async fn a_postgres_restart_during_a_pass_loses_nothing() {
    let server = crate::support::private_server();
    let db = TestDb::on(&server, "restart").await;
    let config = db.write_config("", "");
    bootstrap_cli(&config);
    let c = db.client().await;
    let mut expected = BTreeMap::new();
    for back in [8, 9, 10] {
        expected.insert(name(back), old_partition(&c, back).await);
    }
    drop(c);
    let mut child = spawn(&config, &[]);
    std::thread::sleep(Duration::from_millis(60));
    server.stop();
    let status = child.wait().unwrap();
    server.start_again();
    // Whatever the interrupted pass got to, the next ones finish it.
    for _ in 0..3 {
        let (code, out, err) = partwarden(&["--config", path_str(&config), "--run-once"], &[]);
        assert_eq!(
            code, 0,
            "after the restart (the interrupted pass exited {status:?}): {out}{err}"
        );
    }
    let c = db.client().await;
    let dir = db
        .dir
        .path()
        .join("archive")
        .join("public.market_odds_history");
    for (partition, hash) in &expected {
        assert!(!attached(&c, partition).await);
        assert_eq!(
            archive_hash(&dir, partition).as_deref(),
            Some(hash.as_str()),
            "{partition}"
        );
    }
    server.stop();
}

#[tokio::test]
async fn writers_never_wait_behind_a_long_reader_during_a_pass() {
    let db = TestDb::new("long_reader").await;
    let config = db.write_config("", "");
    bootstrap_cli(&config);
    let c = db.client().await;
    old_partition(&c, 8).await;
    // The pass has one partition to create and one to expire.
    let last = name_ahead(3);
    c.batch_execute(&format!("DROP TABLE {last}"))
        .await
        .unwrap();
    let reader = db.client().await;
    reader
        .batch_execute("BEGIN; SELECT count(*) FROM market_odds_history")
        .await
        .unwrap();
    let writer = db.client().await;
    let insert = writer
        .prepare(
            "INSERT INTO market_odds_history (event_id, bookmaker_slug, betpawa_market_id, outcomes) \
             VALUES (1, 'betpawa', 'x', '[]')",
        )
        .await
        .unwrap();
    let mut child = spawn(&config, &[]);
    let started = Instant::now();
    let mut worst = Duration::ZERO;
    let mut n = 0;
    while started.elapsed() < Duration::from_secs(4) {
        let t = Instant::now();
        writer.execute(&insert, &[]).await.unwrap();
        worst = worst.max(t.elapsed());
        n += 1;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The new partition is usable while the reader still holds its transaction.
    assert!(
        attached(&c, &last).await,
        "created without waiting for the reader"
    );
    reader.batch_execute("COMMIT").await.unwrap();
    assert_eq!(child.wait().unwrap().code(), Some(0));
    assert!(
        !attached(&c, &name(8)).await,
        "expired once the reader ended"
    );
    // lock_timeout is 200 ms in the test configuration.
    assert!(
        worst <= Duration::from_millis(250),
        "an insert waited {worst:?} (of {n})"
    );
}

/// A session holding ACCESS EXCLUSIVE on the history table (`LOCK TABLE`, which reaches every
/// partition): a pass gives up after lock_timeout (and its retries) and `--check` answers,
/// instead of queueing for statement_timeout behind it. Found while writing the Prometheus
/// test: the catalog reads' `pg_get_expr` takes AccessShareLock on each partition, and the
/// sessions had no lock_timeout outside DDL.
#[tokio::test]
async fn a_locked_table_delays_neither_a_pass_nor_check() {
    let db = bootstrapped("locked_table").await;
    let config = db.write_config("", "");
    let mut holder = db.client().await;
    let tx = holder.transaction().await.unwrap();
    tx.batch_execute("LOCK TABLE market_odds_history IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let started = Instant::now();
    let (code, out, err) = partwarden(&["--config", path_str(&config), "--run-once"], &[]);
    let pass = started.elapsed();
    let started = Instant::now();
    let (check_code, check_out, _) = partwarden(&["--config", path_str(&config), "--check"], &[]);
    let check = started.elapsed();
    tx.rollback().await.unwrap();
    // lock_timeout is 200 ms and lock_retry_for 3 s in the test configuration; the session's
    // statement_timeout is 60 s.
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        pass < Duration::from_secs(20),
        "the pass took {pass:?}: {out}{err}"
    );
    assert!(
        check < Duration::from_secs(20),
        "--check took {check:?}: {check_out}"
    );
    assert_ne!(check_code, 0, "{check_out}");
    // Unlocked, the next pass is clean.
    let (code, out, err) = partwarden(&["--config", path_str(&config), "--run-once"], &[]);
    assert_eq!(code, 0, "{out}{err}");
}

/// A long transaction holding one partition (a `VACUUM FULL` or `ALTER TABLE` of an old month,
/// say) must not stop the pass from creating the partitions ahead: the catalog read opens no
/// partition. It did: `pg_get_expr(relpartbound, oid)` opened (and so locked) every partition,
/// waited lock_timeout on the held one, and the table's whole pass failed with "reading the
/// catalog: canceling statement due to lock timeout", its next partition not made.
#[tokio::test]
async fn a_locked_partition_does_not_stop_the_partitions_ahead() {
    let db = bootstrapped("locked_partition").await;
    let config = db.write_config("", "");
    let c = db.client().await;
    let this_month = name(0);
    let last = name_ahead(3);
    c.batch_execute(&format!("DROP TABLE {last}"))
        .await
        .unwrap();
    let mut holder = db.client().await;
    let tx = holder.transaction().await.unwrap();
    tx.batch_execute(&format!("LOCK TABLE {this_month} IN ACCESS EXCLUSIVE MODE"))
        .await
        .unwrap();
    let (code, out, err) = partwarden(&["--config", path_str(&config), "--run-once"], &[]);
    let created = db.exists(&last).await;
    tx.rollback().await.unwrap();
    assert_eq!(code, 0, "{out}{err}");
    assert!(created, "{last} was not created: {out}{err}");
}
