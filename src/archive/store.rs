//! Archives on S3-compatible object storage (`archive_dir = "s3://bucket/prefix"`), through
//! Apache Arrow's `object_store`: AWS S3, MinIO, Ceph RGW, Cloudflare R2, ...
//!
//! An archive is written and checked in the spool directory as on local disk, then each file
//! is uploaded with a streaming multipart upload (memory: a few parts, whatever the size); a
//! multipart upload that does not complete leaves no object, so no partial object is ever
//! taken for an archive. An object is never replaced: an upload first asks whether the key
//! exists, and an existing object with other content is an error (the pass lock keeps two
//! partwardens from uploading at once). Then both objects are read back from the store into a
//! private directory and checked like a local archive (size, SHA-256, rows, content digest,
//! the manifest equal to the one written) before the table may be dropped.
//!
//! Settings come from the standard AWS environment (`AWS_ENDPOINT_URL`, `AWS_REGION`,
//! `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_ALLOW_HTTP`, instance
//! credentials), with `maintenance.s3_endpoint` and `maintenance.s3_region` taking precedence.
//! Requests are signed in headers: no credential is ever part of a URL, a key or a message.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures_util::StreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::path::Path as Key;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{ArchiveError, Paths};
use crate::config::StoreConfig;

/// Size of each uploaded part: S3's minimum, 5 MiB.
const PART_BYTES: usize = 5 << 20;
/// Parts in flight at most. Memory for an upload is bounded by PART_BYTES x (PARTS_IN_FLIGHT
/// + 1), 15 MiB, whatever the archive's size.
const PARTS_IN_FLIGHT: usize = 2;

/// An opened object store and where partwarden's archives go in it.
#[derive(Clone, Debug)]
pub struct Store {
    inner: Arc<dyn ObjectStore>,
    config: StoreConfig,
}

/// What an upload did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Uploaded {
    /// The object was written.
    Written,
    /// An object with the same content was there already (an earlier pass uploaded it).
    AlreadyThere,
}

fn store_error(what: &str, source: object_store::Error) -> ArchiveError {
    ArchiveError::Store {
        what: what.to_string(),
        message: one_line(&source.to_string()),
    }
}

fn one_line(s: &str) -> String {
    let s: String = s.split_whitespace().collect::<Vec<_>>().join(" ");
    s.chars().take(400).collect()
}

impl Store {
    /// Opens the store: the AWS environment, then the configuration's overrides. Nothing is
    /// sent until the first request.
    pub fn open(config: &StoreConfig) -> Result<Store, ArchiveError> {
        let mut b = AmazonS3Builder::from_env().with_bucket_name(&config.bucket);
        if let Some(e) = &config.endpoint {
            b = b.with_endpoint(e);
            if e.starts_with("http://") {
                b = b.with_allow_http(true);
            }
        }
        if let Some(r) = &config.region {
            b = b.with_region(r);
        }
        let inner = b
            .build()
            .map_err(|e| store_error(&format!("opening {}", config.url()), e))?;
        Ok(Store {
            inner: Arc::new(inner),
            config: config.clone(),
        })
    }

    /// The key of a local archive file: `<prefix>/<table directory>/<file name>`, the same
    /// layout as on local disk.
    pub fn key(&self, local: &Path) -> Key {
        let file = local.file_name().and_then(|f| f.to_str()).unwrap_or("");
        let dir = local
            .parent()
            .and_then(|d| d.file_name())
            .and_then(|f| f.to_str())
            .unwrap_or("");
        let mut parts: Vec<&str> = self
            .config
            .prefix
            .split('/')
            .filter(|s| !s.is_empty())
            .collect();
        parts.push(dir);
        parts.push(file);
        Key::from_iter(parts)
    }

    /// `s3://bucket/key`, for the ledger and messages.
    pub fn url_of(&self, key: &Key) -> String {
        format!("s3://{}/{key}", self.config.bucket)
    }

