//! Parking idle HTTP/1 connections, plain and over TLS (issue 15, lean
//! connections).
//!
//! A large site keeps a keep-alive connection open from every node, and
//! most of them are idle most of the time. hyper keeps an 8 KiB read
//! buffer, an 8 KiB header write buffer and the service's future slot for
//! as long as a connection lives, and has no setting to release them while
//! idle. So once a plain HTTP/1 connection has had no request in flight for
//! [`PARK_AFTER`], it is stopped at that idle point (keep-alive disabled,
//! which hyper honours at once when nothing is in flight, without closing
//! the socket) and everything but the socket is dropped. When the client
//! sends again, a fresh hyper connection serves the socket, with the bytes
//! hyper had already read replayed first.
//!
//! A parked connection keeps its `max_connections` slots, is closed by the
//! same idle timeout (`header_read_timeout` without a request) and at
//! shutdown. A request that raced the park is answered with
//! `Connection: close` by hyper, and the connection is then closed, not
//! parked.
//!
//! Over TLS the session stays (rustls keeps its keys and a 4 KiB receive
//! buffer), and only hyper's state goes: the socket is watched for bytes,
//! and plaintext rustls had already decrypted counts as bytes. HTTP/2
//! connections are not parked: their state (HPACK tables, stream windows,
//! settings) cannot be dropped and rebuilt.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::Watcher;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::server::TlsStream;

use super::{idle, ConnCtx};

/// How long a connection is idle before it is parked. Long enough that a
/// client pulling an image (requests a few milliseconds apart) keeps its
/// connection served; short enough that idle nodes cost little.
pub const PARK_AFTER: Duration = Duration::from_secs(1);

/// Parks between two hand-backs of freed memory to the kernel.
const TRIM_EVERY: usize = 256;
/// Parks since the last hand-back.
static PARKS: AtomicUsize = AtomicUsize::new(0);
/// Whether a hand-back is running.
static TRIMMING: AtomicBool = AtomicBool::new(false);

/// Counts a park; every [`TRIM_EVERY`] parks, hands the freed buffers back
/// to the kernel. glibc keeps freed small blocks resident (and hoard raises
/// its trim threshold, see `crate::malloc`), so without this the 16 KiB of
/// buffers a parked connection gave up would stay in the resident set
/// until reused. On a blocking thread: a trim walks the heap.
fn parked_one() {
    if PARKS.fetch_add(1, Ordering::Relaxed) + 1 < TRIM_EVERY {
        return;
    }
    if TRIMMING.swap(true, Ordering::AcqRel) {
        return;
    }
    PARKS.store(0, Ordering::Relaxed);
    tokio::task::spawn_blocking(|| {
        crate::malloc::release_free_memory();
        TRIMMING.store(false, Ordering::Release);
    });
}

/// A connection that can be parked: a byte stream whose owner can wait for
/// the peer to send without a read buffer.
pub(super) trait Parkable: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    /// Resolves once the peer has sent something (or closed), so that a
    /// fresh hyper connection has something to read.
    fn until_readable(&mut self) -> impl Future<Output = io::Result<()>> + Send;
}

impl Parkable for TcpStream {
    async fn until_readable(&mut self) -> io::Result<()> {
        self.readable().await
    }
}

impl Parkable for TlsStream<TcpStream> {
    async fn until_readable(&mut self) -> io::Result<()> {
        let (tcp, session) = self.get_mut();
        // Records rustls has already taken off the socket wake nothing
        // there: if they hold plaintext (or the close), read them now. A
        // session that failed stays failed (rustls keeps the error): close.
        let state = session
            .process_new_packets()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        if state.plaintext_bytes_to_read() == 0 && !state.peer_has_closed() {
            tcp.readable().await?;
        }
        Ok(())
    }
}

impl<P: Parkable> Parkable for Box<P> {
    fn until_readable(&mut self) -> impl Future<Output = io::Result<()>> + Send {
        (**self).until_readable()
    }
}

/// How a served stretch of a connection ended.
enum Stretch<S> {
    /// Idle: the socket, with bytes read but not yet answered, and when
    /// the last request ended (None: no request in this stretch).
    Parked(Replay<S>, Option<Instant>),
    /// Closed by the client, an error, the idle timeout or shutdown.
    Closed,
}

