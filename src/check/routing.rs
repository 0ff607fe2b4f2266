//! Routing probes: rows inserted at the edges of the current and later partitions, in a
//! transaction that is always rolled back, land where the bounds promise.

use super::*;

/// Probe rows at the lower bound and the upper bound minus 1 µs of the current and every later
/// partition, and one instant past the last, in a transaction that is always rolled back.
pub(super) async fn routing(
    client: &Client,
    config: &Config,
    table: &TableConfig,
    snap: &TableSnapshot,
    now: DateTime<Utc>,
) -> Check {
    let t = table.name.to_string();
    match probe_routing(client, config, table, snap, now).await {
        Ok(c) => c,
        Err(e) => {
            let (status, msg) = if e.code() == Some(&SqlState::INSUFFICIENT_PRIVILEGE) {
                (
                    Status::Warning,
                    format!("skipped: no INSERT privilege on {t} to probe with"),
                )
            } else if e.code() == Some(&SqlState::LOCK_NOT_AVAILABLE) {
                (
                    Status::Warning,
                    "skipped: a lock on the table was not available within lock_timeout"
                        .to_string(),
                )
            } else {
                (Status::Unknown, format!("probe failed: {}", error_text(&e)))
            };
            check("routing", Some(&t), status, msg, json!({}))
        }
    }
}

async fn probe_routing(
    client: &Client,
    config: &Config,
    table: &TableConfig,
    snap: &TableSnapshot,
    now: DateTime<Utc>,
) -> Result<Check, tokio_postgres::Error> {
    let t = table.name.to_string();
    let rel = RelName::from(&table.name);
    let recovery: bool = client
        .query_one("SELECT pg_is_in_recovery()", &[])
        .await?
        .get(0);
    if recovery {
        return Ok(check(
            "routing",
            Some(&t),
            Status::Warning,
            "skipped: the server is in recovery (read-only), probes need a primary",
            json!({"skipped": true}),
        ));
    }
    // NULL when the table was dropped since the snapshot was read.
    let can_insert: Option<bool> = client
        .query_one(
            "SELECT has_table_privilege(to_regclass($1), 'INSERT')",
            &[&rel.quoted()],
        )
        .await?
        .get(0);
    let Some(can_insert) = can_insert else {
        return Ok(check(
            "routing",
            Some(&t),
            Status::Unknown,
            format!("skipped: {t} was dropped while the check ran"),
            json!({"skipped": true}),
        ));
    };
    if !can_insert {
        return Ok(check(
            "routing",
            Some(&t),
            Status::Warning,
            format!("skipped: no INSERT privilege on {t} to probe with"),
            json!({"skipped": true}),
        ));
    }
    // Probe rows copy a real row of the table with the key changed, when one is at hand: its
    // foreign keys, CHECKs and NOT NULLs hold, so the probe fails only if routing does. The
    // row comes from the partition holding now, the one before it, or the DEFAULT partition.
    if let Some(sample) = sample_partition(client, snap, now).await? {
        let cols: Vec<&str> = snap
            .columns
            .iter()
            .filter(|c| !c.generated)
            .map(|c| c.name.as_str())
            .collect();
        let key_type = snap
            .columns
            .iter()
            .find(|c| c.name == table.partition_key.as_str())
            .map(|c| c.data_type.clone())
            .unwrap_or_default();
        let select: Vec<String> = cols
            .iter()
            .map(|c| {
                if *c == table.partition_key.as_str() {
                    format!("$1::text::{key_type}")
                } else {
                    crate::ident::quote_ident(c)
                }
            })
            .collect();
        let sql = format!(
            "INSERT INTO {} ({}) OVERRIDING SYSTEM VALUE SELECT {} FROM ONLY {} LIMIT 1 RETURNING tableoid::regclass::text",
            rel.quoted(),
            cols.iter()
                .map(|c| crate::ident::quote_ident(c))
                .collect::<Vec<_>>()
                .join(", "),
            select.join(", "),
            sample.quoted()
        );
        return run_probes(client, config, table, snap, now, &sql, &[], Some(&sample)).await;
    }
    // A value for every NOT NULL column without a default, by type category.
    let cols = client
        .query(
            "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod), ty.typcategory::text, ty.typname::text \
             FROM pg_attribute a JOIN pg_type ty ON ty.oid = a.atttypid \
             WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped AND a.attnotnull \
               AND NOT a.atthasdef AND a.attidentity = '' AND a.attgenerated = '' AND a.attname <> $2",
            &[&rel.quoted(), &table.partition_key.as_str()],
        )
        .await?;
    let key_type: String = snap
        .columns
        .iter()
        .find(|c| c.name == table.partition_key.as_str())
        .map(|c| c.data_type.clone())
        .unwrap_or_default();
    let mut names = vec![table.partition_key.quoted()];
    let mut values = vec![format!("$1::text::{key_type}")];
    let mut params: Vec<String> = Vec::new();
    for c in &cols {
        let (name, ty, cat, typname): (String, String, String, String) =
            (c.get(0), c.get(1), c.get(2), c.get(3));
        let dummy = match (cat.as_str(), typname.as_str()) {
            ("N", _) => "0",
            ("S", _) => "",
            ("B", _) => "false",
            ("A", _) => "{}",
            ("U", "json" | "jsonb") => "null",
            ("U", "uuid") => "00000000-0000-0000-0000-000000000000",
            ("D", _) => "2000-01-01 00:00:00+00",
            _ => {
                return Ok(check(
                    "routing",
                    Some(&t),
                    Status::Warning,
                    format!(
                        "skipped: cannot make a probe value for NOT NULL column {name} of type {ty}"
                    ),
                    json!({"skipped": true}),
                ));
            }
        };
        params.push(dummy.to_string());
        names.push(crate::ident::quote_ident(&name));
        values.push(format!("${}::text::{ty}", params.len() + 1));
    }
    let sql = format!(
        "INSERT INTO {} ({}) VALUES ({}) RETURNING tableoid::regclass::text",
        rel.quoted(),
        names.join(", "),
        values.join(", ")
    );
    run_probes(client, config, table, snap, now, &sql, &params, None).await
}

