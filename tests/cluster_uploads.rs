//! Upload sessions in a cluster (issue 13, item 3).
//!
//! - A push whose requests land on different replicas (chunked, with the
//!   final chunk in the `PUT`, monolithic, a cancel) succeeds: each request
//!   of a session goes to the replica that opened it, and the image pulls
//!   back by tag and digest from a replica that committed none of it.
//! - An upload id naming a node that is not a member, a forged id, and a
//!   forwarded request naming a third node are `404 BLOB_UPLOAD_UNKNOWN`,
//!   and nothing connects anywhere else; so is a session whose node stopped.
//! - Layers pushed at once through every replica into one new repository
//!   all stay linked (their record's compare-and-swap is retried).

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;

/// The tests of this file one at a time: each starts SeaweedFS and three
/// replicas, and side by side on a shared 2-core machine they took longer
/// to answer their first request than the harness's deadline.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const PUSHED: &str = "team/app";
const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

/// `POST` of a new session on `m`: its `Location` (a path) and id.
async fn open_session(m: &TestMirror) -> (String, String) {
    let url = m.url(&format!("/v2/{PUSHED}/blobs/uploads/"));
    let resp = m.client().post(url).send().await.unwrap();
    assert_eq!(resp.status(), 202, "POST of a session");
    let (location, id) = (
        header(&resp, "Location"),
        header(&resp, "Docker-Upload-UUID"),
    );
    assert_eq!(location, format!("/v2/{PUSHED}/blobs/uploads/{id}"));
    (location, id)
}

/// A request of the session at `location` on `m`, with `body` and the
/// `Content-Range` of `range` when given; the response.
async fn send(
    m: &TestMirror,
    method: reqwest::Method,
    location: &str,
    range: Option<(usize, usize)>,
    body: &[u8],
) -> reqwest::Response {
    let mut req = m
        .client()
        .request(method, m.url(location))
        .body(body.to_vec());
    if let Some((start, len)) = range {
        req = req.header("Content-Range", format!("{start}-{}", start + len - 1));
    }
    req.send().await.unwrap()
}

/// Asserts an upload session's answer: `status`, the same path and id
/// wherever it was sent, and `Range` covering `held` bytes.
fn assert_session(resp: &reqwest::Response, status: u16, location: &str, id: &str, held: usize) {
    assert_eq!(resp.status(), status, "{location}");
    assert_eq!(header(resp, "Location"), location);
    assert_eq!(header(resp, "Docker-Upload-UUID"), id);
    assert_eq!(
        header(resp, "Range"),
        format!("0-{}", held.saturating_sub(1))
    );
}

