//! [`BlobStore`] on local disk: `blobs/sha256/<2 hex>/<hex>`, the layout
//! distribution uses.
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
use crate::oci::{Digest, Hasher};

/// Blobs on the local filesystem.
pub struct FsBlobs {
    dir: Arc<CacheDir>,
}

impl FsBlobs {
    /// The blob store of a claimed cache directory.
    pub fn new(dir: Arc<CacheDir>) -> FsBlobs {
        FsBlobs { dir }
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
        out.moved_aside = dir.walk_sharded(&dir.blobs_root(), strays, |digest, entry| {
            out.blobs.push(info(digest, &entry.metadata()?));
            Ok(())
        })?;
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
}

impl Staging for FsStaging {
    fn write(&mut self, bytes: Bytes) -> BoxFuture<'_, io::Result<()>> {
        Box::pin(async move {
            let (file, at) = (self.file.clone(), self.written);
            let len = bytes.len() as u64;
            let data = bytes.clone();
            blocking(move || file.write_all_at(&data, at)).await?;
            if let Some(h) = &mut self.hasher {
                h.update(&bytes);
            }
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
            if let Some(h) = self.hasher.take() {
                let actual = h.finish();
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
            let (file, target) = (self.file.clone(), self.dir.blob(&digest));
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