/// A partition with a row to copy into probes: the one holding `now`, the one before it, or
/// the DEFAULT partition, whichever has a row first. One statement.
async fn sample_partition(
    client: &Client,
    snap: &TableSnapshot,
    now: DateTime<Utc>,
) -> Result<Option<RelName>, tokio_postgres::Error> {
    let mut candidates: Vec<&RelName> = {
        let mut before: Vec<_> = snap
            .partitions
            .iter()
            .filter(|p| !p.is_default && !p.detach_pending && p.lower.is_none_or(|l| l <= now))
            .collect();
        before.sort_by_key(|p| std::cmp::Reverse(p.lower));
        before.into_iter().take(2).map(|p| &p.name).collect()
    };
    if let Some(d) = snap.default_partition() {
        candidates.push(&d.name);
    }
    if candidates.is_empty() {
        return Ok(None);
    }
    let sql = format!(
        "SELECT ARRAY[{}]",
        candidates
            .iter()
            .map(|p| format!("EXISTS (SELECT 1 FROM ONLY {})", p.quoted()))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let has: Vec<bool> = client.query_one(&sql, &[]).await?.get(0);
    Ok(candidates
        .into_iter()
        .zip(has)
        .find(|(_, h)| *h)
        .map(|(p, _)| p.clone()))
}

/// Whether `e` is PostgreSQL's routing failure: no partition takes the row (raised on the
/// parent), the one error besides a wrong landing that says routing went wrong.
fn no_partition(e: &tokio_postgres::Error) -> bool {
    e.as_db_error().is_some_and(|d| {
        d.code() == &SqlState::CHECK_VIOLATION
            && d.message().starts_with("no partition of relation")
    })
}

/// The relation an error was raised by (schema, table), when the server says.
fn raised_by(e: &tokio_postgres::Error) -> Option<(String, String)> {
    let d = e.as_db_error()?;
    Some((d.schema()?.to_string(), d.table()?.to_string()))
}

/// Sends the probes of `sql` (the key as `$1`, then `params`) in one rolled-back transaction and
/// judges where each landed. `sample` is the partition real probe rows are copied from.
#[allow(clippy::too_many_arguments)]
async fn run_probes(
    client: &Client,
    config: &Config,
    table: &TableConfig,
    snap: &TableSnapshot,
    now: DateTime<Utc>,
    sql: &str,
    params: &[String],
    sample: Option<&RelName>,
) -> Result<Check, tokio_postgres::Error> {
    let t = table.name.to_string();
    let current_start = table.calendar().containing(now).start;
    let mut probes: Vec<(DateTime<Utc>, Option<&RelName>)> = Vec::new();
    for p in snap
        .partitions
        .iter()
        .filter(|p| !p.is_default && p.upper.is_none_or(|u| u > current_start))
    {
        if let Some(l) = p.lower {
            probes.push((l, Some(&p.name)));
        }
        if let Some(u) = p.upper {
            probes.push((u - chrono::Duration::microseconds(1), Some(&p.name)));
        }
    }
    let default = snap.default_partition();
    let last_upper = snap.last_upper();
    let has_maxvalue = snap
        .partitions
        .iter()
        .any(|p| !p.is_default && p.upper.is_none());
    let past_end = if has_maxvalue { None } else { last_upper };
    if let Some(x) = past_end {
        probes.push((x, default.map(|d| &d.name)));
    }
    // The current instant, when it routes to the DEFAULT partition (a table being taken over):
    // a write there must succeed, whatever that partition carries.
    if let Some(d) = default
        && !snap.partitions.iter().any(|p| p.contains(now))
        && past_end != Some(now)
    {
        probes.push((now, Some(&d.name)));
    }
    // The expected partitions as `tableoid::regclass::text` prints them (qualified only when
    // not on the search_path), asked of the server for these few, not for every partition.
    let mut expected: Vec<String> = probes
        .iter()
        .filter_map(|(_, p)| p.map(RelName::quoted))
        .collect();
    expected.dedup();
    let regclass: std::collections::HashMap<String, String> = client
        .query(
            "SELECT q, to_regclass(q)::text FROM unnest($1::text[]) q",
            &[&expected],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get::<_, Option<String>>(1).unwrap_or_default()))
        .collect();
    let regclass_of = |p: &RelName| regclass.get(&p.quoted()).cloned().unwrap_or_default();

    let mut wrong = Vec::new();
    let mut results = Vec::new();
    client.batch_execute("BEGIN").await?;
    let outcome = async {
        let lock_timeout = format!("{}ms", config.database.lock_timeout.as_millis());
        client
            .execute("SELECT set_config('lock_timeout', $1, true)", &[&lock_timeout])
            .await?;
        let stmt = client.prepare(sql).await?;
        let savepoint = client.prepare("SAVEPOINT probe").await?;
        let rollback = client.prepare("ROLLBACK TO SAVEPOINT probe").await?;
        // Every probe's SAVEPOINT, INSERT and ROLLBACK TO SAVEPOINT sent at once, in order
        // (pipelined: tokio-postgres sends requests in the order their futures are first
        // polled, and join_all polls in order), then the answers read in order: one round
        // trip per table instead of three per probe. A refused INSERT aborts only up to its
        // savepoint, which the next request rolls back to.
        let texts: Vec<String> = probes
            .iter()
            .map(|(at, _)| sql_timestamp(*at).trim_matches('\'').to_string())
            .collect();
        let args: Vec<Vec<&(dyn tokio_postgres::types::ToSql + Sync)>> = texts
            .iter()
            .map(|at_text| {
                let mut a: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = vec![at_text];
                a.extend(params.iter().map(|p| p as &(dyn tokio_postgres::types::ToSql + Sync)));
                a
            })
            .collect();
        let mut requests = Vec::with_capacity(probes.len() * 3);
        for a in &args {
            requests.push(client.query(&savepoint, &[]));
            requests.push(client.query(&stmt, a));
            requests.push(client.query(&rollback, &[]));
        }
        let mut answers = futures_util::future::join_all(requests).await.into_iter();
        for (at, expected) in &probes {
            let (saved, got, rolled) = (
                answers.next().expect("three per probe"),
                answers.next().expect("three per probe"),
                answers.next().expect("three per probe"),
            );
            saved?;
            // INSERT ... RETURNING one row: the partition it landed in.
            let got = got.map(|rows| {
                rows.first()
                    .map(|r| r.get::<_, String>(0))
                    .unwrap_or_default()
            });
            let at_s = at.to_rfc3339_opts(SecondsFormat::Micros, true);
            match (got, expected) {
                (Ok(landed), Some(exp)) => {
                    let want = regclass_of(exp);
                    results.push(json!({"at": at_s, "expected": exp.to_string(), "landed": landed}));
                    if landed != want {
                        wrong.push(format!("{at_s} landed in {landed}, expected {exp}"));
                    }
                }
                (Ok(landed), None) => {
                    results.push(json!({"at": at_s, "expected": "refused (23514)", "landed": landed}));
                    wrong.push(format!("{at_s} past the last partition was accepted into {landed}"));
                }
                (Err(e), None) if e.code() == Some(&SqlState::CHECK_VIOLATION) => {
                    results.push(json!({"at": at_s, "expected": "refused (23514)", "landed": "refused (23514)"}));
                }
                (Err(e), _) if e.code() == Some(&SqlState::LOCK_NOT_AVAILABLE) || e.code() == Some(&SqlState::INSUFFICIENT_PRIVILEGE) => {
                    return Err(e);
                }
                // An error raised by the partition the bounds promise: the row got there, so
                // routing is right (a foreign key, CHECK, NOT NULL, unique index or trigger of
                // that partition refused the probe's values), unless the refusal is a CHECK
                // partwarden itself left, which refuses the application's writes too.
                (Err(e), Some(exp))
                    if !no_partition(&e)
                        && raised_by(&e).is_none_or(|(s, n)| s == exp.schema && n == exp.name)
                        && !e.as_db_error().and_then(|d| d.constraint()).is_some_and(|c| c.starts_with("partwarden_"))
                        && !snap.partitions.iter().any(|p| &p.name == *exp && p.detach_pending) =>
                {
                    results.push(json!({"at": at_s, "expected": exp.to_string(), "landed": exp.to_string(), "refused_there": error_text(&e)}));
                }
                (Err(e), exp) => {
                    results.push(json!({"at": at_s, "expected": exp.map(|e| e.to_string()), "error": error_text(&e)}));
                    let pending = exp.is_some_and(|x| snap.partitions.iter().any(|p| &p.name == x && p.detach_pending));
                    if pending && e.code() == Some(&SqlState::CHECK_VIOLATION) {
                        wrong.push(format!("{at_s} is refused: {} is pending detach", exp.expect("checked")));
                    } else {
                        wrong.push(format!("{at_s}: {}", error_text(&e)));
                    }
                }
            }
            rolled?;
        }
        Ok::<(), tokio_postgres::Error>(())
    }
    .await;
    let rolled_back = client.batch_execute("ROLLBACK").await;
    outcome?;
    rolled_back?;
    let details = json!({"probes": results, "copied_from": sample.map(|p| p.to_string())});
    Ok(if wrong.is_empty() {
        let end = match (past_end, default) {
            (Some(x), None) => format!(
                "; an instant past the last partition ({}) is refused",
                x.to_rfc3339_opts(SecondsFormat::Secs, true)
            ),
            (Some(_), Some(d)) => format!(
                "; instants past the last partition go to the DEFAULT partition {}",
                d.name
            ),
            (None, _) => String::new(),
        };
        check(
            "routing",
            Some(&t),
            Status::Ok,
            format!(
                "{} probes landed where the bounds promise{end} (rolled back)",
                probes.len()
            ),
            details,
        )
    } else {
        check(
            "routing",
            Some(&t),
            Status::Critical,
            format!(
                "rows are not routed as the bounds promise: {}",
                wrong.join("; ")
            ),
            details,
        )
    })
}
