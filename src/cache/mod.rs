//! The cache: verified blobs and manifests, tag records, in-flight fills and
//! the in-memory index that answers "do we have it" without touching disk.
//!
//! The bytes live in a [`BlobStore`] and the records in a
//! [`Records`](crate::storage::Records) store, both injected
//! ([`Storage`]): the cache never builds a path. Content becomes visible only through a staging's
//! `commit` after its digest was verified, so a crash at any moment leaves
//! either the whole verified blob or nothing.

pub mod fill;
mod held;
mod held_set;
pub mod index;
mod links;
mod load;
mod lru;
pub mod meta;
/// Page-cache reads live with the disk store; re-exported for the fill readers.
pub use crate::storage::pagecache;
mod permit;
mod reader;
pub mod verify;

use std::collections::HashMap;
use std::io;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;

use crate::metrics::Metrics;
use crate::oci::{Digest, RepoName};
pub use crate::storage::is_out_of_space;
use crate::storage::{BlobInfo, BlobReader, BlobStore, Staging, Storage};
use fill::Fills;
pub use fill::{Fill, FillError};
pub use held::HoldOnCommit;
pub use index::Holder;
use index::{BlobIndex, Evicted};
pub use load::IndexState;
pub use meta::{TagKey, TagRecord};
pub use permit::{Body, FillPermit, Join, OriginError};
pub use reader::{ReadError, Resume};

/// A cache failure.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Local disk.
    #[error("cache I/O: {0}")]
    Io(#[from] io::Error),
}

/// Free space at which a cache whose disk was full is ready again (see
/// [`Cache::readiness`]).
const ROOM_AGAIN: u64 = 64 * 1024 * 1024;

/// Manifest bytes kept in memory, in bytes (manifests are small and hot).
const MANIFEST_MEMORY: u64 = 64 * 1024 * 1024;

/// The cache.
pub struct Cache {
    store: Arc<dyn BlobStore>,
    /// Asks the background task to free this many bytes (a write ran out
    /// of space): work started from `&self` without the cache pointing at
    /// itself.
    make_room: tokio::sync::mpsc::UnboundedSender<u64>,
    blobs: BlobIndex,
    /// Serialises "commit a blob" against "delete an evicted blob", so an
    /// eviction can never delete a copy that was just committed again.
    store_lock: tokio::sync::Mutex<()>,
    manifests: moka::sync::Cache<Digest, Bytes>,
    meta: Arc<meta::Meta>,
    /// Which upstream repositories hold which digests ([`links`]).
    links: links::Links,
    fills: Fills,
    /// Blobs whose fill must commit straight into the held set (a prefetch
    /// is about to pin them), with how many callers asked: through the LRU a
    /// prefetch into a full budget would first evict as many bytes of
    /// unpinned content.
    held_on_commit: std::sync::Mutex<HashMap<Digest, (Holder, usize)>>,
    /// Set when a write failed for lack of space; cleared by the next
    /// successful commit. Reported by readiness and `hoard_disk_full`.
    disk_full: std::sync::atomic::AtomicBool,
    /// Where the start-up load of the index stands ([`load`]).
    index: tokio::sync::watch::Receiver<IndexState>,
    metrics: Arc<Metrics>,
}

impl Cache {
    /// Opens (creating) a cache on the disk backend at `dir` with a
    /// budget of `max_size` bytes (tests and tools; a server builds its
    /// [`Storage`] once and calls [`Cache::open_holding`]).
    pub async fn open(
        dir: &Path,
        max_size: u64,
        metrics: Arc<Metrics>,
    ) -> Result<Arc<Cache>, Error> {
        let storage = Storage::open_disk(dir).await?;
        Cache::open_holding(&storage, max_size, metrics, &HashMap::new()).await
    }

    /// Opens the cache over `storage` with a budget of `max_size` bytes,
    /// with the blobs that local repositories and pins hold (read from
    /// their records first) kept out of the budget from the start, and
    /// returns once the index is complete (commands and tests; the server
    /// uses [`Cache::open_serving`] and answers while it loads).
    pub async fn open_holding(
        storage: &Storage,
        max_size: u64,
        metrics: Arc<Metrics>,
        held: &HashMap<Digest, Vec<Holder>>,
    ) -> Result<Arc<Cache>, Error> {
        let cache = Cache::open_serving(storage, max_size, metrics, held).await?;
        cache.index_loaded().await?;
        Ok(cache)
    }

