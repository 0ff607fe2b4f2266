//! The expiry planner: which partitions leave the table in this pass, and from which state.
//!
//! Pure: the catalog snapshot, the unfinished expiries of the ledger (with whether each table
//! still exists), the configuration and the clock in; [`Task`]s out. Unfinished work comes
//! first (a pending detach, a detached table whose archive or drop did not happen), then new
//! expiries, oldest first, at most `max_expired_per_pass` in all. A partition expires when its
//! upper bound is at or before `now - retention`; the current and future partitions never do,
//! whatever the configuration says, and neither does a DEFAULT partition.

use chrono::{DateTime, Utc};

use crate::catalog::{RelName, TableSnapshot};
use crate::config::TableConfig;
use crate::ledger::InFlight;

/// Where an expiry starts from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Start {
    /// Still attached: detach first.
    Attached,
    /// Left pending by an interrupted `DETACH CONCURRENTLY`: finalize first.
    PendingDetach,
    /// Already detached by an earlier pass: go on with the archive or drop.
    Detached,
    /// The ledger says it was detached, but the table no longer exists (dropped by someone
    /// else): nothing can be done but to record it.
    Vanished,
}

/// One partition to expire.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Task {
    /// The partition.
    pub partition: RelName,
    /// Its bounds.
    pub lower: Option<DateTime<Utc>>,
    /// Its bounds.
    pub upper: Option<DateTime<Utc>>,
    /// Where to start.
    pub start: Start,
    /// Why, for logs and `--dry-run`.
    pub reason: String,
}

/// An unfinished expiry from the ledger, with what the catalog says of its table now.
#[derive(Clone, Debug)]
pub struct Unfinished {
    /// The ledger's record.
    pub ledger: InFlight,
    /// Whether a relation of that name exists.
    pub exists: bool,
}

/// The plan for one table: tasks, and notes for the operator (things seen but left alone).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// In order.
    pub tasks: Vec<Task>,
    /// Things an operator should know about.
    pub notes: Vec<String>,
}

/// Whether a partition with these bounds is expired at `now`.
pub fn is_expired(table: &TableConfig, upper: Option<DateTime<Utc>>, now: DateTime<Utc>) -> bool {
    let Some(retention) = table.retention else {
        return false;
    };
    let current = table.calendar().containing(now);
    upper.is_some_and(|u| u <= retention.cutoff(now) && u <= current.start)
}

