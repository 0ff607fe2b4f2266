//! Catalog snapshots: what the database really contains, read from `pg_catalog`.
//!
//! Planners never look at the database themselves; they get a snapshot from here. Partition
//! bounds come from `pg_get_expr(relpartbound)` (never from names: a name can lie, a bound
//! cannot), parsed by the server itself into `timestamptz` in a UTC session.

use std::collections::BTreeSet;

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
    let qualified = table.quoted();
    let row = client
        .query_opt(
            "SELECT c.relkind::text, \
                    CASE WHEN c.relkind = 'p' THEN pg_get_partkeydef(c.oid) END \
             FROM pg_class c WHERE c.oid = to_regclass($1)",
            &[&qualified],
        )
        .await?;
    let Some(row) = row else {
        return Ok(TableSnapshot::default());
    };
    let relkind: String = row.get(0);
    let mut snap = TableSnapshot {
        exists: true,
        relkind: relkind.chars().next(),
        partition_key: row.get(1),
        ..TableSnapshot::default()
    };
    snap.columns = columns(client, table).await?;
    snap.indexes = indexes(client, table).await?;
    if snap
        .range_key_column()
        .is_some_and(|k| snap.is_time_column(k))
    {
        snap.partitions = partitions(client, table).await?;
    }
    snap.names_taken = client
        .query(
            "SELECT c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = $1 AND starts_with(c.relname::text, $2)",
            &[&table.schema, &table.name],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    Ok(snap)
}

/// Columns of `table`, in order.
pub async fn columns(
    client: &impl GenericClient,
    table: &RelName,
) -> Result<Vec<Column>, tokio_postgres::Error> {
    Ok(client
        .query(
            "SELECT attname::text, format_type(atttypid, atttypmod), attnotnull \
             FROM pg_attribute WHERE attrelid = to_regclass($1) AND attnum > 0 AND NOT attisdropped \
             ORDER BY attnum",
            &[&table.quoted()],
        )
        .await?
        .iter()
        .map(|r| Column {
            name: r.get(0),
            data_type: r.get(1),
            not_null: r.get(2),
        })
        .collect())
}

/// Indexes of `table` itself (not of its partitions), by name.
pub async fn indexes(
    client: &impl GenericClient,
    table: &RelName,
) -> Result<Vec<Index>, tokio_postgres::Error> {
    Ok(client
        .query(
            "SELECT ic.relname::text, x.indisunique, x.indisprimary, \
                    substring(pg_get_indexdef(x.indexrelid) FROM ' (USING .*)$'), x.indisvalid, \
                    c.conname::text \
             FROM pg_index x JOIN pg_class ic ON ic.oid = x.indexrelid \
             LEFT JOIN pg_constraint c ON c.conindid = x.indexrelid AND c.conrelid = x.indrelid \
                                     AND c.contype IN ('p', 'u', 'x') \
             WHERE x.indrelid = to_regclass($1) ORDER BY 1",
            &[&table.quoted()],
        )
        .await?
        .iter()
        // An index dropped while this runs is still in this query's snapshot, but
        // pg_get_indexdef no longer finds it and returns NULL: it is gone, so it is not listed.
        .filter_map(|r| {
            Some(Index {
                name: r.get(0),
                unique: r.get(1),
                primary: r.get(2),
                definition: r.get::<_, Option<String>>(3)?,
                valid: r.get(4),
                constraint: r.get(5),
            })
        })
        .collect())
}

/// Partitions of `table` with their bounds, ordered by lower bound, DEFAULT last.
pub async fn partitions(
    client: &impl GenericClient,
    table: &RelName,
) -> Result<Vec<Partition>, tokio_postgres::Error> {
    // The server prints a range bound as FROM ('lit') TO ('lit') or with MINVALUE / MAXVALUE;
    // the literal is cast back by the server, in this UTC session, so no date parsing happens
    // on our side. A partition dropped while this runs is still in the query's snapshot of
    // pg_inherits, but pg_get_expr no longer finds it and returns NULL: it is not listed.
    let rows = client
        .query(
            "WITH p AS ( \
               SELECT n.nspname::text AS schema, c.relname::text AS name, \
                      pg_get_expr(c.relpartbound, c.oid) AS bound, i.inhdetachpending AS pending \
               FROM pg_inherits i \
               JOIN pg_class c ON c.oid = i.inhrelid \
               JOIN pg_namespace n ON n.oid = c.relnamespace \
               WHERE i.inhparent = to_regclass($1) \
             ), m AS ( \
               SELECT p.*, regexp_match(bound, '^FOR VALUES FROM \\((.*)\\) TO \\((.*)\\)$') AS b FROM p \
               WHERE bound IS NOT NULL \
             ) \
             SELECT schema, name, bound, pending, bound = 'DEFAULT', \
                    CASE WHEN b IS NULL OR b[1] = 'MINVALUE' THEN NULL \
                         ELSE btrim(b[1], '''')::timestamptz END, \
                    CASE WHEN b IS NULL OR b[2] = 'MAXVALUE' THEN NULL \
                         ELSE btrim(b[2], '''')::timestamptz END \
             FROM m ORDER BY bound = 'DEFAULT', 6 NULLS FIRST, name",
            &[&table.quoted()],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| Partition {
            name: RelName {
                schema: r.get(0),
                name: r.get(1),
            },
            bound_text: r.get(2),
            detach_pending: r.get(3),
            is_default: r.get(4),
            lower: r.get(5),
            upper: r.get(6),
        })
        .collect())
}
