//! The manifest: what an archive file holds, written last, read as untrusted input.

#![allow(unused_imports)]
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures_util::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio_postgres::{Client, GenericClient, IsolationLevel};

use super::*;
use crate::catalog::{self, RelName};
use crate::db::error_text;

/// The format of an archive's data file (`maintenance.archive_format`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DataFormat {
    /// zstd-compressed PostgreSQL text COPY (`.pgcopy.zst`).
    #[default]
    Copy,
    /// Parquet with typed, zstd-compressed columns (`.parquet`).
    Parquet,
}

/// One column of the archived table.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestColumn {
    /// Column name.
    pub name: String,
    /// `format_type` of the column.
    #[serde(rename = "type")]
    pub data_type: String,
}

/// What an archive holds, written beside it as `<partition>.manifest.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// [`FORMAT`].
    pub format: String,
    /// The partitioned parent, `schema.table`.
    pub table: String,
    /// The partition's schema.
    pub partition_schema: String,
    /// The partition's name.
    pub partition_name: String,
    /// Its lower bound when it was attached (`None`: MINVALUE).
    pub lower: Option<DateTime<Utc>>,
    /// Its upper bound when it was attached (`None`: MAXVALUE).
    pub upper: Option<DateTime<Utc>>,
    /// The partition key column.
    pub partition_key: String,
    /// Columns in COPY order.
    pub columns: Vec<ManifestColumn>,
    /// Rows in the file.
    pub rows: u64,
    /// Smallest partition key in the file.
    pub key_min: Option<DateTime<Utc>>,
    /// Largest partition key in the file.
    pub key_max: Option<DateTime<Utc>>,
    /// The data file's name, in the manifest's directory.
    pub file: String,
    /// `zstd`.
    pub compression: String,
    /// `text` (PostgreSQL text COPY, written in a UTC, ISO DateStyle session).
    pub copy_format: String,
    /// Size of the data file.
    pub compressed_bytes: u64,
    /// SHA-256 of the data file, hex.
    pub sha256: String,
    /// What the data file is: a zstd text COPY stream (the default, and what manifests
    /// written before Parquet existed hold) or Parquet.
    #[serde(default)]
    pub data_format: DataFormat,
    /// For Parquet: the order-independent digest of the typed values of the rows
    /// (`parquet::TYPED_DIGEST_PREFIX`), which verifying the file recomputes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub typed_digest: Option<String>,
    /// Order-independent digest of the rows ([`ContentDigest`]); absent in manifests written
    /// before it existed, whose archives cannot prove a table unchanged and are archived again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_digest: Option<String>,
    /// `server_version` of the PostgreSQL that produced it.
    pub server_version: String,
    /// partwarden's version.
    pub partwarden_version: String,
    /// When it was written.
    pub created_at: DateTime<Utc>,
}

/// Reads a manifest.
pub fn read_manifest(path: &Path) -> Result<Manifest, ArchiveError> {
    let file = File::open(path).map_err(io("reading manifest", path))?;
    let meta = file.metadata().map_err(io("reading manifest", path))?;
    if !meta.is_file() {
        return Err(ArchiveError::Mismatch {
            path: path.to_path_buf(),
            message: "not a regular file".into(),
        });
    }
    let mut text = Vec::new();
    file.take(MAX_MANIFEST_BYTES + 1)
        .read_to_end(&mut text)
        .map_err(io("reading manifest", path))?;
    if text.len() as u64 > MAX_MANIFEST_BYTES {
        return Err(ArchiveError::Mismatch {
            path: path.to_path_buf(),
            message: format!("larger than {MAX_MANIFEST_BYTES} bytes; not a partwarden manifest"),
        });
    }
    let m: Manifest = serde_json::from_slice(&text).map_err(|e| ArchiveError::Mismatch {
        path: path.to_path_buf(),
        message: format!("not a partwarden manifest: {e}"),
    })?;
    if m.format != FORMAT {
        return Err(ArchiveError::Mismatch {
            path: path.to_path_buf(),
            message: format!("manifest format {:?}, expected {FORMAT:?}", m.format),
        });
    }
    Ok(m)
}

/// The data file a manifest describes (in the manifest's directory; the name may not leave it).
pub fn data_path(manifest_path: &Path, m: &Manifest) -> Result<PathBuf, ArchiveError> {
    if m.file.is_empty() || m.file.contains('/') || m.file.starts_with('.') {
        return Err(ArchiveError::Mismatch {
            path: manifest_path.to_path_buf(),
            message: format!("manifest names an unsafe data file {:?}", m.file),
        });
    }
    Ok(manifest_path
        .parent()
        .unwrap_or(Path::new("."))
        .join(&m.file))
}
