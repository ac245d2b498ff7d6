//! Three hoard replicas on one bucket (issue 13): real nodes, each with its
//! own disk tier, `[cluster]` naming the others, one SeaweedFS bucket, one
//! counting upstream.
//!
//! - 32 concurrent cold GETs of one blob spread over the three replicas
//!   reach the upstream once (the digest's owner fetches; the others are
//!   forwarded to it one hop), and every client gets the right bytes;
//! - what one replica fetched, the others serve without asking the upstream;
//! - with the upstream stopped, every replica serves the image by tag and by
//!   digest (tags and blobs come from the bucket);
//! - a replica started with an empty disk serves everything from the bucket.

mod common;

use common::*;

const REPO: &str = "library/app";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_replicas_on_one_bucket_fetch_each_blob_once_and_serve_it_everywhere() {
    let Some(weed) = Weed::start().await else {
        return;
    };
    let hub = FakeRegistry::start().await;
    let image = hub.add_image(
        REPO,
        "v1",
        50,
        &[
            pseudo_random(51, 3 * 1024 * 1024 + 17),
            pseudo_random(52, 40_000),
        ],
    );
    let big = hub.add_blob(REPO, pseudo_random(53, 5 * 1024 * 1024 + 3));
    let nodes = replicas(3, &weed, "cluster", &hub).await;

    // 32 concurrent cold GETs, round-robin over the replicas.
    let path = blob_path(REPO, &big.digest);
    let clients: Vec<_> = (0..32)
        .map(|i| {
            let req = nodes[i % 3]
                .mirror
                .client()
                .get(nodes[i % 3].mirror.url(&path));
            tokio::spawn(async move {
                let resp = req.send().await.expect("send");
                (resp.status().as_u16(), resp.bytes().await)
            })
        })
        .collect();
    for (i, c) in clients.into_iter().enumerate() {
        let (status, body) = tokio::time::timeout(DEADLINE, c)
            .await
            .expect("client finished")
            .expect("client task");
        assert_eq!(status, 200, "client {i}");
        let body = body.unwrap_or_else(|e| panic!("client {i}: body broke off: {e}"));
        assert!(body == big.data, "client {i}: wrong bytes");
    }
    for n in &nodes {
        n.mirror.settle().await;
    }
    let gets = upstream_gets(&hub, &big.digest);
    assert_eq!(
        gets.len(),
        1,
        "32 cold GETs over 3 replicas: one upstream GET, fleet-wide: {gets:?}"
    );

    // The image through replica 0; then replicas 1 and 2 serve it without
    // asking the upstream for a blob.
    pull_image(&nodes[0].mirror, &image).await;
    for n in &nodes {
        n.mirror.settle().await;
    }
    let blob_gets_before = hub.blob_gets();
    for n in &nodes[1..] {
        for blob in image.blobs() {
            let got = n.mirror.get_ok(&blob_path(REPO, &blob.digest)).await;
            assert!(got == blob.data, "{} through another replica", blob.digest);
        }
    }
    assert_eq!(
        hub.blob_gets(),
        blob_gets_before,
        "what one replica fetched, the others serve from the bucket"
    );

    // The upstream stops: every replica serves the image by tag and digest.
    hub.go_down().await;
    for (i, n) in nodes.iter().enumerate() {
        let by_tag = n.mirror.get(&manifest_path(REPO, "v1")).await;
        let status = by_tag.status();
        if status != 200 {
            let body = by_tag.text().await.unwrap_or_default();
            panic!("replica {i}: the tag, upstream down: {status} {body}");
        }
        assert!(by_tag.bytes().await.unwrap() == image.manifest);
        pull_image_by_digest(&n.mirror, &image).await;
    }

    // A replica with an empty disk, upstream still down: all from the bucket.
    let fresh = replicas(1, &weed, "cluster", &hub).await;
    let by_tag = fresh[0].mirror.get(&manifest_path(REPO, "v1")).await;
    assert_eq!(by_tag.status(), 200, "an empty replica: the tag");
    pull_image_by_digest(&fresh[0].mirror, &image).await;
    assert!(
        fresh[0].mirror.get_ok(&path).await == big.data,
        "an empty replica: the big blob"
    );

    for n in fresh.into_iter().chain(nodes) {
        n.mirror.stop().await;
    }
}

/// The upstream's `GET`s of blob `digest`, with their `Range` headers.
fn upstream_gets(hub: &FakeRegistry, digest: &str) -> Vec<Option<String>> {
    hub.log()
        .into_iter()
        .filter(|s| s.kind == Kind::Blob && s.method == hyper::Method::GET)
        .filter(|s| s.path.ends_with(digest))
        .map(|s| s.range)
        .collect()
}

/// Manifest by tag, then every blob.
async fn pull_image(mirror: &TestMirror, image: &Image) {
    assert!(mirror.get_ok(&manifest_path(REPO, "v1")).await == image.manifest);
    for blob in image.blobs() {
        assert!(mirror.get_ok(&blob_path(REPO, &blob.digest)).await == blob.data);
    }
}

/// Manifest by digest, then every blob.
async fn pull_image_by_digest(mirror: &TestMirror, image: &Image) {
    let m = mirror.get(&manifest_path(REPO, &image.digest)).await;
    if m.status() != 200 {
        let status = m.status();
        panic!(
            "manifest by digest: {status} {}",
            m.text().await.unwrap_or_default()
        );
    }
    assert!(m.bytes().await.unwrap() == image.manifest);
    for blob in image.blobs() {
        let resp = mirror.get(&blob_path(REPO, &blob.digest)).await;
        assert_eq!(resp.status(), 200, "{}", blob.digest);
        assert!(resp.bytes().await.unwrap() == blob.data, "{}", blob.digest);
    }
}
