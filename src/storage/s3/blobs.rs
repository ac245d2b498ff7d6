//! [`BlobStore`] over a bucket: `blobs/sha256/<2 hex>/<hex>`.
//!
//! A staging hashes what passes through [`Staging::write`] and streams it
//! out as a multipart upload, with at most [`PARTS_IN_FLIGHT`] parts of
//! [`PART_SIZE`] uploading and one filling, so memory stays flat however
//! large the blob. A blob smaller than one part is never a multipart
//! upload: it is one create-only `PUT` at commit. `commit` re-checks the
//! size and digest, then `HEAD`s the key: an object already there is
//! content by definition (someone committed these bytes), so the upload is
//! aborted and the commit succeeds. A mismatch, a failed write or a drop
//! aborts the upload: the bytes were never visible under any key.

use std::io;

use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{GetOptions, GetRange, PutMode, PutOptions, WriteMultipart};

use super::read::idle_bounded;
use super::{io_error, Bucket};
use crate::oci::{Algorithm, Digest, Hasher};
use crate::storage::{BlobInfo, BlobReader, BlobStore, BoxFuture, Listing, Staging};

/// Size of one uploaded part (S3 wants at least 5 MiB but the last).
pub const PART_SIZE: usize = 8 * 1024 * 1024;
/// Parts uploading at once per staging; with the one filling, a staging
/// holds at most `(PARTS_IN_FLIGHT + 1) * PART_SIZE` bytes.
pub const PARTS_IN_FLIGHT: usize = 2;

/// Blobs in a bucket.
#[derive(Clone)]
pub struct S3Blobs {
    bucket: Bucket,
}

impl S3Blobs {
    /// The blob store of `bucket`.
    pub fn new(bucket: Bucket) -> S3Blobs {
        S3Blobs { bucket }
    }

    /// A staging whose digest is known up front (the disk tier's commit):
    /// its multipart upload goes straight to the final key, so completing
    /// it needs no copy.
    pub fn stage_for(&self, digest: &Digest) -> S3Staging {
        let target = Some((self.bucket.blob(digest), digest.algorithm()));
        S3Staging::new(self.bucket.clone(), target)
    }

    /// `start..end` of a stored blob as a byte stream, with the blob's
    /// whole size (`NotFound` when absent).
    pub async fn get_range(
        &self,
        digest: &Digest,
        start: u64,
        end: u64,
    ) -> io::Result<(
        futures_util::stream::BoxStream<'static, io::Result<Bytes>>,
        u64,
    )> {
        let opts = GetOptions {
            range: (end > start).then_some(GetRange::Bounded(start..end)),
            head: end <= start,
            ..Default::default()
        };
        let got = self
            .bucket
            .reader()
            .get_opts(&self.bucket.blob(digest), opts)
            .await
            .map_err(io_error)?;
        let size = got.meta.size;
        if end <= start {
            return Ok((futures_util::stream::empty().boxed(), size));
        }
        Ok((
            idle_bounded(got.into_stream().map_err(io_error).boxed()),
            size,
        ))
    }
}

/// A blob's key back to its digest: `blobs/<algorithm>/<2 hex>/<hex>`.
fn digest_of(key: &str) -> Option<Digest> {
    let rest = key.strip_prefix("blobs/")?;
    let (alg, rest) = rest.split_once('/')?;
    let (shard, hex) = rest.split_once('/')?;
    let digest = Digest::from_parts(alg, hex).ok()?;
    (digest.hex().get(..2) == Some(shard)).then_some(digest)
}

impl BlobStore for S3Blobs {
    fn stat<'a>(&'a self, digest: &'a Digest) -> BoxFuture<'a, io::Result<Option<BlobInfo>>> {
        Box::pin(async move {
            match self.bucket.store().head(&self.bucket.blob(digest)).await {
                Ok(meta) => Ok(Some(BlobInfo {
                    digest: digest.clone(),
                    size: meta.size,
                    last_use: u64::try_from(meta.last_modified.timestamp()).unwrap_or(0),
                })),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(io_error(e)),
            }
        })
    }

