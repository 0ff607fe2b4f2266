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

use crate::catalog::{self, RelName};
use crate::copyfmt::{ContentDigest, KeyKind, RowCounter};
use crate::db::error_text;

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

/// Why an archive could not be written, verified or read.
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

/// Where one version of the archive of one partition lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Paths {
    /// `archive_dir/<schema>.<table>`.
    pub dir: PathBuf,
    /// `<dir>/<stem>.pgcopy.zst`.
    pub data: PathBuf,
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
        } else if !p.data.exists() {
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
        if p.data.exists() {
            if !reclaim {
                continue;
            }
            tracing::info!(file = %p.data.display(), "removing the data file of an interrupted archive write (it has no manifest)");
            std::fs::remove_file(&p.data).map_err(io("removing", &p.data))?;
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
    fn temp(&self, of: &Path) -> PathBuf {
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

/// What to archive.
#[derive(Clone, Debug)]
pub struct Source<'a> {
    /// The partitioned parent.
    pub table: &'a RelName,
    /// The (detached) partition.
    pub partition: &'a RelName,
    /// Its bounds.
    pub lower: Option<DateTime<Utc>>,
    /// Its bounds.
    pub upper: Option<DateTime<Utc>>,
    /// The partition key column.
    pub key: &'a str,
}

/// Writes the archive and its manifest under `paths` (a version from [`next_version`]). On
/// error, temporary files are removed and nothing is left under the final names that was not
/// there before; an existing file under a final name is never replaced (the write fails).
///
/// The COPY runs under `timeout` (`maintenance.archive_timeout`; `None`: no limit), not the
/// session's statement_timeout: a large partition takes as long as it takes.
pub async fn write(
    client: &mut Client,
    src: &Source<'_>,
    paths: &Paths,
    timeout: Option<std::time::Duration>,
) -> Result<Manifest, ArchiveError> {
    create_private_dir(&paths.dir)?;
    paths.remove_stale_temps()?;
    let columns = catalog::columns(&*client, src.partition)
        .await
        .map_err(db("reading the partition's columns"))?;
    if columns.is_empty() {
        return Err(ArchiveError::Mismatch {
            path: paths.data.clone(),
            message: format!("table {} does not exist or has no columns", src.partition),
        });
    }
    let key = columns
        .iter()
        .position(|c| c.name == src.key)
        .and_then(|i| {
            let kind = match columns[i].data_type.as_str() {
                "timestamp with time zone" => KeyKind::TimestampTz,
                "timestamp without time zone" => KeyKind::Timestamp,
                "date" => KeyKind::Date,
                _ => return None,
            };
            Some((i, kind))
        });
    let server_version: String = client
        .query_one("SHOW server_version", &[])
        .await
        .map_err(db("reading server_version"))?
        .get(0);

    let temp = paths.temp(&paths.data);
    let result = write_data(client, src, &temp, key, timeout).await;
    let (rows, range, sha256, compressed_bytes, content_digest) = match result {
        Ok(v) => v,
        Err(e) => {
            let _ = std::fs::remove_file(&temp);
            return Err(e);
        }
    };
    crate::fault::point("archive_temp_written");
    publish(&temp, &paths.data, &paths.dir)?;
    crate::fault::point("archive_data_written");

    let manifest = Manifest {
        format: FORMAT.into(),
        table: src.table.to_string(),
        partition_schema: src.partition.schema.clone(),
        partition_name: src.partition.name.clone(),
        lower: src.lower,
        upper: src.upper,
        partition_key: src.key.into(),
        columns: columns
            .iter()
            .map(|c| ManifestColumn {
                name: c.name.clone(),
                data_type: c.data_type.clone(),
            })
            .collect(),
        rows,
        key_min: range.map(|r| r.0),
        key_max: range.map(|r| r.1),
        file: paths
            .data
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .into(),
        compression: "zstd".into(),
        copy_format: "text".into(),
        compressed_bytes,
        sha256,
        content_digest: Some(content_digest),
        server_version,
        partwarden_version: env!("CARGO_PKG_VERSION").into(),
        created_at: Utc::now(),
    };
    let text = serde_json::to_vec_pretty(&manifest).expect("manifest serialises");
    let temp = paths.temp(&paths.manifest);
    let written = (|| {
        let mut f = create_private_file(&temp)?;
        f.write_all(&text)?;
        f.write_all(b"\n")?;
        f.sync_all()
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&temp);
        return Err(io("writing manifest", &temp)(e));
    }
    publish(&temp, &paths.manifest, &paths.dir)?;
    Ok(manifest)
}

/// A range of instants.
type KeyRange = (DateTime<Utc>, DateTime<Utc>);

/// What streaming a table into a file found: rows, key range, SHA-256 of the file, its size,
/// and the content digest of the rows.
type Written = (u64, Option<KeyRange>, String, u64, String);

/// A new file, 0600, failing if the name exists.
fn create_private_file(path: &Path) -> std::io::Result<File> {
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
}

/// `SET LOCAL statement_timeout` for the archive's own bound (0: none).
pub fn statement_timeout_sql(timeout: Option<std::time::Duration>) -> String {
    format!(
        "SET LOCAL statement_timeout = {}",
        timeout.map_or(0, |t| t.as_millis().max(1))
    )
}

/// Streams the table into `temp`.
async fn write_data(
    client: &mut Client,
    src: &Source<'_>,
    temp: &Path,
    key: Option<(usize, KeyKind)>,
    timeout: Option<std::time::Duration>,
) -> Result<Written, ArchiveError> {
    let file = create_private_file(temp).map_err(io("creating", temp))?;
    let (sender, mut receiver) = tokio::sync::mpsc::channel::<Bytes>(CHANNEL_CHUNKS);
    let temp_owned = temp.to_path_buf();
    let writer = tokio::task::spawn_blocking(move || -> Result<_, ArchiveError> {
        let hashing = HashingWriter::new(BufWriter::with_capacity(1 << 20, file));
        let mut encoder =
            zstd::Encoder::new(hashing, ZSTD_LEVEL).map_err(io("compressing", &temp_owned))?;
        let mut counter = RowCounter::new(key);
        let mut digest = ContentDigest::new();
        while let Some(chunk) = receiver.blocking_recv() {
            counter.feed(&chunk);
            digest.feed(&chunk);
            encoder
                .write_all(&chunk)
                .map_err(io("writing", &temp_owned))?;
        }
        let rows = counter.finish().map_err(|m| ArchiveError::Mismatch {
            path: temp_owned.clone(),
            message: format!("COPY stream: {m}"),
        })?;
        let hashing = encoder.finish().map_err(io("writing", &temp_owned))?;
        let (buffered, sha, bytes) = hashing.finish();
        let file = buffered
            .into_inner()
            .map_err(|e| io("writing", &temp_owned)(e.into_error()))?;
        file.sync_all().map_err(io("fsync", &temp_owned))?;
        let (_, content) = digest.finish().map_err(|m| ArchiveError::Mismatch {
            path: temp_owned.clone(),
            message: format!("COPY stream: {m}"),
        })?;
        Ok((rows, counter.key_range(), sha, bytes, content))
    });

    let streamed = async {
        let tx = client
            .build_transaction()
            .isolation_level(IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await
            .map_err(db("starting the archive transaction"))?;
        tx.batch_execute(&statement_timeout_sql(timeout))
            .await
            .map_err(db("setting the archive's statement_timeout"))?;
        let stream = tx
            .copy_out(&format!("COPY {} TO STDOUT", src.partition.quoted()))
            .await
            .map_err(db("COPY TO STDOUT"))?;
        futures_util::pin_mut!(stream);
        // The server sends one message per row; batching them keeps the channel and the
        // compressor busy with large writes instead of a million tiny ones.
        let mut batch = bytes::BytesMut::with_capacity(BATCH_BYTES);
        let mut writer_gone = false;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(db("COPY TO STDOUT"))?;
            batch.extend_from_slice(&chunk);
            if batch.len() >= BATCH_BYTES && sender.send(batch.split().freeze()).await.is_err() {
                // The writer stopped early; its error is reported below.
                writer_gone = true;
                break;
            }
        }
        if !writer_gone && !batch.is_empty() {
            let _ = sender.send(batch.freeze()).await;
        }
        tx.commit()
            .await
            .map_err(db("ending the archive transaction"))?;
        Ok::<(), ArchiveError>(())
    }
    .await;
    drop(sender);
    let written = writer.await.expect("archive writer thread does not panic");
    streamed?;
    written
}

/// Publishes `temp` (already fsynced) as `path` and fsyncs the directory. A hard link, not a
/// rename: it fails when `path` exists, so a published file is never replaced.
fn publish(temp: &Path, path: &Path, dir: &Path) -> Result<(), ArchiveError> {
    let linked = std::fs::hard_link(temp, path);
    let _ = std::fs::remove_file(temp);
    linked.map_err(io("publishing (a file of that name exists?)", path))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io("fsync of directory", dir))
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

/// Reads the data file back and checks size, SHA-256 and row count against the manifest.
/// Returns the row count.
pub async fn check_file(manifest_path: &Path, m: &Manifest) -> Result<u64, ArchiveError> {
    let data = data_path(manifest_path, m)?;
    let expected_sha = m.sha256.clone();
    let expected_bytes = m.compressed_bytes;
    let expected_rows = m.rows;
    let expected_digest = m.content_digest.clone();
    tokio::task::spawn_blocking(move || {
        let file = File::open(&data).map_err(io("opening archive", &data))?;
        let mut hashing = HashingReader::new(BufReader::with_capacity(1 << 20, file));
        let mut counter = RowCounter::new(None);
        let mut digest = ContentDigest::new();
        {
            let mut decoder =
                zstd::Decoder::with_buffer(&mut hashing).map_err(io("reading archive", &data))?;
            let mut buf = vec![0u8; 1 << 16];
            loop {
                let n = decoder
                    .read(&mut buf)
                    .map_err(io("decompressing archive", &data))?;
                if n == 0 {
                    break;
                }
                counter.feed(&buf[..n]);
                digest.feed(&buf[..n]);
            }
        }
        // Anything after the zstd frame still counts towards the file's checksum.
        std::io::copy(&mut hashing, &mut std::io::sink()).map_err(io("reading archive", &data))?;
        let (_, sha, bytes) = hashing.finish();
        let mismatch = |message: String| ArchiveError::Mismatch {
            path: data.clone(),
            message,
        };
        if bytes != expected_bytes {
            return Err(mismatch(format!(
                "{bytes} bytes, manifest says {expected_bytes}"
            )));
        }
        if sha != expected_sha {
            return Err(mismatch(format!(
                "SHA-256 {sha}, manifest says {expected_sha}"
            )));
        }
        let rows = counter.finish().map_err(&mismatch)?;
        if rows != expected_rows {
            return Err(mismatch(format!(
                "{rows} rows, manifest says {expected_rows}"
            )));
        }
        if let Some(expected) = expected_digest {
            let (_, content) = digest.finish().map_err(&mismatch)?;
            if content != expected {
                return Err(mismatch(format!(
                    "content digest {content}, manifest says {expected}"
                )));
            }
        }
        Ok(rows)
    })
    .await
    .expect("archive reader thread does not panic")
}

/// Verifies the archive of `table`: the file checks out against its manifest, and holds as many
/// rows as `count(*)` of the table. Returns the manifest.
pub async fn verify(
    client: &impl GenericClient,
    paths: &Paths,
    table: &RelName,
) -> Result<Manifest, ArchiveError> {
    let m = read_manifest(&paths.manifest)?;
    if m.partition_schema != table.schema || m.partition_name != table.name {
        return Err(ArchiveError::Mismatch {
            path: paths.manifest.clone(),
            message: format!(
                "manifest is for {}.{}, not {table}",
                m.partition_schema, m.partition_name
            ),
        });
    }
    let rows = check_file(&paths.manifest, &m).await?;
    let count: i64 = client
        .query_one(&format!("SELECT count(*) FROM {}", table.quoted()), &[])
        .await
        .map_err(db("counting the table's rows"))?
        .get(0);
    if count as u64 != rows {
        return Err(ArchiveError::Mismatch {
            path: paths.data.clone(),
            message: format!("archive has {rows} rows, table {table} has {count}"),
        });
    }
    Ok(m)
}

/// The row count and content digest of `table` as COPY writes it now, in the caller's
/// transaction (the drop calls it under its ACCESS EXCLUSIVE lock, so nothing can change
/// between this and the drop).
pub async fn table_digest(
    tx: &tokio_postgres::Transaction<'_>,
    table: &RelName,
) -> Result<(u64, String), ArchiveError> {
    let stream = tx
        .copy_out(&format!("COPY {} TO STDOUT", table.quoted()))
        .await
        .map_err(db("COPY TO STDOUT"))?;
    futures_util::pin_mut!(stream);
    let mut digest = ContentDigest::new();
    while let Some(chunk) = stream.next().await {
        digest.feed(&chunk.map_err(db("COPY TO STDOUT"))?);
    }
    digest.finish().map_err(|m| ArchiveError::Mismatch {
        path: PathBuf::new(),
        message: format!("COPY stream of {table}: {m}"),
    })
}

/// Streams the archive's rows into `table` with `COPY ... FROM STDIN` using the manifest's
/// column list, reading the file once: the bytes that reach the server are the bytes whose
/// size, SHA-256, row count and content digest are checked against the manifest, after the
/// COPY and before the caller commits. A mismatch is an error, and the caller's transaction
/// (which the caller then drops) rolls the load back. Returns the rows loaded.
pub async fn copy_into(
    client: &tokio_postgres::Transaction<'_>,
    manifest_path: &Path,
    m: &Manifest,
    table: &RelName,
) -> Result<u64, ArchiveError> {
    let data = data_path(manifest_path, m)?;
    let cols = m
        .columns
        .iter()
        .map(|c| crate::ident::quote_ident(&c.name))
        .collect::<Vec<_>>()
        .join(", ");
    let sink = client
        .copy_in(&format!("COPY {} ({cols}) FROM STDIN", table.quoted()))
        .await
        .map_err(db("COPY FROM STDIN"))?;
    futures_util::pin_mut!(sink);
    let (sender, mut receiver) =
        tokio::sync::mpsc::channel::<Result<Bytes, ArchiveError>>(CHANNEL_CHUNKS);
    let path = data.clone();
    let reader = tokio::task::spawn_blocking(move || {
        let result = (|| {
            let file = File::open(&path).map_err(io("opening archive", &path))?;
            let mut hashing = HashingReader::new(BufReader::with_capacity(1 << 20, file));
            let mut counter = RowCounter::new(None);
            let mut digest = ContentDigest::new();
            {
                let mut decoder = zstd::Decoder::with_buffer(&mut hashing)
                    .map_err(io("reading archive", &path))?;
                loop {
                    let mut buf = vec![0u8; 1 << 16];
                    let n = decoder
                        .read(&mut buf)
                        .map_err(io("decompressing archive", &path))?;
                    if n == 0 {
                        break;
                    }
                    buf.truncate(n);
                    counter.feed(&buf);
                    digest.feed(&buf);
                    if sender.blocking_send(Ok(Bytes::from(buf))).is_err() {
                        return Ok(None); // the COPY failed; its error is reported
                    }
                }
            }
            std::io::copy(&mut hashing, &mut std::io::sink())
                .map_err(io("reading archive", &path))?;
            let (_, sha, bytes) = hashing.finish();
            Ok(Some((sha, bytes, counter, digest)))
        })();
        match result {
            Ok(v) => v,
            Err(e) => {
                let _ = sender.blocking_send(Err(e));
                None
            }
        }
    });
    while let Some(chunk) = receiver.recv().await {
        sink.send(chunk?).await.map_err(db("COPY FROM STDIN"))?;
    }
    let read = reader.await.expect("archive reader thread does not panic");
    let loaded = sink
        .as_mut()
        .finish()
        .await
        .map_err(db("COPY FROM STDIN"))?;
    let Some((sha, bytes, counter, digest)) = read else {
        return Err(ArchiveError::Mismatch {
            path: data,
            message: "the archive reader stopped early".into(),
        });
    };
    let mismatch = |message: String| ArchiveError::Mismatch {
        path: data.clone(),
        message,
    };
    if bytes != m.compressed_bytes {
        return Err(mismatch(format!(
            "{bytes} bytes, manifest says {}",
            m.compressed_bytes
        )));
    }
    if sha != m.sha256 {
        return Err(mismatch(format!(
            "SHA-256 {sha}, manifest says {}",
            m.sha256
        )));
    }
    let rows = counter.finish().map_err(&mismatch)?;
    if rows != m.rows || loaded != m.rows {
        return Err(mismatch(format!(
            "{rows} rows read, {loaded} loaded, manifest says {}",
            m.rows
        )));
    }
    if let Some(expected) = &m.content_digest {
        let (_, content) = digest.finish().map_err(&mismatch)?;
        if &content != expected {
            return Err(mismatch(format!(
                "content digest {content}, manifest says {expected}"
            )));
        }
    }
    Ok(loaded)
}

/// A writer that hashes and counts what passes through it.
struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    bytes: u64,
}

impl<W: Write> HashingWriter<W> {
    fn new(inner: W) -> Self {
        HashingWriter {
            inner,
            hasher: Sha256::new(),
            bytes: 0,
        }
    }
    fn finish(self) -> (W, String, u64) {
        (self.inner, hex::encode(self.hasher.finalize()), self.bytes)
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// A reader that hashes and counts what passes through it.
struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    bytes: u64,
}

impl<R: Read> HashingReader<R> {
    fn new(inner: R) -> Self {
        HashingReader {
            inner,
            hasher: Sha256::new(),
            bytes: 0,
        }
    }
    fn finish(self) -> (R, String, u64) {
        (self.inner, hex::encode(self.hasher.finalize()), self.bytes)
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
}

impl<R: std::io::BufRead> std::io::BufRead for HashingReader<R> {
    fn fill_buf(&mut self) -> std::io::Result<&[u8]> {
        self.inner.fill_buf()
    }
    fn consume(&mut self, amt: usize) {
        if let Ok(buf) = self.inner.fill_buf() {
            let n = amt.min(buf.len());
            self.hasher.update(&buf[..n]);
            self.bytes += n as u64;
        }
        self.inner.consume(amt);
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
