//! The online garbage collector of local repositories.
//!
//! Mark: every blob a repository's manifests reference (config, layers,
//! children, the manifests themselves) stays linked there; a blob linked or
//! looked at (`HEAD`) less than `gc_grace` ago stays too (an upload, or a
//! layer a client found present, whose manifest has not arrived yet). Sweep: other links are dropped, and a blob no repository
//! links any more is released from [`Holder::Local`] and deleted unless
//! something else (a pin) holds it. Pulls and uploads go on meanwhile;
//! only record changes wait for the sweep (they take the same `commit`
//! lock), so a manifest is either recorded before the mark and protects its
//! blobs, or validated after the sweep and finds a deleted blob missing.

use std::collections::BTreeSet;
use std::sync::Arc;

use super::{Error, Local};
use crate::cache::{index::now_secs, Holder};
use crate::oci::Digest;

/// What one collection did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Collected {
    /// Blobs deleted.
    pub blobs: u64,
    /// Their bytes.
    pub bytes: u64,
}

impl Local {
    /// Runs one collection.
    pub async fn collect(&self) -> Result<Collected, Error> {
        let _order = self.commit.lock().await;
        let now = now_secs();
        let grace = self.config.gc_grace.as_secs();
        let seen = {
            let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
            // Whole seconds: `<=` so a link made just before a second boundary
            // still gets at least `gc_grace`.
            seen.retain(|_, at| now.saturating_sub(*at) <= grace);
            seen.clone()
        };
        let before: BTreeSet<Digest> = self
            .read()
            .values()
            .flat_map(|r| r.blobs.keys().cloned())
            .collect();
        // On a shared store, what every replica linked (see `shared`): a
        // blob linked only by a repository another replica changed or made
        // stays, and one whose repository is gone everywhere goes.
        self.reload_all().await?;
        let changed: Vec<_> = self
            .read()
            .iter()
            .filter_map(|(name, repo)| {
                let keep = repo.referenced();
                let mut swept = repo.clone();
                swept.blobs.retain(|d, l| {
                    keep.contains(d)
                        || now.saturating_sub(l.linked_at) <= grace
                        || seen.contains_key(d)
                });
                (swept != *repo).then(|| (name.clone(), swept))
            })
            .collect();
        for (name, repo) in changed {
            self.save(&name, repo).await?;
        }
        let after: BTreeSet<Digest> = self
            .read()
            .values()
            .flat_map(|r| r.blobs.keys().cloned())
            .collect();
        let mut out = Collected::default();
        for digest in before.difference(&after) {
            let bytes = self
                .cache
                .release_and_reclaim(digest, Holder::Local)
                .await?;
            if bytes > 0 {
                out.blobs += 1;
                out.bytes += bytes;
                self.metrics.reclaimed(bytes);
                tracing::info!(%digest, bytes, "garbage collected");
            }
        }
        Ok(out)
    }

    /// Collects every `gc_interval` and after each delete; drops abandoned
    /// upload sessions on the way. Ends when the registry is dropped.
    pub fn spawn_background(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        let interval = self.config.gc_interval;
        let sweep_every =
            (self.config.upload_timeout / 2).max(std::time::Duration::from_millis(50));
        tokio::spawn({
            let weak = weak.clone();
            async move {
                // Only the Notify is kept while sleeping, not the registry.
                while let Some(wake) = weak.upgrade().map(|l| l.gc_wake.clone()) {
                    let _ = tokio::time::timeout(interval, wake.notified()).await;
                    let Some(local) = weak.upgrade() else { break };
                    if let Err(e) = local.collect().await {
                        tracing::error!(error = %e, "garbage collection failed; will retry");
                    }
                }
            }
        });
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(sweep_every).await;
                let Some(local) = weak.upgrade() else { break };
                local.uploads.sweep().await;
            }
        });
    }
}
