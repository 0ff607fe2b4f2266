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

/// The address the daemon logged for its metrics endpoint, the `n`-th time (0: the first).
fn metrics_address(log: &str, n: usize) -> Option<String> {
    log.split("serving Prometheus metrics on /metrics address=")
        .nth(n + 1)
        .and_then(|rest| rest.split_whitespace().next())
        .map(str::to_string)
}

/// A daemon with `market_odds_history` and `side_log` configured and a metrics endpoint, after
/// its first pass: (the daemon, its configuration, the endpoint's address).
async fn daemon_with_two_tables(
    db: &TestDb,
) -> (crate::daemon::Daemon, std::path::PathBuf, String) {
    let c = db.client().await;
    c.batch_execute(
        "CREATE TABLE side_log (id bigserial, at timestamptz NOT NULL, PRIMARY KEY (id, at)) PARTITION BY RANGE (at)",
    )
    .await
    .unwrap();
    let config = crate::daemon::daemon_config(
        db,
        &format!("[metrics]\nlisten = \"127.0.0.1:0\"\n{TWO_TABLES}"),
    );
    let d = crate::daemon::Daemon::start(&config, db.dir.path().join("daemon.log"), &[]);
    assert!(
        d.wait_log(
            "maintenance pass finished",
            1,
            std::time::Duration::from_secs(15)
        ),
        "{}",
        d.log()
    );
    let addr = metrics_address(&d.log(), 0).expect("metrics address logged");
    assert!(
        crate::daemon::http_get(&addr, "/metrics")
            .contains("partwarden_runway_periods{table=\"public.side_log\"}")
    );
    (d, config, addr)
}

/// Rewrites the configuration with `edit`, sends SIGHUP and waits for the reload.
fn reload(d: &crate::daemon::Daemon, config: &std::path::Path, edit: impl Fn(String) -> String) {
    let text = edit(std::fs::read_to_string(config).unwrap());
    std::fs::write(config, text).unwrap();
    d.signal("HUP");
    assert!(
        d.wait_log(
            "configuration reloaded",
            1,
            std::time::Duration::from_secs(5)
        ),
        "{}",
        d.log()
    );
}

const TWO_TABLES: &str = "[[tables]]\nname = \"public.market_odds_history\"\npartition_key = \"captured_at\"\ninterval = \"monthly\"\npremake = 3\n\
                          [[tables]]\nname = \"public.side_log\"\npartition_key = \"at\"\ninterval = \"monthly\"\npremake = 2\n";

const SIDE_LOG: &str = "[[tables]]\nname = \"public.side_log\"\npartition_key = \"at\"\ninterval = \"monthly\"\npremake = 2\n";

/// Item 12: after a SIGHUP that removed a table from the configuration, its gauges stayed
/// exported with frozen values until restart, and `PartwardenWritesFailSoon` paged for a table
/// nobody manages. Now the reload removes them.
#[tokio::test]
async fn a_reload_forgets_the_gauges_of_a_removed_table() {
    let db = TestDb::new("round2_reload_gauges").await;
    let (mut d, config, addr) = daemon_with_two_tables(&db).await;
    reload(&d, &config, |text| text.replace(SIDE_LOG, ""));
    let metrics = crate::daemon::http_get(&addr, "/metrics");
    assert!(!metrics.contains("public.side_log"), "{metrics}");
    assert!(metrics.contains("partwarden_runway_periods{table=\"public.market_odds_history\"}"));
    d.signal("TERM");
    assert_eq!(d.wait_exit(std::time::Duration::from_secs(10)), Some(0));
}

/// Item 13: a reload whose `metrics.listen` could not be bound stopped the running endpoint
/// while logging "configuration reloaded", so `PartwardenDown` fired on a healthy daemon. Now
/// the new address is bound first, and on failure the running endpoint keeps serving.
#[tokio::test]
async fn a_reload_keeps_the_metrics_endpoint_it_cannot_move() {
    let db = TestDb::new("round2_reload_listen").await;
    let (mut d, config, addr) = daemon_with_two_tables(&db).await;
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = format!("listen = \"{}\"", busy.local_addr().unwrap());
    reload(&d, &config, |text| {
        text.replace("listen = \"127.0.0.1:0\"", &taken)
    });
    let metrics = crate::daemon::http_get(&addr, "/metrics");
    assert!(
        metrics.starts_with("HTTP/1.0 200 OK"),
        "the running endpoint still serves: {metrics}"
    );
    assert!(
        d.log().contains("metrics endpoint not moved"),
        "{}",
        d.log()
    );
    d.signal("TERM");
    assert_eq!(d.wait_exit(std::time::Duration::from_secs(10)), Some(0));
}
