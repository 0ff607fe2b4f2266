//! The shape the odds tables must have, and a field-by-field comparison with the catalog.
//!
//! Used when bootstrap adopts tables the application already created (its Alembic revision
//! `n8o7p0q1r4s5`), and by `--check`. The expected shape is written as data, in the form the
//! catalog prints it (`format_type`, `pg_get_indexdef`), and a test checks it against what
//! `schema/0001_odds_schema.sql` really creates, so the two cannot drift apart.

use crate::catalog::{Column, RelName, TableSnapshot};

/// The shape of one table.
#[derive(Debug)]
pub struct ExpectedTable {
    /// Schema.
    pub schema: &'static str,
    /// Table name.
    pub name: &'static str,
    /// `(name, format_type, not null)`, in order.
    pub columns: &'static [(&'static str, &'static str, bool)],
    /// The primary key's index definition from `USING` on.
    pub primary_key: &'static str,
    /// `pg_get_partkeydef`, for a partitioned table.
    pub partition_key: Option<&'static str>,
    /// `(name, unique, definition from USING on)` of every other index.
    pub indexes: &'static [(&'static str, bool, &'static str)],
}

/// `market_odds_current`.
pub const MARKET_ODDS_CURRENT: ExpectedTable = ExpectedTable {
    schema: "public",
    name: "market_odds_current",
    columns: &[
        ("id", "bigint", true),
        ("event_id", "integer", true),
        ("bookmaker_slug", "character varying(20)", true),
        ("betpawa_market_id", "character varying(50)", true),
        ("betpawa_market_name", "character varying(255)", true),
        ("line", "double precision", false),
        ("handicap_type", "character varying(50)", false),
        ("handicap_home", "double precision", false),
        ("handicap_away", "double precision", false),
        ("outcomes", "jsonb", true),
        ("market_groups", "jsonb", false),
        ("unavailable_at", "timestamp with time zone", false),
        ("last_updated_at", "timestamp with time zone", true),
        ("last_confirmed_at", "timestamp with time zone", true),
    ],
    primary_key: "USING btree (id)",
    partition_key: None,
    indexes: &[
        ("idx_moc_unique", true, UNIQUE_KEY_DEFINITION),
        ("idx_moc_event", false, "USING btree (event_id)"),
        ("idx_moc_bookmaker", false, "USING btree (bookmaker_slug)"),
        (
            "idx_moc_event_bookmaker",
            false,
            "USING btree (event_id, bookmaker_slug)",
        ),
    ],
};

/// The conflict target of the upserts, as `pg_get_indexdef` prints it.
pub const UNIQUE_KEY_DEFINITION: &str = "USING btree (event_id, bookmaker_slug, betpawa_market_id, COALESCE(line, (0)::double precision))";

/// `market_odds_history`.
pub const MARKET_ODDS_HISTORY: ExpectedTable = ExpectedTable {
    schema: "public",
    name: "market_odds_history",
    columns: &[
        ("id", "bigint", true),
        ("event_id", "integer", true),
        ("bookmaker_slug", "character varying(20)", true),
        ("betpawa_market_id", "character varying(50)", true),
        ("line", "double precision", false),
        ("outcomes", "jsonb", true),
        ("captured_at", "timestamp with time zone", true),
    ],
    primary_key: "USING btree (id, captured_at)",
    partition_key: Some("RANGE (captured_at)"),
    indexes: &[
        (
            "idx_moh_event_market_time",
            false,
            "USING btree (event_id, betpawa_market_id, captured_at DESC)",
        ),
        (
            "idx_moh_bookmaker_market",
            false,
            "USING btree (bookmaker_slug, betpawa_market_id)",
        ),
    ],
};

/// The tables migration 0001 creates.
pub const ODDS_TABLES: &[&ExpectedTable] = &[&MARKET_ODDS_CURRENT, &MARKET_ODDS_HISTORY];

