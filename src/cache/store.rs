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

use tokio::io::AsyncRead;

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
    /// Every stored blob, with what does not belong moved aside.
    fn list(&self) -> BoxFuture<'_, io::Result<Listing>>;
}

/// A stored blob as found at start.
#[derive(Debug, Clone)]
pub struct BlobInfo {
    /// Its digest.
    pub digest: Digest,
    /// Its size.
    pub size: u64,
    /// Last access or modification, unix seconds.
    pub last_use: u64,
}

/// What [`BlobStore::list`] found.
#[derive(Debug, Default)]
pub struct Listing {
    /// Valid blobs.
    pub blobs: Vec<BlobInfo>,
    /// Entries that did not belong, and where they were moved.
    pub moved_aside: Vec<PathBuf>,
}

/// Blobs on the local filesystem.
pub struct FsStore {
    cache_dir: PathBuf,
    root: PathBuf,
}

impl FsStore {
    /// A store under `cache_dir/blobs/sha256`.
    pub fn new(cache_dir: &Path) -> FsStore {
        FsStore {
            cache_dir: cache_dir.to_owned(),
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
            let file = tokio::fs::File::open(self.path(digest))
                .await?
                .into_std()
                .await;
            let reader: BlobReader = Box::pin(super::pagecache::FileRange::new(file, start, end));
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

    fn list(&self) -> BoxFuture<'_, io::Result<Listing>> {
        let root = self.root.clone();
        let cache_dir = self.cache_dir.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || list_blocking(&cache_dir, &root))
                .await
                .map_err(io::Error::other)?
        })
    }
}

/// Walks `root/<2 hex>/<hex>`. Anything else (a name that is not a digest,
/// a blob in the wrong shard, a directory where a file belongs) is moved
/// into the quarantine: it is not content hoard can vouch for.
fn list_blocking(cache_dir: &Path, root: &Path) -> io::Result<Listing> {
    let mut out = Listing::default();
    let shards = match std::fs::read_dir(root) {
        Ok(r) => r,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e),
    };
    for shard in shards {
        let shard = shard?;
        let shard_name = shard.file_name();
        let shard_ok = shard.file_type()?.is_dir()
            && shard_name.to_str().is_some_and(|n| {
                n.len() == 2
                    && n.bytes()
                        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            });
        if !shard_ok {
            out.moved_aside
                .push(super::layout::quarantine(cache_dir, &shard.path())?);
            continue;
        }
        for entry in std::fs::read_dir(shard.path())? {
            let entry = entry?;
            let name = entry.file_name();
            let parsed = name
                .to_str()
                .and_then(|n| format!("sha256:{n}").parse::<Digest>().ok())
                .filter(|d| Some(&d.hex()[..2]) == shard_name.to_str());
            let meta = entry.metadata()?;
            match parsed {
                Some(digest) if meta.is_file() => {
                    let last_use = [meta.accessed(), meta.modified()]
                        .into_iter()
                        .filter_map(|t| t.ok()?.duration_since(std::time::UNIX_EPOCH).ok())
                        .map(|d| d.as_secs())
                        .max()
                        .unwrap_or(0);
                    out.blobs.push(BlobInfo {
                        digest,
                        size: meta.len(),
                        last_use,
                    });
                }
                _ => out
                    .moved_aside
                    .push(super::layout::quarantine(cache_dir, &entry.path())?),
            }
        }
    }
    Ok(out)
}
