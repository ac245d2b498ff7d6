//! The listeners: plain HTTP (HTTP/1.1 and h2c) and optionally HTTPS
//! (rustls; HTTP/2 or HTTP/1.1 by ALPN), connection limits, graceful shutdown.
//!
//! Every accepted connection goes through the same steps:
//! 1. take one of `max_connections` slots, or be closed at once (counted in
//!    `hoard_connections_rejected_total`): past the limit, refusing fast is
//!    kinder to clients (they retry elsewhere) than a queue that times out;
//! 2. find out what the client speaks within `header_read_timeout`: a TLS
//!    ClientHello on the plain port gets a quick 400 ([`sniff`]), a TLS
//!    handshake on the TLS port picks HTTP/2 or HTTP/1.1 by ALPN ([`tls`]);
//! 3. hand the stream to hyper, whose HTTP/1 side enforces
//!    `header_read_timeout` and `max_header_bytes` on every request head;
//! 4. close the connection, HTTP/1 or HTTP/2, once no request has been in
//!    flight for `header_read_timeout` ([`idle`]); meanwhile an HTTP/1
//!    connection idle for a second gives up hyper's buffers ([`park`]).
//!
//! Step 1 also takes one of `max_connections_per_address` slots for the
//! peer's address ([`per_addr`]), so one client cannot hold them all.
//!
//! On shutdown the listeners close (new clients are refused by the kernel),
//! hyper finishes in-flight responses and closes idle connections, and blob
//! fills still streaming into the cache get what is left of `shutdown_grace`
//! so a download interrupted by a restart is not wasted.

mod idle;
mod log;
mod park;
mod per_addr;
mod sniff;
mod tls;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_rustls::server::TlsStream;

use crate::admin::Admin;
use crate::cache::Cache;
use crate::config::Config;
use crate::http::ConnInfo;
use crate::metrics::Metrics;
use crate::registry::Registry;
use sniff::Sniffed;
pub use tls::{TlsCerts, TlsError};

/// How often the shutdown checks whether the last fills are done. Fills have
/// no completion signal of their own; a poll this coarse costs nothing.
const FILL_POLL: Duration = Duration::from_millis(25);

/// The limits a listener enforces, taken from the config once at start.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Most connections open at once, over both listeners.
    pub max_connections: usize,
    /// Most connections open at once from one client address.
    pub max_connections_per_address: usize,
    /// Longest a client may take to send a request head (or, on the TLS
    /// port, to finish the handshake), and longest a connection (HTTP/1 or
    /// HTTP/2) stays open with no request in flight.
    pub header_read_timeout: Duration,
    /// Largest request head accepted (HTTP/1: 431 past it).
    pub max_header_bytes: usize,
    /// How long in-flight responses and fills get after shutdown was asked.
    pub shutdown_grace: Duration,
}

impl Limits {
    /// The limits configured in `mirror.toml`.
    pub fn from_config(config: &Config) -> Limits {
        Limits {
            max_connections: config.max_connections,
            max_connections_per_address: config.max_connections_per_address,
            header_read_timeout: config.header_read_timeout,
            max_header_bytes: config.max_header_bytes,
            shutdown_grace: config.shutdown_grace,
        }
    }
}

/// The sockets to serve: the plain-HTTP one, and optionally the TLS one
/// with its (reloadable) certificate.
pub struct Listeners {
    /// Plain HTTP/1.1 and h2c.
    pub plain: TcpListener,
    /// HTTPS, when `[tls]` is configured.
    pub tls: Option<(TcpListener, Arc<TlsCerts>)>,
}

/// What the serve loop works on, besides its sockets.
pub struct Shared {
    /// Answers requests.
    pub registry: Arc<Registry>,
    /// Answers `/_hoard/` (the operator API), when there is one; without
    /// it those paths go to `registry`, which does not know them.
    pub admin: Option<Arc<Admin>>,
    /// Asked how many fills are still running at shutdown.
    pub cache: Arc<Cache>,
    /// Connection gauges and counters.
    pub metrics: Arc<Metrics>,
}

