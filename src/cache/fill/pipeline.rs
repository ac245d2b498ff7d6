//! The three stages of a fill, each on its own thread so none waits for
//! another's work on every piece: receiving the origin's body and cutting
//! it into chunk-aligned pieces, writing them into the temp file (and
//! handing them to readers), and hashing them. See [`super::run`].

use std::io;
use std::os::unix::fs::FileExt;

use bytes::{Bytes, BytesMut};

use futures_util::StreamExt;

use super::{Body, Fill, FillError, Progress, CHUNK};

/// Pieces queued between the fill's network task and its writer thread
/// (at most `QUEUE` × [`CHUNK`] bytes in flight).
pub(super) const QUEUE: usize = 4;

/// The writer starts the disk's writeback every this many bytes (see
/// [`start_writeback`]): often enough that the `fsync` before the commit
/// has little left, seldom enough that the call costs nothing per piece.
const WRITEBACK: u64 = 4 << 20;

/// How long the receiver waits for more bytes before handing a partial
/// chunk to the writer, so that readers of a slow origin see progress.
const FLUSH_AFTER: std::time::Duration = std::time::Duration::from_millis(5);

/// Receives the body and hands it to the writer in pieces that never cross
/// a multiple of [`CHUNK`] in the blob, so whole chunks can be shared by
/// readers (see [`super::reader`]). A piece is sent when it reaches the
/// next boundary, or early when the origin pauses for [`FLUSH_AFTER`], so
/// readers of a slow origin see bytes as they come. Returns the bytes
/// received. A full queue makes this wait (back-pressure on the origin),
/// never buffer more. Timing out on a stalled origin is the body's job (the
/// origin client's read timeout): waiting for the next item is cancel-safe,
/// so the flush timer here does not restart it.
pub(super) async fn receive(
    mut body: Body,
    size: Option<u64>,
    [writer, hasher]: [&tokio::sync::mpsc::Sender<Bytes>; 2],
) -> Result<u64, FillError> {
    let chunk = CHUNK as u64;
    let send = |piece: Bytes| {
        let (writer, hasher) = (writer.clone(), hasher.clone());
        async move {
            // The writer first: readers wait on it, the hash only at the end.
            writer
                .send(piece.clone())
                .await
                .map_err(|_| FillError::Disk("the fill's writer stopped".into()))?;
            hasher
                .send(piece)
                .await
                .map_err(|_| FillError::Disk("the fill's hasher stopped".into()))
        }
    };
    // Bytes handed to the writer; `buf` holds those that follow.
    let mut sent: u64 = 0;
    let mut buf = BytesMut::new();
    loop {
        let item = if buf.is_empty() {
            body.next().await
        } else {
            match tokio::time::timeout(FLUSH_AFTER, body.next()).await {
                Ok(item) => item,
                Err(_) => {
                    // The origin paused: let readers have what is here.
                    // `split` keeps the rest of the allocation for the chunk.
                    let piece = buf.split().freeze();
                    sent += piece.len() as u64;
                    send(piece).await?;
                    continue;
                }
            }
        };
        let Some(item) = item else { break };
        let mut data = item?;
        let received = sent + buf.len() as u64 + data.len() as u64;
        if let Some(announced) = size {
            if received > announced {
                return Err(FillError::Size {
                    announced,
                    got: received,
                });
            }
        }
        while !data.is_empty() {
            let at = sent + buf.len() as u64;
            let room = (chunk - at % chunk) as usize;
            if buf.is_empty() && room == CHUNK && data.len() >= CHUNK {
                // A whole chunk inside one frame: pass it on without a copy.
                let piece = data.split_to(CHUNK);
                sent += chunk;
                send(piece).await?;
                continue;
            }
            if buf.capacity() == 0 {
                buf = BytesMut::with_capacity(room);
            }
            let take = room.min(data.len());
            buf.extend_from_slice(&data.split_to(take));
            if take == room {
                let piece = buf.split().freeze();
                sent += piece.len() as u64;
                send(piece).await?;
            }
        }
    }
    if !buf.is_empty() {
        let piece = buf.split().freeze();
        sent += piece.len() as u64;
        send(piece).await?;
    }
    Ok(sent)
}

/// The fill's hashing stage: hashes every piece in order. Returns the hash
/// and the bytes hashed when the receiver closes the queue.
pub(super) fn hash_chunks(mut rx: tokio::sync::mpsc::Receiver<Bytes>) -> (crate::oci::Hasher, u64) {
    let mut hasher = crate::oci::Hasher::new();
    let mut hashed: u64 = 0;
    while let Some(piece) = rx.blocking_recv() {
        hasher.update(&piece);
        hashed += piece.len() as u64;
    }
    (hasher, hashed)
}

/// The fill's writing stage: writes each piece at its offset, offers it to
/// readers, then publishes the progress. Ends when the receiver closes the
/// queue; returns the bytes written.
pub(super) fn write_chunks(
    mut rx: tokio::sync::mpsc::Receiver<Bytes>,
    file: &std::fs::File,
    fill: &Fill,
    size: Option<u64>,
) -> io::Result<u64> {
    let chunk = CHUNK as u64;
    let mut written: u64 = 0;
    // Bytes handed to the disk's writeback so far.
    let mut flushed: u64 = 0;
    while let Some(piece) = rx.blocking_recv() {
        file.write_all_at(&piece, written)?;
        let len = piece.len() as u64;
        // Only a chunk that arrived whole is offered; readers read the
        // others back from the file.
        let whole = written.is_multiple_of(chunk) && (len == chunk || Some(written + len) == size);
        if whole {
            fill.chunks.publish(written / chunk, piece);
        }
        written += len;
        fill.state
            .send_replace(Progress::Streaming { size, written });
        // After the readers are woken: writeback is for the commit, later.
        if written - flushed >= WRITEBACK {
            start_writeback(file, flushed, written - flushed);
            flushed = written;
        }
    }
    Ok(written)
}

/// Starts writing `len` bytes at `offset` back to the disk without waiting
/// (`sync_file_range(SYNC_FILE_RANGE_WRITE)`), so the `fsync` before the
/// commit finds little left to do and the blob enters the store soon after
/// its last byte arrived. Advisory: an error here shows again at that
/// `fsync`.
fn start_writeback(file: &std::fs::File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
        return;
    };
    // SAFETY: the descriptor is open for the whole call (borrowed from
    // `file`); the call reads no memory of ours.
    unsafe {
        libc::sync_file_range(file.as_raw_fd(), offset, len, libc::SYNC_FILE_RANGE_WRITE);
    }
}
