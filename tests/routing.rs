//! Which upstream a request goes to, under which name: `?ns=`, a path
//! prefix naming a configured upstream, the default upstream, Docker Hub's
//! `library/` rule, and never an unconfigured registry.

mod common;

use common::*;

/// Two configured upstreams (docker.io, the default, and ghcr.io) and a third
/// live registry that is not configured.
struct Routes {
    hub: FakeRegistry,
    ghcr: FakeRegistry,
    stranger: FakeRegistry,
    mirror: TestMirror,
    _dir: tempfile::TempDir,
}

impl Routes {
    async fn start() -> Routes {
        let hub = FakeRegistry::start().await;
        let ghcr = FakeRegistry::start().await;
        let stranger = FakeRegistry::start().await;
        let dir = tempfile::tempdir().unwrap();
        let cfg = Cfg::new(dir.path())
            .upstream("docker.io", &hub.url())
            .upstream("ghcr.io", &ghcr.url());
        let mirror = TestMirror::start(&cfg.toml()).await;
        Routes {
            hub,
            ghcr,
            stranger,
            mirror,
            _dir: dir,
        }
    }

    fn traffic(&self) -> (Vec<String>, Vec<String>, Vec<String>) {
        (
            self.hub.content_paths(),
            self.ghcr.content_paths(),
            self.stranger.content_paths(),
        )
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ns_selects_the_upstream_and_is_echoed() {
    let r = Routes::start().await;
    let on_hub = r.hub.add_simple_image("org/app", "v1", 1);
    let on_ghcr = r.ghcr.add_simple_image("org/app", "v1", 2);

    let resp = r.mirror.get("/v2/org/app/manifests/v1?ns=ghcr.io").await;
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "OCI-Namespace"), "ghcr.io");
    assert_eq!(resp.bytes().await.unwrap(), on_ghcr.manifest);

