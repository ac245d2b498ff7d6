//! Reading files on the runtime thread when their bytes are in memory.
//!
//! A blob being served was usually just written (a fill's temp file) or is
//! read often (a hot layer): its pages are in the page cache, and copying
//! 256 KiB out of it takes tens of microseconds. Handing every such read to
//! the blocking pool, as `tokio::fs` does, costs two thread wake-ups, a
//! context switch each way and an extra copy through tokio's buffer: on a
//! warm GET that was 13,000 context switches per GiB, and a tenth of the
//! CPU of 32 clients sharing a fill. So reads first try
//! `preadv2(RWF_NOWAIT)`, which copies only what is cached and never waits
//! for the disk, and go to the blocking pool only for the rest. Kernels
//! without `RWF_NOWAIT` (before 4.14) get the blocking pool every time.

use std::fs::File;
use std::future::Future;
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use tokio::io::{AsyncRead, ReadBuf};
use tokio::task::JoinHandle;

/// Cleared the first time the kernel refuses `RWF_NOWAIT`.
static NOWAIT: AtomicBool = AtomicBool::new(true);

/// Reads into `buf` at `pos` what the page cache holds, without blocking:
/// `Some(n)` bytes read (0 at the end of the file; fewer than asked when
/// only part is cached), `None` when nothing could be read without waiting
/// for the disk.
fn read_cached(
    file: &File,
    buf: &mut [MaybeUninit<u8>],
    pos: u64,
    nowait: bool,
) -> io::Result<Option<usize>> {
    if buf.is_empty() {
        return Ok(Some(0));
    }
    if !nowait || !NOWAIT.load(Ordering::Relaxed) {
        return Ok(None);
    }
    let Ok(offset) = libc::off_t::try_from(pos) else {
        return Ok(None);
    };
    let iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    loop {
        // SAFETY: `iov` describes `buf`, which is valid for writes of its
        // length for the whole call; the kernel writes at most that many
        // bytes and reports how many, and only those are then treated as
        // initialised by the callers. The descriptor is borrowed from `file`.
        let n = unsafe { libc::preadv2(file.as_raw_fd(), &iov, 1, offset, libc::RWF_NOWAIT) };
        if let Ok(n) = usize::try_from(n) {
            return Ok(Some(n));
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EAGAIN) => return Ok(None),
            Some(libc::EOPNOTSUPP | libc::ENOSYS | libc::EINVAL) => {
                NOWAIT.store(false, Ordering::Relaxed);
                return Ok(None);
            }
            _ => return Err(err),
        }
    }
}

/// Reads exactly `len` bytes at `pos`: from the page cache on this thread
/// when they are there, the rest on the blocking pool.
pub async fn read_exact_at(file: &Arc<File>, pos: u64, len: usize) -> io::Result<Bytes> {
    read_exact_at_with(file, pos, len, true).await
}

