//! Archives of expired partitions: a zstd-compressed text `COPY` stream plus a JSON manifest.
//!
//! Writing streams the table out with `COPY ... TO STDOUT` through a bounded channel into a
//! blocking thread that compresses, hashes (SHA-256 of the file's bytes) and counts rows as it
//! goes, so memory stays flat however large the partition. Files are
//! written under a unique temporary name, fsynced, renamed, and the directory fsynced; the
//! manifest last, so a manifest never points at a file that is not complete.
//!
//! Verifying reads the file back from disk, checks its size and SHA-256 against the manifest,
//! decompresses it, counts its rows and recomputes its content digest (an order-independent
//! sum of the SHA-256 of every row, [`ContentDigest`]), and compares the count with `count(*)`
//! of the table. Only a verified archive allows a partition to be dropped, and the drop itself
//! recomputes the table's digest under its own lock (`table_digest`): a row changed after the
//! archive was written keeps the table.
//!
//! A published file is never overwritten. Names are unique per table, partition schema and
//! partition name, and a partition archived again (its content changed) gets the next version
//! (`<schema>.<name>.v2.pgcopy.zst`); files are linked into place, which fails rather than
//! replaces. Files are created 0600 and directories 0700 whatever the umask: they hold the
//! odds history.

mod copyfmt;
mod files;
mod manifest;
pub mod parquet;
mod read;
pub mod ship;
pub mod store;
mod write;

use std::path::{Path, PathBuf};

use crate::db::error_text;

pub use copyfmt::{ContentDigest, KeyKind, RowCounter};
pub use files::{Paths, create_private_dir, latest, next_version, paths, version_paths};
pub use manifest::{DataFormat, Manifest, ManifestColumn, data_path, read_manifest};
pub use read::{check_file, copy_into, table_digest, verify};
pub use write::{Source, statement_timeout_sql, write};

/// The manifest's `format`, bumped if the layout ever changes.
pub const FORMAT: &str = "partwarden-archive-v1";
/// zstd level. Text COPY of odds history at level 5 is smaller than `pg_dump -Fc` and, with
/// compression running beside the server's COPY, no slower (see `examples/archive_bench.rs`):
/// level 3 is about 10% bigger than pg_dump, level 6 and up cost more time than they save.
const ZSTD_LEVEL: i32 = 5;
/// Batches in flight between the COPY stream and the writer thread: enough to keep both busy,
/// small enough to keep memory flat (CHANNEL_CHUNKS x BATCH_BYTES at most).
const CHANNEL_CHUNKS: usize = 16;
/// A manifest is a few KiB; anything larger is not one (and `/dev/zero` is not read forever).
const MAX_MANIFEST_BYTES: u64 = 1 << 20;
/// Bytes of COPY data gathered before they are handed to the writer thread.
const BATCH_BYTES: usize = 256 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// A file system operation failed.
    #[error("{what} {}: {source}", .path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// On which path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A database operation failed.
    #[error("{what}: {}", error_text(.source))]
    Db {
        /// What was being done.
        what: &'static str,
        /// The error.
        source: tokio_postgres::Error,
    },
    /// The object store refused or failed a request (credentials never appear here).
    #[error("{what}: {message}")]
    Store {
        /// What was being done, with the object's `s3://` URL.
        what: String,
        /// The store's error, on one line.
        message: String,
    },
    /// The archive does not match what it claims or what the table holds.
    #[error("archive {} does not verify: {message}", .path.display())]
    Mismatch {
        /// The data file or manifest.
        path: PathBuf,
        /// What differs.
        message: String,
    },
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> ArchiveError {
    let path = path.to_path_buf();
    move |source| ArchiveError::Io { what, path, source }
}

fn db(what: &'static str) -> impl FnOnce(tokio_postgres::Error) -> ArchiveError {
    move |source| ArchiveError::Db { what, source }
}
