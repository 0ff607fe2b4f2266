//! The premake planner: which partitions must exist now, and the statements that create them.
//!
//! Pure: a catalog snapshot, the table's configuration and the clock in; [`Step`]s out. The
//! partitions a table needs are the current period, `premake` periods after it, and every
//! period between its earliest partition and now (a hole there means failed writes) that is
//! not already past its retention. Periods
//! come from the clock, never from the newest row, so a quiet table still gets its partitions.
//!
//! Each partition is made with the low-lock recipe: create it standalone, add a CHECK that
//! implies the bound (so ATTACH need not scan it), ATTACH (SHARE UPDATE EXCLUSIVE on the
//! parent: writers are not blocked), and drop the now redundant CHECK. All of it is one
//! action, one transaction. No row is ever moved here: a DEFAULT partition holding rows of the
//! planned stretches is drained by [`crate::drain`] instead, which calls [`plan_from`] for the
//! periods those rows need.

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
    /// The transaction that creates and attaches it, recording a `create` event.
    pub action: Step,
}

/// Name of the NOT VALID CHECK that partwarden before 0.11 added to a DEFAULT partition for the
/// length of a move, and left behind when the move gave up (it refused every write of the
/// excluded range). Dropped by [`crate::drain`] wherever it is found; `--check` reports it.
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
    plan_from(table, snap, now, None)
}

