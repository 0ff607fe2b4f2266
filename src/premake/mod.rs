//! The premake planner: which partitions must exist now, and the statements that create them.
//!
//! Pure: a catalog snapshot, the table's configuration and the clock in; [`Step`]s out. The
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
use crate::ident::quote_ident;
use crate::ledger;
use crate::period::{Period, sql_timestamp};
use crate::step::{Record, Statement, Step};

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
#[derive(Clone, Debug, PartialEq)]
pub struct Create {
    /// Its name.
    pub partition: RelName,
    /// Its range.
    pub period: Period,
    /// With a DEFAULT partition: a brief transaction before `action` that adds the NOT VALID
    /// CHECK excluding the range from the DEFAULT partition ([`DEFAULT_EXCLUSION`]).
    pub prepare: Option<Step>,
    /// The transaction that creates and attaches it, recording a `create` event.
    pub action: Step,
}

/// Name of the CHECK that, validated without blocking, proves to ATTACH that the DEFAULT
/// partition holds no row of the new range, so that ATTACH does not scan it under its ACCESS
/// EXCLUSIVE lock. Dropped in the same transaction as the ATTACH.
pub const DEFAULT_EXCLUSION: &str = "partwarden_default_exclusion";

/// The partitions `table` is missing at `now`, in time order, with the actions that make them.
///
/// Coverage is planned from the partitions that exist, with the bounds the catalog gives,
/// whatever instants they fall on: the window runs from the lower bound of the earliest
/// partition (or the current period's start, if that is earlier) to the end of the premake
/// horizon (or the last partition's upper bound, if that is later), and every stretch of it that no partition covers gets partitions, split at the
/// table's period starts (in its time zone). A piece that is a whole period gets the period's
/// name (`<table>_2026_12`); a piece clipped by a neighbour's bound gets the clipped name
/// (`<table>_2026_12_from_31230000`, see [`clipped_name`]); a name taken by another relation
/// gets `_2`, `_3`, ... appended. Pieces that end at or before the retention's cut-off are left
/// alone (they would only be expired again). Returns an error, and plans nothing for the table,
/// when the table cannot be managed.
pub fn plan(
    table: &TableConfig,
    snap: &TableSnapshot,
    now: DateTime<Utc>,
) -> Result<Vec<Create>, String> {
    check_manageable(table, snap)?;
    let cal = table.calendar();
    let current = cal.containing(now);
    let horizon = horizon(table, now);
    // A hole between two partitions is filled even beyond the premake horizon.
    let window_end = snap.last_upper().map_or(horizon, |u| u.max(horizon));
    let mut actions: Vec<Create> = Vec::new();
    let mut planned_names: Vec<String> = Vec::new();
    for gap in gaps(snap, current.start, window_end) {
        let mut t = gap.start;
        while t < gap.end {
            if actions.len() >= MAX_PERIODS {
                return Err(format!(
                    "{}: more than {MAX_PERIODS} partitions between the earliest partition and the premake horizon; refusing to plan",
                    table.name
                ));
            }
            let period = cal.containing(t);
            let mut piece = Period {
                start: t,
                end: period.end.min(gap.end),
            };
            t = piece.end;
            // A hole older than the retention would only be expired again.
            if crate::expiry::is_expired(table, Some(piece.end), now) {
                continue;
            }
            // With a DEFAULT partition, rows of a stretch being written now are in it: moving
            // them would make writes wait (or fail). Only the part after `now + margin` is
            // made now; the rest stays in the DEFAULT partition until a later pass finds it
            // in the past (see `deferred`).
            if let Some(split) = deferred(snap, piece, now) {
                if split >= piece.end {
                    continue;
                }
                piece.start = split;
            }
            let base = if piece == period {
                expected_name(table, period.start)
            } else {
                clipped_name(table, period.start, piece.start)
            };
            let name = free_name(&base, snap, &planned_names);
            let clipped = if piece == period {
                String::new()
            } else {
                format!(
                    " (clipped to its neighbours: period {} .. {})",
                    period.start.to_rfc3339(),
                    period.end.to_rfc3339()
                )
            };
            let taken = if name == base {
                String::new()
            } else {
                format!(" ({base} is taken by another relation)")
            };
            let reason = if piece.end <= current.start {
                format!("fills a gap: no partition covers this past stretch{clipped}{taken}")
            } else if piece.start < current.end {
                format!("the current period has no partition here{clipped}{taken}")
            } else {
                format!(
                    "premake: kept ready ahead of time ({} periods after the current one are configured){clipped}{taken}",
                    table.premake
                )
            };
            let (prepare, action) = create_action(table, snap, piece, &name, reason, now);
            planned_names.push(name.clone());
            actions.push(Create {
                partition: RelName {
                    schema: table.name.schema.to_string(),
                    name,
                },
                period: piece,
                prepare,
                action,
            });
        }
    }
    Ok(actions)
}

