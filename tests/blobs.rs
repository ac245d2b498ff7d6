//! Blobs: exact bytes and headers, Range requests, and the tee: one upstream
//! GET per cold blob however many clients ask, verification before caching,
//! and fills that survive a client hanging up.
//!
//! The fake upstream's gate holds a blob body after its first chunk, so a test
//! can line clients up on an in-progress fill and then let it finish.

mod common;

use common::*;

/// A blob of several chunks so the gate can hold it mid-stream.
const BIG: usize = 4 * 1024 * 1024 + 123;

async fn env_with_blob(seed: u64, len: usize) -> (Env, Blob) {
    let env = Env::start().await;
    let blob = env.hub.add_blob("library/alpine", pseudo_random(seed, len));
    (env, blob)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blob_miss_then_hit_has_exact_bytes_and_headers() {
    let (env, blob) = env_with_blob(1, BIG).await;
    let path = blob_path("alpine", &blob.digest);
    for round in ["miss", "hit"] {
        let resp = env.mirror.get(&path).await;
        assert_eq!(resp.status(), 200, "{round}");
        assert_eq!(
            header(&resp, "Docker-Content-Digest"),
            blob.digest,
            "{round}"
        );
        assert_eq!(header(&resp, "Content-Length"), BIG.to_string(), "{round}");
        assert_eq!(header(&resp, "Accept-Ranges"), "bytes", "{round}");
        let body = resp.bytes().await.unwrap();
        assert!(
            body == blob.data,
            "{round}: body differs ({} bytes)",
            body.len()
        );
    }
    assert_eq!(env.hub.blob_gets(), 1, "the hit must not go upstream");
    assert_eq!(
        env.hub
            .log()
            .iter()
            .find(|s| s.kind == Kind::Blob)
            .unwrap()
            .path,
        format!("/v2/library/alpine/blobs/{}", blob.digest)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blob_head_has_length_digest_and_no_body() {
    let (env, blob) = env_with_blob(2, 5000).await;
    let path = blob_path("alpine", &blob.digest);
    // Cold HEAD, then after a GET.
    for round in ["cold", "cached"] {
        let resp = env.mirror.head(&path).await;
        assert_eq!(resp.status(), 200, "{round}");
        assert_eq!(header(&resp, "Content-Length"), "5000", "{round}");
        assert_eq!(
            header(&resp, "Docker-Content-Digest"),
            blob.digest,
            "{round}"
        );
        assert_eq!(header(&resp, "Accept-Ranges"), "bytes", "{round}");
        assert!(
            resp.bytes().await.unwrap().is_empty(),
            "{round}: HEAD with a body"
        );
        if round == "cold" {
            assert_eq!(env.mirror.get_ok(&path).await, blob.data);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ranges_of_a_cached_blob() {
    let (env, blob) = env_with_blob(3, 10_000).await;
    let path = blob_path("alpine", &blob.digest);
    assert_eq!(env.mirror.get_ok(&path).await, blob.data);
    let gets = env.hub.blob_gets();

    // (Range header, expected first byte, expected last byte)
    let cases = [
        ("bytes=0-", 0, 9999),
        ("bytes=1234-", 1234, 9999),
        ("bytes=9999-", 9999, 9999),
        ("bytes=0-0", 0, 0),
        ("bytes=100-199", 100, 199),
        ("bytes=5000-20000", 5000, 9999), // end past the size is clamped
        ("bytes=-1", 9999, 9999),
        ("bytes=-300", 9700, 9999),
        ("bytes=-20000", 0, 9999), // suffix longer than the blob is the whole blob
    ];
    for (range, first, last) in cases {
        let resp = env.mirror.get_range(&path, range).await;
        assert_eq!(resp.status(), 206, "{range}");
        assert_eq!(
            header(&resp, "Content-Range"),
            format!("bytes {first}-{last}/10000"),
            "{range}"
        );
        assert_eq!(
            header(&resp, "Content-Length"),
            (last + 1 - first).to_string(),
            "{range}"
        );
        assert_eq!(
            header(&resp, "Docker-Content-Digest"),
            blob.digest,
            "{range}"
        );
        assert_eq!(header(&resp, "Accept-Ranges"), "bytes", "{range}");
        let body = resp.bytes().await.unwrap();
        assert!(
            body[..] == blob.data[first..=last],
            "{range}: wrong bytes ({} long)",
            body.len()
        );
    }
    assert_eq!(
        env.hub.blob_gets(),
        gets,
        "ranges of a cached blob went upstream"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsatisfiable_range_is_416_with_the_total() {
    let (env, blob) = env_with_blob(4, 10_000).await;
    let path = blob_path("alpine", &blob.digest);
    assert_eq!(env.mirror.get_ok(&path).await, blob.data);
    for range in ["bytes=10000-", "bytes=10000-10005", "bytes=20000-"] {
        let resp = env.mirror.get_range(&path, range).await;
        assert_eq!(resp.status(), 416, "{range}");
        assert_eq!(header(&resp, "Content-Range"), "bytes */10000", "{range}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_or_multi_range_is_ignored_with_a_full_200() {
    // RFC 9110 §14.2: a Range the server does not understand (or several
    // ranges it will not combine) is ignored; 416 is for a valid range that
    // selects nothing (issue 14: these were 416).
    let (env, blob) = env_with_blob(5, 10_000).await;
    let path = blob_path("alpine", &blob.digest);
    assert_eq!(env.mirror.get_ok(&path).await, blob.data);
    for range in [
        "bytes=abc",
        "bytes=-",
        "bytes=5-2",
        "bytes=1-x",
        "bytes=--5",
        "bytes=0-1,5-6",
        "items=0-5",
    ] {
        let resp = env.mirror.get_range(&path, range).await;
        let status = resp.status().as_u16();
        assert!(resp.headers().get("content-range").is_none(), "{range}");
        let body = resp.bytes().await.unwrap();
        assert_eq!(status, 200, "{range}: {}", String::from_utf8_lossy(&body));
        assert_eq!(body, blob.data, "{range}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn range_on_a_cold_blob_fills_the_whole_blob_once() {
    let (env, blob) = env_with_blob(6, BIG).await;
    let path = blob_path("alpine", &blob.digest);
    let resp = env.mirror.get_range(&path, "bytes=3000000-3000099").await;
    assert_eq!(
        resp.status(),
        206,
        "a Range on a miss must still be honoured"
    );
    assert_eq!(
        header(&resp, "Content-Range"),
        format!("bytes 3000000-3000099/{BIG}")
    );
    assert_eq!(header(&resp, "Content-Length"), "100");
    assert!(resp.bytes().await.unwrap()[..] == blob.data[3_000_000..3_000_100]);

    let resp = env.mirror.get_range(&path, "bytes=-10").await;
    assert_eq!(resp.status(), 206);
    assert!(resp.bytes().await.unwrap()[..] == blob.data[BIG - 10..]);
    assert_eq!(env.mirror.get_ok(&path).await, blob.data);
    assert_eq!(
        env.hub.blob_gets(),
        1,
        "the first Range must have filled the whole blob: {:?}",
        env.hub.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_cold_gets_make_one_upstream_request() {
    const CLIENTS: usize = 32;
    let (env, blob) = env_with_blob(7, BIG).await;
    let path = blob_path("alpine", &blob.digest);
    env.hub.close_gate();

    let mut clients = Clients::new();
    for _ in 0..CLIENTS {
        clients.spawn(&env.mirror, &path, None);
    }
    env.hub
        .wait_until("the fill is paused at the gate", |h| h.paused() >= 1)
        .await;
    clients.wait_attached(&env.mirror, CLIENTS as f64).await;
    assert_eq!(
        env.hub.blob_gets(),
        1,
        "clients waiting on a fill went upstream themselves"
    );
    env.hub.open_gate();

    for (i, (status, _, body)) in clients.join().await.into_iter().enumerate() {
        assert_eq!(status, 200, "client {i}");
        let body = body.unwrap_or_else(|e| panic!("client {i}: body error {e}"));
        assert!(
            body == blob.data,
            "client {i}: wrong body ({} bytes)",
            body.len()
        );
    }
    assert_eq!(env.hub.blob_gets(), 1);
    assert_eq!(env.hub.paused(), 1, "one upstream body stream");

    // The last byte goes out once the digest matched, before the commit:
    // wait for the commit before reading the fill gauge.
    env.mirror.settle().await;
    let m = env.mirror.metrics().await;
    assert_eq!(m.blob_requests("miss"), 1.0, "{}", m.0);
    assert_eq!(
        m.blob_requests("coalesced"),
        (CLIENTS - 1) as f64,
        "{}",
        m.0
    );
    assert_eq!(m.blob_requests("hit"), 0.0, "{}", m.0);
    assert_eq!(m.sum("hoard_fills_in_flight", &[]), 0.0);
}

/// Starts a fill of `path` that pauses at the upstream's gate after its
/// first chunk; returns the first client's response and what it has read.
async fn gated_fill(env: &Env, path: &str) -> (reqwest::Response, Vec<u8>) {
    env.hub.close_gate();
    let mut first = env.mirror.get(path).await;
    assert_eq!(first.status(), 200);
    let got = read_at_least(&mut first, 1).await;
    env.hub
        .wait_until("the fill is paused at the gate", |h| h.paused() >= 1)
        .await;
    (first, got)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_during_a_fill_is_answered_from_the_fill() {
    let (env, blob) = env_with_blob(9, BIG).await;
    let path = blob_path("alpine", &blob.digest);
    let (first, mut got) = gated_fill(&env, &path).await;

    let heads_upstream = |env: &Env| {
        env.hub
            .log()
            .iter()
            .filter(|s| s.method == hyper::Method::HEAD && s.path.contains("/blobs/"))
            .count()
    };
    let resp = env.mirror.head(&path).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "Content-Length"), BIG.to_string());
    assert_eq!(header(&resp, "Docker-Content-Digest"), blob.digest);
    assert_eq!(heads_upstream(&env), 0, "the fill knew the size");

    env.hub.open_gate();
    got.extend_from_slice(&first.bytes().await.expect("the first client's body"));
    assert!(
        got == blob.data,
        "first client's body ({} bytes)",
        got.len()
    );
    let m = env.mirror.metrics().await;
    assert_eq!(m.blob_requests("coalesced"), 1.0, "{}", m.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ranged_gets_during_a_fill_read_from_the_fill() {
    let (env, blob) = env_with_blob(8, BIG).await;
    let path = blob_path("alpine", &blob.digest);
    let (first, head) = gated_fill(&env, &path).await;
    let m = env.mirror.metrics().await;
    assert_eq!(
        m.sum("hoard_fills_in_flight", &[]),
        1.0,
        "one fill in flight:\n{}",
        m.0
    );

    // (Range, first, last): inside the first chunk, past it, open-ended, suffix.
    let cases = [
        ("bytes=0-99", 0, 99),
        ("bytes=2000000-2000999", 2_000_000, 2_000_999),
        ("bytes=4000000-", 4_000_000, BIG - 1),
        ("bytes=-5000", BIG - 5000, BIG - 1),
    ];
    let mut clients = Clients::new();
    for (range, _, _) in cases {
        clients.spawn(&env.mirror, &path, Some(range));
    }
    clients
        .wait_attached(&env.mirror, 1.0 + cases.len() as f64)
        .await;
    assert_eq!(env.hub.blob_gets(), 1);
    env.hub.open_gate();

    for ((range, a, b), (status, content_range, body)) in
        cases.into_iter().zip(clients.join().await)
    {
        assert_eq!(status, 206, "{range}");
        assert_eq!(content_range, format!("bytes {a}-{b}/{BIG}"), "{range}");
        let body = body.unwrap_or_else(|e| panic!("{range}: body error {e}"));
        assert!(
            body[..] == blob.data[a..=b],
            "{range}: wrong bytes ({} long)",
            body.len()
        );
    }
    let mut all = head;
    all.extend_from_slice(&first.bytes().await.unwrap());
    assert!(all == blob.data[..], "first client body");
    assert_eq!(
        env.hub.blob_gets(),
        1,
        "ranged requests during the fill went upstream"
    );
    assert!(
        env.hub.log().iter().all(|s| s.range.is_none()),
        "the fill must fetch the whole blob"
    );
    let m = env.mirror.metrics().await;
    assert_eq!(m.blob_requests("coalesced"), cases.len() as f64, "{}", m.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_upstream_blob_aborts_every_client_and_is_not_cached() {
    let (env, blob) = env_with_blob(9, BIG).await;
    let path = blob_path("alpine", &blob.digest);
    env.hub.corrupt(&blob.digest); // last byte flipped: only the end tells
    env.hub.close_gate();

    let mut clients = Clients::new();
    for i in 0..4 {
        clients.spawn(
            &env.mirror,
            &path,
            if i == 3 { Some("bytes=100-") } else { None },
        );
    }
    env.hub
        .wait_until("the fill is paused at the gate", |h| h.paused() >= 1)
        .await;
    clients.wait_attached(&env.mirror, 4.0).await;
    env.hub.open_gate();
    for (i, (status, _, body)) in clients.join().await.into_iter().enumerate() {
        assert!(
            !(status.is_success() && body.is_ok()),
            "client {i} got a complete {status} for bytes that do not match the digest"
        );
    }
    assert_eq!(env.hub.blob_gets(), 1);

    // Nothing was cached: the next request goes upstream again.
    env.hub.uncorrupt(&blob.digest);
    assert_eq!(env.mirror.get_ok(&path).await, blob.data);
    assert_eq!(env.hub.blob_gets(), 2, "a failed fill must not be cached");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ranges_teed_from_a_corrupt_fill_are_aborted_too() {
    // A range that lies in bytes already received must still wait for the
    // verdict on the whole blob: a clean end would hand out unverified bytes.
    let (env, blob) = env_with_blob(14, BIG).await;
    let path = blob_path("alpine", &blob.digest);
    env.hub.corrupt(&blob.digest);
    env.hub.close_gate();

    let ranges = ["bytes=0-9", "bytes=1000-1999", "bytes=2000000-2000999"];
    let mut clients = Clients::new();
    clients.spawn(&env.mirror, &path, None);
    for range in ranges {
        clients.spawn(&env.mirror, &path, Some(range));
    }
    env.hub
        .wait_until("the fill is paused at the gate", |h| h.paused() >= 1)
        .await;
    clients
        .wait_attached(&env.mirror, 1.0 + ranges.len() as f64)
        .await;
    env.hub.open_gate();
    let outcomes = clients.join().await;
    for (i, (status, content_range, body)) in outcomes.into_iter().enumerate() {
        let what = if i == 0 { "full GET" } else { ranges[i - 1] };
        assert!(
            !(status.is_success() && body.is_ok()),
            "{what}: complete {status} ({content_range}) teed from a fill that failed verification"
        );
    }
    env.hub.uncorrupt(&blob.digest);
    let resp = env.mirror.get_range(&path, "bytes=0-9").await;
    assert_eq!(resp.status(), 206);
    assert!(resp.bytes().await.unwrap()[..] == blob.data[..10]);
    assert_eq!(env.hub.blob_gets(), 2, "a failed fill must not be cached");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_blob_is_served_cold_and_warm() {
    // Images do reference the empty blob (sha256:e3b0c442...): its fill
    // ends before the first read, so the cold response has no first bytes.
    let (env, blob) = env_with_blob(16, 0).await;
    let path = blob_path("alpine", &blob.digest);
    for round in ["miss", "hit"] {
        let resp = env.mirror.get(&path).await;
        assert_eq!(resp.status(), 200, "{round}");
        assert_eq!(header(&resp, "Content-Length"), "0", "{round}");
        assert!(resp.bytes().await.unwrap().is_empty(), "{round}");
    }
    assert_eq!(env.hub.blob_gets(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fill_that_fails_before_any_byte_could_go_is_a_502_naming_upstream_and_digest() {
    let env = Env::start().await;
    let one = env.hub.add_blob("library/alpine", vec![7u8]);
    let small = env.hub.add_blob("library/alpine", pseudo_random(15, 1000));
    env.hub.corrupt(&one.digest);
    env.hub.corrupt(&small.digest);
    // The last byte of a range waits for the digest check: a 1-byte blob,
    // or a 1-byte range, has nothing to send before the verdict. Before the
    // head waited for the first bytes, the client got a closed connection.
    for (blob, range) in [(&one, None), (&small, Some("bytes=0-0"))] {
        let mut req = env
            .mirror
            .client
            .get(env.mirror.url(&blob_path("alpine", &blob.digest)));
        if let Some(range) = range {
            req = req.header("Range", range);
        }
        let resp = req
            .send()
            .await
            .expect("an answer, not a closed connection");
        let status = resp.status().as_u16();
        let body = resp.bytes().await.unwrap();
        check_oci_error(status, &body, 502, &["UNAVAILABLE"]);
        let text = String::from_utf8_lossy(&body);
        assert!(
            text.contains(&blob.digest) && text.contains("docker.io") && text.contains("digest"),
            "the error names the blob, the upstream and what failed: {text}"
        );
    }
    assert_eq!(env.hub.blob_gets(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_small_blob_is_aborted_and_not_cached() {
    // One chunk: every byte reaches hoard before it can know.
    let (env, blob) = env_with_blob(10, 1000).await;
    let path = blob_path("alpine", &blob.digest);
    env.hub.corrupt(&blob.digest);
    for attempt in 1..=2 {
        // A fill that fails aborts its readers' connections (src/body.rs)
        // once bytes went out, and is a 502 when none could: either way an
        // answer, never a connection closed without one.
        let resp = env.mirror.get(&path).await;
        let status = resp.status();
        let body = resp.bytes().await;
        assert!(
            !(status.is_success() && body.is_ok()),
            "attempt {attempt}: complete {status} for corrupt bytes"
        );
        assert_eq!(
            env.hub.blob_gets(),
            attempt,
            "attempt {attempt} must go upstream (nothing cached)"
        );
    }
    let resp = env.mirror.get_range(&path, "bytes=0-9").await;
    let status = resp.status();
    let body = resp.bytes().await;
    assert!(
        !(status.is_success() && body.is_ok()),
        "a Range of a corrupt fill was served ({status})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_hanging_up_does_not_cancel_the_fill() {
    let (env, blob) = env_with_blob(11, BIG).await;
    let path = blob_path("alpine", &blob.digest);
    env.hub.close_gate();

    let mut quitter = env.mirror.get(&path).await;
    assert_eq!(quitter.status(), 200);
    read_at_least(&mut quitter, 1).await;
    env.hub
        .wait_until("the fill is paused at the gate", |h| h.paused() >= 1)
        .await;

    let mut stayer = Clients::new();
    stayer.spawn(&env.mirror, &path, None);
    stayer.wait_attached(&env.mirror, 2.0).await;
    drop(quitter); // hang up mid-download
    env.hub.open_gate();

    let (status, _, body) = stayer.join().await.remove(0);
    assert_eq!(status, 200);
    assert!(body.expect("the staying client's body") == blob.data);
    assert_eq!(env.hub.blob_gets(), 1);

    env.mirror
        .wait_metrics("fill finished", |m| {
            m.sum("hoard_fills_in_flight", &[]) == 0.0
        })
        .await;
    env.hub.go_down().await;
    assert_eq!(
        env.mirror.get_ok(&path).await,
        blob.data,
        "blob must be cached after the fill"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lone_client_hanging_up_still_caches_the_blob() {
    let (env, blob) = env_with_blob(12, BIG).await;
    let path = blob_path("alpine", &blob.digest);
    env.hub.close_gate();

    let mut quitter = env.mirror.get(&path).await;
    assert_eq!(quitter.status(), 200);
    read_at_least(&mut quitter, 1).await;
    env.hub
        .wait_until("the fill is paused at the gate", |h| h.paused() >= 1)
        .await;
    drop(quitter);
    env.hub.open_gate();

    env.mirror
        .wait_metrics("fill finished", |m| {
            m.sum("hoard_fills_in_flight", &[]) == 0.0
        })
        .await;
    env.hub.go_down().await;
    assert_eq!(
        env.mirror.get_ok(&path).await,
        blob.data,
        "the fill went on without its client"
    );
    assert_eq!(env.hub.blob_gets(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_dropping_mid_fill_aborts_every_client() {
    // The writer going away is a failure, never a clean (short) end of body.
    let (env, blob) = env_with_blob(13, BIG).await;
    let path = blob_path("alpine", &blob.digest);
    env.hub.close_gate();

    let mut clients = Clients::new();
    for i in 0..3 {
        clients.spawn(
            &env.mirror,
            &path,
            if i == 2 { Some("bytes=10-") } else { None },
        );
    }
    env.hub
        .wait_until("the fill is paused at the gate", |h| h.paused() >= 1)
        .await;
    clients.wait_attached(&env.mirror, 3.0).await;
    env.hub.go_down().await; // closes the connection mid-body
    for (i, (status, _, body)) in clients.join().await.into_iter().enumerate() {
        assert!(
            !(status.is_success() && body.is_ok()),
            "client {i} got a complete {status} from a broken fill"
        );
    }
    env.mirror
        .wait_metrics("fill abandoned", |m| {
            m.sum("hoard_fills_in_flight", &[]) == 0.0
        })
        .await;

    env.hub.open_gate();
    env.hub.come_up().await;
    assert_eq!(env.mirror.get_ok(&path).await, blob.data);
    assert_eq!(
        env.hub.blob_gets(),
        2,
        "the broken fill must not have been cached"
    );
}
