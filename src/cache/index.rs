//! The in-memory blob index: which digests are cached, their sizes, and the
//! disk budget.
//!
//! A compact least-recently-used list ([`super::lru`], about 70 bytes per
//! blob where moka spent 530) keeps the bytes under `max_size`, evicting in
//! the same call that crossed it. An evicted entry is handed to a background task that deletes
//! its file; a reader that has the file open finishes anyway (unlink keeps
//! open descriptors valid).
//!
//! Held blobs live outside the LRU and outside the budget: content pushed to
//! a local repository ([`Holder::Local`]) and images an operator pinned for
//! an air-gapped site ([`Holder::Pin`]). The budget bounds what the cache may
//! throw away and fetch again; held content cannot be fetched again, so it
//! is accounted apart (`hoard_local_bytes`, `hoard_pinned_bytes`) and only
//! leaves when its last holder lets go.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::mpsc;

use super::held_set::HeldSet;
use super::lru::Lru;
use crate::oci::{Algorithm, Digest};

/// One indexed blob.
#[derive(Debug)]
pub struct Entry {
    size: u64,
    /// Unix seconds of the last use, for picking victims when the disk fills.
    last_use: AtomicU64,
}

impl Entry {
    pub(super) fn new(size: u64, last_use: u64) -> Entry {
        Entry {
            size,
            last_use: AtomicU64::new(last_use),
        }
    }

    pub(super) fn size(&self) -> u64 {
        self.size
    }
}

/// A blob the budget pushed out, to be deleted from the store.
#[derive(Debug)]
pub struct Evicted {
    /// Its digest.
    pub digest: Digest,
    /// Its size.
    pub size: u64,
}

/// Why a blob is kept out of the budget's reach. A blob may have both.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Holder {
    /// Referenced by a local (pushed) repository.
    Local,
    /// Part of an image an operator pinned.
    Pin,
}

impl Holder {
    pub(super) fn bit(self) -> u8 {
        match self {
            Holder::Local => 1,
            Holder::Pin => 2,
        }
    }
}

/// The index.
pub struct BlobIndex {
    /// The budgeted blobs. std lock: O(1) list operations only (but the
    /// disk-full victim search), never held across an await.
    lru: Mutex<Lru>,
    /// The sha512 digests the LRU lists, by the 32-byte key they are
    /// listed under ([`Digest::to_bytes`]), to name them again when they
    /// leave it. The LRU's keys are raw sha256s; sha512 content is pushed,
    /// held while a repository links it and budgeted only once released,
    /// so this stays small. std lock: map operations only, taken after
    /// `lru` when both are.
    long: Mutex<HashMap<[u8; 32], Digest>>,
    /// std lock: map operations only, never held across an await.
    pinned: RwLock<HeldSet>,
    /// Bytes of budgeted and held blobs together.
    bytes: AtomicU64,
    /// Bytes announced by fills in flight: their temp files take disk
    /// space too, so the budget makes room for them before they commit.
    reserved: AtomicU64,
    limit: u64,
    evicted: mpsc::UnboundedSender<Evicted>,
    /// Set while the start-up load runs: the budget waits for it (an
    /// eviction decided on half the blobs would pick the wrong victims),
    /// and a miss must ask the store before it counts.
    loading: AtomicBool,
}

