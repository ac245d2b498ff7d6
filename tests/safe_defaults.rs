//! The embedded `mirror.toml` is safe to expose (issue 14, defects 4 and 6):
//! without `[auth]` only clients on this host may push, so a stranger cannot
//! create a repository that clients sending no `ns` (dockerd) would pull
//! instead of Docker Hub's; a request relayed by a proxy on this host is a
//! stranger too.

mod common;

use common::{manifest_path, Cfg, FakeRegistry, Server, TestMirror};

/// The shipped `mirror.toml`, with its cache in `dir` and Docker Hub played
/// by `hub`; every other key as shipped (listen is ignored: tests bind
/// 127.0.0.1:0).
fn shipped_config(dir: &std::path::Path, hub: &FakeRegistry) -> String {
    let text = include_str!("../mirror.toml")
        .replace(
            "cache_dir = \"hoard-cache\"",
            &format!("cache_dir = {:?}", dir.display().to_string()),
        )
        .replace("https://registry-1.docker.io", &hub.url());
    assert!(text.contains(&hub.url()) && !text.contains("hoard-cache\""));
    text
}

/// Starts an upload of `repo`, optionally as relayed by a proxy.
async fn start_upload(
    m: &TestMirror,
    repo: &str,
    forwarded_for: Option<&str>,
) -> reqwest::Response {
    let mut req = m.client.post(m.url(&format!("/v2/{repo}/blobs/uploads/")));
    if let Some(ip) = forwarded_for {
        req = req.header("x-forwarded-for", ip);
    }
    req.send().await.unwrap()
}

#[tokio::test]
async fn with_the_shipped_config_a_stranger_cannot_push_a_docker_hub_name() {
    let hub = FakeRegistry::start().await;
    let redis = hub.add_simple_image("bitnami/redis", "7.2", 1);
    let dir = tempfile::tempdir().unwrap();
    let mirror = TestMirror::start(&shipped_config(dir.path(), &hub)).await;

    // The attack of issue 14: a stranger (here: relayed by a proxy on this
    // host, so the peer address alone says loopback) pushes bitnami/redis.
    for header in ["x-forwarded-for", "forwarded", "x-real-ip"] {
        let resp = mirror
            .client
            .post(mirror.url("/v2/bitnami/redis/blobs/uploads/"))
            .header(header, "203.0.113.7")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 403, "{header}");
        let body = resp.text().await.unwrap();
        assert!(
            body.contains("DENIED") && body.contains("push_from"),
            "{body}"
        );
    }
    let put = mirror
        .client
        .put(mirror.url(&manifest_path("bitnami/redis", "7.2")))
        .header("x-forwarded-for", "203.0.113.7")
        .header("content-type", "application/vnd.oci.image.manifest.v1+json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 403);

    // dockerd (no ns) still gets Docker Hub's image.
    let head = mirror.head(&manifest_path("bitnami/redis", "7.2")).await;
    assert_eq!(head.status(), 200);
    assert_eq!(common::header(&head, "docker-content-digest"), redis.digest);

    // The operator on this host may still push.
    let ok = start_upload(&mirror, "team/app", None).await;
    assert_eq!(ok.status(), 202, "{:?}", ok.text().await);
}

#[tokio::test]
async fn push_from_anywhere_is_an_explicit_choice() {
    let hub = FakeRegistry::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = Cfg::new(dir.path())
        .upstream("docker.io", &hub.url())
        .local("push_from", "\"anywhere\"");
    let mirror = TestMirror::start(&cfg.toml()).await;
    let resp = start_upload(&mirror, "team/app", Some("203.0.113.7")).await;
    assert_eq!(resp.status(), 202);
}
