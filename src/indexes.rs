//! Index health of partitioned tables: what is missing or broken, and the low-lock repair.
//!
//! A parent's (partitioned) index is valid only when every partition has a matching index
//! attached to it. A partition can lack one when the parent index was built `ON ONLY` and not
//! finished, and a failed `CREATE INDEX CONCURRENTLY` leaves an INVALID index behind. The
//! planner here is pure: an [`IndexSnapshot`] in, [`Repair`]s out. Repairs never lock the
//! parent against writers: `CREATE INDEX CONCURRENTLY` on the partition (or reuse of a matching
//! valid index already there), then `ALTER INDEX parent ATTACH PARTITION child`; a leftover
//! INVALID index is removed with `DROP INDEX CONCURRENTLY`. Indexes that back a constraint
//! (primary key, unique constraint) are reported but not repaired: that needs an operator.

use serde::Serialize;
use std::collections::HashMap;

use tokio_postgres::GenericClient;

use crate::catalog::{self, Index, RelName};
use crate::ident::{MAX_IDENT_BYTES, quote_ident};
use crate::step::{Bound, Statement, Step, Work};

/// An index on a partition.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ChildIndex {
    /// Its name (in the partition's schema).
    pub name: String,
    /// The parent index it is attached to, if any.
    pub attached_to: Option<String>,
    /// `indisvalid`.
    pub valid: bool,
    /// `indisready`.
    pub ready: bool,
    /// `indislive`.
    pub live: bool,
    /// `indisunique`.
    pub unique: bool,
    /// `pg_get_indexdef` from `USING` on; `None` for an index attached to a parent index and
    /// healthy, whose definition is its parent's (not read: it is the costly part of a read).
    pub definition: Option<String>,
    /// A `CREATE INDEX` is building it right now (`pg_stat_progress_create_index`).
    pub building: bool,
}

/// One partition and its indexes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PartitionIndexes {
    /// The partition.
    pub partition: RelName,
    /// Its indexes.
    pub indexes: Vec<ChildIndex>,
}

/// The indexes of a partitioned table and of its partitions.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct IndexSnapshot {
    /// The parent's indexes.
    pub parent: Vec<Index>,
    /// The attached partitions (not pending detach) that are not healthy, with their indexes:
    /// some index of theirs is invalid, not ready or not live, or some parent index has no
    /// child attached on them. A healthy partition has nothing to report or repair, so it is
    /// only counted in `partition_count`.
    pub partitions: Vec<PartitionIndexes>,
    /// How many partitions are attached (not pending detach), healthy or not.
    pub partition_count: usize,
}

