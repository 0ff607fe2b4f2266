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
