//! Catalog snapshots: what the database really contains, read from `pg_catalog`.
//!
//! Planners never look at the database themselves; they get a snapshot from here. Partition
//! bounds come from `pg_get_expr(relpartbound)` (never from names: a name can lie, a bound
//! cannot), parsed by the server itself into `timestamptz` in a UTC session.

use std::collections::{BTreeSet, HashMap};

use chrono::{DateTime, Utc};
use tokio_postgres::GenericClient;

use crate::ident::{QualifiedName, quote_ident};

/// A relation as the catalog names it (not necessarily a name partwarden would accept in
/// configuration, so it is kept as plain strings and quoted on use).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub struct RelName {
    /// `pg_namespace.nspname`.
    pub schema: String,
    /// `pg_class.relname`.
    pub name: String,
}

impl RelName {
    /// `"schema"."name"`.
    pub fn quoted(&self) -> String {
        format!("{}.{}", quote_ident(&self.schema), quote_ident(&self.name))
    }
}

impl std::fmt::Display for RelName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.schema, self.name)
    }
}

impl From<&QualifiedName> for RelName {
    fn from(q: &QualifiedName) -> Self {
        RelName {
            schema: q.schema.to_string(),
            name: q.name.to_string(),
        }
    }
}

/// One partition of a partitioned table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Partition {
    /// Its name.
    pub name: RelName,
    /// Inclusive lower bound; `None` for `MINVALUE` or for the DEFAULT partition.
    pub lower: Option<DateTime<Utc>>,
    /// Exclusive upper bound; `None` for `MAXVALUE` or for the DEFAULT partition.
    pub upper: Option<DateTime<Utc>>,
    /// Whether this is the DEFAULT partition.
    pub is_default: bool,
    /// `pg_inherits.inhdetachpending`: a `DETACH CONCURRENTLY` was interrupted.
    pub detach_pending: bool,
    /// The bound as the server prints it, for messages.
    pub bound_text: String,
}

impl Partition {
    /// Whether the partition's range and `[start, end)` share any instant.
    pub fn overlaps(&self, start: DateTime<Utc>, end: DateTime<Utc>) -> bool {
        if self.is_default {
            return false;
        }
        let below_end = self.lower.is_none_or(|l| l < end);
        let above_start = self.upper.is_none_or(|u| u > start);
        below_end && above_start
    }

    /// Whether the partition's range contains `t`.
    pub fn contains(&self, t: DateTime<Utc>) -> bool {
        !self.is_default && self.lower.is_none_or(|l| l <= t) && self.upper.is_none_or(|u| t < u)
    }
}

/// One column of a table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Column {
    /// `attname`.
    pub name: String,
    /// `format_type(atttypid, atttypmod)`, e.g. `character varying(20)`.
    pub data_type: String,
    /// `attnotnull`.
    pub not_null: bool,
    /// `attgenerated <> ''`: a generated column, which an INSERT must not name.
    pub generated: bool,
    /// `attstattarget` when set (`ALTER COLUMN .. SET STATISTICS`): `LIKE` does not copy it.
    pub statistics: Option<i32>,
}

/// One index of a table.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Index {
    /// Index name.
    pub name: String,
    /// `indisunique`.
    pub unique: bool,
    /// `indisprimary`.
    pub primary: bool,
    /// The constraint it backs (primary key or unique), if any.
    pub constraint: Option<String>,
    /// `pg_get_indexdef` from `USING` on: method, keys and predicate, without the table name,
    /// e.g. `USING btree (event_id)`.
    pub definition: String,
    /// `indisvalid`.
    pub valid: bool,
}

/// What the catalog says about one configured table.
#[derive(Clone, Debug, Default)]
pub struct TableSnapshot {
    /// The table exists.
    pub exists: bool,
    /// `relkind`: `p` partitioned table, `r` plain table, ...
    pub relkind: Option<char>,
    /// `pg_get_partkeydef`, e.g. `RANGE (captured_at)`, for a partitioned table.
    pub partition_key: Option<String>,
    /// Columns in `attnum` order.
    pub columns: Vec<Column>,
    /// Indexes of the table itself.
    pub indexes: Vec<Index>,
    /// Partitions, ordered by lower bound (DEFAULT last).
    pub partitions: Vec<Partition>,
    /// Names of relations in the table's schema starting with the table's name, so that a
    /// planner can tell whether a partition name it wants is already taken.
    pub names_taken: BTreeSet<String>,
}

