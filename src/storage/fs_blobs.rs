//! [`BlobStore`] on local disk: `blobs/sha256/<2 hex>/<hex>`, the layout
//! distribution uses (and `blobs/sha512/...` for content pushed with sha512
//! digests).
//!
//! A staging is a temp file in `tmp/`, created with `create_new`; its
//! commit syncs it, checks its size (and the digest of what came through
//! [`Staging::write`]) and renames it into place with a sync of the
//! directory, so a blob is either fully there or absent after a crash.
//! Reads go through [`super::pagecache`], which copies what the page cache
//! holds without a trip to the blocking pool.

use std::io;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;

use super::dir::{CacheDir, Strays};
use super::{BlobInfo, BlobReader, BlobStore, BoxFuture, Listing, Staging};
use crate::oci::{Algorithm, Digest, Hasher};

/// Blobs on the local filesystem.
pub struct FsBlobs {
    dir: Arc<CacheDir>,
}

impl FsBlobs {
    /// The blob store of a claimed cache directory.
    pub fn new(dir: Arc<CacheDir>) -> FsBlobs {
        FsBlobs { dir }
    }

    /// The blobs of an existing cache at `cache_dir`, for a reader beside a
    /// possibly serving hoard (`hoard verify`): nothing is claimed or swept,
    /// strays are left alone. `None` when it holds no hoard cache.
    pub fn beside(cache_dir: &std::path::Path) -> Option<FsBlobs> {
        CacheDir::existing(cache_dir).map(FsBlobs::new)
    }

    /// Every blob, with its size and last use (blocking). Strays are
    /// moved aside in a claimed directory, left alone by a reader beside a
    /// serving hoard.
    fn list_blocking(dir: &CacheDir) -> io::Result<Listing> {
        let mut out = Listing::default();
        let strays = if dir.is_claimed() {
            Strays::Quarantine
        } else {
            Strays::Skip
        };
        for algorithm in Algorithm::ALL {
            out.moved_aside += dir.walk_sharded(algorithm, strays, |digest, entry| {
                out.blobs.push(info(digest, &entry.metadata()?));
                Ok(())
            })?;
        }
        Ok(out)
    }
}

/// Runs blocking file work off the runtime.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(io::Error::other)?
}

impl BlobStore for FsBlobs {
    fn stat<'a>(&'a self, digest: &'a Digest) -> BoxFuture<'a, io::Result<Option<BlobInfo>>> {
        Box::pin(async move {
            match tokio::fs::metadata(self.dir.blob(digest)).await {
                Ok(m) if m.is_file() => Ok(Some(info(digest.clone(), &m))),
                Ok(_) => Ok(None),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(e),
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
            let file = tokio::fs::File::open(self.dir.blob(digest))
                .await?
                .into_std()
                .await;
            let reader: BlobReader = Box::pin(super::pagecache::FileRange::new(file, start, end));
            Ok(reader)
        })
    }

    fn stage(&self) -> BoxFuture<'_, io::Result<Box<dyn Staging>>> {
        let path = self.dir.temp_path("stage");
        let dir = self.dir.clone();
        Box::pin(async move {
            let p = path.clone();
            let file = blocking(move || {
                std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create_new(true)
                    .open(&p)
            })
            .await?;
            let staging: Box<dyn Staging> = Box::new(FsStaging {
                dir,
                path: Some(path),
                file: Arc::new(file),
                written: 0,
                hasher: Some(Hasher::new()),
                broken: false,
            });
            Ok(staging)
        })
    }

    fn remove<'a>(&'a self, digest: &'a Digest) -> BoxFuture<'a, io::Result<()>> {
        Box::pin(async move {
            match tokio::fs::remove_file(self.dir.blob(digest)).await {
                Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            }
        })
    }

    fn list(&self) -> BoxFuture<'_, io::Result<Listing>> {
        let dir = self.dir.clone();
        Box::pin(blocking(move || FsBlobs::list_blocking(&dir)))
    }

    fn set_aside<'a>(&'a self, digest: &'a Digest) -> BoxFuture<'a, io::Result<String>> {
        let dir = self.dir.clone();
        let path = dir.blob(digest);
        Box::pin(blocking(move || {
            dir.quarantine(&path).map(|to| to.display().to_string())
        }))
    }

    fn free_space(&self) -> BoxFuture<'_, io::Result<Option<u64>>> {
        let root = self.dir.root().to_owned();
        Box::pin(blocking(move || super::space::free_bytes(&root).map(Some)))
    }
}

/// A blob being written into a temp file; removed on drop unless committed.
struct FsStaging {
    dir: Arc<CacheDir>,
    /// The temp file's path; `None` once renamed into the store.
    path: Option<PathBuf>,
    file: Arc<std::fs::File>,
    written: u64,
    /// Hash of what came through `write`; `None` once the file was handed
    /// out through `local_file` (the caller hashes then).
    hasher: Option<Hasher>,
    /// A write failed (or was cancelled half-way): never commit.
    broken: bool,
}

