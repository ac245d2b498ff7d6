//! Reading a blob while its fill is in progress.
//!
//! A reader follows the fill's temp file up to the bytes written so far,
//! holding back the last byte of its range until the fill is verified, so a
//! response never completes on bytes that may fail their digest check.
//!
//! Readers take the file in the fill's aligned chunks ([`CHUNK`], 256 KiB)
//! through [`Chunks`]: the last few chunks the writer wrote, and the last
//! few any reader read back from the file, stay in memory as refcounted
//! `Bytes`. A reader at the fill's front takes the writer's chunk without a
//! syscall or a thread hop, and readers close behind each other (32 nodes
//! pulling one layer) share one `pread` per chunk instead of one each.
//! Memory is bounded by the slots, whatever the blob size or the readers.
//!
//! When the fill fails on the local disk (full, quota, I/O error) the
//! client must still get its blob, but the cache does not know where else
//! to find it: the reader ends with [`ReadError::DiskFailed`], a [`Resume`]
//! that says how far it got, and the layer that chose the origin
//! (`crate::policy`) fetches the rest. [`Resume::hash_prefix`] re-hashes
//! the blob's first bytes (still readable through the open temp file), so
//! the rest can be verified before the reader's last byte, whatever its
//! range.

use std::collections::VecDeque;
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::Stream;
use tokio::sync::{watch, OnceCell};

use super::fill::{Fill, FillError, Progress, CHUNK};
use crate::metrics::{Metrics, Source};
use crate::oci::{Digest, Hasher};

/// Chunks the writer just wrote, kept for readers at the fill's front (4:
/// a client a megabyte behind the writer still reads none back).
const FRONT_SLOTS: usize = 4;
/// Chunks readers read back from the file, kept for the readers behind
/// when there are several (readers of one fill keep within this window,
/// since those behind take chunks without a read and catch up with the one
/// in front). With the writer's and the hasher's queues (4 pieces each), a
/// fill holds at most (4 + 12 + 8) × 256 KiB = 6 MiB, however many follow
/// it.
const BEHIND_SLOTS: usize = 12;

/// A chunk of a fill, filled once by whoever gets to it first.
type Slot = Arc<OnceCell<Bytes>>;

/// Recent chunks of one fill, by chunk index. Two bounded FIFOs, so a fast
/// writer cannot push out the chunks that lagging readers share.
#[derive(Default)]
pub struct Chunks {
    /// std mutex: held only to find or insert a slot, never across an await.
    slots: Mutex<ChunkSlots>,
    /// Readers following the fill: a lone reader has nobody to share a
    /// chunk it read with, so it keeps none (memory of parallel fills).
    readers: AtomicUsize,
}

#[derive(Default)]
struct ChunkSlots {
    front: VecDeque<(u64, Slot)>,
    behind: VecDeque<(u64, Slot)>,
}

impl ChunkSlots {
    fn find(&self, index: u64) -> Option<&Slot> {
        self.front
            .iter()
            .chain(self.behind.iter())
            .find(|(i, _)| *i == index)
            .map(|(_, s)| s)
    }
}

fn push(q: &mut VecDeque<(u64, Slot)>, index: u64, slot: Slot, max: usize) {
    if q.len() >= max {
        q.pop_front();
    }
    q.push_back((index, slot));
}

impl Chunks {
    /// Offers a chunk the writer just wrote.
    pub(super) fn publish(&self, index: u64, data: Bytes) {
        let mut s = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        push(
            &mut s.front,
            index,
            Arc::new(OnceCell::new_with(Some(data))),
            FRONT_SLOTS,
        );
    }

    /// The slot of chunk `index`, created empty when no reader has it
    /// (and kept for the others only when there are others).
    fn slot(&self, index: u64) -> Slot {
        let mut s = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(slot) = s.find(index) {
            return slot.clone();
        }
        let slot = Slot::default();
        if self.readers.load(Ordering::Relaxed) > 1 {
            push(&mut s.behind, index, slot.clone(), BEHIND_SLOTS);
        }
        slot
    }
}

