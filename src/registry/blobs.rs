//! Blobs: served from the cache, or teed from one upstream fill that every
//! concurrent request for the digest shares.

use http::{header, HeaderValue, Response, StatusCode};

use super::range::{self, ByteRange};
use super::{ApiError, Registry};
use crate::body::{self, Body};
use crate::cache::FillError;
use crate::error::Subject;
use crate::metrics::{Kind, Outcome, Source};
use crate::oci::Digest;
use crate::policy;
use crate::policy::Target;

/// Bytes read from a cached file per chunk.
const CACHE_CHUNK: usize = 256 * 1024;

/// `GET`/`HEAD /v2/<name>/blobs/<digest>`.
pub async fn get(
    reg: &Registry,
    target: &Target,
    digest: Digest,
    range_header: Option<&str>,
    head: bool,
    forwarded: bool,
) -> Result<Response<Body>, ApiError> {
    match serve(reg, target, &digest, range_header, head, forwarded).await {
        Ok((mut r, outcome)) => {
            reg.metrics.request(Kind::Blob, outcome);
            r.extensions_mut().insert(super::ServedBy {
                outcome,
                upstream: target.upstream.name().to_owned(),
            });
            Ok(r)
        }
        Err(e) => {
            reg.metrics.request(Kind::Blob, Outcome::Error);
            Err(e)
        }
    }
}

async fn serve(
    reg: &Registry,
    target: &Target,
    digest: &Digest,
    range_header: Option<&str>,
    head: bool,
    forwarded: bool,
) -> Result<(Response<Body>, Outcome), ApiError> {
    // A request a peer forwarded is served here, never forwarded again.
    let via = reg.cluster.as_ref().filter(|_| !forwarded);
    let mut holds = Holds::default();
    // Two rounds at most: a blob can vanish from disk (round two fetches it
    // again) or be committed by a fill between our lookups.
    for _ in 0..3 {
        if let Some(size) = reg.cache.lookup(digest).await {
            holds.confirm(reg, target, digest).await?;
            let range = range::parse(range_header, size)?;
            if head {
                return Ok((headers_only(digest, size, range), Outcome::Hit));
            }
            // A peer that forwarded a miss wants the bytes, not a URL.
            if !forwarded {
                if let Some(url) = reg.cache.redirect(digest).await {
                    return Ok((redirect(digest, &url)?, Outcome::Hit));
                }
            }
            if let Some(r) = from_store(reg, digest, size, range, Source::Cache).await? {
                return Ok((r, Outcome::Hit));
            }
            continue;
        }
        // A miss: boxed, so its state (the fill, an upstream round trip)
        // is not part of every hit's future.
        let missed = Box::pin(miss(
            reg,
            target,
            digest,
            range_header,
            head,
            via,
            &mut holds,
        ));
        if let Some(served) = missed.await? {
            return Ok(served);
        }
    }
    Err(ApiError::internal("blob lookup did not settle", digest))
}

/// A blob not in the store: a `HEAD` answered from a fill in flight or the
/// upstream, a `GET` teed from the fill it leads or joins. `None` when the
/// blob was committed meanwhile (the caller looks it up again).
async fn miss(
    reg: &Registry,
    target: &Target,
    digest: &Digest,
    range_header: Option<&str>,
    head: bool,
    via: Option<&std::sync::Arc<crate::cluster::Cluster>>,
    holds: &mut Holds,
) -> Result<Option<(Response<Body>, Outcome)>, ApiError> {
    if head {
        // A fill in flight knows the size: no upstream round trip, and
        // none either between a fill's last byte and its commit.
        if let Some(size) = reg.cache.filling_size(digest) {
            holds.confirm(reg, target, digest).await?;
            let range = range::parse(range_header, size)?;
            return Ok(Some((
                headers_only(digest, size, range),
                Outcome::Coalesced,
            )));
        }
        let size = upstream_size(target, digest).await?;
        holds.link(reg, target, digest).await;
        let range = range::parse(range_header, size)?;
        return Ok(Some((headers_only(digest, size, range), Outcome::Miss)));
    }
    let Some(policy::Filling { fill, leader }) =
        policy::fill(&reg.cache, &target.upstream, &target.repo, digest, via)
    else {
        return Ok(None);
    };
    let outcome = if leader {
        Outcome::Miss
    } else {
        Outcome::Coalesced
    };
    let started = fill.started().await;
    // The leader's upstream answered for this repository; a follower
    // joined a fill that may be for another one.
    if leader && started.is_ok() {
        holds.link(reg, target, digest).await;
    } else if !leader {
        holds.confirm(reg, target, digest).await?;
    }
    let size = match started {
        Ok(Some(size)) => size,
        Ok(None) => {
            // No Content-Length upstream: wait for the verified blob.
            fill.finished()
                .await
                .map_err(|e| ApiError::fill(e, digest, target.upstream.name()))?;
            return Ok(None);
        }
        Err(FillError::Disk(e)) => {
            // The cache could not even start the fill (disk full): the
            // policy's reader passes the blob through from the upstream.
            tracing::warn!(%digest, error = %e, "cache disk failed before the fill started; passing through");
            upstream_size(target, digest).await?
        }
        Err(e) => return Err(ApiError::fill(e, digest, target.upstream.name())),
    };
    let range = range::parse(range_header, size)?;
    let (start, end) = bounds(range, size);
    let read = policy::Read {
        upstream: target.upstream.clone(),
        repo: target.repo.clone(),
        size,
        start,
        end,
    };
    let stream = policy::read(fill, read, reg.metrics.clone());
    let body = first_bytes(Box::pin(stream), digest, target.upstream.name()).await?;
    Ok(Some((response(digest, size, range, body), outcome)))
}

