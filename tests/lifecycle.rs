//! The process lifecycle and connection limits, against the real binary:
//! SIGTERM drains in-flight downloads and fills and exits 0; `/readyz`
//! follows the cache's writability; slow request heads are cut off; past
//! `max_connections` new connections are closed at once and counted.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use common::DEADLINE;
use common::{blob_path, check_oci_error, client, pseudo_random, read_at_least, sha256_digest};
use common::{closed_by_server, wait_for, Cfg, FakeRegistry, Hoard, Metrics, Server, CHUNK};

/// A config with the fake as `docker.io`, caching into `dir/cache`, with
/// `extra` top-level keys.
fn config(dir: &std::path::Path, hub: &FakeRegistry, extra: &str) -> String {
    let cfg = Cfg::new(&dir.join("cache")).upstream("docker.io", &hub.url());
    format!("{extra}\n{}", cfg.toml())
}

/// A keep-alive HTTP/1.1 connection to `addr`.
async fn h1(addr: SocketAddr) -> SendRequest<Empty<Bytes>> {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    sender
}

/// GET `path` on an open connection: status and body.
async fn get(sender: &mut SendRequest<Empty<Bytes>>, path: &str) -> (u16, Bytes) {
    let req = hyper::Request::get(path)
        .header(hyper::header::HOST, "127.0.0.1")
        .body(Empty::new())
        .unwrap();
    let resp = tokio::time::timeout(DEADLINE, sender.send_request(req))
        .await
        .unwrap_or_else(|_| panic!("GET {path}: no answer"))
        .unwrap_or_else(|e| panic!("GET {path}: {e}"));
    let status = resp.status().as_u16();
    let body = tokio::time::timeout(DEADLINE, resp.into_body().collect())
        .await
        .unwrap_or_else(|_| panic!("GET {path}: body timed out"))
        .expect("body")
        .to_bytes();
    (status, body)
}

async fn metrics_on(sender: &mut SendRequest<Empty<Bytes>>) -> Metrics {
    let (status, body) = get(sender, "/metrics").await;
    assert_eq!(status, 200);
    Metrics(String::from_utf8(body.to_vec()).unwrap())
}

/// Whether the port refuses connections (the listener is closed).
async fn refuses(addr: SocketAddr) -> bool {
    TcpStream::connect(addr).await.is_err()
}

/// A 4 MiB layer in `library/big`, served by a fake whose gate is closed:
/// every body stops after its first chunk until the test opens it.
fn gated_layer(hub: &FakeRegistry) -> (String, Bytes) {
    let blob = hub.add_blob("library/big", pseudo_random(7, 4 * 1024 * 1024));
    hub.close_gate();
    (blob_path("big", &blob.digest), blob.data)
}

#[tokio::test]
async fn sigterm_lets_a_download_finish_stops_accepting_and_exits_0() {
    let hub = FakeRegistry::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (path, data) = gated_layer(&hub);
    let mut hoard = Hoard::start(
        dir.path(),
        &config(dir.path(), &hub, "shutdown_grace = \"30s\""),
        false,
    )
    .await;

    let mut resp = client().get(hoard.url(&path)).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut got = read_at_least(&mut resp, CHUNK).await;
    hub.wait_until("the blob body is held at the gate", |h| h.paused() >= 1)
        .await;

    hoard.signal("TERM");
    wait_for(
        "the listener to close",
        || refuses(hoard.addr),
        || hoard.log().tail(20),
    )
    .await;
    assert!(
        hoard.exited().is_none(),
        "hoard exited with a download in flight"
    );

    hub.open_gate();
    while let Some(chunk) = tokio::time::timeout(DEADLINE, resp.chunk())
        .await
        .expect("download stalled after SIGTERM")
        .expect("download broke after SIGTERM")
    {
        got.extend_from_slice(&chunk);
    }
    assert_eq!(got.len(), data.len(), "the download is complete");
    assert_eq!(sha256_digest(&got), sha256_digest(&data), "and correct");

    let status = hoard.wait_exit(DEADLINE).await;
    assert_eq!(status.code(), Some(0), "{}", hoard.log().text());
    assert!(refuses(hoard.addr).await);
}

#[tokio::test]
async fn sigterm_lets_an_abandoned_fill_finish_into_the_cache() {
    let hub = FakeRegistry::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (path, data) = gated_layer(&hub);
    let toml = config(dir.path(), &hub, "shutdown_grace = \"30s\"");
    let mut hoard = Hoard::start(dir.path(), &toml, false).await;

    // The client reads a little and hangs up; the fill goes on without it.
    let mut resp = client().get(hoard.url(&path)).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    read_at_least(&mut resp, CHUNK).await;
    drop(resp);
    hub.wait_until("the fill is held at the gate", |h| h.paused() >= 1)
        .await;

    hoard.signal("TERM");
    wait_for(
        "the listener to close",
        || refuses(hoard.addr),
        || hoard.log().tail(20),
    )
    .await;
    assert!(
        hoard.exited().is_none(),
        "hoard exited with a fill in flight"
    );
    hub.open_gate();
    let status = hoard.wait_exit(DEADLINE).await;
    assert_eq!(status.code(), Some(0), "{}", hoard.log().text());

    // The fill was committed before the exit: a new hoard serves the blob
    // with the upstream gone.
    hub.go_down().await;
    let hoard = Hoard::start(dir.path(), &toml, false).await;
    let resp = client().get(hoard.url(&path)).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.bytes().await.unwrap();
    assert_eq!(body, data);
}

