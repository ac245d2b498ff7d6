//! A stale or missing tag in a cluster: its owner revalidates it.
//!
//! Every node picks the same owner for `<upstream>/<repo>:<tag>`
//! (rendezvous hashing over the members), so of N replicas only the owner
//! sends the upstream its `HEAD` (or, for a tag never seen, its `GET`) per
//! `tag_ttl`. Another node first reads the tag record again from the
//! bucket (the owner may have refreshed it for someone else already);
//! when it is stale there too, it asks the owner with a forwarded `HEAD`
//! of the tag, one hop: the owner runs its own single-flight revalidation
//! and records the tag and the manifest in the bucket, and this node
//! serves from those records. When the owner cannot answer, this node
//! revalidates itself, as it would without a cluster: correct, just not
//! once per fleet.

use http::StatusCode;

use super::{cached_tag, map_upstream, Served};
use crate::cache::{TagKey, TagRecord};
use crate::cluster::PeerError;
use crate::metrics::Outcome;
use crate::oci::Digest;
use crate::policy::Target;
use crate::registry::{ApiError, Registry};
use crate::upstream;

/// The tag served from what its owner recorded, or `None` when this node
/// owns the tag, is in no cluster, or the owner could not help (the
/// caller then revalidates with the upstream itself). `fresh` says
/// whether a record is within `tag_ttl`.
pub(super) async fn ask(
    reg: &Registry,
    target: &Target,
    key: &TagKey,
    accept: &[String],
    fresh: &(dyn Fn(&TagRecord) -> bool + Sync),
) -> Result<Option<Served>, ApiError> {
    let Some(cluster) = reg.cluster.as_ref() else {
        return Ok(None);
    };
    let (ns, repo, tag) = (key.upstream.as_str(), key.repo.as_str(), key.tag.as_str());
    let Some(owner) = cluster.tag_owner(ns, repo, tag) else {
        return Ok(None);
    };
    // The owner may have revalidated it already, for another replica.
    if reg.cache.reread_tag(key).await.is_some_and(|r| fresh(&r)) {
        if let Some(served) = cached_tag(reg, key, accept, fresh).await? {
            return Ok(Some(served));
        }
    }
    let answer = match cluster.head_manifest(&owner, ns, repo, tag).await {
        Ok(a) => a,
        Err(PeerError::Status(StatusCode::NOT_FOUND)) => {
            // The owner asked the upstream, which does not have the tag.
            return Err(map_upstream(upstream::Error::NotFound, target, tag));
        }
        Err(e) => {
            tracing::warn!(%tag, %repo, owner = %owner.name, error = %e,
                "tag owner failed; revalidating the tag here");
            if e.unreachable() {
                // The next request picks the owner the survivors agree on.
                cluster.suspect(&owner);
            }
            return Ok(None);
        }
    };
    let Some(digest) = answer.digest.and_then(|d| d.parse::<Digest>().ok()) else {
        tracing::warn!(%tag, %repo, owner = %owner.name, "tag owner named no digest; revalidating here");
        return Ok(None);
    };
    // What the owner recorded: a record naming another digest means its
    // write did not land (it serves such a pull uncached); ask upstream.
    let recorded = reg.cache.reread_tag(key).await;
    if recorded.is_none_or(|r| r.digest != digest) {
        tracing::debug!(%tag, %repo, owner = %owner.name, "tag owner recorded nothing newer; revalidating here");
        return Ok(None);
    }
    let Some(mut served) = cached_tag(reg, key, accept, |r| r.digest == digest).await? else {
        return Ok(None);
    };
    if answer.stale {
        // The owner could not reach the upstream: serve the record stale,
        // as the owner did, rather than every node waiting on it as well.
        reg.metrics.stale_tag();
        served.outcome = Outcome::Stale;
    }
    Ok(Some(served))
}
