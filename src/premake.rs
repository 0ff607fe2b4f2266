//! The premake planner: which partitions must exist now, and the statements that create them.
//!
//! Pure: a catalog snapshot, the table's configuration and the clock in; [`Action`]s out. The
//! partitions a table needs are the current period, `premake` periods after it, and every
//! period between its earliest partition and now (a hole there means failed writes) that is
//! not already past its retention. Periods
//! come from the clock, never from the newest row, so a quiet table still gets its partitions.
//!
//! Each partition is made with the low-lock recipe: create it standalone, add a CHECK that
//! implies the bound (so ATTACH need not scan it), move any rows of the DEFAULT partition that
//! belong to it, ATTACH (SHARE UPDATE EXCLUSIVE on the parent: writers are not blocked), and
//! drop the now redundant CHECK. All of it is one action, one transaction.

use chrono::{DateTime, Utc};

use crate::catalog::{RelName, TableSnapshot};
use crate::config::TableConfig;
use crate::ddl::Action;
use crate::ident::quote_ident;
use crate::period::{Period, sql_timestamp};

/// Name of the temporary CHECK constraint that lets ATTACH skip its validation scan.
pub const BOUND_CHECK: &str = "partwarden_bound_check";

/// Upper limit of periods one plan walks, so a clock or a bound far off never makes a plan of
/// millions of partitions (120 premake + 10 years of daily gaps fits with room).
const MAX_PERIODS: usize = 5000;

/// Checks that the snapshot is a table partwarden can manage as configured. Returns a one-line
/// reason otherwise.
pub fn check_manageable(table: &TableConfig, snap: &TableSnapshot) -> Result<(), String> {
    if !snap.exists {
        return Err(format!(
            "table {} does not exist (run partwarden --bootstrap)",
            table.name
        ));
    }
    if snap.relkind != Some('p') {
        return Err(format!("{} is not a partitioned table", table.name));
    }
    let key = table.partition_key.as_str();
    if snap.range_key_column() != Some(key) {
        return Err(format!(
            "{} is partitioned by {}, but the configuration says RANGE ({key})",
            table.name,
            snap.partition_key.as_deref().unwrap_or("nothing")
        ));
    }
    if !snap.is_time_column(key) {
        return Err(format!(
            "{}.{key} is not a timestamp with time zone, timestamp or date column",
            table.name
        ));
    }
    Ok(())
}

/// One partition to create.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Create {
    /// Its name.
    pub partition: RelName,
    /// Its range.
    pub period: Period,
    /// With a DEFAULT partition: a brief transaction before `action` that adds the NOT VALID
    /// CHECK excluding the range from the DEFAULT partition ([`DEFAULT_EXCLUSION`]).
    pub prepare: Option<Action>,
    /// The statements that create and attach it.
    pub action: Action,
}

/// Name of the CHECK that, validated without blocking, proves to ATTACH that the DEFAULT
/// partition holds no row of the new range, so that ATTACH does not scan it under its ACCESS
/// EXCLUSIVE lock. Dropped in the same transaction as the ATTACH.
pub const DEFAULT_EXCLUSION: &str = "partwarden_default_exclusion";

/// The partitions `table` is missing at `now`, in time order, with the actions that make them.
/// Returns an error, and plans nothing for the table, when the table cannot be managed or a
/// partition name is taken by a relation that is not that partition.
pub fn plan(
    table: &TableConfig,
    snap: &TableSnapshot,
    now: DateTime<Utc>,
) -> Result<Vec<Create>, String> {
    check_manageable(table, snap)?;
    let interval = table.interval;
    let current = Period::containing(interval, now);
    let earliest = snap
        .partitions
        .iter()
        .filter(|p| !p.is_default)
        .filter_map(|p| p.lower.or(p.upper))
        .min();
    let mut start = match earliest {
        Some(e) if e < current.start => interval.floor(e),
        _ => current.start,
    };
    let mut end = current.end;
    for _ in 0..table.premake {
        end = interval.next(end);
    }
    let mut actions = Vec::new();
    let mut walked = 0;
    while start < end {
        walked += 1;
        if walked > MAX_PERIODS {
            return Err(format!(
                "{}: more than {MAX_PERIODS} periods between the earliest partition and the premake horizon; refusing to plan",
                table.name
            ));
        }
        let period = Period {
            start,
            end: interval.next(start),
        };
        start = period.end;
        if snap
            .partitions
            .iter()
            .any(|p| p.overlaps(period.start, period.end))
        {
            continue;
        }
        // A hole older than the retention would only be expired again.
        if crate::expiry::is_expired(table, Some(period.end), now) {
            continue;
        }
        let name = expected_name(table, period.start);
        if snap.names_taken.contains(&name) {
            let what = match snap.partitions.iter().find(|p| p.name.name == name) {
                Some(p) => format!("a partition with bounds {}", p.bound_text),
                None => "a relation that is not a partition of it".to_string(),
            };
            return Err(format!(
                "{}: the partition for {} .. {} would be named {name}, which is taken by {what}",
                table.name,
                period.start.to_rfc3339(),
                period.end.to_rfc3339()
            ));
        }
        let reason = if period.end <= current.start {
            "fills a gap: no partition covers this past period".to_string()
        } else if period == current {
            "the current period has no partition".to_string()
        } else {
            format!(
                "premake: kept ready ahead of time ({} periods after the current one are configured)",
                table.premake
            )
        };
        let (prepare, action) = create_action(table, snap, period, &name, reason, now);
        actions.push(Create {
            partition: RelName {
                schema: table.name.schema.to_string(),
                name,
            },
            period,
            prepare,
            action,
        });
    }
    Ok(actions)
}

