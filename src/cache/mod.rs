//! The cache: verified blobs and manifests, tag records, in-flight fills and
//! the in-memory index that answers "do we have it" without touching disk.
//!
//! Layout under `cache_dir`:
//! ```text
//! blobs/sha256/<2 hex>/<hex>      verified content (layers, configs, manifests)
//! manifests/sha256/<2 hex>/<hex>  media type of each cached manifest
//! tags/<2 hex>/<hex>.json         tag -> digest records
//! tmp/                            fills and metadata being written
//! ```

mod atomic;
pub mod fill;
pub mod meta;
pub mod store;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;

use crate::metrics::Metrics;
use crate::oci::{Digest, RepoName};
use crate::upstream::{self, FetchedManifest, Upstream};
use fill::{Fills, Join};
pub use meta::{TagKey, TagRecord};
use store::{BlobReader, BlobStore, FsStore};

/// A cache failure.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Local disk.
    #[error("cache I/O: {0}")]
    Io(#[from] io::Error),
    /// The upstream, while filling.
    #[error(transparent)]
    Upstream(#[from] upstream::Error),
}

/// Manifest bytes kept in memory, in bytes (manifests are small and hot).
const MANIFEST_MEMORY: u64 = 64 * 1024 * 1024;

/// The cache.
pub struct Cache {
    tmp: PathBuf,
    store: Arc<dyn BlobStore>,
    blobs: moka::sync::Cache<Digest, u64>,
    bytes: AtomicU64,
    manifests: moka::sync::Cache<Digest, Bytes>,
    meta: Arc<meta::Meta>,
    fills: Fills,
    /// Set when a write failed for lack of space; cleared by the next
    /// successful commit. Reported by readiness and `hoard_disk_full`.
    disk_full: std::sync::atomic::AtomicBool,
    metrics: Arc<Metrics>,
}

impl Cache {
    /// Opens (creating) the cache at `dir`: removes leftovers of interrupted
    /// fills and rebuilds the index from what is on disk.
    pub async fn open(dir: &Path, metrics: Arc<Metrics>) -> Result<Arc<Cache>, Error> {
        let dir = dir.to_owned();
        let tmp = dir.join("tmp");
        let (meta, store) = tokio::task::spawn_blocking({
            let tmp = tmp.clone();
            move || -> io::Result<_> {
                for sub in ["blobs/sha256", "manifests/sha256", "tags"] {
                    std::fs::create_dir_all(dir.join(sub))?;
                }
                clean_tmp(&tmp)?;
                let meta = meta::Meta::load(&dir, &tmp)?;
                Ok((meta, FsStore::new(&dir)))
            }
        })
        .await
        .map_err(io::Error::other)??;
        let listed = store.list().await?;
        let blobs = moka::sync::Cache::builder().build();
        let mut total = 0;
        for (d, size) in &listed {
            blobs.insert(d.clone(), *size);
            total += size;
        }
        metrics.set_cache_size(total, listed.len() as u64);
        tracing::info!(blobs = listed.len(), bytes = total, "cache index loaded");
        Ok(Arc::new(Cache {
            tmp,
            store: Arc::new(store),
            blobs,
            bytes: AtomicU64::new(total),
            manifests: moka::sync::Cache::builder()
                .max_capacity(MANIFEST_MEMORY)
                .weigher(|_, v: &Bytes| u32::try_from(v.len()).unwrap_or(u32::MAX))
                .build(),
            meta: Arc::new(meta),
            fills: Fills::default(),
            disk_full: std::sync::atomic::AtomicBool::new(false),
            metrics,
        }))
    }

    /// Whether the cache can take new content: its directory is writable and
    /// the last write did not run out of space. The error says what to do.
    pub async fn readiness(&self) -> Result<(), String> {
        if self.disk_full.load(Ordering::Relaxed) {
            return Err("the cache disk is full: free space or lower max_size".into());
        }
        let probe = atomic::temp_path(&self.tmp, "ready");
        let result = tokio::task::spawn_blocking(move || {
            let r = std::fs::write(&probe, b"ok");
            let _ = std::fs::remove_file(&probe);
            r
        })
        .await
        .map_err(|e| e.to_string())?;
        result.map_err(|e| format!("the cache directory is not writable: {e}"))
    }

    /// Size of a cached blob (from memory).
    pub fn blob_size(&self, digest: &Digest) -> Option<u64> {
        self.blobs.get(digest)
    }

    /// Opens `start..end` of a cached blob; `None` if it vanished from disk
    /// (it is then dropped from the index and treated as a miss).
    pub async fn open_blob(
        &self,
        digest: &Digest,
        start: u64,
        end: u64,
    ) -> Result<Option<BlobReader>, Error> {
        match self.store.open(digest, start, end).await {
            Ok(r) => Ok(Some(r)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                tracing::warn!(%digest, "indexed blob missing on disk; will fetch again");
                self.forget(digest);
                Ok(None)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Joins or starts the fill of `digest` from `upstream`. `None` when the
    /// blob got committed meanwhile (serve it from the cache).
    pub fn fill(
        self: &Arc<Self>,
        upstream: Arc<Upstream>,
        repo: RepoName,
        digest: &Digest,
    ) -> Option<(Arc<fill::Fill>, bool)> {
        let tmp = atomic::temp_path(&self.tmp, "fill");
        let join = self.fills.join(
            digest,
            || self.blobs.contains_key(digest),
            tmp,
            self.metrics.clone(),
        )?;
        Some(match join {
            Join::Follower(f) => (f, false),
            Join::Leader(f, guard) => {
                let cache = self.clone();
                let digest = digest.clone();
                tracing::debug!(%digest, upstream = upstream.name(), "fill started");
                tokio::spawn(async move {
                    let resp = upstream.get_blob(&repo, &digest).await;
                    fill::run(guard, &upstream, resp, &*cache).await;
                });
                (f, true)
            }
        })
    }

    /// A cached manifest: bytes and media type.
    pub async fn manifest(&self, digest: &Digest) -> Result<Option<(Bytes, Arc<str>)>, Error> {
        let Some(media_type) = self.meta.manifest_type(digest) else {
            return Ok(None);
        };
        if let Some(b) = self.manifests.get(digest) {
            return Ok(Some((b, media_type)));
        }
        let Some(size) = self.blob_size(digest) else {
            return Ok(None);
        };
        let Some(mut reader) = self.open_blob(digest, 0, size).await? else {
            return Ok(None);
        };
        let mut buf = Vec::with_capacity(size as usize);
        tokio::io::AsyncReadExt::read_to_end(&mut reader, &mut buf).await?;
        let bytes = Bytes::from(buf);
        if Digest::of(&bytes) != *digest {
            tracing::error!(%digest, "cached manifest is corrupt; dropping it");
            self.forget(digest);
            let _ = self.store.remove(digest).await;
            return Ok(None);
        }
        self.manifests.insert(digest.clone(), bytes.clone());
        Ok(Some((bytes, media_type)))
    }

    /// Stores a fetched manifest (its digest is that of its bytes).
    pub async fn put_manifest(&self, m: &FetchedManifest) -> Result<(), Error> {
        if self.meta.manifest_type(&m.digest).is_some() && self.blobs.contains_key(&m.digest) {
            return Ok(());
        }
        let tmp = atomic::temp_path(&self.tmp, "manifest");
        let bytes = m.bytes.clone();
        let staged = tmp.clone();
        let written = tokio::task::spawn_blocking(move || -> io::Result<()> {
            use std::io::Write;
            let mut f = std::fs::File::create(&staged)?;
            f.write_all(&bytes)?;
            f.sync_all()
        })
        .await
        .map_err(io::Error::other)
        .and_then(|r| r);
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            return Err(e.into());
        }
        if let Err(e) = self.store.commit(&m.digest, &tmp).await {
            let _ = std::fs::remove_file(&tmp);
            return Err(e.into());
        }
        self.index_blob(&m.digest, m.bytes.len() as u64);
        self.manifests.insert(m.digest.clone(), m.bytes.clone());
        self.blocking_meta(
            |meta, (d, t)| meta.put_manifest_type(&d, &t),
            (m.digest.clone(), m.media_type.clone()),
        )
        .await
    }

    /// The cached record of a tag.
    pub fn tag(&self, key: &TagKey) -> Option<TagRecord> {
        self.meta.tag(key)
    }

    /// Records a tag durably.
    pub async fn put_tag(&self, key: TagKey, record: TagRecord) -> Result<(), Error> {
        self.blocking_meta(|meta, (k, r)| meta.put_tag(&k, &r), (key, record))
            .await
    }

    /// Cached tags of a repository.
    pub fn tags_of(&self, upstream: &str, repo: &RepoName) -> Vec<String> {
        self.meta.tags_of(upstream, repo)
    }

    /// Cached repositories.
    pub fn repositories(&self) -> Vec<(String, RepoName)> {
        self.meta.repositories()
    }

    /// Metadata writes are small but fsync: run them off the runtime.
    async fn blocking_meta<A: Send + 'static>(
        &self,
        f: impl FnOnce(&meta::Meta, A) -> io::Result<()> + Send + 'static,
        arg: A,
    ) -> Result<(), Error> {
        let meta = self.meta.clone();
        tokio::task::spawn_blocking(move || f(&meta, arg))
            .await
            .map_err(io::Error::other)?
            .map_err(Error::from)
    }

    fn index_blob(&self, digest: &Digest, size: u64) {
        if self.blobs.get(digest).is_none() {
            self.blobs.insert(digest.clone(), size);
            let total = self.bytes.fetch_add(size, Ordering::Relaxed) + size;
            self.metrics.set_cache_size(total, self.blobs.entry_count());
        }
    }

    fn forget(&self, digest: &Digest) {
        if let Some(size) = self.blobs.remove(digest) {
            let total = self
                .bytes
                .fetch_sub(size, Ordering::Relaxed)
                .saturating_sub(size);
            self.metrics.set_cache_size(total, self.blobs.entry_count());
        }
        self.manifests.invalidate(digest);
    }
}

impl fill::Committer for Cache {
    async fn commit(&self, digest: &Digest, tmp: &Path, size: u64) -> io::Result<()> {
        self.store.commit(digest, tmp).await?;
        self.index_blob(digest, size);
        Ok(())
    }
}

/// Removes temp files left by fills and writes that a crash interrupted:
/// they were never verified, so they are not content.
fn clean_tmp(tmp: &Path) -> io::Result<()> {
    std::fs::create_dir_all(tmp)?;
    let mut removed = 0;
    for entry in std::fs::read_dir(tmp)? {
        let entry = entry?;
        if entry.file_type()?.is_file() {
            std::fs::remove_file(entry.path())?;
            removed += 1;
        }
    }
    if removed > 0 {
        tracing::info!(removed, "removed leftovers of interrupted fills");
    }
    Ok(())
}