    /// Bytes of cached content.
    pub fn size(&self) -> u64 {
        self.blobs.bytes()
    }

    /// Number of fills in flight.
    pub fn fills_in_flight(&self) -> usize {
        self.fills.len()
    }

    /// Starts writing a new blob into the store (an upload, an import, a
    /// prefetch): commit it with [`Cache::commit_held`].
    pub async fn stage(&self) -> Result<Box<dyn Staging>, Error> {
        self.store.stage().await.map_err(|e| {
            fill::Committer::write_failed(self, &e, 0);
            Error::Io(e)
        })
    }

    /// Size and last use of a stored blob, from the store itself: unlike
    /// the index lookup, this does not count as a use for the LRU.
    pub async fn stored(&self, digest: &Digest) -> Option<BlobInfo> {
        self.store.stat(digest).await.ok().flatten()
    }

    /// Reads a whole cached blob that is known to be small (a manifest or
    /// a config), verifying it against its digest. `None` when absent or
    /// damaged (a damaged copy is dropped).
    pub async fn read_small(&self, digest: &Digest) -> Result<Option<Bytes>, Error> {
        if let Some(b) = self.manifests.get(digest) {
            return Ok(Some(b));
        }
        let Some(size) = self.lookup(digest).await else {
            return Ok(None);
        };
        let Some(mut reader) = self.open_blob(digest, 0, size).await? else {
            return Ok(None);
        };
        let mut buf = Vec::with_capacity(size as usize);
        tokio::io::AsyncReadExt::read_to_end(&mut reader, &mut buf).await?;
        let bytes = Bytes::from(buf);
        if !digest.matches(&bytes) {
            tracing::error!(%digest, "cached content is corrupt; dropping it");
            self.forget(digest);
            let _ = self.store.remove(digest).await;
            return Ok(None);
        }
        self.manifests.insert(digest.clone(), bytes.clone());
        Ok(Some(bytes))
    }

    /// Whether the cache can take new content: its directory is writable and
    /// the last write did not run out of space. The error says what to do.
    pub async fn readiness(&self) -> Result<(), String> {
        match self.index_state() {
            IndexState::Loading => {
                return Err("the cache index is still loading (cached blobs are served meanwhile); wait a few seconds".into())
            }
            IndexState::Failed(e) => return Err(format!("the cache index is incomplete: {e}")),
            IndexState::Complete => {}
        }
        if self.disk_full.load(Ordering::Relaxed) {
            // Evictions may have made room since the write that failed. Only
            // a commit clears the flag otherwise, and an unready pod gets no
            // traffic to commit: look at the disk itself.
            let free = self.store.free_space().await;
            if !free.is_ok_and(|f| f.is_none_or(|f| f >= ROOM_AGAIN)) {
                return Err("the cache disk is full: free space or lower max_size".into());
            }
            if self.disk_full.swap(false, Ordering::Relaxed) {
                tracing::info!("cache disk has room again");
                self.metrics.set_disk_full(false);
            }
        }
        // A staging written and dropped: the store takes bytes, and keeps none.
        let probe = async {
            let mut staging = self.store.stage().await?;
            staging.write(Bytes::from_static(b"ok")).await
        };
        probe
            .await
            .map_err(|e| format!("the cache directory is not writable: {e}"))
    }

    /// Why the mirror serves with less than its whole store, when it does:
    /// the bucket cannot be reached, so hits come from the disk tier and
    /// misses stream from the upstream without being kept. Not a reason to
    /// be unready (every replica shares the bucket: all would go at once),
    /// but `/readyz` and `hoard_storage_reachable` say so.
    pub async fn degraded(&self) -> Option<String> {
        let health = self.store.health().await;
        self.metrics.set_storage_reachable(health.is_ok());
        health.err()
    }

    /// Whether the store is shared with other replicas (a bucket): what
    /// this process keeps in memory about records may then be behind.
    pub fn shared(&self) -> bool {
        self.store.shared()
    }

    /// Size of a blob being filled, once its origin announced it.
    pub fn filling_size(&self, digest: &Digest) -> Option<u64> {
        self.fills.size_of(digest)
    }

