//! An upstream in a 5xx or 429 storm (issue 14, defect 7): hoard passes
//! the failure on to its clients but not their retries to the upstream.
//! Concurrent requests share one attempt (the fill), and a 5xx or 429 is
//! remembered for a few seconds (or the upstream's `Retry-After`), so 150
//! client GETs cost a handful of upstream GETs, not 150.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use common::*;

const DIGEST: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";

const BUSY: &[u8] =
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nContent-Length: 4\r\n\r\nbusy";
const LIMITED: &[u8] = b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 30\r\nContent-Type: text/plain\r\nContent-Length: 4\r\n\r\nslow";

/// An upstream answering every request with one failure, counting the blob GETs.
struct Storm {
    addr: SocketAddr,
    blob_gets: Arc<AtomicUsize>,
}

impl Storm {
    async fn start(answer: &'static [u8]) -> Storm {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let blob_gets = Arc::new(AtomicUsize::new(0));
        let count = blob_gets.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(fail(stream, answer, count.clone()));
            }
        });
        Storm { addr, blob_gets }
    }
}

async fn fail(mut stream: TcpStream, answer: &[u8], blob_gets: Arc<AtomicUsize>) {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        buf.clear();
        while !buf.ends_with(b"\r\n\r\n") {
            match stream.read(&mut byte).await {
                Ok(1) => buf.push(byte[0]),
                _ => return,
            }
        }
        let line = String::from_utf8_lossy(&buf);
        if line.starts_with("GET ") && line.contains("/blobs/") {
            blob_gets.fetch_add(1, Ordering::SeqCst);
        }
        if stream.write_all(answer).await.is_err() {
            return;
        }
    }
}

/// 150 client GETs of one blob, in 15 waves of 10 at once, during a 503
/// storm: every client gets an error, the upstream gets a handful of GETs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_5xx_storm_costs_a_handful_of_upstream_gets() {
    let statuses = storm(BUSY, "503").await;
    assert!(
        statuses.iter().all(|s| *s >= 500),
        "every client is told the upstream failed: {statuses:?}"
    );
}

/// The same during a 429 storm: every client is told to slow down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_storm_costs_a_handful_of_upstream_gets() {
    let statuses = storm(LIMITED, "429").await;
    assert!(
        statuses.iter().all(|s| *s == 429),
        "every client is told to slow down: {statuses:?}"
    );
}

/// 150 client GETs of one blob against an upstream answering `answer`;
/// asserts the upstream saw a handful, returns the clients' statuses.
async fn storm(answer: &'static [u8], what: &str) -> Vec<u16> {
    let storm = Storm::start(answer).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = Cfg::new(dir.path()).upstream("docker.io", &format!("http://{}", storm.addr));
    let mirror = Arc::new(TestMirror::start(&cfg.toml()).await);
    let path = blob_path("library/alpine", DIGEST);
    let mut statuses = Vec::new();
    for _ in 0..15 {
        let wave: Vec<_> = (0..10)
            .map(|_| {
                let (mirror, path) = (mirror.clone(), path.clone());
                tokio::spawn(async move { mirror.get(&path).await.status().as_u16() })
            })
            .collect();
        for t in wave {
            statuses.push(t.await.unwrap());
        }
    }
    let gets = storm.blob_gets.load(Ordering::SeqCst);
    eprintln!("150 client GETs during a {what} storm: {gets} upstream GETs");
    assert!(gets <= 5, "{gets} upstream GETs for 150 client GETs");
    statuses
}