impl TableSnapshot {
    /// The key column of a single-column RANGE partitioning, from `RANGE (col)`.
    pub fn range_key_column(&self) -> Option<&str> {
        let def = self.partition_key.as_deref()?;
        let inner = def.strip_prefix("RANGE (")?.strip_suffix(')')?;
        (!inner.contains(',') && !inner.contains('(')).then_some(inner)
    }

    /// Whether `column` exists and holds instants (timestamptz, timestamp or date).
    pub fn is_time_column(&self, column: &str) -> bool {
        self.columns.iter().any(|c| {
            c.name == column
                && matches!(
                    c.data_type.as_str(),
                    "timestamp with time zone" | "timestamp without time zone" | "date"
                )
        })
    }

    /// The DEFAULT partition, if any.
    pub fn default_partition(&self) -> Option<&Partition> {
        self.partitions.iter().find(|p| p.is_default)
    }

    /// The highest finite upper bound of the range partitions, if any.
    pub fn last_upper(&self) -> Option<DateTime<Utc>> {
        self.partitions
            .iter()
            .filter(|p| !p.is_default)
            .filter_map(|p| p.upper)
            .max()
    }
}

/// Reads the snapshot of `table`. Returns a snapshot with `exists == false` when there is no
/// such relation.
pub async fn snapshot(
    client: &impl GenericClient,
    table: &RelName,
) -> Result<TableSnapshot, tokio_postgres::Error> {
    Ok(snapshots(client, std::slice::from_ref(table))
        .await?
        .pop()
        .expect("one snapshot per table"))
}

/// Reads the snapshots of `tables`, in their order, in five catalog queries whatever their
/// number (the relations, their columns, their indexes, their partitions, the names taken in
/// their schemas): a pass or `--check` over 50 tables and 6,400 partitions reads the catalog
/// once, not once per table.
///
/// Nothing here opens or locks a relation: bounds are deparsed with `pg_get_expr(relpartbound,
/// 0)` (a bound holds constants only, so no relation is needed to print it), and a partition
/// dropped after this query's snapshot was taken is left out by asking the catalog cache, which
/// sees the latest commit (`has_table_privilege(oid, ...)` is NULL for an oid that no longer
/// exists), as `pg_get_indexdef` does for indexes.
pub async fn snapshots(
    client: &impl GenericClient,
    tables: &[RelName],
) -> Result<Vec<TableSnapshot>, tokio_postgres::Error> {
    let mut snaps = vec![TableSnapshot::default(); tables.len()];
    // The relations: their oid, for the other queries, and their kind and partition key.
    let mut oids: Vec<u32> = Vec::new();
    let mut at: HashMap<u32, usize> = HashMap::new();
    for r in resolve(
        client,
        tables,
        "c.relkind::text, CASE WHEN c.relkind = 'p' THEN pg_get_partkeydef(c.oid) END",
    )
    .await?
    {
        let i = r.get::<_, i32>(0) as usize - 1;
        let oid: u32 = r.get(1);
        let relkind: String = r.get(2);
        snaps[i].exists = true;
        snaps[i].relkind = relkind.chars().next();
        snaps[i].partition_key = r.get(3);
        oids.push(oid);
        at.insert(oid, i);
    }
    if oids.is_empty() {
        return Ok(snaps);
    }
    for (oid, column) in columns_of(client, &oids).await? {
        snaps[at[&oid]].columns.push(column);
    }
    for (oid, index) in indexes_of(client, &oids).await? {
        snaps[at[&oid]].indexes.push(index);
    }
    // Partitions only of tables RANGE-partitioned on one time column.
    let ranged: Vec<u32> = oids
        .iter()
        .copied()
        .filter(|o| {
            let s = &snaps[at[o]];
            s.range_key_column().is_some_and(|k| s.is_time_column(k))
        })
        .collect();
    if !ranged.is_empty() {
        for (oid, p) in partitions_of(client, &ranged).await? {
            snaps[at[&oid]].partitions.push(p);
        }
    }
    // Names starting with each table's name, in its schema: an index range scan of
    // pg_class_relname_nsp_index from the name up to its successor (names compare bytewise,
    // collation "C"), so that the cost is the matches, not the schema's size.
    let (mut schemas, mut lows, mut highs, mut which) = (vec![], vec![], vec![], vec![]);
    for (i, t) in tables.iter().enumerate() {
        if snaps[i].exists {
            schemas.push(t.schema.clone());
            lows.push(t.name.clone());
            highs.push(successor(&t.name));
            which.push(i as i32);
        }
    }
    for r in client
        .query(
            "SELECT t.i, c.relname::text \
             FROM unnest($1::text[], $2::text[], $3::text[], $4::int[]) t(s, lo, hi, i) \
             JOIN pg_namespace n ON n.nspname = t.s \
             JOIN pg_class c ON c.relnamespace = n.oid AND c.relname >= t.lo AND c.relname < t.hi \
             WHERE starts_with(c.relname::text, t.lo)",
            &[&schemas, &lows, &highs, &which],
        )
        .await?
    {
        snaps[r.get::<_, i32>(0) as usize]
            .names_taken
            .insert(r.get(1));
    }
    Ok(snaps)
}