impl Staging for FsStaging {
    fn write(&mut self, bytes: Bytes) -> BoxFuture<'_, io::Result<()>> {
        Box::pin(async move {
            let (file, at) = (self.file.clone(), self.written);
            let len = bytes.len() as u64;
            // Hashed on the blocking thread too: a multi-GiB prefetch must
            // not spend runtime threads on SHA-256.
            let mut hasher = self.hasher.take();
            // A failed write leaves the staging broken: its hash is gone
            // and its file may hold part of the bytes, so it cannot commit.
            self.broken = true;
            let hasher = blocking(move || {
                file.write_all_at(&bytes, at)?;
                if let Some(h) = &mut hasher {
                    h.update(&bytes);
                }
                Ok(hasher)
            })
            .await?;
            self.hasher = hasher;
            self.broken = false;
            self.written += len;
            Ok(())
        })
    }

    fn local_file(&mut self) -> Option<Arc<std::fs::File>> {
        self.hasher = None;
        Some(self.file.clone())
    }

    fn commit(
        mut self: Box<Self>,
        digest: Digest,
        size: u64,
    ) -> BoxFuture<'static, io::Result<()>> {
        Box::pin(async move {
            if self.broken {
                return Err(io::Error::other("a write to this staging failed"));
            }
            let (file, target) = (self.file.clone(), self.dir.blob(&digest));
            if let Some(h) = self.hasher.take() {
                // Bytes hashed as they came (sha256) but committed under
                // another algorithm (a manifest pushed by its sha512
                // digest): read them back and hash them with that one.
                let actual = if h.algorithm() == digest.algorithm() {
                    h.finish()
                } else {
                    let (f, alg, len) = (file.clone(), digest.algorithm(), self.written);
                    blocking(move || crate::oci::digest_file(&f, alg, len)).await?
                };
                if actual != digest {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("staged bytes hash to {actual}, not {digest}"),
                    ));
                }
            }
            let Some(path) = self.path.clone() else {
                return Err(io::Error::other("staging committed twice"));
            };
            blocking(move || {
                let len = file.metadata()?.len();
                if len != size {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("staged {len} bytes, expected {size}"),
                    ));
                }
                file.sync_all()?;
                super::durable::rename_durable(&path, &target)
            })
            .await?;
            self.path = None;
            Ok(())
        })
    }
}

impl Drop for FsStaging {
    fn drop(&mut self) {
        // Uncommitted: the bytes were never made visible, so they are not
        // content. (A reader may still hold the open file; that is fine.)
        if let Some(p) = self.path.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// A blob's size and last use (access or modification, unix seconds).
fn info(digest: Digest, meta: &std::fs::Metadata) -> BlobInfo {
    let last_use = [meta.accessed(), meta.modified()]
        .into_iter()
        .filter_map(|t| t.ok()?.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_secs())
        .max()
        .unwrap_or(0);
    BlobInfo {
        digest,
        size: meta.len(),
        last_use,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    async fn store() -> (tempfile::TempDir, Arc<CacheDir>, FsBlobs) {
        let tmp = tempfile::tempdir().unwrap();
        let dir = CacheDir::open(&tmp.path().join("cache")).await.unwrap();
        (tmp, dir.clone(), FsBlobs::new(dir))
    }

    fn files_in(dir: &std::path::Path) -> usize {
        std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
    }

    #[tokio::test]
    async fn a_commit_rechecks_size_and_digest_and_only_then_shows_the_blob() {
        let (_tmp, dir, store) = store().await;
        let data = Bytes::from_static(b"some layer bytes");
        let digest = Digest::of(&data);

        let mut wrong = store.stage().await.unwrap();
        wrong
            .write(Bytes::from_static(b"other bytes"))
            .await
            .unwrap();
        let err = wrong.commit(digest.clone(), 11).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");

        let mut short = store.stage().await.unwrap();
        short.write(data.clone()).await.unwrap();
        let err = short.commit(digest.clone(), 99).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
        assert!(
            store.stat(&digest).await.unwrap().is_none(),
            "nothing shown"
        );
        assert_eq!(files_in(&dir.tmp()), 0, "failed stagings leave nothing");

        let mut right = store.stage().await.unwrap();
        right.write(data.slice(..4)).await.unwrap();
        right.write(data.slice(4..)).await.unwrap();
        right
            .commit(digest.clone(), data.len() as u64)
            .await
            .unwrap();
        let info = store.stat(&digest).await.unwrap().unwrap();
        assert_eq!(info.size, data.len() as u64);
        let mut back = Vec::new();
        let mut r = store.open(&digest, 0, info.size).await.unwrap();
        r.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, data);
        assert_eq!(files_in(&dir.tmp()), 0);
    }

    #[tokio::test]
    async fn a_dropped_staging_leaves_nothing_and_a_local_file_is_size_checked() {
        let (_tmp, dir, store) = store().await;
        let mut dropped = store.stage().await.unwrap();
        dropped.write(Bytes::from_static(b"half")).await.unwrap();
        assert_eq!(files_in(&dir.tmp()), 1);
        drop(dropped);
        assert_eq!(files_in(&dir.tmp()), 0, "drop is abort");

        let data = b"written at offsets by a fill";
        let digest = Digest::of(data);
        let mut staged = store.stage().await.unwrap();
        let file = staged.local_file().unwrap();
        file.write_all_at(data, 0).unwrap();
        let err = staged.commit(digest.clone(), 5).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
        let mut staged = store.stage().await.unwrap();
        staged.local_file().unwrap().write_all_at(data, 0).unwrap();
        staged
            .commit(digest.clone(), data.len() as u64)
            .await
            .unwrap();
        assert_eq!(store.list().await.unwrap().blobs.len(), 1);
        store.remove(&digest).await.unwrap();
        assert!(store.stat(&digest).await.unwrap().is_none());
    }
}