/// Current time in unix seconds.
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl BlobIndex {
    /// An empty index with a budget of `limit` bytes; evicted blobs arrive
    /// on the returned receiver.
    pub fn new(limit: u64) -> (BlobIndex, mpsc::UnboundedReceiver<Evicted>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (
            BlobIndex {
                lru: Mutex::new(Lru::default()),
                long: Mutex::new(HashMap::new()),
                pinned: RwLock::new(HeldSet::default()),
                bytes: AtomicU64::new(0),
                reserved: AtomicU64::new(0),
                limit,
                evicted: tx,
                loading: AtomicBool::new(false),
            },
            rx,
        )
    }

    fn lru(&self) -> MutexGuard<'_, Lru> {
        // A panic while holding the lock cannot leave the list half-linked
        // in a way that matters more than refusing every later request.
        self.lru.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn long(&self) -> MutexGuard<'_, HashMap<[u8; 32], Digest>> {
        self.long.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The LRU key of a digest about to be listed (a sha512 is remembered
    /// beside its key).
    fn listed(&self, digest: &Digest) -> [u8; 32] {
        let key = digest.to_bytes();
        if digest.algorithm() != Algorithm::Sha256 {
            self.long().insert(key, digest.clone());
        }
        key
    }

    /// The digest an LRU key stands for; `unlist` forgets a sha512's name
    /// (its entry left the LRU).
    fn named(&self, key: [u8; 32], unlist: bool) -> Digest {
        let mut long = self.long();
        let found = match unlist {
            true => long.remove(&key),
            false => long.get(&key).cloned(),
        };
        found.unwrap_or_else(|| Digest::from_bytes(key))
    }

    /// Size of a cached blob, marking it used.
    pub fn get(&self, digest: &Digest) -> Option<u64> {
        let now = now_secs();
        if let Some(size) = self.lru().touch(&digest.to_bytes(), now) {
            return Some(size);
        }
        let p = self.pinned.read().ok()?;
        let e = p.get(digest)?;
        e.last_use.store(now, Ordering::Relaxed);
        Some(e.size)
    }

    /// Whether a blob is indexed (does not count as a use).
    pub fn contains(&self, digest: &Digest) -> bool {
        self.lru().contains(&digest.to_bytes())
            || self.pinned.read().is_ok_and(|p| p.contains(digest))
    }

    /// Adds a committed blob. Eviction to stay under the budget runs now,
    /// so the caller sees its effect (and the deletes are queued) at once.
    pub fn insert(&self, digest: Digest, size: u64, last_use: u64) {
        self.add(digest, size, last_use);
        self.enforce();
    }

    /// Adds a committed blob straight into the held set, so the budget
    /// never sees it (a pushed layer must not be evicted between its commit
    /// and its hold).
    pub fn insert_held(&self, digest: Digest, size: u64, holder: Holder) {
        if !self.hold(&digest, holder) {
            self.bytes.fetch_add(size, Ordering::Relaxed);
            let entry = Arc::new(Entry::new(size, now_secs()));
            if let Ok(mut p) = self.pinned.write() {
                p.insert(digest, entry, &[holder]);
            }
        }
    }

    /// Marks the index as loading: see [`BlobIndex::load`].
    pub fn start_loading(&self) {
        self.loading.store(true, Ordering::Release);
    }

    /// Whether the start-up load is still running: a digest not indexed
    /// may then still be in the store.
    pub fn is_loading(&self) -> bool {
        self.loading.load(Ordering::Acquire)
    }

    /// Adds the blobs found at start, sorted oldest first, while the index
    /// serves: they go behind whatever was used meanwhile, a few thousand
    /// per lock so lookups are never held up for long, and the budget is
    /// applied once at the end rather than after every one of possibly a
    /// million inserts. Blobs in `held` go straight to the held set: the
    /// budget applied at start must not evict what a local repository or a
    /// pin still needs.
    pub fn load(&self, blobs: Vec<(Digest, u64, u64)>, held: &HashMap<Digest, Vec<Holder>>) {
        const BATCH: usize = 4096;
        self.lru().reserve(blobs.len());
        let mut rest = blobs.into_iter().rev().peekable();
        while rest.peek().is_some() {
            let mut lru = self.lru();
            for (digest, size, last_use) in rest.by_ref().take(BATCH) {
                if let Some(holders) = held.get(&digest) {
                    self.found_held(digest, size, last_use, holders);
                    continue;
                }
                if self.pinned.read().is_ok_and(|p| p.contains(&digest)) {
                    continue;
                }
                if lru.insert_oldest(self.listed(&digest), size, last_use) {
                    self.bytes.fetch_add(size, Ordering::Relaxed);
                }
            }
        }
        self.loading.store(false, Ordering::Release);
        self.enforce();
    }

    /// Adds a blob the store had while the index was still loading, as
    /// just used.
    pub fn found(&self, digest: Digest, size: u64) {
        self.add(digest, size, now_secs());
    }

    /// Adds a held blob found in the store at start, before the load.
    pub fn found_held(&self, digest: Digest, size: u64, last_use: u64, holders: &[Holder]) {
        let mut pinned = self.pinned.write().unwrap_or_else(|p| p.into_inner());
        if !pinned.contains(&digest) {
            self.bytes.fetch_add(size, Ordering::Relaxed);
            pinned.insert(digest, Arc::new(Entry::new(size, last_use)), holders);
        }
    }

    fn add(&self, digest: Digest, size: u64, last_use: u64) {
        if self.pinned.read().is_ok_and(|p| p.contains(&digest)) {
            return;
        }
        let key = self.listed(&digest);
        if self.lru().insert(key, size, last_use) {
            self.bytes.fetch_add(size, Ordering::Relaxed);
        }
    }

    /// Counts `size` bytes of a fill in flight against the budget, evicting
    /// now to make room for them. A blob larger than the whole budget is not
    /// counted (`false`): it cannot stay anyway, and must not empty the cache.
    pub fn reserve(&self, size: u64) -> bool {
        if size > self.limit {
            return false;
        }
        self.reserved.fetch_add(size, Ordering::Relaxed);
        self.enforce();
        true
    }

    /// Gives back what [`BlobIndex::reserve`] took.
    pub fn unreserve(&self, size: u64) {
        let _ = self
            .reserved
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |r| {
                Some(r.saturating_sub(size))
            });
    }

    /// Evicts the least recently used blobs until the budgeted bytes and
    /// the fills in flight fit the limit, and queues their deletes.
    fn enforce(&self) {
        if self.is_loading() {
            return;
        }
        let mut lru = self.lru();
        // Fills in flight beyond the whole budget: everything budgeted goes.
        let reserved = self.reserved.load(Ordering::Relaxed).min(self.limit);
        while lru.bytes() + reserved > self.limit {
            let Some((key, size)) = lru.pop_oldest() else {
                break;
            };
            self.bytes.fetch_sub(size, Ordering::Relaxed);
            let _ = self.evicted.send(Evicted {
                digest: self.named(key, true),
                size,
            });
        }
    }

    /// Drops a blob from the index (its file is the caller's business).
    pub fn remove(&self, digest: &Digest) -> Option<u64> {
        if let Some((size, _)) = self.lru().remove(&digest.to_bytes()) {
            self.named(digest.to_bytes(), true);
            self.bytes.fetch_sub(size, Ordering::Relaxed);
            return Some(size);
        }
        let e = self.pinned.write().ok()?.remove(digest)?;
        self.bytes.fetch_sub(e.size, Ordering::Relaxed);
        Some(e.size)
    }

    /// Adds `holder` to an indexed blob, moving it out of the budget if it
    /// was in it. `false` if the blob is not indexed.
    pub fn hold(&self, digest: &Digest, holder: Holder) -> bool {
        if let Ok(mut p) = self.pinned.write() {
            if p.add_holder(digest, holder) {
                return true;
            }
        }
        let Some((size, last_use)) = self.lru().remove(&digest.to_bytes()) else {
            return false;
        };
        self.named(digest.to_bytes(), true);
        if let Ok(mut p) = self.pinned.write() {
            p.insert(
                digest.clone(),
                Arc::new(Entry::new(size, last_use)),
                &[holder],
            );
        }
        true
    }

    /// Takes `holder` off a blob; once no holder is left the blob goes back
    /// under the budget (and may be evicted at once). `true` if it did.
    pub fn release(&self, digest: &Digest, holder: Holder) -> bool {
        let freed = match self.pinned.write() {
            Ok(mut p) => p.drop_holder(digest, holder),
            Err(_) => None,
        };
        match freed {
            Some(e) => {
                self.bytes.fetch_sub(e.size, Ordering::Relaxed);
                let last = e.last_use.load(Ordering::Relaxed);
                self.insert(digest.clone(), e.size, last);
                true
            }
            None => false,
        }
    }

    /// Whether `holder` holds the blob.
    pub fn is_held_by(&self, digest: &Digest, holder: Holder) -> bool {
        self.pinned
            .read()
            .is_ok_and(|p| p.is_held_by(digest, holder))
    }

    /// Whether anything holds the blob.
    pub fn is_held(&self, digest: &Digest) -> bool {
        self.pinned.read().is_ok_and(|p| p.contains(digest))
    }

    /// Bytes and count of blobs `holder` holds.
    pub fn held_by(&self, holder: Holder) -> (u64, u64) {
        let p = self.pinned.read().unwrap_or_else(|p| p.into_inner());
        p.held_by(holder)
    }

    /// Bytes of held blobs (outside the budget).
    pub fn held_bytes(&self) -> u64 {
        let p = self.pinned.read().unwrap_or_else(|p| p.into_inner());
        p.bytes()
    }

    /// Budgeted blobs to delete to free `want` bytes, least recently used
    /// first (held blobs are never offered).
    pub fn oldest(&self, want: u64) -> Vec<(Digest, u64)> {
        self.lru()
            .oldest(want)
            .into_iter()
            .map(|(key, size)| (self.named(key, false), size))
            .collect()
    }

    /// Bytes of indexed content.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Number of indexed blobs.
    pub fn count(&self) -> u64 {
        self.lru().len() as u64 + self.pinned.read().map_or(0, |p| p.len() as u64)
    }

    /// The budget.
    pub fn limit(&self) -> u64 {
        self.limit
    }
}

#[cfg(test)]
mod tests;
