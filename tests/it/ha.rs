//! High-availability PostgreSQL: a standby is never sent DDL, multi-host URLs reach the primary.

use std::time::{Duration, Instant};

use crate::support::{TestDb, partwarden, path_str, private_server, standby_of};

/// Waits until the standby has replayed the primary's bootstrap (the ledger table exists).
async fn wait_replayed(url: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok((c, conn)) = url
            .parse::<tokio_postgres::Config>()
            .unwrap()
            .connect(tokio_postgres::NoTls)
            .await
        {
            tokio::spawn(conn);
            let ok: bool = c
                .query_one(
                    "SELECT to_regclass('partwarden.partition_events') IS NOT NULL",
                    &[],
                )
                .await
                .map(|r| r.get(0))
                .unwrap_or(false);
            if ok {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the standby did not replay the bootstrap"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn a_standby_gets_no_ddl_and_a_multi_host_url_reaches_the_primary() {
    let primary = private_server();
    let db = TestDb::on(&primary, "ha").await;
    let config = db.write_config("", "");
    assert_eq!(
        partwarden(&["--config", path_str(&config), "--bootstrap"], &[]).0,
        0
    );
    let standby = standby_of(&primary);
    let standby_url = format!(
        "host=127.0.0.1 port={} user=postgres dbname={}",
        standby.port, db.name
    );
    wait_replayed(&standby_url).await;

    // Pointed at the standby: refused, with the reason, before any DDL.
    let standby_config = db.dir.path().join("standby.toml");
    std::fs::write(
        &standby_config,
        std::fs::read_to_string(&config)
            .unwrap()
            .replace(&db.url, &standby_url),
    )
    .unwrap();
    for mode in ["--bootstrap", "--run-once"] {
        let (code, out, err) = partwarden(&["--config", path_str(&standby_config), mode], &[]);
        assert_eq!(code, 1, "{mode}: {out}{err}");
        assert!(err.contains("in recovery"), "{mode}: {err}");
    }
    let (code, out, _) = partwarden(&["--config", path_str(&standby_config), "--check"], &[]);
    assert!(
        out.lines()
            .any(|l| l.starts_with("WARN connection") && l.contains("in recovery")),
        "{out}"
    );
    assert!(
        out.lines()
            .any(|l| l.starts_with("WARN routing") && l.contains("in recovery")),
        "{out}"
    );
    assert!(!out.contains("UNKN"), "{out}");
    assert!(code >= 1);

    // Both hosts listed, standby first: target_session_attrs=read-write picks the primary.
    let multi = format!(
        "host=127.0.0.1,127.0.0.1 port={},{} user=postgres dbname={} target_session_attrs=read-write",
        standby.port, primary.port, db.name
    );
    std::fs::write(
        &standby_config,
        std::fs::read_to_string(&config)
            .unwrap()
            .replace(&db.url, &multi),
    )
    .unwrap();
    let (code, out, err) = partwarden(&["--config", path_str(&standby_config), "--run-once"], &[]);
    assert_eq!(code, 0, "{out}{err}");
    standby.stop();
    primary.stop();
}
