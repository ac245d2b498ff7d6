//! A large upload streams to disk: hoard's memory stays flat however big
//! the layer. Its own test binary (own process), so no other test's
//! allocations blur the measurement.

mod common;

use bytes::Bytes;
use common::*;
use sha2::Digest as _;

const MIB: usize = 1024 * 1024;
const CHUNKS: usize = 128;

/// Peak resident memory of this process so far, in bytes.
fn peak_rss() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    let kib: usize = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_128_mib_upload_does_not_grow_memory_by_its_size() {
    let env = Env::start().await;
    let m = &env.mirror;
    let chunk = Bytes::from(pseudo_random(1, MIB));
    let mut h = sha2::Sha256::new();
    for _ in 0..CHUNKS {
        h.update(&chunk);
    }
    let digest = format!("sha256:{}", hex::encode(h.finalize()));
    let before = peak_rss();

    let resp = m
        .client
        .post(m.url("/v2/team/big/blobs/uploads/"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let location = header(&resp, "Location");
    // Streamed from one shared chunk: the client side holds 1 MiB.
    let body = {
        let chunk = chunk.clone();
        futures_util::stream::iter((0..CHUNKS).map(move |_| Ok::<_, std::io::Error>(chunk.clone())))
    };
    let resp = m
        .client
        .patch(m.url(&location))
        .body(reqwest::Body::wrap_stream(body))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    assert_eq!(header(&resp, "Range"), format!("0-{}", CHUNKS * MIB - 1));
    let resp = m
        .client
        .put(m.url(&format!("{location}?digest={digest}")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let grown = peak_rss().saturating_sub(before);
    assert!(
        grown < CHUNKS * MIB / 4,
        "peak memory grew by {} MiB for a {CHUNKS} MiB upload",
        grown / MIB
    );
    let head = m.head(&blob_path("team/big", &digest)).await;
    assert_eq!(header(&head, "Content-Length"), (CHUNKS * MIB).to_string());
}
