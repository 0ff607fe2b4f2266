//! Issue "Nothing lost, nobody in": each defect a red-team review reproduced, as a test against
//! the real binary and a real PostgreSQL. Every test here failed on the code before its fix.

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::Months;

use crate::faults::{lines_hash, name, old_partition, start, table_hash};
use crate::support::{TestDb, bootstrap_cli, partwarden, path_str};

fn run_once(config: &Path, env: &[(&str, &str)]) -> (i32, String, String) {
    partwarden(&["--config", path_str(config), "--run-once"], env)
}

fn table_dir(db: &TestDb) -> PathBuf {
    db.dir
        .path()
        .join("archive")
        .join("public.market_odds_history")
}

/// A new database with the default configuration, bootstrapped by the real binary: (the
/// database, its configuration file, a session).
async fn fresh(test: &str) -> (TestDb, PathBuf, tokio_postgres::Client) {
    bootstrapped_on(TestDb::new(test).await, "").await
}

/// As [`fresh`], on a server of its own (for a test whose long statements must not hold back
/// other tests' vacuum horizon), with `database_extra` in `[database]`.
async fn fresh_private(
    test: &str,
    database_extra: &str,
) -> (
    crate::support::Server,
    TestDb,
    PathBuf,
    tokio_postgres::Client,
) {
    let server = crate::support::private_server();
    let db = TestDb::on(&server, test).await;
    let (db, config, c) = bootstrapped_on(db, database_extra).await;
    (server, db, config, c)
}

async fn bootstrapped_on(
    db: TestDb,
    database_extra: &str,
) -> (TestDb, PathBuf, tokio_postgres::Client) {
    let config = db.write_config(database_extra, "");
    bootstrap_cli(&config);
    let c = db.client().await;
    (db, config, c)
}

/// `lines_hash` of every archive data file in `dir`, by file name.
fn archives_in(dir: &Path) -> Vec<(String, String)> {
    let mut v = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let n = e.file_name().into_string().unwrap();
        if n.ends_with(".pgcopy.zst") && !n.starts_with('.') {
            let mut bytes = Vec::new();
            zstd::Decoder::new(std::fs::File::open(e.path()).unwrap())
                .unwrap()
                .read_to_end(&mut bytes)
                .unwrap();
            v.push((n, lines_hash(&bytes)));
        }
    }
    v.sort();
    v
}

/// Issue item 1: the pass stops after verify; the detached table is changed (one row updated,
/// one deleted, one inserted: the count stays the same); the next pass must not drop it with
/// an archive that lacks the changes. Before the fix the table was dropped and the archive
/// held the old rows.
#[tokio::test]
async fn changes_after_the_archive_are_never_dropped_unarchived() {
    let (db, config, c) = fresh("changed_after_archive").await;
    let original = old_partition(&c, 8).await;
    let (code, out, err) = run_once(&config, &[("PARTWARDEN_FAILPOINT", "after_verify")]);
    assert_ne!(code, 0, "aborted at the failpoint: {out}{err}");
    let p = name(8);
    c.batch_execute(&format!(
        "UPDATE {p} SET outcomes = '[{{\"name\": \"1\", \"odds\": 9.99}}]' WHERE event_id = 10;
         DELETE FROM {p} WHERE event_id = 11;
         INSERT INTO {p} (id, event_id, bookmaker_slug, betpawa_market_id, line, outcomes, captured_at)
           VALUES (999999, 424242, 'betpawa', 'm1', NULL, '[]', '{}')",
        (start(8) + chrono::Duration::hours(1)).to_rfc3339()
    ))
    .await
    .unwrap();
    let changed = table_hash(&c, &p).await;
    assert_ne!(changed, original);
    assert!(changed.starts_with("3000:"), "same count: {changed}");

    let (code, out, err) = run_once(&config, &[]);
    assert_eq!(code, 0, "{out}{err}");
    let archives = archives_in(&table_dir(&db));
    if db.exists(&p).await {
        // Kept: acceptable, as long as it is reported.
        assert_eq!(table_hash(&c, &p).await, changed);
    } else {
        assert!(
            archives.iter().any(|(_, h)| *h == changed),
            "the table was dropped, so an archive must hold its changed rows: {archives:?}"
        );
    }
    assert!(
        archives.iter().any(|(_, h)| *h == original),
        "the first archive is kept, never overwritten: {archives:?}"
    );
}