impl ExpectedTable {
    /// The table's name.
    pub fn rel_name(&self) -> RelName {
        RelName {
            schema: self.schema.into(),
            name: self.name.into(),
        }
    }

    /// What the catalog would show right after the migration created the table (no
    /// partitions), for planning ahead of the migration in `--dry-run`.
    pub fn as_snapshot(&self) -> TableSnapshot {
        TableSnapshot {
            exists: true,
            relkind: Some(if self.partition_key.is_some() {
                'p'
            } else {
                'r'
            }),
            partition_key: self.partition_key.map(str::to_string),
            columns: self
                .columns
                .iter()
                .map(|(n, t, nn)| Column {
                    name: n.to_string(),
                    data_type: t.to_string(),
                    not_null: *nn,
                    generated: false,
                    statistics: None,
                })
                .collect(),
            ..TableSnapshot::default()
        }
    }

    /// Every way `snap` differs from this shape, one line each; empty when it matches. Extra
    /// indexes are allowed (they do no harm); extra columns are not.
    pub fn differences(&self, snap: &TableSnapshot) -> Vec<String> {
        let t = format!("{}.{}", self.schema, self.name);
        if !snap.exists {
            return vec![format!("{t}: table is missing")];
        }
        let mut d = Vec::new();
        match (self.partition_key, snap.relkind) {
            (Some(_), Some('p')) | (None, Some('r')) => {}
            (Some(_), _) => d.push(format!("{t}: is not a partitioned table")),
            (None, _) => d.push(format!("{t}: is not a plain table")),
        }
        if let Some(expected) = self.partition_key {
            let actual = snap.partition_key.as_deref().unwrap_or("none");
            if actual != expected {
                d.push(format!(
                    "{t}: partition key is {actual}, expected {expected}"
                ));
            }
        }
        for (name, ty, not_null) in self.columns {
            match snap.columns.iter().find(|c| c.name == *name) {
                None => d.push(format!("{t}.{name}: column is missing (expected {ty})")),
                Some(c) => {
                    if c.data_type != *ty {
                        d.push(format!(
                            "{t}.{name}: type is {}, expected {ty}",
                            c.data_type
                        ));
                    }
                    if c.not_null != *not_null {
                        d.push(format!(
                            "{t}.{name}: is {}, expected {}",
                            nullability(c.not_null),
                            nullability(*not_null)
                        ));
                    }
                }
            }
        }
        for c in &snap.columns {
            if !self.columns.iter().any(|(n, _, _)| *n == c.name) {
                d.push(format!(
                    "{t}.{}: column is not expected ({})",
                    c.name, c.data_type
                ));
            }
        }
        match snap.indexes.iter().find(|i| i.primary) {
            None => d.push(format!(
                "{t}: primary key is missing (expected {})",
                self.primary_key
            )),
            Some(pk) if pk.definition != self.primary_key => d.push(format!(
                "{t}: primary key {} is {}, expected {}",
                pk.name, pk.definition, self.primary_key
            )),
            Some(_) => {}
        }
        for (name, unique, def) in self.indexes {
            match snap.indexes.iter().find(|i| i.name == *name) {
                None => d.push(format!("{t}: index {name} is missing (expected {def})")),
                Some(i) => {
                    if i.definition != *def {
                        d.push(format!(
                            "{t}: index {name} is {}, expected {def}",
                            i.definition
                        ));
                    }
                    if i.unique != *unique {
                        d.push(format!(
                            "{t}: index {name} is {}unique, expected {}unique",
                            if i.unique { "" } else { "not " },
                            if *unique { "" } else { "not " }
                        ));
                    }
                    if !i.valid {
                        d.push(format!("{t}: index {name} is INVALID"));
                    }
                }
            }
        }
        d
    }
}

fn nullability(not_null: bool) -> &'static str {
    if not_null { "NOT NULL" } else { "nullable" }
}
