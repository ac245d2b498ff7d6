//! In-flight blob fills: one upstream stream per digest, however many
//! clients ask for it at once.
//!
//! The first request for a missing blob becomes the leader and spawns the
//! fill task; the task, not the request, owns the upstream stream, so a
//! client hanging up never cancels a fill others depend on. The task writes
//! into a temp file while hashing; every reader (the leader's client too)
//! reads that file with positional reads up to the bytes written so far,
//! waking on a `watch` channel. Memory stays flat whatever the blob size:
//! the file is the buffer. Only when the sha256 matches is the file synced
//! and renamed into the store; on any failure the state becomes `Failed`
//! and readers end their bodies with an error (an aborted response), never
//! a clean short one. A [`FillGuard`] marks the fill failed if the task dies.

use std::collections::HashMap;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};

use bytes::{Bytes, BytesMut};
use futures_util::{FutureExt, Stream};
use tokio::sync::watch;

use crate::metrics::{FillResult, Metrics};
use crate::oci::{Digest, RepoName};
use crate::upstream;

/// Frames are batched up to this size per disk write.
const WRITE_BATCH: usize = 1024 * 1024;

/// Where a fill is.
#[derive(Debug, Clone)]
pub enum Progress {
    /// Waiting for the upstream's headers.
    Connecting,
    /// Streaming; `written` bytes are in the temp file.
    Streaming {
        /// Size announced by the upstream, if it did.
        size: Option<u64>,
        /// Bytes written so far.
        written: u64,
    },
    /// Verified and committed.
    Done {
        /// Final size.
        size: u64,
    },
    /// Failed: readers must abort.
    Failed(FillError),
}

/// Why a fill failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum FillError {
    /// The upstream refused or broke off.
    #[error(transparent)]
    Upstream(#[from] upstream::Error),
    /// The bytes did not hash to the digest.
    #[error("content does not match its digest (got {0})")]
    Mismatch(Digest),
    /// Size differs from the announced one.
    #[error("upstream sent {got} bytes, announced {announced}")]
    Size {
        /// Content-Length.
        announced: u64,
        /// Bytes received.
        got: u64,
    },
    /// Local disk failure.
    #[error("disk error: {0}")]
    Disk(String),
    /// The fill task went away.
    #[error("fill abandoned")]
    Abandoned,
}

/// One in-progress fill.
pub struct Fill {
    digest: Digest,
    upstream: Arc<upstream::Upstream>,
    repo: RepoName,
    file: OnceLock<Arc<std::fs::File>>,
    state: watch::Sender<Progress>,
}

impl Fill {
    /// The digest being filled.
    pub fn digest(&self) -> &Digest {
        &self.digest
    }

    /// Waits until the upstream answered: `Ok(Some(size))` once streaming
    /// with a known size (or done), `Ok(None)` when the size is unknown.
    pub async fn started(&self) -> Result<Option<u64>, FillError> {
        let mut rx = self.state.subscribe();
        loop {
            match &*rx.borrow_and_update() {
                Progress::Connecting => {}
                Progress::Streaming { size, .. } => return Ok(*size),
                Progress::Done { size } => return Ok(Some(*size)),
                Progress::Failed(e) => return Err(e.clone()),
            }
            if rx.changed().await.is_err() {
                return Err(FillError::Abandoned);
            }
        }
    }

    /// Waits until the fill is committed.
    pub async fn finished(&self) -> Result<u64, FillError> {
        let mut rx = self.state.subscribe();
        loop {
            match &*rx.borrow_and_update() {
                Progress::Done { size } => return Ok(*size),
                Progress::Failed(e) => return Err(e.clone()),
                _ => {}
            }
            if rx.changed().await.is_err() {
                return Err(FillError::Abandoned);
            }
        }
    }

    /// Streams `start..end` of the blob as it arrives (see [`super::reader`]).
    pub fn reader(
        self: Arc<Self>,
        start: u64,
        end: u64,
        metrics: Arc<Metrics>,
    ) -> impl Stream<Item = io::Result<Bytes>> + Send + 'static {
        super::reader::FillReader::new(self, start, end, metrics).into_stream()
    }

    /// A subscription to the fill's progress.
    pub(super) fn subscribe(&self) -> watch::Receiver<Progress> {
        self.state.subscribe()
    }

    /// The temp file, once the upstream answered.
    pub(super) fn file(&self) -> Option<Arc<std::fs::File>> {
        self.file.get().cloned()
    }

    /// Where a reader goes for the rest when the disk failed.
    pub(super) fn origin(&self) -> (&Arc<upstream::Upstream>, &RepoName) {
        (&self.upstream, &self.repo)
    }
}

