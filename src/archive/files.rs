//! Where archives live: per-table directories (0700), versioned names that never collide,
//! private files (0600), stale temporaries.

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

/// Where one version of the archive of one partition lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Paths {
    /// `archive_dir/<schema>.<table>`.
    pub dir: PathBuf,
    /// `<dir>/<stem>.pgcopy.zst`.
    pub data: PathBuf,
    /// `<dir>/<stem>.parquet`, the data file of a Parquet archive.
    pub parquet: PathBuf,
    /// `<dir>/<stem>.manifest.json`.
    pub manifest: PathBuf,
    /// 1 for the first archive of a partition, then 2, 3, ... for archives written again.
    pub version: u32,
    /// `<partition schema>.<partition name>[.v<version>]` as used in file names.
    stem: String,
}

/// The paths of the first version of the archive of `partition` of `table`.
pub fn paths(archive_dir: &Path, table: &RelName, partition: &RelName) -> Paths {
    version_paths(archive_dir, table, partition, 1)
}

/// The paths of version `version` of the archive of `partition` of `table`. The schema and the
/// name are escaped separately (a `.` in either is escaped), so no two partitions and versions
/// share a file name.
pub fn version_paths(
    archive_dir: &Path,
    table: &RelName,
    partition: &RelName,
    version: u32,
) -> Paths {
    let dir = archive_dir.join(file_safe(&table.to_string()));
    let mut stem = format!(
        "{}.{}",
        file_safe_part(&partition.schema),
        file_safe_part(&partition.name)
    );
    if version > 1 {
        stem.push_str(&format!(".v{version}"));
    }
    Paths {
        data: dir.join(format!("{stem}.pgcopy.zst")),
        parquet: dir.join(format!("{stem}.parquet")),
        manifest: dir.join(format!("{stem}.manifest.json")),
        dir,
        version,
        stem,
    }
}

/// The newest published version (one with a manifest) of the archive of `partition`.
pub fn latest(archive_dir: &Path, table: &RelName, partition: &RelName) -> Option<Paths> {
    let mut found = None;
    for v in 1.. {
        let p = version_paths(archive_dir, table, partition, v);
        if p.manifest.exists() {
            found = Some(p);
        } else if !p.data.exists() && !p.parquet.exists() {
            return found;
        }
    }
    unreachable!("versions are finite")
}

/// The version to write next: the first with neither a manifest nor a data file. A data file
/// without a manifest is what a write interrupted between its two renames leaves; with
/// `reclaim` (the ledger shows this partition's archive step unfinished) it is removed and its
/// version reused, otherwise it is left alone and skipped.
pub fn next_version(
    archive_dir: &Path,
    table: &RelName,
    partition: &RelName,
    reclaim: bool,
) -> Result<Paths, ArchiveError> {
    for v in 1.. {
        let p = version_paths(archive_dir, table, partition, v);
        if p.manifest.exists() {
            continue;
        }
        for data in [&p.data, &p.parquet] {
            if data.exists() {
                if !reclaim {
                    break;
                }
                tracing::info!(file = %data.display(), "removing the data file of an interrupted archive write (it has no manifest)");
                std::fs::remove_file(data).map_err(io("removing", data))?;
            }
        }
        if p.data.exists() || p.parquet.exists() {
            continue;
        }
        return Ok(p);
    }
    unreachable!("versions are finite")
}

/// Creates `dir` and its missing parents with mode 0700.
pub fn create_private_dir(dir: &Path) -> Result<(), ArchiveError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io("creating directory", dir))
}

/// Keeps `[A-Za-z0-9_.-]`, percent-encodes the rest, so no catalog name can climb out of the
/// archive directory or make a hidden file.
fn file_safe(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for (i, b) in s.bytes().enumerate() {
        if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || (b == b'.' && i > 0) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// As [`file_safe`], and a `.` is escaped too: one part of a dotted file name.
fn file_safe_part(s: &str) -> String {
    file_safe(s).replace('.', "%2E")
}

impl Paths {
    /// The data file of this version in `format`.
    pub fn data_file(&self, format: DataFormat) -> &Path {
        match format {
            DataFormat::Copy => &self.data,
            DataFormat::Parquet => &self.parquet,
        }
    }

    pub(super) fn temp(&self, of: &Path) -> PathBuf {
        let name = of.file_name().and_then(|n| n.to_str()).unwrap_or("archive");
        self.dir.join(format!(
            ".{name}.tmp-{}-{:016x}",
            std::process::id(),
            rand::random::<u64>()
        ))
    }

    /// Removes temporary files an interrupted write of this partition's archive left behind.
    /// Returns how many were removed.
    pub fn remove_stale_temps(&self) -> Result<usize, ArchiveError> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(io("reading directory", &self.dir)(e)),
        };
        let prefixes = [
            format!(".{}.pgcopy.zst.tmp-", self.stem),
            format!(".{}.manifest.json.tmp-", self.stem),
            format!(".{}.parquet.tmp-", self.stem),
        ];
        let mut removed = 0;
        for entry in entries {
            let entry = entry.map_err(io("reading directory", &self.dir))?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if prefixes.iter().any(|p| name.starts_with(p.as_str())) {
                std::fs::remove_file(entry.path())
                    .map_err(io("removing stale temporary file", &entry.path()))?;
                removed += 1;
            }
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_cannot_escape() {
        let t = RelName {
            schema: "public".into(),
            name: "market_odds_history".into(),
        };
        let p = RelName {
            schema: "public".into(),
            name: "../../etc/passwd".into(),
        };
        let paths = paths(Path::new("/var/lib/partwarden/archive"), &t, &p);
        assert_eq!(
            paths.dir,
            Path::new("/var/lib/partwarden/archive/public.market_odds_history")
        );
        assert_eq!(
            paths.data,
            Path::new(
                "/var/lib/partwarden/archive/public.market_odds_history/public.%2E%2E%2F%2E%2E%2Fetc%2Fpasswd.pgcopy.zst"
            )
        );
    }

    #[test]
    fn file_names_are_unique_per_schema_name_and_version() {
        let t = RelName {
            schema: "public".into(),
            name: "moh".into(),
        };
        let rel = |s: &str, n: &str| RelName {
            schema: s.into(),
            name: n.into(),
        };
        let dir = Path::new("/a");
        let names = [
            paths(dir, &t, &rel("a.b", "c")).data,
            paths(dir, &t, &rel("a", "b.c")).data,
            paths(dir, &t, &rel("other", "p")).data,
            paths(dir, &t, &rel("public", "p")).data,
            version_paths(dir, &t, &rel("public", "p"), 2).data,
            paths(dir, &t, &rel("public", "p.v2")).data,
        ];
        for (i, a) in names.iter().enumerate() {
            for b in &names[i + 1..] {
                assert_ne!(a, b);
            }
        }
        assert_eq!(
            version_paths(dir, &t, &rel("public", "p"), 2).manifest,
            Path::new("/a/public.moh/public.p.v2.manifest.json")
        );
    }
}
