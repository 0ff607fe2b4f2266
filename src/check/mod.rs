//! `partwarden --check`: on-call diagnostics, in the monitoring-plugin convention.
//!
//! Read-only: catalog queries, a look at the ledger and the archive directory, and routing
//! probes inserted in a transaction that is always rolled back. Nothing scans table data
//! (the DEFAULT partition is tested with `EXISTS`), so the check takes the same time on an
//! empty table as on one with ten million rows. Each check has a stable id, a status, a
//! one-line message saying what is wrong and what to do, and details for machines.
//!
//! This module runs the checks (connection, schema, clock, then per table); its parts:
//! [`report`] (statuses, checks and their text and JSON), `partitions` (runway, coverage,
//! DEFAULT partition and index checks: pure functions over a snapshot, but the DEFAULT
//! partition's `EXISTS`), `routing` (probe rows in a rolled-back transaction) and
//! `expiry_checks` (expiry, archive directory, maintenance).

use std::io::IsTerminal;
use std::path::Path;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use serde_json::json;
use tokio_postgres::Client;
use tokio_postgres::error::SqlState;

use crate::catalog::{self, RelName, TableSnapshot};
use crate::clock::Clocks;
use crate::config::{Config, OnExpiry, TableConfig};
use crate::db::{self, error_text};
use crate::expiry;
use crate::indexes;
use crate::ledger;
use crate::migrate::{self, MIGRATIONS};
use crate::period::sql_timestamp;
use crate::premake;
use crate::shape;

mod expiry_checks;
mod partitions;
mod planner;
pub mod report;
mod routing;

pub use expiry_checks::schedule_period;
use expiry_checks::{expiry_check, maintenance};
use partitions::{coverage, default_partition, index_check, runway};
use planner::planner;
use report::check;
pub use report::{Check, Report, Status, colour};
use routing::routing;

/// Runs every check, at `now` (`None`: the database server's clock).
pub async fn run(config: &Config, now: Option<DateTime<Utc>>) -> Report {
    let client = match db::connect(&config.database).await {
        Ok(c) => c,
        Err(e) => {
            return Report::unknown(
                "connection",
                format!("{e}; is PostgreSQL up and database.url right?"),
            );
        }
    };
    let mut checks = Vec::new();
    checks.push(connection(&client).await);
    checks.extend(schema(&client).await);
    let (clock_check, server_now) = clock(&client, config).await;
    checks.push(clock_check);
    let now = now.or(server_now).unwrap_or_else(Utc::now);
    // The catalog of every table in one read: the snapshots, then the index snapshots.
    let rels: Vec<RelName> = config
        .tables
        .iter()
        .map(|t| RelName::from(&t.name))
        .collect();
    let snaps = catalog::snapshots(&client, &rels).await;
    let index_snaps = indexes::snapshots(&client, &rels).await;
    for (i, table) in config.tables.iter().enumerate() {
        let read = match (&snaps, &index_snaps) {
            (Ok(s), Ok(x)) => Ok((&s[i], &x[i])),
            (Err(e), _) | (_, Err(e)) => Err(error_text(e)),
        };
        checks.extend(table_checks(&client, config, table, read, now).await);
    }
    checks.extend(unmanaged_checks(&client, config, now).await);
    Report::new(checks)
}