    /// Whether `key` exists.
    pub async fn exists(&self, key: &Key) -> Result<bool, ArchiveError> {
        match self.inner.head(key).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(store_error(&format!("looking up {}", self.url_of(key)), e)),
        }
    }

    /// Whether the object `key` holds exactly the bytes of `local`: `None` when there is no
    /// such object. The object is read back through `scratch`.
    pub async fn holds(
        &self,
        key: &Key,
        local: &Path,
        scratch: &Path,
    ) -> Result<Option<bool>, ArchiveError> {
        if !self.exists(key).await? {
            return Ok(None);
        }
        super::create_private_dir(scratch)?;
        let theirs = scratch.join("existing");
        let _ = tokio::fs::remove_file(&theirs).await;
        self.download(key, &theirs).await?;
        let same = sha256_of(&theirs).await? == sha256_of(local).await?;
        let _ = tokio::fs::remove_file(&theirs).await;
        Ok(Some(same))
    }

    /// Uploads `local` under `key` with a streaming multipart upload, unless an object is
    /// there: with the same SHA-256 it is kept, with other content it is an error.
    pub async fn upload(
        &self,
        local: &Path,
        key: &Key,
        scratch: &Path,
    ) -> Result<Uploaded, ArchiveError> {
        let url = self.url_of(key);
        if let Some(same) = self.holds(key, local, scratch).await? {
            if same {
                return Ok(Uploaded::AlreadyThere);
            }
            return Err(ArchiveError::Mismatch {
                path: PathBuf::from(&url),
                message: "an object with other content exists under this key; it is never replaced"
                    .into(),
            });
        }
        let upload = self
            .inner
            .put_multipart(key)
            .await
            .map_err(|e| store_error(&format!("starting the upload of {url}"), e))?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_BYTES);
        let sent = async {
            let mut file = tokio::fs::File::open(local)
                .await
                .map_err(super::io("reading archive", local))?;
            let mut buf = vec![0u8; 1 << 20];
            loop {
                let n = file
                    .read(&mut buf)
                    .await
                    .map_err(super::io("reading archive", local))?;
                if n == 0 {
                    break;
                }
                writer
                    .wait_for_capacity(PARTS_IN_FLIGHT)
                    .await
                    .map_err(|e| store_error(&format!("uploading {url}"), e))?;
                writer.write(&buf[..n]);
            }
            Ok::<(), ArchiveError>(())
        }
        .await;
        match sent {
            Ok(()) => {
                writer
                    .finish()
                    .await
                    .map_err(|e| store_error(&format!("completing the upload of {url}"), e))?;
                Ok(Uploaded::Written)
            }
            Err(e) => {
                // An incomplete multipart upload is no object; abort it so its parts go too.
                let _ = writer.abort().await;
                Err(e)
            }
        }
    }

    /// Streams the object `key` into a new private file `to`.
    pub async fn download(&self, key: &Key, to: &Path) -> Result<u64, ArchiveError> {
        let url = self.url_of(key);
        let got = self
            .inner
            .get(key)
            .await
            .map_err(|e| store_error(&format!("reading {url}"), e))?;
        let mut stream = got.into_stream();
        let mut file = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(to)
            .await
            .map_err(super::io("writing", to))?;
        let mut bytes = 0u64;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| store_error(&format!("reading {url}"), e))?;
            bytes += chunk.len() as u64;
            file.write_all(&chunk)
                .await
                .map_err(super::io("writing", to))?;
        }
        file.sync_all().await.map_err(super::io("writing", to))?;
        Ok(bytes)
    }

    /// Writes, reads back and deletes a small object under the prefix: the store is
    /// reachable, the bucket exists and the credentials may write, read and delete.
    pub async fn probe(&self) -> Result<(), ArchiveError> {
        let name = format!(
            ".partwarden-probe-{}-{}",
            std::process::id(),
            chrono::Utc::now().timestamp_micros()
        );
        let mut parts: Vec<&str> = self
            .config
            .prefix
            .split('/')
            .filter(|s| !s.is_empty())
            .collect();
        parts.push(&name);
        let key = Key::from_iter(parts);
        let url = self.url_of(&key);
        let body = b"partwarden probe".to_vec();
        self.inner
            .put(&key, PutPayload::from(body.clone()))
            .await
            .map_err(|e| store_error(&format!("writing {url}"), e))?;
        let back = self.inner.get(&key).await;
        let deleted = self.inner.delete(&key).await;
        let back = back
            .map_err(|e| store_error(&format!("reading {url}"), e))?
            .bytes()
            .await
            .map_err(|e| store_error(&format!("reading {url}"), e))?;
        deleted.map_err(|e| store_error(&format!("deleting {url}"), e))?;
        if back.as_ref() != body.as_slice() {
            return Err(ArchiveError::Mismatch {
                path: PathBuf::from(url),
                message: "the probe object read back differs from what was written".into(),
            });
        }
        Ok(())
    }

    /// Uploads an archive verified in the spool (data, then manifest), reads both back from
    /// the store into `scratch` and checks them like a local archive. Returns the URL of the
    /// data object and whether anything was written.
    pub async fn publish(
        &self,
        paths: &Paths,
        manifest: &super::Manifest,
        scratch: &Path,
    ) -> Result<(String, bool), ArchiveError> {
        let data = paths.dir.join(&manifest.file);
        let data_key = self.key(&data);
        let manifest_key = self.key(&paths.manifest);
        let a = self.upload(&data, &data_key, scratch).await?;
        crate::fault::point("between_uploads");
        let b = self.upload(&paths.manifest, &manifest_key, scratch).await?;
        crate::fault::point("after_upload");
        self.verify(&data_key, &manifest_key, manifest, scratch)
            .await?;
        Ok((
            self.url_of(&data_key),
            a == Uploaded::Written || b == Uploaded::Written,
        ))
    }

    /// Reads the data object and its manifest back from the store into `scratch` and checks
    /// them: the manifest equal to `expected`, the data's size, SHA-256, rows and content
    /// digest as it says.
    pub async fn verify(
        &self,
        data_key: &Key,
        manifest_key: &Key,
        expected: &super::Manifest,
        scratch: &Path,
    ) -> Result<(), ArchiveError> {
        let dir = scratch.join("readback");
        let _ = tokio::fs::remove_dir_all(&dir).await;
        super::create_private_dir(&dir)?;
        let result = async {
            let manifest_path = dir.join("manifest.json");
            self.download(manifest_key, &manifest_path).await?;
            let theirs = super::read_manifest(&manifest_path)?;
            if &theirs != expected {
                return Err(ArchiveError::Mismatch {
                    path: PathBuf::from(self.url_of(manifest_key)),
                    message: "the manifest in the store differs from the one written".into(),
                });
            }
            self.download(data_key, &dir.join(&expected.file)).await?;
            super::check_file(&manifest_path, &theirs)
                .await
                .map_err(|e| match e {
                    ArchiveError::Mismatch { message, .. } => ArchiveError::Mismatch {
                        path: PathBuf::from(self.url_of(data_key)),
                        message,
                    },
                    e => e,
                })
        }
        .await;
        let _ = tokio::fs::remove_dir_all(&dir).await;
        result.map(|_| ())
    }

    /// The store's URL.
    pub fn url(&self) -> String {
        self.config.url()
    }
}