/// Plans the expiries of `table` at `now`.
///
/// `server_now` is the database server's clock: whatever `now` says (a host clock gone wrong,
/// `--dry-run --now`), a partition whose upper bound is after it (the one that holds it, and
/// every later one) is never expired.
pub fn plan(
    table: &TableConfig,
    snap: &TableSnapshot,
    unfinished: &[Unfinished],
    now: DateTime<Utc>,
    server_now: DateTime<Utc>,
    max: usize,
) -> Plan {
    let mut plan = Plan::default();
    let cutoff = table.retention.map(|r| r.cutoff(now));
    let fmt = |t: Option<DateTime<Utc>>| t.map_or("unbounded".to_string(), |t| t.to_rfc3339());
    let in_ledger = |p: &RelName| unfinished.iter().any(|u| &u.ledger.partition == p);

    let before_server_now = |upper: Option<DateTime<Utc>>| upper.is_some_and(|u| u <= server_now);
    for p in snap.partitions.iter().filter(|p| p.detach_pending) {
        if (is_expired(table, p.upper, now) && before_server_now(p.upper)) || in_ledger(&p.name) {
            plan.tasks.push(Task {
                partition: p.name.clone(),
                lower: p.lower,
                upper: p.upper,
                start: Start::PendingDetach,
                reason: "a DETACH CONCURRENTLY was interrupted; finish it with FINALIZE".into(),
            });
        } else {
            plan.notes.push(format!(
                "{} is pending detach but not expired; left alone (finish it with ALTER TABLE {} DETACH PARTITION {} FINALIZE, or investigate)",
                p.name, table.name, p.name
            ));
        }
    }
    for u in unfinished {
        let attached = snap.partitions.iter().any(|p| p.name == u.ledger.partition);
        if attached {
            continue; // handled as attached or pending below or above
        }
        plan.tasks.push(Task {
            partition: u.ledger.partition.clone(),
            lower: u.ledger.lower,
            upper: u.ledger.upper,
            start: if u.exists {
                Start::Detached
            } else {
                Start::Vanished
            },
            reason: format!(
                "an earlier pass stopped after step '{}' ({}); finishing it",
                u.ledger.last_step.as_str(),
                if u.ledger.last_finished {
                    "finished"
                } else {
                    "unfinished"
                }
            ),
        });
    }
    if let Some(cutoff) = cutoff {
        for p in snap
            .partitions
            .iter()
            .filter(|p| !p.is_default && !p.detach_pending && is_expired(table, p.upper, now))
        {
            if !before_server_now(p.upper) {
                plan.notes.push(format!(
                    "{} ({} .. {}) would be expired at {}, but it holds or follows the database server's now ({}); left alone",
                    p.name,
                    fmt(p.lower),
                    fmt(p.upper),
                    now.to_rfc3339(),
                    server_now.to_rfc3339()
                ));
                continue;
            }
            plan.tasks.push(Task {
                partition: p.name.clone(),
                lower: p.lower,
                upper: p.upper,
                start: Start::Attached,
                reason: format!(
                    "{} .. {} ends at or before now - {} ({})",
                    fmt(p.lower),
                    fmt(p.upper),
                    table.retention.expect("cutoff implies retention"),
                    cutoff.to_rfc3339()
                ),
            });
        }
    }
    if plan.tasks.len() > max {
        let left = plan.tasks.len() - max;
        plan.tasks.truncate(max);
        plan.notes.push(format!(
            "{left} more partitions are expired; max_expired_per_pass = {max}, the next passes take them"
        ));
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::Partition;
    use crate::config::OnExpiry;
    use crate::ident::{Ident, QualifiedName};
    use crate::ledger::Step;
    use crate::period::{Interval, Retention};

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn table(retention: Option<Retention>) -> TableConfig {
        TableConfig {
            name: QualifiedName::parse("public.moh").unwrap(),
            partition_key: Ident::new("captured_at").unwrap(),
            interval: Interval::Monthly,
            time_zone: chrono_tz::UTC,
            premake: 3,
            retention,
            on_expiry: OnExpiry::Archive,
        }
    }

    fn rel(n: &str) -> RelName {
        RelName {
            schema: "public".into(),
            name: n.into(),
        }
    }

    fn part(n: &str, lo: &str, hi: &str) -> Partition {
        Partition {
            name: rel(n),
            lower: Some(t(lo)),
            upper: Some(t(hi)),
            is_default: false,
            detach_pending: false,
            bound_text: String::new(),
        }
    }

    fn months() -> TableSnapshot {
        let mut parts = Vec::new();
        let mut start = t("2026-01-01T00:00:00Z");
        while start < t("2027-03-01T00:00:00Z") {
            let end = Interval::Monthly.next(start);
            parts.push(part(
                &format!("moh{}", Interval::Monthly.suffix(start)),
                &start.to_rfc3339(),
                &end.to_rfc3339(),
            ));
            start = end;
        }
        TableSnapshot {
            exists: true,
            partitions: parts,
            ..TableSnapshot::default()
        }
    }

    #[test]
    fn expires_wholly_old_partitions_oldest_first_up_to_max() {
        let now = t("2026-11-25T12:00:00Z");
        // cutoff 2026-05-25: January..April end before it; May ends 06-01, after it.
        let p = plan(
            &table(Some(Retention::Months(6))),
            &months(),
            &[],
            now,
            now,
            3,
        );
        let names: Vec<&str> = p.tasks.iter().map(|t| t.partition.name.as_str()).collect();
        assert_eq!(names, ["moh_2026_01", "moh_2026_02", "moh_2026_03"]);
        assert!(p.tasks.iter().all(|t| t.start == Start::Attached));
        assert_eq!(p.notes.len(), 1, "{:?}", p.notes);
        let p = plan(
            &table(Some(Retention::Months(6))),
            &months(),
            &[],
            now,
            now,
            10,
        );
        assert_eq!(p.tasks.len(), 4);
        assert!(p.notes.is_empty());
    }

    #[test]
    fn never_expires_current_or_future_partitions() {
        let now = t("2026-11-25T12:00:00Z");
        let p = plan(
            &table(Some(Retention::Days(1))),
            &months(),
            &[],
            now,
            now,
            100,
        );
        assert_eq!(p.tasks.last().unwrap().partition.name, "moh_2026_10");
        let p = plan(&table(None), &months(), &[], now, now, 100);
        assert!(p.tasks.is_empty());
    }

    #[test]
    fn unfinished_work_comes_first() {
        let now = t("2026-11-25T12:00:00Z");
        let mut snap = months();
        snap.partitions[3].detach_pending = true; // April
        snap.partitions.remove(0); // January was detached by a pass that crashed
        let unfinished = [
            Unfinished {
                ledger: InFlight {
                    partition: rel("moh_2026_01"),
                    lower: Some(t("2026-01-01T00:00:00Z")),
                    upper: Some(t("2026-02-01T00:00:00Z")),
                    last_step: Step::Archive,
                    last_finished: false,
                },
                exists: true,
            },
            Unfinished {
                ledger: InFlight {
                    partition: rel("moh_2025_12"),
                    lower: None,
                    upper: None,
                    last_step: Step::Verify,
                    last_finished: true,
                },
                exists: false,
            },
        ];
        let p = plan(
            &table(Some(Retention::Months(6))),
            &snap,
            &unfinished,
            now,
            now,
            3,
        );
        let got: Vec<(&str, Start)> = p
            .tasks
            .iter()
            .map(|t| (t.partition.name.as_str(), t.start))
            .collect();
        assert_eq!(
            got,
            [
                ("moh_2026_04", Start::PendingDetach),
                ("moh_2026_01", Start::Detached),
                ("moh_2025_12", Start::Vanished)
            ]
        );
    }

    #[test]
    fn a_pending_detach_that_is_not_ours_is_only_noted() {
        let now = t("2026-11-25T12:00:00Z");
        let mut snap = months();
        snap.partitions[9].detach_pending = true; // October: not expired
        let p = plan(&table(Some(Retention::Months(6))), &snap, &[], now, now, 10);
        assert!(p.tasks.iter().all(|t| t.partition.name != "moh_2026_10"));
        assert!(p.notes[0].contains("moh_2026_10 is pending detach but not expired"));
    }

    #[test]
    fn a_clock_far_ahead_never_expires_what_holds_the_servers_now() {
        let server_now = t("2026-11-15T12:00:00Z");
        let ahead = t("2027-09-15T12:00:00Z");
        let p = plan(
            &table(Some(Retention::Months(6))),
            &months(),
            &[],
            ahead,
            server_now,
            100,
        );
        assert!(
            p.tasks.iter().all(|t| t.upper.unwrap() <= server_now),
            "{p:?}"
        );
        assert!(
            p.notes
                .iter()
                .any(|n| n.contains("holds or follows the database server's now")),
            "{p:?}"
        );
    }
}
