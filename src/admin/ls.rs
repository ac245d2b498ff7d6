//! `hoard ls` / `GET /_hoard/ls`: what is cached and pinned, by tag.

use serde::{Deserialize, Serialize};

use crate::cache::TagKey;
use crate::pins::Pin;
use crate::prefetch::{ImageRef, Prefetcher};

/// One image in the listing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// `upstream/repo:tag` (or `@digest` for a pin by digest).
    pub image: String,
    /// The digest it is served as.
    pub digest: String,
    /// Pinned (kept whatever the budget, tag fixed).
    pub pinned: bool,
    /// Every manifest and blob it needs is cached.
    pub complete: bool,
    /// Bytes of what is cached of it (manifests, configs, layers).
    pub bytes: u64,
    /// Platforms of a multi-platform image that are kept.
    pub platforms: Vec<String>,
    /// Unix seconds of its last use (newest access or write of its files,
    /// or the last tag check), as far as the filesystem tells.
    pub last_use: u64,
}

/// Lists every cached tag and every pin.
pub async fn list(engine: &Prefetcher) -> Vec<Entry> {
    let cache = engine.cache();
    let mut out = Vec::new();
    let mut listed_pins = Vec::new();
    for (upstream, repo) in cache.repositories() {
        for tag in cache.tags_of(&upstream, &repo) {
            let Ok(tag) = tag.parse() else { continue };
            let key = TagKey {
                upstream: upstream.clone(),
                repo: repo.clone(),
                tag,
            };
            let checked = cache
                .tag(&key)
                .and_then(|r| r.checked_at.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_secs());
            let r = ImageRef {
                upstream: key.upstream.clone(),
                repo: key.repo.clone(),
                tag: Some(key.tag.clone()),
                digest: None,
            };
            let pin = engine.pins().get(&r.to_string());
            if let Some(p) = &pin {
                listed_pins.push(p.key());
            }
            out.push(entry(engine, &r, pin.as_ref(), checked).await);
        }
    }
    for pin in engine.pins().list() {
        if listed_pins.contains(&pin.key()) {
            continue;
        }
        let r = ImageRef {
            upstream: pin.upstream.clone(),
            repo: pin.repo.clone(),
            tag: pin.tag.clone(),
            digest: pin.tag.is_none().then(|| pin.digest.clone()),
        };
        out.push(entry(engine, &r, Some(&pin), 0).await);
    }
    out
}

async fn entry(engine: &Prefetcher, r: &ImageRef, pin: Option<&Pin>, checked: u64) -> Entry {
    let platforms: Vec<crate::prefetch::Platform> = pin
        .map(|p| crate::prefetch::Platform::parse_list(&p.platforms).unwrap_or_default())
        .unwrap_or_default();
    let plan = engine.plan_cached(r, &platforms).await;
    let mut bytes = plan.manifest_bytes;
    let mut last_use = checked;
    let mut complete = plan.missing.is_empty() && plan.top.is_some();
    for (d, _) in &plan.blobs {
        match engine.stored(d).await {
            Some(m) => {
                bytes += m.size;
                last_use = last_use.max(m.last_use);
            }
            None => complete = false,
        }
    }
    Entry {
        image: r.to_string(),
        digest: plan.top.map(|d| d.to_string()).unwrap_or_default(),
        pinned: pin.is_some(),
        complete,
        bytes,
        platforms: plan.platforms,
        last_use,
    }
}
