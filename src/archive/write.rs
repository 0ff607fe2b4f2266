//! Writing an archive: COPY out through a bounded channel into a blocking thread that
//! compresses, hashes and counts; temp file, fsync, hard link into place; manifest last.

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

use super::copyfmt::{ContentDigest, KeyKind, RowCounter};
use super::*;
use crate::catalog::{self, RelName};
use crate::db::error_text;

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
    format: DataFormat,
) -> Result<Manifest, ArchiveError> {
    create_private_dir(&paths.dir)?;
    paths.remove_stale_temps()?;
    // Generated columns are not archived: COPY leaves them out, and a restore recomputes them.
    let columns: Vec<catalog::Column> = catalog::columns(&*client, src.partition)
        .await
        .map_err(db("reading the partition's columns"))?
        .into_iter()
        .filter(|c| !c.generated)
        .collect();
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

    let data_file = paths.data_file(format).to_path_buf();
    let manifest_columns: Vec<ManifestColumn> = columns
        .iter()
        .map(|c| ManifestColumn {
            name: c.name.clone(),
            data_type: c.data_type.clone(),
        })
        .collect();
    let temp = paths.temp(&data_file);
    let sink = match format {
        DataFormat::Copy => Sink::Copy,
        DataFormat::Parquet => Sink::Parquet(manifest_columns.clone()),
    };
    let result = write_data(client, src, &temp, key, timeout, sink).await;
    let (rows, range, sha256, compressed_bytes, content_digest, typed_digest) = match result {
        Ok(v) => v,
        Err(e) => {
            let _ = std::fs::remove_file(&temp);
            return Err(e);
        }
    };
    crate::fault::point("archive_temp_written");
    publish(&temp, &data_file, &paths.dir)?;
    crate::fault::point("archive_data_written");

    let manifest = Manifest {
        format: FORMAT.into(),
        table: src.table.to_string(),
        partition_schema: src.partition.schema.clone(),
        partition_name: src.partition.name.clone(),
        lower: src.lower,
        upper: src.upper,
        partition_key: src.key.into(),
        columns: manifest_columns,
        rows,
        key_min: range.map(|r| r.0),
        key_max: range.map(|r| r.1),
        file: data_file
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .into(),
        compression: "zstd".into(),
        copy_format: "text".into(),
        data_format: format,
        typed_digest,
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
/// the content digest of the rows, and (Parquet) the typed digest.
type Written = (u64, Option<KeyRange>, String, u64, String, Option<String>);

/// What the COPY stream is turned into.
enum Sink {
    /// zstd of the text itself.
    Copy,
    /// Parquet of the typed values, for a table with these columns.
    Parquet(Vec<ManifestColumn>),
}

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
    sink: Sink,
) -> Result<Written, ArchiveError> {
    let file = create_private_file(temp).map_err(io("creating", temp))?;
    let (sender, mut receiver) = tokio::sync::mpsc::channel::<Bytes>(CHANNEL_CHUNKS);
    let temp_owned = temp.to_path_buf();
    let writer = tokio::task::spawn_blocking(move || -> Result<_, ArchiveError> {
        let hashing = HashingWriter::new(BufWriter::with_capacity(1 << 20, file));
        let stream_error = |m: String| ArchiveError::Mismatch {
            path: temp_owned.clone(),
            message: format!("COPY stream: {m}"),
        };
        let mut counter = RowCounter::new(key);
        let mut digest = ContentDigest::new();
        let (hashing, typed) = match sink {
            Sink::Copy => {
                let mut encoder = zstd::Encoder::new(hashing, ZSTD_LEVEL)
                    .map_err(io("compressing", &temp_owned))?;
                while let Some(chunk) = receiver.blocking_recv() {
                    counter.feed(&chunk);
                    digest.feed(&chunk);
                    encoder
                        .write_all(&chunk)
                        .map_err(io("writing", &temp_owned))?;
                }
                (encoder.finish().map_err(io("writing", &temp_owned))?, None)
            }
            Sink::Parquet(columns) => {
                let mut writer =
                    super::parquet::Writer::new(&columns, hashing).map_err(stream_error)?;
                while let Some(chunk) = receiver.blocking_recv() {
                    counter.feed(&chunk);
                    digest.feed(&chunk);
                    writer.feed(&chunk).map_err(stream_error)?;
                }
                let (hashing, typed_rows, typed) = writer.finish().map_err(stream_error)?;
                if typed_rows != counter.rows() {
                    return Err(stream_error(format!(
                        "{typed_rows} rows written to Parquet, {} in the stream",
                        counter.rows()
                    )));
                }
                (hashing, Some(typed))
            }
        };
        let rows = counter.finish().map_err(stream_error)?;
        let (buffered, sha, bytes) = hashing.finish();
        let file = buffered
            .into_inner()
            .map_err(|e| io("writing", &temp_owned)(e.into_error()))?;
        file.sync_all().map_err(io("fsync", &temp_owned))?;
        let (_, content) = digest.finish().map_err(|m| ArchiveError::Mismatch {
            path: temp_owned.clone(),
            message: format!("COPY stream: {m}"),
        })?;
        Ok((rows, counter.key_range(), sha, bytes, content, typed))
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
        let writer_gone = {
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
                if batch.len() >= BATCH_BYTES && sender.send(batch.split().freeze()).await.is_err()
                {
                    // The writer stopped early (full disk, a value it refuses, a panic); its
                    // error is reported below.
                    writer_gone = true;
                    break;
                }
            }
            if !writer_gone && !batch.is_empty() {
                let _ = sender.send(batch.freeze()).await;
            }
            writer_gone
            // The COPY stream is dropped here, before the transaction ends: a stream left
            // alive but no longer read stops the connection from reading, the server then
            // waits to write the rest of the COPY, and COMMIT waits for ever (the issue's
            // deadlock). Dropped, the rest of the COPY is read and discarded.
        };
        if writer_gone {
            tx.rollback()
                .await
                .map_err(db("ending the archive transaction"))?;
        } else {
            tx.commit()
                .await
                .map_err(db("ending the archive transaction"))?;
        }
        Ok::<(), ArchiveError>(())
    }
    .await;
    drop(sender);
    // A writer that panicked (a bug, or a value its format cannot hold) fails this archive
    // like any other error: the table stays as it is and the pass goes on.
    let written = match writer.await {
        Ok(w) => w,
        Err(e) => Err(ArchiveError::Mismatch {
            path: temp.to_path_buf(),
            message: format!("the archive writer stopped: {e}"),
        }),
    };
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
