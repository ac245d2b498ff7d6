//! The local disk as a bounded tier in front of a bucket.
//!
//! Reads come from the disk, then from the bucket; a whole blob read from
//! the bucket is streamed to the reader and kept on disk as it passes,
//! hashed on the way, and its last chunk is released only once the digest
//! matched (a damaged object ends in an error, never a clean short or
//! wrong body). Writes stage on disk, because the fill pipeline and
//! uploads write a local file at offsets; `commit` streams the verified
//! file into the bucket (unless the bucket has it already), then renames
//! it into the disk tier. So a blob is in the bucket before it is visible
//! anywhere, and pinned and pushed content is safe there.
//!
//! `remove` and the budget act on the disk tier only: an evicted blob is
//! still in the bucket and comes back from there. Deleting from the
//! bucket is the cluster's garbage collector's job (issue 13 item 3).

use std::io;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::stream::BoxStream;
use futures_util::StreamExt;

use super::outage::Outage;
use super::s3::{Presigner, S3Blobs};
use super::{BlobInfo, BlobReader, BlobStore, BoxFuture, Listing, Staging};
use crate::oci::{Digest, Hasher};

/// Chunk read from the staged file when it is streamed into the bucket.
const UPLOAD_READ: usize = 1024 * 1024;

/// A disk tier in front of a bucket.
pub struct Tiered {
    disk: Arc<dyn BlobStore>,
    bucket: S3Blobs,
    /// Signs redirects to bucket objects (`[storage] redirect`).
    presigner: Option<Presigner>,
    /// Whether the bucket is being left alone after a failure.
    outage: Outage,
}

impl Tiered {
    /// `disk` in front of `bucket`; with a `presigner`, blobs only the
    /// bucket holds are offered as redirects.
    pub fn new(disk: Arc<dyn BlobStore>, bucket: S3Blobs, presigner: Option<Presigner>) -> Tiered {
        Tiered {
            disk,
            bucket,
            presigner,
            outage: Outage::default(),
        }
    }

    /// `stat` of the bucket, unless it is down (then: holds nothing).
    async fn bucket_stat(&self, digest: &Digest) -> io::Result<Option<BlobInfo>> {
        if self.outage.active().is_some() {
            return Ok(None);
        }
        self.bucket
            .stat(digest)
            .await
            .inspect_err(|e| self.outage.failed(e))
    }

    /// Streams a blob from the bucket, keeping it on disk when the whole
    /// blob is read.
    async fn read_bucket(&self, digest: &Digest, start: u64, end: u64) -> io::Result<BlobReader> {
        let (body, size) = self.bucket.get_range(digest, start, end).await?;
        if start != 0 || end != size {
            return Ok(Box::pin(tokio_util::io::StreamReader::new(body)));
        }
        // The disk tier is a copy: when it cannot take one, just serve.
        let keep = match self.disk.stage().await {
            Ok(mut s) => s.local_file().map(|f| (s, f)),
            Err(e) => {
                tracing::warn!(%digest, error = %e, "not keeping a bucket blob on disk");
                None
            }
        };
        let tee = Tee {
            body,
            keep,
            hasher: Some(Hasher::for_digest(digest)),
            held: None,
            written: 0,
            digest: digest.clone(),
            size,
        };
        let stream = futures_util::stream::unfold(tee, Tee::next).boxed();
        Ok(Box::pin(tokio_util::io::StreamReader::new(stream)))
    }
}

