//! A blob miss: join the fill, or lead it by fetching from the upstream.

use std::sync::Arc;

use futures_util::TryStreamExt;

use crate::cache::{Cache, Fill, FillPermit, Join, OriginError};
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
pub fn fill(
    cache: &Arc<Cache>,
    upstream: &Arc<Upstream>,
    repo: &RepoName,
    digest: &Digest,
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
async fn fetch(permit: FillPermit, upstream: Arc<Upstream>, repo: RepoName, digest: Digest) {
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