/// Reads the index snapshots of `tables`, in their order, in a few catalog queries whatever
/// their number. Almost every partition is healthy (each of its indexes valid, ready and live,
/// and each parent index with a child attached): the server counts those and lists only the
/// others, with their indexes. `pg_get_indexdef` runs only for an index not attached or not
/// healthy (an attached one's definition is its parent's), and
/// `pg_stat_progress_create_index` is asked only about unhealthy ones.
pub async fn snapshots(
    client: &impl GenericClient,
    tables: &[RelName],
) -> Result<Vec<IndexSnapshot>, tokio_postgres::Error> {
    let mut snaps = vec![IndexSnapshot::default(); tables.len()];
    let mut oids: Vec<u32> = Vec::new();
    let mut at: HashMap<u32, usize> = HashMap::new();
    for r in catalog::resolve(client, tables, "").await? {
        let oid: u32 = r.get(1);
        oids.push(oid);
        at.insert(oid, r.get::<_, i32>(0) as usize - 1);
    }
    if oids.is_empty() {
        return Ok(snaps);
    }
    for (oid, index) in catalog::indexes_of(client, &oids).await? {
        snaps[at[&oid]].parent.push(index);
    }
    // Per table: how many attached partitions (a partition dropped after this query's snapshot
    // is left out: has_table_privilege is NULL for an oid the catalog cache no longer has), and
    // which of them are not healthy. A partition counts as healthy only if it has at least as
    // many distinct parent indexes attached as the parent has indexes in this snapshot, so an
    // index the planner sees is never missed; the planner decides on the others.
    let mut unhealthy: Vec<u32> = Vec::new();
    for r in client
        .query(
            "WITH parts AS MATERIALIZED ( \
               SELECT t.inhparent AS parent, t.inhrelid AS part \
               FROM pg_inherits t JOIN pg_class pc ON pc.oid = t.inhrelid \
               WHERE t.inhparent = ANY($1::oid[]) AND NOT t.inhdetachpending AND pc.relkind = 'r' \
             ), live AS MATERIALIZED ( \
               SELECT * FROM parts WHERE has_table_privilege(part, 'SELECT') IS NOT NULL \
             ), want AS ( \
               SELECT indrelid AS parent, count(*) AS n FROM pg_index \
               WHERE indrelid = ANY($1::oid[]) GROUP BY 1 \
             ), health AS ( \
               SELECT p.parent, p.part, \
                      bool_and(x.indexrelid IS NULL OR (x.indisvalid AND x.indisready AND x.indislive)) AS ok, \
                      count(DISTINCT ii.inhparent) AS attached \
               FROM live p LEFT JOIN pg_index x ON x.indrelid = p.part \
               LEFT JOIN pg_inherits ii ON ii.inhrelid = x.indexrelid \
               GROUP BY 1, 2 \
             ) \
             SELECT h.parent, count(*)::int, \
                    coalesce(array_agg(h.part) FILTER (WHERE NOT (h.ok AND h.attached >= coalesce(w.n, 0))), '{}') \
             FROM health h LEFT JOIN want w ON w.parent = h.parent GROUP BY 1",
            &[&oids],
        )
        .await?
    {
        let snap = &mut snaps[at[&r.get::<_, u32>(0)]];
        snap.partition_count = r.get::<_, i32>(1) as usize;
        unhealthy.extend(r.get::<_, Vec<u32>>(2));
    }
    if unhealthy.is_empty() {
        return Ok(snaps);
    }
    // The partitions to look at, with their indexes. An index dropped meanwhile is left out:
    // its pg_get_indexdef, where it is asked for, is NULL.
    let rows = client
        .query(
            "WITH x AS MATERIALIZED ( \
               SELECT t.inhparent AS parent, n.nspname::text AS schema, pc.relname::text AS partition, \
                      ci.relname::text AS name, pi.relname::text AS attached_to, \
                      x.indisvalid AS valid, x.indisready AS ready, x.indislive AS live, \
                      x.indisunique AS is_unique, x.indexrelid AS index \
               FROM pg_inherits t \
               JOIN pg_class pc ON pc.oid = t.inhrelid \
               JOIN pg_namespace n ON n.oid = pc.relnamespace \
               LEFT JOIN pg_index x ON x.indrelid = pc.oid \
               LEFT JOIN pg_class ci ON ci.oid = x.indexrelid \
               LEFT JOIN pg_inherits ii ON ii.inhrelid = x.indexrelid \
               LEFT JOIN pg_class pi ON pi.oid = ii.inhparent \
               WHERE t.inhrelid = ANY($1::oid[]) \
             ) \
             SELECT parent, schema, partition, name, attached_to, valid, ready, live, is_unique, \
                    CASE WHEN index IS NOT NULL AND (attached_to IS NULL OR NOT (valid AND ready AND live)) \
                         THEN substring(pg_get_indexdef(index) FROM ' (USING .*)$') END, \
                    CASE WHEN index IS NOT NULL AND NOT (valid AND ready AND live) \
                         THEN EXISTS (SELECT 1 FROM pg_stat_progress_create_index p WHERE p.index_relid = x.index) \
                         ELSE false END, \
                    index IS NOT NULL AND (attached_to IS NULL OR NOT (valid AND ready AND live)) \
             FROM x ORDER BY 1, 2, 3, 4",
            &[&unhealthy],
        )
        .await?;
    for r in &rows {
        let snap = &mut snaps[at[&r.get::<_, u32>(0)]];
        let partition = RelName {
            schema: r.get(1),
            name: r.get(2),
        };
        if snap
            .partitions
            .last()
            .is_none_or(|p| p.partition != partition)
        {
            snap.partitions.push(PartitionIndexes {
                partition,
                indexes: Vec::new(),
            });
        }
        let Some(name) = r.get::<_, Option<String>>(3) else {
            continue; // a partition without any index
        };
        let definition: Option<String> = r.get(9);
        let asked: bool = r.get(11);
        if asked && definition.is_none() {
            continue; // dropped while this runs
        }
        snap.partitions
            .last_mut()
            .expect("pushed")
            .indexes
            .push(ChildIndex {
                name,
                attached_to: r.get(4),
                valid: r.get(5),
                ready: r.get(6),
                live: r.get(7),
                unique: r.get(8),
                definition,
                building: r.get(10),
            });
    }
    Ok(snaps)
}

