//! A manifest miss: fetch it from the upstream, check it, cache it.
//!
//! Pulls (`registry/manifests.rs`) and prefetches (`prefetch/walk.rs`) both
//! come through here, so a manifest enters the cache the same way whoever
//! asked: by digest only when its bytes hash to that digest, with the media
//! type the upstream sent. What to do when the upstream cannot answer
//! (serve a stale tag, fall back to a cached one) stays with the caller,
//! which knows what it is serving.

use crate::cache::{self, Cache};
use crate::oci::{Digest, RepoName};
use crate::upstream::{self, FetchedManifest, ManifestHead, Upstream};

/// A manifest fetched from an upstream, and whether the cache took it.
pub struct Fetched {
    /// The manifest as the upstream sent it.
    pub manifest: FetchedManifest,
    /// Whether it was stored: a pull serves it either way (a full disk is
    /// logged and counted by the cache), a prefetch fails without it.
    pub stored: Result<(), cache::Error>,
}

/// Where to fetch a manifest from, and how large it may be.
pub struct Origin<'a> {
    /// The configured upstream.
    pub upstream: &'a Upstream,
    /// The repository on it.
    pub repo: &'a RepoName,
    /// `max_manifest_size`.
    pub max_size: usize,
}

/// Fetches manifest `reference` (a tag, or a digest's text) in the media
/// types of `accept` (any when empty) and caches it by its digest.
pub async fn fetch(
    cache: &Cache,
    from: &Origin<'_>,
    reference: &str,
    accept: &[String],
) -> Result<Fetched, upstream::Error> {
    let manifest = from
        .upstream
        .get_manifest(from.repo, reference, accept, from.max_size)
        .await?;
    let stored = store(cache, &manifest).await;
    Ok(Fetched { manifest, stored })
}

/// Fetches the manifest `digest` and caches it, if its bytes are what the
/// digest names (an upstream sending other bytes is a
/// [`upstream::Error::DigestMismatch`], and nothing is cached).
pub async fn fetch_digest(
    cache: &Cache,
    from: &Origin<'_>,
    digest: &Digest,
    accept: &[String],
) -> Result<Fetched, upstream::Error> {
    let manifest = from
        .upstream
        .get_manifest(from.repo, &digest.to_string(), accept, from.max_size)
        .await?;
    if manifest.digest != *digest {
        return Err(upstream::Error::DigestMismatch {
            expected: digest.clone(),
            actual: manifest.digest,
        });
    }
    let stored = store(cache, &manifest).await;
    Ok(Fetched { manifest, stored })
}

/// Asks the upstream which digest `tag` points at now, with a `HEAD` (no
/// rate-limit quota spent on Docker Hub).
pub async fn revalidate(from: &Origin<'_>, tag: &str) -> Result<ManifestHead, upstream::Error> {
    from.upstream.head_manifest(from.repo, tag, &[]).await
}

async fn store(cache: &Cache, m: &FetchedManifest) -> Result<(), cache::Error> {
    cache
        .put_manifest(&m.digest, m.bytes.clone(), &m.media_type)
        .await
}
