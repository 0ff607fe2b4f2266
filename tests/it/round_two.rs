//! Issue "Nothing lost, nothing hung, round two": defects two reviews reproduced, each as a
//! test against the real binary and a real PostgreSQL, seen failing on the code before its fix.

use crate::faults::start;
use crate::support::{TestDb, partwarden, path_str};

/// Item 11: `max_expired_per_pass` bounded each table, not the pass. With 4 tables of 3
/// expired partitions each and a limit of 3, one pass expired 12. Now 3 in all, the oldest
/// data first.
#[tokio::test]
async fn max_expired_per_pass_bounds_the_whole_pass() {
    let db = TestDb::new("round2_max_expired").await;
    let c = db.client().await;
    let mut tables = String::new();
    for i in 1..=4u32 {
        c.batch_execute(&format!(
            "CREATE TABLE t{i} (id bigserial, at timestamptz NOT NULL, PRIMARY KEY (id, at)) PARTITION BY RANGE (at);"
        ))
        .await
        .unwrap();
        for back in [8u32, 9, 10] {
            // Table 3's data is the oldest: its partitions are a year older.
            let back = if i == 3 { back + 12 } else { back };
            let (lo, hi) = (start(back).to_rfc3339(), start(back - 1).to_rfc3339());
            c.batch_execute(&format!(
                "CREATE TABLE t{i}_b{back} PARTITION OF t{i} FOR VALUES FROM ('{lo}') TO ('{hi}');
                 INSERT INTO t{i} (at) VALUES ('{lo}');"
            ))
            .await
            .unwrap();
        }
        tables += &format!(
            "[[tables]]\nname = \"public.t{i}\"\npartition_key = \"at\"\ninterval = \"monthly\"\npremake = 1\nretention = \"6 months\"\n"
        );
    }
    let config = db.write_config("", &tables);
    let text = std::fs::read_to_string(&config).unwrap().replace(
        "archive_dir = \"archive\"\n",
        "archive_dir = \"archive\"\nmax_expired_per_pass = 3\n",
    );
    std::fs::write(&config, text).unwrap();
    let (code, out, err) = partwarden(&["--config", path_str(&config), "--bootstrap"], &[]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = partwarden(&["--config", path_str(&config), "--run-once"], &[]);
    assert_eq!(code, 0, "{out}{err}");
    let left = |i: u32| {
        let c = &c;
        async move {
            c.query_one(
                &format!("SELECT count(*) FROM pg_inherits WHERE inhparent = 't{i}'::regclass AND inhrelid::regclass::text LIKE 't{i}_b%'"),
                &[],
            )
            .await
            .unwrap()
            .get::<_, i64>(0)
        }
    };
    let mut total = 0;
    for i in 1..=4 {
        total += left(i).await;
    }
    assert_eq!(total, 12 - 3, "{out}");
    assert_eq!(left(3).await, 0, "the oldest data goes first: {out}");
}

/// Item 1: the first pass on an existing database detached the partitions past the retention,
/// then failed to archive them (the archive directory could not be created): the application
/// lost sight of their rows (`count(*)` went from 120,001 to 1). Now a pre-flight proves the
/// archive can be written before anything is detached: nothing is detached, the pass says why,
/// and `--check` is critical. With a directory, the same pass archives and drops.
#[tokio::test]
async fn a_pass_that_cannot_archive_detaches_nothing() {
    let db = TestDb::new("round2_preflight").await;
    let config = db.write_config("", "");
    crate::support::bootstrap_cli(&config);
    let c = db.client().await;
    let hash = crate::faults::old_partition(&c, 8).await;
    let before: i64 = c
        .query_one("SELECT count(*) FROM market_odds_history", &[])
        .await
        .unwrap()
        .get(0);
    // The archive directory's parent is a regular file: the directory cannot be created (as
    // /var/lib/partwarden/archive could not by the partwarden user before systemd made it).
    let blocker = db.dir.path().join("not-a-dir");
    std::fs::write(&blocker, b"x").unwrap();
    let text = std::fs::read_to_string(&config).unwrap().replace(
        "archive_dir = \"archive\"",
        &format!("archive_dir = \"{}/archive\"", blocker.display()),
    );
    std::fs::write(&config, &text).unwrap();
    let (code, out, err) = partwarden(&["--config", path_str(&config), "--run-once"], &[]);
    assert_ne!(code, 0, "{out}{err}");
    assert!(out.contains("not detached"), "{out}{err}");
    let after: i64 = c
        .query_one("SELECT count(*) FROM market_odds_history", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(after, before, "the application still sees every row");
    assert!(crate::faults::attached(&c, &crate::faults::name(8)).await);
    let (code, check, _) = partwarden(&["--config", path_str(&config), "--check"], &[]);
    assert_eq!(code, 2, "{check}");
    // The directory possible again: the next pass archives and drops.
    std::fs::remove_file(&blocker).unwrap();
    let (code, out, err) = partwarden(&["--config", path_str(&config), "--run-once"], &[]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(!crate::faults::attached(&c, &crate::faults::name(8)).await);
    let dir = blocker.join("archive").join("public.market_odds_history");
    assert_eq!(
        crate::faults::archive_hash(&dir, &crate::faults::name(8)).as_deref(),
        Some(hash.as_str())
    );
}

/// Item 3: a pass deadlocked for ever when the archive writer stopped early. `write_data`
/// awaited COMMIT with the COPY stream still alive and unread: the server waited to send the
/// rest of the COPY, the client for COMMIT's answer. Reproduced here with a full disk (a file
/// size limit, SIGXFSZ ignored) on a 30 MB partition, larger than the channel and the socket
/// buffers; before the fix the pass never ended (`timeout` killed it, exit 124). Now it fails
/// within seconds with the table intact.
#[tokio::test]
async fn a_full_disk_during_a_large_archive_fails_promptly() {
    let db = TestDb::new("round2_full_disk").await;
    let config = db.write_config("", "");
    crate::support::bootstrap_cli(&config);
    let c = db.client().await;
    let name = crate::faults::name(8);
    crate::faults::old_partition(&c, 8).await;
    c.execute(
        "INSERT INTO market_odds_history (event_id, bookmaker_slug, betpawa_market_id, outcomes, captured_at) \
         SELECT g, 'betpawa', 'wide', jsonb_build_array((SELECT string_agg(md5((g * 100 + i)::text), '') FROM generate_series(1, 12) i)), \
                $1::timestamptz + g * interval '1 second' \
         FROM generate_series(1, 70000) g",
        &[&start(8)],
    )
    .await
    .unwrap();
    let hash = crate::faults::table_hash(&c, &name).await;
    let started = std::time::Instant::now();
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "trap '' XFSZ; ulimit -f 1024; exec timeout 120 {} --config {} --run-once",
            env!("CARGO_BIN_EXE_partwarden"),
            path_str(&config)
        ))
        .output()
        .unwrap();
    let elapsed = started.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        elapsed < std::time::Duration::from_secs(60),
        "took {elapsed:?}"
    );
    assert_eq!(crate::faults::table_hash(&c, &name).await, hash, "intact");
    // Space again: the next pass archives and drops it.
    let (code, out, err) = partwarden(&["--config", path_str(&config), "--run-once"], &[]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(!crate::faults::attached(&c, &name).await);
}