#[tokio::test]
async fn readyz_follows_the_cache_directory_being_writable() {
    let hub = FakeRegistry::start().await;
    let dir = tempfile::tempdir().unwrap();
    let hoard = Hoard::start(dir.path(), &config(dir.path(), &hub, ""), false).await;
    let readyz = || async {
        let resp = client().get(hoard.url("/readyz")).send().await.unwrap();
        (resp.status().as_u16(), resp.bytes().await.unwrap())
    };

    let (status, body) = readyz().await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(json["status"], "ready");

    // Root ignores permissions, so make the cache's temp directory a file:
    // nothing can be written there any more.
    let tmp = dir.path().join("cache").join("tmp");
    std::fs::remove_dir_all(&tmp).unwrap();
    std::fs::write(&tmp, b"not a directory").unwrap();
    let (status, body) = readyz().await;
    check_oci_error(status, &body, 503, &["UNAVAILABLE"]);
    assert!(
        String::from_utf8_lossy(&body).contains("not writable"),
        "{}",
        String::from_utf8_lossy(&body)
    );
    // Liveness is another question: the process is fine.
    let resp = client().get(hoard.url("/healthz")).send().await.unwrap();
    assert_eq!(resp.status(), 200);

    std::fs::remove_file(&tmp).unwrap();
    std::fs::create_dir(&tmp).unwrap();
    let (status, body) = readyz().await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
}

#[tokio::test]
async fn a_stalled_request_head_is_cut_off_while_others_are_served() {
    let hub = FakeRegistry::start().await;
    let dir = tempfile::tempdir().unwrap();
    let hoard = Hoard::start(
        dir.path(),
        &config(dir.path(), &hub, "header_read_timeout = \"1s\""),
        false,
    )
    .await;

    // Half a request head, then nothing; and a client that sends nothing.
    // Timed from before the connects: the server's clock starts later.
    let started = Instant::now();
    let mut half = TcpStream::connect(hoard.addr).await.unwrap();
    half.write_all(b"GET /v2/ HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-")
        .await
        .unwrap();
    let mut silent = TcpStream::connect(hoard.addr).await.unwrap();
    let half_closed = tokio::spawn(async move { closed_by_server(&mut half, started).await });
    let silent_closed = tokio::spawn(async move { closed_by_server(&mut silent, started).await });

    // Meanwhile others are served, on fresh and on kept-alive connections.
    let mut other = h1(hoard.addr).await;
    for _ in 0..3 {
        assert_eq!(get(&mut other, "/v2/").await.0, 200);
        assert_eq!(get(&mut h1(hoard.addr).await, "/healthz").await.0, 200);
    }

    for (what, task) in [("half a head", half_closed), ("silence", silent_closed)] {
        let after = task.await.unwrap();
        assert!(
            after >= Duration::from_millis(950),
            "{what}: closed after {after:?}, before header_read_timeout"
        );
        assert!(
            after < Duration::from_secs(5),
            "{what}: closed only after {after:?}"
        );
    }
    // hoard itself is fine. (An idle kept-alive connection also counts as
    // "waiting for a request head", so `other` may be gone by now.)
    assert_eq!(get(&mut h1(hoard.addr).await, "/v2/").await.0, 200);
}

#[tokio::test]
async fn past_max_connections_new_connections_are_closed_at_once_and_counted() {
    let hub = FakeRegistry::start().await;
    let dir = tempfile::tempdir().unwrap();
    let hoard = Hoard::start(
        dir.path(),
        &config(dir.path(), &hub, "max_connections = 2"),
        false,
    )
    .await;

    let mut a = h1(hoard.addr).await;
    assert_eq!(get(&mut a, "/v2/").await.0, 200);
    let mut b = h1(hoard.addr).await;
    let m = metrics_on(&mut b).await;
    assert_eq!(m.get("hoard_connections_open", &[]), Some(2.0), "{}", m.0);
    assert_eq!(m.get("hoard_connections_rejected_total", &[]), Some(0.0));

    let started = Instant::now();
    let mut third = TcpStream::connect(hoard.addr).await.unwrap();
    let _ = third
        .write_all(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    let after = closed_by_server(&mut third, started).await;
    assert!(
        after < Duration::from_secs(2),
        "the third connection was closed only after {after:?}"
    );

    let m = metrics_on(&mut a).await;
    assert_eq!(
        m.get("hoard_connections_rejected_total", &[]),
        Some(1.0),
        "{}",
        m.0
    );
    assert_eq!(m.get("hoard_connections_open", &[]), Some(2.0));

    // Closing one frees its slot, and the gauge follows.
    drop(b);
    let addr = hoard.addr;
    wait_for(
        "a slot to free up",
        || async move {
            let Ok(stream) = TcpStream::connect(addr).await else {
                return false;
            };
            let Ok((mut sender, conn)) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream)).await
            else {
                return false;
            };
            tokio::spawn(conn);
            let req = hyper::Request::get("/metrics")
                .header(hyper::header::HOST, "127.0.0.1")
                .body(Empty::<Bytes>::new())
                .unwrap();
            let Ok(resp) = sender.send_request(req).await else {
                return false; // closed at once: b's slot is not free yet
            };
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            let m = Metrics(String::from_utf8(body.to_vec()).unwrap());
            m.get("hoard_connections_open", &[]) == Some(2.0)
        },
        || hoard.log().tail(20),
    )
    .await;
    assert_eq!(get(&mut a, "/v2/").await.0, 200);
}

