//! Opening the cache: serve at once, build the index behind.
//!
//! Walking a million blobs takes seconds (ten after a reboot), and a
//! mirror that answers nothing meanwhile stalls every node that restarts
//! with it. So the cache opens with only its records and the held blobs
//! (pushed and pinned content, which cannot be fetched again) in place,
//! and the walk of the store runs in the background. Until it completes:
//! - a digest the index does not have yet is looked up in the store before
//!   it counts as a miss ([`Cache::lookup`]), so a late index never sends
//!   a stored blob to the upstream again;
//! - the budget waits (an eviction decided on half the blobs would pick
//!   the wrong victims), and readiness says the index is still loading.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use futures_util::{StreamExt, TryStreamExt};
use tokio::sync::watch;

use super::index::{BlobIndex, Holder};
use super::{fill::Fills, housekeeping, meta, publish_sizes, Cache, Error, MANIFEST_MEMORY};
use crate::metrics::Metrics;
use crate::oci::Digest;
use crate::storage::Storage;

/// Where the start-up load of the index stands.
#[derive(Debug, Clone)]
pub enum IndexState {
    /// The store is being walked; lookups fall back to it.
    Loading,
    /// Every stored blob is indexed and the budget applies.
    Complete,
    /// The walk failed: lookups keep asking the store, the budget is off.
    Failed(String),
}

/// Stat this many held blobs at once at start.
const HELD_STATS: usize = 16;

impl Cache {
    /// Opens the cache over `storage` with a budget of `max_size` bytes and
    /// returns as soon as the records are loaded and the blobs that local
    /// repositories and pins hold (`held`) are found, with the index of the
    /// rest loading in the background (see the module doc).
    pub async fn open_serving(
        storage: &Storage,
        max_size: u64,
        metrics: Arc<Metrics>,
        held: &HashMap<Digest, Vec<Holder>>,
    ) -> Result<Arc<Cache>, Error> {
        let started = Instant::now();
        let (meta, moved) = meta::Meta::load(storage.records.clone()).await?;
        let store = storage.blobs.clone();
        let (blobs, evicted) = BlobIndex::new(max_size);
        blobs.start_loading();
        // Owned digests: a stream of futures borrowing `held` would make
        // the server's future lose `Send` (a higher-ranked closure bound).
        let digests: Vec<Digest> = held.keys().cloned().collect();
        let found: Vec<(Digest, Option<crate::storage::BlobInfo>)> =
            futures_util::stream::iter(digests)
                .map(|digest| {
                    let store = store.clone();
                    async move {
                        let info = store.stat(&digest).await?;
                        Ok::<_, std::io::Error>((digest, info))
                    }
                })
                .buffer_unordered(HELD_STATS)
                .try_collect()
                .await?;
        for (digest, info) in found {
            if let (Some(info), Some(holders)) = (info, held.get(&digest)) {
                blobs.found_held(digest, info.size, info.last_use, holders);
            }
        }
        metrics.set_cache_limit(max_size);
        publish_sizes(&blobs, &metrics);
        let (state, state_rx) = watch::channel(IndexState::Loading);
        let (make_room, room_wanted) = tokio::sync::mpsc::unbounded_channel();
        let cache = Arc::new(Cache {
            store,
            make_room,
            blobs,
            store_lock: tokio::sync::Mutex::new(()),
            manifests: moka::sync::Cache::builder()
                .max_capacity(MANIFEST_MEMORY)
                .weigher(|_, v: &bytes::Bytes| u32::try_from(v.len()).unwrap_or(u32::MAX))
                .build(),
            meta: Arc::new(meta),
            links: super::links::Links::new(storage.records.clone()),
            fills: Fills::default(),
            held_on_commit: std::sync::Mutex::new(HashMap::new()),
            disk_full: std::sync::atomic::AtomicBool::new(false),
            index: state_rx,
            metrics,
        });
        tokio::spawn(housekeeping(Arc::downgrade(&cache), evicted, room_wanted));
        tokio::spawn(load_index(
            cache.clone(),
            held.clone(),
            moved,
            started,
            state,
        ));
        Ok(cache)
    }

    /// Waits until the start-up load of the index is over; an error if it
    /// failed. Commands that work on the whole cache (export, ls, check)
    /// call it before they look.
    pub async fn index_loaded(&self) -> Result<(), Error> {
        let mut rx = self.index.clone();
        let state = rx
            .wait_for(|s| !matches!(s, IndexState::Loading))
            .await
            .map(|s| s.clone())
            .unwrap_or_else(|_| IndexState::Failed("the index loader stopped".into()));
        match state {
            IndexState::Failed(e) => Err(Error::Io(std::io::Error::other(e))),
            _ => Ok(()),
        }
    }

    /// Where the start-up load of the index stands.
    pub fn index_state(&self) -> IndexState {
        self.index.borrow().clone()
    }

    /// Size of a cached blob, marking it used. While the index is loading,
    /// a digest it does not have yet is looked up in the store before it
    /// counts as a miss, so a blob on disk is never fetched again because
    /// the index was late; so is every unknown digest when the store is
    /// shared (a bucket behind the disk tier).
    pub async fn lookup(&self, digest: &Digest) -> Option<u64> {
        if let Some(size) = self.blobs.get(digest) {
            return Some(size);
        }
        if !self.blobs.is_loading() && !self.store.shared() {
            return None;
        }
        let info = self.store.stat(digest).await.ok().flatten()?;
        self.blobs.found(digest.clone(), info.size);
        Some(info.size)
    }
}