/// The final `PUT ?digest=` of a session on `m` with `last` as its body.
async fn finish(m: &TestMirror, location: &str, data: &[u8], last: &[u8]) -> String {
    let digest = sha256_digest(data);
    let url = format!("{location}?digest={digest}");
    let resp = send(m, reqwest::Method::PUT, &url, None, last).await;
    let status = resp.status();
    assert_eq!(status, 201, "{}", resp.text().await.unwrap_or_default());
    digest
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_push_spread_over_replicas_lands_and_pulls_back_from_a_third() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let Some(weed) = Weed::start().await else {
        return;
    };
    let hub = FakeRegistry::start().await;
    let nodes = replicas(3, &weed, "owners-push", &hub).await;
    let (a, b, c) = (&nodes[0].mirror, &nodes[1].mirror, &nodes[2].mirror);
    use reqwest::Method;

    // Layer 1: POST on A, PATCH on B, PATCH on C, status on C, PUT on A.
    let l1 = pseudo_random(81, 700_000);
    let (loc, id) = open_session(a).await;
    let r = send(b, Method::PATCH, &loc, Some((0, 300_000)), &l1[..300_000]).await;
    assert_session(&r, 202, &loc, &id, 300_000);
    let r = send(
        c,
        Method::PATCH,
        &loc,
        Some((300_000, 400_000)),
        &l1[300_000..],
    )
    .await;
    assert_session(&r, 202, &loc, &id, 700_000);
    let r = send(c, Method::GET, &loc, None, b"").await;
    assert_session(&r, 204, &loc, &id, 700_000);
    let l1_digest = finish(a, &loc, &l1, b"").await;

    // Layer 2: opened on B, a chunk through C, the last chunk in the PUT on A.
    let l2 = pseudo_random(82, 90_000);
    let (loc, id) = open_session(b).await;
    let r = send(c, Method::PATCH, &loc, None, &l2[..50_000]).await;
    assert_session(&r, 202, &loc, &id, 50_000);
    let l2_digest = finish(a, &loc, &l2, &l2[50_000..]).await;

    // A chunk out of order through another replica: the owner's 416 comes
    // back with its Range; the session is kept.
    let (loc, id) = open_session(a).await;
    let r = send(b, Method::PATCH, &loc, Some((5, 10)), b"0123456789").await;
    assert_session(&r, 416, &loc, &id, 0);
    // Cancelled through C, gone for B as well.
    let r = send(c, Method::DELETE, &loc, None, b"").await;
    assert_eq!(r.status(), 204, "DELETE through another replica");
    let r = send(b, Method::GET, &loc, None, b"").await;
    assert_oci_error(r, 404, &["BLOB_UPLOAD_UNKNOWN"]).await;

    // The config: monolithic, on A.
    let config = br#"{"architecture":"amd64","os":"linux"}"#.to_vec();
    let config_digest = sha256_digest(&config);
    push_blob_as(a, PUSHED, &config, &config_digest).await;

    // The manifest on B, which committed only layer 2 itself.
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": { "mediaType": OCI_CONFIG, "digest": config_digest, "size": config.len() },
        "layers": [
            { "mediaType": OCI_LAYER, "digest": l1_digest, "size": l1.len() },
            { "mediaType": OCI_LAYER, "digest": l2_digest, "size": l2.len() },
        ],
    }))
    .unwrap();
    let resp = b
        .client()
        .put(b.url(&manifest_path(PUSHED, "v1")))
        .header("Content-Type", OCI_MANIFEST)
        .body(manifest.clone())
        .send()
        .await
        .unwrap();
    let status = resp.status();
    assert_eq!(status, 201, "{}", resp.text().await.unwrap_or_default());
    let manifest_digest = sha256_digest(&manifest);

    // C committed nothing: it serves the image by tag and by digest.
    for reference in ["v1", manifest_digest.as_str()] {
        let got = c.get_ok(&manifest_path(PUSHED, reference)).await;
        assert!(got == manifest, "manifest by {reference} from C");
    }
    for (digest, data) in [
        (&config_digest, &config),
        (&l1_digest, &l1),
        (&l2_digest, &l2),
    ] {
        let got = c.get_ok(&blob_path(PUSHED, digest)).await;
        assert!(got == *data, "{digest} from C");
    }
    // A tag pushed through A later: C serves it once it has re-read the
    // repository's record (at most a second later).
    let resp = a
        .client()
        .put(a.url(&manifest_path(PUSHED, "v2")))
        .header("Content-Type", OCI_MANIFEST)
        .body(manifest.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201, "the second tag through A");
    let (client, url) = (c.client().clone(), c.url(&manifest_path(PUSHED, "v2")));
    wait_for(
        "C to serve a tag pushed through A",
        || {
            let (client, url) = (client.clone(), url.clone());
            async move {
                client
                    .get(&url)
                    .send()
                    .await
                    .is_ok_and(|r| r.status() == 200)
            }
        },
        || url.clone(),
    )
    .await;
    assert_eq!(hub.content_requests(), 0, "a push asks no upstream");
    for n in nodes {
        n.mirror.stop().await;
    }
}