/// The rows of `tables` that exist, as `(1-based position in tables, oid, extra...)`:
/// `extra` is more columns of `pg_class c` (a fixed expression, never input).
pub(crate) async fn resolve(
    client: &impl GenericClient,
    tables: &[RelName],
    extra: &'static str,
) -> Result<Vec<tokio_postgres::Row>, tokio_postgres::Error> {
    let quoted: Vec<String> = tables.iter().map(RelName::quoted).collect();
    let sep = if extra.is_empty() { "" } else { ", " };
    client
        .query(
            &format!(
                "SELECT t.i::int, c.oid{sep}{extra} FROM unnest($1::text[]) WITH ORDINALITY t(q, i) \
                 JOIN pg_class c ON c.oid = to_regclass(t.q)"
            ),
            &[&quoted],
        )
        .await
}

/// The least string greater than every string that starts with `prefix`, compared bytewise
/// (UTF-8 keeps code point order): `prefix` with its last character replaced by the next one.
/// When there is none (the prefix is empty or all U+10FFFF), a string greater than every name
/// (names have at most 63 bytes). Compared with a `name` as `text`, so never truncated.
fn successor(prefix: &str) -> String {
    next_prefix(prefix).unwrap_or_else(|| "\u{10FFFF}".repeat(16))
}

fn next_prefix(prefix: &str) -> Option<String> {
    let mut chars: Vec<char> = prefix.chars().collect();
    while let Some(last) = chars.pop() {
        let next = match last as u32 + 1 {
            0xD800 => Some('\u{E000}'),
            n => char::from_u32(n),
        };
        if let Some(n) = next {
            chars.push(n);
            return Some(chars.into_iter().collect());
        }
    }
    None
}

/// Columns of `table`, in order (none when there is no such relation).
pub async fn columns(
    client: &impl GenericClient,
    table: &RelName,
) -> Result<Vec<Column>, tokio_postgres::Error> {
    let oids: Vec<u32> = resolve(client, std::slice::from_ref(table), "")
        .await?
        .iter()
        .map(|r| r.get(1))
        .collect();
    Ok(columns_of(client, &oids)
        .await?
        .into_iter()
        .map(|(_, c)| c)
        .collect())
}

/// Columns of the relations `oids`, by relation, in order.
async fn columns_of(
    client: &impl GenericClient,
    oids: &[u32],
) -> Result<Vec<(u32, Column)>, tokio_postgres::Error> {
    Ok(client
        .query(
            "SELECT attrelid, attname::text, format_type(atttypid, atttypmod), attnotnull, attgenerated <> '', \
                    CASE WHEN attstattarget >= 0 THEN attstattarget::int4 END \
             FROM pg_attribute WHERE attrelid = ANY($1::oid[]) AND attnum > 0 AND NOT attisdropped \
             ORDER BY attrelid, attnum",
            &[&oids],
        )
        .await?
        .iter()
        .map(|r| {
            (
                r.get(0),
                Column {
                    name: r.get(1),
                    data_type: r.get(2),
                    not_null: r.get(3),
                    generated: r.get(4),
                    statistics: r.get(5),
                },
            )
        })
        .collect())
}

