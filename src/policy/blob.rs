//! A blob miss: join the fill, or lead it by fetching: from the blob's
//! owner in a cluster, else (or when the owner fails) from the upstream.

use std::sync::Arc;

use futures_util::TryStreamExt;

use crate::cache::{Cache, Fill, FillPermit, Join, OriginError};
use crate::cluster::Cluster;
use crate::oci::{Digest, RepoName};
use crate::upstream::{self, Upstream};

/// A fill the caller is following.
pub struct Filling {
    /// The fill in progress.
    pub fill: Arc<Fill>,
    /// Whether this caller's miss started it (a miss) or joined it
    /// (coalesced).
    pub leader: bool,
}

/// Joins the fill of `digest`, or starts it with a `GET` of the blob from
/// `upstream`'s `repo`: the one place a blob miss goes upstream. The fetch
/// runs in a task of its own, so the fill finishes and commits whoever
/// hangs up. `None` when the blob got committed meanwhile (serve it from
/// the cache).
///
/// With `via` (a cluster, for a request no peer forwarded) the leader
/// first asks the digest's owner, one hop, so the fleet fetches the blob
/// from the upstream once; see [`fetch`].
pub fn fill(
    cache: &Arc<Cache>,
    upstream: &Arc<Upstream>,
    repo: &RepoName,
    digest: &Digest,
    via: Option<&Arc<Cluster>>,
) -> Option<Filling> {
    Some(match cache.join_fill(digest)? {
        Join::Follower(fill) => Filling {
            fill,
            leader: false,
        },
        Join::Leader(permit) => {
            let fill = permit.fill().clone();
            tracing::debug!(%digest, upstream = upstream.name(), "fetching blob");
            tokio::spawn(fetch(
                permit,
                upstream.clone(),
                repo.clone(),
                digest.clone(),
                via.cloned(),
            ));
            Filling { fill, leader: true }
        }
    })
}

/// A blob's size, asked of `upstream` with a `HEAD` (no body, no fill):
/// for a `HEAD` that missed, and for a passthrough whose fill could not
/// start. `None` when the upstream sent no `Content-Length`.
pub async fn size(
    upstream: &Upstream,
    repo: &RepoName,
    digest: &Digest,
) -> Result<Option<u64>, upstream::Error> {
    upstream.head_blob(repo, digest).await
}

/// The leader's work: `GET` the blob and feed its body to the permit. A
/// failure before the body fails the fill with the upstream's error, which
/// every follower then answers with (see `crate::error`).
///
/// In a cluster, when another node owns the digest, the blob comes from
/// that owner (which runs its own single-flight fill and commits to the
/// shared bucket); this node still verifies every byte in its own fill.
/// If the owner cannot be reached it is suspected (out of the members
/// until it answers a ping) and the next owner is asked; if an owner
/// answers with an error, this node fetches it itself: a dead owner costs
/// one extra upstream fetch, never a failed pull.
async fn fetch(
    permit: FillPermit,
    upstream: Arc<Upstream>,
    repo: RepoName,
    digest: Digest,
    via: Option<Arc<Cluster>>,
) {
    let key = digest.to_string();
    // At most two owners: the first, and (when it was unreachable) the one
    // the survivors agree on without it; after that, the upstream.
    for _ in 0..2 {
        let Some((cluster, owner)) = via.as_ref().and_then(|c| c.owner(&key).map(|o| (c, o)))
        else {
            break;
        };
        match cluster
            .get_blob(&owner, upstream.name(), repo.as_str(), &key)
            .await
        {
            Ok((size, body)) => {
                tracing::debug!(%digest, owner = %owner.name, "blob forwarded from its owner");
                // The origin is still the upstream: the owner only relays it.
                let origin: Arc<str> = upstream.name().into();
                let body = body.map_err(move |e| OriginError::new(&origin, e));
                permit.feed(size, Box::pin(body)).await;
                return;
            }
            Err(e) if e.unreachable() => {
                tracing::warn!(
                    %digest, owner = %owner.name, error = %e,
                    "blob owner unreachable; asking the next owner"
                );
                cluster.suspect(&owner);
            }
            Err(e) => {
                tracing::warn!(
                    %digest, owner = %owner.name, error = %e,
                    "blob owner failed before answering; fetching from the upstream"
                );
                break;
            }
        }
    }
    match upstream.get_blob(&repo, &digest).await {
        Ok(resp) => {
            let size = crate::http::content_length(resp.headers());
            let name = upstream.name().to_owned();
            let body = upstream
                .body_stream(resp.into_body())
                .map_err(move |e| origin_error(&name, e));
            permit.feed(size, Box::pin(body)).await;
        }
        Err(e) => permit.fail(origin_error(upstream.name(), e)),
    }
}

/// An upstream failure as the cache carries it to a fill's readers: kept
/// whole, so the API error can be chosen from it, and "not found" marked as
/// an answer rather than a fault, named after the upstream that said it.
fn origin_error(upstream: &str, e: upstream::Error) -> OriginError {
    match e {
        upstream::Error::NotFound => OriginError::absent(upstream, e),
        e => OriginError::new(upstream, e),
    }
}