/// An upload id as replicas make them, naming `node`.
fn id_naming(node: &str) -> String {
    let hex: String = node.bytes().map(|b| format!("{b:02x}")).collect();
    format!("{hex}-0123456789abcdef0123456789abcdef")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn upload_ids_naming_no_member_are_unknown_and_go_nowhere() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let Some(weed) = Weed::start().await else {
        return;
    };
    let hub = FakeRegistry::start().await;
    let mut nodes = replicas(3, &weed, "owners-forged", &hub).await;
    let a = &nodes[0].mirror;
    // A listener that must never see a connection: ids naming its address.
    let canary = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = canary.local_addr().unwrap();
    let forged = [
        id_naming("hoard-9"),
        id_naming(&addr.to_string()),
        id_naming(&format!("http://{addr}")),
        id_naming(&hub.url()),
        "not-an-id".to_owned(),
        "0123456789abcdef0123456789abcdef".to_owned(),
    ];
    for id in &forged {
        let loc = format!("/v2/{PUSHED}/blobs/uploads/{id}");
        for method in [
            reqwest::Method::PATCH,
            reqwest::Method::GET,
            reqwest::Method::PUT,
        ] {
            let r = send(a, method.clone(), &loc, None, b"chunk").await;
            assert_oci_error(r, 404, &["BLOB_UPLOAD_UNKNOWN"]).await;
        }
    }
    // A member's name with an id it never made: the member says unknown.
    let loc = format!("/v2/{PUSHED}/blobs/uploads/{}", id_naming("hoard-1"));
    let r = send(a, reqwest::Method::PATCH, &loc, None, b"chunk").await;
    assert_oci_error(r, 404, &["BLOB_UPLOAD_UNKNOWN"]).await;

    // A forwarded request naming a third node is not forwarded again.
    let (loc, _) = open_session(&nodes[1].mirror).await;
    let r = a
        .client()
        .patch(a.url(&loc))
        .header("x-hoard-cluster-secret", CLUSTER_SECRET)
        .header("x-hoard-forwarded", "hoard-2")
        .body(b"chunk".to_vec())
        .send()
        .await
        .unwrap();
    assert_oci_error(r, 404, &["BLOB_UPLOAD_UNKNOWN"]).await;
    // ... and the session on its node took nothing.
    let r = send(&nodes[1].mirror, reqwest::Method::GET, &loc, None, b"").await;
    assert_eq!(
        (r.status().as_u16(), header(&r, "Range")),
        (204, "0-0".into())
    );
    // Without the secret, a forwarding mark is refused outright.
    let r = a
        .client()
        .patch(a.url(&loc))
        .header("x-hoard-forwarded", "hoard-2")
        .body(b"chunk".to_vec())
        .send()
        .await
        .unwrap();
    assert_oci_error(r, 403, &["DENIED"]).await;

    // The node holding a session goes: its requests are unknown elsewhere,
    // whether or not the others have noticed yet.
    let (loc, _) = open_session(&nodes[2].mirror).await;
    nodes.remove(2).mirror.stop().await;
    let r = send(
        &nodes[0].mirror,
        reqwest::Method::PATCH,
        &loc,
        None,
        b"chunk",
    )
    .await;
    assert_oci_error(r, 404, &["BLOB_UPLOAD_UNKNOWN"]).await;

    let accepted = tokio::time::timeout(Duration::from_millis(200), canary.accept()).await;
    assert!(accepted.is_err(), "an upload id sent a request to {addr}");
    assert_eq!(hub.content_requests(), 0, "nothing was fetched upstream");
    for n in nodes {
        n.mirror.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn layers_pushed_at_once_through_every_replica_all_land_in_one_repository() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let Some(weed) = Weed::start().await else {
        return;
    };
    let hub = FakeRegistry::start().await;
    let nodes = replicas(3, &weed, "owners-race", &hub).await;
    // Nine layers of a repository none of them knows yet, three through
    // each replica, all at once: their links race for one record.
    let layers: Vec<Vec<u8>> = (0..9).map(|i| pseudo_random(90 + i, 20_000)).collect();
    let pushes: Vec<_> = layers
        .iter()
        .enumerate()
        .map(|(i, data)| {
            let m = &nodes[i % 3].mirror;
            let digest = sha256_digest(data);
            let url = m.url(&format!("/v2/{PUSHED}/blobs/uploads/?digest={digest}"));
            let req = m.client().post(url).body(data.clone());
            tokio::spawn(async move {
                let resp = req.send().await.expect("send");
                (
                    resp.status().as_u16(),
                    resp.text().await.unwrap_or_default(),
                )
            })
        })
        .collect();
    for (i, p) in pushes.into_iter().enumerate() {
        let (status, body) = p.await.expect("push task");
        assert_eq!(status, 201, "layer {i} through replica {}: {body}", i % 3);
    }
    // Every link survived: a manifest naming all nine is accepted anywhere.
    let config = br#"{"os":"linux"}"#.to_vec();
    let config_digest = sha256_digest(&config);
    push_blob_as(&nodes[1].mirror, PUSHED, &config, &config_digest).await;
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": { "mediaType": OCI_CONFIG, "digest": config_digest, "size": config.len() },
        "layers": layers.iter().map(|l| json!({
            "mediaType": OCI_LAYER, "digest": sha256_digest(l), "size": l.len()
        })).collect::<Vec<_>>(),
    }))
    .unwrap();
    let c = &nodes[2].mirror;
    let resp = c
        .client()
        .put(c.url(&manifest_path(PUSHED, "all")))
        .header("Content-Type", OCI_MANIFEST)
        .body(manifest.clone())
        .send()
        .await
        .unwrap();
    let status = resp.status();
    assert_eq!(status, 201, "{}", resp.text().await.unwrap_or_default());
    let a = &nodes[0].mirror;
    assert!(a.get_ok(&manifest_path(PUSHED, "all")).await == manifest);
    for l in &layers {
        assert!(a.get_ok(&blob_path(PUSHED, &sha256_digest(l))).await == *l);
    }
    for n in nodes {
        n.mirror.stop().await;
    }
}
