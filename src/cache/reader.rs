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
//! client must still get its blob: the reader fetches the rest of its range
//! straight from the upstream with a ranged `GET`. A reader of the whole
//! blob first re-hashes what it already sent (still readable through the
//! open temp file) and holds back its final chunk until the digest of the
//! whole stream matches. A partial range cannot be verified by anyone but
//! the client; it is passed through as the upstream sends it.

use std::collections::VecDeque;
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::Stream;
use hyper::body::Incoming;
use tokio::sync::{watch, OnceCell};

use super::fill::{Fill, FillError, Progress, CHUNK};
use crate::metrics::{Metrics, Source};
use crate::oci::Hasher;

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
    passthrough: Option<Passthrough>,
    finished: bool,
}

impl Drop for FillReader {
    fn drop(&mut self) {
        self.fill.chunks().readers.fetch_sub(1, Ordering::Relaxed);
    }
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
        fill.chunks().readers.fetch_add(1, Ordering::Relaxed);
        FillReader {
            fill,
            rx,
            start,
            pos: start,
            end,
            verified: None,
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
                    }
                }
            };
            if available > self.pos {
                let upto = available.min(self.end);
                return Some(self.take(written, size, upto).await.inspect(|buf| {
                    self.pos += buf.len() as u64;
                    self.metrics.served(Source::Upstream, buf.len() as u64);
                }));
            }
            if self.verified.is_some() {
                return Some(Err(io::Error::other(
                    "blob is shorter than the requested range",
                )));
            }
            if self.rx.changed().await.is_err() {
                return Some(Err(io::Error::other("fill abandoned")));
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
            // The chunk is still being filled (a slow upstream).
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

    /// Switches to a ranged upstream GET for `pos..end`.
    async fn start_passthrough(&mut self) -> io::Result<()> {
        let whole = self.start == 0;
        let mut hasher = None;
        if whole {
            // Hash what this client already received, from the open file.
            let mut h = Hasher::new();
            let mut at = 0;
            while at < self.pos {
                let want = (self.pos - at).min(CHUNK as u64) as usize;
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
