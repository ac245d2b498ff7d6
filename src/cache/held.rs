//! Content the cache must keep: blobs pushed to local repositories and
//! blobs of pinned images. Neither can be fetched again from an upstream,
//! so they are held outside the budget (see [`super::index`]) and never
//! evicted; these are the ways in (commit or store straight into the held
//! set, hold a cached blob) and out (release, reclaim).

use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;

use super::{fill, Cache, Error, Holder};
use crate::oci::Digest;
use crate::storage::Staging;

impl Cache {
    /// Keeps a cached blob out of the budget's reach for `holder`.
    /// `false` when the blob is not in the cache.
    pub fn hold(&self, digest: &Digest, holder: Holder) -> bool {
        let held = self.blobs.hold(digest, holder);
        self.update_size_metrics();
        held
    }

    /// Makes a fill of `digest` that commits while the guard lives go
    /// straight into the held set for `holder` instead of the LRU.
    pub fn hold_on_commit(self: &Arc<Self>, digest: &Digest, holder: Holder) -> HoldOnCommit {
        if let Ok(mut m) = self.held_on_commit.lock() {
            m.entry(digest.clone()).or_insert((holder, 0)).1 += 1;
        }
        HoldOnCommit {
            cache: Arc::downgrade(self),
            digest: digest.clone(),
        }
    }

    /// Whether `holder` keeps `digest`.
    pub fn is_held_by(&self, digest: &Digest, holder: Holder) -> bool {
        self.blobs.is_held_by(digest, holder)
    }

    /// Lets go of a blob for `holder`; with no holder left it returns to
    /// the budget (and may be evicted like any cached blob).
    pub fn release(&self, digest: &Digest, holder: Holder) {
        self.blobs.release(digest, holder);
        self.update_size_metrics();
    }

    /// Lets go of a blob for `holder` and, if nobody else holds it, deletes
    /// it now (garbage collection of local content). Serialised with
    /// commits: a blob committed and held again meanwhile is kept.
    pub async fn release_and_reclaim(&self, digest: &Digest, holder: Holder) -> Result<u64, Error> {
        let _held = self.store_lock.lock().await;
        if !self.blobs.release(digest, holder) || self.blobs.is_held(digest) {
            self.update_size_metrics();
            return Ok(0);
        }
        let size = self.blobs.remove(digest).unwrap_or(0);
        self.manifests.invalidate(digest);
        self.store.remove(digest).await?;
        self.update_size_metrics();
        Ok(size)
    }

    /// Commits a staging, already verified to hash to `digest`, straight
    /// into the held set for `holder` (a pushed layer, an imported blob):
    /// the budget never gets a chance to evict it.
    pub async fn commit_held(
        &self,
        digest: &Digest,
        mut staged: Box<dyn Staging>,
        size: u64,
        holder: Holder,
    ) -> Result<(), Error> {
        // The slow part (a bucket upload) before the lock, as in a fill's
        // commit.
        if let Err(e) = staged.prepare(digest, size).await {
            fill::Committer::write_failed(self, &e, size);
            return Err(e.into());
        }
        let result = {
            let _held = self.store_lock.lock().await;
            if self.blobs.hold(digest, holder) {
                // Already there (same digest, same bytes): drop the copy.
                drop(staged);
                Ok(())
            } else {
                staged.commit(digest.clone(), size).await.map(|()| {
                    self.blobs.insert_held(digest.clone(), size, holder);
                    if self.disk_full.swap(false, Ordering::Relaxed) {
                        self.metrics.set_disk_full(false);
                    }
                })
            }
        };
        self.update_size_metrics();
        if let Err(e) = result {
            fill::Committer::write_failed(self, &e, size);
            return Err(e.into());
        }
        Ok(())
    }

    /// Stores small verified content (a manifest's bytes) durably, held by
    /// `holder` when given, else under the budget.
    pub async fn store_bytes(
        &self,
        digest: &Digest,
        bytes: Bytes,
        holder: Option<Holder>,
    ) -> Result<(), Error> {
        if !digest.matches(&bytes) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "bytes do not match their digest",
            )
            .into());
        }
        if let Some(h) = holder {
            if self.blobs.hold(digest, h) {
                self.update_size_metrics();
                return Ok(());
            }
        } else if self.blobs.contains(digest) {
            return Ok(());
        }
        let len = bytes.len() as u64;
        let staged = async {
            let mut staged = self.store.stage().await?;
            staged.write(bytes.clone()).await?;
            Ok::<_, io::Error>(staged)
        };
        let staged = match staged.await {
            Ok(s) => s,
            Err(e) => {
                fill::Committer::write_failed(self, &e, len);
                return Err(e.into());
            }
        };
        match holder {
            Some(h) => self.commit_held(digest, staged, len, h).await?,
            None => {
                if let Err(e) = fill::Committer::commit(self, digest, staged, len).await {
                    fill::Committer::write_failed(self, &e, len);
                    return Err(e.into());
                }
            }
        }
        self.manifests.insert(digest.clone(), bytes);
        Ok(())
    }
}

/// Keeps a [`Cache::hold_on_commit`] request alive; dropping it withdraws
/// the request (the caller holds the blob itself once it is committed).
pub struct HoldOnCommit {
    cache: std::sync::Weak<Cache>,
    digest: Digest,
}

impl Drop for HoldOnCommit {
    fn drop(&mut self) {
        let Some(cache) = self.cache.upgrade() else {
            return;
        };
        let mut m = cache
            .held_on_commit
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some((_, n)) = m.get_mut(&self.digest) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.digest);
            }
        }
    }
}
