//! What a client on the plain-HTTP port speaks, from its first bytes.
//!
//! hyper-util's automatic version detection waits without a time limit for
//! enough bytes to tell HTTP/1.1 from the HTTP/2 preface, and hyper's
//! header timeout only starts after it; a client that connects and sends
//! nothing (or a few bytes of "PRI * ...") would hold a connection slot
//! forever. So we look ourselves, with `header_read_timeout` as the limit,
//! and tell hyper which protocol to run.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The HTTP/2 connection preface (RFC 9113, 3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The answer to a TLS ClientHello on the plain-HTTP port. containers/image
/// (skopeo, podman) probes TLS first and retries over HTTP on an error.
const TLS_ON_PLAIN_PORT: &[u8] = b"HTTP/1.0 400 Bad Request\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\nClient sent a TLS handshake to hoard's plain-HTTP port.\n";

/// What the first bytes said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Sniffed {
    /// A TLS handshake record (0x16).
    TlsHello,
    /// Anything that is not the HTTP/2 preface: hyper's HTTP/1 parser
    /// decides the rest (and answers 400 to garbage).
    Http1,
    /// The HTTP/2 preface (h2c with prior knowledge).
    Http2,
    /// The client closed (or the socket failed) before sending anything.
    Closed,
    /// Nothing conclusive arrived within the time limit.
    TimedOut,
}

/// Peeks (without consuming) until the first bytes decide the protocol.
pub(super) async fn sniff(stream: &TcpStream, limit: Duration) -> Sniffed {
    let look = async {
        let mut buf = [0u8; H2_PREFACE.len()];
        loop {
            let n = match stream.peek(&mut buf).await {
                Ok(0) | Err(_) => return Sniffed::Closed,
                Ok(n) => n,
            };
            if buf[0] == 0x16 {
                return Sniffed::TlsHello;
            }
            if buf[..n] != H2_PREFACE[..n] {
                return Sniffed::Http1;
            }
            if n == H2_PREFACE.len() {
                return Sniffed::Http2;
            }
            // A partial preface: peek answers at once with the same bytes
            // until more arrive, and readiness stays set, so wait a little
            // instead of spinning. Only h2c clients mid-preface get here.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    tokio::time::timeout(limit, look)
        .await
        .unwrap_or(Sniffed::TimedOut)
}

/// Answers 400 and closes. The unread ClientHello is drained first: closing
/// a socket with unread data sends a reset, which can destroy the answer
/// before the client reads it.
pub(super) async fn reject_tls(mut stream: TcpStream) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    /// Connects, sends `bytes` (then closes if `close`), and sniffs the
    /// server side with a short limit.
    async fn sniffed(bytes: &[u8], close: bool) -> Sniffed {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut client = TcpStream::connect(addr).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        client.write_all(bytes).await.unwrap();
        if close {
            client.shutdown().await.unwrap();
        }
        let got = sniff(&server, Duration::from_millis(300)).await;
        drop(client);
        got
    }

    #[tokio::test]
    async fn tells_protocols_apart() {
        assert_eq!(sniffed(&[0x16, 3, 1], false).await, Sniffed::TlsHello);
        assert_eq!(sniffed(b"GET / HTTP/1.1\r\n", false).await, Sniffed::Http1);
        // "P" of PUT matches the preface's first byte, "U" does not.
        assert_eq!(sniffed(b"PUT /", false).await, Sniffed::Http1);
        assert_eq!(sniffed(H2_PREFACE, false).await, Sniffed::Http2);
        assert_eq!(sniffed(b"", true).await, Sniffed::Closed);
    }

    #[tokio::test]
    async fn silence_and_partial_prefaces_time_out() {
        assert_eq!(sniffed(b"", false).await, Sniffed::TimedOut);
        assert_eq!(sniffed(b"PRI * HTTP/2", false).await, Sniffed::TimedOut);
    }
}
