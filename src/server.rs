//! The accept loop: HTTP/1.1 and HTTP/2 (h2c) on one port, graceful shutdown.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::registry::Registry;

/// Longest a client may take to send its request headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest request head accepted (hyper answers 431 past it).
const MAX_HEADER_BYTES: usize = 64 * 1024;
/// How long in-flight responses get to finish after shutdown was asked.
const GRACE: Duration = Duration::from_secs(30);

/// The answer to a TLS ClientHello on the plain-HTTP port. containers/image
/// (skopeo, podman) probes TLS first and retries over HTTP on an error.
const TLS_ON_PLAIN_PORT: &[u8] = b"HTTP/1.0 400 Bad Request\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\nClient sent a TLS handshake to hoard's plain-HTTP port.\n";

/// Serves `registry` on `listener` until `shutdown` resolves, then lets
/// in-flight connections finish (up to a grace period).
pub async fn serve(
    listener: TcpListener,
    registry: Arc<Registry>,
    shutdown: impl Future<Output = ()>,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(MAX_HEADER_BYTES);
    let builder = Arc::new(builder);
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let registry = registry.clone();
                let builder = builder.clone();
                let watcher = graceful.watcher();
                tokio::spawn(async move {
                    if is_tls_hello(&stream).await {
                        reject_tls(stream).await;
                        return;
                    }
                    let service = service_fn(move |req| {
                        let registry = registry.clone();
                        async move { Ok::<_, std::convert::Infallible>(registry.handle(req).await) }
                    });
                    let conn = builder.serve_connection(TokioIo::new(stream), service).into_owned();
                    if let Err(e) = watcher.watch(conn).await {
                        tracing::debug!(%peer, error = %e, "connection ended with an error");
                    }
                });
            }
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    tracing::info!(connections = graceful.count(), "shutting down");
    if tokio::time::timeout(GRACE, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("grace period over; closing remaining connections");
    }
}

/// Peeks the first byte: 0x16 starts a TLS handshake record.
async fn is_tls_hello(stream: &TcpStream) -> bool {
    let mut b = [0u8; 1];
    matches!(
        tokio::time::timeout(HEADER_READ_TIMEOUT, stream.peek(&mut b)).await,
        Ok(Ok(1)) if b[0] == 0x16
    )
}

/// Answers 400 and closes. The unread ClientHello is drained first: closing
/// a socket with unread data sends a reset, which can destroy the answer
/// before the client reads it.
async fn reject_tls(mut stream: TcpStream) {
    let _ = stream.write_all(TLS_ON_PLAIN_PORT).await;
    let _ = stream.shutdown().await;
    let mut sink = [0u8; 4096];
    let drain = async {
        while let Ok(n) = stream.read(&mut sink).await {
            if n == 0 {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), drain).await;
}
