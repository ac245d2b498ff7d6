//! Pull-through behaviour with a healthy upstream: manifests by tag and
//! digest, tag TTL and revalidation, upstream errors with nothing cached,
//! token auth, blob redirects, tags list, catalog and metrics.

mod common;

use common::*;
use hyper::Method;

/// GETs the manifest by tag and every blob of `image` through the mirror under
/// `name`, asserting exact bytes.
async fn pull(mirror: &TestMirror, name: &str, tag: &str, image: &Image) {
    let body = mirror.get_ok(&manifest_path(name, tag)).await;
    assert_eq!(body, image.manifest, "manifest bytes of {name}:{tag}");
    for blob in image.blobs() {
        let body = mirror.get_ok(&blob_path(name, &blob.digest)).await;
        assert_eq!(body, blob.data, "blob {} of {name}", blob.digest);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_answers_with_api_version_header() {
    let env = Env::start().await;
    let resp = env.mirror.get("/v2/").await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        header(&resp, "Docker-Distribution-API-Version"),
        "registry/2.0"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifest_by_tag_has_exact_bytes_and_headers() {
    let env = Env::start().await;
    let image = env.hub.add_simple_image("library/alpine", "3.19", 1);

    let resp = env.mirror.get(&manifest_path("alpine", "3.19")).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "Content-Type"), DOCKER_MANIFEST);
    assert_eq!(header(&resp, "Docker-Content-Digest"), image.digest);
    assert_eq!(
        header(&resp, "Content-Length"),
        image.manifest.len().to_string()
    );
    assert_eq!(resp.bytes().await.unwrap(), image.manifest);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifest_head_has_the_headers_of_get_and_no_body() {
    let env = Env::start().await;
    let image = env.hub.add_simple_image("library/alpine", "latest", 2);
    let path = manifest_path("alpine", "latest");

    // containerd resolves a tag with a cold HEAD first.
    let cold = env.mirror.head(&path).await;
    assert_eq!(cold.status(), 200, "cold HEAD");
    let get = env.mirror.get(&path).await;
    assert_eq!(get.status(), 200);
    let warm = env.mirror.head(&path).await;
    for head in [&cold, &warm] {
        for name in ["Content-Type", "Docker-Content-Digest", "Content-Length"] {
            assert_eq!(
                header(head, name),
                header(&get, name),
                "HEAD vs GET header {name}"
            );
        }
    }
    assert_eq!(header(&get, "Docker-Content-Digest"), image.digest);
    assert_eq!(
        header(&get, "Content-Length"),
        image.manifest.len().to_string()
    );
    assert!(
        warm.bytes().await.unwrap().is_empty(),
        "HEAD must have no body"
    );
    assert_eq!(get.bytes().await.unwrap(), image.manifest);

    // HEAD by digest too.
    let by_digest = env
        .mirror
        .head(&manifest_path("alpine", &image.digest))
        .await;
    assert_eq!(by_digest.status(), 200);
    assert_eq!(header(&by_digest, "Content-Type"), DOCKER_MANIFEST);
    assert_eq!(header(&by_digest, "Docker-Content-Digest"), image.digest);
    assert_eq!(
        header(&by_digest, "Content-Length"),
        image.manifest.len().to_string()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tag_within_ttl_is_answered_without_contacting_upstream() {
    let env = Env::start_with(|c| c.tag_ttl("5m")).await;
    let image = env.hub.add_simple_image("library/alpine", "latest", 3);
    let path = manifest_path("alpine", "latest");

    assert_eq!(env.mirror.get_ok(&path).await, image.manifest);
    let before = env.hub.content_requests();
    for _ in 0..3 {
        let resp = env.mirror.get(&path).await;
        assert_eq!(resp.status(), 200);
        assert_eq!(
            header(&resp, "Warning"),
            "",
            "a fresh tag must not carry a Warning"
        );
        assert_eq!(resp.bytes().await.unwrap(), image.manifest);
        assert_eq!(env.mirror.head(&path).await.status(), 200);
    }
    assert_eq!(
        env.hub.content_requests(),
        before,
        "tag within TTL contacted upstream: {:?}",
        env.hub.content_paths()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tag_after_ttl_is_revalidated_with_head() {
    let env = Env::start_with(|c| c.tag_ttl("0s")).await;
    let image = env.hub.add_simple_image("library/alpine", "latest", 4);
    let path = manifest_path("alpine", "latest");

    assert_eq!(env.mirror.get_ok(&path).await, image.manifest);
    let (gets, heads) = (env.hub.manifest_gets(), env.hub.manifest_heads());
    let resp = env.mirror.get(&path).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        header(&resp, "Warning"),
        "",
        "a revalidated tag is not stale"
    );
    assert_eq!(resp.bytes().await.unwrap(), image.manifest);
    assert_eq!(
        env.hub.manifest_heads(),
        heads + 1,
        "revalidation must be one upstream HEAD"
    );
    assert_eq!(
        env.hub.manifest_gets(),
        gets,
        "unchanged tag must not be re-downloaded (GET spends quota)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tag_is_revalidated_once_its_ttl_has_passed() {
    // The one test that lets real time pass: hoard's tag clock is wall time.
    let env = Env::start_with(|c| c.tag_ttl("1s")).await;
    let image = env.hub.add_simple_image("library/alpine", "latest", 29);
    let path = manifest_path("alpine", "latest");
    assert_eq!(env.mirror.get_ok(&path).await, image.manifest);
    let heads = env.hub.manifest_heads();
    assert_eq!(env.mirror.get_ok(&path).await, image.manifest);
    assert_eq!(
        env.hub.manifest_heads(),
        heads,
        "revalidated within the TTL"
    );

    tokio::time::sleep(std::time::Duration::from_millis(1300)).await;
    assert_eq!(env.mirror.get_ok(&path).await, image.manifest);
    assert_eq!(
        env.hub.manifest_heads(),
        heads + 1,
        "not revalidated after the TTL"
    );
    // Revalidation renews the TTL.
    assert_eq!(env.mirror.get_ok(&path).await, image.manifest);
    assert_eq!(
        env.hub.manifest_heads(),
        heads + 1,
        "revalidated again right after a revalidation"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_for_a_stale_tag_cause_one_revalidation() {
    let env = Env::start_with(|c| c.tag_ttl("1s")).await;
    let image = env.hub.add_simple_image("library/alpine", "latest", 31);
    let path = manifest_path("alpine", "latest");
    assert_eq!(env.mirror.get_ok(&path).await, image.manifest);
    let heads = env.hub.manifest_heads();
    let gets = env.hub.manifest_gets();

    tokio::time::sleep(std::time::Duration::from_millis(1300)).await;
    let bodies = futures::future::join_all((0..16).map(|_| env.mirror.get_ok(&path))).await;
    assert!(bodies.iter().all(|b| *b == image.manifest));
    assert_eq!(
        env.hub.manifest_heads(),
        heads + 1,
        "one HEAD for 16 concurrent stale requests"
    );
    assert_eq!(
        env.hub.manifest_gets(),
        gets,
        "an unchanged tag is not downloaded again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_upstream_tag_ttl_overrides_the_global_one() {
    let env = Env::start_with(|c| c.tag_ttl("5m").upstream_key("docker.io", "tag_ttl", "0s")).await;
    let image = env.hub.add_simple_image("library/alpine", "latest", 5);
    let path = manifest_path("alpine", "latest");

    assert_eq!(env.mirror.get_ok(&path).await, image.manifest);
    let heads = env.hub.manifest_heads();
    assert_eq!(env.mirror.get_ok(&path).await, image.manifest);
    assert_eq!(
        env.hub.manifest_heads(),
        heads + 1,
        "upstream tag_ttl=0s must revalidate"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moved_tag_is_picked_up_on_revalidation() {
    let env = Env::start_with(|c| c.tag_ttl("0s")).await;
    let old = env.hub.add_simple_image("library/alpine", "latest", 6);
    let path = manifest_path("alpine", "latest");
    assert_eq!(env.mirror.get_ok(&path).await, old.manifest);

    let new = env.hub.add_simple_image("library/alpine", "latest", 7);
    assert_ne!(old.digest, new.digest);
    let resp = env.mirror.get(&path).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "Docker-Content-Digest"), new.digest);
    assert_eq!(resp.bytes().await.unwrap(), new.manifest);
    // The old manifest is still servable by digest.
    assert_eq!(
        env.mirror
            .get_ok(&manifest_path("alpine", &old.digest))
            .await,
        old.manifest
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifest_by_digest_is_served_local_first() {
    let env = Env::start_with(|c| c.tag_ttl("0s")).await;
    let image = env.hub.add_simple_image("library/alpine", "latest", 8);
    let path = manifest_path("alpine", &image.digest);

    let resp = env.mirror.get(&path).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "Content-Type"), DOCKER_MANIFEST);
    assert_eq!(header(&resp, "Docker-Content-Digest"), image.digest);
    assert_eq!(resp.bytes().await.unwrap(), image.manifest);

    let before = env.hub.content_requests();
    assert_eq!(env.mirror.get_ok(&path).await, image.manifest);
    assert_eq!(env.mirror.head(&path).await.status(), 200);
    assert_eq!(
        env.hub.content_requests(),
        before,
        "cached digest contacted upstream: {:?}",
        env.hub.content_paths()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn digest_of_a_tag_pull_is_served_without_upstream() {
    // containerd: HEAD the tag, then GET the manifest by digest.
    let env = Env::start_with(|c| c.tag_ttl("0s")).await;
    let image = env.hub.add_simple_image("library/alpine", "latest", 9);
    let head = env.mirror.head(&manifest_path("alpine", "latest")).await;
    assert_eq!(head.status(), 200);
    let digest = header(&head, "Docker-Content-Digest");
    assert_eq!(digest, image.digest);
    assert_eq!(
        env.mirror.get_ok(&manifest_path("alpine", &digest)).await,
        image.manifest
    );
    // After one full GET it is cached: no more upstream traffic for the digest.
    let before = env.hub.content_requests();
    assert_eq!(
        env.mirror.get_ok(&manifest_path("alpine", &digest)).await,
        image.manifest
    );
    assert_eq!(env.hub.content_requests(), before);
}

/// Asks for `alpine:<reference>` while the upstream flips a byte of the
/// image's manifest: nothing damaged may be served, and nothing is cached
/// (once the upstream is fixed the right bytes come through).
async fn damaged_manifest_is_not_served(seed: u64, reference: impl Fn(&Image) -> String) {
    let env = Env::start().await;
    let image = env.hub.add_simple_image("library/alpine", "latest", seed);
    env.hub.corrupt(&image.digest);
    let path = manifest_path("alpine", &reference(&image));

    let resp = env.mirror.get(&path).await;
    let status = resp.status();
    let body = resp.bytes().await;
    assert!(
        !(status.is_success() && body.is_ok()),
        "served a damaged manifest for {path} ({status})"
    );
    env.hub.uncorrupt(&image.digest);
    assert_eq!(env.mirror.get_ok(&path).await, image.manifest);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifest_whose_bytes_do_not_match_the_digest_is_not_served() {
    damaged_manifest_is_not_served(10, |image| image.digest.clone()).await;
}

/// Found by benches/soak.py: a manifest damaged on the way, fetched by tag,
/// was cached as what the tag means. Its bytes must match the upstream's
/// `Docker-Content-Digest`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifest_by_tag_that_does_not_match_the_announced_digest_is_not_served() {
    damaged_manifest_is_not_served(12, |_| "latest".into()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_arch_index_and_children_are_cached_by_digest() {
    let env = Env::start_with(|c| c.tag_ttl("5m")).await;
    let amd = env
        .hub
        .add_simple_image("library/busybox", "amd64-only", 11);
    let arm = env
        .hub
        .add_simple_image("library/busybox", "arm64-only", 12);
    let (index_digest, index) = env
        .hub
        .add_index("library/busybox", "latest", &[&amd, &arm]);
    let accept = "application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, */*";

    let resp = env
        .mirror
        .get_with(&manifest_path("busybox", "latest"), &[("Accept", accept)])
        .await;
    assert_eq!(resp.status(), 200, "index by tag");
    assert_eq!(header(&resp, "Content-Type"), OCI_INDEX);
    assert_eq!(header(&resp, "Docker-Content-Digest"), index_digest);
    assert_eq!(resp.bytes().await.unwrap(), index);

    let child = env
        .mirror
        .get_with(
            &manifest_path("busybox", &arm.digest),
            &[("Accept", accept)],
        )
        .await;
    assert_eq!(child.status(), 200, "child by digest");
    assert_eq!(child.bytes().await.unwrap(), arm.manifest);

    // Both are now local: by digest with the upstream gone.
    env.hub.go_down().await;
    let idx = env
        .mirror
        .get_with(
            &manifest_path("busybox", &index_digest),
            &[("Accept", accept)],
        )
        .await;
    assert_eq!(idx.status(), 200, "index by digest offline");
    assert_eq!(header(&idx, "Content-Type"), OCI_INDEX);
    assert_eq!(idx.bytes().await.unwrap(), index);
    let child = env
        .mirror
        .get_with(
            &manifest_path("busybox", &arm.digest),
            &[("Accept", accept)],
        )
        .await;
    assert_eq!(child.status(), 200, "child by digest offline");
    assert_eq!(child.bytes().await.unwrap(), arm.manifest);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_accept_header_line_is_read() {
    // skopeo/podman send six separate Accept lines; the index type is last.
    let env = Env::start().await;
    let one = env.hub.add_simple_image("library/busybox", "one", 13);
    let (index_digest, index) = env.hub.add_index("library/busybox", "multi", &[&one]);
    let path = manifest_path("busybox", "multi");
    let lines = [
        OCI_MANIFEST,
        DOCKER_MANIFEST,
        "application/vnd.docker.distribution.manifest.v1+prettyjws",
        "application/vnd.docker.distribution.manifest.v1+json",
        DOCKER_LIST,
        OCI_INDEX,
    ];
    let headers: Vec<(&str, &str)> = lines.iter().map(|l| ("Accept", *l)).collect();
    let resp = raw_request(env.mirror.addr, "GET", &path, &headers).await;
    assert_eq!(
        resp.status,
        200,
        "body: {}",
        String::from_utf8_lossy(&resp.body)
    );
    assert_eq!(resp.headers["content-type"], OCI_INDEX);
    assert_eq!(resp.headers["docker-content-digest"], index_digest.as_str());
    assert_eq!(resp.body, index);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_manifest_and_blob_are_404_with_oci_codes() {
    let env = Env::start().await;
    env.hub.add_simple_image("library/alpine", "latest", 14);
    let resp = env.mirror.get(&manifest_path("alpine", "nope")).await;
    assert_oci_error(resp, 404, &["MANIFEST_UNKNOWN"]).await;
    let missing = sha256_digest(b"not stored anywhere");
    let resp = env.mirror.get(&manifest_path("alpine", &missing)).await;
    assert_oci_error(resp, 404, &["MANIFEST_UNKNOWN"]).await;
    let resp = env.mirror.get(&blob_path("alpine", &missing)).await;
    assert_oci_error(resp, 404, &["BLOB_UNKNOWN"]).await;
    let resp = env.mirror.head(&blob_path("alpine", &missing)).await;
    assert_eq!(resp.status(), 404, "HEAD of unknown blob");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limited_upstream_with_nothing_cached_is_toomanyrequests() {
    let env = Env::start().await;
    let image = env.hub.add_simple_image("library/alpine", "latest", 15);
    env.hub.set_rate_limited(true);
    let resp = env.mirror.get(&manifest_path("alpine", "latest")).await;
    // The upstream's Retry-After (7), not a fixed 30 (issue 14).
    assert_eq!(common::header(&resp, "retry-after"), "7");
    assert_oci_error(resp, 429, &["TOOMANYREQUESTS"]).await;
    let resp = env
        .mirror
        .get(&manifest_path("alpine", &image.digest))
        .await;
    assert_oci_error(resp, 429, &["TOOMANYREQUESTS"]).await;
    let resp = env
        .mirror
        .get(&blob_path("alpine", &image.layers[0].digest))
        .await;
    assert_oci_error(resp, 429, &["TOOMANYREQUESTS"]).await;
    // A 429 is remembered for a few seconds (issue 14: retries must not
    // storm a rate-limited upstream), then a lifted limit is used: nothing
    // negative is cached for longer.
    env.hub.set_rate_limited(false);
    let asked = env.hub.content_requests();
    let tag = manifest_path("alpine", "latest");
    let layer = blob_path("alpine", &image.layers[0].digest);
    let resp = env.mirror.get(&tag).await;
    assert_oci_error(resp, 429, &["TOOMANYREQUESTS"]).await;
    assert_eq!(
        env.hub.content_requests(),
        asked,
        "the remembered 429 is answered without asking the upstream"
    );
    wait_for(
        "the lifted rate limit to be used",
        || async {
            env.mirror.get(&tag).await.status() == 200
                && env.mirror.get(&layer).await.status() == 200
        },
        || format!("upstream requests: {:?}", env.hub.content_paths()),
    )
    .await;
    pull(&env.mirror, "alpine", "latest", &image).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_tokens_are_fetched_once_per_scope() {
    let env = Env::start().await;
    env.hub.require_auth();
    let alpine = env.hub.add_simple_image("library/alpine", "latest", 16);
    let redis = env.hub.add_simple_image("bitnami/redis", "7", 17);

    pull(&env.mirror, "alpine", "latest", &alpine).await;
    assert_eq!(
        env.mirror
            .get_ok(&manifest_path("alpine", &alpine.digest))
            .await,
        alpine.manifest
    );
    let resp = env.mirror.get("/v2/alpine/tags/list").await;
    assert_eq!(resp.status(), 200, "tags list through auth");
    assert_eq!(
        env.hub.token_fetches(),
        1,
        "one token for one repository: {:?}",
        env.hub.log()
    );

    let token_req = env
        .hub
        .log()
        .into_iter()
        .find(|s| s.kind == Kind::Token)
        .unwrap();
    let query = parse_query(&token_req.query);
    assert!(
        query.contains(&("service".into(), SERVICE.into())),
        "token query {:?}",
        token_req.query
    );
    assert!(
        query.contains(&("scope".into(), "repository:library/alpine:pull".into())),
        "token query {:?}",
        token_req.query
    );
    assert!(
        env.hub.log().iter().any(|s| s.kind == Kind::Manifest
            && s.authorization
                .as_deref()
                .is_some_and(|a| a.starts_with("Bearer "))),
        "retried with a Bearer token"
    );

    pull(&env.mirror, "bitnami/redis", "7", &redis).await;
    assert_eq!(
        env.hub.token_fetches(),
        2,
        "a second repository is a second scope"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_token_is_fetched_again() {
    let env = Env::start().await;
    env.hub.require_auth();
    let image = env.hub.add_simple_image("library/alpine", "latest", 28);
    assert_eq!(
        env.mirror.get_ok(&manifest_path("alpine", "latest")).await,
        image.manifest
    );
    assert_eq!(env.hub.token_fetches(), 1);

    // The upstream no longer honours the cached token: hoard must get a new
    // one and retry, not pass the 401 on.
    env.hub.revoke_tokens();
    let layer = &image.layers[0];
    assert_eq!(
        env.mirror.get_ok(&blob_path("alpine", &layer.digest)).await,
        layer.data
    );
    assert_eq!(env.hub.token_fetches(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_credentials_are_sent_to_the_token_realm() {
    let env = Env::start_with(|c| {
        c.upstream_key("docker.io", "username", "hoarder")
            .upstream_key("docker.io", "password", "s3cret")
    })
    .await;
    env.hub.require_auth_with_basic("hoarder", "s3cret");
    let image = env.hub.add_simple_image("library/alpine", "latest", 18);
    pull(&env.mirror, "alpine", "latest", &image).await;
    let token_req = env
        .hub
        .log()
        .into_iter()
        .find(|s| s.kind == Kind::Token)
        .unwrap();
    assert_eq!(
        token_req.authorization.as_deref(),
        Some(format!("Basic {}", base64(b"hoarder:s3cret")).as_str())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_file_credentials_are_used() {
    let secrets = tempfile::tempdir().unwrap();
    let file = secrets.path().join("hub-password");
    std::fs::write(&file, "from-file\n").unwrap();
    let file_str = file.display().to_string();
    let env = Env::start_with(|c| {
        c.upstream_key("docker.io", "username", "hoarder")
            .upstream_key("docker.io", "password_file", &file_str)
    })
    .await;
    env.hub.require_auth_with_basic("hoarder", "from-file");
    let image = env.hub.add_simple_image("library/alpine", "latest", 19);
    pull(&env.mirror, "alpine", "latest", &image).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_env_credentials_are_used() {
    // A variable name no other test uses.
    std::env::set_var("HOARD_TEST_PULL_THROUGH_PASSWORD", "from-env");
    let env = Env::start_with(|c| {
        c.upstream_key("docker.io", "username", "hoarder")
            .upstream_key(
                "docker.io",
                "password_env",
                "HOARD_TEST_PULL_THROUGH_PASSWORD",
            )
    })
    .await;
    env.hub.require_auth_with_basic("hoarder", "from-env");
    let image = env.hub.add_simple_image("library/alpine", "latest", 20);
    pull(&env.mirror, "alpine", "latest", &image).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blob_redirect_is_followed_without_forwarding_authorization() {
    let env = Env::start().await;
    env.hub.require_auth();
    let big = pseudo_random(21, 3 * CHUNK + 17);
    let image = env.hub.add_image("library/alpine", "latest", 21, &[big]);
    env.hub.redirect_blobs_to_cdn().await;

    let layer = &image.layers[0];
    let resp = env.mirror.get(&blob_path("alpine", &layer.digest)).await;
    assert_eq!(
        resp.status(),
        200,
        "redirect must be followed by hoard, not passed to the client"
    );
    assert_eq!(header(&resp, "Docker-Content-Digest"), layer.digest);
    assert_eq!(resp.bytes().await.unwrap(), layer.data);
    assert_eq!(env.hub.cdn_gets(), 1, "the CDN served the blob");
    assert!(
        !env.hub.cdn_saw_authorization(),
        "Authorization leaked to the CDN: {:?}",
        env.hub.log()
    );
    assert!(
        env.hub
            .log()
            .iter()
            .any(|s| s.kind == Kind::Blob && s.authorization.is_some()),
        "the registry itself did get the Bearer token"
    );

    // Cached: neither the registry nor the CDN is asked again.
    let (blobs, cdn) = (env.hub.blob_gets(), env.hub.cdn_gets());
    assert_eq!(
        env.mirror.get_ok(&blob_path("alpine", &layer.digest)).await,
        layer.data
    );
    assert_eq!((env.hub.blob_gets(), env.hub.cdn_gets()), (blobs, cdn));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tags_list_comes_from_upstream_when_reachable() {
    let env = Env::start().await;
    env.hub.add_simple_image("library/alpine", "3.18", 22);
    env.hub.add_simple_image("library/alpine", "3.19", 23);
    let resp = env.mirror.get("/v2/alpine/tags/list").await;
    assert_eq!(resp.status(), 200);
    let json: serde_json::Value = serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap();
    let mut tags: Vec<String> = json["tags"]
        .as_array()
        .expect("tags array")
        .iter()
        .map(|t| t.as_str().unwrap().to_string())
        .collect();
    tags.sort();
    assert_eq!(
        tags,
        ["3.18", "3.19"],
        "nothing was cached, so these came from upstream"
    );
    assert!(
        json["name"].as_str().is_some_and(|n| n.ends_with("alpine")),
        "name field: {json}"
    );
    assert_eq!(env.hub.count(Kind::Tags, Method::GET), 1);
    assert_eq!(
        env.hub
            .log()
            .iter()
            .find(|s| s.kind == Kind::Tags)
            .unwrap()
            .path,
        "/v2/library/alpine/tags/list"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catalog_lists_cached_repositories() {
    let env = Env::start().await;
    let alpine = env.hub.add_simple_image("library/alpine", "latest", 24);
    let redis = env.hub.add_simple_image("bitnami/redis", "7", 25);
    env.hub
        .add_simple_image("library/never-pulled", "latest", 26);
    pull(&env.mirror, "alpine", "latest", &alpine).await;
    pull(&env.mirror, "bitnami/redis", "7", &redis).await;

    let resp = env.mirror.get("/v2/_catalog").await;
    assert_eq!(resp.status(), 200);
    let json: serde_json::Value = serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap();
    let repos: Vec<&str> = json["repositories"]
        .as_array()
        .expect("repositories array")
        .iter()
        .map(|r| r.as_str().unwrap())
        .collect();
    let listed = |name: &str| {
        repos
            .iter()
            .any(|r| *r == name || r.ends_with(&format!("/{name}")))
    };
    assert!(listed("alpine"), "alpine missing from {repos:?}");
    assert!(
        listed("bitnami/redis"),
        "bitnami/redis missing from {repos:?}"
    );
    assert!(
        !listed("never-pulled"),
        "an uncached repository is listed: {repos:?}"
    );
    assert_eq!(
        env.hub
            .log()
            .iter()
            .filter(|s| s.kind == Kind::Other)
            .count(),
        0,
        "catalog must not be proxied"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catalog_is_paginated_with_n_last_and_link() {
    let env = Env::start().await;
    let names = ["bitnami/redis", "grafana/loki", "org/app"];
    for (i, name) in names.iter().enumerate() {
        let image = env.hub.add_simple_image(name, "v1", 40 + i as u64);
        pull(&env.mirror, name, "v1", &image).await;
    }
    let list = |body: &[u8]| -> Vec<String> {
        let json: serde_json::Value = serde_json::from_slice(body).unwrap();
        json["repositories"]
            .as_array()
            .expect("repositories array")
            .iter()
            .map(|r| r.as_str().unwrap().to_string())
            .collect()
    };

    let resp = env.mirror.get("/v2/_catalog").await;
    let all = list(&resp.bytes().await.unwrap());
    assert_eq!(all.len(), 3, "{all:?}");
    let mut sorted = all.clone();
    sorted.sort();
    assert_eq!(
        all, sorted,
        "catalog must be in lexical order for `last` to work"
    );

    let resp = env.mirror.get("/v2/_catalog?n=2").await;
    assert_eq!(resp.status(), 200);
    let link = header(&resp, "Link");
    let first = list(&resp.bytes().await.unwrap());
    assert_eq!(first, all[..2], "first page");
    assert!(
        link.contains("rel=\"next\"") && link.contains("last="),
        "Link header: {link:?}"
    );

    let resp = env
        .mirror
        .get(&format!(
            "/v2/_catalog?n=2&last={}",
            all[1].replace('/', "%2F")
        ))
        .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "Link"), "", "no next page after the last one");
    assert_eq!(list(&resp.bytes().await.unwrap()), all[2..], "second page");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_hits_misses_bytes_and_upstream_requests() {
    let env = Env::start().await;
    let data = pseudo_random(27, 100_000);
    let blob = env.hub.add_blob("library/alpine", data.clone());
    let path = blob_path("alpine", &blob.digest);

    let m0 = env.mirror.metrics().await;
    assert_eq!(m0.sum("hoard_cache_size_bytes", &[]), 0.0, "empty cache");

    assert_eq!(env.mirror.get_ok(&path).await, data);
    // The fill commits right around the client's last byte; count it once done.
    let m1 = env
        .mirror
        .wait_metrics("fill committed", |m| {
            m.sum("hoard_fills_in_flight", &[]) == 0.0
        })
        .await;
    assert_eq!(m1.blob_requests("miss"), 1.0, "{}", m1.0);
    assert_eq!(m1.blob_requests("hit"), 0.0, "{}", m1.0);
    assert_eq!(
        m1.sum("hoard_served_bytes_total", &[("source", "upstream")]),
        data.len() as f64
    );
    assert!(m1.sum("hoard_upstream_requests_total", &[]) >= 1.0);
    assert!(m1.sum("hoard_cache_size_bytes", &[]) >= data.len() as f64);
    assert_eq!(m1.sum("hoard_fills_in_flight", &[]), 0.0);

    assert_eq!(env.mirror.get_ok(&path).await, data);
    let m2 = env.mirror.metrics().await;
    assert_eq!(m2.blob_requests("hit"), 1.0, "{}", m2.0);
    assert_eq!(m2.blob_requests("miss"), 1.0, "{}", m2.0);
    assert_eq!(m2.blob_requests("coalesced"), 0.0, "{}", m2.0);
    assert_eq!(
        m2.sum("hoard_served_bytes_total", &[("source", "cache")]),
        data.len() as f64
    );
    assert_eq!(
        m2.sum("hoard_served_bytes_total", &[("source", "upstream")]),
        data.len() as f64
    );
    assert_eq!(
        m2.sum("hoard_upstream_requests_total", &[]),
        m1.sum("hoard_upstream_requests_total", &[]),
        "a hit must not count an upstream request"
    );
    for name in [
        "hoard_requests_total",
        "hoard_served_bytes_total",
        "hoard_upstream_requests_total",
        "hoard_cache_size_bytes",
        "hoard_fills_in_flight",
    ] {
        assert!(m2.has(name), "/metrics lacks {name}:\n{}", m2.0);
    }
}

/// Once the upstream's realm is known, a new repository's token is fetched
/// before its first request: a cold pull costs one token fetch, one
/// manifest GET and one GET per blob, with no 401 round trip.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cold_pull_of_a_new_repository_costs_no_401_round_trip() {
    let env = Env::start().await;
    env.hub.require_auth();
    let alpine = env.hub.add_simple_image("library/alpine", "latest", 41);
    let redis = env.hub.add_simple_image("bitnami/redis", "7", 42);
    pull(&env.mirror, "alpine", "latest", &alpine).await;
    let before = env.hub.log().len();

    pull(&env.mirror, "bitnami/redis", "7", &redis).await;
    let seen: Vec<Seen> = env.hub.log().split_off(before);
    let unauthenticated: Vec<&Seen> = seen
        .iter()
        .filter(|s| s.kind != Kind::Token && s.authorization.is_none())
        .collect();
    assert!(
        unauthenticated.is_empty(),
        "requests sent without a token: {unauthenticated:?}"
    );
    let tokens = seen.iter().filter(|s| s.kind == Kind::Token).count();
    let manifests = seen.iter().filter(|s| s.kind == Kind::Manifest).count();
    let blobs = seen.iter().filter(|s| s.kind == Kind::Blob).count();
    assert_eq!(
        (tokens, manifests, blobs, seen.len()),
        (1, 1, redis.blobs().len(), 2 + redis.blobs().len()),
        "upstream round trips of a cold pull: {seen:?}"
    );
}
