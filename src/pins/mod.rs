//! Pinned images: kept whatever the disk budget says, their tags fixed.
//!
//! A pin names an image by reference (`docker.io/library/alpine:3.19`) and
//! lists every digest it needs. Its blobs are held with
//! [`Holder::Pin`](crate::cache::Holder): outside the LRU and outside
//! `max_size`, never evicted, reported apart (`hoard_pinned_bytes`). A
//! pinned tag is served as its pinned digest even when the upstream moves
//! it, until it is unpinned or pinned again (a new prefetch re-pins it).
//!
//! Records live in the [`Records`] store under
//! [`RecordKey::pin`](crate::storage::RecordKey::pin) (the
//! sha256 of the pin's key, so no client text becomes a key), and are read
//! before the cache is opened so the budget applied at start never sees
//! pinned blobs. One blob may belong to several pins; the
//! cache keeps a single pin bit, so this module releases a blob only when no
//! pin (and no prefetch still in progress) needs it.

mod record;

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::sync::{Arc, Mutex, RwLock};

use bytes::Bytes;

pub use record::Pin;
use record::PinFile;

use crate::cache::{Cache, Holder, TagKey};
use crate::oci::Digest;
use crate::storage::Records;
/// The directory lock lives with the storage; re-exported where the CLI
/// has always found it.
pub use crate::storage::{CacheLock, LockError};

/// Why a pin could not be recorded.
#[derive(Debug, thiserror::Error)]
pub enum PinError {
    /// Part of the image is not in the cache (prefetch it first).
    #[error(
        "{missing} of the image's manifests and blobs are not cached (first: {first}); prefetch it"
    )]
    NotCached {
        /// How many digests are missing.
        missing: usize,
        /// One of them.
        first: Digest,
    },
    /// Writing the record failed.
    #[error("cannot write the pin record: {0}")]
    Io(#[from] io::Error),
}

/// Every pin of one cache directory.
pub struct Pins {
    records: Arc<dyn Records>,
    /// Every pin by key. std lock: map operations only, never held across
    /// an await.
    pins: RwLock<BTreeMap<String, Pin>>,
    /// Digests a prefetch holds before its pin is recorded, counted per
    /// prefetch, so a failed prefetch does not release what another needs.
    /// std lock: map operations only.
    reserved: Mutex<HashMap<Digest, u32>>,
    /// Serialises record writes with their holds and releases.
    writing: tokio::sync::Mutex<()>,
}

impl Pins {
    /// Reads every pin record (call at start, before
    /// [`Cache::open_holding`]). A record that does not parse is logged
    /// and left alone.
    pub async fn load(records: Arc<dyn Records>) -> io::Result<Pins> {
        let mut pins = BTreeMap::new();
        for key in records.list("pins/").await? {
            let Some(v) = records.get(&key).await? else {
                continue;
            };
            let pin = serde_json::from_slice::<PinFile>(&v.bytes)
                .ok()
                .and_then(PinFile::into_pin);
            match pin {
                Some(p) => {
                    pins.insert(p.key(), p);
                }
                None => {
                    tracing::error!(record = %key, "unreadable pin record ignored: its image is not protected from eviction; pin it again")
                }
            }
        }
        Ok(Pins {
            records,
            pins: RwLock::new(pins),
            reserved: Mutex::default(),
            writing: tokio::sync::Mutex::new(()),
        })
    }

    /// The digests pins hold, for [`Cache::open_holding`].
    pub fn held(&self) -> HashMap<Digest, Vec<Holder>> {
        let records = self.pins.read().unwrap_or_else(|p| p.into_inner());
        records
            .values()
            .flat_map(|p| p.digests())
            .map(|d| (d.clone(), vec![Holder::Pin]))
            .collect()
    }

    /// The pinned digest of a tag: pulls serve it without asking upstream.
    pub fn tag(&self, key: &TagKey) -> Option<Digest> {
        let records = self.pins.read().ok()?;
        // Most mirrors pin nothing: no key is built for every tag request.
        if records.is_empty() {
            return None;
        }
        records
            .get(&format!("{}/{}:{}", key.upstream, key.repo, key.tag))
            .map(|p| p.digest.clone())
    }

    /// Every pin, sorted by key.
    pub fn list(&self) -> Vec<Pin> {
        let records = self.pins.read().unwrap_or_else(|p| p.into_inner());
        records.values().cloned().collect()
    }

    /// The pin recorded under `key` (see [`Pin::key`]).
    pub fn get(&self, key: &str) -> Option<Pin> {
        self.pins.read().ok()?.get(key).cloned()
    }

    /// Holds `digest` for a prefetch in progress; `false` when it is not
    /// cached. Pair with [`Pins::unreserve`].
    pub fn reserve(&self, cache: &Cache, digest: &Digest) -> bool {
        if !cache.hold(digest, Holder::Pin) {
            return false;
        }
        let mut r = self.reserved.lock().unwrap_or_else(|p| p.into_inner());
        *r.entry(digest.clone()).or_insert(0) += 1;
        true
    }

    /// Ends a prefetch's reservations; digests no pin records and nobody
    /// else reserved go back under the budget.
    pub async fn unreserve(&self, cache: &Cache, digests: &[Digest]) {
        let _w = self.writing.lock().await;
        let mut free = Vec::new();
        {
            let mut r = self.reserved.lock().unwrap_or_else(|p| p.into_inner());
            for d in digests {
                if let Some(n) = r.get_mut(d) {
                    *n -= 1;
                    if *n == 0 {
                        r.remove(d);
                        free.push(d.clone());
                    }
                }
            }
        }
        self.release_unneeded(cache, free);
    }