/// The end of the premake horizon: the end of the `premake`-th period after the current one.
pub fn horizon(table: &TableConfig, now: DateTime<Utc>) -> DateTime<Utc> {
    let cal = table.calendar();
    let mut end = cal.containing(now).end;
    for _ in 0..table.premake {
        end = cal.next(end);
    }
    end
}

/// How far from `now` a stretch must be, with a DEFAULT partition, to be moved out of it: rows
/// are written with the scrape's own timestamp, seconds behind the clock at most.
pub const DEFAULT_SPLIT_MARGIN: chrono::Duration = chrono::Duration::minutes(5);

/// With a DEFAULT partition, for a stretch within [`DEFAULT_SPLIT_MARGIN`] of `now`: the instant
/// (`now + margin`, to the next whole minute) before which it stays in the DEFAULT partition
/// for now. `None` when the stretch can be made whole (no DEFAULT partition, or the stretch is
/// past or future by more than the margin).
pub fn deferred(snap: &TableSnapshot, piece: Period, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    snap.default_partition()?;
    if piece.end <= now - DEFAULT_SPLIT_MARGIN || piece.start >= now + DEFAULT_SPLIT_MARGIN {
        return None;
    }
    let t = now + DEFAULT_SPLIT_MARGIN;
    let minute =
        chrono::DurationRound::duration_trunc(t, chrono::Duration::minutes(1)).expect("in range");
    Some(if minute < t {
        minute + chrono::Duration::minutes(1)
    } else {
        minute
    })
}

/// The stretches of `[.., horizon)` that no partition covers, from the earliest partition's
/// lower bound (or `current_start`, if that is earlier) on, in order. A DEFAULT partition
/// covers nothing here: rows there are what gaps leave behind.
pub fn gaps(
    snap: &TableSnapshot,
    current_start: DateTime<Utc>,
    horizon: DateTime<Utc>,
) -> Vec<Period> {
    // (lower, upper); None is MINVALUE or MAXVALUE.
    type Bounds = (Option<DateTime<Utc>>, Option<DateTime<Utc>>);
    let mut ranges: Vec<Bounds> = snap
        .partitions
        .iter()
        .filter(|p| !p.is_default)
        .map(|p| (p.lower, p.upper))
        .collect();
    // MINVALUE (None) first.
    ranges.sort_by(|a, b| match (a.0, b.0) {
        (None, None) => std::cmp::Ordering::Equal,
        (None, _) => std::cmp::Ordering::Less,
        (_, None) => std::cmp::Ordering::Greater,
        (Some(x), Some(y)) => x.cmp(&y),
    });
    let mut cursor = match ranges.first() {
        Some((Some(lo), _)) if *lo < current_start => *lo,
        Some((None, _)) => DateTime::<Utc>::MIN_UTC,
        _ => current_start,
    };
    let mut out = Vec::new();
    for (lo, hi) in ranges {
        if cursor >= horizon {
            break;
        }
        let lo = lo.unwrap_or(DateTime::<Utc>::MIN_UTC);
        if lo > cursor {
            out.push(Period {
                start: cursor,
                end: lo.min(horizon),
            });
        }
        match hi {
            Some(hi) => cursor = cursor.max(hi),
            None => return out, // MAXVALUE: nothing after it is uncovered
        }
    }
    if cursor < horizon {
        out.push(Period {
            start: cursor,
            end: horizon,
        });
    }
    out
}

/// The name of a partition covering part of the period starting at `period_start`, from
/// `from` on: `<table><period suffix>_from_<DDHHMMSS>`, the day of the month and the time of
/// `from` in the table's time zone (`market_odds_history_2026_03_from_31230000`).
pub fn clipped_name(
    table: &TableConfig,
    period_start: DateTime<Utc>,
    from: DateTime<Utc>,
) -> String {
    format!(
        "{}{}",
        table.name.name,
        table.calendar().clipped_suffix(period_start, from)
    )
}