/// How long a cold response's head waits for its first bytes.
const FIRST_BYTES_WAIT: std::time::Duration = std::time::Duration::from_millis(500);

/// The body of a cold response, once its first bytes are there (or
/// [`FIRST_BYTES_WAIT`] has passed). A fill that fails before any byte can
/// be sent (a small blob whose digest check failed: the last byte is held
/// back until it passes; an upstream that broke off at once) is answered
/// with a 502 naming the upstream and the digest, not a `200` cut off at
/// its first byte. Once the head is out, a failure can only cut the body
/// short (`crate::body` flushes the head and the bytes before it first).
async fn first_bytes<S>(mut stream: S, digest: &Digest, upstream: &str) -> Result<Body, ApiError>
where
    S: futures_util::Stream<Item = std::io::Result<bytes::Bytes>> + Send + Unpin + 'static,
{
    use futures_util::StreamExt;
    // `next` is cancel-safe: the read in progress stays in the stream.
    match tokio::time::timeout(FIRST_BYTES_WAIT, stream.next()).await {
        Ok(Some(Err(e))) => Err(ApiError::fetch_failed(digest, upstream, &e)),
        Ok(Some(Ok(first))) => Ok(body::stream(
            futures_util::stream::once(std::future::ready(Ok(first))).chain(stream),
        )),
        // An empty range: the stream has ended and must not be polled again.
        Ok(None) => Ok(body::empty()),
        Err(_) => Ok(body::stream(stream)),
    }
}

/// Whether the requested repository holds the blob (issue 14, defect 3):
/// the cache is shared by digest, so a blob it has is served through a
/// repository only when linked to it (fetched or confirmed for it before,
/// or referenced by one of its manifests). Otherwise the upstream is asked
/// with a `HEAD` for this repository first, and a yes links it. Pushed
/// content is no exception: an upstream name serves it only when that
/// upstream has it too. With the upstream unreachable an unlinked blob is
/// not served (the upstream's error is).
#[derive(Default)]
struct Holds(bool);

impl Holds {
    async fn confirm(
        &mut self,
        reg: &Registry,
        target: &Target,
        digest: &Digest,
    ) -> Result<(), ApiError> {
        if self.0 {
            return Ok(());
        }
        let (up, repo) = (target.upstream.name(), &target.repo);
        if !reg.cache.linked(up, repo, digest).await {
            // Boxed: the upstream round trip's state stays out of every hit.
            Box::pin(async {
                upstream_size(target, digest).await?;
                reg.cache.link(up, repo, digest).await;
                Ok::<_, ApiError>(())
            })
            .await?;
        }
        self.0 = true;
        Ok(())
    }

    async fn link(&mut self, reg: &Registry, target: &Target, digest: &Digest) {
        if !self.0 {
            reg.cache
                .link(target.upstream.name(), &target.repo, digest)
                .await;
            self.0 = true;
        }
    }
}

