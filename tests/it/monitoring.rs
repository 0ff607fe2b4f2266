//! The operator's kit against the real tools: a real Prometheus (Debian's package) scrapes a
//! running daemon with `monitoring/partwarden.rules.yml` loaded; the target is up, every
//! documented series is there, every expression of the Grafana dashboard evaluates (with data),
//! and an alert fires when the state behind it is made true, then resolves after a pass.

use std::path::Path;
use std::time::{Duration, Instant};

use chrono::Utc;
use partwarden::period::Interval;
use partwarden_testkit::Prometheus;

use crate::daemon::Daemon;
use crate::support::{TestDb, bootstrap_cli};

/// The series partwarden documents (README, "Operating partwarden"), as Prometheus names them.
pub(crate) const DOCUMENTED: &[&str] = &[
    "partwarden_runway_periods",
    "partwarden_premake_periods",
    "partwarden_writes_fail_at_timestamp_seconds",
    "partwarden_default_partition_has_rows",
    "partwarden_default_partition_rows",
    "partwarden_default_drain_blocks_left",
    "partwarden_schedule_period_seconds",
    "partwarden_expiry_failures_total",
    "partwarden_build_info",
    "partwarden_last_successful_pass_timestamp_seconds",
    "partwarden_passes_total",
    "partwarden_lock_timeouts_total",
    "partwarden_partitions_created_total",
    "partwarden_partitions_expired_total",
    "partwarden_archive_bytes_total",
    "partwarden_leader",
];

/// The instant query's result vector, as JSON values.
fn result(prom: &Prometheus, promql: &str) -> Vec<serde_json::Value> {
    let (status, body) = prom.query(promql);
    assert_eq!(status, 200, "{promql}: {body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["status"], "success", "{promql}: {body}");
    v["data"]["result"].as_array().cloned().unwrap_or_default()
}

fn wait_for(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    panic!("timed out waiting for {what}");
}

async fn passes(db: &TestDb) -> i64 {
    db.client()
        .await
        .query_one(
            "SELECT count(*) FROM partwarden.partition_events WHERE step = 'pass'",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_the_daemon_and_alerts_fire_and_resolve() {
    let db = TestDb::new("monitoring").await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = db.write_config(
        "",
        &format!(
            "[metrics]\nlisten = \"127.0.0.1:{port}\"\n\n[[tables]]\nname = \"public.market_odds_history\"\ninterval = \"daily\"\npremake = 10\n"
        ),
    );
    let text = std::fs::read_to_string(&config).unwrap().replace(
        "archive_dir = \"archive\"",
        "archive_dir = \"archive\"\nschedule = \"*/15 * * * * *\"",
    );
    std::fs::write(&config, text).unwrap();
    bootstrap_cli(&config);
    let daemon = Daemon::start(&config, db.dir.path().join("daemon.log"), &[]);

    let rules = Path::new(env!("CARGO_MANIFEST_DIR")).join("monitoring/partwarden.rules.yml");
    let prom = Prometheus::start(&format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\nscrape_configs:\n  - job_name: partwarden\n    static_configs:\n      - targets: ['127.0.0.1:{port}']\n",
        rules.display()
    ));

    // The target is up and a pass has run (the table gauges appear after the first one).
    wait_for("the target to be up", Duration::from_secs(60), || {
        result(&prom, "up{job=\"partwarden\"} == 1").len() == 1
    });
    wait_for("the first pass's gauges", Duration::from_secs(60), || {
        !result(&prom, "partwarden_runway_periods").is_empty()
    });
    // Two scrapes at least after the first pass, so that increase() has samples.
    std::thread::sleep(Duration::from_secs(3));
    for name in DOCUMENTED {
        assert!(
            !result(&prom, &format!("count({name})")).is_empty(),
            "{name} is not scraped\n{}",
            daemon.log()
        );
    }
    let runway = result(&prom, "partwarden_runway_periods");
    assert_eq!(runway[0]["metric"]["table"], "public.market_odds_history");
    assert_eq!(runway[0]["value"][1], "10");

    // Every expression of the dashboard evaluates, and returns data.
    let dashboard: serde_json::Value = serde_json::from_slice(
        &std::fs::read(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("monitoring/partwarden.dashboard.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let mut exprs = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            assert!(
                !result(&prom, expr).is_empty(),
                "dashboard panel {:?}: {expr} returns no data",
                panel["title"]
            );
            exprs += 1;
        }
    }
    assert!(exprs >= 11);
    assert!(result(&prom, "ALERTS{alertname=\"PartwardenWritesFailSoon\"}").is_empty());

    // The state made true: tomorrow's partition dropped by hand, right after a pass, and the
    // table locked (SHARE UPDATE EXCLUSIVE: writers go on, ATTACH cannot) so that the next
    // pass cannot make it again.
    let before = passes(&db).await;
    let deadline = Instant::now() + Duration::from_secs(40);
    while passes(&db).await == before {
        assert!(Instant::now() < deadline, "no pass\n{}", daemon.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let tomorrow = format!(
        "market_odds_history{}",
        Interval::Daily.suffix(Utc::now() + chrono::Duration::days(1))
    );
    let c = db.client().await;
    c.batch_execute(&format!("DROP TABLE {tomorrow}"))
        .await
        .unwrap();
    let mut holder = db.client().await;
    let tx = holder.transaction().await.unwrap();
    tx.batch_execute("LOCK TABLE market_odds_history IN SHARE UPDATE EXCLUSIVE MODE")
        .await
        .unwrap();
    wait_for(
        "PartwardenWritesFailSoon to fire",
        Duration::from_secs(60),
        || {
            result(
            &prom,
            "ALERTS{alertname=\"PartwardenWritesFailSoon\",alertstate=\"firing\",severity=\"critical\"}",
        )
        .len()
            == 1
        },
    );
    // Released: the next pass makes the partition, and the alert resolves.
    tx.rollback().await.unwrap();
    wait_for(
        "PartwardenWritesFailSoon to resolve",
        Duration::from_secs(60),
        || result(&prom, "ALERTS{alertname=\"PartwardenWritesFailSoon\"}").is_empty(),
    );
    assert!(db.exists(&tomorrow).await);
    drop(daemon);
}
