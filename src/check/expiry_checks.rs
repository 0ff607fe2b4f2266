//! Expiry and maintenance checks: partitions past retention, unfinished or failed expiries
//! from the ledger, the archive directory, and the age of the last successful pass.

use super::*;

pub(super) async fn expiry_check(
    client: &Client,
    config: &Config,
    table: &TableConfig,
    snap: &TableSnapshot,
    now: DateTime<Utc>,
) -> Check {
    let t = table.name.to_string();
    let rel = RelName::from(&table.name);
    let mut status = Status::Ok;
    let mut msgs: Vec<String> = Vec::new();
    let mut raise = |s: Status, m: String, status: &mut Status| {
        *status = (*status).max(s);
        msgs.push(m);
    };
    let expired: Vec<&catalog::Partition> = snap
        .partitions
        .iter()
        .filter(|p| !p.is_default && expiry::is_expired(table, p.upper, now))
        .collect();
    if !expired.is_empty() {
        raise(
            Status::Warning,
            format!(
                "{} partitions past retention still attached ({}); the maintenance pass expires up to {} per pass",
                expired.len(),
                expired
                    .iter()
                    .map(|p| p.name.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
                config.maintenance.max_expired_per_pass
            ),
            &mut status,
        );
    }
    for p in snap.partitions.iter().filter(|p| p.detach_pending) {
        raise(
            Status::Warning,
            format!(
                "{} is pending detach (an interrupted DETACH CONCURRENTLY); the next pass finalizes it if it is expired",
                p.name
            ),
            &mut status,
        );
    }
    let unfinished = match ledger::in_flight(client, &rel).await {
        Ok(u) => u,
        Err(e) => {
            return check(
                "expiry",
                Some(&t),
                Status::Unknown,
                format!("reading the ledger: {}", error_text(&e)),
                json!({}),
            );
        }
    };
    let errors: Vec<(String, String)> = match client
        .query(
            "SELECT DISTINCT ON (partition_schema, partition_name) partition_name, error FROM partwarden.partition_events \
             WHERE table_name = $1 AND partition_name IS NOT NULL AND step <> 'create' \
             ORDER BY partition_schema, partition_name, id DESC",
            &[&t],
        )
        .await
    {
        Ok(rows) => rows
            .iter()
            .filter_map(|r| Some((r.get::<_, String>(0), r.get::<_, Option<String>>(1)?)))
            .collect(),
        Err(e) => return check("expiry", Some(&t), Status::Unknown, format!("reading the ledger: {}", error_text(&e)), json!({})),
    };
    for u in &unfinished {
        let err = errors
            .iter()
            .find(|(n, _)| *n == u.partition.name)
            .map(|(_, e)| e.clone());
        match err {
            Some(e) => raise(
                Status::Critical,
                format!(
                    "expiry of {} failed at step '{}': {e}",
                    u.partition,
                    u.last_step.as_str()
                ),
                &mut status,
            ),
            None => raise(
                Status::Warning,
                format!(
                    "expiry of {} stopped after step '{}'; the next pass finishes it",
                    u.partition,
                    u.last_step.as_str()
                ),
                &mut status,
            ),
        }
    }
    let mut dir_details = json!(null);
    let mut store_details = json!(null);
    if table.on_expiry == OnExpiry::Archive {
        let needed: i64 = if expired.is_empty() {
            0
        } else {
            let names: Vec<String> = expired.iter().map(|p| p.name.quoted()).collect();
            client
                .query_one("SELECT coalesce(sum(pg_relation_size(to_regclass(n))), 0)::bigint FROM unnest($1::text[]) n", &[&names])
                .await
                .map(|r| r.get(0))
                .unwrap_or(0)
        };
        let (s, m, d) = archive_dir_state(&config.maintenance.archive_dir, needed as u64);
        dir_details = d;
        if s != Status::Ok {
            raise(s, m, &mut status);
        }
        if let Some(store) = &config.maintenance.archive_store {
            // A small object written, read back and deleted: reachable, bucket there,
            // credentials that may write. The store's error never carries a credential.
            let probed = match crate::archive::store::Store::open(store) {
                Ok(s) => s.probe().await,
                Err(e) => Err(e),
            };
            store_details = match &probed {
                Ok(()) => json!({"url": store.url(), "writable": true}),
                Err(e) => json!({"url": store.url(), "writable": false, "error": e.to_string()}),
            };
            if let Err(e) = probed {
                raise(
                    Status::Critical,
                    format!(
                        "the archive store {} cannot be written (expired partitions stay detached until it can): {e}",
                        store.url()
                    ),
                    &mut status,
                );
            }
        }
    }
    let details = json!({
        "expired_attached": expired.iter().map(|p| p.name.to_string()).collect::<Vec<_>>(),
        "unfinished": unfinished.iter().map(|u| json!({"partition": u.partition.to_string(), "last_step": u.last_step.as_str(), "finished": u.last_finished})).collect::<Vec<_>>(),
        "archive_dir": dir_details,
        "archive_store": store_details,
    });
    if msgs.is_empty() {
        let retention = table
            .retention
            .map_or("keep forever".to_string(), |r| format!("retention {r}"));
        check(
            "expiry",
            Some(&t),
            Status::Ok,
            format!("nothing past retention ({retention}), no unfinished expiry"),
            details,
        )
    } else {
        check("expiry", Some(&t), status, msgs.join("; "), details)
    }
}

/// Space under which the archive directory is reported as short even with nothing to expire.
const MIN_FREE_BYTES: u64 = 1 << 30;

fn archive_dir_state(dir: &Path, needed: u64) -> (Status, String, serde_json::Value) {
    let d = dir.display().to_string();
    match std::fs::metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            // It will be created on first use, if its parent lets us.
            let parent = dir.parent().filter(|p| p.is_dir());
            return match parent {
                Some(_) => (
                    Status::Warning,
                    format!(
                        "archive directory {d} does not exist yet (it is created on first use)"
                    ),
                    json!({"path": d, "exists": false}),
                ),
                None => (
                    Status::Critical,
                    format!(
                        "archive directory {d} does not exist and cannot be created: its parent is missing"
                    ),
                    json!({"path": d, "exists": false}),
                ),
            };
        }
        Err(e) => {
            return (
                Status::Critical,
                format!("archive directory {d}: {e}"),
                json!({"path": d}),
            );
        }
        Ok(m) if !m.is_dir() => {
            return (
                Status::Critical,
                format!("archive directory {d} is not a directory"),
                json!({"path": d}),
            );
        }
        Ok(_) => {}
    }
    let probe = dir.join(format!(
        ".partwarden-check-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    ));
    if let Err(e) = std::fs::File::create(&probe) {
        return (
            Status::Critical,
            format!("archive directory {d} is not writable: {e}"),
            json!({"path": d, "writable": false}),
        );
    }
    let _ = std::fs::remove_file(&probe);
    let free = nix::sys::statvfs::statvfs(dir)
        .map(|s| s.blocks_available() * s.fragment_size())
        .unwrap_or(u64::MAX);
    let details = json!({"path": d, "writable": true, "free_bytes": free, "needed_bytes_upper_bound": needed});
    if free < needed {
        (
            Status::Critical,
            format!(
                "archive directory {d} has {} MiB free, the partitions due need up to {} MiB",
                free >> 20,
                needed >> 20
            ),
            details,
        )
    } else if free < MIN_FREE_BYTES {
        (
            Status::Warning,
            format!("archive directory {d} has only {} MiB free", free >> 20),
            details,
        )
    } else {
        (Status::Ok, String::new(), details)
    }
}

pub(super) async fn maintenance(
    client: &Client,
    config: &Config,
    table: &TableConfig,
    now: DateTime<Utc>,
) -> Check {
    let t = table.name.to_string();
    let last: Option<DateTime<Utc>> = match client
        .query_one(
            "SELECT max(finished_at) FROM partwarden.partition_events WHERE step = 'pass' AND table_name = $1 AND error IS NULL",
            &[&t],
        )
        .await
    {
        Ok(r) => r.get(0),
        Err(e) => return check("maintenance", Some(&t), Status::Unknown, format!("reading the ledger: {}", error_text(&e)), json!({})),
    };
    let period = schedule_period(&config.maintenance.schedule, now);
    let details = json!({
        "last_successful_pass": last.map(|l| l.to_rfc3339_opts(SecondsFormat::Secs, true)),
        "schedule": config.maintenance.schedule,
        "schedule_period_secs": period.map(|p| p.as_secs()),
    });
    let Some(last) = last else {
        return check(
            "maintenance",
            Some(&t),
            Status::Warning,
            "no successful maintenance pass recorded yet; is the daemon running?",
            details,
        );
    };
    let age = (now - last).to_std().unwrap_or(Duration::ZERO);
    let age_text = humantime::format_duration(Duration::from_secs(age.as_secs())).to_string();
    let (status, advice) = if age > Duration::from_secs(24 * 3600) {
        (
            Status::Critical,
            "; the daemon is not running or every pass fails",
        )
    } else if period.is_some_and(|p| age > p * 2) {
        (
            Status::Warning,
            "; more than two schedule periods ago: is the daemon running?",
        )
    } else {
        (Status::Ok, "")
    };
    check(
        "maintenance",
        Some(&t),
        status,
        format!(
            "last successful pass {age_text} ago ({}){advice}",
            last.to_rfc3339_opts(SecondsFormat::Secs, true)
        ),
        details,
    )
}

/// The time between two runs of the cron schedule, from the two next occurrences.
pub fn schedule_period(schedule: &str, now: DateTime<Utc>) -> Option<Duration> {
    let cron = croner::parser::CronParser::builder()
        .seconds(croner::parser::Seconds::Required)
        .dom_and_dow(true)
        .build()
        .parse(schedule)
        .ok()?;
    let a = cron.find_next_occurrence(&now, false).ok()?;
    let b = cron.find_next_occurrence(&a, false).ok()?;
    (b - a).to_std().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_periods() {
        let now = "2026-11-25T20:00:00Z".parse().unwrap();
        assert_eq!(
            schedule_period("0 */10 * * * *", now),
            Some(Duration::from_secs(600))
        );
        assert_eq!(
            schedule_period("* * * * * *", now),
            Some(Duration::from_secs(1))
        );
    }
}