/// One problem found.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// `missing`, `invalid`, `not_ready`, `parent_invalid`.
    pub kind: &'static str,
    /// The partition concerned (none for a parent index).
    pub partition: Option<String>,
    /// The index concerned (for `missing`, the parent index that has no child there).
    pub index: String,
    /// Whether uniqueness depends on it (unique or constraint index).
    pub unique: bool,
    /// One line.
    pub message: String,
}

/// Every index problem of the table.
pub fn problems(table: &RelName, snap: &IndexSnapshot) -> Vec<Problem> {
    let mut v = Vec::new();
    for pi in &snap.parent {
        for p in &snap.partitions {
            if !p
                .indexes
                .iter()
                .any(|c| c.attached_to.as_deref() == Some(pi.name.as_str()))
            {
                v.push(Problem {
                    kind: "missing",
                    partition: Some(p.partition.to_string()),
                    index: pi.name.clone(),
                    unique: pi.unique,
                    message: format!(
                        "{} has no index attached to {}.{} ({})",
                        p.partition, table.schema, pi.name, pi.definition
                    ),
                });
            }
        }
    }
    for p in &snap.partitions {
        for c in &p.indexes {
            if !c.valid || !c.ready || !c.live {
                let state = if c.building {
                    "being built right now"
                } else if !c.live {
                    "not live (being dropped)"
                } else if !c.ready {
                    "not ready"
                } else {
                    "INVALID (a failed CREATE INDEX CONCURRENTLY leaves one behind)"
                };
                v.push(Problem {
                    kind: "invalid",
                    partition: Some(p.partition.to_string()),
                    index: c.name.clone(),
                    unique: c.unique,
                    message: format!(
                        "index {}.{} on {} is {state}",
                        p.partition.schema, c.name, p.partition
                    ),
                });
            }
        }
    }
    for pi in &snap.parent {
        if !pi.valid {
            v.push(Problem {
                kind: "parent_invalid",
                partition: None,
                index: pi.name.clone(),
                unique: pi.unique,
                message: format!(
                    "partitioned index {}.{} is not valid (some partition lacks it)",
                    table.schema, pi.name
                ),
            });
        }
    }
    v
}

/// One repair step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Repair {
    /// `DROP INDEX CONCURRENTLY` of a leftover INVALID index on a partition.
    DropInvalid {
        /// The index.
        index: RelName,
    },
    /// Build the missing child index concurrently (unless `reuse` names a matching valid one
    /// already there), then attach it to the parent index.
    Build {
        /// The partition.
        partition: RelName,
        /// The parent index, in the parent's schema.
        parent_index: RelName,
        /// The child index to create (or reuse).
        child_index: RelName,
        /// Whether a matching valid, unattached index already exists (then only attach).
        reuse: bool,
        /// `UNIQUE` or not.
        unique: bool,
        /// From `USING` on.
        definition: String,
    },
}

