//! Reading a blob while its fill is in progress.
//!
//! A reader follows the fill's temp file up to the bytes written so far,
//! holding back the last byte of its range until the fill is verified, so a
//! response never completes on bytes that may fail their digest check.
//!
//! When the fill fails on the local disk (full, quota, I/O error) the
//! client must still get its blob: the reader fetches the rest of its range
//! straight from the upstream with a ranged `GET`. A reader of the whole
//! blob first re-hashes what it already sent (still readable through the
//! open temp file) and holds back its final chunk until the digest of the
//! whole stream matches. A partial range cannot be verified by anyone but
//! the client; it is passed through as the upstream sends it.

use std::io;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::Stream;
use hyper::body::Incoming;
use tokio::sync::watch;

use super::fill::{Fill, FillError, Progress};
use crate::metrics::{Metrics, Source};
use crate::oci::Hasher;

/// Largest read a fill reader does at once.
const READ_CHUNK: usize = 256 * 1024;

/// State of one reader.
pub struct FillReader {
    fill: Arc<Fill>,
    rx: watch::Receiver<Progress>,
    start: u64,
    pos: u64,
    end: u64,
    metrics: Arc<Metrics>,
    passthrough: Option<Passthrough>,
    finished: bool,
}

/// The upstream stream that replaces a failed fill.
struct Passthrough {
    body: Incoming,
    /// Bytes still to drop from the front (a 200 answer to a ranged GET).
    skip: u64,
    /// Hash of everything sent, when the whole blob is being read.
    hasher: Option<Hasher>,
    /// A chunk held back until the digest is checked.
    held: Option<Bytes>,
}

impl FillReader {
    /// A reader of `start..end`.
    pub fn new(fill: Arc<Fill>, start: u64, end: u64, metrics: Arc<Metrics>) -> FillReader {
        let rx = fill.subscribe();
        FillReader {
            fill,
            rx,
            start,
            pos: start,
            end,
            metrics,
            passthrough: None,
            finished: false,
        }
    }

    /// The reader as a body stream.
    pub fn into_stream(self) -> impl Stream<Item = io::Result<Bytes>> + Send + 'static {
        futures_util::stream::unfold(self, |mut r| async move {
            if r.finished {
                return None;
            }
            let item = r.next_chunk().await;
            match item {
                None => None,
                Some(Err(e)) => {
                    r.finished = true;
                    Some((Err(e), r))
                }
                Some(Ok(b)) => Some((Ok(b), r)),
            }
        })
    }

    async fn next_chunk(&mut self) -> Option<io::Result<Bytes>> {
        if self.passthrough.is_some() {
            return self.next_passthrough().await;
        }
        if self.pos >= self.end {
            return None;
        }
        loop {
            let state = self.rx.borrow_and_update().clone();
            let available = match state {
                Progress::Connecting => 0,
                Progress::Streaming { written, .. } => written.min(self.end - 1),
                Progress::Done { size } => size,
                Progress::Failed(FillError::Disk(e)) => {
                    tracing::warn!(digest = %self.fill.digest(), error = %e, "cache disk failed; serving the rest from the upstream");
                    return match self.start_passthrough().await {
                        Ok(()) => self.next_passthrough().await,
                        Err(e) => Some(Err(e)),
                    };
                }
                Progress::Failed(e) => {
                    return Some(Err(io::Error::other(format!(
                        "fill of {} failed: {e}",
                        self.fill.digest()
                    ))));
                }
            };
            if available > self.pos {
                let want = (available.min(self.end) - self.pos).min(READ_CHUNK as u64) as usize;
                return Some(self.read_file(self.pos, want).await.inspect(|buf| {
                    self.pos += buf.len() as u64;
                    self.metrics.served(Source::Upstream, buf.len() as u64);
                }));
            }
            if matches!(state, Progress::Done { .. }) {
                return Some(Err(io::Error::other(
                    "blob is shorter than the requested range",
                )));
            }
            if self.rx.changed().await.is_err() {
                return Some(Err(io::Error::other("fill abandoned")));
            }
        }
    }

    async fn read_file(&self, pos: u64, want: usize) -> io::Result<Bytes> {
        let file = self
            .fill
            .file()
            .ok_or_else(|| io::Error::other("fill has data but no file"))?;
        tokio::task::spawn_blocking(move || {
            let mut buf = vec![0u8; want];
            file.read_exact_at(&mut buf, pos).map(|()| Bytes::from(buf))
        })
        .await
        .map_err(io::Error::other)?
    }

    /// Switches to a ranged upstream GET for `pos..end`.
    async fn start_passthrough(&mut self) -> io::Result<()> {
        let whole = self.start == 0;
        let mut hasher = None;
        if whole {
            // Hash what this client already received, from the open file.
            let mut h = Hasher::new();
            let mut at = 0;
            while at < self.pos {
                let want = (self.pos - at).min(4 * READ_CHUNK as u64) as usize;
                let chunk = self.read_file(at, want).await?;
                h.update(&chunk);
                at += chunk.len() as u64;
            }
            hasher = Some(h);
        }
        let (upstream, repo) = self.fill.origin();
        let resp = upstream
            .get_blob_range(repo, self.fill.digest(), self.pos, self.end)
            .await
            .map_err(|e| io::Error::other(format!("upstream fallback failed: {e}")))?;
        let skip = if resp.status() == http::StatusCode::PARTIAL_CONTENT {
            0
        } else {
            self.pos
        };
        self.passthrough = Some(Passthrough {
            body: resp.into_body(),
            skip,
            hasher,
            held: None,
        });
        Ok(())
    }

    async fn next_passthrough(&mut self) -> Option<io::Result<Bytes>> {
        let (upstream, _) = self.fill.origin();
        let upstream = upstream.clone();
        let digest = self.fill.digest().clone();
        let pt = self.passthrough.as_mut()?;
        loop {
            if self.pos >= self.end {
                // Everything is in hand: verify before letting the last chunk go.
                if let Some(h) = pt.hasher.take() {
                    let actual = h.finish();
                    if actual != digest {
                        return Some(Err(io::Error::other(format!(
                            "upstream fallback for {digest} does not match (got {actual})"
                        ))));
                    }
                }
                return pt.held.take().map(Ok);
            }
            let frame = match upstream.next_frame(&mut pt.body).await {
                Err(e) => return Some(Err(io::Error::other(e.to_string()))),
                Ok(None) => return Some(Err(io::Error::other("upstream fallback ended early"))),
                Ok(Some(f)) => f,
            };
            let Ok(mut data) = frame.into_data() else {
                continue;
            };
            if pt.skip > 0 {
                let drop = pt.skip.min(data.len() as u64) as usize;
                pt.skip -= drop as u64;
                data = data.slice(drop..);
            }
            let room = (self.end - self.pos).min(data.len() as u64) as usize;
            let data = data.slice(..room);
            if data.is_empty() {
                continue;
            }
            self.pos += data.len() as u64;
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
