//! Partitioned tables nobody configured: the application's own (its `odds_snapshots` whose
//! history sits in a DEFAULT partition, tables an old pg_partman set up) fail the same way as
//! the managed ones when their last partition ends, so `--check` and the metrics watch every
//! partitioned table of the database, and say what `[[tables]]` block would manage it.
//! `maintenance.watch_unmanaged = false` turns this off; `maintenance.ignore_tables` lists
//! tables to leave out.

use chrono::{DateTime, Utc};
use tokio_postgres::GenericClient;

use crate::catalog::{self, RelName, TableSnapshot};
use crate::config::Config;

/// What partwarden sees of one partitioned table it does not manage.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Unmanaged {
    /// The table.
    pub table: RelName,
    /// Its RANGE key, when it is a time column partwarden could manage.
    pub key: Option<String>,
    /// Partitions, the DEFAULT one included.
    pub partitions: usize,
    /// The first instant from now on with no partition (writes fail from then); `None` when a
    /// DEFAULT partition or MAXVALUE catches everything, or the table is not range-by-time.
    pub writes_fail_from: Option<DateTime<Utc>>,
    /// Stretches between two partitions that no partition covers.
    pub holes: Vec<(DateTime<Utc>, DateTime<Utc>)>,
    /// Its DEFAULT partition, if any.
    pub default_partition: Option<RelName>,
    /// The DEFAULT partition holds rows.
    pub default_has_rows: bool,
    /// The interval its partitions suggest: `daily`, `weekly` or `monthly`.
    pub interval: Option<&'static str>,
}

impl Unmanaged {
    /// The `[[tables]]` block that would manage it, when partwarden can.
    pub fn snippet(&self) -> Option<String> {
        let key = self.key.as_ref()?;
        Some(format!(
            "[[tables]]\nname = \"{}\"\npartition_key = \"{key}\"\ninterval = \"{}\"\npremake = 3\n",
            self.table,
            self.interval.unwrap_or("monthly")
        ))
    }
}

/// Every partitioned table of the database (partitions and partwarden's own schemas aside)
/// that `config` neither manages nor ignores, read in a few statements whatever their number.
pub async fn survey(
    client: &impl GenericClient,
    config: &Config,
    now: DateTime<Utc>,
) -> Result<Vec<Unmanaged>, tokio_postgres::Error> {
    if !config.maintenance.watch_unmanaged {
        return Ok(Vec::new());
    }
    let managed: Vec<RelName> = config
        .tables
        .iter()
        .map(|t| RelName::from(&t.name))
        .collect();
    let rels: Vec<RelName> = client
        .query(
            "SELECT n.nspname::text, c.relname::text FROM pg_class c \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relkind = 'p' AND NOT c.relispartition \
               AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'partwarden', 'partwarden_archive') \
               AND n.nspname NOT LIKE 'pg\\_%' \
             ORDER BY 1, 2",
            &[],
        )
        .await?
        .iter()
        .map(|r| RelName {
            schema: r.get(0),
            name: r.get(1),
        })
        .filter(|r| {
            !managed.contains(r) && !config.maintenance.ignore_tables.contains(&r.to_string())
        })
        .collect();
    if rels.is_empty() {
        return Ok(Vec::new());
    }
    let snaps = catalog::snapshots(client, &rels).await?;
    let defaults: Vec<String> = snaps
        .iter()
        .filter_map(|s| s.default_partition().map(|d| d.name.quoted()))
        .collect();
    // Which DEFAULT partitions hold a row: one statement for all of them.
    let with_rows: Vec<bool> = if defaults.is_empty() {
        Vec::new()
    } else {
        let sql = format!(
            "SELECT ARRAY[{}]::bool[]",
            defaults
                .iter()
                .map(|d| format!("EXISTS (SELECT 1 FROM ONLY {d})"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        client.query_one(&sql, &[]).await?.get(0)
    };
    let mut rows = with_rows.into_iter();
    Ok(rels
        .into_iter()
        .zip(snaps)
        .map(|(rel, snap)| {
            let has_rows = if snap.default_partition().is_some() {
                rows.next().unwrap_or(false)
            } else {
                false
            };
            describe(rel, &snap, now, has_rows)
        })
        .collect())
}

/// What the snapshot of an unmanaged table says, at `now` (pure).
pub fn describe(
    table: RelName,
    snap: &TableSnapshot,
    now: DateTime<Utc>,
    default_has_rows: bool,
) -> Unmanaged {
    let key = snap
        .range_key_column()
        .filter(|k| snap.is_time_column(k))
        .map(str::to_string);
    type Bounds = (Option<DateTime<Utc>>, Option<DateTime<Utc>>);
    let mut ranges: Vec<Bounds> = snap
        .partitions
        .iter()
        .filter(|p| !p.is_default)
        .map(|p| (p.lower, p.upper))
        .collect();
    ranges.sort_by_key(|r| r.0);
    // Between its first partition and its last one's end, what no partition covers.
    let holes = snap.last_upper().map_or_else(Vec::new, |end| {
        crate::premake::gaps(snap, DateTime::<Utc>::MAX_UTC, end)
            .into_iter()
            .map(|g| (g.start, g.end))
            .collect()
    });
    let default = snap.default_partition().map(|d| d.name.clone());
    let writes_fail_from = if key.is_none() || default.is_some() {
        None
    } else {
        crate::premake::covered_until(snap, now)
    };
    // The span most of its partitions have: what `interval` would keep making.
    let spans: Vec<i64> = ranges
        .iter()
        .filter_map(|r| Some((r.1? - r.0?).num_hours()))
        .collect();
    let interval = spans.iter().rev().take(5).find_map(|h| match h {
        23..=25 => Some("daily"),
        167..=169 => Some("weekly"),
        671..=745 => Some("monthly"),
        _ => None,
    });
    Unmanaged {
        table,
        key,
        partitions: snap.partitions.len(),
        writes_fail_from,
        holes,
        default_partition: default,
        default_has_rows,
        interval,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::premake::tests::{default_partition, snap, t};

    #[test]
    fn a_daily_table_ending_tomorrow_with_a_hole_and_default_rows() {
        let mut s = snap(&[
            ("x_1", "2026-12-01T00:00:00Z", "2026-12-02T00:00:00Z"),
            ("x_3", "2026-12-03T00:00:00Z", "2026-12-04T00:00:00Z"),
            ("x_4", "2026-12-04T00:00:00Z", "2026-12-05T00:00:00Z"),
        ]);
        let table = RelName {
            schema: "public".into(),
            name: "x".into(),
        };
        let u = describe(table.clone(), &s, t("2026-12-04T10:00:00Z"), false);
        assert_eq!(u.writes_fail_from, Some(t("2026-12-05T00:00:00Z")));
        assert_eq!(
            u.holes,
            vec![(t("2026-12-02T00:00:00Z"), t("2026-12-03T00:00:00Z"))]
        );
        assert_eq!(u.interval, Some("daily"));
        assert!(u.snippet().unwrap().contains("interval = \"daily\""));
        s.partitions.push(default_partition());
        let u = describe(table, &s, t("2026-12-04T10:00:00Z"), true);
        assert_eq!(u.writes_fail_from, None);
        assert!(u.default_has_rows);
    }
}
