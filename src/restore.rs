//! `--restore MANIFEST`: bring an archived partition back.
//!
//! A manifest is untrusted input: its SHA-256 covers the data file, not the manifest itself,
//! so anyone who can write to the archive directory can write one. Nothing from it reaches SQL
//! as text but names, which are validated and quoted:
//! - the parent is a configured table (or the one the operator names with `--target`);
//! - the restored table goes into the parent's schema (attached back) or `partwarden_archive`,
//!   never into a schema the manifest names;
//! - column types are compared with the parent's, or resolved by the server (`to_regtype`, then
//!   `format_type` of the type it found), never spliced;
//! - the file is read once, inside the loading transaction: the bytes COPY sends are hashed
//!   and counted as they go, and the transaction is rolled back unless size, SHA-256, row count
//!   and content digest all match the manifest.
//!
//! When the parent still exists with the same columns and the archived range is free, the
//! partition is recreated under its old name and attached back with the low-lock recipe (load
//! standalone, validated CHECK, ATTACH, drop the CHECK). Otherwise it is restored as a
//! standalone table in schema `partwarden_archive`, and the output says so.

use std::io::Write;
use std::path::Path;

use chrono::Utc;
use serde::Serialize;

use crate::archive::{self, ArchiveError, Manifest};
use crate::catalog::{self, RelName};
use crate::config::Config;
use crate::db::{self, ConnectError, error_text};
use crate::ident::{QualifiedName, quote_ident};
use crate::ledger::{self, Entry};
use crate::pass::{self, ARCHIVE_SCHEMA, PassError};
use crate::period::sql_timestamp;
use crate::premake::BOUND_CHECK;
use crate::step::{Executor, Record, Statement, Step, StepError};

/// What a restore did.
#[derive(Debug, Serialize)]
pub struct Outcome {
    /// The table the rows are now in.
    pub restored_as: String,
    /// Whether it is attached to its parent again.
    pub attached: bool,
    /// Rows loaded.
    pub rows: u64,
    /// Why it was (not) attached.
    pub reason: String,
    /// Whether this was a dry run.
    pub dry_run: bool,
}

impl Outcome {
    /// One line.
    pub fn to_text(&self) -> String {
        let would = if self.dry_run { "would be " } else { "" };
        format!(
            "{} rows {would}restored into {} ({}): {}\n",
            self.rows,
            self.restored_as,
            if self.attached {
                "attached to its table"
            } else {
                "standalone"
            },
            self.reason
        )
    }
}