/// The statements that create the partition for `period`: create it standalone (with the
/// parent's indexes when rows may be moved into it, so that ATTACH builds none), a CHECK that
/// implies its bound (so ATTACH need not scan it), and ATTACH.
///
/// With a DEFAULT partition, its rows of the range are moved into the new partition first,
/// and ATTACH would scan the whole DEFAULT partition under ACCESS EXCLUSIVE to prove that none
/// is left, blocking every reader of the parent for as long. Instead, a `prepare` transaction
/// adds a NOT VALID CHECK to the DEFAULT partition that excludes the range (a brief lock, no
/// scan); the main transaction moves the rows, validates that CHECK (SHARE UPDATE EXCLUSIVE:
/// readers and writers go on while it scans), then ATTACHes, which the validated CHECK spares
/// the scan, and drops both CHECKs. Between the two transactions rows of the range cannot go
/// to the DEFAULT partition, so this is done only for ranges that do not hold `now`; the
/// current period keeps the one-transaction recipe, where writes wait but never fail.
fn create_action(
    table: &TableConfig,
    snap: &TableSnapshot,
    period: Period,
    name: &str,
    reason: String,
    now: DateTime<Utc>,
) -> (Option<Action>, Action) {
    let parent = RelName::from(&table.name);
    let child = RelName {
        schema: parent.schema.clone(),
        name: name.to_string(),
    };
    let key = table.partition_key.quoted();
    let (lo, hi) = (sql_timestamp(period.start), sql_timestamp(period.end));
    let check = quote_ident(BOUND_CHECK);
    let default = snap.default_partition();
    let exclude = default.is_some() && !(period.start <= now && now < period.end);
    let like = if default.is_some() {
        "INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING STORAGE INCLUDING COMMENTS INCLUDING INDEXES"
    } else {
        "INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING STORAGE INCLUDING COMMENTS"
    };
    let mut statements = vec![
        format!(
            "CREATE TABLE {} (LIKE {} {like})",
            child.quoted(),
            parent.quoted()
        ),
        format!(
            "ALTER TABLE {} ADD CONSTRAINT {check} CHECK ({key} IS NOT NULL AND {key} >= {lo} AND {key} < {hi})",
            child.quoted()
        ),
    ];
    let mut lock_relations = vec![parent.quoted()];
    let mut prepare = None;
    let exclusion = quote_ident(DEFAULT_EXCLUSION);
    if let Some(default) = default {
        let d = default.name.quoted();
        if exclude {
            prepare = Some(Action {
                label: format!(
                    "exclude {} .. {} from {}",
                    period.start.to_rfc3339(),
                    period.end.to_rfc3339(),
                    default.name
                ),
                reason: format!(
                    "so that attaching {child} need not scan {} under its lock",
                    default.name
                ),
                statements: vec![
                    format!("ALTER TABLE {d} DROP CONSTRAINT IF EXISTS {exclusion}"),
                    // The negation of the new partition's constraint, as PostgreSQL writes it,
                    // so that ATTACH can prove it from this CHECK.
                    format!(
                        "ALTER TABLE {d} ADD CONSTRAINT {exclusion} CHECK ({key} IS NULL OR {key} < {lo} OR {key} >= {hi}) NOT VALID"
                    ),
                ],
                lock_relations: vec![d.clone()],
            });
        }
        let cols = snap
            .columns
            .iter()
            .map(|c| quote_ident(&c.name))
            .collect::<Vec<_>>()
            .join(", ");
        statements.push(format!(
            "WITH moved AS (DELETE FROM {d} WHERE {key} >= {lo} AND {key} < {hi} RETURNING {cols}) \
             INSERT INTO {} ({cols}) SELECT {cols} FROM moved",
            child.quoted()
        ));
        if exclude {
            statements.push(format!("ALTER TABLE {d} VALIDATE CONSTRAINT {exclusion}"));
        }
        lock_relations.push(d);
    }
    statements.push(format!(
        "ALTER TABLE {} ATTACH PARTITION {} FOR VALUES FROM ({lo}) TO ({hi})",
        parent.quoted(),
        child.quoted()
    ));
    statements.push(format!(
        "ALTER TABLE {} DROP CONSTRAINT {check}",
        child.quoted()
    ));
    if let (Some(default), true) = (default, exclude) {
        statements.push(format!(
            "ALTER TABLE {} DROP CONSTRAINT {exclusion}",
            default.name.quoted()
        ));
    }
    let action = Action {
        label: format!("create partition {child}"),
        reason: format!(
            "{} .. {}: {reason}",
            period.start.to_rfc3339(),
            period.end.to_rfc3339()
        ),
        statements,
        lock_relations,
    };
    (prepare, action)
}

