//! Manifests: digests local-first, tags fresh within their TTL, revalidated
//! with a `HEAD` after it, and served stale when the upstream cannot answer.
//! In a cluster a stale tag is revalidated by its owner ([`owner`]).

mod owner;

use std::time::SystemTime;

use bytes::Bytes;
use http::{header, HeaderValue, Response};

use super::{ApiError, Registry};
use crate::body::{self, Body};
use crate::cache::{TagKey, TagRecord};
use crate::error::Subject;
use crate::metrics::{Kind, Outcome, Source};
use crate::oci::{Digest, Reference, Tag};
use crate::policy;
use crate::policy::Target;
use crate::upstream::{self, FetchedManifest};

/// `GET`/`HEAD /v2/<name>/manifests/<reference>`.
pub async fn get(
    reg: &Registry,
    target: &Target,
    reference: Reference,
    accept: Vec<String>,
    head: bool,
    forwarded: bool,
) -> Result<Response<Body>, ApiError> {
    let result = match reference {
        Reference::Digest(d) => by_digest(reg, target, &d, &accept).await,
        Reference::Tag(t) => by_tag(reg, target, t, &accept, forwarded).await,
    };
    match result {
        Ok(served) => {
            reg.metrics.request(Kind::Manifest, served.outcome);
            if !head {
                let source = if served.outcome == Outcome::Miss {
                    Source::Upstream
                } else {
                    Source::Cache
                };
                reg.metrics.served(source, served.bytes.len() as u64);
            }
            let outcome = served.outcome;
            let mut r = served.into_response(head);
            r.extensions_mut().insert(super::ServedBy {
                outcome,
                upstream: target.upstream.name().to_owned(),
            });
            Ok(r)
        }
        Err(e) => {
            reg.metrics.request(Kind::Manifest, Outcome::Error);
            Err(e)
        }
    }
}

/// A manifest ready to send.
struct Served {
    bytes: Bytes,
    media_type: String,
    digest: Digest,
    outcome: Outcome,
}

impl Served {
    fn into_response(self, head: bool) -> Response<Body> {
        let len = self.bytes.len();
        let mut r = Response::new(if head {
            body::empty()
        } else {
            body::full(self.bytes)
        });
        let h = r.headers_mut();
        if let Ok(v) = HeaderValue::from_str(&self.media_type) {
            h.insert(header::CONTENT_TYPE, v);
        }
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
        if let Ok(v) = HeaderValue::from_str(&self.digest.to_string()) {
            h.insert("docker-content-digest", v.clone());
            if let Ok(etag) = HeaderValue::from_str(&format!("\"{}\"", self.digest)) {
                h.insert(header::ETAG, etag);
            }
        }
        if self.outcome == Outcome::Stale {
            h.insert(
                header::WARNING,
                HeaderValue::from_static(
                    "110 hoard \"Response is stale: the upstream could not revalidate this tag\"",
                ),
            );
        }
        r
    }
}

/// Whether a client's `Accept` list allows `media_type` (no list: anything).
fn acceptable(accept: &[String], media_type: &str) -> bool {
    accept.is_empty() || accept.iter().any(|a| a == media_type || a == "*/*")
}

fn map_upstream(e: upstream::Error, target: &Target, what: impl std::fmt::Display) -> ApiError {
    ApiError::upstream(e, target.upstream.name(), Subject::Manifest(&what))
}

async fn by_digest(
    reg: &Registry,
    target: &Target,
    digest: &Digest,
    accept: &[String],
) -> Result<Served, ApiError> {
    if let Some((bytes, media_type)) = reg.cache.manifest(digest).await? {
        if acceptable(accept, &media_type) {
            holds(reg, target, digest).await?;
            return Ok(Served {
                bytes,
                media_type: media_type.to_string(),
                digest: digest.clone(),
                outcome: Outcome::Hit,
            });
        }
    }
    Box::pin(digest_miss(reg, target, digest, accept)).await
}