/// The HTTP/2 client preface, as a client speaking h2c sends it first.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// An empty SETTINGS frame: length 0, type 4, no flags, stream 0.
const H2_EMPTY_SETTINGS: &[u8] = &[0, 0, 0, 4, 0, 0, 0, 0, 0];

#[tokio::test]
async fn idle_http2_connections_are_closed_after_header_read_timeout() {
    let hub = FakeRegistry::start().await;
    let dir = tempfile::tempdir().unwrap();
    let hoard = Hoard::start(
        dir.path(),
        &config(dir.path(), &hub, "header_read_timeout = \"1s\""),
        false,
    )
    .await;
    // Issue 14: the preface alone, or with SETTINGS, kept a slot for ever.
    let started = Instant::now();
    let mut preface_only = TcpStream::connect(hoard.addr).await.unwrap();
    preface_only.write_all(H2_PREFACE).await.unwrap();
    let mut with_settings = TcpStream::connect(hoard.addr).await.unwrap();
    with_settings.write_all(H2_PREFACE).await.unwrap();
    with_settings.write_all(H2_EMPTY_SETTINGS).await.unwrap();
    for (what, mut stream) in [("preface", preface_only), ("settings", with_settings)] {
        let after = closed_by_server(&mut stream, started).await;
        assert!(
            after >= Duration::from_millis(950),
            "{what}: closed after {after:?}, before header_read_timeout"
        );
    }
}

#[tokio::test]
async fn an_http2_connection_is_kept_while_a_response_streams() {
    let hub = FakeRegistry::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (path, data) = gated_layer(&hub);
    let hoard = Hoard::start(
        dir.path(),
        &config(dir.path(), &hub, "header_read_timeout = \"1s\""),
        false,
    )
    .await;
    let stream = TcpStream::connect(hoard.addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        TokioIo::new(stream),
    )
    .await
    .expect("h2c handshake");
    tokio::spawn(conn);
    let req = hyper::Request::get(format!("http://127.0.0.1{path}"))
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = tokio::time::timeout(DEADLINE, sender.send_request(req))
        .await
        .expect("no answer")
        .expect("request");
    assert_eq!(resp.status(), 200);
    // The body is held at the fake for longer than the idle timeout: a
    // request in flight is not idle.
    let release = async {
        // Not synchronisation: the stall must outlast the 1s timeout.
        tokio::time::sleep(Duration::from_millis(2500)).await;
        hub.open_gate();
    };
    let collect = tokio::time::timeout(DEADLINE, resp.into_body().collect());
    let (collected, ()) = tokio::join!(collect, release);
    let body = collected
        .expect("body timed out")
        .expect("body cut off while streaming")
        .to_bytes();
    assert_eq!(body, data);
}

#[tokio::test]
async fn one_address_cannot_take_every_connection() {
    let hub = FakeRegistry::start().await;
    let dir = tempfile::tempdir().unwrap();
    let hoard = Hoard::start(
        dir.path(),
        &config(dir.path(), &hub, "max_connections_per_address = 2"),
        false,
    )
    .await;
    let mut a = h1(hoard.addr).await;
    assert_eq!(get(&mut a, "/v2/").await.0, 200);
    let _b = h1(hoard.addr).await;

    let started = Instant::now();
    let mut third = TcpStream::connect(hoard.addr).await.unwrap();
    let _ = third
        .write_all(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    let after = closed_by_server(&mut third, started).await;
    assert!(
        after < Duration::from_secs(2),
        "closed only after {after:?}"
    );

    // Another address is still served (127.0.0.0/8 is all loopback on Linux).
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
    let stream = socket.connect(hoard.addr).await.unwrap();
    let (mut other, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    assert_eq!(get(&mut other, "/v2/").await.0, 200);
    let m = metrics_on(&mut other).await;
    assert_eq!(
        m.get("hoard_connections_rejected_total", &[]),
        Some(1.0),
        "{}",
        m.0
    );
}
