//! Local repositories through the real server: the push side of the
//! distribution spec (uploads, mounts, manifests), its edge cases, the
//! routing rule, listing, referrers, deletes and the garbage collector.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use serde_json::json;

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";

/// A mirror with a fake Docker Hub and `[local]` keys (TOML values).
async fn env_with(local: &[(&str, &str)]) -> Env {
    Env::start_with(|mut c| {
        for (k, v) in local {
            c = c.local(k, v);
        }
        c
    })
    .await
}

/// Monolithic upload (`POST ?digest=` with the body); returns the digest.
async fn push_blob(m: &TestMirror, repo: &str, data: &[u8]) -> String {
    let digest = sha256_digest(data);
    push_blob_as(m, repo, data, &digest).await;
    digest
}

/// Starts a session; returns its `Location`.
async fn start_session(m: &TestMirror, repo: &str) -> String {
    let resp = m
        .client
        .post(m.url(&format!("/v2/{repo}/blobs/uploads/")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    assert_eq!(header(&resp, "Range"), "0-0");
    assert_eq!(header(&resp, "Content-Length"), "0");
    let location = header(&resp, "Location");
    let uuid = header(&resp, "Docker-Upload-UUID");
    assert!(!uuid.is_empty() && location.ends_with(&uuid), "{location}");
    location
}

async fn patch(
    m: &TestMirror,
    location: &str,
    range: Option<&str>,
    data: &[u8],
) -> reqwest::Response {
    let mut req = m.client.patch(m.url(location)).body(data.to_vec());
    if let Some(r) = range {
        req = req.header("Content-Range", r);
    }
    req.send().await.unwrap()
}

async fn put_manifest(
    m: &TestMirror,
    repo: &str,
    reference: &str,
    media_type: &str,
    bytes: &[u8],
) -> reqwest::Response {
    m.client
        .put(m.url(&manifest_path(repo, reference)))
        .header("Content-Type", media_type)
        .body(bytes.to_vec())
        .send()
        .await
        .unwrap()
}

/// An OCI image manifest over blobs already pushed.
fn image(config: &(String, usize), layers: &[(String, usize)]) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": { "mediaType": OCI_CONFIG, "digest": config.0, "size": config.1 },
        "layers": layers.iter().map(|(d, s)| json!({
            "mediaType": OCI_LAYER, "digest": d, "size": s
        })).collect::<Vec<_>>(),
    }))
    .unwrap()
}

/// Pushes a config and `layers`, then the manifest under `tag`. Returns
/// the manifest digest and bytes.
async fn push_image(
    m: &TestMirror,
    repo: &str,
    tag: &str,
    seed: u64,
    layers: &[Vec<u8>],
) -> (String, Vec<u8>) {
    let config = format!("{{\"seed\":{seed}}}").into_bytes();
    let c = (push_blob(m, repo, &config).await, config.len());
    let mut ls = Vec::new();
    for l in layers {
        ls.push((push_blob(m, repo, l).await, l.len()));
    }
    let manifest = image(&c, &ls);
    let resp = put_manifest(m, repo, tag, OCI_MANIFEST, &manifest).await;
    let status = resp.status();
    let digest = header(&resp, "Docker-Content-Digest");
    assert_eq!(status, 201, "{}", resp.text().await.unwrap_or_default());
    assert_eq!(digest, sha256_digest(&manifest));
    (digest, manifest)
}

