//! The ledger, `partwarden.partition_events`: what partwarden did to which partition, when, and
//! whether it finished.
//!
//! Steps that are a single transaction (create, plain detach, finalize, drop, move) write their
//! event inside that transaction, so the ledger and the catalog can never disagree about them.
//! Steps that cannot be one transaction (DETACH CONCURRENTLY, writing and verifying an archive
//! file, archive_command) write a started event before and finish it after; a crash leaves a
//! started event behind, and the next pass looks at the catalog and the files to see how far
//! the step got.

use chrono::{DateTime, Utc};
use tokio_postgres::GenericClient;

use crate::catalog::RelName;

/// The steps the ledger knows (the CHECK constraint of the table lists the same).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// A partition was created and attached.
    Create,
    /// A partition was detached.
    Detach,
    /// A pending concurrent detach was finalized.
    Finalize,
    /// An archive file and its manifest were written.
    Archive,
    /// An archive was read back and matched the table.
    Verify,
    /// archive_command succeeded for the archive and its manifest.
    Ship,
    /// The archive and its manifest were uploaded to the object store and verified there.
    Upload,
    /// A detached partition was dropped.
    Drop,
    /// A detached partition was moved to schema partwarden_archive.
    Move,
    /// A partition was restored from an archive.
    Restore,
    /// A maintenance pass finished (partition fields empty).
    Pass,
}

impl Step {
    /// The name stored in the `step` column.
    pub fn as_str(self) -> &'static str {
        match self {
            Step::Create => "create",
            Step::Detach => "detach",
            Step::Finalize => "finalize",
            Step::Archive => "archive",
            Step::Verify => "verify",
            Step::Ship => "ship",
            Step::Upload => "upload",
            Step::Drop => "drop",
            Step::Move => "move",
            Step::Restore => "restore",
            Step::Pass => "pass",
        }
    }

    fn parse(s: &str) -> Option<Step> {
        Some(match s {
            "create" => Step::Create,
            "detach" => Step::Detach,
            "finalize" => Step::Finalize,
            "archive" => Step::Archive,
            "verify" => Step::Verify,
            "ship" => Step::Ship,
            "upload" => Step::Upload,
            "drop" => Step::Drop,
            "move" => Step::Move,
            "restore" => Step::Restore,
            "pass" => Step::Pass,
            _ => return None,
        })
    }
}

/// One event to record.
#[derive(Clone, Debug)]
pub struct Event<'a> {
    /// The partitioned parent.
    pub table: &'a RelName,
    /// The partition, `None` for pass events.
    pub partition: Option<&'a RelName>,
    /// Its bounds.
    pub lower: Option<DateTime<Utc>>,
    /// Its bounds.
    pub upper: Option<DateTime<Utc>>,
    /// What was done.
    pub step: Step,
}

/// One event to record, owned: what a planned step records when it runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The partitioned parent.
    pub table: RelName,
    /// The partition, `None` for pass events.
    pub partition: Option<RelName>,
    /// Its bounds.
    pub lower: Option<DateTime<Utc>>,
    /// Its bounds.
    pub upper: Option<DateTime<Utc>>,
    /// What was done.
    pub step: Step,
}

impl Entry {
    /// The event to record.
    pub fn event(&self) -> Event<'_> {
        Event {
            table: &self.table,
            partition: self.partition.as_ref(),
            lower: self.lower,
            upper: self.upper,
            step: self.step,
        }
    }

    /// The same partition, another step.
    pub fn with_step(&self, step: Step) -> Entry {
        Entry {
            step,
            ..self.clone()
        }
    }
}

/// What a finished step produced.
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    /// Rows involved (moved, archived, verified, dropped).
    pub rows: Option<i64>,
    /// Archive file written or verified.
    pub archive_path: Option<String>,
    /// SHA-256 of that file.
    pub checksum: Option<String>,
    /// Why the step failed; `None` when it succeeded.
    pub error: Option<String>,
}

/// Records a step that starts now and is not finished yet. Returns its id for [`finish`].
pub async fn start(
    client: &impl GenericClient,
    e: &Event<'_>,
) -> Result<i64, tokio_postgres::Error> {
    let (schema, name) = split(e.partition);
    Ok(client
        .query_one(
            "INSERT INTO partwarden.partition_events \
               (table_name, partition_schema, partition_name, lower_bound, upper_bound, step) \
             VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
            &[
                &e.table.to_string(),
                &schema,
                &name,
                &e.lower,
                &e.upper,
                &e.step.as_str(),
            ],
        )
        .await?
        .get(0))
}