/// A manifest by digest not in the cache (or not in a form the client
/// accepts): from the upstream. Boxed by the caller, so the upstream
/// round trip's state is not part of every hit's future.
async fn digest_miss(
    reg: &Registry,
    target: &Target,
    digest: &Digest,
    accept: &[String],
) -> Result<Served, ApiError> {
    let m = policy::manifest::fetch_digest(&reg.cache, &origin(reg, target), digest, accept)
        .await
        .map_err(|e| map_upstream(e, target, digest))?;
    let m = served(m);
    link(reg, target, &m.digest).await;
    Ok(Served {
        outcome: Outcome::Miss,
        bytes: m.bytes,
        media_type: m.media_type,
        digest: m.digest,
    })
}

/// Whether a tag record is fresh: checked within `ttl` (a zero TTL is
/// never fresh).
fn fresh(r: &TagRecord, ttl: std::time::Duration) -> bool {
    r.checked_at.elapsed().map(|age| age < ttl).unwrap_or(true) && !ttl.is_zero()
}

/// A tag: fresh from the cache; stale or missing, revalidated (or fetched)
/// once per tag here, by the tag's owner in a cluster unless a peer
/// `forwarded` the request (this node is then the owner, as the peer saw
/// it, and never asks another).
async fn by_tag(
    reg: &Registry,
    target: &Target,
    tag: Tag,
    accept: &[String],
    forwarded: bool,
) -> Result<Served, ApiError> {
    let key = TagKey {
        upstream: target.upstream.name().to_owned(),
        repo: target.repo.clone(),
        tag,
    };
    // The common case, a fresh unpinned tag, stays small; the rest is
    // boxed (see `Registry::dispatch` on why a future's size matters).
    if reg.pinned_tag(&key).is_none() {
        let ttl = reg.tag_ttl(&key.upstream);
        if let Some(served) = cached_tag(reg, &key, accept, |r| fresh(r, ttl)).await? {
            return Ok(served);
        }
    }
    Box::pin(tag_slow(reg, target, key, accept, forwarded)).await
}

/// A tag that is pinned, stale or not cached.
async fn tag_slow(
    reg: &Registry,
    target: &Target,
    key: TagKey,
    accept: &[String],
    forwarded: bool,
) -> Result<Served, ApiError> {
    // A pinned tag never moves, whatever the upstream says (src/pins).
    if let Some(digest) = reg.pinned_tag(&key) {
        // The pin names this repository: it holds the pinned image.
        link(reg, target, &digest).await;
        return by_digest(reg, target, &digest, accept).await;
    }
    let ttl = reg.tag_ttl(&key.upstream);
    let fresh = |r: &TagRecord| fresh(r, ttl);
    // Stale or missing: one request per tag talks to the upstream; the others
    // wait and then find the record it refreshed.
    let asked_at = SystemTime::now();
    let lock = reg.tag_locks.get_with(key.clone(), Default::default);
    let _held = lock.lock().await;
    let checked_while_waiting = |r: &TagRecord| fresh(r) || r.checked_at >= asked_at;
    if let Some(served) = cached_tag(reg, &key, accept, checked_while_waiting).await? {
        return Ok(served);
    }
    if !forwarded {
        if let Some(served) = owner::ask(reg, target, &key, accept, &fresh).await? {
            return Ok(served);
        }
    }
    let cached = match reg.cache.tag_or_read(&key).await {
        Some(rec) => reg.cache.manifest(&rec.digest).await?.map(|m| (rec, m)),
        None => None,
    };
    if let Some((rec, (bytes, media_type))) = cached {
        let acceptable_here = acceptable(accept, &media_type);
        match policy::manifest::revalidate(&origin(reg, target), key.tag.as_str()).await {
            Ok(h) if h.digest.as_ref() == Some(&rec.digest) => {
                let rec = TagRecord {
                    digest: rec.digest,
                    checked_at: SystemTime::now(),
                };
                best_effort(reg.cache.put_tag(key.clone(), rec.clone()).await);
                if acceptable_here {
                    return Ok(Served {
                        bytes,
                        media_type: media_type.to_string(),
                        digest: rec.digest,
                        outcome: Outcome::Hit,
                    });
                }
            }
            Ok(_) => {} // moved upstream (or no digest header): fetch it below
            Err(e @ upstream::Error::NotFound) => return Err(map_upstream(e, target, &key.tag)),
            Err(e) if acceptable_here => {
                tracing::warn!(upstream = %key.upstream, repo = %key.repo, tag = %key.tag, error = %e, "serving stale tag");
                reg.metrics.stale_tag();
                return Ok(Served {
                    bytes,
                    media_type: media_type.to_string(),
                    digest: rec.digest,
                    outcome: Outcome::Stale,
                });
            }
            Err(e) => return Err(map_upstream(e, target, &key.tag)),
        }
    }
    // Fetch by tag with the full Accept list, so the record means the same
    // for every client; a client that accepts less gets a pass-through.
    let m = policy::manifest::fetch(&reg.cache, &origin(reg, target), key.tag.as_str(), &[])
        .await
        .map_err(|e| map_upstream(e, target, &key.tag))?;
    let m = served(m);
    let tag = key.tag.clone();
    let recorded = reg
        .cache
        .put_tag(
            key,
            TagRecord {
                digest: m.digest.clone(),
                checked_at: SystemTime::now(),
            },
        )
        .await;
    best_effort(recorded);
    if acceptable(accept, &m.media_type) {
        return Ok(Served {
            outcome: Outcome::Miss,
            bytes: m.bytes,
            media_type: m.media_type,
            digest: m.digest,
        });
    }
    // The client accepts less than the full list (an old client, say): ask
    // the upstream with its own list, cache that by digest, record no tag.
    let narrow = policy::manifest::fetch(&reg.cache, &origin(reg, target), tag.as_str(), accept)
        .await
        .map_err(|e| {
            let about = Subject::ManifestNotAccepted {
                reference: &tag,
                media_type: &m.media_type,
            };
            ApiError::upstream(e, target.upstream.name(), about)
        })?;
    let narrow = served(narrow);
    link(reg, target, &narrow.digest).await;
    Ok(Served {
        outcome: Outcome::Miss,
        bytes: narrow.bytes,
        media_type: narrow.media_type,
        digest: narrow.digest,
    })
}