/// How far ahead a table's partitions reach.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Runway {
    /// The first instant with no partition, following partitions on from `now`: writes for
    /// this instant or later fail. Equal to `now` when even the current instant is not
    /// covered; `None` when a partition reaches MAXVALUE (or a DEFAULT partition catches all).
    pub writes_fail_from: Option<DateTime<Utc>>,
    /// Whole periods after the current one that are covered.
    pub periods_ahead: u32,
}

/// The runway of a table at `now`, from its partitions.
pub fn runway(table: &TableConfig, snap: &TableSnapshot, now: DateTime<Utc>) -> Runway {
    let has_default = snap.default_partition().is_some();
    let mut t = now;
    let mut steps = 0;
    // A partition pending detach receives no more rows: it does not count.
    while let Some(p) = snap
        .partitions
        .iter()
        .find(|p| !p.detach_pending && p.contains(t))
    {
        steps += 1;
        match p.upper {
            Some(u) if steps < MAX_PERIODS => t = u,
            _ => {
                return Runway {
                    writes_fail_from: None,
                    periods_ahead: u32::MAX,
                };
            }
        }
    }
    let current = Period::containing(table.interval, now);
    let mut periods_ahead = 0;
    let mut end = table.interval.next(current.end);
    while end <= t {
        periods_ahead += 1;
        end = table.interval.next(end);
    }
    Runway {
        writes_fail_from: if has_default { None } else { Some(t) },
        periods_ahead,
    }
}

