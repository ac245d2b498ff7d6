//! In-flight blob fills: one origin stream per digest, however many
//! clients ask for it at once.
//!
//! The first request for a missing blob becomes the leader: it gets a
//! [`FillPermit`](super::FillPermit), fetches the blob from wherever the
//! layer above decides (the cache never fetches anything itself; see
//! `crate::policy`) and feeds the body to the permit, in a task of its own
//! so a client hanging up never cancels a fill others depend on. The fill
//! receives the body while one blocking thread writes it into a temp file
//! and another hashes it; every reader (the leader's client too) follows
//! that file up to the bytes written so far, waking on a `watch` channel,
//! and readers close to each other share recent chunks in memory. Memory
//! stays flat whatever the blob size: the file is the buffer. Readers get
//! their last byte only when the sha256 matches; the file is then synced
//! and renamed into the store. On any failure the state becomes `Failed`
//! and readers end their bodies with an error (an aborted response), never
//! a clean short one. A [`FillGuard`] (inside the permit) marks the fill
//! failed if its leader drops it unfinished.

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex, OnceLock};

use bytes::Bytes;
use futures_util::Stream;
use tokio::sync::watch;

use super::permit::{Body, OriginError};
use super::reader::{Chunks, ReadError};
use crate::metrics::{FillResult, Metrics};
use crate::oci::Digest;
use crate::storage::Staging;

mod pipeline;

/// Readers share a fill in chunks of this size, aligned on multiples of it
/// in the blob (the last one may be shorter). 256 KiB: 32 readers spread
/// over a fill hold at most a few chunks each, so memory stays within
/// tens of MiB however many follow it.
pub(super) const CHUNK: usize = 256 * 1024;

/// Where a fill is.
#[derive(Debug, Clone)]
pub enum Progress {
    /// Waiting for the leader's response headers.
    Connecting,
    /// Streaming; `written` bytes are in the temp file.
    Streaming {
        /// Size announced by the origin, if it did.
        size: Option<u64>,
        /// Bytes written so far.
        written: u64,
    },
    /// Every byte is in the temp file and hashed to the digest; the file
    /// is being synced and committed. Readers may send their last byte:
    /// the bytes are right, and the cache entry follows once it is durable.
    Verified {
        /// Final size.
        size: u64,
    },
    /// Verified and committed to the cache, or, if the commit failed, left
    /// out of it: either way the fill is over and its bytes were verified.
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
    /// The origin refused or broke off.
    #[error(transparent)]
    Origin(#[from] OriginError),
    /// The bytes did not hash to the digest.
    #[error("content does not match its digest (got {0})")]
    Mismatch(Digest),
    /// Size differs from the announced one.
    #[error("origin sent {got} bytes, announced {announced}")]
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
    file: OnceLock<Arc<std::fs::File>>,
    state: watch::Sender<Progress>,
    /// Recent chunks, shared by the writer and the readers.
    chunks: Chunks,
}

impl Fill {
    /// The digest being filled.
    pub fn digest(&self) -> &Digest {
        &self.digest
    }

    /// Waits until the origin answered: `Ok(Some(size))` once streaming
    /// with a known size (or done), `Ok(None)` when the size is unknown.
    pub async fn started(&self) -> Result<Option<u64>, FillError> {
        let mut rx = self.state.subscribe();
        loop {
            match &*rx.borrow_and_update() {
                Progress::Connecting => {}
                Progress::Streaming { size, .. } => return Ok(*size),
                Progress::Verified { size } | Progress::Done { size } => return Ok(Some(*size)),
                Progress::Failed(e) => return Err(e.clone()),
            }
            if rx.changed().await.is_err() {
                return Err(FillError::Abandoned);
            }
        }
    }

    /// Waits until the fill is over (committed, or verified but left out
    /// of the cache because the commit failed).
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

    /// Streams `start..end` of the blob as it arrives (see `cache::reader`).
    /// A disk failure ends the stream with [`ReadError::DiskFailed`], saying
    /// where, so the caller can fetch the rest elsewhere.
    pub fn reader(
        self: Arc<Self>,
        start: u64,
        end: u64,
        metrics: Arc<Metrics>,
    ) -> impl Stream<Item = Result<Bytes, ReadError>> + Send + 'static {
        super::reader::FillReader::new(self, start, end, metrics).into_stream()
    }

    /// A subscription to the fill's progress.
    pub(super) fn subscribe(&self) -> watch::Receiver<Progress> {
        self.state.subscribe()
    }

    /// The temp file, once the origin answered.
    pub(super) fn file(&self) -> Option<Arc<std::fs::File>> {
        self.file.get().cloned()
    }