impl BlobStore for Tiered {
    fn health(&self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            let nothing = Digest::of(b"");
            self.outage.check(self.bucket.stat(&nothing)).await
        })
    }

    /// Blobs on the disk tier are served from it (no cheaper path exists);
    /// a blob only the bucket holds is offered as a presigned URL, so its
    /// bytes skip this node.
    fn redirect<'a>(&'a self, digest: &'a Digest) -> BoxFuture<'a, io::Result<Option<String>>> {
        Box::pin(async move {
            let Some(presigner) = &self.presigner else {
                return Ok(None);
            };
            if self.disk.stat(digest).await?.is_some() || self.bucket_stat(digest).await?.is_none()
            {
                return Ok(None);
            }
            presigner.url(digest).await.map(Some)
        })
    }

    fn stat<'a>(&'a self, digest: &'a Digest) -> BoxFuture<'a, io::Result<Option<BlobInfo>>> {
        Box::pin(async move {
            match self.disk.stat(digest).await? {
                Some(info) => Ok(Some(info)),
                None => self.bucket_stat(digest).await,
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
            match self.disk.open(digest, start, end).await {
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    if let Some(why) = self.outage.active() {
                        return Err(io::Error::new(io::ErrorKind::NotFound, why));
                    }
                    let read = self.read_bucket(digest, start, end).await;
                    read.inspect_err(|e| self.outage.failed(e))
                }
                other => other,
            }
        })
    }

    fn stage(&self) -> BoxFuture<'_, io::Result<Box<dyn Staging>>> {
        Box::pin(async move {
            let staging: Box<dyn Staging> = Box::new(TieredStaging {
                disk: Some(self.disk.stage().await?),
                file: None,
                bucket: self.bucket.clone(),
                in_bucket: None,
            });
            Ok(staging)
        })
    }

    fn remove<'a>(&'a self, digest: &'a Digest) -> BoxFuture<'a, io::Result<()>> {
        self.disk.remove(digest)
    }

    fn list(&self) -> BoxFuture<'_, io::Result<Listing>> {
        self.disk.list()
    }

    fn set_aside<'a>(&'a self, digest: &'a Digest) -> BoxFuture<'a, io::Result<String>> {
        self.disk.set_aside(digest)
    }

    fn free_space(&self) -> BoxFuture<'_, io::Result<Option<u64>>> {
        self.disk.free_space()
    }

    fn shared(&self) -> bool {
        true
    }
}

/// A bucket body passing to a reader and into a disk staging. One chunk is
/// held back until the end so the last byte goes out only once the whole
/// blob hashed to its digest.
struct Tee {
    body: BoxStream<'static, io::Result<Bytes>>,
    keep: Option<(Box<dyn Staging>, Arc<std::fs::File>)>,
    /// `None` once the stream ended (or failed).
    hasher: Option<Hasher>,
    held: Option<Bytes>,
    /// Bytes received so far (kept on disk or not).
    written: u64,
    digest: Digest,
    size: u64,
}

impl Tee {
    async fn next(mut self) -> Option<(io::Result<Bytes>, Tee)> {
        loop {
            let hasher = self.hasher.as_mut()?;
            match self.body.next().await {
                Some(Ok(chunk)) => {
                    hasher.update(&chunk);
                    self.keep(chunk.clone()).await;
                    if let Some(out) = self.held.replace(chunk) {
                        return Some((Ok(out), self));
                    }
                }
                Some(Err(e)) => {
                    self.hasher = None;
                    return Some((Err(e), self));
                }
                None => {
                    let actual = self.hasher.take()?.finish();
                    if actual != self.digest || self.written != self.size {
                        tracing::error!(digest = %self.digest, %actual, "the bucket holds damaged bytes for this blob");
                        self.keep = None;
                        let e = io::Error::new(
                            io::ErrorKind::InvalidData,
                            format!("bucket object hashes to {actual}, not {}", self.digest),
                        );
                        return Some((Err(e), self));
                    }
                    if let Some((staging, _)) = self.keep.take() {
                        if let Err(e) = staging.commit(self.digest.clone(), self.size).await {
                            tracing::warn!(digest = %self.digest, error = %e, "bucket blob not kept on disk");
                        }
                    }
                    let last = self.held.take()?;
                    return Some((Ok(last), self));
                }
            }
        }
    }

    /// Writes `chunk` to the disk copy; a failure drops the copy only.
    async fn keep(&mut self, chunk: Bytes) {
        let at = self.written;
        self.written += chunk.len() as u64;
        let Some((_, file)) = &self.keep else {
            return;
        };
        let file = file.clone();
        let wrote = tokio::task::spawn_blocking(move || file.write_all_at(&chunk, at)).await;
        if !matches!(wrote, Ok(Ok(()))) {
            tracing::warn!(digest = %self.digest, "could not keep a bucket blob on disk");
            self.keep = None;
        }
    }
}