/// `base`, or `base_2`, `base_3`, ... : the first not taken by a relation of the schema nor by
/// another partition of this plan.
fn free_name(base: &str, snap: &TableSnapshot, planned: &[String]) -> String {
    let free = |n: &str| !snap.names_taken.contains(n) && !planned.iter().any(|p| p == n);
    if free(base) {
        return base.to_string();
    }
    (2..)
        .map(|i| format!("{base}_{i}"))
        .find(|n| free(n))
        .expect("some suffix is free")
}

/// Whether `name` is what [`plan`] would call a partition with these bounds (the period's name
/// for a whole period, the clipped name for a part of one, either with a `_N` fallback), so
/// that `--check` can tell partwarden's own clipped partitions from misnamed ones.
pub fn name_fits(
    table: &TableConfig,
    lower: DateTime<Utc>,
    upper: DateTime<Utc>,
    name: &str,
) -> bool {
    let cal = table.calendar();
    let period = cal.containing(lower);
    if upper > period.end {
        return false;
    }
    let base = if period.start == lower && period.end == upper {
        expected_name(table, period.start)
    } else {
        clipped_name(table, period.start, lower)
    };
    name == base
        || name
            .strip_prefix(base.as_str())
            .and_then(|rest| rest.strip_prefix('_'))
            .is_some_and(|n| n.parse::<u32>().is_ok_and(|n| n >= 2))
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
/// to the DEFAULT partition, which is why [`plan`] never makes a stretch within
/// [`DEFAULT_SPLIT_MARGIN`] of `now` while a DEFAULT partition exists.
fn create_action(
    table: &TableConfig,
    snap: &TableSnapshot,
    period: Period,
    name: &str,
    reason: String,
    now: DateTime<Utc>,
) -> (Option<Step>, Step) {
    let parent = RelName::from(&table.name);
    let child = RelName {
        schema: parent.schema.clone(),
        name: name.to_string(),
    };
    let key = table.partition_key.quoted();
    let (lo, hi) = (sql_timestamp(period.start), sql_timestamp(period.end));
    let check = quote_ident(BOUND_CHECK);
    let default = snap.default_partition();
    // `plan` never makes a stretch near `now` while a DEFAULT partition exists (`deferred`).
    let exclude = default.is_some();
    debug_assert!(
        default.is_none()
            || period.end <= now - DEFAULT_SPLIT_MARGIN
            || period.start >= now + DEFAULT_SPLIT_MARGIN
    );
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
            prepare = Some(
                Step::transaction(
                    format!(
                        "exclude {} .. {} from {}",
                        period.start.to_rfc3339(),
                        period.end.to_rfc3339(),
                        default.name
                    ),
                    format!(
                        "so that attaching {child} need not scan {} under its lock",
                        default.name
                    ),
                    vec![
                        Statement::Sql(format!(
                            "ALTER TABLE {d} DROP CONSTRAINT IF EXISTS {exclusion}"
                        )),
                        // The negation of the new partition's constraint, as PostgreSQL writes
                        // it, so that ATTACH can prove it from this CHECK.
                        Statement::Sql(format!(
                            "ALTER TABLE {d} ADD CONSTRAINT {exclusion} CHECK ({key} IS NULL OR {key} < {lo} OR {key} >= {hi}) NOT VALID"
                        )),
                    ],
                )
                .locking(vec![d.clone()]),
            );
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
    let record = Record::Ledger(ledger::Entry {
        table: parent.clone(),
        partition: Some(child.clone()),
        lower: Some(period.start),
        upper: Some(period.end),
        step: ledger::Step::Create,
    });
    let action = Step::transaction(
        format!("create partition {child}"),
        format!(
            "{} .. {}: {reason}",
            period.start.to_rfc3339(),
            period.end.to_rfc3339()
        ),
        statements.into_iter().map(Statement::Sql).collect(),
    )
    .recording(record)
    .locking(lock_relations);
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
    let cal = table.calendar();
    let current = cal.containing(now);
    let mut periods_ahead = 0;
    let mut end = cal.next(current.end);
    while end <= t {
        periods_ahead += 1;
        end = cal.next(end);
    }
    Runway {
        writes_fail_from: if has_default { None } else { Some(t) },
        periods_ahead,
    }
}

/// The name [`plan`] gives the partition starting at `start`.
pub fn expected_name(table: &TableConfig, start: DateTime<Utc>) -> String {
    format!("{}{}", table.name.name, table.calendar().suffix(start))
}

#[cfg(test)]
pub(crate) mod tests;
