//! What the query planner sees of a partitioned table: the parent's statistics (autovacuum
//! never analyzes a partitioned parent; a pass does, after changing its partitions) and how
//! long planning a query of the current period takes with this many partitions.

use super::*;

/// `planner`: warning when the parent holds rows but its statistics are missing or older than
/// `maintenance.parent_stats_max_age`, or when planning `SELECT .. WHERE key` in the current
/// period takes longer than `maintenance.planning_budget`. Two statements: one catalog read,
/// one `EXPLAIN` (planned, not run).
pub(super) async fn planner(
    client: &Client,
    config: &Config,
    table: &TableConfig,
    snap: &TableSnapshot,
    now: DateTime<Utc>,
) -> Check {
    let t = table.name.to_string();
    let rel = RelName::from(&table.name);
    let m = &config.maintenance;
    let read = client
        .query_one(
            "SELECT greatest(s.last_analyze, s.last_autoanalyze), \
                    (SELECT coalesce(sum(c.relpages), 0)::bigint FROM pg_inherits i \
                     JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = p.oid) \
             FROM pg_class p LEFT JOIN pg_stat_all_tables s ON s.relid = p.oid \
             WHERE p.oid = to_regclass($1)",
            &[&rel.quoted()],
        )
        .await;
    let unknown = |e: tokio_postgres::Error| {
        check(
            "planner",
            Some(&t),
            Status::Unknown,
            error_text(&e),
            json!({}),
        )
    };
    let (analyzed, pages): (Option<DateTime<Utc>>, i64) = match read {
        Ok(r) => (r.get(0), r.get(1)),
        Err(e) => return unknown(e),
    };
    let period = table.calendar().containing(now);
    let explain = format!(
        "EXPLAIN (SUMMARY ON, COSTS OFF) SELECT 1 FROM {} WHERE {key} >= {} AND {key} < {}",
        rel.quoted(),
        sql_timestamp(period.start),
        sql_timestamp(period.end),
        key = table.partition_key.quoted()
    );
    let planning_ms: Option<f64> = match client.query(&explain, &[]).await {
        Ok(rows) => rows.iter().find_map(|r| {
            r.get::<_, String>(0)
                .strip_prefix("Planning Time: ")
                .and_then(|v| v.trim_end_matches(" ms").parse().ok())
        }),
        Err(e) => return unknown(e),
    };
    let partitions = snap.partitions.len();
    let details = json!({
        "partitions": partitions,
        "planning_ms": planning_ms,
        "planning_budget_ms": m.planning_budget.as_millis() as u64,
        "parent_analyzed_at": analyzed.map(|a| a.to_rfc3339()),
        "pages": pages,
    });
    let mut problems = Vec::new();
    let max_age =
        chrono::Duration::from_std(m.parent_stats_max_age).unwrap_or(chrono::Duration::MAX);
    match analyzed {
        None if pages > 0 => problems.push(format!(
            "the parent {t} has never been analyzed (autovacuum never does; a pass that changes its partitions does, or run ANALYZE {t})"
        )),
        Some(a) if pages > 0 && now - a > max_age => problems.push(format!(
            "the parent's statistics date from {} (older than parent_stats_max_age; run ANALYZE {t})",
            a.to_rfc3339_opts(SecondsFormat::Secs, true)
        )),
        _ => {}
    }
    if let Some(ms) = planning_ms
        && ms > m.planning_budget.as_secs_f64() * 1000.0
    {
        problems.push(format!(
            "planning a query of the current period takes {ms:.1} ms with {partitions} partitions (planning_budget {} ms): fewer partitions, a longer interval or a shorter retention",
            m.planning_budget.as_millis()
        ));
    }
    if problems.is_empty() {
        check(
            "planner",
            Some(&t),
            Status::Ok,
            format!(
                "{partitions} partitions; planning a query of the current period takes {}",
                planning_ms.map_or("?".to_string(), |ms| format!("{ms:.1} ms"))
            ),
            details,
        )
    } else {
        check(
            "planner",
            Some(&t),
            Status::Warning,
            problems.join("; "),
            details,
        )
    }
}