/// Indexes of the relations `oids` themselves (not of their partitions), by relation and name.
pub(crate) async fn indexes_of(
    client: &impl GenericClient,
    oids: &[u32],
) -> Result<Vec<(u32, Index)>, tokio_postgres::Error> {
    Ok(client
        .query(
            "SELECT x.indrelid, ic.relname::text, x.indisunique, x.indisprimary, \
                    substring(pg_get_indexdef(x.indexrelid) FROM ' (USING .*)$'), x.indisvalid, \
                    c.conname::text \
             FROM pg_index x JOIN pg_class ic ON ic.oid = x.indexrelid \
             LEFT JOIN pg_constraint c ON c.conindid = x.indexrelid AND c.conrelid = x.indrelid \
                                     AND c.contype IN ('p', 'u', 'x') \
             WHERE x.indrelid = ANY($1::oid[]) ORDER BY 1, 2",
            &[&oids],
        )
        .await?
        .iter()
        // An index dropped while this runs is still in this query's snapshot, but
        // pg_get_indexdef no longer finds it and returns NULL: it is gone, so it is not listed.
        .filter_map(|r| {
            Some((
                r.get(0),
                Index {
                    name: r.get(1),
                    unique: r.get(2),
                    primary: r.get(3),
                    definition: r.get::<_, Option<String>>(4)?,
                    valid: r.get(5),
                    constraint: r.get(6),
                },
            ))
        })
        .collect())
}

/// Partitions of the tables `oids` with their bounds: by table, then by lower bound, DEFAULT
/// last.
async fn partitions_of(
    client: &impl GenericClient,
    oids: &[u32],
) -> Result<Vec<(u32, Partition)>, tokio_postgres::Error> {
    // The server prints a range bound as FROM ('lit') TO ('lit') or with MINVALUE / MAXVALUE;
    // the literal is cast back by the server, in this UTC session, so no date parsing happens
    // on our side. The CTEs are materialized so that each function runs once per partition
    // (inlined, pg_get_expr ran six times per row and took 80% of a pass).
    let rows = client
        .query(
            "WITH p AS MATERIALIZED ( \
               SELECT i.inhparent AS parent, n.nspname::text AS schema, c.relname::text AS name, \
                      pg_get_expr(c.relpartbound, 0) AS bound, i.inhdetachpending AS pending, c.oid \
               FROM pg_inherits i \
               JOIN pg_class c ON c.oid = i.inhrelid \
               JOIN pg_namespace n ON n.oid = c.relnamespace \
               WHERE i.inhparent = ANY($1::oid[]) \
             ), m AS MATERIALIZED ( \
               SELECT parent, schema, name, bound, pending, bound = 'DEFAULT' AS is_default, \
                      CASE WHEN bound LIKE 'FOR VALUES FROM (%) TO (%)' THEN \
                        split_part(split_part(bound, ') TO (', 1), 'FOR VALUES FROM (', 2) END AS lo, \
                      CASE WHEN bound LIKE 'FOR VALUES FROM (%) TO (%)' THEN \
                        rtrim(split_part(bound, ') TO (', 2), ')') END AS hi \
               FROM p WHERE bound IS NOT NULL AND has_table_privilege(p.oid, 'SELECT') IS NOT NULL \
             ), b AS MATERIALIZED ( \
               SELECT parent, schema, name, bound, pending, is_default, \
                      CASE WHEN lo IS NULL OR lo = 'MINVALUE' THEN NULL \
                           ELSE btrim(lo, '''')::timestamptz END AS lower, \
                      CASE WHEN hi IS NULL OR hi = 'MAXVALUE' THEN NULL \
                           ELSE btrim(hi, '''')::timestamptz END AS upper \
               FROM m \
             ) \
             SELECT parent, schema, name, bound, pending, is_default, lower, upper \
             FROM b ORDER BY parent, is_default, lower NULLS FIRST, name",
            &[&oids],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| {
            (
                r.get(0),
                Partition {
                    name: RelName {
                        schema: r.get(1),
                        name: r.get(2),
                    },
                    bound_text: r.get(3),
                    detach_pending: r.get(4),
                    is_default: r.get(5),
                    lower: r.get(6),
                    upper: r.get(7),
                },
            )
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn successor_bounds_exactly_the_names_with_the_prefix() {
        assert_eq!(successor("t01"), "t02");
        assert_eq!(successor("moh_"), "moh`");
        assert_eq!(successor("a\u{D7FF}"), "a\u{E000}");
        assert_eq!(successor("a\u{10FFFF}"), "b");
        let top = successor("\u{10FFFF}");
        assert!(top.len() > 63, "greater than every name");
        for name in ["t01", "t01_2026_11", "t01\u{10FFFF}", "t01_\u{7F}"] {
            assert!(name >= "t01" && name < successor("t01").as_str());
        }
        for name in ["t02", "t0", "t1", "t02_2026_11"] {
            assert!(!(name >= "t01" && name < successor("t01").as_str()));
        }
    }
}