impl Repair {
    /// The steps, in order, each with how it runs: `... CONCURRENTLY` outside a transaction
    /// under its own bound, `ALTER INDEX ... ATTACH PARTITION` in a transaction under
    /// lock_timeout. Typed, so that the executor never has to guess from the text.
    pub(crate) fn steps(&self) -> Vec<Step> {
        let label = self.label();
        let concurrently = |sql: String, bound: Bound| {
            Step::of(
                label.clone(),
                "the indexes check reports it",
                Work::Concurrently { sql, bound },
            )
        };
        match self {
            Repair::DropInvalid { index } => vec![concurrently(
                format!("DROP INDEX CONCURRENTLY IF EXISTS {}", index.quoted()),
                Bound::Statement,
            )],
            Repair::Build {
                partition,
                parent_index,
                child_index,
                reuse,
                unique,
                definition,
            } => {
                let mut v = Vec::new();
                if !reuse {
                    v.push(concurrently(
                        format!(
                            "CREATE {}INDEX CONCURRENTLY IF NOT EXISTS {} ON {} {definition}",
                            if *unique { "UNIQUE " } else { "" },
                            quote_ident(&child_index.name),
                            partition.quoted()
                        ),
                        Bound::IndexBuild,
                    ));
                }
                v.push(
                    Step::transaction(
                        label.clone(),
                        "the partition's index is not attached to the parent index",
                        vec![Statement::Sql(format!(
                            "ALTER INDEX {} ATTACH PARTITION {}",
                            parent_index.quoted(),
                            child_index.quoted()
                        ))],
                    )
                    .locking(vec![parent_index.quoted(), child_index.quoted()]),
                );
                v
            }
        }
    }

    /// The statements, as `--dry-run` prints them.
    #[cfg(test)]
    pub fn statements(&self) -> Vec<String> {
        self.steps().iter().flat_map(Step::statements).collect()
    }

    /// One line for logs and reports.
    pub fn label(&self) -> String {
        match self {
            Repair::DropInvalid { index } => format!("drop invalid index {index}"),
            Repair::Build {
                partition,
                parent_index,
                reuse,
                ..
            } => format!(
                "{} index of {parent_index} on {partition}",
                if *reuse {
                    "attach existing"
                } else {
                    "build and attach"
                }
            ),
        }
    }
}

/// The repairs for `table`, in order: drop leftovers first, then build missing children.
/// Returns the repairs and the problems it will not touch (constraint indexes, indexes being
/// built by someone right now).
pub fn plan(table: &RelName, snap: &IndexSnapshot) -> (Vec<Repair>, Vec<String>) {
    let mut repairs = Vec::new();
    let mut left = Vec::new();
    for p in &snap.partitions {
        for c in &p.indexes {
            if c.valid && c.ready && c.live {
                continue;
            }
            if c.building {
                left.push(format!(
                    "{}.{} is being built right now; left alone",
                    p.partition.schema, c.name
                ));
            } else if c.attached_to.is_some() {
                left.push(format!(
                    "{}.{} is invalid but attached to a parent index; rebuild it by hand (REINDEX INDEX CONCURRENTLY)",
                    p.partition.schema, c.name
                ));
            } else {
                repairs.push(Repair::DropInvalid {
                    index: RelName {
                        schema: p.partition.schema.clone(),
                        name: c.name.clone(),
                    },
                });
            }
        }
    }
    for pi in &snap.parent {
        for p in &snap.partitions {
            if p.indexes
                .iter()
                .any(|c| c.attached_to.as_deref() == Some(pi.name.as_str()))
            {
                continue;
            }
            if let Some(con) = &pi.constraint {
                left.push(format!(
                    "{} lacks the index of constraint {con}; constraint indexes are not repaired automatically",
                    p.partition
                ));
                continue;
            }
            let existing = p.indexes.iter().find(|c| {
                c.attached_to.is_none()
                    && c.valid
                    && c.ready
                    && c.live
                    && c.unique == pi.unique
                    && c.definition.as_deref() == Some(pi.definition.as_str())
            });
            let child_name = match existing {
                Some(c) => c.name.clone(),
                None => child_index_name(&p.partition.name, &pi.name),
            };
            repairs.push(Repair::Build {
                partition: p.partition.clone(),
                parent_index: RelName {
                    schema: table.schema.clone(),
                    name: pi.name.clone(),
                },
                child_index: RelName {
                    schema: p.partition.schema.clone(),
                    name: child_name,
                },
                reuse: existing.is_some(),
                unique: pi.unique,
                definition: pi.definition.clone(),
            });
        }
    }
    (repairs, left)
}