/// Walks the store and fills the index; then the budget applies.
async fn load_index(
    cache: Arc<Cache>,
    held: HashMap<Digest, Vec<Holder>>,
    moved_records: usize,
    started: Instant,
    state: watch::Sender<IndexState>,
) {
    let listing = match cache.store.list().await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "cannot list the blob store: blobs are found as they are asked for, but the budget is not enforced; fix the store and restart");
            state.send_replace(IndexState::Failed(format!(
                "cannot list the blob store: {e}"
            )));
            return;
        }
    };
    let count = listing.blobs.len();
    let moved = moved_records + listing.moved_aside;
    let mut blobs: Vec<(Digest, u64, u64)> = listing
        .blobs
        .into_iter()
        .map(|b| (b.digest, b.size, b.last_use))
        .collect();
    // Sorting and inserting a million entries is CPU work: not on the
    // runtime's threads.
    let indexed = cache.clone();
    let loaded = tokio::task::spawn_blocking(move || {
        blobs.sort_unstable_by_key(|b| b.2);
        indexed.blobs.load(blobs, &held);
    })
    .await;
    if let Err(e) = loaded {
        tracing::error!(error = %e, "the index load stopped");
        state.send_replace(IndexState::Failed(format!("the index load stopped: {e}")));
        return;
    }
    crate::malloc::release_free_memory();
    publish_sizes(&cache.blobs, &cache.metrics);
    tracing::info!(
        blobs = count,
        bytes = cache.blobs.bytes(),
        limit = cache.blobs.limit(),
        moved_aside = moved,
        ms = started.elapsed().as_millis() as u64,
        "cache index loaded"
    );
    if moved > 0 {
        tracing::warn!(moved, "entries that do not belong in the cache were moved aside into quarantine/; inspect and delete them");
    }
    state.send_replace(IndexState::Complete);
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::sync::Arc;

    use bytes::Bytes;
    use tokio::io::AsyncReadExt;
    use tokio::sync::Notify;

    use super::*;
    use crate::storage::{BlobInfo, BlobReader, BlobStore, BoxFuture, Listing, Staging};

    /// The disk store, with `list` held until the test lets it go: the
    /// index stays "loading" for as long as the test needs.
    struct GatedList {
        inner: Arc<dyn BlobStore>,
        gate: Arc<Notify>,
    }

    impl BlobStore for GatedList {
        fn stat<'a>(&'a self, d: &'a Digest) -> BoxFuture<'a, io::Result<Option<BlobInfo>>> {
            self.inner.stat(d)
        }
        fn open<'a>(
            &'a self,
            d: &'a Digest,
            start: u64,
            end: u64,
        ) -> BoxFuture<'a, io::Result<BlobReader>> {
            self.inner.open(d, start, end)
        }
        fn stage(&self) -> BoxFuture<'_, io::Result<Box<dyn Staging>>> {
            self.inner.stage()
        }
        fn remove<'a>(&'a self, d: &'a Digest) -> BoxFuture<'a, io::Result<()>> {
            self.inner.remove(d)
        }
        fn list(&self) -> BoxFuture<'_, io::Result<Listing>> {
            Box::pin(async move {
                self.gate.notified().await;
                self.inner.list().await
            })
        }
        fn set_aside<'a>(&'a self, d: &'a Digest) -> BoxFuture<'a, io::Result<String>> {
            self.inner.set_aside(d)
        }
        fn free_space(&self) -> BoxFuture<'_, io::Result<Option<u64>>> {
            self.inner.free_space()
        }
    }

    #[tokio::test]
    async fn a_stored_blob_is_found_while_the_index_loads() {
        let dir = tempfile::tempdir().expect("temp dir");
        let data = Bytes::from_static(b"a layer stored before the restart");
        let digest = Digest::of(&data);
        let other = Digest::of(b"never stored");
        {
            let cache = Cache::open(dir.path(), 1 << 20, Arc::new(Metrics::new()))
                .await
                .expect("first open");
            cache
                .store_bytes(&digest, data.clone(), None)
                .await
                .expect("store");
        }

        let disk = Storage::open_disk(dir.path()).await.expect("storage");
        let gate = Arc::new(Notify::new());
        let storage = Storage {
            blobs: Arc::new(GatedList {
                inner: disk.blobs.clone(),
                gate: gate.clone(),
            }),
            records: disk.records.clone(),
            bucket: None,
        };
        let cache =
            Cache::open_serving(&storage, 1 << 20, Arc::new(Metrics::new()), &HashMap::new())
                .await
                .expect("open while the listing is held");
        assert!(matches!(cache.index_state(), IndexState::Loading));
        assert!(cache.readiness().await.is_err(), "not ready while loading");
        assert_eq!(cache.blob_size(&digest), None, "not indexed yet");

        // A lookup is a hit from the store, not a miss that would go upstream.
        assert_eq!(cache.lookup(&digest).await, Some(data.len() as u64));
        assert_eq!(cache.lookup(&other).await, None);
        let mut body = Vec::new();
        cache
            .open_blob(&digest, 0, data.len() as u64)
            .await
            .expect("open")
            .expect("present")
            .read_to_end(&mut body)
            .await
            .expect("read");
        assert_eq!(body, data);
        assert!(matches!(cache.index_state(), IndexState::Loading));

        gate.notify_one();
        cache.index_loaded().await.expect("loaded");
        assert!(matches!(cache.index_state(), IndexState::Complete));
        assert_eq!(cache.blob_size(&digest), Some(data.len() as u64));
        assert_eq!(
            cache.size(),
            data.len() as u64,
            "found once, not counted twice"
        );
        assert_eq!(cache.lookup(&other).await, None);
    }
}