    fn open<'a>(
        &'a self,
        digest: &'a Digest,
        start: u64,
        end: u64,
    ) -> BoxFuture<'a, io::Result<BlobReader>> {
        Box::pin(async move {
            let (body, _) = self.get_range(digest, start, end).await?;
            let reader: BlobReader = Box::pin(tokio_util::io::StreamReader::new(body));
            Ok(reader)
        })
    }

    fn stage(&self) -> BoxFuture<'_, io::Result<Box<dyn Staging>>> {
        Box::pin(async move {
            // The digest is not known yet: sha256, the mirror's algorithm
            // (sha512 content reaches a bucket only through the tiered
            // store, whose bucket staging knows its digest).
            let staging: Box<dyn Staging> = Box::new(S3Staging::new(self.bucket.clone(), None));
            Ok(staging)
        })
    }

    fn remove<'a>(&'a self, digest: &'a Digest) -> BoxFuture<'a, io::Result<()>> {
        Box::pin(async move {
            match self.bucket.store().delete(&self.bucket.blob(digest)).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                Err(e) => Err(io_error(e)),
            }
        })
    }

    fn list(&self) -> BoxFuture<'_, io::Result<Listing>> {
        Box::pin(async move {
            let root = self.bucket.path("blobs/sha256");
            let mut objects = self.bucket.store().list(Some(&root));
            let mut out = Listing::default();
            while let Some(meta) = objects.try_next().await.map_err(io_error)? {
                // A stray is left where it is (the bucket may be shared
                // with other tools) and not counted as content.
                let Some(digest) = self.bucket.key_of(&meta.location).and_then(digest_of) else {
                    continue;
                };
                out.blobs.push(BlobInfo {
                    digest,
                    size: meta.size,
                    last_use: u64::try_from(meta.last_modified.timestamp()).unwrap_or(0),
                });
            }
            Ok(out)
        })
    }

    fn set_aside<'a>(&'a self, digest: &'a Digest) -> BoxFuture<'a, io::Result<String>> {
        Box::pin(async move {
            let from = self.bucket.blob(digest);
            let key = self.bucket.key_of(&from).unwrap_or_default();
            let to = self.bucket.path(&format!("quarantine/{key}"));
            let s = self.bucket.store();
            s.copy(&from, &to).await.map_err(io_error)?;
            s.delete(&from).await.map_err(io_error)?;
            Ok(format!("object {to}"))
        })
    }

    fn free_space(&self) -> BoxFuture<'_, io::Result<Option<u64>>> {
        Box::pin(async { Ok(None) })
    }
}

/// A blob being uploaded: buffered until it outgrows one part, then a
/// multipart upload (to the final key when the digest was known at
/// [`S3Blobs::stage_for`], else to a temporary key copied at commit).
pub struct S3Staging {
    bucket: Bucket,
    /// The final key when known up front.
    target: Option<Path>,
    /// Hash of everything written; `None` while a write is hashing it.
    hasher: Option<Hasher>,
    written: u64,
    /// Bytes not yet handed to an upload (less than one part).
    pending: Vec<Bytes>,
    pending_len: usize,
    /// The multipart upload once started, with the key it writes.
    upload: Option<Upload>,
    /// A write failed half-way: never commit.
    broken: bool,
}

impl S3Staging {
    fn new(bucket: Bucket, target: Option<(Path, Algorithm)>) -> S3Staging {
        let (target, algorithm) = match target {
            Some((p, a)) => (Some(p), a),
            None => (None, Algorithm::Sha256),
        };
        S3Staging {
            bucket,
            target,
            hasher: Some(Hasher::for_algorithm(algorithm)),
            written: 0,
            pending: Vec::new(),
            pending_len: 0,
            upload: None,
            broken: false,
        }
    }

    /// Appends `bytes` (hashed on a blocking thread: a multi-GiB blob must
    /// not spend runtime threads on SHA-256), starting the multipart
    /// upload once a part's worth is buffered and waiting while
    /// [`PARTS_IN_FLIGHT`] parts are uploading.
    pub async fn append(&mut self, bytes: Bytes) -> io::Result<()> {
        self.broken = true;
        let Some(mut hasher) = self.hasher.take() else {
            return Err(io::Error::other("a write to this staging failed"));
        };
        let chunk = bytes.clone();
        let hasher = tokio::task::spawn_blocking(move || {
            hasher.update(&chunk);
            hasher
        })
        .await
        .map_err(io::Error::other)?;
        self.hasher = Some(hasher);
        self.written += bytes.len() as u64;
        match self.upload.as_mut().map(Upload::get) {
            Some((_, up)) => {
                up.wait_for_capacity(PARTS_IN_FLIGHT)
                    .await
                    .map_err(io_error)?;
                up.put(bytes);
            }
            None => {
                self.pending_len += bytes.len();
                self.pending.push(bytes);
                if self.pending_len >= PART_SIZE {
                    let path = match &self.target {
                        Some(p) => p.clone(),
                        None => self.bucket.path(&format!("tmp/{}", super::random_id()?)),
                    };
                    let up = self
                        .bucket
                        .store()
                        .put_multipart(&path)
                        .await
                        .map_err(io_error)?;
                    let mut up = WriteMultipart::new_with_chunk_size(up, PART_SIZE);
                    for b in self.pending.drain(..) {
                        up.put(b);
                    }
                    self.pending_len = 0;
                    self.upload = Some(Upload(std::sync::Mutex::new((path, up))));
                }
            }
        }
        self.broken = false;
        Ok(())
    }

