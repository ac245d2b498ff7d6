//! Serving a fill to a client, and carrying the read on from the upstream
//! when the cache's disk fails under it.
//!
//! A client must still get its blob when the local disk fills up or
//! breaks mid-fill. The cache's reader stops with "disk failed at byte N"
//! ([`ReadError::DiskFailed`]); the rest of the range comes from a ranged
//! upstream `GET`. A reader of the whole blob first has the cache re-hash
//! what it already sent, and holds back its final chunk until the digest
//! of the whole stream matches, so a passed-through body is verified before
//! its last byte like a filled one. A partial range cannot be verified by
//! anyone but the client; it is passed through as the upstream sends it.

use std::io;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};

use crate::cache::{Fill, ReadError, Resume};
use crate::metrics::{Metrics, Source};
use crate::oci::{Digest, Hasher, RepoName};
use crate::upstream::{self, Upstream};

type Pieces<E> = Pin<Box<dyn Stream<Item = Result<Bytes, E>> + Send>>;

/// Streams `start..end` of `fill`, going on from `upstream`'s `repo` if the
/// cache's disk fails. Ends with an error (an aborted response) whenever
/// the bytes cannot be delivered whole and verified.
pub fn read(
    fill: Arc<Fill>,
    upstream: Arc<Upstream>,
    repo: RepoName,
    start: u64,
    end: u64,
    metrics: Arc<Metrics>,
) -> impl Stream<Item = io::Result<Bytes>> + Send + 'static {
    let reader = Reader {
        fill: Some(Box::pin(fill.reader(start, end, metrics.clone()))),
        passthrough: None,
        upstream,
        repo,
        metrics,
        finished: false,
    };
    futures_util::stream::unfold(reader, |mut r| async move {
        if r.finished {
            return None;
        }
        let item = r.next_piece().await?;
        r.finished = item.is_err();
        Some((item, r))
    })
}

struct Reader {
    /// The fill, until the disk fails under it.
    fill: Option<Pieces<ReadError>>,
    /// The upstream stream that replaces it then.
    passthrough: Option<Passthrough>,
    upstream: Arc<Upstream>,
    repo: RepoName,
    metrics: Arc<Metrics>,
    finished: bool,
}

/// The rest of a range, from the upstream.
struct Passthrough {
    digest: Digest,
    body: Pieces<upstream::Error>,
    pos: u64,
    end: u64,
    /// Bytes still to drop from the front (a 200 answer to a ranged GET).
    skip: u64,
    /// Hash of everything sent, when the whole blob is being read.
    hasher: Option<Hasher>,
    /// A chunk held back until the digest is checked.
    held: Option<Bytes>,
}

impl Reader {
    async fn next_piece(&mut self) -> Option<io::Result<Bytes>> {
        if let Some(fill) = &mut self.fill {
            match fill.next().await? {
                Ok(bytes) => return Some(Ok(bytes)),
                Err(ReadError::Failed(e)) => return Some(Err(e)),
                Err(ReadError::DiskFailed(resume)) => {
                    self.fill = None;
                    tracing::warn!(digest = %resume.digest(), at = resume.at, error = %resume.error, "cache disk failed; serving the rest from the upstream");
                    match start_passthrough(&self.upstream, &self.repo, resume).await {
                        Ok(p) => self.passthrough = Some(p),
                        Err(e) => return Some(Err(e)),
                    }
                }
            }
        }
        self.next_passthrough().await
    }

    async fn next_passthrough(&mut self) -> Option<io::Result<Bytes>> {
        let pt = self.passthrough.as_mut()?;
        loop {
            if pt.pos >= pt.end {
                // Everything is in hand: verify before letting the last chunk go.
                if let Some(h) = pt.hasher.take() {
                    let actual = h.finish();
                    if actual != pt.digest {
                        return Some(Err(io::Error::other(format!(
                            "upstream fallback for {} does not match (got {actual})",
                            pt.digest
                        ))));
                    }
                }
                return pt.held.take().map(Ok);
            }
            let mut data = match pt.body.next().await {
                Some(Err(e)) => return Some(Err(io::Error::other(e.to_string()))),
                None => return Some(Err(io::Error::other("upstream fallback ended early"))),
                Some(Ok(data)) => data,
            };
            if pt.skip > 0 {
                let drop = pt.skip.min(data.len() as u64) as usize;
                pt.skip -= drop as u64;
                data = data.slice(drop..);
            }
            let room = (pt.end - pt.pos).min(data.len() as u64) as usize;
            let data = data.slice(..room);
            if data.is_empty() {
                continue;
            }
            pt.pos += data.len() as u64;
            self.metrics.served(Source::Upstream, data.len() as u64);
            match &mut pt.hasher {
                Some(h) => {
                    h.update(&data);
                    // Hold one chunk back; release the previous one.
                    if let Some(prev) = pt.held.replace(data) {
                        return Some(Ok(prev));
                    }
                }
                None => return Some(Ok(data)),
            }
        }
    }
}

/// Starts a ranged upstream GET for the rest of `resume`'s range.
async fn start_passthrough(
    upstream: &Upstream,
    repo: &RepoName,
    resume: Resume,
) -> io::Result<Passthrough> {
    // Hash what this client already received, to verify the whole.
    let hasher = match resume.start {
        0 => Some(resume.hash_sent().await?),
        _ => None,
    };
    let resp = upstream
        .get_blob_range(repo, resume.digest(), resume.at, resume.end)
        .await
        .map_err(|e| io::Error::other(format!("upstream fallback failed: {e}")))?;
    let skip = if resp.status() == http::StatusCode::PARTIAL_CONTENT {
        0
    } else {
        resume.at
    };
    Ok(Passthrough {
        digest: resume.digest().clone(),
        body: Box::pin(upstream.body_stream(resp.into_body())),
        pos: resume.at,
        end: resume.end,
        skip,
        hasher,
        held: None,
    })
}