/// The fills in flight, by digest.
#[derive(Default)]
pub struct Fills {
    /// std mutex: held only to look up or insert, never across an await.
    /// Shared with each [`FillGuard`] so a dying fill unregisters itself.
    map: Arc<Mutex<HashMap<Digest, Arc<Fill>>>>,
}

/// The result of asking to fill a digest.
pub enum Join {
    /// This caller must run the fill (spawn [`Fills::run`]).
    Leader(Arc<Fill>, FillGuard),
    /// Another request is filling it already.
    Follower(Arc<Fill>),
}

impl Fills {
    /// Joins the fill of `digest`, or starts one when none is running.
    /// `present` is re-checked under the lock so a fill that just committed
    /// is not started again.
    pub fn join(
        &self,
        digest: &Digest,
        origin: (&Arc<upstream::Upstream>, &RepoName),
        present: impl Fn() -> bool,
        tmp: PathBuf,
        metrics: Arc<Metrics>,
    ) -> Option<Join> {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(f) = map.get(digest) {
            if !matches!(*f.state.borrow(), Progress::Failed(_)) {
                return Some(Join::Follower(f.clone()));
            }
        }
        if present() {
            return None;
        }
        let (tx, _) = watch::channel(Progress::Connecting);
        let fill = Arc::new(Fill {
            digest: digest.clone(),
            upstream: origin.0.clone(),
            repo: origin.1.clone(),
            file: OnceLock::new(),
            state: tx,
        });
        map.insert(digest.clone(), fill.clone());
        metrics.fills_in_flight().inc();
        let guard = FillGuard {
            fill: fill.clone(),
            map: self.map.clone(),
            tmp,
            metrics,
            done: false,
        };
        Some(Join::Leader(fill, guard))
    }

    /// Number of fills in flight.
    pub fn len(&self) -> usize {
        self.map.lock().map(|m| m.len()).unwrap_or(0)
    }

    /// Whether no fill is in flight.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Owned by the fill task. Its `Drop` fails the fill, deletes the temp file
/// and unregisters it, unless the fill was committed: readers never wait
/// forever on a writer that went away.
pub struct FillGuard {
    fill: Arc<Fill>,
    map: Arc<Mutex<HashMap<Digest, Arc<Fill>>>>,
    tmp: PathBuf,
    metrics: Arc<Metrics>,
    done: bool,
}

impl FillGuard {
    fn set(&self, p: Progress) {
        self.fill.state.send_replace(p);
    }

    /// Marks the fill failed now (the guard's drop then only cleans up).
    pub fn fail(&mut self, err: FillError) {
        let result = match &err {
            FillError::Mismatch(_) | FillError::Size { .. } => FillResult::DigestMismatch,
            FillError::Disk(_) => FillResult::DiskError,
            _ => FillResult::UpstreamError,
        };
        if matches!(err, FillError::Upstream(upstream::Error::NotFound)) {
            tracing::debug!(digest = %self.fill.digest, "blob not found upstream");
        } else {
            tracing::warn!(digest = %self.fill.digest, error = %err, "fill failed");
        }
        self.metrics.fill_done(result);
        self.set(Progress::Failed(err));
        self.finish();
    }

    fn finish(&mut self) {
        if !self.done {
            self.done = true;
            self.unregister();
            self.metrics.fills_in_flight().dec();
        }
    }

    /// Removes this fill from the map (only if the entry is still this fill).
    fn unregister(&self) {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if map
            .get(&self.fill.digest)
            .is_some_and(|f| Arc::ptr_eq(f, &self.fill))
        {
            map.remove(&self.fill.digest);
        }
    }
}

impl Drop for FillGuard {
    fn drop(&mut self) {
        if !self.done {
            self.metrics.fill_done(FillResult::UpstreamError);
            self.metrics.fills_in_flight().dec();
            self.set(Progress::Failed(FillError::Abandoned));
            self.unregister();
        }
        // Committed fills renamed the file away; this only removes leftovers.
        let _ = std::fs::remove_file(&self.tmp);
    }
}

/// What the fill task needs from the cache when the bytes are verified.
pub trait Committer: Send + Sync {
    /// Commits the verified, synced temp file under `digest`.
    fn commit(
        &self,
        digest: &Digest,
        tmp: &std::path::Path,
        size: u64,
    ) -> impl std::future::Future<Output = std::io::Result<()>> + Send;

