//! Walking an image from its reference to every digest it needs, either
//! fetching missing manifests through the cache (prefetch) or looking only
//! at the cache (check, pin, ls).

use std::sync::Arc;
use std::time::SystemTime;

use super::manifest::{self, Refs};
use super::{ImageRef, Platform, Prefetcher};
use crate::cache::{TagKey, TagRecord};
use crate::oci::Digest;
use crate::policy;
use crate::upstream::{self, Upstream};

/// Everything an image needs.
#[derive(Debug, Default)]
pub struct Plan {
    /// Top manifest (index or single manifest).
    pub top: Option<Digest>,
    /// Child manifests kept.
    pub manifests: Vec<Digest>,
    /// Bytes of the top and child manifests.
    pub manifest_bytes: u64,
    /// Configs and layers with their declared sizes, each once.
    pub blobs: Vec<(Digest, u64)>,
    /// Platforms found (`linux/amd64`), for listings.
    pub platforms: Vec<String>,
    /// What the cache lacks (cache-only walks), in words.
    pub missing: Vec<String>,
    /// Things worth telling the operator (a stale tag used).
    pub warnings: Vec<String>,
}

impl Prefetcher {
    /// Walks `r`. With `upstream`, missing manifests are fetched (and
    /// cached) and a tag is resolved upstream; without, only the cache is
    /// read and gaps land in [`Plan::missing`].
    pub(super) async fn walk(
        &self,
        r: &ImageRef,
        upstream: Option<&Arc<Upstream>>,
        platforms: &[Platform],
    ) -> Result<Plan, String> {
        let mut plan = Plan::default();
        let top = match upstream {
            Some(up) => self.resolve_top(r, up, &mut plan).await?,
            None => match self.cached_top(r) {
                Some(d) => d,
                None => {
                    plan.missing
                        .push(format!("tag {} is not cached", tag_str(r)));
                    return Ok(plan);
                }
            },
        };
        plan.top = Some(top.clone());
        let Some((bytes, media_type)) = self.manifest(r, upstream, &top).await? else {
            plan.missing.push(format!("manifest {top}"));
            return Ok(plan);
        };
        plan.manifest_bytes += bytes.len() as u64;
        let children = match manifest::refs(&bytes, &media_type)? {
            Refs::Image(blobs) => {
                add_blobs(&mut plan, blobs);
                return Ok(plan);
            }
            Refs::Index(children) => children,
        };
        let mut matched = vec![false; platforms.len()];
        for child in children {
            let label = child.platform.as_ref().map(Platform::to_string);
            if !platforms.is_empty() {
                let Some(p) = &child.platform else {
                    continue;
                };
                let hits: Vec<usize> = (0..platforms.len())
                    .filter(|&i| platforms[i].matches(p))
                    .collect();
                if hits.is_empty() {
                    continue;
                }
                hits.into_iter().for_each(|i| matched[i] = true);
            }
            if let Some(l) = label.filter(|l| !plan.platforms.contains(l)) {
                plan.platforms.push(l);
            }
            plan.manifests.push(child.digest.clone());
            let Some((bytes, media_type)) = self.manifest(r, upstream, &child.digest).await? else {
                plan.missing.push(format!("manifest {}", child.digest));
                continue;
            };
            plan.manifest_bytes += bytes.len() as u64;
            match manifest::refs(&bytes, &media_type)? {
                Refs::Image(blobs) => add_blobs(&mut plan, blobs),
                Refs::Index(_) => {
                    return Err(format!(
                        "{} is an index inside an index, which prefetch does not follow",
                        child.digest
                    ))
                }
            }
        }
        for (p, found) in platforms.iter().zip(matched) {
            if !found {
                return Err(format!("the image has no manifest for platform {p}"));
            }
        }
        Ok(plan)
    }

    /// The digest a tag is served as offline: the pinned one, else the
    /// cached tag record.
    pub(super) fn cached_top(&self, r: &ImageRef) -> Option<Digest> {
        if let Some(d) = &r.digest {
            return Some(d.clone());
        }
        let key = tag_key(r)?;
        self.pins
            .tag(&key)
            .or_else(|| self.cache.tag(&key).map(|rec| rec.digest))
    }

