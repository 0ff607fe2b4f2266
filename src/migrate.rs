//! Versioned schema migrations, embedded in the binary, in the manner of refinery.
//!
//! [`plan`] is pure: the migrations this binary knows and those the database has recorded in
//! `partwarden.schema_migrations` in, the pending ones out, or a refusal when the database has
//! a migration this binary does not know or one whose file was edited since it was applied
//! (checksums). The driver then decides, per pending migration, whether to apply it or to
//! *adopt* tables the application already created with the same shape, and runs each step in
//! its own transaction under lock_timeout.

use sha2::{Digest, Sha256};
use tokio_postgres::{Client, GenericClient};

use crate::catalog;
use crate::shape::{self, ExpectedTable};
use crate::step::{self, Record, Statement, StepError};

/// One migration file of `schema/`.
#[derive(Debug)]
pub struct Migration {
    /// Its number, from the file name.
    pub version: i32,
    /// Its name, from the file name.
    pub name: &'static str,
    /// Its SQL, embedded at build time.
    pub sql: &'static str,
    /// Tables it creates that may already exist, made by the application: when they do, with
    /// exactly this shape, the migration is recorded as adopted instead of applied.
    pub adopts: &'static [&'static ExpectedTable],
}

/// Every migration, in order. A unit test checks that this list and `schema/` agree.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "odds_schema",
        sql: include_str!("../schema/0001_odds_schema.sql"),
        adopts: shape::ODDS_TABLES,
    },
    Migration {
        version: 2,
        name: "partition_events",
        sql: include_str!("../schema/0002_partition_events.sql"),
        adopts: &[],
    },
    Migration {
        version: 3,
        name: "write_odds",
        sql: include_str!("../schema/0003_write_odds.sql"),
        adopts: &[],
    },
    Migration {
        version: 4,
        name: "current_fillfactor",
        sql: include_str!("../schema/0004_current_fillfactor.sql"),
        adopts: &[],
    },
    Migration {
        version: 5,
        name: "change_detection",
        sql: include_str!("../schema/0005_change_detection.sql"),
        adopts: &[],
    },
    Migration {
        version: 6,
        name: "history_pkey_name",
        sql: include_str!("../schema/0006_history_pkey_name.sql"),
        adopts: &[],
    },
    Migration {
        version: 7,
        name: "upload_step",
        sql: include_str!("../schema/0007_upload_step.sql"),
        adopts: &[],
    },
    Migration {
        version: 8,
        name: "write_odds_packed",
        sql: include_str!("../schema/0008_write_odds_packed.sql"),
        adopts: &[],
    },
    Migration {
        version: 9,
        name: "write_odds_known",
        sql: include_str!("../schema/0009_write_odds_known.sql"),
        adopts: &[],
    },
    Migration {
        version: 10,
        name: "write_odds_new",
        sql: include_str!("../schema/0010_write_odds_new.sql"),
        adopts: &[],
    },
    Migration {
        version: 11,
        name: "default_drains",
        sql: include_str!("../schema/0011_default_drains.sql"),
        adopts: &[],
    },
];

/// Creates partwarden's schema; run only when it does not exist, since even `IF NOT EXISTS`
/// needs CREATE on the database, which a least-privilege role may lack.
const CREATE_SCHEMA: &str = "CREATE SCHEMA partwarden";

/// Serialises concurrent bootstraps (`pg_advisory_lock` key; the bytes of "pwbootst").
pub const BOOTSTRAP_LOCK_KEY: i64 = crate::lock::Lock::Bootstrap.key();

/// The bookkeeping schema and table, created with the first migration step.
const BOOKKEEPING: &str = "\
CREATE TABLE IF NOT EXISTS partwarden.schema_migrations (
    version integer PRIMARY KEY,
    name text NOT NULL,
    checksum text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now(),
    adopted boolean NOT NULL DEFAULT false
)";

impl Migration {
    /// SHA-256 of the SQL text, hex.
    pub fn checksum(&self) -> String {
        hex::encode(Sha256::digest(self.sql.as_bytes()))
    }

    /// `0001_odds_schema`.
    pub fn id(&self) -> String {
        format!("{:04}_{}", self.version, self.name)
    }
}

