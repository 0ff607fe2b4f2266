//! The session's role (leader, standby, in recovery, schema behind), reconnects, the pass
//! task, the status line and the gauges.

use super::*;

pub(super) async fn start_metrics(
    config: &Config,
) -> Result<Option<(std::net::SocketAddr, JoinHandle<()>)>, DaemonError> {
    let Some(addr) = config.metrics.listen else {
        return Ok(None);
    };
    let (local, task) = metrics::serve(addr)
        .await
        .map_err(|e| DaemonError::Io(format!("metrics endpoint {addr}: {e}")))?;
    tracing::info!(address = %local, "serving Prometheus metrics on /metrics");
    Ok(Some((local, task)))
}

/// Decides the role of a connected session: in recovery, schema not current, leader (lock
/// taken now or held already), or standby.
pub(super) async fn establish(client: &Client, current: &Role) -> Role {
    if *current == Role::Leader {
        // Still ours as long as the session lives; check it answers.
        return match client.simple_query("SELECT 1").await {
            Ok(_) => Role::Leader,
            Err(e) => Role::Disconnected(db::error_text(&e)),
        };
    }
    let recovery = match client.query_one("SELECT pg_is_in_recovery()", &[]).await {
        Ok(r) => r.get::<_, bool>(0),
        Err(e) => return Role::Disconnected(db::error_text(&e)),
    };
    if recovery {
        return Role::InRecovery;
    }
    if let Err(e) = pass::require_current_schema(client).await {
        if !matches!(current, Role::SchemaNotCurrent(_)) {
            tracing::error!(error = %e, "not running passes until the schema is current");
        }
        return match e {
            PassError::Db(e) => Role::Disconnected(db::error_text(&e)),
            other => Role::SchemaNotCurrent(other.to_string()),
        };
    }
    match pass::try_lock(client).await {
        Ok(Ok(())) => {
            tracing::info!("became leader: this instance runs the maintenance passes");
            metrics::LEADER.set(1);
            Role::Leader
        }
        Ok(Err(pid)) => {
            if *current != Role::Standby(pid) {
                tracing::info!(
                    leader_pid = pid,
                    "standby: another instance holds the leader lock"
                );
            }
            Role::Standby(pid)
        }
        Err(e) => Role::Disconnected(db::error_text(&e)),
    }
}

/// Gives up the session (and with it the leader lock) to connect again with reloaded settings.
pub(super) fn reconnect(client: &mut Option<Client>, role: &mut Role, next_attempt: &mut Instant) {
    tracing::info!("database settings changed: reconnecting with the reloaded ones");
    *client = None;
    metrics::LEADER.set(0);
    *role = Role::Disconnected("reconnecting with the reloaded settings".into());
    *next_attempt = Instant::now();
}

pub(super) fn lost_session(
    client: &mut Option<Client>,
    role: &mut Role,
    next_attempt: &mut Instant,
) {
    if *role == Role::Leader {
        tracing::error!(
            "lost the database session: no more DDL from this instance until it reconnects and leads again"
        );
    } else {
        tracing::warn!("lost the database session; reconnecting");
    }
    *client = None;
    *role = Role::Disconnected("session lost".into());
    metrics::LEADER.set(0);
    *next_attempt = Instant::now();
}

pub(super) fn start_pass(
    gate: &Arc<Gate>,
    mut client: Client,
    config: Arc<Config>,
    stop: Arc<AtomicBool>,
) -> Running {
    gate.set_running(true);
    Box::pin(async move {
        let opts = pass::Options {
            dry_run: false,
            now: None,
        };
        let started = std::time::Instant::now();
        let report = pass::run(&mut client, &config, opts, &stop, &mut std::io::sink()).await;
        tracing::info!(
            elapsed_ms = started.elapsed().as_millis() as u64,
            ok = report.ok(),
            "maintenance pass finished"
        );
        (client, report)
    })
}

pub(super) async fn join(running: &mut Option<Running>) -> (Client, pass::Report) {
    match running {
        Some(pass) => pass.as_mut().await,
        None => std::future::pending().await,
    }
}

pub(super) fn pass_summary(report: &pass::Report, ok: bool) -> String {
    let created: usize = report.tables.iter().map(|t| t.created.len()).sum();
    let expired: usize = report.tables.iter().map(|t| t.expired.len()).sum();
    let runway = report
        .tables
        .iter()
        .filter_map(|t| {
            t.runway
                .as_ref()
                .map(|r| format!("{} {} periods", t.table, r.periods_ahead))
        })
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "last pass {} at {} (created {created}, expired {expired}); runway {runway}",
        if ok { "ok" } else { "FAILED" },
        Utc::now().format("%H:%M:%SZ")
    )
}

pub(super) fn set_status(notifier: &Notifier, role: &Role, last_pass: &str, outcomes: &Outcomes) {
    let failures = if outcomes.consecutive_failures > 0 {
        format!(
            "; {} consecutive failed passes",
            outcomes.consecutive_failures
        )
    } else {
        String::new()
    };
    notifier.status(&format!("{}; {last_pass}{failures}", role.describe()));
}

pub(super) async fn update_gauges(client: &Client, config: &Config, report: &pass::Report) {
    for (table, tr) in config.tables.iter().zip(&report.tables) {
        let has_rows = match &tr.default_partition {
            None => false,
            Some(d) => client
                .query_one(
                    &format!("SELECT EXISTS (SELECT 1 FROM ONLY {})", d.quoted()),
                    &[],
                )
                .await
                .map(|r| r.get::<_, bool>(0))
                .unwrap_or(false),
        };
        let periods = tr.runway.as_ref().map_or(0, |r| r.periods_ahead);
        let fail_at = tr
            .runway
            .as_ref()
            .and_then(|r| r.writes_fail_from)
            .map(|t| t.timestamp());
        metrics::set_table(&tr.table, table.premake, periods, fail_at, has_rows);
        let (rows, left) = match &tr.default_partition {
            None => (0, 0),
            Some(d) => {
                crate::drain::progress(client, &crate::catalog::RelName::from(&table.name), d)
                    .await
                    .map(|p| {
                        let left = p.state.map_or(0, |s| (s.blocks - s.next_block).max(0));
                        (p.rows_estimate, left)
                    })
                    .unwrap_or((0, 0))
            }
        };
        metrics::set_default(&tr.table, rows, left);
    }
    if let Ok(found) = crate::unmanaged::survey(client, config, chrono::Utc::now()).await {
        metrics::set_unmanaged(&found);
    }
}