/// A cached manifest is served through a repository only when linked to
/// it (see `cache::links`, issue 14 defect 3); otherwise a `HEAD` for this
/// repository must confirm the upstream has it there, and then links it.
async fn holds(reg: &Registry, target: &Target, digest: &Digest) -> Result<(), ApiError> {
    let (up, repo) = (target.upstream.name(), &target.repo);
    if reg.cache.linked(up, repo, digest).await {
        return Ok(());
    }
    Box::pin(async {
        policy::manifest::revalidate(&origin(reg, target), &digest.to_string())
            .await
            .map_err(|e| map_upstream(e, target, digest))?;
        link(reg, target, digest).await;
        Ok(())
    })
    .await
}

/// Links a manifest the upstream served or confirmed for this repository,
/// with what it references.
async fn link(reg: &Registry, target: &Target, digest: &Digest) {
    reg.cache
        .link_manifest(target.upstream.name(), &target.repo, digest)
        .await;
}

/// Caching is best effort: a pull never fails because the cache could not
/// store what the upstream sent (a full disk is logged and counted there).
fn best_effort(r: Result<(), crate::cache::Error>) {
    if let Err(e) = r {
        tracing::warn!(error = %e, "manifest served but not cached");
    }
}

/// A fetched manifest to serve, cached or not (see [`best_effort`]).
fn served(fetched: policy::manifest::Fetched) -> FetchedManifest {
    best_effort(fetched.stored);
    fetched.manifest
}

/// The cached manifest for a tag, if its record passes `usable`.
async fn cached_tag(
    reg: &Registry,
    key: &TagKey,
    accept: &[String],
    mut usable: impl FnMut(&TagRecord) -> bool,
) -> Result<Option<Served>, ApiError> {
    let Some(rec) = reg.cache.tag_or_read(key).await else {
        return Ok(None);
    };
    if !usable(&rec) {
        return Ok(None);
    }
    let Some((bytes, media_type)) = reg.cache.manifest(&rec.digest).await? else {
        return Ok(None);
    };
    if !acceptable(accept, &media_type) {
        return Ok(None);
    }
    Ok(Some(Served {
        bytes,
        media_type: media_type.to_string(),
        digest: rec.digest,
        outcome: Outcome::Hit,
    }))
}

/// Where a manifest miss of `target` is fetched from.
fn origin<'a>(reg: &Registry, target: &'a Target) -> policy::manifest::Origin<'a> {
    policy::manifest::Origin {
        upstream: &target.upstream,
        repo: &target.repo,
        max_size: reg.config.max_manifest_size,
    }
}