/// Serves `listeners` until `shutdown` resolves, then drains (see the module
/// doc). Each message on `reload` reads the TLS certificate files again;
/// the channel may be closed when nothing will ever ask for a reload.
pub async fn serve(
    listeners: Listeners,
    shared: Shared,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
    mut reload: mpsc::Receiver<()>,
) {
    let (stop_tx, stop_rx) = watch::channel(false);
    let ctx = Arc::new(ConnCtx::new(&shared, &limits, stop_rx));
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let per_address = per_addr::PerAddress::new(limits.max_connections_per_address);
    let graceful = GracefulShutdown::new();
    let mut tasks = JoinSet::new();
    let Listeners { plain, tls } = listeners;
    let (tls_listener, certs) = match tls {
        Some((l, c)) => (Some(l), Some(c)),
        None => (None, None),
    };
    let mut reload_open = true;
    tokio::pin!(shutdown);
    loop {
        let (accepted, secure) = tokio::select! {
            a = plain.accept() => (a, None),
            a = accept_opt(tls_listener.as_ref()) => (a, certs.as_ref().map(|c| c.current())),
            msg = reload.recv(), if reload_open => {
                match (msg, &certs) {
                    (None, _) => reload_open = false,
                    (Some(()), Some(certs)) => {
                        // Off the accept loop: a slow disk must not stall accepts.
                        let certs = certs.clone();
                        tokio::spawn(async move { certs.reload_logged().await });
                    }
                    (Some(()), None) => {
                        tracing::info!("reload asked, but no [tls] is configured: nothing to reload");
                    }
                }
                continue;
            }
            Some(joined) = tasks.join_next(), if !tasks.is_empty() => {
                if let Err(e) = joined {
                    if e.is_panic() {
                        tracing::error!(error = %e, "a connection task panicked");
                    }
                }
                continue;
            }
            () = &mut shutdown => break,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Some(slot) = Slot::take(&slots, &shared.metrics) else {
            shared.metrics.connection_rejected();
            tracing::debug!(%peer, limit = limits.max_connections, "max_connections open; closing the new connection");
            drop(stream);
            continue;
        };
        let Some(addr_slot) = per_address.take(peer.ip()) else {
            shared.metrics.connection_rejected();
            tracing::debug!(%peer, limit = limits.max_connections_per_address, "max_connections_per_address open; closing the new connection");
            drop(stream);
            continue;
        };
        let ctx = ctx.clone();
        let watcher = graceful.watcher();
        tasks.spawn(async move {
            let _slot = (slot, addr_slot);
            ctx.connection(stream, peer, secure, watcher).await;
        });
    }

    // Stop accepting: closing the sockets makes the kernel refuse newcomers.
    drop(plain);
    drop(tls_listener);
    let deadline = Instant::now() + limits.shutdown_grace;
    let _ = stop_tx.send(true);
    tracing::info!(
        connections = graceful.count(),
        fills = shared.cache.fills_in_flight(),
        grace = ?limits.shutdown_grace,
        "shutting down: finishing in-flight responses and fills"
    );
    let drained = async {
        graceful.shutdown().await;
        while tasks.join_next().await.is_some() {}
    };
    if tokio::time::timeout_at(deadline, drained).await.is_err() {
        tracing::warn!(
            connections = tasks.len(),
            "grace period over; closing the remaining connections"
        );
    }
    tasks.shutdown().await;
    while shared.cache.fills_in_flight() > 0 {
        if Instant::now() >= deadline {
            tracing::warn!(
                fills = shared.cache.fills_in_flight(),
                "grace period over; abandoning unfinished fills (their temp files are removed at next start)"
            );
            break;
        }
        tokio::time::sleep(FILL_POLL).await;
    }
    tracing::info!("shut down");
}

/// Accepts on `listener`, or waits forever when there is none, so one
/// `select!` serves both the plain and the optional TLS socket.
async fn accept_opt(listener: Option<&TcpListener>) -> std::io::Result<(TcpStream, SocketAddr)> {
    match listener {
        Some(l) => l.accept().await,
        None => std::future::pending().await,
    }
}

/// One of the `max_connections` slots, held for a connection's life; keeps
/// `hoard_connections_open` equal to the slots in use.
struct Slot {
    _permit: OwnedSemaphorePermit,
    metrics: Arc<Metrics>,
}

impl Slot {
    fn take(slots: &Arc<Semaphore>, metrics: &Arc<Metrics>) -> Option<Slot> {
        let permit = slots.clone().try_acquire_owned().ok()?;
        metrics.connections_open().inc();
        Some(Slot {
            _permit: permit,
            metrics: metrics.clone(),
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.metrics.connections_open().dec();
    }
}

/// Everything a connection task needs, shared by all of them.
struct ConnCtx {
    front: Arc<Front>,
    /// For the HTTP/2 preface or ALPN `h2`.
    h2: auto::Builder<TokioExecutor>,
    /// For clients that said HTTP/1.1 (by their first bytes or by ALPN),
    /// whose connections are parked when idle (`park`).
    h1_parking: hyper::server::conn::http1::Builder,
    header_read_timeout: Duration,
    /// Turns true at shutdown: connections still in their first steps
    /// (sniffing, TLS handshake) give up instead of holding the drain.
    stopping: watch::Receiver<bool>,
    metrics: Arc<Metrics>,
}

/// A response on its way: boxed, so that hyper's per-connection slot for
/// it is a pointer, not the whole request's state, and so that an
/// HTTP/1 connection can be stopped at an idle point (`park` needs the
/// future to be `Unpin`).
type Responding = std::pin::Pin<
    Box<dyn Future<Output = Result<hyper::Response<idle::TrackedBody>, Infallible>> + Send>,
>;

impl ConnCtx {
    fn new(shared: &Shared, limits: &Limits, stopping: watch::Receiver<bool>) -> ConnCtx {
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX));
        let mut h1_parking = hyper::server::conn::http1::Builder::new();
        h1_parking
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout)
            .max_buf_size(limits.max_header_bytes);
        ConnCtx {
            front: Arc::new(Front {
                registry: shared.registry.clone(),
                admin: shared.admin.clone(),
            }),
            h2: builder.http2_only(),
            h1_parking,
            header_read_timeout: limits.header_read_timeout,
            stopping,
            metrics: shared.metrics.clone(),
        }
    }

    /// The service of one connection: requests counted in `activity`.
    fn service(
        &self,
        peer: SocketAddr,
        tls: bool,
        activity: Arc<idle::Activity>,
    ) -> impl hyper::service::Service<
        hyper::Request<hyper::body::Incoming>,
        Response = hyper::Response<idle::TrackedBody>,
        Error = Infallible,
        Future = Responding,
    > + Clone
           + Send
           + 'static {
        let front = self.front.clone();
        service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
            let front = front.clone();
            let in_flight = activity.start();
            req.extensions_mut().insert(ConnInfo { peer, tls });
            let line = log::Line::start(&req, peer);
            let responding: Responding = Box::pin(async move {
                let resp = line.finish(front.respond(req).await);
                Ok::<_, Infallible>(resp.map(|b| idle::TrackedBody::new(b, in_flight)))
            });
            responding
        })
    }

    /// Runs one connection to its end. `tls` is the certificate config that
    /// was current when it was accepted (None on the plain port).
    async fn connection(
        &self,
        stream: TcpStream,
        peer: SocketAddr,
        tls: Option<Arc<ServerConfig>>,
        watcher: Watcher,
    ) {
        let _ = stream.set_nodelay(true);
        // Every path but the parked HTTP/1 one is boxed: a connection task
        // is sized for its largest branch for its whole life, and rustls'
        // state or hyper's HTTP/2 connection made every idle plain
        // connection carry several KB more (benches/scale.py).
        match tls {
            None => {
                let mut stopping = self.stopping.clone();
                let sniffed = tokio::select! {
                    s = sniff::sniff(&stream, self.header_read_timeout) => s,
                    _ = stopping.wait_for(|s| *s) => return,
                };
                match sniffed {
                    Sniffed::TlsHello => Box::pin(sniff::reject_tls(stream)).await,
                    Sniffed::Http1 => self.http1_parking(stream, peer, false, watcher).await,
                    Sniffed::Http2 => Box::pin(self.http2(stream, peer, false, watcher)).await,
                    Sniffed::Closed => {}
                    Sniffed::TimedOut => {
                        tracing::debug!(%peer, "no request within header_read_timeout; closing");
                    }
                }
            }
            Some(config) => Box::pin(self.tls_connection(stream, peer, config, watcher)).await,
        }
    }

    /// A connection on the TLS port: the handshake, then HTTP over it.
    async fn tls_connection(
        &self,
        stream: TcpStream,
        peer: SocketAddr,
        config: Arc<ServerConfig>,
        watcher: Watcher,
    ) {
        // Boxed, so that the handshake's state is freed once it is done.
        let Some(tls) = Box::pin(self.tls_handshake(stream, peer, config)).await else {
            return;
        };
        if tls.get_ref().1.alpn_protocol() == Some(b"h2".as_slice()) {
            // Boxed: hyper's HTTP/2 connection is several KB, and inline
            // it would size every parked HTTP/1 connection too.
            Box::pin(self.http2(tls, peer, true, watcher)).await;
        } else {
            self.http1_parking(tls, peer, true, watcher).await;
        }
    }

    /// The TLS handshake within `header_read_timeout`, given up at
    /// shutdown. The session comes back boxed: rustls' connection is
    /// 1.2 KB, and a future that moves it from state to state (the park
    /// loop does) keeps a slot for each.
    async fn tls_handshake(
        &self,
        stream: TcpStream,
        peer: SocketAddr,
        config: Arc<ServerConfig>,
    ) -> Option<Box<TlsStream<TcpStream>>> {
        let handshake = tokio::time::timeout(
            self.header_read_timeout,
            tokio_rustls::TlsAcceptor::from(config).accept(stream),
        );
        let mut stopping = self.stopping.clone();
        let done = tokio::select! {
            r = handshake => r,
            _ = stopping.wait_for(|s| *s) => return None,
        };
        match done {
            Ok(Ok(tls)) => Some(Box::new(tls)),
            // Scanners and clients that distrust the certificate end
            // here; their side of the story is in their own logs.
            Ok(Err(e)) => {
                tracing::debug!(%peer, error = %e, "TLS handshake failed");
                None
            }
            Err(_) => {
                tracing::debug!(%peer, "TLS handshake timed out");
                None
            }
        }
    }

    /// Serves HTTP/2 on an established stream under graceful shutdown.
    async fn http2<I>(&self, io: I, peer: SocketAddr, tls: bool, watcher: Watcher)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let activity = idle::Activity::new();
        let service = self.service(peer, tls, activity.clone());
        let conn = self.h2.serve_connection(TokioIo::new(io), service);
        tokio::select! {
            ended = watcher.watch(conn) => {
                if let Err(e) = ended {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                }
            }
            // Dropping the connection closes the socket; nothing is in flight.
            () = activity.idle_for(self.header_read_timeout) => {
                tracing::debug!(%peer, "no request within header_read_timeout; closing the idle connection");
            }
        }
    }
}

/// Where a request goes: the operator API for `/_hoard/`, the registry
/// (the `/v2` protocol, `/token`, health and metrics) for the rest.
struct Front {
    registry: Arc<Registry>,
    admin: Option<Arc<Admin>>,
}

impl Front {
    async fn respond(
        &self,
        req: hyper::Request<hyper::body::Incoming>,
    ) -> hyper::Response<crate::body::Body> {
        // The cluster ping is the registry's (it holds the cluster view).
        if let (Some(rest), Some(admin)) = (req.uri().path().strip_prefix("/_hoard/"), &self.admin)
        {
            if rest == crate::cluster::PING_REST {
                return self.registry.clone().handle(req).await;
            }
            let rest = rest.to_owned();
            // Boxed, so the operator API's state does not size every request.
            return Box::pin(admin.handle(req, &rest)).await;
        }
        self.registry.clone().handle(req).await
    }
}
