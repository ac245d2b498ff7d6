//! The in-memory blob index: which digests are cached, their sizes, and the
//! disk budget.
//!
//! A moka cache with least-recently-used eviction and a size weigher (in
//! KiB, so multi-GiB blobs fit its `u32` weights) keeps the bytes under
//! `max_size`. An evicted entry is handed to a background task that deletes
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
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use moka::notification::RemovalCause;
use moka::policy::EvictionPolicy;
use tokio::sync::mpsc;

use super::held_set::HeldSet;
use crate::oci::Digest;

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
    lru: moka::sync::Cache<Digest, Arc<Entry>>,
    /// std lock: map operations only, never held across an await.
    pinned: RwLock<HeldSet>,
    bytes: Arc<AtomicU64>,
    limit: u64,
}

fn kib(size: u64) -> u32 {
    u32::try_from(size.div_ceil(1024).max(1)).unwrap_or(u32::MAX)
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
        let bytes = Arc::new(AtomicU64::new(0));
        let counted = bytes.clone();
        let lru = moka::sync::Cache::builder()
            .max_capacity(limit.div_ceil(1024))
            .weigher(|_: &Digest, e: &Arc<Entry>| kib(e.size))
            .eviction_policy(EvictionPolicy::lru())
            .eviction_listener(move |digest: Arc<Digest>, e: Arc<Entry>, cause| {
                // Every removal, a replacement too, takes away what the
                // removed entry's insert added.
                counted.fetch_sub(e.size, Ordering::Relaxed);
                if cause == RemovalCause::Size {
                    let _ = tx.send(Evicted {
                        digest: (*digest).clone(),
                        size: e.size,
                    });
                }
            })
            .build();
        (
            BlobIndex {
                lru,
                pinned: RwLock::new(HeldSet::default()),
                bytes,
                limit,
            },
            rx,
        )
    }

    /// Size of a cached blob, marking it used.
    pub fn get(&self, digest: &Digest) -> Option<u64> {
        let e = self
            .lru
            .get(digest)
            .or_else(|| Some(self.pinned.read().ok()?.get(digest)?.clone()))?;
        e.last_use.store(now_secs(), Ordering::Relaxed);
        Some(e.size)
    }

    /// Whether a blob is indexed (does not count as a use).
    pub fn contains(&self, digest: &Digest) -> bool {
        self.lru.contains_key(digest) || self.pinned.read().is_ok_and(|p| p.contains(digest))
    }

    /// Adds a committed blob. Eviction to stay under the budget runs now,
    /// so the caller sees its effect (and the deletes are queued) at once.
    pub fn insert(&self, digest: Digest, size: u64, last_use: u64) {
        self.add(digest, size, last_use);
        self.lru.run_pending_tasks();
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

    /// Adds the blobs found at start (oldest first) and applies the budget
    /// once at the end rather than after every one of possibly 100k inserts.
    /// Blobs in `held` go straight to the held set: the budget applied at
    /// start must not evict what a local repository or a pin still needs.
    pub fn load(
        &self,
        blobs: impl Iterator<Item = (Digest, u64, u64)>,
        held: &HashMap<Digest, Vec<Holder>>,
    ) {
        for (digest, size, last_use) in blobs {
            let Some(holders) = held.get(&digest) else {
                self.add(digest, size, last_use);
                continue;
            };
            let mut pinned = self.pinned.write().unwrap_or_else(|p| p.into_inner());
            if pinned.contains(&digest) {
                continue;
            }
            self.bytes.fetch_add(size, Ordering::Relaxed);
            pinned.insert(digest, Arc::new(Entry::new(size, last_use)), holders);
        }
        self.lru.run_pending_tasks();
    }

    fn add(&self, digest: Digest, size: u64, last_use: u64) {
        if self.contains(&digest) {
            return;
        }
        self.bytes.fetch_add(size, Ordering::Relaxed);
        self.lru
            .insert(digest, Arc::new(Entry::new(size, last_use)));
    }

    /// Drops a blob from the index (its file is the caller's business).
    pub fn remove(&self, digest: &Digest) -> Option<u64> {
        if let Some(e) = self.lru.remove(digest) {
            self.lru.run_pending_tasks();
            return Some(e.size);
        }
        let e = self.pinned.write().ok()?.remove(digest)?;
        self.bytes.fetch_sub(e.size, Ordering::Relaxed);
        Some(e.size)
    }

    /// Keeps an indexed blob out of the budget's reach for `holder`.
    /// `false` when the blob is not indexed (fetch or push it first).
    pub fn hold(&self, digest: &Digest, holder: Holder) -> bool {
        if let Ok(mut p) = self.pinned.write() {
            if p.add_holder(digest, holder) {
                return true;
            }
        }
        let Some(e) = self.lru.remove(digest) else {
            return false;
        };
        self.lru.run_pending_tasks();
        // The removal took its size off the count; it is still indexed.
        self.bytes.fetch_add(e.size, Ordering::Relaxed);
        if let Ok(mut p) = self.pinned.write() {
            p.insert(digest.clone(), e, &[holder]);
        }
        true
    }

    /// Lets go of a blob for `holder`. When no holder is left it goes back
    /// to the LRU (and under the budget) and `true` is returned: the caller
    /// may then reclaim it at once.
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

    /// Whether `holder` keeps `digest`.
    pub fn is_held_by(&self, digest: &Digest, holder: Holder) -> bool {
        self.pinned
            .read()
            .is_ok_and(|p| p.is_held_by(digest, holder))
    }

    /// Whether anyone keeps `digest` out of the budget.
    pub fn is_held(&self, digest: &Digest) -> bool {
        self.pinned.read().is_ok_and(|p| p.contains(digest))
    }

    /// Bytes and count of blobs `holder` keeps (a blob both local and
    /// pinned counts for each).
    pub fn held_by(&self, holder: Holder) -> (u64, u64) {
        let p = self.pinned.read().unwrap_or_else(|p| p.into_inner());
        p.held_by(holder)
    }

    /// Bytes of all held blobs (each counted once): what sits outside the
    /// budget.
    pub fn held_bytes(&self) -> u64 {
        let p = self.pinned.read().unwrap_or_else(|p| p.into_inner());
        p.bytes()
    }

    /// The least recently used unpinned blobs adding up to at least
    /// `want` bytes, oldest first: victims when the disk is full.
    pub fn oldest(&self, want: u64) -> Vec<(Digest, u64)> {
        let mut all: Vec<(u64, Digest, u64)> = self
            .lru
            .iter()
            .map(|(d, e)| (e.last_use.load(Ordering::Relaxed), (*d).clone(), e.size))
            .collect();
        all.sort_unstable_by_key(|(t, _, _)| *t);
        let mut freed = 0;
        all.into_iter()
            .take_while(|(_, _, size)| {
                let more = freed < want;
                freed += size;
                more
            })
            .map(|(_, d, size)| (d, size))
            .collect()
    }

    /// Bytes of indexed content.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Number of indexed blobs.
    pub fn count(&self) -> u64 {
        self.lru.entry_count() + self.pinned.read().map_or(0, |p| p.len() as u64)
    }

    /// The budget.
    pub fn limit(&self) -> u64 {
        self.limit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(n: u8) -> Digest {
        Digest::of(&[n])
    }

    #[test]
    fn evicts_least_recently_used_to_stay_under_budget() {
        let (idx, mut rx) = BlobIndex::new(10 * 1024);
        for n in 0..4 {
            idx.insert(d(n), 3 * 1024, now_secs());
        }
        // 12 KiB into a 10 KiB budget: the first inserted is evicted.
        let ev = rx.try_recv().expect("one eviction");
        assert_eq!(ev.digest, d(0));
        assert!(idx.bytes() <= 10 * 1024, "{}", idx.bytes());
        assert!(!idx.contains(&d(0)));
        // Using d(1) makes d(2) the next victim.
        assert!(idx.get(&d(1)).is_some());
        idx.insert(d(9), 3 * 1024, now_secs());
        assert_eq!(rx.try_recv().expect("second eviction").digest, d(2));
    }

    #[test]
    fn pinned_blobs_are_never_evicted() {
        let (idx, mut rx) = BlobIndex::new(8 * 1024);
        idx.insert(d(0), 4 * 1024, now_secs());
        assert!(idx.hold(&d(0), Holder::Pin));
        assert!(!idx.hold(&d(9), Holder::Pin), "not indexed, cannot be held");
        idx.insert_held(d(7), 2 * 1024, Holder::Local);
        assert!(idx.hold(&d(7), Holder::Pin));
        for n in 1..6 {
            idx.insert(d(n), 4 * 1024, now_secs());
        }
        while let Ok(ev) = rx.try_recv() {
            assert!(ev.digest != d(0) && ev.digest != d(7));
        }
        assert_eq!(idx.get(&d(0)), Some(4 * 1024));
        assert_eq!(idx.held_by(Holder::Pin), (6 * 1024, 2));
        assert_eq!(idx.held_by(Holder::Local), (2 * 1024, 1));
        assert!(!idx.release(&d(7), Holder::Local), "still pinned");
        assert!(idx.is_held_by(&d(7), Holder::Pin));
        assert!(idx.release(&d(7), Holder::Pin));
        assert!(!idx.is_held(&d(7)));
        assert!(idx.release(&d(0), Holder::Pin));
        assert!(idx.contains(&d(0)));
    }

    #[test]
    fn held_blobs_survive_the_budget_at_load() {
        let (idx, _rx) = BlobIndex::new(4 * 1024);
        let held = HashMap::from([(d(0), vec![Holder::Local])]);
        let blobs = (0..4).map(|n| (d(n), 4 * 1024, u64::from(n)));
        idx.load(blobs, &held);
        assert!(idx.is_held_by(&d(0), Holder::Local));
        assert!(idx.contains(&d(3)));
        assert!(!idx.contains(&d(1)), "oldest unheld blob evicted");
        assert_eq!(idx.bytes(), 8 * 1024);
    }

    #[test]
    fn oldest_picks_by_last_use() {
        let (idx, _rx) = BlobIndex::new(1 << 30);
        idx.insert(d(0), 100, 30);
        idx.insert(d(1), 100, 10);
        idx.insert(d(2), 100, 20);
        let v: Vec<_> = idx.oldest(150).into_iter().map(|(d, _)| d).collect();
        assert_eq!(v, vec![d(1), d(2)]);
        assert_eq!(idx.remove(&d(1)), Some(100));
        idx.lru.run_pending_tasks();
        assert_eq!(idx.bytes(), 200);
    }
}
