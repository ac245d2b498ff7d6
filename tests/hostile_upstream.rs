//! An upstream that answers with huge bodies where hoard only needs a
//! little (issue 14, defect 2): error bodies and token responses are read
//! up to a small cap, and the rest is never taken off the socket.
//!
//! The upstream here is a raw TCP server so it can count exactly how many
//! body bytes it got to write before hoard closed the connection.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use common::{blob_path, Cfg, Server, TestMirror, DEADLINE};

/// Body length the hostile upstream announces and tries to send.
const HUGE: usize = 64 * 1024 * 1024;

/// Bytes one connection may take before we call it "read the whole body":
/// the cap plus what loopback socket buffers swallow (a few MiB).
const READ_AT_MOST: usize = 16 * 1024 * 1024;

/// What the hostile upstream answers.
#[derive(Clone, Copy)]
enum Answer {
    /// `500` with a `HUGE` body to every request.
    HugeError,
    /// `401` pointing at its own token realm, whose answer is `HUGE` bytes.
    HugeToken,
}

/// A raw HTTP/1.1 upstream; records the body bytes written per connection.
struct Hostile {
    addr: SocketAddr,
    written: Arc<watch::Sender<Vec<usize>>>,
}

impl Hostile {
    async fn start(answer: Answer) -> Hostile {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let written = Arc::new(watch::Sender::new(Vec::new()));
        let w = written.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let w = w.clone();
                tokio::spawn(async move { serve(stream, addr, answer, w).await });
            }
        });
        Hostile { addr, written }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Body bytes written on the connection that took the most, once at
    /// least one body has ended (hoard closed it, or it was all sent).
    async fn most_written(&self) -> usize {
        let mut rx = self.written.subscribe();
        let ended = tokio::time::timeout(DEADLINE, rx.wait_for(|w| !w.is_empty())).await;
        let ended = ended
            .expect("no huge body ended in time")
            .expect("upstream gone");
        ended.iter().copied().max().unwrap_or(0)
    }
}

/// Reads one request head: its first line, or None when the peer closed.
async fn read_head(stream: &mut TcpStream) -> Option<String> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte).await.ok()? == 0 {
            return None;
        }
        head.push(byte[0]);
    }
    let text = String::from_utf8_lossy(&head).into_owned();
    text.lines().next().map(str::to_owned)
}

async fn serve(
    mut stream: TcpStream,
    me: SocketAddr,
    answer: Answer,
    written: Arc<watch::Sender<Vec<usize>>>,
) {
    while let Some(line) = read_head(&mut stream).await {
        let is_head = line.starts_with("HEAD ");
        let huge = match answer {
            Answer::HugeError => Some("HTTP/1.1 500 Internal Server Error"),
            Answer::HugeToken if line.contains("/token") => Some("HTTP/1.1 200 OK"),
            Answer::HugeToken => None,
        };
        let Some(status) = huge else {
            let challenge = format!(
                "HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Bearer realm=\"http://{me}/token\",service=\"hostile\"\r\nContent-Length: 0\r\n\r\n"
            );
            if stream.write_all(challenge.as_bytes()).await.is_err() {
                return;
            }
            continue;
        };
        let head =
            format!("{status}\r\nContent-Type: application/json\r\nContent-Length: {HUGE}\r\n\r\n");
        if stream.write_all(head.as_bytes()).await.is_err() || is_head {
            continue;
        }
        let chunk = vec![b'x'; 64 * 1024];
        let mut sent = 0;
        while sent < HUGE {
            match stream.write(&chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => sent += n,
            }
        }
        written.send_modify(|w| w.push(sent));
        if sent < HUGE {
            return;
        }
    }
}

async fn mirror_of(up: &Hostile, dir: &std::path::Path) -> TestMirror {
    let cfg = Cfg::new(dir).upstream("docker.io", &up.url());
    TestMirror::start(&cfg.toml()).await
}

const DIGEST: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";

#[tokio::test]
async fn a_huge_upstream_error_body_is_not_read() {
    let up = Hostile::start(Answer::HugeError).await;
    let dir = tempfile::tempdir().unwrap();
    let mirror = mirror_of(&up, dir.path()).await;
    let resp = mirror.get(&blob_path("alpine", DIGEST)).await;
    assert!(resp.status().is_server_error(), "{}", resp.status());
    let most = up.most_written().await;
    eprintln!("error body: hoard let the upstream write {most} of {HUGE} bytes");
    assert!(most > 0, "the upstream was never asked");
    assert!(
        most < READ_AT_MOST,
        "hoard read {most} bytes of a {HUGE}-byte error body"
    );
}

#[tokio::test]
async fn a_huge_token_response_is_refused_unread() {
    let up = Hostile::start(Answer::HugeToken).await;
    let dir = tempfile::tempdir().unwrap();
    let mirror = mirror_of(&up, dir.path()).await;
    let resp = mirror.get(&blob_path("alpine", DIGEST)).await;
    assert!(!resp.status().is_success(), "{}", resp.status());
    let most = up.most_written().await;
    eprintln!("token: hoard let the upstream write {most} of {HUGE} bytes");
    assert!(most > 0, "the token realm was never asked");
    assert!(
        most < READ_AT_MOST,
        "hoard read {most} bytes of a {HUGE}-byte token response"
    );
}

#[tokio::test]
async fn an_upstream_401_reaches_the_client_with_a_challenge() {
    // RFC 9110: a 401 carries WWW-Authenticate (issue 14: it did not).
    let env = common::Env::start().await;
    env.hub.add_simple_image("library/alpine", "latest", 3);
    env.hub.require_auth_with_basic("hoarder", "s3cret");
    let resp = env
        .mirror
        .get(&common::manifest_path("alpine", "latest"))
        .await;
    assert_eq!(resp.status(), 401);
    let challenge = common::header(&resp, "www-authenticate");
    assert!(challenge.starts_with("Basic realm="), "{challenge:?}");
}