    /// The chunks shared by this fill's writer and readers.
    pub(super) fn chunks(&self) -> &Chunks {
        &self.chunks
    }
}

/// The fills in flight, by digest.
#[derive(Default)]
pub struct Fills {
    /// std mutex: held only to look up or insert, never across an await.
    /// Shared with each [`FillGuard`] so a dying fill unregisters itself.
    map: Arc<Mutex<HashMap<Digest, Arc<Fill>>>>,
}

/// The result of asking to fill a digest (wrapped for callers by
/// [`super::Join`]).
pub(super) enum Join {
    /// This caller must run the fill (feed [`run`]).
    Leader(FillGuard),
    /// Another request is filling it already.
    Follower(Arc<Fill>),
}

impl Fills {
    /// Joins the fill of `digest`, or starts one when none is running.
    /// `present` is re-checked under the lock so a fill that just committed
    /// is not started again.
    pub(super) fn join(
        &self,
        digest: &Digest,
        present: impl Fn() -> bool,
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
            file: OnceLock::new(),
            state: tx,
            chunks: Chunks::default(),
        });
        map.insert(digest.clone(), fill.clone());
        metrics.fills_in_flight().inc();
        let guard = FillGuard {
            fill,
            map: self.map.clone(),
            staging: None,
            metrics,
            done: false,
        };
        Some(Join::Leader(guard))
    }

    /// The size of `digest`'s fill in flight, once its origin announced
    /// it (or the fill is verified).
    pub fn size_of(&self, digest: &Digest) -> Option<u64> {
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let state = map.get(digest)?.state.borrow().clone();
        match state {
            Progress::Streaming { size, .. } => size,
            Progress::Verified { size } | Progress::Done { size } => Some(size),
            Progress::Connecting | Progress::Failed(_) => None,
        }
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

/// Owned by the fill's leader (inside its permit). Its `Drop` fails the
/// fill, aborts the staging and unregisters it, unless the fill was
/// committed: readers never wait forever on a writer that went away.
pub struct FillGuard {
    fill: Arc<Fill>,
    map: Arc<Mutex<HashMap<Digest, Arc<Fill>>>>,
    /// The blob being written; dropping it uncommitted removes its bytes.
    staging: Option<Box<dyn Staging>>,
    metrics: Arc<Metrics>,
    done: bool,
}

impl FillGuard {
    /// The fill this guard answers for.
    pub(super) fn fill(&self) -> &Arc<Fill> {
        &self.fill
    }

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
        match &err {
            FillError::Origin(o) if o.is_absent() => {
                tracing::debug!(digest = %self.fill.digest, origin = o.origin(), "blob not found at the origin");
            }
            FillError::Origin(o) => {
                tracing::warn!(digest = %self.fill.digest, origin = o.origin(), error = %err, "fill failed");
            }
            _ => tracing::warn!(digest = %self.fill.digest, error = %err, "fill failed"),
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
    }
}

/// What the fill task needs from the cache when the bytes are verified.
pub trait Committer: Send + Sync {
    /// A new staging in the store, for the fill to write.
    fn stage(&self) -> impl std::future::Future<Output = io::Result<Box<dyn Staging>>> + Send;

    /// Commits the verified staging under `digest` (the store syncs it and
    /// re-checks its size).
    fn commit(
        &self,
        digest: &Digest,
        staged: Box<dyn Staging>,
        size: u64,
    ) -> impl std::future::Future<Output = std::io::Result<()>> + Send;

    /// A write failed; `needed` bytes would have been stored. A full disk
    /// (ENOSPC, EFBIG, EDQUOT) makes the cache evict to make room.
    fn write_failed(&self, err: &io::Error, needed: u64);

    /// A fill announced `size` bytes: count them against the budget while
    /// its temp file grows (issue 14: fills in flight were not counted, so
    /// the cache directory overshot `max_size` during churn).
    /// `false` when nothing was reserved (the blob is not for the budget).
    fn reserve(&self, _digest: &Digest, _size: u64) -> bool {
        false
    }

    /// The fill that reserved `size` bytes is over (committed or not).
    fn unreserve(&self, _size: u64) {}
}

/// Bytes a fill reserved against the budget, given back on drop (before
/// the commit counts them, or when the fill fails).
struct Reserved<'a, C: Committer>(&'a C, u64);

impl<C: Committer> Drop for Reserved<'_, C> {
    fn drop(&mut self) {
        self.0.unreserve(self.1);
    }
}

fn disk<C: Committer>(c: &C, e: io::Error, needed: u64) -> FillError {
    c.write_failed(&e, needed);
    FillError::Disk(e.to_string())
}

