//! Reading an archive back: the file against its manifest, the table against the file, and
//! loading it into a table (restore), checking what was sent.

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

use super::copyfmt::{ContentDigest, RowCounter};
use super::*;
use crate::catalog::{self, RelName};
use crate::db::error_text;

/// Reads the data file back and checks size, SHA-256 and row count against the manifest.
/// Returns the row count.
pub async fn check_file(manifest_path: &Path, m: &Manifest) -> Result<u64, ArchiveError> {
    if m.data_format == DataFormat::Parquet {
        return check_parquet(manifest_path, m).await;
    }
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

/// Size and SHA-256 of a data file against the manifest, read through once.
fn check_bytes(data: &Path, m: &Manifest) -> Result<(), ArchiveError> {
    let file = File::open(data).map_err(io("opening archive", data))?;
    let mut hashing = HashingReader::new(BufReader::with_capacity(1 << 20, file));
    std::io::copy(&mut hashing, &mut std::io::sink()).map_err(io("reading archive", data))?;
    let (_, sha, bytes) = hashing.finish();
    let mismatch = |message: String| ArchiveError::Mismatch {
        path: data.to_path_buf(),
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
    Ok(())
}

/// A Parquet archive: size and SHA-256, then its rows and typed digest.
async fn check_parquet(manifest_path: &Path, m: &Manifest) -> Result<u64, ArchiveError> {
    let data = data_path(manifest_path, m)?;
    let m = m.clone();
    tokio::task::spawn_blocking(move || {
        check_bytes(&data, &m)?;
        let Some(typed) = &m.typed_digest else {
            return Err(ArchiveError::Mismatch {
                path: data.clone(),
                message: "a Parquet manifest without a typed digest".into(),
            });
        };
        let rows = super::parquet::check(&data, &m.columns, typed)?;
        if rows != m.rows {
            return Err(ArchiveError::Mismatch {
                path: data.clone(),
                message: format!("{rows} rows, manifest says {}", m.rows),
            });
        }
        Ok(rows)
    })
    .await
    .expect("archive reader thread does not panic")
}

/// `COPY table (the manifest's columns) FROM STDIN` in the caller's transaction, fed by
/// `read`, which runs in a blocking thread and sends the COPY text (or its error) on the
/// channel it is given. Returns what `read` returned and the rows the server loaded.
async fn copy_from<T: Send + 'static>(
    client: &tokio_postgres::Transaction<'_>,
    m: &Manifest,
    table: &RelName,
    read: impl FnOnce(tokio::sync::mpsc::Sender<Result<Bytes, ArchiveError>>) -> T + Send + 'static,
) -> Result<(T, u64), ArchiveError> {
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
    let reader = tokio::task::spawn_blocking(move || read(sender));
    while let Some(chunk) = receiver.recv().await {
        sink.send(chunk?).await.map_err(db("COPY FROM STDIN"))?;
    }
    let read = reader.await.expect("archive reader thread does not panic");
    let loaded = sink
        .as_mut()
        .finish()
        .await
        .map_err(db("COPY FROM STDIN"))?;
    Ok((read, loaded))
}

/// Loads a Parquet archive into `table` (in the caller's transaction): size and SHA-256
/// first, then its rows as COPY text; then the loaded table is read back, and its content
/// digest must be the manifest's (the rows are exactly those archived, as PostgreSQL prints
/// them), else the caller's transaction is not to be committed.
async fn copy_parquet_into(
    client: &tokio_postgres::Transaction<'_>,
    manifest_path: &Path,
    m: &Manifest,
    table: &RelName,
) -> Result<u64, ArchiveError> {
    let data = data_path(manifest_path, m)?;
    let (path, manifest) = (data.clone(), m.clone());
    let (read, loaded) = copy_from(client, m, table, move |sender| {
        let result = (|| {
            check_bytes(&path, &manifest)?;
            let mut send = |chunk: Vec<u8>| {
                sender
                    .blocking_send(Ok(Bytes::from(chunk)))
                    .map_err(|_| "the COPY stopped".to_string())
            };
            super::parquet::copy_text(&path, &manifest.columns, BATCH_BYTES, &mut send)
        })();
        match result {
            Ok(v) => Some(v),
            Err(e) => {
                let _ = sender.blocking_send(Err(e));
                None
            }
        }
    })
    .await?;
    let mismatch = |message: String| ArchiveError::Mismatch {
        path: data.clone(),
        message,
    };
    let Some((rows, typed)) = read else {
        return Err(mismatch("the archive reader stopped early".into()));
    };
    if rows != m.rows || loaded != m.rows {
        return Err(mismatch(format!(
            "{rows} rows read, {loaded} loaded, manifest says {}",
            m.rows
        )));
    }
    if m.typed_digest.as_deref() != Some(typed.as_str()) {
        return Err(mismatch(format!(
            "typed digest {typed}, manifest says {}",
            m.typed_digest.as_deref().unwrap_or("none")
        )));
    }
    let (n, content) = table_digest(client, table).await?;
    if n != m.rows || m.content_digest.as_deref() != Some(content.as_str()) {
        return Err(mismatch(format!(
            "the loaded rows read back as {n} rows with content digest {content}, manifest says {} rows, {}",
            m.rows,
            m.content_digest.as_deref().unwrap_or("none")
        )));
    }
    Ok(loaded)
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
    if m.data_format == DataFormat::Parquet {
        return copy_parquet_into(client, manifest_path, m, table).await;
    }
    let data = data_path(manifest_path, m)?;
    let path = data.clone();
    let (read, loaded) = copy_from(client, m, table, move |sender| {
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
    })
    .await?;
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