/// The name [`plan`] gives the partition starting at `start`.
pub fn expected_name(table: &TableConfig, start: DateTime<Utc>) -> String {
    format!("{}{}", table.name.name, table.interval.suffix(start))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::{Column, Partition};
    use crate::config::OnExpiry;
    use crate::ident::{Ident, QualifiedName};
    use crate::period::Interval;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn table(interval: Interval, premake: u32) -> TableConfig {
        TableConfig {
            name: QualifiedName::parse("public.moh").unwrap(),
            partition_key: Ident::new("captured_at").unwrap(),
            interval,
            premake,
            retention: None,
            on_expiry: OnExpiry::Archive,
        }
    }

    fn snap(parts: &[(&str, &str, &str)]) -> TableSnapshot {
        TableSnapshot {
            exists: true,
            relkind: Some('p'),
            partition_key: Some("RANGE (captured_at)".into()),
            columns: vec![
                Column {
                    name: "id".into(),
                    data_type: "bigint".into(),
                    not_null: true,
                },
                Column {
                    name: "captured_at".into(),
                    data_type: "timestamp with time zone".into(),
                    not_null: true,
                },
            ],
            partitions: parts
                .iter()
                .map(|(name, lo, hi)| Partition {
                    name: RelName {
                        schema: "public".into(),
                        name: name.to_string(),
                    },
                    lower: Some(t(lo)),
                    upper: Some(t(hi)),
                    is_default: false,
                    detach_pending: false,
                    bound_text: format!("FOR VALUES FROM ('{lo}') TO ('{hi}')"),
                })
                .collect(),
            names_taken: parts.iter().map(|p| p.0.to_string()).collect(),
            ..TableSnapshot::default()
        }
    }

    fn labels(creates: &[Create]) -> Vec<String> {
        creates.iter().map(|c| c.action.label.clone()).collect()
    }

    #[test]
    fn empty_table_gets_current_and_premake() {
        let a = plan(
            &table(Interval::Monthly, 3),
            &snap(&[]),
            t("2026-11-25T20:00:00Z"),
        )
        .unwrap();
        assert_eq!(
            labels(&a),
            [
                "create partition public.moh_2026_11",
                "create partition public.moh_2026_12",
                "create partition public.moh_2027_01",
                "create partition public.moh_2027_02"
            ]
        );
        assert_eq!(
            a[1].action.statements[2],
            "ALTER TABLE \"public\".\"moh\" ATTACH PARTITION \"public\".\"moh_2026_12\" FOR VALUES FROM ('2026-12-01 00:00:00+00') TO ('2027-01-01 00:00:00+00')"
        );
        assert_eq!(a[1].action.statements.len(), 4);
    }

    #[test]
    fn fills_gaps_and_respects_existing_partitions() {
        let s = snap(&[
            (
                "moh_2026_08",
                "2026-08-01T00:00:00Z",
                "2026-09-01T00:00:00Z",
            ),
            // A hand-made partition with odd bounds covering part of October and November.
            ("moh_odd", "2026-10-15T00:00:00Z", "2026-11-15T00:00:00Z"),
        ]);
        let a = plan(&table(Interval::Monthly, 1), &s, t("2026-11-25T20:00:00Z")).unwrap();
        assert_eq!(
            labels(&a),
            [
                "create partition public.moh_2026_09",
                "create partition public.moh_2026_12"
            ]
        );
        assert!(a[0].action.reason.contains("gap"));
    }

    #[test]
    fn does_not_fill_holes_older_than_the_retention() {
        let s = snap(&[(
            "moh_2026_01",
            "2026-01-01T00:00:00Z",
            "2026-02-01T00:00:00Z",
        )]);
        let mut t6 = table(Interval::Monthly, 1);
        t6.retention = Some(crate::period::Retention::Months(6));
        let a = plan(&t6, &s, t("2026-11-25T20:00:00Z")).unwrap();
        // Cut-off 2026-05-25: May (ends June 1) is the first period still within retention.
        assert_eq!(a[0].action.label, "create partition public.moh_2026_05");
        assert_eq!(a.len(), 8);
    }

    #[test]
    fn idempotent_once_created() {
        let s = snap(&[
            (
                "moh_2026_11_25",
                "2026-11-25T00:00:00Z",
                "2026-11-26T00:00:00Z",
            ),
            (
                "moh_2026_11_26",
                "2026-11-26T00:00:00Z",
                "2026-11-27T00:00:00Z",
            ),
        ]);
        let a = plan(&table(Interval::Daily, 1), &s, t("2026-11-25T20:00:00Z")).unwrap();
        assert!(a.is_empty(), "{a:?}");
        let r = runway(&table(Interval::Daily, 1), &s, t("2026-11-25T20:00:00Z"));
        assert_eq!(r.writes_fail_from, Some(t("2026-11-27T00:00:00Z")));
        assert_eq!(r.periods_ahead, 1);
    }

    #[test]
    fn weekly_names_use_iso_weeks() {
        let a = plan(
            &table(Interval::Weekly, 1),
            &snap(&[]),
            t("2027-01-01T00:00:00Z"),
        )
        .unwrap();
        assert_eq!(
            labels(&a),
            [
                "create partition public.moh_2026_w53",
                "create partition public.moh_2027_w01"
            ]
        );
    }

    #[test]
    fn taken_name_is_an_error() {
        let mut s = snap(&[]);
        s.names_taken.insert("moh_2026_12".into());
        let e = plan(&table(Interval::Monthly, 1), &s, t("2026-11-25T20:00:00Z")).unwrap_err();
        assert!(
            e.contains("moh_2026_12") && e.contains("not a partition"),
            "{e}"
        );
    }

    #[test]
    fn default_partition_rows_are_moved() {
        let mut s = snap(&[(
            "moh_2026_11",
            "2026-11-01T00:00:00Z",
            "2026-12-01T00:00:00Z",
        )]);
        s.partitions.push(Partition {
            name: RelName {
                schema: "public".into(),
                name: "moh_default".into(),
            },
            lower: None,
            upper: None,
            is_default: true,
            detach_pending: false,
            bound_text: "DEFAULT".into(),
        });
        let a = plan(&table(Interval::Monthly, 1), &s, t("2026-11-25T20:00:00Z")).unwrap();
        assert_eq!(a.len(), 1);
        assert!(
            a[0].action.statements[2]
                .starts_with("WITH moved AS (DELETE FROM \"public\".\"moh_default\"")
        );
        assert_eq!(
            runway(&table(Interval::Monthly, 1), &s, t("2026-11-25T20:00:00Z")).writes_fail_from,
            None
        );
    }

    #[test]
    fn refuses_a_table_partitioned_otherwise() {
        let mut s = snap(&[]);
        s.partition_key = Some("LIST (bookmaker_slug)".into());
        assert!(
            plan(&table(Interval::Monthly, 1), &s, t("2026-11-25T20:00:00Z"))
                .unwrap_err()
                .contains("LIST")
        );
        s.exists = false;
        assert!(
            plan(&table(Interval::Monthly, 1), &s, t("2026-11-25T20:00:00Z"))
                .unwrap_err()
                .contains("does not exist")
        );
    }
}