/// A blob staged on disk, put into the bucket at `prepare` or `commit`.
struct TieredStaging {
    /// The disk staging; `None` once committed.
    disk: Option<Box<dyn Staging>>,
    /// Its file, once handed out (the fill pipeline, uploads).
    file: Option<Arc<std::fs::File>>,
    bucket: S3Blobs,
    /// The digest the bucket is known to hold these bytes under.
    in_bucket: Option<Digest>,
}

impl TieredStaging {
    fn disk(&mut self) -> io::Result<&mut Box<dyn Staging>> {
        self.disk
            .as_mut()
            .ok_or_else(|| io::Error::other("staging committed twice"))
    }

    /// Puts the staged file into the bucket under `digest`, unless the
    /// bucket has that blob already. The upload re-hashes every byte, so
    /// the bucket only ever receives verified content; when the bucket
    /// already had it, the disk commit re-checks what came through
    /// `write`.
    async fn put_in_bucket(&mut self, digest: &Digest, size: u64) -> io::Result<()> {
        if self.in_bucket.as_ref() == Some(digest) {
            return Ok(());
        }
        if self.bucket.stat(digest).await?.is_none() {
            let file = match &self.file {
                Some(f) => f.clone(),
                None => {
                    let f = self
                        .disk()?
                        .local_file()
                        .ok_or_else(|| io::Error::other("the disk tier stages no local file"))?;
                    self.file = Some(f.clone());
                    f
                }
            };
            upload(&self.bucket, &file, digest, size).await?;
        }
        self.in_bucket = Some(digest.clone());
        Ok(())
    }
}

impl Staging for TieredStaging {
    fn write(&mut self, bytes: Bytes) -> BoxFuture<'_, io::Result<()>> {
        Box::pin(async move { self.disk()?.write(bytes).await })
    }

    fn local_file(&mut self) -> Option<Arc<std::fs::File>> {
        let file = self.disk.as_mut()?.local_file()?;
        self.file = Some(file.clone());
        Some(file)
    }

    fn prepare<'a>(&'a mut self, digest: &'a Digest, size: u64) -> BoxFuture<'a, io::Result<()>> {
        Box::pin(self.put_in_bucket(digest, size))
    }

    fn commit(
        mut self: Box<Self>,
        digest: Digest,
        size: u64,
    ) -> BoxFuture<'static, io::Result<()>> {
        Box::pin(async move {
            // In the bucket first, so a blob is there before it is visible
            // anywhere; then the rename into the disk tier.
            self.put_in_bucket(&digest, size).await?;
            let disk = self
                .disk
                .take()
                .ok_or_else(|| io::Error::other("staging committed twice"))?;
            disk.commit(digest, size).await
        })
    }
}