fn uploads_dir_files(env: &Env) -> usize {
    std::fs::read_dir(env.dir.path().join("uploads"))
        .map(|d| d.count())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_upload_then_pull_by_tag_and_digest_without_the_upstream() {
    let env = env_with(&[]).await;
    let m = &env.mirror;
    let layer = pseudo_random(1, 300_000);
    let location = start_session(m, "team/app").await;
    let resp = patch(m, &location, Some("0-99999"), &layer[..100_000]).await;
    assert_eq!(resp.status(), 202);
    assert_eq!(header(&resp, "Range"), "0-99999");
    assert_eq!(header(&resp, "Location"), location);
    // A chunk without Content-Range is appended (docker's streamed PATCH).
    let resp = patch(m, &location, None, &layer[100_000..200_000]).await;
    assert_eq!(resp.status(), 202);
    assert_eq!(header(&resp, "Range"), "0-199999");
    let status = m.get(&location).await;
    assert_eq!(status.status(), 204);
    assert_eq!(header(&status, "Range"), "0-199999");
    assert!(!header(&status, "Docker-Upload-UUID").is_empty());
    let digest = sha256_digest(&layer);
    let resp = m
        .client
        .put(m.url(&format!("{location}?digest={digest}")))
        .body(layer[200_000..].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    assert_eq!(header(&resp, "Docker-Content-Digest"), digest);
    assert_eq!(uploads_dir_files(&env), 0, "the staged file was renamed");

    let config = b"{}".to_vec();
    let c = (push_blob(m, "team/app", &config).await, config.len());
    let manifest = image(&c, &[(digest.clone(), layer.len())]);
    let resp = put_manifest(m, "team/app", "v1", OCI_MANIFEST, &manifest).await;
    assert_eq!(resp.status(), 201);
    let mdigest = sha256_digest(&manifest);
    assert_eq!(
        header(&resp, "Location"),
        format!("/v2/team/app/manifests/{mdigest}")
    );
    assert_eq!(header(&resp, "OCI-Subject"), "");

    env.hub.go_down().await;
    for reference in ["v1", mdigest.as_str()] {
        let resp = m.get(&manifest_path("team/app", reference)).await;
        assert_eq!(resp.status(), 200);
        assert_eq!(header(&resp, "Content-Type"), OCI_MANIFEST);
        assert_eq!(header(&resp, "Docker-Content-Digest"), mdigest);
        assert_eq!(resp.bytes().await.unwrap(), manifest);
    }
    let head = m.head(&blob_path("team/app", &digest)).await;
    assert_eq!(head.status(), 200);
    assert_eq!(header(&head, "Content-Length"), "300000");
    assert_eq!(m.get_ok(&blob_path("team/app", &digest)).await, layer);
    let part = m
        .get_range(&blob_path("team/app", &digest), "bytes=10-19")
        .await;
    assert_eq!(part.status(), 206);
    assert_eq!(part.bytes().await.unwrap(), &layer[10..20]);
    // Only blobs linked to the repository are served from it.
    let other = m.get(&blob_path("team/other", &digest)).await;
    assert!(other.status().is_client_error() || other.status().is_server_error());
    assert_eq!(
        env.hub.content_requests(),
        0,
        "{:?}",
        env.hub.content_paths()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunk_out_of_order_is_416_with_the_range_held() {
    let env = env_with(&[]).await;
    let m = &env.mirror;
    let data = pseudo_random(2, 30);
    let location = start_session(m, "team/app").await;
    let resp = patch(m, &location, Some("10-19"), &data[10..20]).await;
    assert_eq!(resp.status(), 416);
    assert_eq!(header(&resp, "Range"), "0-0");
    assert_eq!(header(&resp, "Location"), location);
    assert_eq!(
        patch(m, &location, Some("0-9"), &data[..10]).await.status(),
        202
    );
    // The same chunk again, and one that skips ahead: both refused.
    for r in ["0-9", "15-29"] {
        let resp = patch(m, &location, Some(r), &data[..10]).await;
        assert_eq!(resp.status(), 416, "{r}");
        assert_eq!(header(&resp, "Range"), "0-9");
    }
    // A body shorter than its Content-Range is refused and not kept.
    let resp = patch(m, &location, Some("10-29"), &data[10..20]).await;
    assert_eq!(resp.status(), 416);
    assert_eq!(header(&resp, "Range"), "0-9");
    assert_eq!(
        patch(m, &location, Some("10-29"), &data[10..])
            .await
            .status(),
        202
    );
    let digest = sha256_digest(&data);
    let resp = m
        .client
        .put(m.url(&format!("{location}?digest={digest}")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    assert_eq!(m.get_ok(&blob_path("team/app", &digest)).await, data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_digest_at_the_end_is_400_and_nothing_is_stored() {
    let env = env_with(&[]).await;
    let m = &env.mirror;
    let data = pseudo_random(3, 5000);
    let wrong = sha256_digest(b"something else");
    let location = start_session(m, "team/app").await;
    assert_eq!(patch(m, &location, None, &data).await.status(), 202);
    let resp = m
        .client
        .put(m.url(&format!("{location}?digest={wrong}")))
        .send()
        .await
        .unwrap();
    assert_oci_error(resp, 400, &["DIGEST_INVALID"]).await;
    // Monolithic too.
    let resp = m
        .client
        .post(m.url(&format!("/v2/team/app/blobs/uploads/?digest={wrong}")))
        .body(data.clone())
        .send()
        .await
        .unwrap();
    assert_oci_error(resp, 400, &["DIGEST_INVALID"]).await;
    let gone = m.get(&location).await;
    assert_oci_error(gone, 404, &["BLOB_UPLOAD_UNKNOWN"]).await;
    for d in [wrong, sha256_digest(&data)] {
        assert_eq!(m.head(&blob_path("team/app", &d)).await.status(), 404);
    }
    assert_eq!(uploads_dir_files(&env), 0);
    let metrics = m.metrics().await;
    assert_eq!(metrics.get("hoard_local_blobs", &[]), Some(0.0));
    assert_eq!(metrics.get("hoard_cache_blobs", &[]), Some(0.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifests_must_reference_blobs_and_children_in_the_repository() {
    let env = env_with(&[]).await;
    let m = &env.mirror;
    let layer = pseudo_random(4, 100);
    let config = b"{\"a\":1}".to_vec();
    let c = (push_blob(m, "team/app", &config).await, config.len());
    let missing = (sha256_digest(&layer), layer.len());
    let manifest = image(&c, &[missing]);
    let resp = put_manifest(m, "team/app", "v1", OCI_MANIFEST, &manifest).await;
    assert_oci_error(resp, 400, &["MANIFEST_BLOB_UNKNOWN"]).await;
    // In another repository is not enough either.
    push_blob(m, "team/other", &layer).await;
    let resp = put_manifest(m, "team/app", "v1", OCI_MANIFEST, &manifest).await;
    assert_oci_error(resp, 400, &["MANIFEST_BLOB_UNKNOWN"]).await;
    assert_eq!(
        m.get(&manifest_path("team/app", "v1")).await.status(),
        404,
        "nothing was recorded"
    );
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": OCI_INDEX,
        "manifests": [{ "mediaType": OCI_MANIFEST, "digest": sha256_digest(&manifest), "size": manifest.len() }],
    }))
    .unwrap();
    let resp = put_manifest(m, "team/app", "multi", OCI_INDEX, &index).await;
    assert_oci_error(resp, 400, &["MANIFEST_UNKNOWN"]).await;
    // Wrong digest in the URL, and JSON that is not a manifest.
    let resp = put_manifest(m, "team/app", &sha256_digest(b"x"), OCI_MANIFEST, &manifest).await;
    assert_oci_error(resp, 400, &["DIGEST_INVALID"]).await;
    let resp = put_manifest(m, "team/app", "v1", OCI_MANIFEST, b"not json").await;
    assert_oci_error(resp, 400, &["MANIFEST_INVALID"]).await;

    // With the blob pushed, the image and then the index over it go in.
    push_blob(m, "team/app", &layer).await;
    assert_eq!(
        put_manifest(m, "team/app", "v1", OCI_MANIFEST, &manifest)
            .await
            .status(),
        201
    );
    assert_eq!(
        put_manifest(m, "team/app", "multi", OCI_INDEX, &index)
            .await
            .status(),
        201
    );
    let got = m.get(&manifest_path("team/app", "multi")).await;
    assert_eq!(header(&got, "Content-Type"), OCI_INDEX);
    assert_eq!(got.bytes().await.unwrap(), index);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_manifest_is_413() {
    let env = env_with(&[("max_manifest_size", "2048")]).await;
    let m = &env.mirror;
    let big = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "annotations": { "pad": "x".repeat(4096) },
    }))
    .unwrap();
    let resp = put_manifest(m, "team/app", "big", OCI_MANIFEST, &big).await;
    assert_oci_error(resp, 413, &["MANIFEST_INVALID", "SIZE_INVALID"]).await;
    // Streamed without a Content-Length: cut off at the limit as well.
    let stream = futures_util::stream::iter(
        big.chunks(512)
            .map(|c| Ok::<_, std::io::Error>(Bytes::copy_from_slice(c)))
            .collect::<Vec<_>>(),
    );
    let resp = m
        .client
        .put(m.url(&manifest_path("team/app", "big")))
        .header("Content-Type", OCI_MANIFEST)
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .unwrap();
    assert_oci_error(resp, 413, &["MANIFEST_INVALID", "SIZE_INVALID"]).await;
    assert_eq!(m.get(&manifest_path("team/app", "big")).await.status(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_upload_session_expires_with_its_bytes() {
    let env = env_with(&[("upload_timeout", "\"300ms\"")]).await;
    let m = &env.mirror;
    let location = start_session(m, "team/app").await;
    assert_eq!(
        patch(m, &location, None, &pseudo_random(5, 1000))
            .await
            .status(),
        202
    );
    assert_eq!(uploads_dir_files(&env), 1);
    let start = tokio::time::Instant::now();
    while uploads_dir_files(&env) > 0 {
        assert!(
            start.elapsed() < DEADLINE,
            "the session's file was not removed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_oci_error(m.get(&location).await, 404, &["BLOB_UPLOAD_UNKNOWN"]).await;
    let resp = patch(m, &location, None, b"more").await;
    assert_oci_error(resp, 404, &["BLOB_UPLOAD_UNKNOWN"]).await;
    // DELETE cancels a live session at once.
    let location = start_session(m, "team/app").await;
    let resp = m.client.delete(m.url(&location)).send().await.unwrap();
    assert_eq!(resp.status(), 204);
    assert_oci_error(m.get(&location).await, 404, &["BLOB_UPLOAD_UNKNOWN"]).await;
    assert_eq!(uploads_dir_files(&env), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_uploads_of_the_same_blob_all_succeed() {
    let env = env_with(&[]).await;
    let data = Bytes::from(pseudo_random(6, 2 * 1024 * 1024));
    let digest = sha256_digest(&data);
    let mut tasks = Vec::new();
    for i in 0..8 {
        let (client, url) = (
            env.mirror.client.clone(),
            env.mirror.url(&format!(
                "/v2/team/app{}/blobs/uploads/?digest={digest}",
                i % 2
            )),
        );
        let data = data.clone();
        tasks.push(tokio::spawn(async move {
            client.post(url).body(data).send().await.unwrap().status()
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 201);
    }
    for repo in ["team/app0", "team/app1"] {
        assert_eq!(env.mirror.get_ok(&blob_path(repo, &digest)).await, data);
    }
    let m = env.mirror.metrics().await;
    assert_eq!(m.get("hoard_local_blobs", &[]), Some(1.0));
    assert_eq!(m.get("hoard_local_bytes", &[]), Some(data.len() as f64));
    assert_eq!(uploads_dir_files(&env), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cross_repository_mount_copies_no_bytes() {
    let env = env_with(&[]).await;
    let m = &env.mirror;
    let data = pseudo_random(7, 100_000);
    let digest = push_blob(m, "team/a", &data).await;
    let pushed = m.metrics().await.sum("hoard_push_bytes_total", &[]);
    assert_eq!(pushed, data.len() as f64);
    let resp = m
        .client
        .post(m.url(&format!(
            "/v2/team/b/blobs/uploads/?mount={digest}&from=team/a"
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    assert_eq!(
        header(&resp, "Location"),
        format!("/v2/team/b/blobs/{digest}")
    );
    assert_eq!(header(&resp, "Docker-Content-Digest"), digest);
    assert_eq!(m.get_ok(&blob_path("team/b", &digest)).await, data);
    let metrics = m.metrics().await;
    assert_eq!(metrics.sum("hoard_push_bytes_total", &[]), pushed);
    assert_eq!(metrics.sum("hoard_blob_mounts_total", &[]), 1.0);
    // From a repository that does not have it: a new session instead.
    let resp = m
        .client
        .post(m.url(&format!(
            "/v2/team/c/blobs/uploads/?mount={digest}&from=team/none"
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    assert!(!header(&resp, "Docker-Upload-UUID").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_images_are_collected_while_a_push_sharing_layers_succeeds() {
    let env = env_with(&[
        ("delete", "true"),
        ("gc_grace", "\"2s\""),
        ("gc_interval", "\"100ms\""),
    ])
    .await;
    let m = &env.mirror;
    let shared = pseudo_random(8, 200_000);
    let only_old = pseudo_random(9, 150_000);
    let (old, old_manifest) =
        push_image(m, "team/old", "v1", 1, &[shared.clone(), only_old.clone()]).await;
    // Keep pushing images that share the layer (uploaded again, mounted)
    // while the old one is deleted and collected.
    let pusher = {
        let (client, base) = (m.client.clone(), m.url(""));
        let shared = shared.clone();
        tokio::spawn(async move {
            let sd = sha256_digest(&shared);
            for i in 0..20u64 {
                let repo = format!("team/new{}", i % 3);
                let put = |path: String, body: Vec<u8>| {
                    client.post(format!("{base}{path}")).body(body).send()
                };
                let resp = if i % 2 == 0 {
                    put(
                        format!("/v2/{repo}/blobs/uploads/?digest={sd}"),
                        shared.clone(),
                    )
                    .await
                } else {
                    put(
                        format!("/v2/{repo}/blobs/uploads/?mount={sd}&from=team/old"),
                        Vec::new(),
                    )
                    .await
                };
                let status = resp.unwrap().status().as_u16();
                if status == 202 {
                    // Not mountable any more: upload it.
                    let r = put(
                        format!("/v2/{repo}/blobs/uploads/?digest={sd}"),
                        shared.clone(),
                    )
                    .await;
                    assert_eq!(r.unwrap().status(), 201);
                } else {
                    assert_eq!(status, 201);
                }
                let config = format!("{{\"n\":{i}}}").into_bytes();
                let cd = sha256_digest(&config);
                let r = put(
                    format!("/v2/{repo}/blobs/uploads/?digest={cd}"),
                    config.clone(),
                )
                .await;
                assert_eq!(r.unwrap().status(), 201);
                let manifest = image(&(cd, config.len()), &[(sd.clone(), shared.len())]);
                let r = client
                    .put(format!("{base}/v2/{repo}/manifests/v{i}"))
                    .header("Content-Type", OCI_MANIFEST)
                    .body(manifest)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(
                    r.status(),
                    201,
                    "push {i}: {}",
                    r.text().await.unwrap_or_default()
                );
                tokio::time::sleep(Duration::from_millis(40)).await;
            }
        })
    };
    let resp = m
        .client
        .delete(m.url(&manifest_path("team/old", "v1")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let resp = m
        .client
        .delete(m.url(&manifest_path("team/old", &old)))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    assert_eq!(m.get(&manifest_path("team/old", &old)).await.status(), 404);
    // The old-only layer, the old config and the old manifest go.
    let want = (only_old.len() + old_manifest.len() + "{\"seed\":1}".len()) as f64;
    m.wait_metrics("old image collected", |x| {
        x.sum("hoard_gc_reclaimed_blobs_total", &[]) >= 3.0
            && x.sum("hoard_gc_reclaimed_bytes_total", &[]) >= want
    })
    .await;
    tokio::time::timeout(Duration::from_secs(30), pusher)
        .await
        .unwrap()
        .unwrap();
    let old_only = sha256_digest(&only_old);
    assert!(
        !env.dir
            .path()
            .join("blobs/sha256")
            .join(&old_only[7..9])
            .join(&old_only[7..])
            .exists(),
        "the old-only layer is still on disk"
    );
    // Every new image is whole.
    for i in 0..20u64 {
        let repo = format!("team/new{}", i % 3);
        let manifest: serde_json::Value =
            serde_json::from_slice(&m.get_ok(&manifest_path(&repo, &format!("v{i}"))).await)
                .unwrap();
        for d in [
            &manifest["config"]["digest"],
            &manifest["layers"][0]["digest"],
        ] {
            let d = d.as_str().unwrap();
            assert_eq!(
                m.head(&blob_path(&repo, d)).await.status(),
                200,
                "{repo} v{i} {d}"
            );
        }
    }
    assert_eq!(
        m.get_ok(&blob_path("team/new0", &sha256_digest(&shared)))
            .await,
        shared
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletes_are_refused_unless_enabled() {
    let env = env_with(&[]).await;
    let m = &env.mirror;
    let (digest, _) = push_image(m, "team/app", "v1", 1, &[pseudo_random(10, 100)]).await;
    for path in [
        manifest_path("team/app", "v1"),
        manifest_path("team/app", &digest),
    ] {
        let resp = m.client.delete(m.url(&path)).send().await.unwrap();
        assert_oci_error(resp, 405, &["UNSUPPORTED"]).await;
    }
    assert_eq!(m.get(&manifest_path("team/app", "v1")).await.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_content_is_outside_the_cache_budget() {
    const MIB: usize = 1024 * 1024;
    let hub = FakeRegistry::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = Cfg::new(dir.path())
        .upstream("docker.io", &hub.url())
        .top("max_size", "\"2MiB\"");
    let m = TestMirror::start(&cfg.toml()).await;
    let local = pseudo_random(11, MIB + MIB / 2);
    let digest = push_blob(&m, "team/app", &local).await;
    let pulled: Vec<Blob> = (0..4)
        .map(|i| hub.add_blob("library/alpine", pseudo_random(20 + i, MIB)))
        .collect();
    for b in &pulled {
        assert_eq!(m.get_ok(&blob_path("alpine", &b.digest)).await, b.data);
    }
    m.wait_metrics("cached blobs evicted", |x| {
        x.sum("hoard_evictions_total", &[]) >= 2.0
    })
    .await;
    assert_eq!(m.get_ok(&blob_path("team/app", &digest)).await, local);
    let x = m.metrics().await;
    assert_eq!(x.get("hoard_local_bytes", &[]), Some(local.len() as f64));
    assert_eq!(x.get("hoard_local_blobs", &[]), Some(1.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_routing_rule_keeps_pushes_away_from_upstream_names() {
    let ghcr = FakeRegistry::start().await;
    let env = Env::start_with(|c| {
        c.upstream("ghcr.io", &ghcr.url())
            .local("push_prefixes", "[\"team\", \"ops/tools\"]")
    })
    .await;
    let m = &env.mirror;
    let hub_image = env.hub.add_simple_image("library/redis", "7", 1);
    env.hub.add_simple_image("team/cached", "1", 2);
    assert_eq!(m.get(&manifest_path("redis", "7")).await.status(), 200);
    assert_eq!(
        m.get(&manifest_path("team/cached", "1")).await.status(),
        200
    );
    let refused = [
        "/v2/alpine/blobs/uploads/",
        "/v2/library/alpine/blobs/uploads/",
        "/v2/ghcr.io/org/app/blobs/uploads/",
        "/v2/team/app/blobs/uploads/?ns=docker.io",
        "/v2/team/cached/blobs/uploads/",
        "/v2/other/app/blobs/uploads/",
        "/v2/ops/app/blobs/uploads/",
        "/v2/unknown.example.com/app/blobs/uploads/",
    ];
    for path in refused {
        let resp = m.client.post(m.url(path)).send().await.unwrap();
        let status = resp.status().as_u16();
        let body = resp.bytes().await.unwrap();
        check_oci_error(status, &body, 403, &["DENIED"]);
    }
    let resp = put_manifest(m, "redis", "7", OCI_MANIFEST, &hub_image.manifest).await;
    assert_oci_error(resp, 403, &["DENIED"]).await;
    // Allowed names become local repositories and are served locally,
    // without asking the upstream; upstream names still go upstream.
    let (digest, _) = push_image(m, "ops/tools/lint", "v1", 3, &[pseudo_random(12, 10)]).await;
    push_image(m, "team/app", "v1", 4, &[pseudo_random(13, 10)]).await;
    let before = env.hub.manifest_gets() + env.hub.manifest_heads();
    let resp = m.get(&manifest_path("ops/tools/lint", "v1")).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "Docker-Content-Digest"), digest);
    assert_eq!(env.hub.manifest_gets() + env.hub.manifest_heads(), before);
    // With ns, the same name is the upstream's (which does not have it).
    let resp = m
        .get(&format!("{}?ns=docker.io", manifest_path("team/app", "v1")))
        .await;
    assert_eq!(resp.status(), 404);
    assert!(env.hub.manifest_gets() + env.hub.manifest_heads() > before);
    // A name the upstream also has, never pulled: before pushing, a client
    // HEADs each layer; the answer is about the local repository (absent),
    // or the client would skip the upload and its manifest would fail.
    let namesake = env.hub.add_simple_image("team/dup", "v1", 5);
    let layer = &namesake.layers[0];
    let resp = m.head(&blob_path("team/dup", &layer.digest)).await;
    assert_eq!(resp.status(), 404);
    push_image(m, "team/dup", "v1", 6, &[layer.data.to_vec()]).await;
    assert_eq!(
        m.head(&blob_path("team/dup", &layer.digest)).await.status(),
        200
    );
    // The cached upstream tag is untouched by all of this.
    let resp = m.get(&manifest_path("redis", "7")).await;
    assert_eq!(header(&resp, "Docker-Content-Digest"), hub_image.digest);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catalog_and_tags_list_local_repositories_with_pagination() {
    let env = env_with(&[]).await;
    let m = &env.mirror;
    let layer = pseudo_random(14, 10);
    for tag in ["a", "b", "c"] {
        push_image(m, "team/app", tag, 1, std::slice::from_ref(&layer)).await;
    }
    push_image(m, "team/web", "v1", 2, std::slice::from_ref(&layer)).await;
    env.hub.add_simple_image("library/redis", "7", 1);
    assert_eq!(m.get(&manifest_path("redis", "7")).await.status(), 200);

    let all: serde_json::Value = serde_json::from_slice(&m.get_ok("/v2/_catalog").await).unwrap();
    assert_eq!(
        all["repositories"],
        json!(["library/redis", "team/app", "team/web"])
    );
    let page = m.get("/v2/_catalog?n=2").await;
    assert_eq!(
        header(&page, "Link"),
        "</v2/_catalog?last=team%2Fapp&n=2>; rel=\"next\""
    );
    let page: serde_json::Value = serde_json::from_slice(&page.bytes().await.unwrap()).unwrap();
    assert_eq!(page["repositories"], json!(["library/redis", "team/app"]));
    let rest: serde_json::Value =
        serde_json::from_slice(&m.get_ok("/v2/_catalog?n=2&last=team%2Fapp").await).unwrap();
    assert_eq!(rest["repositories"], json!(["team/web"]));

    let tags = m.get("/v2/team/app/tags/list?n=2").await;
    assert_eq!(
        header(&tags, "Link"),
        "</v2/team/app/tags/list?last=b&n=2>; rel=\"next\""
    );
    let tags: serde_json::Value = serde_json::from_slice(&tags.bytes().await.unwrap()).unwrap();
    assert_eq!(tags, json!({"name": "team/app", "tags": ["a", "b"]}));
    let rest = m.get("/v2/team/app/tags/list?n=2&last=b").await;
    assert_eq!(header(&rest, "Link"), "");
    let rest: serde_json::Value = serde_json::from_slice(&rest.bytes().await.unwrap()).unwrap();
    assert_eq!(rest["tags"], json!(["c"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn referrers_list_artifacts_pushed_with_a_subject() {
    let env = env_with(&[]).await;
    let m = &env.mirror;
    let (subject, manifest) = push_image(m, "team/app", "v1", 1, &[pseudo_random(15, 10)]).await;
    let empty = b"{}".to_vec();
    let ed = push_blob(m, "team/app", &empty).await;
    let sig_layer = push_blob(m, "team/app", b"signature").await;
    let mut pushed = Vec::new();
    for (kind, chart) in [
        ("application/vnd.dev.cosign.artifact.sig.v1+json", false),
        ("application/spdx+json", false),
        ("", true),
    ] {
        let mut a = json!({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": { "mediaType": "application/vnd.oci.empty.v1+json", "digest": ed, "size": 2 },
            "layers": [{ "mediaType": "application/octet-stream", "digest": sig_layer, "size": 9 }],
            "subject": { "mediaType": OCI_MANIFEST, "digest": subject, "size": manifest.len() },
            "annotations": { "kind": kind },
        });
        if chart {
            // A Helm chart: no artifactType, the config media type says it.
            a["config"]["mediaType"] = json!("application/vnd.cncf.helm.config.v1+json");
        } else {
            a["artifactType"] = json!(kind);
        }
        let bytes = serde_json::to_vec(&a).unwrap();
        let digest = sha256_digest(&bytes);
        let resp = put_manifest(m, "team/app", &digest, OCI_MANIFEST, &bytes).await;
        assert_eq!(resp.status(), 201);
        assert_eq!(header(&resp, "OCI-Subject"), subject);
        pushed.push(digest);
    }
    let resp = m.get(&format!("/v2/team/app/referrers/{subject}")).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "Content-Type"), OCI_INDEX);
    assert_eq!(header(&resp, "OCI-Filters-Applied"), "");
    let index: serde_json::Value = serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap();
    let mut got: Vec<&str> = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["digest"].as_str().unwrap())
        .collect();
    got.sort();
    pushed.sort();
    assert_eq!(got, pushed);
    let resp = m
        .get(&format!("/v2/team/app/referrers/{subject}?artifactType=application/vnd.cncf.helm.config.v1%2Bjson"))
        .await;
    assert_eq!(header(&resp, "OCI-Filters-Applied"), "artifactType");
    let index: serde_json::Value = serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap();
    assert_eq!(index["manifests"].as_array().unwrap().len(), 1);
    assert_eq!(
        index["manifests"][0]["artifactType"],
        "application/vnd.cncf.helm.config.v1+json"
    );
    // An unknown subject: an empty index, not an error.
    let none = m
        .get(&format!("/v2/team/app/referrers/{}", sha256_digest(b"no")))
        .await;
    assert_eq!(none.status(), 200);
    let index: serde_json::Value = serde_json::from_slice(&none.bytes().await.unwrap()).unwrap();
    assert_eq!(index["manifests"], json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_repositories_survive_a_restart() {
    let hub = FakeRegistry::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = Cfg::new(dir.path())
        .upstream("docker.io", &hub.url())
        .top("max_size", "\"1MiB\"");
    let m = TestMirror::start(&cfg.toml()).await;
    let layer = pseudo_random(16, 800_000);
    let (digest, _) = push_image(&m, "team/app", "v1", 1, std::slice::from_ref(&layer)).await;
    m.stop().await;
    let m = TestMirror::start(&cfg.toml()).await;
    let resp = m.get(&manifest_path("team/app", "v1")).await;
    assert_eq!(header(&resp, "Docker-Content-Digest"), digest);
    assert_eq!(
        m.get_ok(&blob_path("team/app", &sha256_digest(&layer)))
            .await,
        layer
    );
    let x = m.metrics().await;
    assert!(x.get("hoard_local_bytes", &[]).unwrap_or(0.0) >= layer.len() as f64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushed_blobs_are_private_but_pulled_base_layers_stay_public() {
    let env = env_with(&[]).await;
    let m = &env.mirror;
    let base = env.hub.add_blob("library/alpine", pseudo_random(18, 5000));
    assert_eq!(
        m.get_ok(&blob_path("alpine", &base.digest)).await,
        base.data
    );
    let own = pseudo_random(19, 4000);
    push_image(m, "team/app", "v1", 1, &[base.data.to_vec(), own.clone()]).await;
    let own = sha256_digest(&own);
    // Only pushed: not readable under an upstream name by its digest.
    let resp = m.get(&blob_path("alpine", &own)).await;
    assert_oci_error(resp, 404, &["BLOB_UNKNOWN"]).await;
    env.hub.go_down().await;
    let resp = m.get(&blob_path("alpine", &own)).await;
    assert_eq!(resp.status(), 503);
    // The base layer came from the upstream first: still served offline
    // under the upstream's name, and under the local one.
    assert_eq!(
        m.get_ok(&blob_path("alpine", &base.digest)).await,
        base.data
    );
    assert_eq!(
        m.get_ok(&blob_path("team/app", &base.digest)).await,
        base.data
    );
    assert_eq!(m.get_ok(&blob_path("team/app", &own)).await.len(), 4000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pulls_of_pushed_content_are_counted_as_local_not_as_cache_hits() {
    let env = env_with(&[]).await;
    let m = &env.mirror;
    let layer = pseudo_random(7, 50_000);
    let (digest, manifest) = push_image(m, "team/app", "v1", 7, std::slice::from_ref(&layer)).await;
    assert_eq!(m.get_ok(&manifest_path("team/app", "v1")).await, manifest);
    assert_eq!(
        m.get_ok(&manifest_path("team/app", &digest)).await,
        manifest
    );
    assert_eq!(
        m.get_ok(&blob_path("team/app", &sha256_digest(&layer)))
            .await,
        layer
    );

    // Not mirror traffic: a hit here would inflate the mirror's hit ratio.
    let x = m.metrics().await;
    let local = |kind| {
        x.sum(
            "hoard_requests_total",
            &[("kind", kind), ("outcome", "local")],
        )
    };
    assert_eq!(local("manifest"), 2.0);
    assert_eq!(local("blob"), 1.0);
    assert_eq!(x.sum("hoard_requests_total", &[("outcome", "hit")]), 0.0);
    let served = (2 * manifest.len() + layer.len()) as f64;
    assert_eq!(
        x.sum("hoard_served_bytes_total", &[("source", "local")]),
        served
    );
    assert_eq!(
        x.sum("hoard_served_bytes_total", &[("source", "cache")]),
        0.0
    );
}

/// Issue 16 section 8: a reference that is neither a tag nor a digest
/// names no manifest, so GET and HEAD answer the spec's 404, in a local
/// repository as in a mirrored one (before: 400 MANIFEST_INVALID).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reference_that_is_no_tag_is_manifest_unknown() {
    let env = env_with(&[]).await;
    let m = &env.mirror;
    env.hub.add_simple_image("library/alpine", "latest", 1);
    push_image(m, "team/app", "v1", 1, &[pseudo_random(4, 100)]).await;
    for repo in ["team/app", "library/alpine"] {
        let path = manifest_path(repo, ".INVALID_MANIFEST_NAME");
        assert_oci_error(m.get(&path).await, 404, &["MANIFEST_UNKNOWN"]).await;
        assert_eq!(m.head(&path).await.status(), 404, "HEAD {path}");
    }
    assert_eq!(env.hub.content_requests(), 0);
}

/// Issue 16 section 8: the final PUT's Content-Range is checked like a
/// PATCH's. One that does not continue the session is 416 with the session
/// kept (before: the bytes were appended, the digest failed, the session
/// was lost); a PATCH with the right range then resumes and the upload ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_final_put_out_of_order_is_416_and_the_session_survives() {
    let env = env_with(&[]).await;
    let m = &env.mirror;
    let data = pseudo_random(5, 30);
    let digest = sha256_digest(&data);
    let location = start_session(m, "team/app").await;
    assert_eq!(
        patch(m, &location, Some("0-9"), &data[..10]).await.status(),
        202
    );
    let put = |range: &'static str, body: Vec<u8>| {
        m.client
            .put(m.url(&format!("{location}?digest={digest}")))
            .header("Content-Range", range)
            .body(body)
            .send()
    };
    // Skips ahead, repeats the first chunk, or is shorter than it says.
    for (range, body) in [
        ("20-29", &data[20..]),
        ("0-9", &data[..10]),
        ("10-29", &data[10..20]),
    ] {
        let resp = put(range, body.to_vec()).await.unwrap();
        assert_eq!(resp.status(), 416, "{range}");
        assert_eq!(header(&resp, "Range"), "0-9", "{range}");
        assert_eq!(header(&resp, "Location"), location, "{range}");
    }
    let status = m.get(&location).await;
    assert_eq!(status.status(), 204, "the session is still there");
    assert_eq!(header(&status, "Range"), "0-9");
    assert_eq!(
        patch(m, &location, Some("10-19"), &data[10..20])
            .await
            .status(),
        202
    );
    let resp = put("20-29", data[20..].to_vec()).await.unwrap();
    assert_eq!(resp.status(), 201);
    assert_eq!(header(&resp, "Docker-Content-Digest"), digest);
    assert_eq!(m.get_ok(&blob_path("team/app", &digest)).await, data);
}

/// Issue 16 section 8: non-distributable ("foreign") layers, as Windows
/// images reference, need not be uploaded for their manifest to be
/// accepted; every other blob still must be.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_layers_need_not_be_uploaded() {
    let env = env_with(&[]).await;
    let m = &env.mirror;
    let config = b"{\"os\":\"windows\"}".to_vec();
    let c = push_blob(m, "team/win", &config).await;
    let own = pseudo_random(6, 1000);
    let own_digest = push_blob(m, "team/win", &own).await;
    let foreign = |media_type: &str, seed: u64| {
        json!({
            "mediaType": media_type,
            "digest": sha256_digest(&pseudo_random(seed, 50)),
            "size": 50,
            "urls": ["https://mcr.microsoft.com/v2/windows/blobs/x"],
        })
    };
    let manifest = |layers: Vec<serde_json::Value>| {
        serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": { "mediaType": OCI_CONFIG, "digest": c, "size": config.len() },
            "layers": layers,
        }))
        .unwrap()
    };
    let own_layer = json!({ "mediaType": OCI_LAYER, "digest": own_digest, "size": own.len() });
    let accepted = manifest(vec![
        foreign(
            "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
            7,
        ),
        foreign(
            "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
            8,
        ),
        own_layer.clone(),
    ]);
    let resp = put_manifest(m, "team/win", "ltsc", OCI_MANIFEST, &accepted).await;
    assert_eq!(resp.status(), 201, "{}", resp.text().await.unwrap());
    assert_eq!(m.get_ok(&manifest_path("team/win", "ltsc")).await, accepted);
    // The same missing blob as an ordinary layer is still refused.
    let refused = manifest(vec![foreign(OCI_LAYER, 7), own_layer]);
    let resp = put_manifest(m, "team/win", "bad", OCI_MANIFEST, &refused).await;
    assert_oci_error(resp, 400, &["MANIFEST_BLOB_UNKNOWN"]).await;
}

/// docker asks for each layer with a blob `HEAD` first; for a name of the
/// default upstream that `HEAD` answers from the shared cache (pulls need
/// it), so the refusal comes at the first write: the upload `POST` (or the
/// manifest `PUT` when every layer "already exists"), with the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_of_the_default_upstream_is_refused_at_the_upload_post() {
    let env = env_with(&[]).await;
    env.hub.add_simple_image("bitnami/redis", "7", 41);
    let m = &env.mirror;
    m.get_ok(&manifest_path("bitnami/redis", "7")).await;
    for name in ["alpine", "library/alpine", "bitnami/redis"] {
        let resp = m
            .client
            .post(m.url(&format!("/v2/{name}/blobs/uploads/")))
            .send()
            .await
            .expect("POST");
        assert_eq!(resp.status(), 403, "{name}");
        let body = resp.text().await.expect("body");
        assert!(body.contains("\"DENIED\""), "{name}: {body}");
        assert!(
            body.contains("a name of the default upstream"),
            "{name}: {body}"
        );
    }
    let resp = m
        .client
        .post(m.url("/v2/team/app/blobs/uploads/"))
        .send()
        .await
        .expect("POST");
    assert_eq!(resp.status(), 202, "a team name is pushable");
}