/// State of one reader.
pub struct FillReader {
    fill: Arc<Fill>,
    rx: watch::Receiver<Progress>,
    start: u64,
    pos: u64,
    end: u64,
    /// Set once the fill was seen done (verified): its size. A later state
    /// cannot take back verified bytes.
    verified: Option<u64>,
    metrics: Arc<Metrics>,
    finished: bool,
}

impl Drop for FillReader {
    fn drop(&mut self) {
        self.fill.chunks().readers.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Why a fill reader stopped before the end of its range.
#[derive(Debug)]
pub enum ReadError {
    /// The cache's disk failed: the bytes before [`Resume::at`] were
    /// delivered, the rest must come from elsewhere.
    DiskFailed(Resume),
    /// The fill failed (origin, digest, size) or reading it did: the
    /// response must abort.
    Failed(io::Error),
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadError::DiskFailed(r) => write!(
                f,
                "cache disk failed at byte {} of {}: {}",
                r.at,
                r.fill.digest(),
                r.error
            ),
            ReadError::Failed(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for ReadError {}

impl From<ReadError> for io::Error {
    fn from(e: ReadError) -> io::Error {
        match e {
            ReadError::Failed(e) => e,
            other => io::Error::other(other.to_string()),
        }
    }
}

/// Where a reader stopped when the cache's disk failed under its fill.
pub struct Resume {
    fill: Arc<Fill>,
    /// First byte of the reader's range.
    pub start: u64,
    /// First byte not delivered.
    pub at: u64,
    /// End of the reader's range (exclusive).
    pub end: u64,
    /// What the disk said.
    pub error: String,
}

impl std::fmt::Debug for Resume {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resume")
            .field("digest", self.fill.digest())
            .field("start", &self.start)
            .field("at", &self.at)
            .field("end", &self.end)
            .field("error", &self.error)
            .finish()
    }
}

impl Resume {
    /// The blob being read.
    pub fn digest(&self) -> &Digest {
        self.fill.digest()
    }

    /// The hash of the blob's first bytes, read back from the fill's open
    /// temp file, and how many bytes it covers: all of `0..at` when the file
    /// holds them (the fill writes from byte 0, so a reader of the whole blob
    /// is always in that case), else as many as the file holds. With it a
    /// reader verifies the rest it fetches elsewhere before sending its last
    /// byte, whatever range it reads.
    pub async fn hash_prefix(&self) -> io::Result<(Hasher, u64)> {
        let mut h = Hasher::for_digest(self.digest());
        let Some(file) = self.fill.file() else {
            return Ok((h, 0));
        };
        let held = file.metadata()?.len();
        let upto = self.at.min(held);
        let mut pos = 0;
        while pos < upto {
            let want = (upto - pos).min(CHUNK as u64) as usize;
            let chunk = super::pagecache::read_exact_at(&file, pos, want).await?;
            h.update(&chunk);
            pos += chunk.len() as u64;
        }
        Ok((h, upto))
    }
}

impl FillReader {
    /// A reader of `start..end`.
    pub fn new(fill: Arc<Fill>, start: u64, end: u64, metrics: Arc<Metrics>) -> FillReader {
        let rx = fill.subscribe();
        fill.chunks().readers.fetch_add(1, Ordering::Relaxed);
        FillReader {
            fill,
            rx,
            start,
            pos: start,
            end,
            verified: None,
            metrics,
            finished: false,
        }
    }

    /// The reader as a body stream.
    pub fn into_stream(self) -> impl Stream<Item = Result<Bytes, ReadError>> + Send + 'static {
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

    async fn next_chunk(&mut self) -> Option<Result<Bytes, ReadError>> {
        if self.pos >= self.end {
            return None;
        }
        loop {
            // `written`: bytes in the file; `available`: what may be sent;
            // `size`: the blob's, when known.
            let (written, available, size) = match self.verified {
                Some(size) => (size, size, Some(size)),
                None => {
                    let state = self.rx.borrow_and_update().clone();
                    match state {
                        Progress::Connecting => (0, 0, None),
                        Progress::Streaming { written, size } => {
                            (written, written.min(self.end - 1), size)
                        }
                        Progress::Verified { size } | Progress::Done { size } => {
                            self.verified = Some(size);
                            (size, size, Some(size))
                        }
                        Progress::Failed(FillError::Disk(error)) => {
                            return Some(Err(ReadError::DiskFailed(Resume {
                                fill: self.fill.clone(),
                                start: self.start,
                                at: self.pos,
                                end: self.end,
                                error,
                            })));
                        }
                        Progress::Failed(e) => {
                            return Some(Err(failed(format!(
                                "fill of {} failed: {e}",
                                self.fill.digest()
                            ))));
                        }
                    }
                }
            };
            if available > self.pos {
                let upto = available.min(self.end);
                let taken = self.take(written, size, upto).await;
                return Some(taken.map_err(ReadError::Failed).inspect(|buf| {
                    self.pos += buf.len() as u64;
                    self.metrics.served(Source::Upstream, buf.len() as u64);
                }));
            }
            if self.verified.is_some() {
                return Some(Err(failed("blob is shorter than the requested range")));
            }
            if self.rx.changed().await.is_err() {
                return Some(Err(failed("fill abandoned")));
            }
        }
    }

    /// The bytes from `pos` up to `upto` (or the end of `pos`'s chunk):
    /// from the shared chunk once the file holds all of it (`written` bytes
    /// of a blob of `size`), else straight from the file.
    async fn take(&self, written: u64, size: Option<u64>, upto: u64) -> io::Result<Bytes> {
        let chunk = CHUNK as u64;
        let index = self.pos / chunk;
        let base = index * chunk;
        if written < base + chunk && size != Some(written) {
            // The chunk is still being filled (a slow origin).
            return self.read_file(self.pos, (upto - self.pos) as usize).await;
        }
        let len = (written - base).min(chunk) as usize;
        let slot = self.fill.chunks().slot(index);
        let data = slot
            .get_or_try_init(|| self.read_file(base, len))
            .await?
            .clone();
        let from = (self.pos - base) as usize;
        let to = ((upto - base) as usize).min(data.len());
        if from >= to {
            // A chunk shorter than the file says: never expected, since the
            // writer publishes whole chunks; read exactly what is needed.
            let want = (upto - self.pos).min(chunk - (self.pos - base)) as usize;
            return self.read_file(self.pos, want).await;
        }
        Ok(data.slice(from..to))
    }

    /// One positional read of `want` bytes at `pos` of the temp file: on
    /// this thread from the page cache, where a fill's fresh bytes are, else
    /// on the blocking pool ([`super::pagecache`]). The buffer is allocated
    /// here, on a runtime thread, so chunk memory stays in the runtime
    /// threads' malloc arenas instead of spreading over one arena per
    /// blocking thread (peak RSS).
    async fn read_file(&self, pos: u64, want: usize) -> io::Result<Bytes> {
        let file = self
            .fill
            .file()
            .ok_or_else(|| io::Error::other("fill has data but no file"))?;
        super::pagecache::read_exact_at(&file, pos, want).await
    }
}

/// A read that must abort the response.
fn failed(msg: impl Into<String>) -> ReadError {
    ReadError::Failed(io::Error::other(msg.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_writers_chunks_are_shared_and_bounded() {
        let chunks = Chunks::default();
        for i in 0..=FRONT_SLOTS as u64 {
            chunks.publish(i, Bytes::from(vec![i as u8; 4]));
        }
        // The newest are there, filled, without a read.
        let last = chunks.slot(FRONT_SLOTS as u64);
        assert_eq!(last.get().map(|b| b[0]), Some(FRONT_SLOTS as u8));
        // The oldest was pushed out: its slot comes back empty.
        assert!(chunks.slot(0).get().is_none());
    }

    #[test]
    fn read_back_chunks_are_kept_only_for_other_readers() {
        let chunks = Chunks::default();
        chunks.readers.store(1, Ordering::Relaxed);
        assert!(
            !Arc::ptr_eq(&chunks.slot(7), &chunks.slot(7)),
            "a lone reader keeps nothing"
        );
        chunks.readers.store(2, Ordering::Relaxed);
        let first = chunks.slot(7);
        assert!(Arc::ptr_eq(&first, &chunks.slot(7)), "two readers share");
        for i in 100..100 + BEHIND_SLOTS as u64 {
            chunks.slot(i);
        }
        assert!(
            !Arc::ptr_eq(&first, &chunks.slot(7)),
            "the window is bounded"
        );
    }
}