/// As [`plan`], for a table whose DEFAULT partition holds rows from `rows_from` on: the window
/// starts at the period holding `rows_from` (if that is earlier), and stretches past the
/// retention are planned too when they may hold rows (they are expired afterwards through the
/// normal path, archive included, so that no row is deleted unarchived).
pub fn plan_from(
    table: &TableConfig,
    snap: &TableSnapshot,
    now: DateTime<Utc>,
    rows_from: Option<DateTime<Utc>>,
) -> Result<Vec<Create>, String> {
    check_manageable(table, snap)?;
    let cal = table.calendar();
    let current = cal.containing(now);
    let horizon = horizon(table, now);
    // A hole between two partitions is filled even beyond the premake horizon.
    let window_end = snap.last_upper().map_or(horizon, |u| u.max(horizon));
    let window_start = match rows_from {
        Some(t) if t < current.start => cal.containing(t).start,
        _ => current.start,
    };
    let mut actions: Vec<Create> = Vec::new();
    let mut planned_names: Vec<String> = Vec::new();
    for gap in gaps(snap, window_start, window_end) {
        let mut t = gap.start;
        while t < gap.end {
            if actions.len() >= MAX_PERIODS {
                return Err(format!(
                    "{}: more than {MAX_PERIODS} partitions between the earliest partition and the premake horizon; refusing to plan",
                    table.name
                ));
            }
            let period = cal.containing(t);
            let piece = Period {
                start: t,
                end: period.end.min(gap.end),
            };
            t = piece.end;
            // A hole older than the retention would only be expired again, unless rows of the
            // DEFAULT partition need it.
            let holds_rows = rows_from.is_some_and(|f| f < piece.end);
            if !holds_rows && crate::expiry::is_expired(table, Some(piece.end), now) {
                continue;
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
            let action = create_action(table, snap, piece, &name, reason);
            planned_names.push(name.clone());
            actions.push(Create {
                partition: RelName {
                    schema: table.name.schema.to_string(),
                    name,
                },
                period: piece,
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

/// The statements that create the partition for `period`: create it standalone, a CHECK that
/// implies its bound (so ATTACH need not scan it), ATTACH, and drop the CHECK. With a DEFAULT
/// partition, ATTACH also scans it under ACCESS EXCLUSIVE for rows of the range: the pass calls
/// this only when the DEFAULT partition holds no row before the premake horizon
/// ([`crate::drain`] moves them otherwise), so that scan finds nothing and is short.
fn create_action(
    table: &TableConfig,
    snap: &TableSnapshot,
    period: Period,
    name: &str,
    reason: String,
) -> Step {
    let parent = RelName::from(&table.name);
    let child = RelName {
        schema: parent.schema.clone(),
        name: name.to_string(),
    };
    let mut statements = vec![format!(
        "CREATE TABLE {} (LIKE {} {LIKE_OPTIONS})",
        child.quoted(),
        parent.quoted()
    )];
    statements.extend(column_settings_sql(snap, &child));
    statements.extend([
        bound_check_sql(table, &child, period),
        attach_sql(table, &child, period),
        format!(
            "ALTER TABLE {} DROP CONSTRAINT {}",
            child.quoted(),
            quote_ident(BOUND_CHECK)
        ),
    ]);
    let record = Record::Ledger(ledger::Entry {
        table: parent.clone(),
        partition: Some(child.clone()),
        lower: Some(period.start),
        upper: Some(period.end),
        step: ledger::Step::Create,
    });
    Step::transaction(
        format!("create partition {child}"),
        format!(
            "{} .. {}: {reason}",
            period.start.to_rfc3339(),
            period.end.to_rfc3339()
        ),
        statements.into_iter().map(Statement::Sql).collect(),
    )
    .recording(record)
    .locking(vec![parent.quoted()])
}

/// What a new partition takes from its parent: defaults, CHECKs, generated columns (without
/// them ATTACH fails with 42804), storage, compression and comments. Indexes come with ATTACH;
/// identity stays the parent's (inserts through it take its sequence); statistics targets
/// are set after (`LIKE` does not copy them).
pub const LIKE_OPTIONS: &str = "INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING GENERATED INCLUDING STORAGE INCLUDING COMPRESSION INCLUDING COMMENTS";

/// What `LIKE` leaves behind and a partition should have as its parent does: per-column
/// statistics targets (typed values from the catalog, never its text).
pub fn column_settings_sql(snap: &TableSnapshot, child: &RelName) -> Vec<String> {
    snap.columns
        .iter()
        .filter_map(|c| {
            c.statistics.map(|n| {
                format!(
                    "ALTER TABLE {} ALTER COLUMN {} SET STATISTICS {n}",
                    child.quoted(),
                    quote_ident(&c.name)
                )
            })
        })
        .collect()
}

/// `ALTER TABLE child ADD CONSTRAINT partwarden_bound_check CHECK (...)`: the CHECK that proves
/// the partition's bound to ATTACH, so that ATTACH does not scan it.
pub fn bound_check_sql(table: &TableConfig, child: &RelName, period: Period) -> String {
    let key = table.partition_key.quoted();
    let (lo, hi) = (sql_timestamp(period.start), sql_timestamp(period.end));
    format!(
        "ALTER TABLE {} ADD CONSTRAINT {} CHECK ({key} IS NOT NULL AND {key} >= {lo} AND {key} < {hi})",
        child.quoted(),
        quote_ident(BOUND_CHECK)
    )
}

/// `ALTER TABLE parent ATTACH PARTITION child FOR VALUES FROM (lo) TO (hi)`.
pub fn attach_sql(table: &TableConfig, child: &RelName, period: Period) -> String {
    format!(
        "ALTER TABLE {} ATTACH PARTITION {} FOR VALUES FROM ({}) TO ({})",
        RelName::from(&table.name).quoted(),
        child.quoted(),
        sql_timestamp(period.start),
        sql_timestamp(period.end)
    )
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

/// The first instant from `now` on that no partition takes, following partitions on from
/// `now` (a partition pending detach receives no more rows: it does not count); `None` when a
/// partition reaches MAXVALUE, or more than [`MAX_PERIODS`] partitions follow each other.
pub fn covered_until(snap: &TableSnapshot, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let mut t = now;
    let mut steps = 0;
    while let Some(p) = snap
        .partitions
        .iter()
        .find(|p| !p.detach_pending && p.contains(t))
    {
        steps += 1;
        match p.upper {
            Some(u) if steps < MAX_PERIODS => t = u,
            _ => return None,
        }
    }
    Some(t)
}

/// The runway of a table at `now`, from its partitions.
pub fn runway(table: &TableConfig, snap: &TableSnapshot, now: DateTime<Utc>) -> Runway {
    let has_default = snap.default_partition().is_some();
    let Some(t) = covered_until(snap, now) else {
        return Runway {
            writes_fail_from: None,
            periods_ahead: u32::MAX,
        };
    };
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
