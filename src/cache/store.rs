//! The content-addressed blob store, behind a small interface.
//!
//! [`BlobStore`] is all the rest of hoard knows of where verified bytes live:
//! commit a staged, verified file under its digest, open a byte range, stat,
//! list, remove. [`FsStore`] keeps them on local disk as
//! `blobs/sha256/<2 hex>/<hex>`, the layout distribution uses. A shared
//! object-store backend for several replicas, and local pushes, plug in here.

use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncSeekExt};

use crate::oci::Digest;

/// A boxed future, so the trait stays object-safe.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A reader over a range of a stored blob.
pub type BlobReader = Pin<Box<dyn AsyncRead + Send>>;

/// Where verified blobs live.
pub trait BlobStore: Send + Sync {
    /// Size of a stored blob, `None` when absent.
    fn stat<'a>(&'a self, digest: &'a Digest) -> BoxFuture<'a, io::Result<Option<u64>>>;
    /// Opens `start..end` of a stored blob.
    fn open<'a>(
        &'a self,
        digest: &'a Digest,
        start: u64,
        end: u64,
    ) -> BoxFuture<'a, io::Result<BlobReader>>;
    /// Moves a staged file, already verified to hash to `digest` and synced,
    /// into the store. Atomic: the blob is either fully there or absent.
    fn commit<'a>(&'a self, digest: &'a Digest, staged: &'a Path) -> BoxFuture<'a, io::Result<()>>;
    /// Removes a blob (absent is fine).
    fn remove<'a>(&'a self, digest: &'a Digest) -> BoxFuture<'a, io::Result<()>>;
    /// Every stored blob with its size.
    fn list(&self) -> BoxFuture<'_, io::Result<Vec<(Digest, u64)>>>;
}

/// Blobs on the local filesystem.
pub struct FsStore {
    root: PathBuf,
}

impl FsStore {
    /// A store under `cache_dir/blobs/sha256`.
    pub fn new(cache_dir: &Path) -> FsStore {
        FsStore {
            root: cache_dir.join("blobs").join("sha256"),
        }
    }

    /// The on-disk path of a blob: derived only from a validated digest.
    pub fn path(&self, digest: &Digest) -> PathBuf {
        let hex = digest.hex();
        self.root.join(&hex[..2]).join(hex)
    }
}

impl BlobStore for FsStore {
    fn stat<'a>(&'a self, digest: &'a Digest) -> BoxFuture<'a, io::Result<Option<u64>>> {
        Box::pin(async move {
            match tokio::fs::metadata(self.path(digest)).await {
                Ok(m) => Ok(Some(m.len())),
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
            let mut file = tokio::fs::File::open(self.path(digest)).await?;
            if start > 0 {
                file.seek(io::SeekFrom::Start(start)).await?;
            }
            let reader: BlobReader = Box::pin(file.take(end.saturating_sub(start)));
            Ok(reader)
        })
    }

    fn commit<'a>(&'a self, digest: &'a Digest, staged: &'a Path) -> BoxFuture<'a, io::Result<()>> {
        let target = self.path(digest);
        let staged = staged.to_owned();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || super::atomic::rename_durable(&staged, &target))
                .await
                .map_err(io::Error::other)?
        })
    }

    fn remove<'a>(&'a self, digest: &'a Digest) -> BoxFuture<'a, io::Result<()>> {
        Box::pin(async move {
            match tokio::fs::remove_file(self.path(digest)).await {
                Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            }
        })
    }

    fn list(&self) -> BoxFuture<'_, io::Result<Vec<(Digest, u64)>>> {
        let root = self.root.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || list_blocking(&root))
                .await
                .map_err(io::Error::other)?
        })
    }
}

/// Walks `root/<2 hex>/<hex>`. Names that are not a digest in its right
/// shard are skipped with a warning: they are not ours to delete.
fn list_blocking(root: &Path) -> io::Result<Vec<(Digest, u64)>> {
    let mut out = Vec::new();
    let shards = match std::fs::read_dir(root) {
        Ok(r) => r,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e),
    };
    for shard in shards {
        let shard = shard?;
        if !shard.file_type()?.is_dir() {
            tracing::warn!(path = %shard.path().display(), "unexpected file in the blob store, left alone");
            continue;
        }
        let shard_name = shard.file_name();
        for entry in std::fs::read_dir(shard.path())? {
            let entry = entry?;
            let name = entry.file_name();
            let parsed = name
                .to_str()
                .and_then(|n| format!("sha256:{n}").parse::<Digest>().ok())
                .filter(|d| Some(&d.hex()[..2]) == shard_name.to_str());
            let meta = entry.metadata()?;
            match parsed {
                Some(d) if meta.is_file() => out.push((d, meta.len())),
                _ => {
                    tracing::warn!(path = %entry.path().display(), "unexpected entry in the blob store, left alone")
                }
            }
        }
    }
    Ok(out)
}