/// Runs a fill: streams `body` (of `size` bytes, when the origin said)
/// into a staging of the store (its local temp file), verifies, and
/// commits it.
///
/// Three stages run side by side so the network is never stalled by the
/// disk or the hash (`pipeline`): this task receives the body and cuts it
/// at multiples of the 256 KiB chunk; one blocking thread writes the pieces
/// and hands them to readers; another hashes them. Each has a queue of 4
/// pieces, so memory stays flat and the slowest stage holds the origin
/// back. SHA-256 (about 1.7 GB/s per core with SHA-NI) is the slowest on a
/// fast link; on its own thread its time no longer adds up with the write's
/// on every piece.
///
/// Readers get their last byte once the digest is verified
/// ([`Progress::Verified`]); the `fsync`, the rename into the store and
/// the index entry follow, and the fill counts as in flight until they are
/// done. A client never waits for the disk's writeback, and a crash before
/// the commit leaves only a temp file, swept at start. If the sync or the
/// commit fails there is simply no cache copy; the readers finish with
/// verified bytes through the open temp file.
pub(super) async fn run<C: Committer>(
    mut guard: FillGuard,
    size: Option<u64>,
    body: Body,
    committer: &C,
) {
    let digest = guard.fill.digest.clone();
    let mut staging = match committer.stage().await {
        Ok(s) => s,
        Err(e) => return guard.fail(disk(committer, e, size.unwrap_or(0))),
    };
    // The pipeline writes at offsets on a blocking thread and readers
    // follow the file as it grows: the store must stage in a local file.
    let Some(file) = staging.local_file() else {
        return guard.fail(FillError::Disk(
            "the blob store stages no local file to fill through".into(),
        ));
    };
    guard.staging = Some(staging);
    let _ = guard.fill.file.set(file.clone());
    guard.set(Progress::Streaming { size, written: 0 });
    let size_reserved = size.filter(|&s| committer.reserve(&digest, s));
    let reserved = Reserved(committer, size_reserved.unwrap_or(0));

    let (to_writer, for_writer) = tokio::sync::mpsc::channel(pipeline::QUEUE);
    let (to_hasher, for_hasher) = tokio::sync::mpsc::channel(pipeline::QUEUE);
    let writer = tokio::task::spawn_blocking({
        let (fill, file) = (guard.fill.clone(), file.clone());
        move || pipeline::write_chunks(for_writer, &file, &fill, size)
    });
    let hasher = tokio::task::spawn_blocking(move || pipeline::hash_chunks(for_hasher));
    let received = pipeline::receive(body, size, [&to_writer, &to_hasher]).await;
    drop((to_writer, to_hasher));
    // Both stages are awaited before any final state is set, so the writer
    // can never overwrite a failure with progress.
    let (written, hashed) = (writer.await, hasher.await);
    let written = match written {
        Ok(Ok(written)) => written,
        Ok(Err(e)) => {
            let needed = size.unwrap_or(*received.as_ref().unwrap_or(&0));
            return guard.fail(disk(committer, e, needed));
        }
        Err(e) => return guard.fail(FillError::Disk(e.to_string())),
    };
    if let Err(e) = received {
        return guard.fail(e);
    }
    let (hasher, hashed) = match hashed {
        Ok(done) => done,
        Err(e) => return guard.fail(FillError::Disk(e.to_string())),
    };
    if let Some(announced) = size {
        if written != announced {
            return guard.fail(FillError::Size {
                announced,
                got: written,
            });
        }
    }
    if hashed != written {
        return guard.fail(FillError::Disk(format!(
            "hashed {hashed} bytes but wrote {written}"
        )));
    }
    let actual = hasher.finish();
    if actual != digest {
        return guard.fail(FillError::Mismatch(actual));
    }
    guard.set(Progress::Verified { size: written });
    drop(reserved);
    // The commit syncs the file and renames it into the store.
    let committed = match guard.staging.take() {
        Some(staged) => committer.commit(&digest, staged, written).await,
        None => Err(io::Error::other("the fill's staging is gone")),
    };
    match committed {
        Ok(()) => guard.metrics.fill_done(FillResult::Ok),
        Err(e) => {
            // Readers already have (or are reading) verified bytes through
            // the open file; the blob just does not enter the cache.
            tracing::error!(%digest, error = %e, "verified blob could not be committed to the cache");
            committer.write_failed(&e, written);
            guard.metrics.fill_done(FillResult::DiskError);
        }
    }
    guard.set(Progress::Done { size: written });
    guard.finish();
}