/// Streams the staged file into the bucket under `digest`; the bucket
/// staging re-hashes every byte, so only verified content lands there.
async fn upload(
    bucket: &S3Blobs,
    file: &Arc<std::fs::File>,
    digest: &Digest,
    size: u64,
) -> io::Result<()> {
    let mut staging = bucket.stage_for(digest);
    let mut at = 0u64;
    while at < size {
        let len = usize::try_from((size - at).min(UPLOAD_READ as u64)).unwrap_or(UPLOAD_READ);
        let f = file.clone();
        let chunk = tokio::task::spawn_blocking(move || {
            let mut buf = vec![0u8; len];
            f.read_exact_at(&mut buf, at).map(|()| buf)
        })
        .await
        .map_err(io::Error::other)??;
        at += len as u64;
        staging.append(Bytes::from(chunk)).await?;
    }
    staging.finish(digest.clone(), size).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::s3::{Bucket, Guarantees};
    use crate::storage::{CacheDir, FsBlobs};
    use object_store::memory::InMemory;
    use object_store::ObjectStore;
    use tokio::io::AsyncReadExt;

    /// A tiered store on a fresh disk and an in-memory bucket.
    async fn tiered() -> (tempfile::TempDir, Arc<InMemory>, Bucket, Tiered) {
        let tmp = tempfile::tempdir().unwrap();
        let dir = CacheDir::open(&tmp.path().join("cache")).await.unwrap();
        let mem = Arc::new(InMemory::new());
        let bucket = Bucket::new(mem.clone(), None, Guarantees::FULL);
        let store = Tiered::new(
            Arc::new(FsBlobs::new(dir)),
            S3Blobs::new(bucket.clone()),
            None,
        );
        (tmp, mem, bucket, store)
    }

    async fn read_all(store: &Tiered, digest: &Digest, size: u64) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        store
            .open(digest, 0, size)
            .await?
            .read_to_end(&mut out)
            .await?;
        Ok(out)
    }

    #[tokio::test]
    async fn sha512_blobs_go_through_both_tiers_under_their_own_key() {
        let (_tmp, mem, bucket, store) = tiered().await;
        let data = Bytes::from(vec![7u8; 50_000]);
        let digest = crate::oci::Algorithm::Sha512.digest(&data);
        let size = data.len() as u64;
        // Through `write` (hashed with sha256 as it came): re-checked.
        let mut staged = store.stage().await.unwrap();
        staged.write(data.clone()).await.unwrap();
        staged.commit(digest.clone(), size).await.unwrap();
        assert!(bucket.blob(&digest).as_ref().starts_with("blobs/sha512/"));
        assert!(
            mem.head(&bucket.blob(&digest)).await.is_ok(),
            "in the bucket"
        );
        // Evicted from disk, read back from the bucket, verified, kept.
        store.remove(&digest).await.unwrap();
        assert!(read_all(&store, &digest, size).await.unwrap() == data[..]);
        assert!(store.disk.stat(&digest).await.unwrap().is_some(), "kept");
        // Bytes that are not its content never land.
        let other = crate::oci::Algorithm::Sha512.digest(b"other");
        let mut wrong = store.stage().await.unwrap();
        wrong.write(data.clone()).await.unwrap();
        assert!(wrong.commit(other.clone(), size).await.is_err());
        assert!(mem.head(&bucket.blob(&other)).await.is_err());
    }

    #[tokio::test]
    async fn the_bucket_gets_only_verified_blobs_and_refills_the_disk() {
        let (_tmp, mem, bucket, store) = tiered().await;
        let data = Bytes::from(vec![42u8; 100_000]);
        let digest = Digest::of(&data);
        let size = data.len() as u64;

        let mut wrong = store.stage().await.unwrap();
        wrong.write(Bytes::from_static(b"other")).await.unwrap();
        assert!(wrong.commit(digest.clone(), 5).await.is_err());
        assert!(
            mem.head(&bucket.blob(&digest)).await.is_err(),
            "not in the bucket"
        );

        let mut right = store.stage().await.unwrap();
        right.local_file().unwrap().write_all_at(&data, 0).unwrap();
        right.prepare(&digest, size).await.unwrap();
        assert!(
            mem.head(&bucket.blob(&digest)).await.is_ok(),
            "in the bucket"
        );
        assert!(
            store.disk.stat(&digest).await.unwrap().is_none(),
            "not yet on disk"
        );
        right.commit(digest.clone(), size).await.unwrap();
        assert!(
            store.disk.stat(&digest).await.unwrap().is_some(),
            "now on disk"
        );

        // Evicted from the disk tier: read from the bucket, kept on disk.
        store.remove(&digest).await.unwrap();
        assert!(store.disk.stat(&digest).await.unwrap().is_none());
        assert_eq!(store.stat(&digest).await.unwrap().unwrap().size, size);
        assert!(read_all(&store, &digest, size).await.unwrap() == data[..]);
        assert!(store.disk.stat(&digest).await.unwrap().is_some(), "kept");

        // A damaged object in the bucket ends in an error, not a clean end,
        // and is not kept.
        store.remove(&digest).await.unwrap();
        let bad = Bytes::from(vec![0u8; 100_000]);
        mem.put(&bucket.blob(&digest), bad.into()).await.unwrap();
        let err = read_all(&store, &digest, size).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
        assert!(store.disk.stat(&digest).await.unwrap().is_none());
    }
}
