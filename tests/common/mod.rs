//! The one harness of hoard's integration tests.
//!
//! A test binary says `mod common; use common::*;` and gets:
//! - [`FakeRegistry`] (`fake.rs`, `fake_http.rs`): the upstream, in process, counting
//!   what it is asked;
//! - [`TestMirror`] (`mirror.rs`): the real `hoard::run` on 127.0.0.1:0, in process;
//! - [`Hoard`], [`Launch`], [`Site`] (`child.rs`): the real binary as a child process,
//!   for what only a process has (signals, exit codes, SIGKILL, RLIMIT_FSIZE, TLS files);
//! - [`Server`] (`mirror.rs`): the requests both kinds of mirror answer, written once;
//! - [`Cfg`] (`config.rs`): the one writer of a mirror's TOML, and `write_config` for a
//!   child's file;
//! - [`Weed`] (`weed.rs`): a real S3 server (SeaweedFS), for the bucket backend;
//! - [`replicas`] (`cluster.rs`): hoard replicas on one bucket (`[cluster]`);
//! - [`Metrics`], the cache directory as files (`files.rs`), and [`DEADLINE`] with the
//!   one condition poll [`wait_for`].
//!
//! Every wait is on a condition with the one deadline, never a bare sleep; every
//! directory a test makes is a `TempDir` dropped (and so removed) with it.
//!
//! Dead code: each file in `tests/` is its own crate that compiles this module and uses
//! a part of it, and rustc counts a `pub` item of a test crate that this crate does not
//! call as dead (rust-lang/rust#46379). So each module below carries
//! `#[allow(dead_code)]` on its declaration, with nothing allowed file-wide. (That no
//! helper is dead in *every* test binary has not been checked yet: remove the allows,
//! build all tests, and drop what every binary flags.)

#[allow(dead_code)]
pub mod child;
#[allow(dead_code)]
pub mod cluster;
#[allow(dead_code)]
pub mod config;
#[allow(dead_code)]
pub mod fake;
#[allow(dead_code)]
pub mod fake_http;
#[allow(dead_code)]
pub mod files;
#[allow(dead_code)]
pub mod metrics;
#[allow(dead_code)]
pub mod mirror;
#[allow(dead_code)]
pub mod weed;

use std::future::Future;
use std::time::Duration;

// Re-exported for `use common::*`; a binary that uses nothing of one of them would
// otherwise be told the import is unused (the same per-binary view as dead code).
#[allow(unused_imports)]
pub use child::*;
#[allow(unused_imports)]
pub use cluster::*;
#[allow(unused_imports)]
pub use config::*;
#[allow(unused_imports)]
pub use fake::*;
#[allow(unused_imports)]
pub use fake_http::{base64, parse_query, percent_decode};
#[allow(unused_imports)]
pub use files::*;
#[allow(unused_imports)]
pub use metrics::*;
#[allow(unused_imports)]
pub use mirror::*;
#[allow(unused_imports)]
pub use weed::*;

/// How long anything a test waits on may take: a server to start or stop, a
/// condition to hold, a response to come. Generous, because ~6 builds share 2 cores.
pub const DEADLINE: Duration = Duration::from_secs(10);

/// How often [`wait_for`] looks again: short, since each look is cheap.
const POLL: Duration = Duration::from_millis(10);

/// Polls `cond` until it holds; after [`DEADLINE`] fails the test with `what` and
/// `explain()` (what was seen instead). A synchronous condition is passed as
/// `|| std::future::ready(cond)`.
#[allow(dead_code)]
pub async fn wait_for<F, Fut>(what: &str, mut cond: F, explain: impl Fn() -> String)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !cond().await {
        if tokio::time::Instant::now() > deadline {
            panic!(
                "timed out after {DEADLINE:?} waiting for {what}: {}",
                explain()
            );
        }
        tokio::time::sleep(POLL).await;
    }
}

#[allow(dead_code)]
/// Reads until the server closes the connection (EOF or reset); returns
/// how long that took since `start`. Panics if it stays open past the
/// deadline.
pub async fn closed_by_server(
    stream: &mut (impl tokio::io::AsyncRead + Unpin),
    start: std::time::Instant,
) -> Duration {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout(DEADLINE, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return start.elapsed(),
            Ok(Ok(_)) => continue,
            Err(_) => panic!("the server kept the connection open for {DEADLINE:?}"),
        }
    }
}

/// `hoard_connections_parked`, read over a connection that closes at once
/// (and so is never parked itself).
#[allow(dead_code)]
pub async fn parked_connections(addr: std::net::SocketAddr) -> f64 {
    let resp = raw_request(addr, "GET", "/metrics", &[("connection", "close")]).await;
    assert_eq!(resp.status, 200);
    Metrics(String::from_utf8_lossy(&resp.body).into_owned())
        .get("hoard_connections_parked", &[])
        .unwrap_or(0.0)
}

/// Waits until `n` connections are parked (issue 15, lean connections).
#[allow(dead_code)]
pub async fn wait_parked(hoard: &Hoard, n: f64) {
    let addr = hoard.addr;
    wait_for(
        &format!("{n} parked connection(s)"),
        || async move { parked_connections(addr).await == n },
        || hoard.log_tail(20),
    )
    .await;
}

/// A keep-alive `GET /v2/`, as raw HTTP/1.1 bytes.
#[allow(dead_code)]
pub const GET_V2: &[u8] = b"GET /v2/ HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";

/// Reads one `200` answer to [`GET_V2`] (status line, headers, the `{}`
/// body) off `stream`; `buf` carries bytes read past it to the next call.
#[allow(dead_code)]
pub async fn read_v2_answer(stream: &mut (impl tokio::io::AsyncRead + Unpin), buf: &mut Vec<u8>) {
    use tokio::io::AsyncReadExt;
    let find = |hay: &[u8], needle: &[u8]| hay.windows(needle.len()).position(|w| w == needle);
    loop {
        if let Some(end) = find(buf, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
            assert!(head.starts_with("http/1.1 200"), "{head}");
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map(|v| v.trim().parse().expect("content-length"))
                .expect("a content-length");
            if buf.len() >= end + 4 + length {
                assert_eq!(&buf[end + 4..end + 4 + length], b"{}");
                buf.drain(..end + 4 + length);
                return;
            }
        }
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(DEADLINE, stream.read(&mut chunk))
            .await
            .expect("an answer in time")
            .expect("read");
        assert!(n > 0, "the server closed the connection");
        buf.extend_from_slice(&chunk[..n]);
    }
}