/// Finishes a step recorded by [`start`], with its outcome (an error keeps it unfinished:
/// `finished_at` stays NULL and `error` says why).
pub async fn finish(
    client: &impl GenericClient,
    id: i64,
    o: &Outcome,
) -> Result<(), tokio_postgres::Error> {
    client
        .execute(
            "UPDATE partwarden.partition_events SET rows = $2, archive_path = $3, checksum = $4, error = $5, \
               finished_at = CASE WHEN $5::text IS NULL THEN clock_timestamp() END \
             WHERE id = $1",
            &[&id, &o.rows, &o.archive_path, &o.checksum, &o.error],
        )
        .await
        .map(|_| ())
}

/// Records a step that started at `started_at` and is over now, in one statement (used inside
/// the transaction of the step itself, and for outcomes that are final even when they carry an
/// error, such as a pass with failures). `finished_at` is always set.
pub async fn record(
    client: &impl GenericClient,
    e: &Event<'_>,
    started_at: DateTime<Utc>,
    o: &Outcome,
) -> Result<(), tokio_postgres::Error> {
    let (schema, name) = split(e.partition);
    client
        .execute(
            "INSERT INTO partwarden.partition_events \
               (table_name, partition_schema, partition_name, lower_bound, upper_bound, step, rows, \
                archive_path, checksum, started_at, finished_at, error) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, clock_timestamp(), $11)",
            &[
                &e.table.to_string(),
                &schema,
                &name,
                &e.lower,
                &e.upper,
                &e.step.as_str(),
                &o.rows,
                &o.archive_path,
                &o.checksum,
                &started_at,
                &o.error,
            ],
        )
        .await
        .map(|_| ())
}

fn split(p: Option<&RelName>) -> (Option<String>, Option<String>) {
    match p {
        Some(p) => (Some(p.schema.clone()), Some(p.name.clone())),
        None => (None, None),
    }
}

/// The latest expiry event of one partition that has not reached a finished drop or move.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InFlight {
    /// The partition (now, most likely, a detached table).
    pub partition: RelName,
    /// Its bounds when it was attached.
    pub lower: Option<DateTime<Utc>>,
    /// Its bounds when it was attached.
    pub upper: Option<DateTime<Utc>>,
    /// The latest step recorded.
    pub last_step: Step,
    /// Whether that step finished.
    pub last_finished: bool,
}

/// Expiries of `table` that were started and not completed (no finished drop or move after
/// their latest event).
pub async fn in_flight(
    client: &impl GenericClient,
    table: &RelName,
) -> Result<Vec<InFlight>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT DISTINCT ON (partition_schema, partition_name) \
                    partition_schema, partition_name, lower_bound, upper_bound, step, finished_at IS NOT NULL \
             FROM partwarden.partition_events \
             WHERE table_name = $1 AND partition_name IS NOT NULL \
               AND step IN ('detach', 'finalize', 'archive', 'verify', 'ship', 'upload', 'drop', 'move') \
             ORDER BY partition_schema, partition_name, id DESC",
            &[&table.to_string()],
        )
        .await?;
    Ok(rows
        .iter()
        .filter_map(|r| {
            let step = Step::parse(r.get(4))?;
            let finished: bool = r.get(5);
            if finished && matches!(step, Step::Drop | Step::Move) {
                return None;
            }
            Some(InFlight {
                partition: RelName {
                    schema: r.get(0),
                    name: r.get(1),
                },
                lower: r.get(2),
                upper: r.get(3),
                last_step: step,
                last_finished: finished,
            })
        })
        .collect())
}

/// Whether a finished event of `step` exists for this partition after its latest detach,
/// with the given checksum when one is given.
pub async fn finished_since_detach(
    client: &impl GenericClient,
    table: &RelName,
    partition: &RelName,
    step: Step,
    checksum: Option<&str>,
) -> Result<bool, tokio_postgres::Error> {
    Ok(client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM partwarden.partition_events e \
               WHERE e.table_name = $1 AND e.partition_schema = $2 AND e.partition_name = $3 \
                 AND e.step = $4 AND e.finished_at IS NOT NULL AND ($5::text IS NULL OR e.checksum = $5) \
                 AND e.id > coalesce((SELECT max(d.id) FROM partwarden.partition_events d \
                     WHERE d.table_name = $1 AND d.partition_schema = $2 AND d.partition_name = $3 \
                       AND d.step = 'detach'), 0))",
            &[&table.to_string(), &partition.schema, &partition.name, &step.as_str(), &checksum],
        )
        .await?
        .get(0))
}