/// A migration recorded in `partwarden.schema_migrations`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Applied {
    /// Version.
    pub version: i32,
    /// Name.
    pub name: String,
    /// Checksum recorded when it was applied.
    pub checksum: String,
    /// Whether it was adopted rather than applied.
    pub adopted: bool,
}

/// Why migrations cannot run.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    /// The recorded checksum differs from the file's.
    #[error(
        "migration {id} was edited after it was applied (recorded checksum {recorded}, file has {file}); restore the original file and add a new migration instead"
    )]
    Edited {
        /// `0001_odds_schema`.
        id: String,
        /// Checksum in the database.
        recorded: String,
        /// Checksum of the embedded file.
        file: String,
    },
    /// The database has a migration this binary does not know.
    #[error(
        "the database has migration {version} ({name}), which this partwarden does not know; upgrade partwarden"
    )]
    Unknown {
        /// Version.
        version: i32,
        /// Name.
        name: String,
    },
    /// Existing tables differ from the migration's shape.
    #[error("cannot adopt the existing tables for migration {id}; nothing was changed. Differences: {}", .differences.join("; "))]
    ShapeMismatch {
        /// The migration.
        id: String,
        /// One line per difference.
        differences: Vec<String>,
    },
    /// Another bootstrap holds the lock.
    #[error(
        "another partwarden --bootstrap is running (advisory lock {BOOTSTRAP_LOCK_KEY} held by pid {holder}); try again when it is done"
    )]
    Busy {
        /// Its backend pid, or 0 when unknown.
        holder: i32,
    },
    /// A migration's transaction failed; it was rolled back.
    #[error(transparent)]
    Step(#[from] StepError),
    /// A catalog query failed.
    #[error("reading migration state: {}", crate::db::error_text(.0))]
    Db(#[from] tokio_postgres::Error),
}

/// The pending migrations, or why none may run.
pub fn plan<'a>(
    known: &'a [Migration],
    applied: &[Applied],
) -> Result<Vec<&'a Migration>, MigrateError> {
    for a in applied {
        match known.iter().find(|m| m.version == a.version) {
            None => {
                return Err(MigrateError::Unknown {
                    version: a.version,
                    name: a.name.clone(),
                });
            }
            Some(m) if m.checksum() != a.checksum || m.name != a.name => {
                return Err(MigrateError::Edited {
                    id: m.id(),
                    recorded: a.checksum.clone(),
                    file: m.checksum(),
                });
            }
            Some(_) => {}
        }
    }
    Ok(known
        .iter()
        .filter(|m| !applied.iter().any(|a| a.version == m.version))
        .collect())
}

/// One pending migration and the step that applies or adopts it.
#[derive(Debug)]
pub struct Pending<'a> {
    /// The migration.
    pub migration: &'a Migration,
    /// Its tables exist with the expected shape: recorded, not run.
    pub adopt: bool,
    /// Its transaction: the `partwarden` schema when it does not exist yet (asked first,
    /// because even `CREATE SCHEMA IF NOT EXISTS` needs CREATE on the database, which a
    /// least-privilege role lacks when an administrator made the schema for it), the
    /// bookkeeping table, the migration's SQL unless adopted, and its row.
    pub(crate) step: step::Step,
}

impl Pending<'_> {
    fn new(m: &Migration, adopt: bool, create_schema: bool) -> Pending<'_> {
        let mut statements = Vec::new();
        if create_schema {
            statements.push(Statement::Sql(CREATE_SCHEMA.to_string()));
        }
        statements.push(Statement::Sql(BOOKKEEPING.to_string()));
        if !adopt {
            statements.push(Statement::Script {
                name: format!("schema/{}.sql", m.id()),
                text: m.sql,
            });
        }
        let step = step::Step::transaction(
            format!("migration {}", m.id()),
            if adopt {
                "adopt (tables exist with the expected shape)"
            } else {
                "apply"
            },
            statements,
        )
        .recording(Record::Migration {
            version: m.version,
            name: m.name.to_string(),
            checksum: m.checksum(),
            adopted: adopt,
        });
        Pending {
            migration: m,
            adopt,
            step,
        }
    }
}