    let resp = r.mirror.get("/v2/org/app/manifests/v1?ns=docker.io").await;
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "OCI-Namespace"), "docker.io");
    assert_eq!(resp.bytes().await.unwrap(), on_hub.manifest);

    let blob = &on_ghcr.layers[0];
    let resp = r
        .mirror
        .get(&format!("/v2/org/app/blobs/{}?ns=ghcr.io", blob.digest))
        .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "OCI-Namespace"), "ghcr.io");
    assert_eq!(resp.bytes().await.unwrap(), blob.data);

    assert_eq!(
        r.ghcr.targets(),
        [
            "/v2/org/app/manifests/v1".to_string(),
            format!("/v2/org/app/blobs/{}", blob.digest)
        ]
    );
    assert_eq!(r.hub.targets(), ["/v2/org/app/manifests/v1"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_prefix_naming_a_configured_upstream_selects_it() {
    let r = Routes::start().await;
    let image = r.ghcr.add_simple_image("org/app", "v1", 3);

    assert_eq!(
        r.mirror.get_ok("/v2/ghcr.io/org/app/manifests/v1").await,
        image.manifest
    );
    let layer = &image.layers[1];
    assert_eq!(
        r.mirror
            .get_ok(&blob_path("ghcr.io/org/app", &layer.digest))
            .await,
        layer.data
    );
    assert_eq!(
        r.ghcr.targets(),
        [
            "/v2/org/app/manifests/v1".to_string(),
            format!("/v2/org/app/blobs/{}", layer.digest)
        ]
    );
    assert!(
        r.hub.content_paths().is_empty(),
        "docker.io contacted: {:?}",
        r.traffic()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_io_prefix_works_like_ns() {
    let r = Routes::start().await;
    let image = r.hub.add_simple_image("library/alpine", "latest", 4);
    assert_eq!(
        r.mirror
            .get_ok("/v2/docker.io/alpine/manifests/latest")
            .await,
        image.manifest
    );
    assert_eq!(r.hub.targets(), ["/v2/library/alpine/manifests/latest"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_ns_or_prefix_the_default_upstream_is_used() {
    let r = Routes::start().await;
    let image = r.hub.add_simple_image("org/app", "v1", 5);
    r.ghcr.add_simple_image("org/app", "v1", 6);

    let resp = r.mirror.get("/v2/org/app/manifests/v1").await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.bytes().await.unwrap(), image.manifest);
    assert_eq!(r.hub.targets(), ["/v2/org/app/manifests/v1"]);
    assert!(r.ghcr.content_paths().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_hub_one_component_names_get_library() {
    let r = Routes::start().await;
    let image = r.hub.add_simple_image("library/alpine", "3.19", 7);
    let layer = &image.layers[0];

    assert_eq!(
        r.mirror
            .get_ok("/v2/alpine/manifests/3.19?ns=docker.io")
            .await,
        image.manifest
    );
    assert_eq!(
        r.mirror
            .get_ok(&format!("/v2/alpine/blobs/{}?ns=docker.io", layer.digest))
            .await,
        layer.data
    );
    assert_eq!(
        r.hub.targets(),
        [
            "/v2/library/alpine/manifests/3.19".to_string(),
            format!("/v2/library/alpine/blobs/{}", layer.digest)
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn library_names_are_not_doubled_and_share_the_cache() {
    let r = Routes::start().await;
    let image = r.hub.add_simple_image("library/alpine", "latest", 8);

    assert_eq!(
        r.mirror.get_ok("/v2/library/alpine/manifests/latest").await,
        image.manifest
    );
    assert_eq!(r.hub.targets(), ["/v2/library/alpine/manifests/latest"]);
    let fetched = r.hub.content_requests();
    // `alpine` and `library/alpine` are one repository on Docker Hub: with a
    // 5m TTL the short name is already cached.
    assert_eq!(
        r.mirror
            .get_ok("/v2/alpine/manifests/latest?ns=docker.io")
            .await,
        image.manifest
    );
    assert_eq!(
        r.mirror.get_ok("/v2/alpine/manifests/latest").await,
        image.manifest
    );
    assert_eq!(
        r.hub.content_requests(),
        fetched,
        "one repository, fetched twice: {:?}",
        r.hub.content_paths()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_component_names_are_not_rewritten() {
    let r = Routes::start().await;
    let image = r.hub.add_simple_image("bitnami/redis", "7", 9);
    assert_eq!(
        r.mirror.get_ok("/v2/bitnami/redis/manifests/7").await,
        image.manifest
    );
    assert_eq!(
        r.mirror
            .get_ok(&blob_path("bitnami/redis", &image.config.digest))
            .await,
        image.config.data
    );
    assert_eq!(
        r.hub.targets(),
        [
            "/v2/bitnami/redis/manifests/7".to_string(),
            format!("/v2/bitnami/redis/blobs/{}", image.config.digest)
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn library_rule_is_only_for_docker_io() {
    let r = Routes::start().await;
    let image = r.ghcr.add_simple_image("app", "v1", 10);
    assert_eq!(
        r.mirror.get_ok("/v2/app/manifests/v1?ns=ghcr.io").await,
        image.manifest
    );
    assert_eq!(
        r.mirror.get_ok("/v2/ghcr.io/app/manifests/v1").await,
        image.manifest
    );
    assert_eq!(r.ghcr.targets()[0], "/v2/app/manifests/v1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ns_takes_precedence_over_a_path_prefix() {
    let r = Routes::start().await;
    let image = r.hub.add_simple_image("ghcr.io/org/app", "v1", 11);
    assert_eq!(
        r.mirror
            .get_ok("/v2/ghcr.io/org/app/manifests/v1?ns=docker.io")
            .await,
        image.manifest
    );
    assert_eq!(r.hub.targets(), ["/v2/ghcr.io/org/app/manifests/v1"]);
    assert!(r.ghcr.content_paths().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_name_on_two_registries_is_cached_apart() {
    let r = Routes::start().await;
    let on_hub = r.hub.add_simple_image("org/app", "v1", 12);
    let on_ghcr = r.ghcr.add_simple_image("org/app", "v1", 13);
    assert_ne!(on_hub.digest, on_ghcr.digest);

    for _ in 0..2 {
        assert_eq!(
            r.mirror
                .get_ok("/v2/org/app/manifests/v1?ns=docker.io")
                .await,
            on_hub.manifest
        );
        assert_eq!(
            r.mirror.get_ok("/v2/org/app/manifests/v1?ns=ghcr.io").await,
            on_ghcr.manifest
        );
        assert_eq!(
            r.mirror.get_ok("/v2/ghcr.io/org/app/manifests/v1").await,
            on_ghcr.manifest
        );
        assert_eq!(
            r.mirror.get_ok("/v2/org/app/manifests/v1").await,
            on_hub.manifest
        );
    }
    let resp = r.mirror.get("/v2/org/app/tags/list?ns=ghcr.io").await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        r.ghcr.log().iter().filter(|s| s.kind == Kind::Tags).count(),
        1,
        "tags list routed by ns"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unconfigured_registry_is_name_unknown_and_nothing_is_contacted() {
    let r = Routes::start().await;
    r.stranger.add_simple_image("foo/bar", "latest", 14);
    let stranger = r.stranger.host();
    let digest = sha256_digest(b"whatever");

    for path in [
        "/v2/foo/bar/manifests/latest?ns=quay.io".to_string(),
        format!("/v2/foo/bar/blobs/{digest}?ns=quay.io"),
        "/v2/foo/bar/tags/list?ns=quay.io".to_string(),
        format!("/v2/foo/bar/manifests/latest?ns={stranger}"),
        format!("/v2/foo/bar/blobs/{digest}?ns={stranger}"),
        "/v2/foo/bar/manifests/latest?ns=localhost".to_string(),
    ] {
        let resp = r.mirror.get(&path).await;
        assert_oci_error(resp, 404, &["NAME_UNKNOWN"]).await;
        let head = r.mirror.head(&path).await;
        assert_eq!(head.status(), 404, "HEAD {path}");
    }
    // A registry host as a path prefix is just a (here invalid) name, never a target.
    let resp = raw_request(
        r.mirror.addr,
        "GET",
        &format!("/v2/{stranger}/foo/bar/manifests/latest"),
        &[],
    )
    .await;
    assert!(
        (400..500).contains(&resp.status),
        "prefix {stranger}: {}",
        resp.status
    );
    assert_eq!(
        r.traffic(),
        (vec![], vec![], vec![]),
        "an unconfigured registry request reached an upstream"
    );
}