    /// Size of a cached blob, from memory only: while the index loads it
    /// may not know a stored blob yet. Paths that would fetch on a miss use
    /// [`Cache::lookup`].
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

    /// A URL the client may fetch `digest` from instead of this node (a
    /// presigned bucket URL, `[storage] redirect`); `None` to serve it here.
    /// A store that cannot sign one now costs a log line, not the request.
    pub async fn redirect(&self, digest: &Digest) -> Option<String> {
        self.store.redirect(digest).await.unwrap_or_else(|e| {
            tracing::warn!(%digest, error = %e, "cannot sign a bucket redirect; serving through this node");
            None
        })
    }

    /// Joins the fill of `digest`, or makes the caller its leader: the
    /// cache coalesces, the caller fetches (see [`FillPermit`]). `None` when
    /// the blob got committed meanwhile (serve it from the cache).
    pub fn join_fill(self: &Arc<Self>, digest: &Digest) -> Option<Join> {
        let join = self
            .fills
            .join(digest, || self.blobs.contains(digest), self.metrics.clone())?;
        Some(match join {
            fill::Join::Follower(f) => Join::Follower(f),
            fill::Join::Leader(guard) => {
                tracing::debug!(%digest, "fill started");
                Join::Leader(FillPermit::new(guard, self.clone()))
            }
        })
    }

    /// A cached manifest: bytes and media type.
    pub async fn manifest(&self, digest: &Digest) -> Result<Option<(Bytes, Arc<str>)>, Error> {
        let Some(media_type) = self.meta.manifest_type_or_read(digest).await else {
            return Ok(None);
        };
        Ok(self.read_small(digest).await?.map(|b| (b, media_type)))
    }

    /// Stores a manifest of `media_type` (`digest` is that of `bytes`).
    pub async fn put_manifest(
        &self,
        digest: &Digest,
        bytes: Bytes,
        media_type: &str,
    ) -> Result<(), Error> {
        if self.meta.manifest_type(digest).is_some() && self.blobs.contains(digest) {
            return Ok(());
        }
        self.store_bytes(digest, bytes, None).await?;
        Ok(self.meta.put_manifest_type(digest, media_type).await?)
    }

    /// The cached record of a tag, as this process knows it.
    pub fn tag(&self, key: &TagKey) -> Option<TagRecord> {
        self.meta.tag(key)
    }

    /// The cached record of a tag, read from the records when this process
    /// has not seen it (another replica on the bucket wrote it).
    pub async fn tag_or_read(&self, key: &TagKey) -> Option<TagRecord> {
        self.meta.tag_or_read(key).await
    }

    /// The record of a tag, read again from the records (see
    /// [`meta::Meta::reread_tag`]): what the tag's owner recorded for the
    /// fleet.
    pub async fn reread_tag(&self, key: &TagKey) -> Option<TagRecord> {
        self.meta.reread_tag(key).await
    }

    /// Records a tag durably, and links what it names to its repository.
    pub async fn put_tag(&self, key: TagKey, record: TagRecord) -> Result<(), Error> {
        self.meta.put_tag(&key, &record).await?;
        self.link_manifest(&key.upstream, &key.repo, &record.digest)
            .await;
        Ok(())
    }

    /// Cached tags of a repository.
    pub fn tags_of(&self, registry: &str, repo: &RepoName) -> Vec<String> {
        self.meta.tags_of(registry, repo)
    }

    /// Cached repositories.
    pub fn repositories(&self) -> Vec<(String, RepoName)> {
        self.meta.repositories()
    }

    /// Drops a blob from the index (e.g. missing or damaged on disk).
    fn forget(&self, digest: &Digest) {
        self.blobs.remove(digest);
        self.manifests.invalidate(digest);
        self.update_size_metrics();
    }

    fn update_size_metrics(&self) {
        publish_sizes(&self.blobs, &self.metrics);
    }

    /// Deletes an evicted blob's file, unless it was committed again since.
    async fn remove_evicted(&self, ev: Evicted) {
        let _held = self.store_lock.lock().await;
        if self.blobs.contains(&ev.digest) {
            return;
        }
        self.manifests.invalidate(&ev.digest);
        match self.store.remove(&ev.digest).await {
            Ok(()) => {
                self.metrics.evicted(ev.size);
                tracing::info!(digest = %ev.digest, bytes = ev.size, "evicted");
            }
            Err(e) => {
                tracing::error!(digest = %ev.digest, error = %e, "could not delete an evicted blob")
            }
        }
        self.update_size_metrics();
    }