/// One `unmanaged` check per partitioned table no `[[tables]]` block manages: a warning with
/// its runway, holes and DEFAULT rows and the block that would manage it (ok for a table not
/// partitioned by a time range, which partwarden could not manage anyway).
async fn unmanaged_checks(client: &Client, config: &Config, now: DateTime<Utc>) -> Vec<Check> {
    let found = match crate::unmanaged::survey(client, config, now).await {
        Ok(f) => f,
        Err(e) => {
            return vec![check(
                "unmanaged",
                None,
                Status::Unknown,
                format!("listing the partitioned tables: {}", error_text(&e)),
                json!({}),
            )];
        }
    };
    found
        .into_iter()
        .map(|u| {
            let t = u.table.to_string();
            let details = json!({
                "partitions": u.partitions,
                "key": u.key,
                "writes_fail_from": u.writes_fail_from.map(|w| w.to_rfc3339()),
                "holes": u.holes.iter().map(|(a, b)| format!("{} .. {}", a.to_rfc3339(), b.to_rfc3339())).collect::<Vec<_>>(),
                "default_partition": u.default_partition.as_ref().map(|d| d.to_string()),
                "default_has_rows": u.default_has_rows,
                "snippet": u.snippet(),
            });
            let Some(snippet) = u.snippet() else {
                return check(
                    "unmanaged",
                    Some(&t),
                    Status::Ok,
                    format!("not managed by partwarden ({} partitions, not range-partitioned by a time column)", u.partitions),
                    details,
                );
            };
            let mut facts = vec![match (u.writes_fail_from, &u.default_partition) {
                (Some(w), _) if w <= now => "writes of the current instant fail now (no partition)".to_string(),
                (Some(w), _) => format!("writes fail from {}", w.to_rfc3339_opts(SecondsFormat::Secs, true)),
                (None, Some(d)) => format!("instants without a partition go to its DEFAULT partition {d}"),
                (None, None) => "a partition reaches MAXVALUE".to_string(),
            }];
            if !u.holes.is_empty() {
                facts.push(format!("{} holes between partitions", u.holes.len()));
            }
            if u.default_has_rows {
                facts.push("its DEFAULT partition holds rows".to_string());
            }
            check(
                "unmanaged",
                Some(&t),
                Status::Warning,
                format!(
                    "not managed by partwarden: {}; to manage it, add to the configuration: {}",
                    facts.join("; "),
                    snippet.replace('\n', " ").trim_end()
                ),
                details,
            )
        })
        .collect()
}

/// The host's clock against the server's: past `database.max_clock_skew` every pass refuses
/// DDL, so it is critical. Returns the server's clock for the other checks.
async fn clock(client: &Client, config: &Config) -> (Check, Option<DateTime<Utc>>) {
    match Clocks::read(client).await {
        Ok(c) => {
            let details = json!({
                "server": c.server.to_rfc3339(),
                "host": c.host.to_rfc3339(),
                "skew_ms": c.skew().as_millis() as u64,
                "max_clock_skew_ms": config.database.max_clock_skew.as_millis() as u64,
            });
            let check = match c.check(config.database.max_clock_skew) {
                Ok(()) => check(
                    "clock",
                    None,
                    Status::Ok,
                    format!(
                        "host and server clocks agree within {} ms (max_clock_skew {})",
                        c.skew().as_millis(),
                        humantime::format_duration(config.database.max_clock_skew)
                    ),
                    details,
                ),
                Err(why) => check("clock", None, Status::Critical, why, details),
            };
            (check, Some(c.server))
        }
        Err(e) => (
            check(
                "clock",
                None,
                Status::Unknown,
                format!("reading the server's clock: {}", error_text(&e)),
                json!({}),
            ),
            None,
        ),
    }
}

async fn connection(client: &Client) -> Check {
    let r = client
        .query_one(
                        "SELECT current_setting('server_version'), current_setting('TimeZone'), pg_is_in_recovery(), current_user::text, \
                    coalesce((SELECT CASE WHEN ssl THEN 'TLS ' || version ELSE 'no TLS' END FROM pg_stat_ssl WHERE pid = pg_backend_pid()), 'no TLS')",
            &[],
        )
        .await;
    match r {
        Ok(r) => {
            let (version, tz, recovery, user, tls): (String, String, bool, String, String) =
                (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4));
            let (status, note) = if recovery {
                (
                    Status::Warning,
                    "; the server is in recovery (a standby): partwarden sends it no DDL",
                )
            } else {
                (Status::Ok, "")
            };
            check(
                "connection",
                None,
                status,
                format!(
                    "PostgreSQL {version}, session TimeZone {tz}, connected as {user}, {tls}{note}"
                ),
                json!({"server_version": version, "timezone": tz, "in_recovery": recovery, "user": user, "tls": tls}),
            )
        }
        Err(e) => check(
            "connection",
            None,
            Status::Unknown,
            error_text(&e),
            json!({}),
        ),
    }
}