impl ConnCtx {
    /// Serves an HTTP/1 connection, parking it whenever it is idle. `tls`
    /// tells the service which port the request came in on.
    pub(super) async fn http1_parking<S: Parkable>(
        &self,
        stream: S,
        peer: SocketAddr,
        tls: bool,
        watcher: Watcher,
    ) {
        // Held until the connection ends: graceful shutdown counts it.
        let _watcher = watcher;
        let mut stopping = self.stopping.clone();
        let mut io = Replay::new(Bytes::new(), stream);
        // When the connection last had a request in flight: a stretch that
        // served none (a TLS record without a request, say) does not move
        // the idle timeout.
        let mut idle_origin = Instant::now();
        loop {
            // Bytes of a request head came back from hyper: serve them
            // without another park, so hyper's header_read_timeout runs
            // out on a trickled head instead of restarting with every
            // stretch. (hyper does not stop at a half-read head anyway;
            // this keeps the bound if that changes.)
            let may_park = io.prefix.is_empty();
            // Boxed, so that a parked connection's task holds none of it.
            let stretch = Box::pin(self.serve_stretch(io, peer, tls, may_park)).await;
            let (back, idle_since) = match stretch {
                Stretch::Parked(io, since) => (io, since),
                Stretch::Closed => return,
            };
            io = back;
            if let Some(since) = idle_since {
                idle_origin = since;
            }
            if !io.prefix.is_empty() {
                // A request had begun arriving: serve it at once.
                continue;
            }
            let parked = ParkedGauge::new(self);
            parked_one();
            let deadline = idle_origin + self.header_read_timeout;
            tokio::select! {
                ready = io.inner.until_readable() => {
                    if ready.is_err() {
                        return;
                    }
                }
                () = tokio::time::sleep_until(deadline) => {
                    tracing::debug!(%peer, "no request within header_read_timeout; closing the parked connection");
                    return;
                }
                _ = stopping.wait_for(|s| *s) => return,
            }
            drop(parked);
        }
    }

    /// Serves `io` with a fresh hyper connection until it is idle for
    /// [`PARK_AFTER`], ends, or shutdown begins.
    async fn serve_stretch<S: Parkable>(
        &self,
        io: Replay<S>,
        peer: SocketAddr,
        tls: bool,
        may_park: bool,
    ) -> Stretch<S> {
        let activity = idle::Activity::new();
        let service = self.service(peer, tls, activity.clone());
        let mut conn = self.h1_parking.serve_connection(TokioIo::new(io), service);
        let mut stopping = self.stopping.clone();
        let idle_close = self.header_read_timeout;
        let park = PARK_AFTER.min(idle_close);
        let parks = may_park && idle_close > PARK_AFTER;
        let why = tokio::select! {
            biased;
            ended = std::future::poll_fn(|cx| conn.poll_without_shutdown(cx)) => {
                if let Err(e) = ended {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                }
                return Stretch::Closed;
            }
            _ = stopping.wait_for(|s| *s) => None,
            // A timeout at or below PARK_AFTER closes instead of parking.
            () = activity.idle_for(idle_close), if !parks => None,
            () = activity.idle_for(park), if parks => Some(activity.started()),
        };
        // Stop at the idle point: with nothing in flight hyper finishes at
        // once; a request that slipped in is answered (with
        // `Connection: close`) first.
        Pin::new(&mut conn).graceful_shutdown();
        let finished = std::future::poll_fn(|cx| conn.poll_without_shutdown(cx)).await;
        if finished.is_err() {
            return Stretch::Closed;
        }
        let Some(started) = why else {
            tracing::debug!(%peer, "closing an idle connection (idle timeout or shutdown)");
            return Stretch::Closed;
        };
        if activity.started() != started {
            // hyper told that client the connection closes.
            return Stretch::Closed;
        }
        let idle_since = (started > 0).then(|| activity.idle_since());
        let parts = conn.into_parts();
        let Replay { prefix, inner } = parts.io.into_inner();
        let prefix = match (parts.read_buf.is_empty(), prefix.is_empty()) {
            (true, _) => prefix,
            (false, true) => parts.read_buf,
            (false, false) => {
                let mut both = BytesMut::with_capacity(parts.read_buf.len() + prefix.len());
                both.extend_from_slice(&parts.read_buf);
                both.extend_from_slice(&prefix);
                both.freeze()
            }
        };
        Stretch::Parked(Replay::new(prefix, inner), idle_since)
    }
}

/// Counts a connection in `hoard_connections_parked` while it lives.
struct ParkedGauge<'a>(&'a ConnCtx);

impl<'a> ParkedGauge<'a> {
    fn new(ctx: &'a ConnCtx) -> ParkedGauge<'a> {
        ctx.metrics.connections_parked().inc();
        ParkedGauge(ctx)
    }
}

impl Drop for ParkedGauge<'_> {
    fn drop(&mut self) {
        self.0.metrics.connections_parked().dec();
    }
}

/// A socket with bytes already taken off it that must be read first.
pub struct Replay<S> {
    prefix: Bytes,
    inner: S,
}

impl<S> Replay<S> {
    fn new(prefix: Bytes, inner: S) -> Replay<S> {
        Replay { prefix, inner }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Replay<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Replay<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn replay_yields_the_prefix_before_the_socket() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut client = TcpStream::connect(addr).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        client.write_all(b" world").await.unwrap();
        drop(client);
        let mut io = Replay::new(Bytes::from_static(b"hello"), server);
        let mut got = Vec::new();
        io.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"hello world");
    }
}