    /// Records `pin` (replacing a pin of the same key), holding all its
    /// digests first. Returns the replaced pin.
    pub async fn put(&self, cache: &Cache, pin: Pin) -> Result<Option<Pin>, PinError> {
        let _w = self.writing.lock().await;
        let missing: Vec<&Digest> = pin
            .digests()
            .filter(|d| !cache.hold(d, Holder::Pin))
            .collect();
        if let Some(first) = missing.first() {
            let err = PinError::NotCached {
                missing: missing.len(),
                first: (*first).clone(),
            };
            let held: Vec<Digest> = pin.digests().cloned().collect();
            self.release_unneeded(cache, held);
            return Err(err);
        }
        let key = pin.key();
        let json = serde_json::to_vec_pretty(&PinFile::from(&pin)).map_err(io::Error::other)?;
        self.records
            .put(&Pin::record_key(&key), Bytes::from(json))
            .await
            .map_err(io::Error::from)?;
        let old = {
            let mut records = self.pins.write().unwrap_or_else(|p| p.into_inner());
            records.insert(key, pin)
        };
        if let Some(old) = &old {
            self.release_unneeded(cache, old.digests().cloned().collect());
        }
        Ok(old)
    }

    /// Removes the pin recorded under `key`; its blobs that no other pin
    /// needs go back under the budget (and may then be evicted).
    pub async fn remove(&self, cache: &Cache, key: &str) -> Result<Option<Pin>, PinError> {
        let _w = self.writing.lock().await;
        if self.get(key).is_none() {
            return Ok(None);
        }
        self.records
            .delete(&Pin::record_key(key))
            .await
            .map_err(io::Error::from)?;
        let old = {
            let mut records = self.pins.write().unwrap_or_else(|p| p.into_inner());
            records.remove(key)
        };
        if let Some(old) = &old {
            self.release_unneeded(cache, old.digests().cloned().collect());
        }
        Ok(old)
    }

    /// Releases each digest that no recorded pin and no reservation needs.
    /// Called with `writing` held.
    fn release_unneeded(&self, cache: &Cache, digests: Vec<Digest>) {
        let records = self.pins.read().unwrap_or_else(|p| p.into_inner());
        let reserved = self.reserved.lock().unwrap_or_else(|p| p.into_inner());
        for d in digests {
            let needed =
                reserved.contains_key(&d) || records.values().any(|p| p.digests().any(|x| *x == d));
            if !needed {
                cache.release(&d, Holder::Pin);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pin(tag: &str, top: &Digest, blobs: &[&Digest]) -> Pin {
        Pin {
            upstream: "docker.io".into(),
            repo: "library/alpine".parse().unwrap(),
            tag: Some(tag.parse().unwrap()),
            digest: top.clone(),
            manifests: vec![],
            blobs: blobs.iter().map(|d| (*d).clone()).collect(),
            platforms: vec![],
            bytes: 0,
            pinned_at: std::time::SystemTime::now(),
        }
    }

    #[tokio::test]
    async fn shared_blobs_stay_held_until_the_last_pin_goes() {
        let dir = tempfile::tempdir().unwrap();
        let metrics = Arc::new(crate::metrics::Metrics::new());
        let storage = crate::storage::Storage::open_disk(dir.path())
            .await
            .unwrap();
        let cache = Cache::open_holding(&storage, 1 << 30, metrics, &HashMap::new())
            .await
            .unwrap();
        let pins = Pins::load(storage.records.clone()).await.unwrap();
        let mut d = Vec::new();
        for n in 0..3u8 {
            let bytes = bytes::Bytes::from(vec![n; 100]);
            let digest = Digest::of(&bytes);
            cache.store_bytes(&digest, bytes, None).await.unwrap();
            d.push(digest);
        }
        let missing = Digest::of(b"not cached");
        let err = pins.put(&cache, pin("x", &d[0], &[&missing])).await;
        assert!(matches!(err, Err(PinError::NotCached { missing: 1, .. })));
        assert!(
            !cache.is_held_by(&d[0], Holder::Pin),
            "failed pin holds nothing"
        );

        pins.put(&cache, pin("a", &d[0], &[&d[2]])).await.unwrap();
        pins.put(&cache, pin("b", &d[1], &[&d[2]])).await.unwrap();
        let key = |t: &str| TagKey {
            upstream: "docker.io".into(),
            repo: "library/alpine".parse().unwrap(),
            tag: t.parse().unwrap(),
        };
        assert_eq!(pins.tag(&key("a")), Some(d[0].clone()));
        assert_eq!(pins.held().len(), 3);
        pins.remove(&cache, "docker.io/library/alpine:a")
            .await
            .unwrap();
        assert!(!cache.is_held_by(&d[0], Holder::Pin));
        assert!(cache.is_held_by(&d[2], Holder::Pin), "still needed by b");
        assert_eq!(pins.tag(&key("a")), None);

        let again = Pins::load(storage.records.clone()).await.unwrap();
        let keys = |p: &Pins| -> Vec<(String, Vec<Digest>)> {
            p.list()
                .iter()
                .map(|p| (p.key(), p.digests().cloned().collect()))
                .collect()
        };
        assert_eq!(keys(&again), keys(&pins), "records survive a restart");
        assert!(again.held().contains_key(&d[1]));
    }
}