async fn schema(client: &Client) -> Vec<Check> {
    let mut out = Vec::new();
    match migrate::applied(client).await {
        Err(e) => out.push(check(
            "schema",
            None,
            Status::Unknown,
            format!("reading migrations: {}", error_text(&e)),
            json!({}),
        )),
        Ok(applied) => {
            let details = json!({
                "applied": applied.iter().map(|a| json!({"version": a.version, "name": a.name, "adopted": a.adopted})).collect::<Vec<_>>(),
                "known": MIGRATIONS.iter().map(|m| m.id()).collect::<Vec<_>>(),
            });
            let c = match migrate::plan(MIGRATIONS, &applied) {
                Err(e) => check("schema", None, Status::Critical, e.to_string(), details),
                Ok(_) if applied.is_empty() => check(
                    "schema",
                    None,
                    Status::Critical,
                    "partwarden has never bootstrapped this database; run partwarden --bootstrap",
                    details,
                ),
                Ok(p) if !p.is_empty() => check(
                    "schema",
                    None,
                    Status::Warning,
                    format!(
                        "migrations pending: {}; run partwarden --bootstrap",
                        p.iter().map(|m| m.id()).collect::<Vec<_>>().join(", ")
                    ),
                    details,
                ),
                Ok(_) => check(
                    "schema",
                    None,
                    Status::Ok,
                    format!("{} migrations applied, checksums match", applied.len()),
                    details,
                ),
            };
            out.push(c);
        }
    }
    for t in shape::ODDS_TABLES {
        let name = format!("{}.{}", t.schema, t.name);
        match catalog::snapshot(client, &t.rel_name()).await {
            Err(e) => out.push(check(
                "schema",
                Some(&name),
                Status::Unknown,
                error_text(&e),
                json!({}),
            )),
            Ok(snap) => {
                let d = t.differences(&snap);
                out.push(if d.is_empty() {
                    check(
                        "schema",
                        Some(&name),
                        Status::Ok,
                        "columns, keys and indexes as expected",
                        json!({}),
                    )
                } else {
                    check(
                        "schema",
                        Some(&name),
                        Status::Critical,
                        format!("shape differs: {}", d.join("; ")),
                        json!({"differences": d}),
                    )
                });
                if t.name == shape::MARKET_ODDS_CURRENT.name {
                    out.push(unique_key(&name, &snap));
                }
            }
        }
    }
    out
}

/// `idx_moc_unique`, the upsert's conflict target.
fn unique_key(table: &str, snap: &TableSnapshot) -> Check {
    let expected = shape::UNIQUE_KEY_DEFINITION;
    let idx = snap.indexes.iter().find(|i| i.name == "idx_moc_unique");
    let (status, message) = match idx {
        None if !snap.exists => (Status::Critical, "table is missing, so is idx_moc_unique".to_string()),
        None => (
            Status::Critical,
            "idx_moc_unique is missing: upserts have no conflict target and fail; recreate it (see schema/0001_odds_schema.sql)".to_string(),
        ),
        Some(i) if !i.unique => (Status::Critical, "idx_moc_unique is not unique".to_string()),
        Some(i) if !i.valid => (
            Status::Critical,
            "idx_moc_unique is INVALID: rebuild it with REINDEX INDEX CONCURRENTLY idx_moc_unique".to_string(),
        ),
        Some(i) if i.definition != expected => (
            Status::Critical,
            format!("idx_moc_unique is {}, expected {expected}", i.definition),
        ),
        Some(_) => (Status::Ok, "idx_moc_unique is unique, valid and (event_id, bookmaker_slug, betpawa_market_id, COALESCE(line, 0))".to_string()),
    };
    check(
        "indexes",
        Some(table),
        status,
        message,
        json!({"index": "idx_moc_unique", "expected": expected}),
    )
}

/// The checks of one table, from its catalog and index snapshots (or why they could not be
/// read).
async fn table_checks(
    client: &Client,
    config: &Config,
    table: &TableConfig,
    read: Result<(&TableSnapshot, &indexes::IndexSnapshot), String>,
    now: DateTime<Utc>,
) -> Vec<Check> {
    let name = table.name.to_string();
    let t = Some(name.as_str());
    let rel = RelName::from(&table.name);
    let (snap, isnap) = match read {
        Ok(s) => s,
        Err(e) => return vec![check("runway", t, Status::Unknown, e, json!({}))],
    };
    if let Err(why) = premake::check_manageable(table, snap) {
        return vec![check("runway", t, Status::Critical, why, json!({}))];
    }
    let mut out = vec![runway(table, snap, now), coverage(table, snap, now)];
    out.push(routing(client, config, table, snap, now).await);
    out.push(default_partition(client, config, table, snap).await);
    out.push(planner(client, config, table, snap, now).await);
    out.push(index_check(table, &rel, isnap));
    out.push(expiry_check(client, config, table, snap, now).await);
    out.push(maintenance(client, config, table, now).await);
    out
}