    /// Resolves a tag upstream with a `HEAD` (no rate-limit quota spent);
    /// when the upstream cannot answer, falls back to what is cached.
    async fn resolve_top(
        &self,
        r: &ImageRef,
        up: &Arc<Upstream>,
        plan: &mut Plan,
    ) -> Result<Digest, String> {
        if let Some(d) = &r.digest {
            return Ok(d.clone());
        }
        let tag = tag_str(r);
        let from = self.origin(r, up);
        match policy::manifest::revalidate(&from, &tag).await {
            Ok(upstream::ManifestHead { digest: Some(d) }) => Ok(d),
            Ok(_) => {
                let m = policy::manifest::fetch(&self.cache, &from, &tag, &[])
                    .await
                    .map_err(|e| format!("manifest {tag}: {e}"))?;
                m.stored.map_err(|e| e.to_string())?;
                Ok(m.manifest.digest)
            }
            Err(upstream::Error::NotFound) => Err(format!("tag {tag} is not known upstream")),
            Err(e) => match self.cached_top(r) {
                Some(d) => {
                    plan.warnings.push(format!(
                        "upstream could not resolve tag {tag} ({e}); using the cached {d}"
                    ));
                    Ok(d)
                }
                None => Err(format!("tag {tag}: {e}")),
            },
        }
    }

    /// A manifest by digest: from the cache, else (with an upstream)
    /// fetched, checked against its digest and cached, as a pull does.
    async fn manifest(
        &self,
        r: &ImageRef,
        upstream: Option<&Arc<Upstream>>,
        digest: &Digest,
    ) -> Result<Option<(bytes::Bytes, String)>, String> {
        if let Some((b, t)) = self
            .cache
            .manifest(digest)
            .await
            .map_err(|e| e.to_string())?
        {
            return Ok(Some((b, t.to_string())));
        }
        let Some(up) = upstream else {
            return Ok(None);
        };
        let m = policy::manifest::fetch_digest(&self.cache, &self.origin(r, up), digest, &[])
            .await
            .map_err(|e| match e {
                upstream::Error::DigestMismatch { actual, .. } => {
                    format!("upstream sent manifest {actual} for {digest}")
                }
                e => format!("manifest {digest}: {e}"),
            })?;
        m.stored
            .map_err(|e| format!("caching manifest {digest}: {e}"))?;
        Ok(Some((m.manifest.bytes, m.manifest.media_type)))
    }

    /// Where a manifest of `r` is fetched from on `up`.
    fn origin<'a>(&self, r: &'a ImageRef, up: &'a Upstream) -> policy::manifest::Origin<'a> {
        policy::manifest::Origin {
            upstream: up,
            repo: &r.repo,
            max_size: self.config.max_manifest_size,
        }
    }

    /// Records the tag as resolved now, so pulls by tag find it cached.
    /// An image asked for by digest is linked to its repository instead
    /// (a tag record links what it names).
    pub(super) async fn record_tag(&self, r: &ImageRef, digest: &Digest) {
        let (Some(key), None) = (tag_key(r), &r.digest) else {
            self.cache.link_manifest(&r.upstream, &r.repo, digest).await;
            return;
        };
        let rec = TagRecord {
            digest: digest.clone(),
            checked_at: SystemTime::now(),
        };
        if let Err(e) = self.cache.put_tag(key, rec).await {
            tracing::warn!(image = %r, error = %e, "tag not recorded");
        }
    }
}

/// The tag record key of a reference with a tag.
pub fn tag_key(r: &ImageRef) -> Option<TagKey> {
    Some(TagKey {
        upstream: r.upstream.clone(),
        repo: r.repo.clone(),
        tag: r.tag.clone()?,
    })
}

fn tag_str(r: &ImageRef) -> String {
    r.tag
        .as_ref()
        .map_or_else(|| "latest".into(), |t| t.to_string())
}

fn add_blobs(plan: &mut Plan, blobs: Vec<(Digest, u64)>) {
    for (d, size) in blobs {
        if !plan.blobs.iter().any(|(x, _)| *x == d) {
            plan.blobs.push((d, size));
        }
    }
}