    /// Makes the blob visible as `digest` after checking size and hash;
    /// an object already under that key counts as success.
    pub async fn finish(mut self, digest: Digest, size: u64) -> io::Result<()> {
        if let Err(e) = self.check(&digest, size) {
            self.abort().await;
            return Err(e);
        }
        let key = self.bucket.blob(&digest);
        let s = self.bucket.store().clone();
        match s.head(&key).await {
            Ok(meta) if meta.size == size => {
                self.abort().await;
                return Ok(());
            }
            Ok(meta) => {
                self.abort().await;
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{key} exists with {} bytes, not {size}", meta.size),
                ));
            }
            Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => {
                self.abort().await;
                return Err(io_error(e));
            }
        }
        match self.upload.take().map(Upload::into_inner) {
            None => {
                let payload: object_store::PutPayload =
                    std::mem::take(&mut self.pending).into_iter().collect();
                let mode = match self.bucket.guarantees().create_only {
                    true => PutMode::Create,
                    // Without create-only writes the HEAD above is the
                    // check; a racing writer puts identical bytes.
                    false => PutMode::Overwrite,
                };
                let opts = PutOptions {
                    mode,
                    ..Default::default()
                };
                match s.put_opts(&key, payload, opts).await {
                    Ok(_) | Err(object_store::Error::AlreadyExists { .. }) => Ok(()),
                    Err(e) => Err(io_error(e)),
                }
            }
            Some((path, up)) => {
                up.finish().await.map_err(io_error)?;
                if path != key {
                    s.copy(&path, &key).await.map_err(io_error)?;
                    if let Err(e) = s.delete(&path).await {
                        tracing::warn!(error = %e, %path, "temporary upload left behind");
                    }
                }
                Ok(())
            }
        }
    }

    fn check(&mut self, digest: &Digest, size: u64) -> io::Result<()> {
        let hasher = match (self.broken, self.hasher.take()) {
            (false, Some(h)) => h,
            _ => return Err(io::Error::other("a write to this staging failed")),
        };
        if self.written != size {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("staged {} bytes, expected {size}", self.written),
            ));
        }
        let actual = hasher.finish();
        if actual != *digest {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("staged bytes hash to {actual}, not {digest}"),
            ));
        }
        Ok(())
    }

    /// Aborts the multipart upload, if one was started, and waits for it.
    async fn abort(&mut self) {
        if let Some((path, up)) = self.upload.take().map(Upload::into_inner) {
            if let Err(e) = up.abort().await {
                tracing::warn!(error = %e, %path, "could not abort a multipart upload");
            }
        }
    }
}

/// A started multipart upload and its key. `WriteMultipart` is `Send` but
/// not `Sync`, and a [`Staging`] must be both: the mutex only lends it
/// `Sync`. It is reached through `&mut` (`get_mut`, `into_inner`) alone, so
/// it is never locked and never held across an await.
struct Upload(std::sync::Mutex<(Path, WriteMultipart)>);

impl Upload {
    fn get(&mut self) -> &mut (Path, WriteMultipart) {
        self.0.get_mut().unwrap_or_else(|p| p.into_inner())
    }

    fn into_inner(self) -> (Path, WriteMultipart) {
        self.0.into_inner().unwrap_or_else(|p| p.into_inner())
    }
}

impl Staging for S3Staging {
    fn write(&mut self, bytes: Bytes) -> BoxFuture<'_, io::Result<()>> {
        Box::pin(self.append(bytes))
    }

    fn local_file(&mut self) -> Option<std::sync::Arc<std::fs::File>> {
        None
    }

    fn commit(self: Box<Self>, digest: Digest, size: u64) -> BoxFuture<'static, io::Result<()>> {
        Box::pin(self.finish(digest, size))
    }
}