/// Migrations recorded in the database; empty when the bookkeeping table does not exist yet.
pub async fn applied(client: &impl GenericClient) -> Result<Vec<Applied>, tokio_postgres::Error> {
    let exists: bool = client
        .query_one(
            "SELECT to_regclass('partwarden.schema_migrations') IS NOT NULL",
            &[],
        )
        .await?
        .get(0);
    if !exists {
        return Ok(Vec::new());
    }
    Ok(client
        .query(
            "SELECT version, name, checksum, adopted FROM partwarden.schema_migrations ORDER BY version",
            &[],
        )
        .await?
        .iter()
        .map(|r| Applied {
            version: r.get(0),
            name: r.get(1),
            checksum: r.get(2),
            adopted: r.get(3),
        })
        .collect())
}

/// Reads the database and decides each pending step: apply, adopt, or refuse with the list of
/// differences. Changes nothing.
pub async fn steps<'a>(
    client: &impl GenericClient,
    known: &'a [Migration],
) -> Result<Vec<Pending<'a>>, MigrateError> {
    let applied = applied(client).await?;
    let mut create_schema: bool = client
        .query_one("SELECT to_regnamespace('partwarden') IS NULL", &[])
        .await?
        .get(0);
    let mut steps = Vec::new();
    for m in plan(known, &applied)? {
        let mut existing = 0;
        let mut differences = Vec::new();
        for t in m.adopts {
            let snap = catalog::snapshot(client, &t.rel_name()).await?;
            if snap.exists {
                existing += 1;
            }
            differences.extend(t.differences(&snap));
        }
        if existing == 0 || differences.is_empty() {
            steps.push(Pending::new(m, existing > 0, create_schema));
            create_schema = false;
        } else {
            return Err(MigrateError::ShapeMismatch {
                id: m.id(),
                differences,
            });
        }
    }
    Ok(steps)
}

/// Takes the bootstrap advisory lock, waiting up to `wait` for another bootstrap to finish.
pub async fn lock(client: &Client, wait: std::time::Duration) -> Result<(), MigrateError> {
    match crate::lock::take(client, crate::lock::Lock::Bootstrap, wait).await? {
        Ok(()) => Ok(()),
        Err(holder) => Err(MigrateError::Busy { holder }),
    }
}

/// Releases the bootstrap lock (also released when the session ends).
pub async fn unlock(client: &Client) -> Result<(), tokio_postgres::Error> {
    crate::lock::release(client, crate::lock::Lock::Bootstrap).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn applied_of(m: &Migration) -> Applied {
        Applied {
            version: m.version,
            name: m.name.to_string(),
            checksum: m.checksum(),
            adopted: false,
        }
    }

    #[test]
    fn schema_folder_and_list_agree() {
        let mut files: Vec<String> =
            std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/schema"))
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .filter(|f| f.ends_with(".sql"))
                .collect();
        files.sort();
        let listed: Vec<String> = MIGRATIONS
            .iter()
            .map(|m| format!("{}.sql", m.id()))
            .collect();
        assert_eq!(files, listed);
        for (i, m) in MIGRATIONS.iter().enumerate() {
            assert_eq!(
                m.version as usize,
                i + 1,
                "versions are 1, 2, 3, ... in order"
            );
        }
    }

    #[test]
    fn pending_and_noop() {
        assert_eq!(plan(MIGRATIONS, &[]).unwrap().len(), MIGRATIONS.len());
        let all: Vec<Applied> = MIGRATIONS.iter().map(applied_of).collect();
        assert!(plan(MIGRATIONS, &all).unwrap().is_empty());
    }

    #[test]
    fn edited_migration_is_refused_by_name() {
        let mut a = applied_of(&MIGRATIONS[0]);
        a.checksum = "0".repeat(64);
        let e = plan(MIGRATIONS, &[a]).unwrap_err().to_string();
        assert!(
            e.contains("0001_odds_schema") && e.contains("edited"),
            "{e}"
        );
    }

    #[test]
    fn unknown_migration_is_refused() {
        let a = Applied {
            version: 999,
            name: "future".into(),
            checksum: "x".into(),
            adopted: false,
        };
        assert!(matches!(
            plan(MIGRATIONS, &[a]),
            Err(MigrateError::Unknown { version: 999, .. })
        ));
    }
}
