//! Idle plain HTTP/1 connections are parked without hyper's state
//! (issue 15, lean connections) and served again when the client speaks:
//! a request split across packets, pipelined requests, repeatedly. A
//! parked connection keeps its `max_connections` slot and is closed by the
//! idle timeout. Each park is seen in `hoard_connections_parked`, polled
//! over fresh connections that close at once (and so are never parked).

mod common;

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use common::{
    closed_by_server, parked_connections as parked, read_v2_answer, wait_parked, Cfg, FakeRegistry,
    Hoard, DEADLINE, GET_V2,
};

/// hoard with `extra` top-level keys and the fake as `docker.io`; the fake
/// and the directory live as long as the returned values.
async fn start(extra: &str) -> (FakeRegistry, tempfile::TempDir, Hoard) {
    let hub = FakeRegistry::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = Cfg::new(&dir.path().join("cache")).upstream("docker.io", &hub.url());
    let config = format!("{extra}\n{}", cfg.toml());
    let hoard = Hoard::start(dir.path(), &config, false).await;
    (hub, dir, hoard)
}

#[tokio::test]
async fn an_idle_connection_is_parked_and_served_again_whatever_the_client_sends() {
    let (_hub, _dir, hoard) = start("").await;
    let mut stream = TcpStream::connect(hoard.addr).await.unwrap();
    let mut buf = Vec::new();

    stream.write_all(GET_V2).await.unwrap();
    read_v2_answer(&mut stream, &mut buf).await;
    wait_parked(&hoard, 1.0).await;

    // A request whose head arrives in two packets.
    stream.write_all(&GET_V2[..11]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    stream.write_all(&GET_V2[11..]).await.unwrap();
    read_v2_answer(&mut stream, &mut buf).await;
    assert_eq!(parked(hoard.addr).await, 0.0, "served, so no longer parked");
    wait_parked(&hoard, 1.0).await;

    // Two pipelined requests in one write.
    stream.write_all(&[GET_V2, GET_V2].concat()).await.unwrap();
    read_v2_answer(&mut stream, &mut buf).await;
    read_v2_answer(&mut stream, &mut buf).await;
    wait_parked(&hoard, 1.0).await;

    // Closed by the client while parked: the gauge goes back to zero.
    drop(stream);
    wait_parked(&hoard, 0.0).await;
}

#[tokio::test]
async fn a_parked_connection_keeps_its_slot_and_is_closed_by_the_idle_timeout() {
    let (_hub, _dir, hoard) = start("max_connections = 3\nheader_read_timeout = \"4s\"").await;

    let mut idle = Vec::new();
    for _ in 0..2 {
        let mut stream = TcpStream::connect(hoard.addr).await.unwrap();
        stream.write_all(GET_V2).await.unwrap();
        read_v2_answer(&mut stream, &mut Vec::new()).await;
        idle.push(stream);
    }
    wait_parked(&hoard, 2.0).await;

    // Two parked and one open: a fourth connection is refused at once.
    let third = TcpStream::connect(hoard.addr).await.unwrap();
    let mut fourth = TcpStream::connect(hoard.addr).await.unwrap();
    closed_by_server(&mut fourth, std::time::Instant::now()).await;
    drop(third);

    // No request for header_read_timeout: the server closes both.
    for mut stream in idle {
        closed_by_server(&mut stream, std::time::Instant::now()).await;
    }
    wait_parked(&hoard, 0.0).await;
}

#[tokio::test]
async fn a_request_head_trickled_in_is_cut_off_not_parked_for_ever() {
    let (_hub, _dir, hoard) = start(r#"header_read_timeout = "2s""#).await;
    let mut stream = TcpStream::connect(hoard.addr).await.unwrap();
    let head = b"GET /v2/ HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ";
    stream.write_all(head).await.unwrap();
    // One byte every 300 ms, never finishing the head: however the
    // connection is stopped and served again meanwhile (hyper, asked to
    // stop at an idle point with a head half read, keeps reading it), it
    // must be closed within the deadline, not kept alive by the trickle.
    let started = std::time::Instant::now();
    loop {
        assert!(
            started.elapsed() < DEADLINE,
            "a trickled head held the connection for {DEADLINE:?}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
        if stream.write_all(b"a").await.is_err() {
            break;
        }
        let mut byte = [0u8; 512];
        match tokio::time::timeout(Duration::from_millis(1), stream.read(&mut byte)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            // A 408 or similar before the close is fine too.
            Ok(Ok(_)) | Err(_) => {}
        }
    }
}