/// Streams `range` of a stored blob of `size` bytes, counting the bytes
/// served under `source` (cache, or local for a pushed repository's blob);
/// `None` when its file vanished (the caller treats it as absent).
async fn from_store(
    reg: &Registry,
    digest: &Digest,
    size: u64,
    range: Option<ByteRange>,
    source: Source,
) -> Result<Option<Response<Body>>, ApiError> {
    let (start, end) = bounds(range, size);
    let Some(reader) = reg.cache.open_blob(digest, start, end).await? else {
        return Ok(None);
    };
    let metrics = reg.metrics.clone();
    let stream = tokio_util::io::ReaderStream::with_capacity(reader, CACHE_CHUNK);
    let stream = futures_util::StreamExt::inspect(stream, move |chunk| {
        if let Ok(c) = chunk {
            metrics.served(source, c.len() as u64);
        }
    });
    Ok(Some(response(digest, size, range, body::stream(stream))))
}

/// `GET`/`HEAD` of a blob linked to a local repository: from the store
/// only, never from an upstream.
pub async fn get_local(
    reg: &Registry,
    name: &crate::oci::RepoName,
    digest: Digest,
    range_header: Option<&str>,
    head: bool,
) -> Result<Response<Body>, ApiError> {
    let unknown = || {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "BLOB_UNKNOWN",
            format!("blob {digest} is not in repository {name}"),
        )
    };
    let size = reg
        .local
        .blob_or_learn(name, &digest)
        .await
        .ok_or_else(unknown)?;
    let range = range::parse(range_header, size)?;
    reg.metrics.request(Kind::Blob, Outcome::Local);
    if head {
        return Ok(headers_only(&digest, size, range));
    }
    if let Some(url) = reg.cache.redirect(&digest).await {
        return redirect(&digest, &url);
    }
    from_store(reg, &digest, size, range, Source::Local)
        .await?
        .ok_or_else(unknown)
}

/// A blob's size from an upstream `HEAD`.
async fn upstream_size(target: &Target, digest: &Digest) -> Result<u64, ApiError> {
    let name = target.upstream.name();
    policy::blob_size(&target.upstream, &target.repo, digest)
        .await
        .map_err(|e| ApiError::upstream(e, name, Subject::Blob(digest)))?
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_GATEWAY,
                "UNAVAILABLE",
                format!("{name}: upstream sent no Content-Length for {digest}"),
            )
        })
}

/// `307` to where the blob can be fetched without this node (a presigned
/// bucket URL, issue 13 item 5). Only for blobs already verified into the
/// store, never for a miss; the URL names one object and expires.
fn redirect(digest: &Digest, url: &str) -> Result<Response<Body>, ApiError> {
    let location = HeaderValue::from_str(url)
        .map_err(|_| ApiError::internal("the presigned URL is not a header value", digest))?;
    let mut r = Response::new(body::empty());
    *r.status_mut() = StatusCode::TEMPORARY_REDIRECT;
    let h = r.headers_mut();
    h.insert(header::LOCATION, location);
    h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
    if let Ok(v) = HeaderValue::from_str(&digest.to_string()) {
        h.insert("docker-content-digest", v);
    }
    Ok(r)
}

fn bounds(range: Option<ByteRange>, size: u64) -> (u64, u64) {
    range.map_or((0, size), |r| (r.start, r.end))
}

fn headers_only(digest: &Digest, size: u64, range: Option<ByteRange>) -> Response<Body> {
    response(digest, size, range, body::empty())
}

fn response(digest: &Digest, size: u64, range: Option<ByteRange>, body: Body) -> Response<Body> {
    let mut r = Response::new(body);
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    if let Ok(v) = HeaderValue::from_str(&digest.to_string()) {
        h.insert("docker-content-digest", v);
    }
    if let Ok(etag) = HeaderValue::from_str(&format!("\"{digest}\"")) {
        h.insert(header::ETAG, etag);
    }
    match range {
        None => {
            h.insert(header::CONTENT_LENGTH, HeaderValue::from(size));
        }
        Some(ByteRange { start, end }) => {
            *r.status_mut() = StatusCode::PARTIAL_CONTENT;
            let h = r.headers_mut();
            h.insert(header::CONTENT_LENGTH, HeaderValue::from(end - start));
            if let Ok(v) = HeaderValue::from_str(&format!("bytes {start}-{}/{size}", end - 1)) {
                h.insert(header::CONTENT_RANGE, v);
            }
        }
    }
    r
}