/// [`read_exact_at`], trying the page cache only when `nowait`.
async fn read_exact_at_with(
    file: &Arc<File>,
    pos: u64,
    len: usize,
    nowait: bool,
) -> io::Result<Bytes> {
    let mut buf: Vec<u8> = Vec::with_capacity(len);
    while buf.len() < len {
        let at = pos + buf.len() as u64;
        let left = len - buf.len();
        let spare = &mut buf.spare_capacity_mut()[..left];
        match read_cached(file, spare, at, nowait)? {
            Some(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Some(n) => {
                // SAFETY: the kernel initialised the next `n` bytes.
                unsafe { buf.set_len(buf.len() + n) };
            }
            None => {
                let (file, have) = (file.clone(), buf.len());
                return tokio::task::spawn_blocking(move || {
                    buf.resize(len, 0);
                    file.read_exact_at(&mut buf[have..], pos + have as u64)
                        .map(|()| Bytes::from(buf))
                })
                .await
                .map_err(io::Error::other)?;
            }
        }
    }
    Ok(Bytes::from(buf))
}

/// `start..end` of a file as an [`AsyncRead`] that reads cached pages on
/// the polling thread and the others on the blocking pool.
pub struct FileRange {
    file: Arc<File>,
    pos: u64,
    end: u64,
    /// A blocking read in progress.
    pending: Option<JoinHandle<io::Result<Vec<u8>>>>,
    /// What a blocking read returned beyond what the caller's buffer took.
    spill: Bytes,
    /// Whether to try the page cache first.
    nowait: bool,
}

impl FileRange {
    /// Reads `start..end` of `file`.
    pub fn new(file: File, start: u64, end: u64) -> FileRange {
        FileRange {
            file: Arc::new(file),
            pos: start,
            end,
            pending: None,
            spill: Bytes::new(),
            nowait: true,
        }
    }
}

impl AsyncRead for FileRange {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if !this.spill.is_empty() {
                let n = this.spill.len().min(out.remaining());
                out.put_slice(&this.spill.split_to(n));
                return Poll::Ready(Ok(()));
            }
            if let Some(pending) = &mut this.pending {
                let data = ready!(Pin::new(pending).poll(cx)).map_err(io::Error::other)??;
                this.pending = None;
                this.pos += data.len() as u64;
                if data.is_empty() {
                    return Poll::Ready(Ok(())); // the file ended early
                }
                this.spill = Bytes::from(data);
                continue;
            }
            let want = (this.end.saturating_sub(this.pos)).min(out.remaining() as u64) as usize;
            if want == 0 {
                return Poll::Ready(Ok(()));
            }
            // SAFETY: `read_cached` writes only into the uninitialised tail,
            // and `assume_init` covers exactly the bytes it reported.
            let unfilled = unsafe { &mut out.unfilled_mut()[..want] };
            if let Some(n) = read_cached(&this.file, unfilled, this.pos, this.nowait)? {
                // SAFETY: the kernel initialised these `n` bytes.
                unsafe { out.assume_init(n) };
                out.advance(n);
                this.pos += n as u64;
                return Poll::Ready(Ok(()));
            }
            let (file, pos) = (this.file.clone(), this.pos);
            this.pending = Some(tokio::task::spawn_blocking(move || {
                let mut buf = vec![0u8; want];
                let n = file.read_at(&mut buf, pos)?;
                buf.truncate(n);
                Ok(buf)
            }));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    fn file_of(data: &[u8]) -> (tempfile::NamedTempFile, File) {
        let mut f = tempfile::NamedTempFile::new().expect("temp file");
        std::io::Write::write_all(&mut f, data).expect("write");
        let file = File::open(f.path()).expect("open");
        (f, file)
    }

    fn data(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    /// Reads `start..end` through a [`FileRange`], in reads of at most
    /// `step` bytes (smaller than a blocking read's, to spill).
    async fn range(file: File, start: u64, end: u64, nowait: bool, step: usize) -> Vec<u8> {
        let mut r = FileRange::new(file, start, end);
        r.nowait = nowait;
        let mut got = Vec::new();
        let mut buf = vec![0u8; step];
        loop {
            let n = r.read(&mut buf).await.expect("read");
            if n == 0 {
                return got;
            }
            got.extend_from_slice(&buf[..n]);
        }
    }

    #[tokio::test]
    async fn a_range_reads_exactly_its_bytes_from_memory_or_the_pool() {
        let d = data(1 << 20);
        for nowait in [true, false] {
            for step in [1000, 256 * 1024] {
                let (_keep, file) = file_of(&d);
                let got = range(file, 1000, 900_000, nowait, step).await;
                assert!(got == d[1000..900_000], "nowait {nowait}, step {step}");
            }
        }
    }

    #[tokio::test]
    async fn a_range_past_the_end_stops_at_the_end() {
        let d = data(5000);
        for nowait in [true, false] {
            let (_keep, file) = file_of(&d);
            let got = range(file, 4000, 10_000, nowait, 4096).await;
            assert!(got == d[4000..], "nowait {nowait}");
        }
    }

    #[tokio::test]
    async fn exact_reads_are_exact_or_an_error() {
        let d = data(300_000);
        let (_keep, file) = file_of(&d);
        let file = Arc::new(file);
        for nowait in [true, false] {
            let got = read_exact_at_with(&file, 12_345, 200_000, nowait)
                .await
                .expect("read");
            assert!(got[..] == d[12_345..212_345], "nowait {nowait}");
            let short = read_exact_at_with(&file, 250_000, 100_000, nowait).await;
            assert_eq!(
                short.map(|b| b.len()).map_err(|e| e.kind()),
                Err(io::ErrorKind::UnexpectedEof),
                "nowait {nowait}"
            );
        }
    }
}
