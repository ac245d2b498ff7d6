//! An upstream that is down, rate-limited or stalled: cached tags are served
//! stale with a Warning, digests and blobs from the cache; with nothing cached
//! the client gets the right OCI error; the cache survives a restart.

mod common;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_tag_is_served_stale_when_upstream_is_down() {
    let env = Env::start_with(|c| c.tag_ttl("0s")).await;
    let image = env.hub.add_simple_image("library/alpine", "latest", 1);
    let path = manifest_path("alpine", "latest");
    assert_eq!(env.mirror.get_ok(&path).await, image.manifest);

    env.hub.go_down().await;
    let resp = env.mirror.get(&path).await;
    assert_eq!(resp.status(), 200, "cached tag with the upstream down");
    assert!(
        header(&resp, "Warning").contains("stale"),
        "Warning: {:?}",
        header(&resp, "Warning")
    );
    assert_eq!(header(&resp, "Content-Type"), DOCKER_MANIFEST);
    assert_eq!(header(&resp, "Docker-Content-Digest"), image.digest);
    assert_eq!(resp.bytes().await.unwrap(), image.manifest);

    let head = env.mirror.head(&path).await;
    assert_eq!(
        head.status(),
        200,
        "HEAD of a cached tag with the upstream down"
    );
    assert_eq!(header(&head, "Docker-Content-Digest"), image.digest);
    assert_eq!(
        header(&head, "Content-Length"),
        image.manifest.len().to_string()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_tag_is_served_stale_when_rate_limited() {
    let env = Env::start_with(|c| c.tag_ttl("0s")).await;
    let image = env.hub.add_simple_image("library/alpine", "latest", 2);
    let path = manifest_path("alpine", "latest");
    assert_eq!(env.mirror.get_ok(&path).await, image.manifest);

    env.hub.set_rate_limited(true);
    let (gets, heads) = (env.hub.manifest_gets(), env.hub.manifest_heads());
    let resp = env.mirror.get(&path).await;
    assert_eq!(
        resp.status(),
        200,
        "cached tag with the upstream answering 429"
    );
    assert!(
        header(&resp, "Warning").contains("stale"),
        "Warning: {:?}",
        header(&resp, "Warning")
    );
    assert_eq!(resp.bytes().await.unwrap(), image.manifest);
    assert_eq!(
        env.hub.manifest_heads(),
        heads + 1,
        "revalidation was tried with a HEAD"
    );
    assert_eq!(
        env.hub.manifest_gets(),
        gets,
        "no manifest GET (it would spend quota)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn digests_and_blobs_are_served_when_upstream_is_down() {
    let env = Env::start().await;
    let image = env.hub.add_simple_image("library/alpine", "latest", 3);
    assert_eq!(
        env.mirror
            .get_ok(&manifest_path("alpine", &image.digest))
            .await,
        image.manifest
    );
    for blob in image.blobs() {
        assert_eq!(
            env.mirror.get_ok(&blob_path("alpine", &blob.digest)).await,
            blob.data
        );
    }

    env.hub.go_down().await;
    let resp = env
        .mirror
        .get(&manifest_path("alpine", &image.digest))
        .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        header(&resp, "Warning"),
        "",
        "a digest is immutable: never stale"
    );
    assert_eq!(resp.bytes().await.unwrap(), image.manifest);
    for blob in image.blobs() {
        assert_eq!(
            env.mirror.get_ok(&blob_path("alpine", &blob.digest)).await,
            blob.data
        );
        let resp = env
            .mirror
            .get_range(&blob_path("alpine", &blob.digest), "bytes=10-19")
            .await;
        assert_eq!(resp.status(), 206);
        assert!(resp.bytes().await.unwrap()[..] == blob.data[10..20]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_cached_and_upstream_down_is_unavailable() {
    let env = Env::start().await;
    let image = env.hub.add_simple_image("library/alpine", "latest", 4);
    env.hub.go_down().await;
    for path in [
        manifest_path("alpine", "latest"),
        manifest_path("alpine", &image.digest),
        blob_path("alpine", &image.layers[0].digest),
    ] {
        let resp = env.mirror.get(&path).await;
        assert_oci_error(resp, 503, &["UNAVAILABLE"]).await;
        assert_eq!(env.mirror.head(&path).await.status(), 503, "HEAD {path}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_that_comes_back_is_used_again() {
    let env = Env::start().await;
    let image = env.hub.add_simple_image("library/alpine", "latest", 5);
    let path = manifest_path("alpine", "latest");
    env.hub.go_down().await;
    assert_oci_error(env.mirror.get(&path).await, 503, &["UNAVAILABLE"]).await;
    env.hub.come_up().await;
    assert_eq!(
        env.mirror.get_ok(&path).await,
        image.manifest,
        "the outage must not be cached"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tags_list_falls_back_to_cached_tags() {
    let env = Env::start().await;
    let image = env.hub.add_simple_image("library/alpine", "3.19", 6);
    env.hub.add_simple_image("library/alpine", "3.18", 7);
    assert_eq!(
        env.mirror.get_ok(&manifest_path("alpine", "3.19")).await,
        image.manifest
    );

    env.hub.go_down().await;
    let resp = env.mirror.get("/v2/alpine/tags/list").await;
    assert_eq!(resp.status(), 200, "tags list from the cache");
    let json: serde_json::Value = serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap();
    let tags: Vec<&str> = json["tags"]
        .as_array()
        .expect("tags array")
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    assert_eq!(tags, ["3.19"], "only the cached tag is known offline");
}

/// The tags of `path` and its `Link` header ("" when none).
async fn tag_page(mirror: &TestMirror, path: &str) -> (Vec<String>, String) {
    let resp = mirror.get(path).await;
    assert_eq!(resp.status(), 200, "{path}");
    let link = header(&resp, "link");
    let json: serde_json::Value = serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap();
    let tags = json["tags"]
        .as_array()
        .expect("tags array")
        .iter()
        .map(|t| t.as_str().unwrap().to_owned())
        .collect();
    (tags, link)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tags_list_pages_the_same_online_and_offline() {
    let env = Env::start().await;
    // Added out of order; the fake, like distribution, ignores `n` and
    // answers every tag in its own order.
    for (tag, seed) in [("latest", 30), ("3.17", 31), ("3.19", 32), ("3.18", 33)] {
        let image = env.hub.add_simple_image("library/alpine", tag, seed);
        assert_eq!(
            env.mirror.get_ok(&manifest_path("alpine", tag)).await,
            image.manifest
        );
    }
    let first = "/v2/alpine/tags/list?n=2";
    let next = "/v2/alpine/tags/list?last=3.18&n=2";
    let pages = [
        (
            first,
            vec!["3.17", "3.18"],
            format!("<{next}>; rel=\"next\""),
        ),
        (next, vec!["3.19", "latest"], String::new()),
    ];
    for (path, tags, link) in &pages {
        assert_eq!(
            tag_page(&env.mirror, path).await,
            (tags.iter().map(|t| t.to_string()).collect(), link.clone()),
            "online {path}"
        );
    }
    env.hub.go_down().await;
    for (path, tags, link) in &pages {
        assert_eq!(
            tag_page(&env.mirror, path).await,
            (tags.iter().map(|t| t.to_string()).collect(), link.clone()),
            "offline {path}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_the_cache() {
    let hub = FakeRegistry::start().await;
    let dir = tempfile::tempdir().unwrap();
    let toml = Cfg::new(dir.path())
        .upstream("docker.io", &hub.url())
        .toml();
    let big = pseudo_random(8, 3 * 1024 * 1024 + 5);
    let image = hub.add_image("library/alpine", "latest", 8, &[big, pseudo_random(9, 10)]);

    let mirror = TestMirror::start(&toml).await;
    assert_eq!(
        mirror.get_ok(&manifest_path("alpine", "latest")).await,
        image.manifest
    );
    for blob in image.blobs() {
        assert_eq!(
            mirror.get_ok(&blob_path("alpine", &blob.digest)).await,
            blob.data
        );
    }
    mirror.stop().await;
    hub.go_down().await;
    drop(hub);

    let mirror = TestMirror::start(&toml).await;
    let resp = mirror.get(&manifest_path("alpine", "latest")).await;
    assert_eq!(resp.status(), 200, "tag after restart, upstream gone");
    assert_eq!(header(&resp, "Docker-Content-Digest"), image.digest);
    assert_eq!(header(&resp, "Content-Type"), DOCKER_MANIFEST);
    assert_eq!(resp.bytes().await.unwrap(), image.manifest);
    assert_eq!(
        mirror.get_ok(&manifest_path("alpine", &image.digest)).await,
        image.manifest
    );
    for blob in image.blobs() {
        let body = mirror.get_ok(&blob_path("alpine", &blob.digest)).await;
        assert!(body == blob.data, "blob {} after restart", blob.digest);
    }
    let m = mirror.metrics().await;
    assert!(
        m.sum("hoard_cache_size_bytes", &[]) >= (3 * 1024 * 1024) as f64,
        "cache size after restart:\n{}",
        m.0
    );
    mirror.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fill_interrupted_by_a_restart_is_not_in_the_cache() {
    let hub = FakeRegistry::start().await;
    let dir = tempfile::tempdir().unwrap();
    // No grace: this test is about a fill cut off by the stop, not one
    // that shutdown lets finish (tests/lifecycle.rs covers that).
    let toml = format!(
        "shutdown_grace = \"0s\"\n{}",
        Cfg::new(dir.path())
            .upstream("docker.io", &hub.url())
            .toml()
    );
    let blob = hub.add_blob("library/alpine", pseudo_random(11, 4 * CHUNK));
    let path = blob_path("alpine", &blob.digest);
    hub.close_gate();

    let mirror = TestMirror::start(&toml).await;
    let mut resp = mirror.get(&path).await;
    assert_eq!(resp.status(), 200);
    read_at_least(&mut resp, 1).await;
    hub.wait_until("the fill is paused at the gate", |h| h.paused() >= 1)
        .await;
    drop(resp);
    mirror.stop().await;
    hub.go_down().await; // the old fill's upstream connection dies half-way

    let mirror = TestMirror::start(&toml).await;
    let resp = mirror.get(&path).await;
    assert_oci_error(resp, 503, &["UNAVAILABLE"]).await;
    let resp = mirror.get_range(&path, "bytes=0-9").await;
    assert_oci_error(resp, 503, &["UNAVAILABLE"]).await;
    mirror.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_upstream_body_is_aborted_and_not_cached() {
    let env = Env::start_with(|c| c.upstream_key("docker.io", "read_timeout", "300ms")).await;
    let blob = env
        .hub
        .add_blob("library/alpine", pseudo_random(10, 4 * CHUNK));
    let path = blob_path("alpine", &blob.digest);
    env.hub.close_gate(); // the body stops after its first chunk, for good

    let resp = env.mirror.get(&path).await;
    let status = resp.status();
    let body = tokio::time::timeout(DEADLINE, resp.bytes())
        .await
        .expect("hoard must give up on a stalled upstream");
    assert!(
        !(status.is_success() && body.is_ok()),
        "a stalled fill was served as complete ({status})"
    );
    env.mirror
        .wait_metrics("fill abandoned", |m| {
            m.sum("hoard_fills_in_flight", &[]) == 0.0
        })
        .await;

    env.hub.open_gate();
    assert_eq!(env.mirror.get_ok(&path).await, blob.data);
    assert_eq!(
        env.hub.blob_gets(),
        2,
        "the stalled fill must not have been cached"
    );
}