/// Why a restore failed. Nothing is left half-made in the database: a failed load rolls back.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// The archive is unreadable or does not match its manifest.
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    /// No connection.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// The schema is not current.
    #[error(transparent)]
    Pass(#[from] PassError),
    /// A step failed; a failed load was rolled back.
    #[error(transparent)]
    Step(#[from] StepError),
    /// A query failed.
    #[error("{}", error_text(.0))]
    Db(#[from] tokio_postgres::Error),
    /// The restore cannot go ahead.
    #[error("{0}")]
    Refused(String),
}

/// Longest name PostgreSQL keeps (NAMEDATALEN - 1).
const MAX_NAME_BYTES: usize = 63;

/// Restores the archive described by `manifest_path` into its table, or into `target` when
/// the operator names one.
pub async fn run(
    config: &Config,
    manifest_path: &Path,
    target: Option<&QualifiedName>,
    dry_run: bool,
    out: &mut (dyn Write + Send),
) -> Result<Outcome, RestoreError> {
    // A manifest in an object store is fetched, with its data file, into a private local
    // directory (removed when the restore ends), and restored from there like a local one.
    let fetched = match manifest_path.to_str() {
        Some(url) if url.starts_with("s3://") => Some(
            archive::store::fetch(
                url,
                config.maintenance.archive_store.as_ref(),
                &config.maintenance.archive_dir,
            )
            .await?,
        ),
        _ => None,
    };
    let manifest_path = fetched
        .as_ref()
        .map_or(manifest_path, |f| f.manifest.as_path());
    let m = archive::read_manifest(manifest_path)?;
    let parent = match target {
        Some(t) => RelName::from(t),
        None => {
            let named = QualifiedName::parse(&m.table).map_err(|e| {
                RestoreError::Refused(format!("the manifest's table {:?}: {e}", m.table))
            })?;
            if !config.tables.iter().any(|t| t.name == named) {
                return Err(RestoreError::Refused(format!(
                    "the manifest's table {named} is not a configured table; name the table to restore into with --target SCHEMA.TABLE"
                )));
            }
            RelName::from(&named)
        }
    };
    let partition_name = checked_name("partition_name", &m.partition_name)?;
    for c in &m.columns {
        checked_name("column name", &c.name)?;
    }
    if dry_run {
        // Nothing is loaded: read the file once to say whether it would load.
        archive::check_file(manifest_path, &m).await?;
    }
    let rows = m.rows;
    let mut client = db::connect(&config.database).await?;
    pass::require_current_schema(&client).await?;
    if !dry_run {
        db::require_primary(&client)
            .await
            .map_err(RestoreError::Refused)?;
    }
    let target = RelName {
        schema: parent.schema.clone(),
        name: partition_name.clone(),
    };
    let snap = catalog::snapshot(&client, &parent).await?;
    let columns_match = {
        // Generated columns are not in archives: the restored table recomputes them.
        let mut a: Vec<(String, String)> = snap
            .columns
            .iter()
            .filter(|c| !c.generated)
            .map(|c| (c.name.clone(), c.data_type.clone()))
            .collect();
        let mut b: Vec<(String, String)> = m
            .columns
            .iter()
            .map(|c| (c.name.clone(), c.data_type.clone()))
            .collect();
        a.sort();
        b.sort();
        a == b
    };
    let target_free: bool = client
        .query_one("SELECT to_regclass($1) IS NULL", &[&target.quoted()])
        .await?
        .get(0);
    let attach_refusal = if !snap.exists || snap.relkind != Some('p') {
        Some(format!("{parent} is not a partitioned table any more"))
    } else if snap.range_key_column() != Some(m.partition_key.as_str()) {
        Some(format!(
            "{parent} is not partitioned by {:?} any more",
            m.partition_key
        ))
    } else if !columns_match {
        Some(format!("{parent}'s columns differ from the archive's"))
    } else if m.lower.is_none() || m.upper.is_none() {
        Some("the archived range is unbounded".to_string())
    } else if let Some(p) = snap
        .partitions
        .iter()
        .find(|p| p.overlaps(m.lower.expect("checked"), m.upper.expect("checked")))
    {
        Some(format!("its range is now covered by {}", p.name))
    } else if snap.default_partition().is_some() {
        Some(format!(
            "{parent} has a DEFAULT partition, which may hold rows of this range"
        ))
    } else if !target_free {
        Some(format!("a relation named {target} exists"))
    } else {
        None
    };

    let (restored_as, attached, reason) = match &attach_refusal {
        None => (
            target.clone(),
            true,
            "its range is free in the parent".to_string(),
        ),
        Some(why) => (
            RelName {
                schema: ARCHIVE_SCHEMA.into(),
                name: partition_name.clone(),
            },
            false,
            format!("restored standalone in {ARCHIVE_SCHEMA} because {why}"),
        ),
    };
    let mut reason = reason;
    if attached
        && let Some(t) = config
            .tables
            .iter()
            .find(|t| RelName::from(&t.name) == parent)
        && crate::expiry::is_expired(t, m.upper, Utc::now())
    {
        reason.push_str(&format!(
            "; note: it is past the table's retention ({}), so the next pass expires it again unless the retention is raised",
            t.retention.map(|r| r.to_string()).unwrap_or_default()
        ));
    }
    let outcome = Outcome {
        restored_as: restored_as.to_string(),
        attached,
        rows,
        reason,
        dry_run,
    };
    let exists: bool = client
        .query_one(
            "SELECT to_regclass($1) IS NOT NULL",
            &[&restored_as.quoted()],
        )
        .await?
        .get(0);
    if exists {
        return Err(RestoreError::Refused(format!(
            "{restored_as} already exists (restored before?); drop or rename it first"
        )));
    }
    let create = if attached || (snap.exists && columns_match) {
        format!(
            "CREATE TABLE {} (LIKE {} {})",
            restored_as.quoted(),
            parent.quoted(),
            crate::premake::LIKE_OPTIONS
        )
    } else {
        create_from_manifest(&client, &restored_as, &m).await?
    };
    // Load: one transaction, so a failed, short or mismatching load leaves nothing behind.
    let mut load = Vec::new();
    if !attached && !pass::schema_exists(&client, ARCHIVE_SCHEMA).await? {
        load.push(Statement::Sql(format!("CREATE SCHEMA {ARCHIVE_SCHEMA}")));
    }
    load.push(Statement::Sql(create));
    load.push(Statement::Load {
        manifest_path: manifest_path.to_path_buf(),
        manifest: Box::new(m.clone()),
        into: restored_as.clone(),
    });
    let attach = attach_sql(&parent, &restored_as, &m);
    if attached {
        // The validated CHECK that lets ATTACH skip its scan.
        load.push(Statement::Sql(attach[0].clone()));
    }
    let mut steps = vec![
        Step::transaction(
            format!("restore {restored_as}"),
            format!("{} ({rows} rows)", manifest_path.display()),
            load,
        )
        .recording(Record::Ledger(Entry {
            table: parent.clone(),
            partition: Some(restored_as.clone()),
            lower: m.lower,
            upper: m.upper,
            step: ledger::Step::Restore,
        }))
        .locking(vec![parent.quoted()]),
    ];
    if attached {
        steps.push(
            Step::transaction(
                format!("attach restored {restored_as}"),
                "the range is free in the parent: ATTACH, which the validated CHECK spares its scan",
                attach[1..].iter().cloned().map(Statement::Sql).collect(),
            )
            .locking(vec![parent.quoted()])
            .if_it_fails(format!(
                "the rows are loaded into {restored_as}, but attaching it failed; run `{}` when the lock is free",
                attach[1]
            )),
        );
    }
    if dry_run {
        for step in &steps {
            let _ = writeln!(out, "{}", step.render(config));
        }
        return Ok(outcome);
    }
    let mut exec = Executor::new(&mut client, config);
    for step in &steps {
        exec.run(step).await?;
    }
    tracing::info!(table = %restored_as, rows, attached, "restored");
    Ok(outcome)
}

fn bounds(m: &Manifest) -> (String, String) {
    (
        sql_timestamp(m.lower.expect("attach requires bounds")),
        sql_timestamp(m.upper.expect("attach requires bounds")),
    )
}

/// CHECK, ATTACH, drop the CHECK: the low-lock recipe for a table that already holds its rows.
fn attach_sql(parent: &RelName, t: &RelName, m: &Manifest) -> Vec<String> {
    let (lo, hi) = bounds(m);
    let key = quote_ident(&m.partition_key);
    vec![
        format!(
            "ALTER TABLE {} ADD CONSTRAINT {} CHECK ({key} IS NOT NULL AND {key} >= {lo} AND {key} < {hi})",
            t.quoted(),
            quote_ident(BOUND_CHECK)
        ),
        format!(
            "ALTER TABLE {} ATTACH PARTITION {} FOR VALUES FROM ({lo}) TO ({hi})",
            parent.quoted(),
            t.quoted()
        ),
        format!(
            "ALTER TABLE {} DROP CONSTRAINT {}",
            t.quoted(),
            quote_ident(BOUND_CHECK)
        ),
    ]
}

/// A name from the manifest, to be quoted: 1 to 63 bytes, no control characters.
fn checked_name(what: &str, name: &str) -> Result<String, RestoreError> {
    if name.is_empty() || name.len() > MAX_NAME_BYTES || name.chars().any(char::is_control) {
        return Err(RestoreError::Refused(format!(
            "the manifest's {what} {name:?} is not a PostgreSQL name (1 to {MAX_NAME_BYTES} bytes, no control characters)"
        )));
    }
    Ok(name.to_string())
}

/// `CREATE TABLE` from the manifest's columns, for when the parent is gone or changed. The type
/// of each column is resolved by the server (`to_regtype`, which only parses a type name and
/// runs nothing), and what goes into the statement is the server's own `format_type` of the
/// type it found, never the manifest's text. Type modifiers (`numeric(10,2)`) are dropped: the
/// restored column is the unconstrained type, which holds every archived value.
async fn create_from_manifest(
    client: &tokio_postgres::Client,
    t: &RelName,
    m: &Manifest,
) -> Result<String, RestoreError> {
    let mut cols = Vec::new();
    for c in &m.columns {
        let unknown = || {
            RestoreError::Refused(format!(
                "the manifest's column {:?} has type {:?}, which is not a type this server knows",
                c.name, c.data_type
            ))
        };
        let resolved: Option<String> = client
            .query_one("SELECT format_type(to_regtype($1), NULL)", &[&c.data_type])
            .await
            .map_err(|_| unknown())?
            .get(0);
        let resolved = resolved.ok_or_else(unknown)?;
        cols.push(format!("{} {resolved}", quote_ident(&c.name)));
    }
    Ok(format!("CREATE TABLE {} ({})", t.quoted(), cols.join(", ")))
}