/// `<partition>_<parent index>`, shortened with a hash suffix to fit 63 bytes.
fn child_index_name(partition: &str, parent_index: &str) -> String {
    let full = format!("{partition}_{parent_index}");
    if full.len() <= MAX_IDENT_BYTES {
        return full;
    }
    let hash = {
        use sha2::{Digest, Sha256};
        hex::encode(&Sha256::digest(full.as_bytes())[..4])
    };
    let mut cut = MAX_IDENT_BYTES - hash.len() - 1;
    while !full.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}_{hash}", &full[..cut])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rel(n: &str) -> RelName {
        RelName {
            schema: "public".into(),
            name: n.into(),
        }
    }

    fn child(name: &str, attached: Option<&str>, valid: bool, def: &str) -> ChildIndex {
        ChildIndex {
            name: name.into(),
            attached_to: attached.map(str::to_string),
            valid,
            ready: true,
            live: true,
            unique: false,
            definition: Some(def.into()),
            building: false,
        }
    }

    #[test]
    fn plans_drop_of_leftovers_and_build_or_reuse_of_missing() {
        let snap = IndexSnapshot {
            parent: vec![
                Index {
                    name: "idx_line".into(),
                    valid: false,
                    unique: false,
                    primary: false,
                    constraint: None,
                    definition: "USING btree (line)".into(),
                },
                Index {
                    name: "pk".into(),
                    valid: true,
                    unique: true,
                    primary: true,
                    constraint: Some("pk".into()),
                    definition: "USING btree (id, t)".into(),
                },
            ],
            partitions: vec![
                PartitionIndexes {
                    partition: rel("t_1"),
                    indexes: vec![
                        child("t_1_pkey", Some("pk"), true, "USING btree (id, t)"),
                        child("t_1_line", Some("idx_line"), true, "USING btree (line)"),
                    ],
                },
                PartitionIndexes {
                    partition: rel("t_2"),
                    indexes: vec![
                        child("t_2_pkey", Some("pk"), true, "USING btree (id, t)"),
                        child("stray", None, false, "USING btree (v)"),
                        child("mine", None, true, "USING btree (line)"),
                    ],
                },
                PartitionIndexes {
                    partition: rel("t_3"),
                    indexes: vec![],
                },
            ],
            partition_count: 3,
        };
        let t = rel("t");
        let probs = problems(&t, &snap);
        let kinds: Vec<(&str, &str)> = probs.iter().map(|p| (p.kind, p.index.as_str())).collect();
        assert_eq!(
            kinds,
            [
                ("missing", "idx_line"),
                ("missing", "idx_line"),
                ("missing", "pk"),
                ("invalid", "stray"),
                ("parent_invalid", "idx_line")
            ]
        );
        let (repairs, left) = plan(&t, &snap);
        let labels: Vec<String> = repairs.iter().map(Repair::label).collect();
        assert_eq!(
            labels,
            [
                "drop invalid index public.stray",
                "attach existing index of public.idx_line on public.t_2",
                "build and attach index of public.idx_line on public.t_3",
            ]
        );
        assert_eq!(
            repairs[2].statements(),
            [
                "CREATE INDEX CONCURRENTLY IF NOT EXISTS \"t_3_idx_line\" ON \"public\".\"t_3\" USING btree (line)",
                "ALTER INDEX \"public\".\"idx_line\" ATTACH PARTITION \"public\".\"t_3_idx_line\""
            ]
        );
        assert_eq!(left.len(), 1, "{left:?}");
        assert!(left[0].contains("constraint pk"));
    }

    #[test]
    fn long_child_names_fit() {
        let n = child_index_name(&"p".repeat(50), &"i".repeat(30));
        assert_eq!(n.len(), 63);
        assert_ne!(n, child_index_name(&"p".repeat(50), &"j".repeat(30)));
    }
}

