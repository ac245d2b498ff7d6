//! sha512 digests for pushed content (issue 16 §8): the distribution spec
//! lets a client push blobs and manifests by sha512, so local repositories
//! take them end to end (monolithic and chunked uploads, manifests by
//! digest and manifests referencing sha512 blobs, referrers, pulls, a
//! restart), while the mirror side stays sha256 and says so.

mod common;

use common::*;
use serde_json::json;

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

async fn put(m: &TestMirror, path: &str, content_type: &str, body: &[u8]) -> reqwest::Response {
    m.client
        .put(m.url(path))
        .header("Content-Type", content_type)
        .body(body.to_vec())
        .send()
        .await
        .unwrap()
}

/// Monolithic upload by sha512 (`POST ?digest=sha512:...`).
async fn push_blob_512(m: &TestMirror, repo: &str, data: &[u8]) -> String {
    let digest = sha512_digest(data);
    push_blob_as(m, repo, data, &digest).await;
    digest
}

/// Chunked upload (two PATCHes, then `PUT ?digest=sha512:...`).
async fn push_chunked_512(m: &TestMirror, repo: &str, data: &[u8]) -> String {
    let resp = m
        .client
        .post(m.url(&format!("/v2/{repo}/blobs/uploads/")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let location = header(&resp, "Location");
    let half = data.len() / 2;
    for (range, chunk) in [
        (format!("0-{}", half - 1), &data[..half]),
        (format!("{half}-{}", data.len() - 1), &data[half..]),
    ] {
        let resp = m
            .client
            .patch(m.url(&location))
            .header("Content-Range", range)
            .body(chunk.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 202);
    }
    let digest = sha512_digest(data);
    let resp = m
        .client
        .put(m.url(&format!("{location}?digest={digest}")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201, "chunked sha512 upload");
    assert_eq!(header(&resp, "Docker-Content-Digest"), digest);
    digest
}

fn image(config: (&str, usize), layer: (&str, usize), subject: Option<(&str, usize)>) -> Vec<u8> {
    let mut m = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": { "mediaType": "application/vnd.oci.image.config.v1+json", "digest": config.0, "size": config.1 },
        "layers": [{ "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": layer.0, "size": layer.1 }],
    });
    if let Some((d, size)) = subject {
        m["subject"] = json!({ "mediaType": OCI_MANIFEST, "digest": d, "size": size });
        m["artifactType"] = json!("application/vnd.example.sbom");
    }
    serde_json::to_vec(&m).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blobs_manifests_and_referrers_by_sha512_push_and_pull_back() {
    let hub = FakeRegistry::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = Cfg::new(dir.path()).upstream("docker.io", &hub.url());
    let m = TestMirror::start(&cfg.toml()).await;
    let repo = "team/app";
    let config = br#"{"architecture":"amd64","os":"linux"}"#.to_vec();
    let layer = pseudo_random(512, 300_000);
    let cd = push_blob_512(&m, repo, &config).await;
    let ld = push_chunked_512(&m, repo, &layer).await;
    assert!(
        blob_file(dir.path(), &ld).is_file(),
        "stored as blobs/sha512/<2>/<hex>"
    );

    // A manifest referencing sha512 blobs, pushed by its sha512 digest.
    let manifest = image((&cd, config.len()), (&ld, layer.len()), None);
    let md = sha512_digest(&manifest);
    let resp = put(&m, &manifest_path(repo, &md), OCI_MANIFEST, &manifest).await;
    assert_eq!(resp.status(), 201);
    assert_eq!(header(&resp, "Docker-Content-Digest"), md);
    assert_eq!(
        header(&resp, "Location"),
        format!("/v2/{repo}/manifests/{md}")
    );
    // The same bytes by tag: the canonical sha256.
    let resp = put(&m, &manifest_path(repo, "v1"), OCI_MANIFEST, &manifest).await;
    assert_eq!(resp.status(), 201);
    assert_eq!(
        header(&resp, "Docker-Content-Digest"),
        sha256_digest(&manifest)
    );

    // An artifact whose subject is the sha512 manifest, pushed by sha512.
    let sbom = b"sbom".to_vec();
    let sd = push_blob_512(&m, repo, &sbom).await;
    let artifact = image(
        (&cd, config.len()),
        (&sd, sbom.len()),
        Some((&md, manifest.len())),
    );
    let ad = sha512_digest(&artifact);
    let resp = put(&m, &manifest_path(repo, &ad), OCI_MANIFEST, &artifact).await;
    assert_eq!(resp.status(), 201);
    assert_eq!(header(&resp, "OCI-Subject"), md);

    hub.go_down().await;
    let pushed = Pushed {
        repo,
        md: &md,
        manifest: &manifest,
        ld: &ld,
        layer: &layer,
        cd: &cd,
        config: &config,
        ad: &ad,
        artifact_len: artifact.len(),
    };
    pushed.pulls_back(&m, "before a restart").await;
    m.stop().await;
    // The store walk finds the sha512 blobs again and the records name them.
    let m = TestMirror::start(&cfg.toml()).await;
    pushed.pulls_back(&m, "after a restart").await;
    assert_eq!(hub.content_requests(), 0, "{:?}", hub.content_paths());
    m.stop().await;
}

/// What the test above pushed, and how it must come back.
struct Pushed<'a> {
    repo: &'a str,
    md: &'a str,
    manifest: &'a [u8],
    ld: &'a str,
    layer: &'a [u8],
    cd: &'a str,
    config: &'a [u8],
    ad: &'a str,
    artifact_len: usize,
}

impl Pushed<'_> {
    async fn pulls_back(&self, m: &TestMirror, round: &str) {
        let (repo, md, ld) = (self.repo, self.md, self.ld);
        let resp = m.get(&manifest_path(repo, md)).await;
        assert_eq!(resp.status(), 200, "{round}");
        assert_eq!(header(&resp, "Docker-Content-Digest"), md);
        assert_eq!(header(&resp, "Content-Type"), OCI_MANIFEST);
        assert_eq!(resp.bytes().await.unwrap(), self.manifest);
        let head = m.head(&manifest_path(repo, md)).await;
        assert_eq!(head.status(), 200);
        assert_eq!(header(&head, "Docker-Content-Digest"), md);
        assert_eq!(
            header(&head, "Content-Length"),
            self.manifest.len().to_string()
        );

        let head = m.head(&blob_path(repo, ld)).await;
        assert_eq!(head.status(), 200, "{round}");
        assert_eq!(header(&head, "Docker-Content-Digest"), ld);
        assert_eq!(
            header(&head, "Content-Length"),
            self.layer.len().to_string()
        );
        assert_eq!(m.get_ok(&blob_path(repo, ld)).await, self.layer);
        assert_eq!(m.get_ok(&blob_path(repo, self.cd)).await, self.config);
        let part = m.get_range(&blob_path(repo, ld), "bytes=100-199").await;
        assert_eq!(part.status(), 206);
        assert_eq!(part.bytes().await.unwrap(), &self.layer[100..200]);

        let resp = m.get(&format!("/v2/{repo}/referrers/{md}")).await;
        assert_eq!(resp.status(), 200, "{round}");
        assert_eq!(header(&resp, "Content-Type"), OCI_INDEX);
        let index: serde_json::Value =
            serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap();
        assert_eq!(index["manifests"].as_array().map(Vec::len), Some(1));
        assert_eq!(index["manifests"][0]["digest"], self.ad);
        assert_eq!(index["manifests"][0]["size"], self.artifact_len);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sha512_that_does_not_match_or_does_not_parse_is_refused() {
    let env = Env::start().await;
    let m = &env.mirror;
    let repo = "team/app";
    let data = pseudo_random(7, 50_000);

    // Monolithic, wrong digest: 400 DIGEST_INVALID, nothing stored.
    let wrong = sha512_digest(b"something else");
    let resp = m
        .client
        .post(m.url(&format!("/v2/{repo}/blobs/uploads/?digest={wrong}")))
        .body(data.clone())
        .send()
        .await
        .unwrap();
    assert_oci_error(resp, 400, &["DIGEST_INVALID"]).await;
    assert!(!blob_file(env.dir.path(), &wrong).exists());
    assert!(!blob_file(env.dir.path(), &sha512_digest(&data)).exists());
    // The sha256 of the right bytes under the sha512 name: still refused.
    let resp = m
        .client
        .post(m.url(&format!(
            "/v2/{repo}/blobs/uploads/?digest=sha512:{}{}",
            &sha256_digest(&data)[7..],
            &sha256_digest(&data)[7..]
        )))
        .body(data.clone())
        .send()
        .await
        .unwrap();
    assert_oci_error(resp, 400, &["DIGEST_INVALID"]).await;

    // A manifest PUT by a sha512 that is not its own.
    let cd = push_blob_512(m, repo, b"{}").await;
    let ld = push_blob_512(m, repo, &data).await;
    let manifest = image((&cd, 2), (&ld, data.len()), None);
    let resp = put(m, &manifest_path(repo, &wrong), OCI_MANIFEST, &manifest).await;
    assert_oci_error(resp, 400, &["DIGEST_INVALID"]).await;
    let missing = m.get(&manifest_path(repo, &sha512_digest(&manifest))).await;
    assert_oci_error(missing, 404, &["MANIFEST_UNKNOWN"]).await;

    // Malformed sha512 digests: an OCI error, never a panic or a 500.
    let hex = &sha512_digest(&data)[7..];
    for bad in [
        format!("sha512:{}", &hex[..64]),
        format!("sha512:{}", hex.to_uppercase()),
        format!("sha512:{}zz", &hex[..126]),
        format!("sha384:{}", &hex[..96]),
    ] {
        let resp = m.get(&blob_path(repo, &bad)).await;
        assert_oci_error(resp, 400, &["DIGEST_INVALID"]).await;
        let resp = m
            .client
            .post(m.url(&format!("/v2/{repo}/blobs/uploads/?digest={bad}")))
            .body(data.clone())
            .send()
            .await
            .unwrap();
        assert_oci_error(resp, 400, &["DIGEST_INVALID"]).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sha512_on_a_mirrored_repository_is_a_clear_not_found() {
    let env = Env::start().await;
    let m = &env.mirror;
    let image = env.hub.add_simple_image("library/alpine", "3", 1);
    let d = sha512_digest(b"anything");
    let resp = m.get(&manifest_path("library/alpine", &d)).await;
    let status = resp.status().as_u16();
    let body = resp.bytes().await.unwrap();
    check_oci_error(status, &body, 404, &["MANIFEST_UNKNOWN"]);
    let text = String::from_utf8_lossy(&body);
    assert!(
        text.contains("sha512") && text.contains("sha256") && text.contains("local"),
        "the message says why: {text}"
    );
    let resp = m.get(&blob_path("library/alpine", &d)).await;
    assert_oci_error(resp, 404, &["BLOB_UNKNOWN"]).await;
    let resp = m.head(&blob_path("alpine", &d)).await;
    assert_eq!(resp.status(), 404);
    assert_eq!(
        env.hub.content_requests(),
        0,
        "never asked upstream: {:?}",
        env.hub.content_paths()
    );
    // sha256 still pulls through.
    let resp = m.get(&manifest_path("library/alpine", "3")).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "Docker-Content-Digest"), image.digest);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_sha512_manifest_and_its_blobs_are_collected() {
    let env = Env::start_with(|c| {
        c.local("delete", "true")
            .local("gc_grace", "\"0s\"")
            .local("gc_interval", "\"100ms\"")
    })
    .await;
    let m = &env.mirror;
    let repo = "team/gone";
    let config = b"{}".to_vec();
    let layer = pseudo_random(51, 20_000);
    let cd = push_blob_512(m, repo, &config).await;
    let ld = push_blob_512(m, repo, &layer).await;
    let manifest = image((&cd, config.len()), (&ld, layer.len()), None);
    let md = sha512_digest(&manifest);
    let resp = put(m, &manifest_path(repo, &md), OCI_MANIFEST, &manifest).await;
    assert_eq!(resp.status(), 201);
    let file = blob_file(env.dir.path(), &ld);
    assert!(file.is_file());

    let resp = m
        .client
        .delete(m.url(&manifest_path(repo, &md)))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    wait_for(
        "the sha512 layer to be collected",
        || std::future::ready(!file.exists()),
        || format!("{} still there", file.display()),
    )
    .await;
    assert!(!blob_file(env.dir.path(), &md).exists());
    assert_eq!(m.head(&blob_path(repo, &ld)).await.status(), 404);
    let resp = m.get(&manifest_path(repo, &md)).await;
    assert_oci_error(resp, 404, &["MANIFEST_UNKNOWN"]).await;
}