    /// A write failed; `needed` bytes would have been stored. A full disk
    /// (ENOSPC, EFBIG, EDQUOT) makes the cache evict to make room.
    fn write_failed(&self, err: &io::Error, needed: u64);
}

fn disk<C: Committer>(c: &C, e: io::Error, needed: u64) -> FillError {
    c.write_failed(&e, needed);
    FillError::Disk(e.to_string())
}

/// Runs a fill: streams `resp` into the temp file, verifies, commits.
pub async fn run<C: Committer>(
    mut guard: FillGuard,
    upstream: &upstream::Upstream,
    resp: Result<http::Response<hyper::body::Incoming>, upstream::Error>,
    committer: &C,
) {
    let digest = guard.fill.digest.clone();
    let resp = match resp {
        Ok(r) => r,
        Err(e) => return guard.fail(e.into()),
    };
    let size = upstream::content_length(resp.headers());
    let tmp = guard.tmp.clone();
    let file = match tokio::task::spawn_blocking(move || {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&tmp)
    })
    .await
    {
        Ok(Ok(f)) => Arc::new(f),
        Ok(Err(e)) => return guard.fail(disk(committer, e, size.unwrap_or(0))),
        Err(e) => return guard.fail(FillError::Disk(e.to_string())),
    };
    let _ = guard.fill.file.set(file.clone());
    guard.set(Progress::Streaming { size, written: 0 });

    let mut body = resp.into_body();
    let mut hasher = crate::oci::Hasher::new();
    let mut written: u64 = 0;
    let mut ended = false;
    while !ended {
        let batch = match next_batch(upstream, &mut body).await {
            Ok(Some((b, end))) => {
                ended = end;
                b
            }
            Ok(None) => break,
            Err(e) => return guard.fail(e.into()),
        };
        let len = batch.len() as u64;
        if let Some(announced) = size {
            if written + len > announced {
                return guard.fail(FillError::Size {
                    announced,
                    got: written + len,
                });
            }
        }
        let f = file.clone();
        let offset = written;
        let result = tokio::task::spawn_blocking(move || {
            hasher.update(&batch);
            f.write_all_at(&batch, offset).map(|()| hasher)
        })
        .await;
        hasher = match result {
            Ok(Ok(h)) => h,
            Ok(Err(e)) => return guard.fail(disk(committer, e, size.unwrap_or(written + len))),
            Err(e) => return guard.fail(FillError::Disk(e.to_string())),
        };
        written += len;
        guard.set(Progress::Streaming { size, written });
    }
    if let Some(announced) = size {
        if written != announced {
            return guard.fail(FillError::Size {
                announced,
                got: written,
            });
        }
    }
    let actual = hasher.finish();
    if actual != digest {
        return guard.fail(FillError::Mismatch(actual));
    }
    let f = file.clone();
    let synced = tokio::task::spawn_blocking(move || f.sync_all())
        .await
        .map_err(io::Error::other)
        .and_then(|r| r);
    let committed = match synced {
        Ok(()) => committer.commit(&digest, &guard.tmp, written).await,
        Err(e) => Err(e),
    };
    match committed {
        Ok(()) => guard.metrics.fill_done(FillResult::Ok),
        Err(e) => {
            // The bytes are verified and readers hold the file open, so they
            // still complete; the blob just does not enter the cache.
            tracing::error!(%digest, error = %e, "verified blob could not be committed to the cache");
            committer.write_failed(&e, written);
            guard.metrics.fill_done(FillResult::DiskError);
        }
    }
    guard.set(Progress::Done { size: written });
    guard.finish();
}

/// Reads the next frames of `body`, batching what is ready up to
/// [`WRITE_BATCH`] so disk writes are large. `None` at the end; the flag
/// says the end was seen while batching.
async fn next_batch(
    upstream: &upstream::Upstream,
    body: &mut hyper::body::Incoming,
) -> Result<Option<(Bytes, bool)>, upstream::Error> {
    use http_body_util::BodyExt;
    let first = loop {
        match upstream.next_frame(body).await? {
            None => return Ok(None),
            Some(f) => {
                if let Ok(d) = f.into_data() {
                    if !d.is_empty() {
                        break d;
                    }
                }
            }
        }
    };
    let mut buf: Option<BytesMut> = None;
    let mut ended = false;
    while buf.as_ref().map_or(first.len(), |b| b.len()) < WRITE_BATCH {
        match body.frame().now_or_never() {
            Some(Some(Ok(f))) => {
                if let Ok(d) = f.into_data() {
                    let b = buf.get_or_insert_with(|| BytesMut::from(&first[..]));
                    b.extend_from_slice(&d);
                }
            }
            Some(Some(Err(e))) => {
                return Err(upstream::Error::Unreachable(format!("body broke off: {e}")))
            }
            Some(None) => {
                ended = true;
                break;
            }
            // Nothing ready yet: write what we have.
            None => break,
        }
    }
    Ok(Some((buf.map_or(first, BytesMut::freeze), ended)))
}