    /// Frees at least `needed` bytes by evicting the least recently used
    /// blobs, after a write ran out of space.
    async fn make_room(&self, needed: u64) {
        let victims = self.blobs.oldest(needed);
        let freed: u64 = victims.iter().map(|(_, s)| s).sum();
        tracing::warn!(
            needed,
            freed,
            blobs = victims.len(),
            "disk full: evicting least recently used blobs"
        );
        for (digest, size) in victims {
            self.blobs.remove(&digest);
            self.remove_evicted(Evicted { digest, size }).await;
        }
    }
}

impl fill::Committer for Cache {
    async fn stage(&self) -> io::Result<Box<dyn Staging>> {
        self.store.stage().await
    }

    async fn commit(
        &self,
        digest: &Digest,
        mut staged: Box<dyn Staging>,
        size: u64,
    ) -> io::Result<()> {
        // The slow part (a bucket upload) before the lock: it must not
        // hold up other commits and evictions.
        staged.prepare(digest, size).await?;
        let _held = self.store_lock.lock().await;
        staged.commit(digest.clone(), size).await?;
        let holder = self
            .held_on_commit
            .lock()
            .ok()
            .and_then(|m| m.get(digest).map(|(h, _)| *h));
        match holder {
            Some(h) => self.blobs.insert_held(digest.clone(), size, h),
            None => self.blobs.insert(digest.clone(), size, index::now_secs()),
        }
        if self.disk_full.swap(false, Ordering::Relaxed) {
            tracing::info!("cache disk accepts writes again");
            self.metrics.set_disk_full(false);
        }
        self.update_size_metrics();
        Ok(())
    }

    fn reserve(&self, digest: &Digest, size: u64) -> bool {
        // A fill committing into the held set is outside the budget.
        let held = self
            .held_on_commit
            .lock()
            .is_ok_and(|m| m.contains_key(digest));
        !held && self.blobs.reserve(size)
    }

    fn unreserve(&self, size: u64) {
        self.blobs.unreserve(size);
    }

    fn write_failed(&self, err: &io::Error, needed: u64) {
        if !is_out_of_space(err) {
            tracing::error!(error = %err, "cache write failed");
            return;
        }
        if !self.disk_full.swap(true, Ordering::Relaxed) {
            tracing::error!(error = %err, "cache disk is full: pulls are passed through, evicting to make room");
        }
        self.metrics.set_disk_full(true);
        // Room for the blob that failed, and a margin for the next ones.
        let needed = needed.max(1) + needed / 10 + 16 * 1024 * 1024;
        let _ = self.make_room.send(needed);
    }
}

/// Sets the size gauges: everything on disk, what the budget governs (held
/// content excluded, so a large pin does not look like a full budget), and
/// each holder's share.
fn publish_sizes(blobs: &BlobIndex, metrics: &Metrics) {
    let bytes = blobs.bytes();
    metrics.set_cache_size(bytes, blobs.count());
    metrics.set_budgeted(bytes.saturating_sub(blobs.held_bytes()));
    metrics.set_held(blobs.held_by(Holder::Local), blobs.held_by(Holder::Pin));
}

/// Off the hot path: deletes the files of blobs the budget evicted, and
/// evicts to make room after a write found the disk full. Ends with the
/// cache (both channels close when it drops).
async fn housekeeping(
    cache: std::sync::Weak<Cache>,
    mut evicted: tokio::sync::mpsc::UnboundedReceiver<Evicted>,
    mut room_wanted: tokio::sync::mpsc::UnboundedReceiver<u64>,
) {
    loop {
        tokio::select! {
            ev = evicted.recv() => {
                let (Some(ev), Some(cache)) = (ev, cache.upgrade()) else { break };
                cache.remove_evicted(ev).await;
            }
            needed = room_wanted.recv() => {
                let (Some(needed), Some(cache)) = (needed, cache.upgrade()) else { break };
                cache.make_room(needed).await;
            }
        }
    }
}
