//! What needs no network: readiness checks, pinning what is cached,
//! unpinning, and reading blob files without counting a use.

use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use super::{ImageRef, Plan, Platform, Prefetcher};
use crate::oci::Digest;
use crate::pins::Pin;
use crate::storage::BlobInfo;

/// Whether an image can be served with the network gone.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Readiness {
    /// The reference (canonical when it resolved).
    pub image: String,
    /// Top manifest digest it would be served as.
    pub digest: Option<String>,
    /// Whether it is pinned.
    pub pinned: bool,
    /// Everything it needs is cached.
    pub ready: bool,
    /// What is missing, in words.
    pub missing: Vec<String>,
}

impl Prefetcher {
    /// Whether `image` (every platform in `platforms`) can be served from
    /// the cache alone. Never touches the network.
    pub async fn check(&self, image: &str, platforms: &[Platform]) -> Readiness {
        let r = match ImageRef::resolve(image, &self.config) {
            Ok(r) => r,
            Err(e) => {
                return Readiness {
                    image: image.to_owned(),
                    digest: None,
                    pinned: false,
                    ready: false,
                    missing: vec![e.to_string()],
                }
            }
        };
        let mut plan = match self.walk(&r, None, platforms).await {
            Ok(p) => p,
            Err(e) => Plan {
                missing: vec![e],
                ..Plan::default()
            },
        };
        for (d, _) in &plan.blobs {
            if self.stored_size(d).await.is_none() {
                plan.missing.push(format!("blob {d}"));
            }
        }
        let pinned = self
            .pin_of(&r)
            .is_some_and(|p| Some(&p.digest) == plan.top.as_ref());
        Readiness {
            image: r.to_string(),
            digest: plan.top.map(|d| d.to_string()),
            pinned,
            ready: plan.missing.is_empty(),
            missing: plan.missing,
        }
    }

    /// Pins an image that is already complete in the cache (no network).
    pub async fn pin_cached(&self, image: &str, platforms: &[Platform]) -> Result<Pin, String> {
        let r = ImageRef::resolve(image, &self.config).map_err(|e| e.to_string())?;
        let plan = self.walk(&r, None, platforms).await?;
        if let Some(first) = plan.missing.first() {
            return Err(format!(
                "{r} is not complete in the cache ({first} missing): prefetch it"
            ));
        }
        let top = plan.top.clone().ok_or("no top manifest")?;
        let mut bytes: u64 = 0;
        for (d, s) in &plan.blobs {
            bytes += self.stored_size(d).await.unwrap_or(*s);
        }
        let pin = Pin {
            upstream: r.upstream.clone(),
            repo: r.repo.clone(),
            tag: r.tag.clone(),
            digest: top,
            manifests: plan.manifests,
            blobs: plan.blobs.into_iter().map(|(d, _)| d).collect(),
            platforms: platforms.iter().map(|p| p.to_string()).collect(),
            bytes: bytes + plan.manifest_bytes,
            pinned_at: SystemTime::now(),
        };
        self.pins
            .put(&self.cache, pin.clone())
            .await
            .map_err(|e| e.to_string())?;
        Ok(pin)
    }

    /// Removes the pin of `image`; its content returns under the budget.
    pub async fn unpin(&self, image: &str) -> Result<Pin, String> {
        let r = ImageRef::resolve(image, &self.config).map_err(|e| e.to_string())?;
        let pin = self
            .pin_of(&r)
            .ok_or_else(|| format!("{r} is not pinned"))?;
        self.pins
            .remove(&self.cache, &pin.key())
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("{r} is not pinned"))
    }

    /// The pin recorded for a reference (by tag, else by digest).
    fn pin_of(&self, r: &ImageRef) -> Option<Pin> {
        let repo = format!("{}/{}", r.upstream, r.repo);
        match (&r.tag, &r.digest) {
            (Some(t), _) => self.pins.get(&format!("{repo}:{t}")),
            (None, Some(d)) => self.pins.get(&format!("{repo}@{d}")),
            (None, None) => None,
        }
    }

    /// What the cache holds of `r` (no network, no error: gaps are listed
    /// in [`Plan::missing`]).
    pub async fn plan_cached(&self, r: &ImageRef, platforms: &[Platform]) -> Plan {
        self.walk(r, None, platforms)
            .await
            .unwrap_or_else(|e| Plan {
                missing: vec![e],
                ..Plan::default()
            })
    }

    /// Size and last use of a stored blob, from the store: unlike the
    /// index lookup, this does not count as a use for the LRU.
    pub async fn stored(&self, digest: &Digest) -> Option<BlobInfo> {
        self.cache.stored(digest).await
    }

    async fn stored_size(&self, digest: &Digest) -> Option<u64> {
        self.stored(digest).await.map(|m| m.size)
    }
}