impl Drop for S3Staging {
    fn drop(&mut self) {
        // Uncommitted: abort the upload so the server drops its parts. The
        // parts were never visible under any key either way.
        if let Some((path, up)) = self.upload.take().map(Upload::into_inner) {
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move {
                    if let Err(e) = up.abort().await {
                        tracing::warn!(error = %e, %path, "could not abort a multipart upload");
                    }
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::s3::Guarantees;
    use object_store::memory::InMemory;
    use object_store::ObjectStore;
    use std::sync::Arc;
    use tokio::io::AsyncReadExt;

    fn blobs() -> (Arc<InMemory>, S3Blobs) {
        let mem = Arc::new(InMemory::new());
        let bucket = Bucket::new(mem.clone(), Some("p"), Guarantees::FULL);
        (mem, S3Blobs::new(bucket))
    }

    async fn keys(mem: &InMemory) -> Vec<String> {
        let all: Vec<_> = mem.list(None).try_collect().await.unwrap();
        all.into_iter().map(|m| m.location.to_string()).collect()
    }

    #[tokio::test]
    async fn a_small_blob_is_one_create_only_put_and_a_second_commit_is_fine() {
        let (mem, store) = blobs();
        let data = Bytes::from_static(b"small layer");
        let digest = Digest::of(&data);
        for _ in 0..2 {
            let mut s = store.stage().await.unwrap();
            s.write(data.clone()).await.unwrap();
            s.commit(digest.clone(), data.len() as u64).await.unwrap();
        }
        let hex = digest.hex();
        assert_eq!(
            keys(&mem).await,
            [format!("p/blobs/sha256/{}/{hex}", &hex[..2])]
        );
        let info = store.stat(&digest).await.unwrap().unwrap();
        assert_eq!(info.size, data.len() as u64);
        let mut back = Vec::new();
        let mut r = store.open(&digest, 6, 11).await.unwrap();
        r.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, b"layer");
        let listed = store.list().await.unwrap();
        assert_eq!(listed.blobs.len(), 1);
        assert_eq!(listed.blobs[0].digest, digest);
    }

    #[tokio::test]
    async fn a_multipart_blob_lands_only_when_its_digest_matches() {
        let (mem, store) = blobs();
        let part = Bytes::from(vec![7u8; PART_SIZE / 2 + 1]);
        let data: Vec<u8> = [&part[..], &part[..], &part[..]].concat();
        let digest = Digest::of(&data);

        let mut wrong = store.stage_for(&digest);
        for _ in 0..3 {
            wrong.append(part.clone()).await.unwrap();
        }
        wrong.append(Bytes::from_static(b"!")).await.unwrap();
        let err = wrong
            .finish(digest.clone(), data.len() as u64 + 1)
            .await
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
        assert!(store.stat(&digest).await.unwrap().is_none());
        assert!(keys(&mem).await.is_empty(), "nothing visible");

        // Through the trait (digest unknown): a temporary key, copied at
        // commit and removed.
        let mut right = store.stage().await.unwrap();
        for _ in 0..3 {
            right.write(part.clone()).await.unwrap();
        }
        right
            .commit(digest.clone(), data.len() as u64)
            .await
            .unwrap();
        let mut back = Vec::new();
        let mut r = store.open(&digest, 0, data.len() as u64).await.unwrap();
        r.read_to_end(&mut back).await.unwrap();
        assert!(back == data, "same bytes back");
        assert_eq!(keys(&mem).await.len(), 1, "{:?}", keys(&mem).await);
    }

    #[test]
    fn only_well_formed_blob_keys_are_content() {
        let d = Digest::of(b"x");
        let hex = d.hex();
        assert_eq!(
            digest_of(&format!("blobs/sha256/{}/{hex}", &hex[..2])),
            Some(d.clone())
        );
        assert_eq!(digest_of(&format!("blobs/sha256/zz/{hex}")), None);
        let long = crate::oci::Algorithm::Sha512.digest(b"x");
        let key = format!("blobs/sha512/{}/{}", &long.hex()[..2], long.hex());
        assert_eq!(digest_of(&key), Some(long));
        assert_eq!(digest_of("blobs/sha256/ab/cd"), None);
    }
}