/// Issue item 9: two expired partitions of the same name in two schemas. Before the fix both
/// went to the same file names, the second overwrote the first, and 7 rows were lost.
#[tokio::test]
async fn same_named_partitions_in_two_schemas_get_two_archives() {
    let (db, config, c) = fresh("two_schemas").await;
    let (lo8, lo7, lo6) = (start(8), start(7), start(7) + Months::new(1));
    c.batch_execute(&format!(
        "CREATE SCHEMA other;
         CREATE TABLE public.{n} PARTITION OF market_odds_history FOR VALUES FROM ('{lo8}') TO ('{lo7}');
         CREATE TABLE other.{n} PARTITION OF market_odds_history FOR VALUES FROM ('{lo7}') TO ('{lo6}');
         INSERT INTO market_odds_history (event_id, bookmaker_slug, betpawa_market_id, outcomes, captured_at)
           SELECT g, 'betpawa', 'm', '[]', '{lo8}'::timestamptz + g * interval '1 hour' FROM generate_series(1, 5) g;
         INSERT INTO market_odds_history (event_id, bookmaker_slug, betpawa_market_id, outcomes, captured_at)
           SELECT g, 'sportybet', 'm', '[]', '{lo7}'::timestamptz + g * interval '1 hour' FROM generate_series(1, 7) g;",
        n = name(8),
        lo8 = lo8.to_rfc3339(),
        lo7 = lo7.to_rfc3339(),
        lo6 = lo6.to_rfc3339(),
    ))
    .await
    .unwrap();
    let public = table_hash(&c, &format!("public.{}", name(8))).await;
    let other = table_hash(&c, &format!("other.{}", name(8))).await;
    let (code, out, err) = run_once(&config, &[]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("expired 2"), "{out}");
    let hashes: Vec<String> = archives_in(&table_dir(&db))
        .into_iter()
        .map(|(_, h)| h)
        .collect();
    assert!(hashes.contains(&public), "public's 5 rows: {hashes:?}");
    assert!(hashes.contains(&other), "other's 7 rows: {hashes:?}");
}

/// Issue item 12: archives hold odds history; run from a shell with umask 022 they were 0644
/// and their directories 0755.
#[tokio::test]
async fn archive_files_are_private_whatever_the_umask() {
    let (db, config, c) = fresh("archive_modes").await;
    old_partition(&c, 8).await;
    let mut cmd = std::process::Command::new("sh");
    cmd.arg("-c")
        .arg(format!(
            "umask 022; exec '{}' --config '{}' --run-once",
            env!("CARGO_BIN_EXE_partwarden"),
            path_str(&config)
        ))
        .env_remove("PARTWARDEN_CONFIG");
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let root = db.dir.path().join("archive");
    assert_eq!(mode(&root), 0o700, "archive_dir");
    assert_eq!(mode(&table_dir(&db)), 0o700, "the table's directory");
    let files: Vec<PathBuf> = std::fs::read_dir(table_dir(&db))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 2, "{files:?}");
    for f in files {
        assert_eq!(mode(&f), 0o600, "{}", f.display());
    }
}