/// An archive fetched from a store into a private local directory, for `--restore
/// s3://...`; the directory goes with it.
#[derive(Debug)]
pub struct Fetched {
    /// The manifest's local copy; the data file is beside it.
    pub manifest: PathBuf,
    dir: PathBuf,
}

impl Drop for Fetched {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Fetches the manifest at `url` (`s3://bucket/key`) and the data object it names (beside
/// it) into a new private directory under `work`. The manifest is untrusted: it is parsed and
/// its data file name checked (a plain file name) before anything else is fetched.
pub async fn fetch(
    url: &str,
    configured: Option<&StoreConfig>,
    work: &Path,
) -> Result<Fetched, ArchiveError> {
    let bad = |message: &str| ArchiveError::Mismatch {
        path: PathBuf::from(url),
        message: message.to_string(),
    };
    let rest = url
        .strip_prefix("s3://")
        .ok_or_else(|| bad("expected s3://bucket/key"))?;
    let (bucket, key) = rest
        .split_once('/')
        .ok_or_else(|| bad("expected s3://bucket/key"))?;
    let mut config =
        StoreConfig::parse(&format!("s3://{bucket}"), None, None).map_err(|e| bad(&e))?;
    if let Some(c) = configured.filter(|c| c.bucket == bucket) {
        config.endpoint = c.endpoint.clone();
        config.region = c.region.clone();
    }
    let store = Store::open(&config)?;
    let manifest_key = Key::parse(key).map_err(|e| bad(&e.to_string()))?;
    let dir = work.join(format!(".fetch-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    super::create_private_dir(&dir)?;
    let fetched = Fetched {
        manifest: dir.join("manifest.json"),
        dir,
    };
    store.download(&manifest_key, &fetched.manifest).await?;
    let m = super::read_manifest(&fetched.manifest)?;
    let local_data = super::data_path(&fetched.manifest, &m)?;
    let mut parts: Vec<_> = manifest_key.parts().collect();
    parts.pop();
    let data_key = Key::from_iter(
        parts
            .into_iter()
            .chain(std::iter::once(m.file.as_str().into())),
    );
    store.download(&data_key, &local_data).await?;
    Ok(fetched)
}

async fn sha256_of(path: &Path) -> Result<String, ArchiveError> {
    let mut file = tokio::fs::File::open(path)
        .await
        .map_err(super::io("reading", path))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file
            .read(&mut buf)
            .await
            .map_err(super::io("reading", path))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}