/// Against a real PostgreSQL (the test harness crate).
#[cfg(test)]
mod pg_tests {
    use super::*;
    use crate::config::Config;
    use partwarden_testkit::TestDb;

    /// A partition or index dropped by someone else while partwarden reads the catalog is still in
    /// the reading query's snapshot, but the server's pg_get_expr / pg_get_indexdef no longer find
    /// it and return NULL. A REPEATABLE READ transaction holds such a snapshot open so the race is
    /// hit every time: the reads must list what is left, not fail (the daemon once panicked here).
    #[tokio::test]
    async fn catalog_reads_survive_objects_dropped_concurrently() {
        let db = TestDb::new("concurrent_drop").await;
        let config = Config::load(&db.write_config("", "")).unwrap();
        let opts = crate::bootstrap::Options {
            dry_run: false,
            now: None,
        };
        crate::bootstrap::run(&config, opts, &mut std::io::sink())
            .await
            .unwrap();
        let c = db.client().await;
        c.batch_execute(
            "CREATE INDEX extra_parent_idx ON market_odds_history (bookmaker_slug);
             CREATE INDEX extra_current_idx ON market_odds_current (bookmaker_slug)",
        )
        .await
        .unwrap();
        let table = RelName {
            schema: "public".into(),
            name: "market_odds_history".into(),
        };
        let current = RelName {
            schema: "public".into(),
            name: "market_odds_current".into(),
        };
        let mut reader = db.client().await;
        let before = catalog::snapshot(&c, &table).await.unwrap();
        let gone = format!(
            "market_odds_history{}",
            crate::period::Interval::Monthly.suffix(chrono::Utc::now())
        );
        assert!(before.partitions.iter().any(|p| p.name.name == gone));

        let tx = reader
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
            .start()
            .await
            .unwrap();
        tx.batch_execute("SELECT 1").await.unwrap(); // takes the snapshot
        c.batch_execute(&format!(
            "DROP TABLE {gone}; DROP INDEX extra_parent_idx; DROP INDEX extra_current_idx"
        ))
        .await
        .unwrap();

        let snap = catalog::snapshot(&tx, &table).await.unwrap();
        assert_eq!(snap.partitions.len(), before.partitions.len() - 1);
        assert!(!snap.partitions.iter().any(|p| p.name.name == gone));
        assert!(!snap.indexes.iter().any(|i| i.name == "extra_parent_idx"));
        let cur = catalog::snapshot(&tx, &current).await.unwrap();
        assert!(!cur.indexes.iter().any(|i| i.name == "extra_current_idx"));
        let idx = snapshots(&tx, std::slice::from_ref(&table))
            .await
            .unwrap()
            .pop()
            .unwrap();
        assert!(!idx.parent.iter().any(|i| i.name == "extra_parent_idx"));
        assert!(!idx.partitions.iter().any(|p| p.partition.name == gone));
        // Every partition left is counted, and healthy (so none is listed for a look).
        assert_eq!(idx.partition_count, before.partitions.len() - 1);
        assert!(idx.partitions.is_empty(), "{:?}", idx.partitions);
        tx.rollback().await.unwrap();
    }
}