/// Issue item 10: the archive_command timeout killed only `sh`; its children lived on.
#[tokio::test]
async fn archive_command_timeout_kills_the_whole_process_group() {
    let db = TestDb::new("archive_command_group").await;
    let pidfile = db.dir.path().join("child.pid");
    // Keys after the harness's [maintenance] table land in it.
    let config = db.write_config(
        "",
        &format!(
            "archive_command = \"sleep 300 & echo $! > {} ; wait ; : %p\"\narchive_command_timeout = \"1s\"\n",
            pidfile.display()
        ),
    );
    bootstrap_cli(&config);
    let c = db.client().await;
    old_partition(&c, 8).await;
    let (code, out, err) = run_once(&config, &[]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains("archive_command failed"), "{out}");
    let pid: i32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let mut alive = true;
    for _ in 0..50 {
        let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // Gone, or a zombie waiting for init to reap it.
        alive = !state.is_empty() && !state.contains(") Z ");
        if !alive {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    if alive {
        let _ = std::process::Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status();
    }
    assert!(
        !alive,
        "the command's child {pid} outlived the timeout (only sh was killed)"
    );
}

/// Issue item 11: the archive's COPY ran under the session's statement_timeout, so a
/// partition too large to stream within it could never be archived.
#[tokio::test]
async fn a_partition_larger_than_statement_timeout_still_archives() {
    let (server, db, config, c) =
        fresh_private("archive_timeout", "statement_timeout = \"400ms\"").await;
    let (lo, hi) = (start(8), start(7));
    c.batch_execute(&format!(
        "CREATE TABLE {n} PARTITION OF market_odds_history FOR VALUES FROM ('{lo}') TO ('{hi}');
         INSERT INTO {n} (event_id, bookmaker_slug, betpawa_market_id, line, outcomes, captured_at)
           SELECT g, 'betpawa', 'market-' || g % 97, g % 5,
                  jsonb_build_array(jsonb_build_object('name', 'home', 'odds', 1 + g % 90 / 10.0),
                                    jsonb_build_object('name', 'away', 'odds', 2 + g % 70 / 10.0)),
                  '{lo}'::timestamptz + g * interval '1 second'
           FROM generate_series(1, 400000) g",
        n = name(8),
        lo = lo.to_rfc3339(),
        hi = hi.to_rfc3339()
    ))
    .await
    .unwrap();
    let expected = table_hash(&c, &name(8)).await;
    // Under load the DETACH CONCURRENTLY may itself outlast the 400 ms statement_timeout; the
    // next pass finalizes it. The archive's COPY, before the fix, failed on every pass.
    let mut outs = String::new();
    for _ in 0..3 {
        let (code, out, err) = run_once(&config, &[]);
        outs.push_str(&out);
        outs.push_str(&err);
        if code == 0 && !db.exists(&name(8)).await {
            break;
        }
    }
    assert!(!db.exists(&name(8)).await, "{outs}");
    let archives = archives_in(&table_dir(&db));
    assert!(archives.iter().any(|(_, h)| *h == expected), "{archives:?}");
    server.stop();
}

/// Issue item 1, the drop's own lock: a row changed while the pass is between verify and drop
/// (paused there) keeps the table; the ledger and `--check` say why; the next pass writes a
/// second archive version beside the first and drops the table then.
#[tokio::test]
async fn a_change_just_before_the_drop_is_caught_under_its_lock() {
    let (db, config, c) = fresh("changed_before_drop").await;
    let original = old_partition(&c, 8).await;
    let p = name(8);
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_partwarden"))
        .args(["--config", path_str(&config), "--run-once"])
        .env_remove("PARTWARDEN_CONFIG")
        .env("PARTWARDEN_PAUSEPOINT", "before_drop:4000")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the pass is in its pause (the partition is detached and archived by then).
    let log = std::time::Instant::now();
    loop {
        let verified: bool = c
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM partwarden.partition_events WHERE partition_name = $1 AND step = 'verify' AND finished_at IS NOT NULL)",
                &[&p],
            )
            .await
            .unwrap()
            .get(0);
        if verified {
            break;
        }
        assert!(log.elapsed() < Duration::from_secs(30), "never verified");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    c.batch_execute(&format!("UPDATE {p} SET line = 42 WHERE event_id = 7"))
        .await
        .unwrap();
    let changed = table_hash(&c, &p).await;
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("changed after its archive was written"),
        "{stdout}"
    );
    assert!(db.exists(&p).await, "kept");
    assert_eq!(table_hash(&c, &p).await, changed);
    let (code, check, _) = partwarden(&["--config", path_str(&config), "--check"], &[]);
    assert_eq!(code, 2, "critical: {check}");
    assert!(check.contains("changed after its archive"), "{check}");

    let (code, out, err) = run_once(&config, &[]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(!db.exists(&p).await, "{out}");
    let archives = archives_in(&table_dir(&db));
    assert_eq!(
        archives,
        vec![
            (format!("public.{p}.pgcopy.zst"), original),
            (format!("public.{p}.v2.pgcopy.zst"), changed),
        ]
    );
}

/// Runs the real binary under libfaketime with its clock shifted by `offset` (`+240d`).
fn partwarden_at(offset: &str, args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new("faketime")
        .args(["-f", offset, env!("CARGO_BIN_EXE_partwarden")])
        .args(args)
        .env_remove("PARTWARDEN_CONFIG")
        .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
        .env("RUST_LOG", "info")
        .output()
        .expect("faketime (Debian package faketime) runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Issue item 3: expiry was planned from the host's clock. A host clock months ahead expired
/// the partition being written now; `--dry-run --now` showed its DETACH and DROP.
#[tokio::test]
async fn a_host_clock_months_ahead_expires_nothing() {
    let (db, config, c) = fresh("clock_ahead").await;
    let current = name(0);
    c.batch_execute(
        "INSERT INTO market_odds_history (event_id, bookmaker_slug, betpawa_market_id, outcomes, captured_at)
         VALUES (1, 'betpawa', 'm', '[]', now())",
    )
    .await
    .unwrap();
    let before = crate::support::catalog_dump(&c).await;

    // A dry run told that it is 8 months later plans no expiry of the current month.
    let (code, out, err) =
        crate::support::dry_run_pass_at(&config, chrono::Utc::now() + Months::new(8));
    assert!(code == 0 || code == 1, "{out}{err}");
    assert!(
        !out.contains(&format!("DETACH PARTITION \"public\".\"{current}\"")),
        "the partition holding the server's now() is never expired: {out}"
    );

    // The host clock 8 months ahead: no DDL at all, and a clear error.
    let (code, out, err) = partwarden_at("+240d", &["--config", path_str(&config), "--run-once"]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        out.contains("clock") && out.contains("max_clock_skew"),
        "{out}{err}"
    );
    assert_eq!(
        crate::support::catalog_dump(&c).await,
        before,
        "nothing changed"
    );
    assert!(db.exists(&current).await);

    // --check says critical, naming the clocks.
    let (code, out, _) = partwarden_at("+240d", &["--config", path_str(&config), "--check"]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("clock"), "{out}");
    // And with the clocks in agreement, all is well.
    let (code, out, err) = partwarden(&["--config", path_str(&config), "--run-once"], &[]);
    assert_eq!(code, 0, "{out}{err}");
}

/// An expired and archived partition 8 months ago; returns (config, manifest path, rows hash).
async fn archived(db: &TestDb) -> (PathBuf, PathBuf, String) {
    let config = db.write_config("", "");
    bootstrap_cli(&config);
    let c = db.client().await;
    let hash = old_partition(&c, 8).await;
    let (code, out, err) = run_once(&config, &[]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(!db.exists(&name(8)).await);
    let manifest = table_dir(db).join(format!("public.{}.manifest.json", name(8)));
    assert!(manifest.exists());
    (config, manifest, hash)
}

/// Rewrites the manifest at `path` with `edit` applied to its JSON.
fn edit_manifest(path: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    edit(&mut v);
    std::fs::write(path, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
}

fn restore(config: &Path, manifest: &Path, extra: &[&str]) -> (i32, String, String) {
    let mut args = vec![
        "--config",
        path_str(config),
        "--restore",
        path_str(manifest),
    ];
    args.extend_from_slice(extra);
    partwarden(&args, &[])
}

/// Issue item 2: a manifest is untrusted input. A column type written as
/// `bigint check (<expression>)` passed the character filter, went into CREATE TABLE, and its
/// expression ran for every restored row (here: it would create large object 4242).
#[tokio::test]
async fn restore_never_runs_sql_from_a_manifest() {
    let db = TestDb::new("restore_hostile_type").await;
    let (config, manifest, _) = archived(&db).await;
    edit_manifest(&manifest, |m| {
        m["columns"][1]["type"] = "bigint check (lo_create(4242) is not null)".into();
    });
    let (code, out, err) = restore(&config, &manifest, &[]);
    let c = db.client().await;
    let lo: i64 = c
        .query_one(
            "SELECT count(*) FROM pg_largeobject_metadata WHERE oid = 4242",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(lo, 0, "the manifest's expression ran: {out}{err}");
    assert_ne!(code, 0, "an unknown type is refused: {out}{err}");
    assert!(err.contains("type"), "{err}");
    assert!(!db.exists(&format!("partwarden_archive.{}", name(8))).await);
}

/// Issue item 2: the manifest's schema field chose where the restored table went, and the
/// table was attached to the live parent from there.
#[tokio::test]
async fn restore_goes_only_to_the_tables_schema_or_partwarden_archive() {
    let db = TestDb::new("restore_schema").await;
    let (config, manifest, hash) = archived(&db).await;
    edit_manifest(&manifest, |m| {
        m["partition_schema"] = "partwarden".into();
    });
    let (code, out, err) = restore(&config, &manifest, &[]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        !db.exists(&format!("partwarden.{}", name(8))).await,
        "restored into the manifest's schema: {out}"
    );
    assert!(out.contains(&format!("public.{}", name(8))), "{out}");
    let c = db.client().await;
    assert_eq!(table_hash(&c, &format!("public.{}", name(8))).await, hash);
}

/// Issue item 2: the manifest's table must be a configured table, unless the operator names
/// the target on the command line.
#[tokio::test]
async fn restore_refuses_a_table_that_is_not_configured_unless_named() {
    let db = TestDb::new("restore_unconfigured").await;
    let (config, manifest, hash) = archived(&db).await;
    edit_manifest(&manifest, |m| {
        m["table"] = "public.somebody_elses".into();
    });
    let (code, out, err) = restore(&config, &manifest, &[]);
    assert_ne!(code, 0, "{out}{err}");
    assert!(err.contains("not a configured table"), "{err}");
    assert!(!db.exists(&format!("partwarden_archive.{}", name(8))).await);
    // Named by the operator: it goes where the operator said.
    let (code, out, err) = restore(
        &config,
        &manifest,
        &["--target", "public.market_odds_history"],
    );
    assert_eq!(code, 0, "{out}{err}");
    let c = db.client().await;
    assert_eq!(table_hash(&c, &format!("public.{}", name(8))).await, hash);
}

/// Issue "also, from reading": `--restore /dev/zero` read an unbounded manifest.
#[tokio::test]
async fn restore_of_an_endless_file_fails_at_once() {
    let db = TestDb::new("restore_dev_zero").await;
    let config = db.write_config("", "");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_partwarden"))
        .args(["--config", path_str(&config), "--restore", "/dev/zero"])
        .env_remove("PARTWARDEN_CONFIG")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s);
        }
        if started.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let status = status.expect("--restore /dev/zero still reading after 10 s");
    assert_eq!(status.code(), Some(1));
}

/// Issue item 2: the data loaded is the data verified. A data file that does not match its
/// manifest (here: a row appended, and the manifest's size and SHA-256 left as they were)
/// leaves nothing behind.
#[tokio::test]
async fn restore_of_a_file_that_does_not_match_leaves_nothing() {
    let db = TestDb::new("restore_mismatch").await;
    let (config, manifest, _) = archived(&db).await;
    let data = manifest.with_file_name(format!("public.{}.pgcopy.zst", name(8)));
    let mut bytes = Vec::new();
    zstd::Decoder::new(std::fs::File::open(&data).unwrap())
        .unwrap()
        .read_to_end(&mut bytes)
        .unwrap();
    bytes.extend_from_slice(b"424242\t1\tbetpawa\tm\t\\N\t[]\t2020-01-01 00:00:00+00\n");
    std::fs::remove_file(&data).unwrap();
    std::fs::write(&data, zstd::encode_all(&bytes[..], 3).unwrap()).unwrap();
    let (code, out, err) = restore(&config, &manifest, &[]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("does not verify"), "{err}");
    assert!(!db.exists(&name(8)).await);
    assert!(!db.exists(&format!("partwarden_archive.{}", name(8))).await);
}

/// Issue item 7b: passwords with `?` in URL form and `password = x` (spaces) in key=value form
/// were printed in configuration errors, which `--check` puts on stdout.
#[tokio::test]
async fn odd_passwords_never_reach_any_output() {
    let db = TestDb::new("odd_passwords").await;
    let secret_q = "Zq?pw/x&y=1";
    let secret_kv = "Zk\\ey s=3";
    let cases = [
        // A URL password with `?`, and a bad port so that validation fails.
        format!("[database]\nurl = \"postgresql://postgres:{secret_q}@127.0.0.1:notaport/odds\"\n"),
        // Unreachable, so that the connection error is reported.
        format!(
            "[database]\nurl = \"postgresql://postgres:{secret_q}@127.0.0.1:1/odds\"\nconnect_timeout = \"1s\"\n"
        ),
        // key=value with spaces around `=` and an escaped space in the value.
        format!(
            "[database]\nurl = \"host=127.0.0.1 port=notaport password = {}\"\n",
            secret_kv.replace('\\', "\\\\")
        ),
        format!(
            "[database]\nurl = \"host=127.0.0.1 port=1 password = {} dbname=odds\"\nconnect_timeout = \"1s\"\n",
            secret_kv.replace('\\', "\\\\")
        ),
    ];
    let visible = ["Zq?pw", "x&y=1", "Zk", "ey s=3", "s=3"];
    for (i, text) in cases.iter().enumerate() {
        let path = db.dir.path().join(format!("odd{i}.toml"));
        std::fs::write(&path, text).unwrap();
        for args in [
            vec!["--check"],
            vec!["--run-once"],
            vec!["--bootstrap", "--dry-run"],
        ] {
            let mut all = vec!["--config", path_str(&path)];
            all.extend(args.iter().copied());
            let (_, out, err) = partwarden(&all, &[]);
            for v in visible {
                assert!(
                    !out.contains(v) && !err.contains(v),
                    "case {i} {args:?} shows {v:?}:\n{out}{err}"
                );
            }
        }
    }
}

/// Issue item 7a: archive_command inherited the whole environment, PGPASSWORD and the
/// database URL with its password among it.
#[tokio::test]
async fn archive_command_gets_no_database_secret() {
    let db = TestDb::new("archive_command_env").await;
    let seen = db.dir.path().join("env.txt");
    let config = db.write_config(
        "",
        &format!("archive_command = \"env > {} ; : %p\"\n", seen.display()),
    );
    bootstrap_cli(&config);
    let c = db.client().await;
    old_partition(&c, 8).await;
    // The harness's server trusts local connections: the password is carried, not checked.
    let with_password = format!("{} password=Zs3cretZ", db.url);
    let (code, out, err) = run_once(
        &config,
        &[
            ("PGPASSWORD", "Zs3cretZ"),
            ("PARTWARDEN__DATABASE__URL", &with_password),
            ("SOME_TOOL_DSN", &with_password),
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    let env = std::fs::read_to_string(&seen).unwrap();
    assert!(!env.is_empty());
    assert!(!env.contains("Zs3cretZ"), "{env}");
    assert!(
        !env.contains("PGPASSWORD") && !env.contains("PARTWARDEN__"),
        "{env}"
    );
    assert!(
        env.contains("PATH="),
        "the rest of the environment is kept: {env}"
    );
}

/// What a probe saw while a pass ran: its longest statement, how many it ran, how many failed.
struct Probed {
    worst: Duration,
    n: u32,
    failed: u32,
}

/// Runs `--run-once` on a blocking thread while a reader and a writer run their statement
/// every 5 ms on sessions of their own: a cheap reader of the parent that opens every
/// partition, the DEFAULT one included (an index probe in each), so that its time is the time
/// it waits for locks; and a writer of the current month. Returns the pass's (code, stdout,
/// stderr) and what the reader and the writer saw.
async fn pass_under_load(db: &TestDb, config: &Path) -> ((i32, String, String), Probed, Probed) {
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let probe = |sql: &'static str| {
        let stop = stop.clone();
        let url = db.url.clone();
        tokio::spawn(async move {
            let c = crate::support::connect(&url).await;
            let mut p = Probed {
                worst: Duration::ZERO,
                n: 0,
                failed: 0,
            };
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let t = std::time::Instant::now();
                if c.batch_execute(sql).await.is_err() {
                    p.failed += 1;
                }
                p.worst = p.worst.max(t.elapsed());
                p.n += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            p
        })
    };
    let reader = probe(
        "SELECT 1 FROM market_odds_history WHERE event_id = -1 AND betpawa_market_id = 'none' LIMIT 1",
    );
    let writer = probe(
        "INSERT INTO market_odds_history (event_id, bookmaker_slug, betpawa_market_id, outcomes, captured_at) \
         VALUES (1, 'betpawa', 'w', '[]', now())",
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let pass_config = config.to_path_buf();
    let pass = tokio::task::spawn_blocking(move || run_once(&pass_config, &[]))
        .await
        .unwrap();
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    (pass, reader.await.unwrap(), writer.await.unwrap())
}

/// Issue item 8: rows moved out of a DEFAULT partition of 1M rows. The ATTACH that followed
/// the move held ACCESS EXCLUSIVE on the DEFAULT partition while it scanned it (and built the
/// new partition's indexes): readers of the parent waited 2.5-2.9 s. Now readers and writers
/// never wait longer than lock_timeout (200 ms) + 50 ms.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moving_a_million_default_rows_blocks_neither_readers_nor_writers() {
    let (server, db, config, c) = fresh_private("default_million", "").await;
    // Three months ago has a partition, two months ago none: its rows went to the DEFAULT
    // partition, and the pass fills the hole.
    let (lo, hi) = (start(2), start(1));
    c.batch_execute(&format!(
        "CREATE TABLE {older} PARTITION OF market_odds_history FOR VALUES FROM ('{lo3}') TO ('{lo}');
         CREATE TABLE market_odds_history_default PARTITION OF market_odds_history DEFAULT;
         INSERT INTO market_odds_history (event_id, bookmaker_slug, betpawa_market_id, line, outcomes, captured_at)
           SELECT g % 5000, 'betpawa', 'm' || g % 40, NULL, '[]',
                  '{lo}'::timestamptz + (g % 2000000) * interval '1 second'
           FROM generate_series(1, 1000000) g;
         ANALYZE market_odds_history_default;",
        older = name(3),
        lo3 = start(3).to_rfc3339(),
        lo = lo.to_rfc3339(),
    ))
    .await
    .unwrap();
    assert!(!db.exists(&name(2)).await);
    let ((code, out, err), read, write) = pass_under_load(&db, &config).await;
    let (read_worst, reads, write_worst, writes) = (read.worst, read.n, write.worst, write.n);
    assert_eq!(read.failed + write.failed, 0);
    assert_eq!(code, 0, "{out}{err}");
    assert!(db.exists(&name(2)).await, "{out}");
    let moved: i64 = c
        .query_one(&format!("SELECT count(*) FROM {}", name(2)), &[])
        .await
        .unwrap()
        .get(0);
    let left: i64 = c
        .query_one(
            &format!(
                "SELECT count(*) FROM market_odds_history_default WHERE captured_at >= '{}' AND captured_at < '{}'",
                lo.to_rfc3339(),
                hi.to_rfc3339()
            ),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 0);
    assert!(moved > 900_000, "{moved}");
    let bound = Duration::from_millis(250);
    eprintln!(
        "moved {moved} rows; readers waited up to {read_worst:?} ({reads} reads), writers {write_worst:?} ({writes} writes)"
    );
    assert!(
        read_worst <= bound && write_worst <= bound,
        "readers waited up to {read_worst:?} ({reads} reads), writers {write_worst:?} ({writes} writes): {err}"
    );
    server.stop();
}

/// Issue item 8, the period being written now: its rows are in the DEFAULT partition and
/// writes keep arriving. The drain (src/drain.rs) copies them unseen and swaps the period's
/// partition in at once: no write fails, nobody waits longer than lock_timeout + 50 ms, and
/// nothing of the period is left in the DEFAULT partition.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_period_being_written_is_drained_without_blocking() {
    let (server, db, config, c) = fresh_private("default_current", "").await;
    let current = name(0);
    c.batch_execute(&format!(
        "DROP TABLE {current};
         CREATE TABLE market_odds_history_default PARTITION OF market_odds_history DEFAULT;
         INSERT INTO market_odds_history (event_id, bookmaker_slug, betpawa_market_id, outcomes, captured_at)
           SELECT g % 5000, 'betpawa', 'm' || g % 40, '[]', now() - interval '6 minutes' - g * interval '1 second'
           FROM generate_series(1, 200000) g
           WHERE now() - interval '6 minutes' - g * interval '1 second' >= '{start}';",
        start = start(0).to_rfc3339()
    ))
    .await
    .unwrap();
    let before: i64 = c
        .query_one("SELECT count(*) FROM market_odds_history", &[])
        .await
        .unwrap()
        .get(0);
    let ((code, out, err), read, write) = pass_under_load(&db, &config).await;
    let (read_worst, reads, read_failed) = (read.worst, read.n, read.failed);
    let (write_worst, writes, write_failed) = (write.worst, write.n, write.failed);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(write_failed, 0, "writes failed during the pass");
    assert_eq!(read_failed, 0);
    let bound = Duration::from_millis(250);
    eprintln!(
        "current period: readers waited up to {read_worst:?} ({reads}), writers {write_worst:?} ({writes}, {write_failed} failed)"
    );
    assert!(
        read_worst <= bound && write_worst <= bound,
        "readers waited up to {read_worst:?} ({reads}), writers {write_worst:?} ({writes})"
    );
    assert!(out.contains("drained"), "{out}");
    assert!(db.exists(&current).await);
    // Nothing lost, and nothing of the period left in the DEFAULT partition.
    let after: i64 = c
        .query_one("SELECT count(*) FROM market_odds_history WHERE bookmaker_slug = 'betpawa' AND betpawa_market_id <> 'w'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(after, before);
    let left: i64 = c
        .query_one("SELECT count(*) FROM ONLY market_odds_history_default", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 0);
    server.stop();
}
