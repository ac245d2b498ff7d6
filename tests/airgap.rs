//! Air-gap readiness through the operator API: prefetch pins whole images,
//! pinned content survives the budget and the upstream moving its tags,
//! `check` tells ready from missing, `ls` lists what is kept.

mod common;

use common::*;
use serde_json::{json, Value};

/// POSTs `body` to `/_hoard/<what>`; returns status and body.
async fn post(mirror: &TestMirror, what: &str, body: Value) -> (u16, Vec<u8>) {
    let resp = mirror
        .client
        .post(mirror.url(&format!("/_hoard/{what}")))
        .header("content-type", "application/json")
        .body(serde_json::to_vec(&body).unwrap())
        .send()
        .await
        .unwrap_or_else(|e| panic!("POST {what}: {e}"));
    let status = resp.status().as_u16();
    (status, resp.bytes().await.unwrap().to_vec())
}

/// Runs a prefetch and returns its NDJSON events (the summary last).
async fn prefetch(mirror: &TestMirror, images: &[&str], platforms: &[&str]) -> Vec<Value> {
    let (status, body) = post(
        mirror,
        "prefetch",
        json!({"images": images, "platforms": platforms, "jobs": 3}),
    )
    .await;
    let text = String::from_utf8_lossy(&body).to_string();
    assert_eq!(status, 200, "prefetch: {text}");
    let events: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert_eq!(
        events.last().map(|e| e["event"].clone()),
        Some(json!("summary")),
        "{text}"
    );
    events
}

/// `POST /_hoard/check`: the readiness document.
async fn check(mirror: &TestMirror, images: &[&str], platforms: &[&str]) -> Value {
    let (status, body) = post(
        mirror,
        "check",
        json!({"images": images, "platforms": platforms}),
    )
    .await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    serde_json::from_slice(&body).unwrap()
}

fn summary(events: &[Value]) -> &Value {
    events.last().unwrap()
}

async fn get_json(mirror: &TestMirror, path: &str) -> Value {
    serde_json::from_slice(&mirror.get_ok(path).await).unwrap()
}

/// Every manifest and blob of `image` answers 200 with the right bytes.
async fn assert_servable(mirror: &TestMirror, name: &str, image: &Image) {
    assert_eq!(
        mirror.get_ok(&manifest_path(name, &image.digest)).await,
        image.manifest
    );
    for blob in image.blobs() {
        let body = mirror.get_ok(&blob_path(name, &blob.digest)).await;
        assert!(body == blob.data, "{name} blob {}", blob.digest);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefetch_pins_whole_images_and_serves_them_offline() {
    let env = Env::start().await;
    let amd = env.hub.add_simple_image("library/multi", "amd64-only", 1);
    let arm = env.hub.add_simple_image("library/multi", "arm64-only", 2);
    let (index, index_bytes) = env.hub.add_index("library/multi", "latest", &[&amd, &arm]);
    let app = env.hub.add_simple_image("team/app", "v1", 3);
    // One layer was pulled before: the prefetch must not fetch it again.
    env.mirror
        .get_ok(&blob_path("team/app", &app.layers[0].digest))
        .await;

    let events = prefetch(&env.mirror, &["multi:latest", "docker.io/team/app:v1"], &[]).await;
    let s = summary(&events);
    assert_eq!(
        (s["images"].as_u64(), s["failed"].as_u64()),
        (Some(2), Some(0)),
        "{events:?}"
    );
    assert_eq!(s["blobs"], 9, "3 per image manifest: {s}");
    assert_eq!(s["cached_bytes"], app.layers[0].data.len(), "{s}");
    let done: Vec<&Value> = events.iter().filter(|e| e["event"] == "done").collect();
    assert_eq!(done.len(), 2, "{events:?}");
    assert!(
        events.iter().any(|e| e["event"] == "progress"),
        "{events:?}"
    );
    let layer_gets = env
        .hub
        .log()
        .iter()
        .filter(|s| s.path.ends_with(&app.layers[0].digest))
        .count();
    assert_eq!(layer_gets, 1, "a cached blob is skipped, not fetched again");

    let pins = get_json(&env.mirror, "/_hoard/pins").await;
    let names: Vec<&str> = pins["pins"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["image"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["docker.io/library/multi:latest", "docker.io/team/app:v1"]
    );
    let m = env.mirror.metrics().await;
    assert!(m.sum("hoard_pinned_blobs", &[]) >= 11.0, "{}", m.0);

    env.hub.go_down().await;
    let resp = env
        .mirror
        .get_with(&manifest_path("multi", "latest"), &[("Accept", OCI_INDEX)])
        .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "Docker-Content-Digest"), index);
    assert_eq!(resp.bytes().await.unwrap(), index_bytes);
    assert_servable(&env.mirror, "multi", &amd).await;
    assert_servable(&env.mirror, "multi", &arm).await;
    assert_servable(&env.mirror, "team/app", &app).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn platform_filter_fetches_only_the_asked_platforms() {
    let env = Env::start().await;
    let amd = env.hub.add_simple_image("library/multi", "a", 1);
    let arm = env.hub.add_simple_image("library/multi", "b", 2);
    env.hub.add_index("library/multi", "latest", &[&amd, &arm]);
    let events = prefetch(&env.mirror, &["multi"], &["linux/arm64"]).await;
    assert_eq!(summary(&events)["failed"], 0, "{events:?}");
    let fetched: Vec<String> = env.hub.content_paths();
    for blob in amd.blobs() {
        assert!(
            !fetched.iter().any(|p| p.ends_with(&blob.digest)),
            "amd64 blob {} fetched",
            blob.digest
        );
    }
    let v = check(&env.mirror, &["multi"], &["linux/arm64"]).await;
    assert_eq!(v["ready"], true, "{v}");
    let v = check(&env.mirror, &["multi"], &["linux/amd64"]).await;
    assert_eq!(v["ready"], false, "amd64 was not fetched: {v}");

    // A platform the image does not have fails the image, named.
    let events = prefetch(&env.mirror, &["multi"], &["linux/s390x"]).await;
    let failed = &events[0];
    assert_eq!(failed["event"], "failed", "{events:?}");
    assert!(
        failed["error"].as_str().unwrap().contains("linux/s390x"),
        "{failed}"
    );
    assert_eq!(summary(&events)["failed"], 1);
}

/// Pulls images `library/other:t<n>` for `n` in `tags`, one layer of `size`
/// bytes each (seeds from `seed`), through `mirror`; returns them.
async fn pull_others(
    hub: &FakeRegistry,
    mirror: &TestMirror,
    tags: std::ops::Range<u64>,
    seed: u64,
    size: usize,
) -> Vec<Image> {
    let mut others = Vec::new();
    for n in tags {
        let img = hub.add_image(
            "library/other",
            &format!("t{n}"),
            seed + n,
            &[pseudo_random(seed + 10 + n, size)],
        );
        assert_servable(mirror, "other", &img).await;
        others.push(img);
    }
    others
}

/// A mirror config with a 1 MiB budget in `dir`, Docker Hub at `hub`.
fn one_mib_budget(hub: &FakeRegistry, dir: &std::path::Path) -> String {
    format!(
        "max_size = \"1MiB\"\n{}",
        Cfg::new(dir).upstream("docker.io", &hub.url()).toml()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pinned_images_survive_a_budget_overflowed_by_other_pulls() {
    let hub = FakeRegistry::start().await;
    let dir = tempfile::tempdir().unwrap();
    let toml = one_mib_budget(&hub, dir.path());
    let mirror = TestMirror::start(&toml).await;
    let kept = hub.add_image(
        "library/kept",
        "v1",
        1,
        // One layer larger than the whole budget: pinned content is outside it.
        &[pseudo_random(1, 1536 * 1024), pseudo_random(2, 300 * 1024)],
    );
    let events = prefetch(&mirror, &["kept:v1"], &[]).await;
    assert_eq!(summary(&events)["failed"], 0, "{events:?}");

    // 3 MiB of other pulls through a 1 MiB budget.
    pull_others(&hub, &mirror, 0..6, 10, 512 * 1024).await;
    let m = mirror
        .wait_metrics("evictions", |m| m.sum("hoard_evictions_total", &[]) >= 3.0)
        .await;
    assert!(
        m.sum("hoard_pinned_bytes", &[]) >= (900 * 1024) as f64,
        "{}",
        m.0
    );
    // The budget gauge leaves the pins out: it stays within max_size while
    // the pinned layer alone is larger than it.
    assert!(
        m.sum("hoard_cache_budgeted_bytes", &[]) <= m.sum("hoard_cache_limit_bytes", &[])
            && m.sum("hoard_cache_size_bytes", &[]) > m.sum("hoard_cache_limit_bytes", &[]),
        "{}",
        m.0
    );

    hub.go_down().await;
    assert_servable(&mirror, "kept", &kept).await;
    let resp = mirror.get(&manifest_path("kept", "v1")).await;
    assert_eq!(resp.status(), 200, "pinned tag offline");
    assert_eq!(header(&resp, "Docker-Content-Digest"), kept.digest);

    // After a restart the pins are held before the budget applies.
    mirror.stop().await;
    let mirror = TestMirror::start(&toml).await;
    assert_servable(&mirror, "kept", &kept).await;
    let v = check(&mirror, &["kept:v1", "other:t0"], &[]).await;
    assert_eq!(v["images"][0]["ready"], true, "{v}");
    assert_eq!(v["images"][0]["pinned"], true, "{v}");
    assert_eq!(v["images"][1]["ready"], false, "evicted by the budget: {v}");
    assert_eq!(v["ready"], false);
    mirror.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prefetch_into_a_full_budget_evicts_nothing() {
    let hub = FakeRegistry::start().await;
    let dir = tempfile::tempdir().unwrap();
    let toml = one_mib_budget(&hub, dir.path());
    let mirror = TestMirror::start(&toml).await;
    // Pulls fill most of the budget.
    let others = pull_others(&hub, &mirror, 0..2, 30, 400 * 1024).await;
    // A pinned image whose layers go through fills (each under half the
    // budget) is committed outside the budget: nothing unpinned must go.
    let kept = hub.add_image(
        "library/kept",
        "v1",
        3,
        &[pseudo_random(50, 300 * 1024), pseudo_random(51, 200 * 1024)],
    );
    let events = prefetch(&mirror, &["kept:v1"], &[]).await;
    assert_eq!(summary(&events)["failed"], 0, "{events:?}");
    let m = mirror.metrics().await;
    assert_eq!(m.sum("hoard_evictions_total", &[]), 0.0, "{}", m.0);
    assert!(
        m.sum("hoard_pinned_bytes", &[]) >= (500 * 1024) as f64,
        "{}",
        m.0
    );
    hub.go_down().await;
    for img in &others {
        assert_servable(&mirror, "other", img).await;
    }
    assert_servable(&mirror, "kept", &kept).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pinned_tag_is_not_moved_by_the_upstream_until_unpinned() {
    let env = Env::start_with(|c| c.tag_ttl("0s")).await;
    let old = env.hub.add_simple_image("library/alpine", "3.19", 1);
    let events = prefetch(&env.mirror, &["alpine:3.19"], &[]).await;
    assert_eq!(summary(&events)["failed"], 0, "{events:?}");
    let new = env.hub.add_simple_image("library/alpine", "3.19", 2);

    let resp = env.mirror.get(&manifest_path("alpine", "3.19")).await;
    assert_eq!(header(&resp, "Docker-Content-Digest"), old.digest, "pinned");
    let resp = env
        .mirror
        .client
        .delete(env.mirror.url("/_hoard/pins?image=alpine:3.19"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let resp = env.mirror.get(&manifest_path("alpine", "3.19")).await;
    assert_eq!(
        header(&resp, "Docker-Content-Digest"),
        new.digest,
        "unpinned follows upstream"
    );
    let resp = env
        .mirror
        .client
        .delete(env.mirror.url("/_hoard/pins?image=alpine:3.19"))
        .send()
        .await
        .unwrap();
    assert_oci_error(resp, 409, &["UNSUPPORTED"]).await;

    // Pinning needs no upstream, and only what is complete in the cache:
    // the tag now points at the new image, whose blobs were never pulled;
    // the old image (unpinned, back under the budget) is still all there.
    env.hub.go_down().await;
    let (status, body) = post(&env.mirror, "pins", json!({"image": "alpine:3.19"})).await;
    assert_eq!(status, 409, "{}", String::from_utf8_lossy(&body));
    let by_digest = format!("alpine@{}", old.digest);
    let (status, body) = post(&env.mirror, "pins", json!({"image": by_digest})).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let pin: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        pin["image"],
        format!("docker.io/library/alpine@{}", old.digest)
    );
    assert_eq!(pin["blobs"], 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ls_lists_cached_and_pinned_images_and_errors_are_named() {
    let env = Env::start().await;
    let app = env.hub.add_simple_image("team/app", "v1", 1);
    let pulled = env.hub.add_simple_image("library/busybox", "1", 2);
    let events = prefetch(
        &env.mirror,
        &["team/app:v1", "quay.io/x/y:1", "nope:1"],
        &[],
    )
    .await;
    let failed: Vec<String> = events
        .iter()
        .filter(|e| e["event"] == "failed")
        .map(|e| e["error"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(failed.len(), 2, "{events:?}");
    assert!(
        failed
            .iter()
            .any(|e| e.contains("\"quay.io\" is not configured")),
        "{failed:?}"
    );
    assert!(
        failed.iter().any(|e| e.contains("not known upstream")),
        "{failed:?}"
    );
    env.mirror.get_ok(&manifest_path("busybox", "1")).await;

    let ls = get_json(&env.mirror, "/_hoard/ls").await;
    let images = ls["images"].as_array().unwrap();
    let find = |name: &str| {
        images
            .iter()
            .find(|i| i["image"] == name)
            .unwrap_or_else(|| panic!("{name} not in {ls}"))
    };
    let a = find("docker.io/team/app:v1");
    assert_eq!(
        (a["pinned"].clone(), a["complete"].clone()),
        (json!(true), json!(true)),
        "{a}"
    );
    assert_eq!(a["digest"], app.digest);
    let size: usize = app.blobs().iter().map(|b| b.data.len()).sum::<usize>() + app.manifest.len();
    assert_eq!(a["bytes"], size, "{a}");
    let b = find("docker.io/library/busybox:1");
    assert_eq!(
        (b["pinned"].clone(), b["complete"].clone()),
        (json!(false), json!(false)),
        "{b}"
    );
    assert_eq!(b["digest"], pulled.digest);

    // A running server owns its cache directory.
    let err = hoard::pins::CacheLock::acquire(env.dir.path()).unwrap_err();
    assert!(err.to_string().contains("in use"), "{err}");
    let resp = env.mirror.get("/_hoard/nothing").await;
    assert_oci_error(resp, 404, &["NOT_FOUND"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_works_through_the_server_or_on_a_stopped_servers_cache() {
    use hoard::cli::{self, Site};
    let hub = FakeRegistry::start().await;
    let dir = tempfile::tempdir().unwrap();
    let toml = Cfg::new(dir.path())
        .upstream("docker.io", &hub.url())
        .toml();
    let config = || Site::Local(Box::new(hoard::Config::from_toml(&toml).unwrap()));
    let app = hub.add_simple_image("team/app", "v1", 1);
    let late = hub.add_simple_image("library/late", "1", 2);
    let mirror = TestMirror::start(&toml).await;
    let server = || Site::Server(mirror.url(""));
    let images = vec!["team/app:v1".to_string()];

    let r = cli::prefetch(server(), images.clone(), vec![], 2).await;
    assert!(matches!(r, Ok(true)), "{r:?}");
    let r = cli::check(server(), images.clone(), vec![]).await;
    assert!(matches!(r, Ok(true)), "{r:?}");
    let missing = vec!["team/app:v1".to_string(), "late:1".to_string()];
    let r = cli::check(server(), missing.clone(), vec![]).await;
    assert!(matches!(r, Ok(false)), "{r:?}");
    let failed = cli::prefetch(server(), vec!["nope:1".into()], vec![], 2).await;
    assert!(
        matches!(failed, Ok(false)),
        "an image failed: exit 1: {failed:?}"
    );
    let busy = cli::check(config(), images.clone(), vec![]).await;
    assert!(
        busy.as_ref()
            .is_err_and(|e| e.to_string().contains("in use")),
        "{busy:?}"
    );
    mirror.stop().await;

    // On the stopped server's directory, in-process.
    let r = cli::check(config(), images.clone(), vec![]).await;
    assert!(matches!(r, Ok(true)), "{r:?}");
    let r = cli::prefetch(config(), vec!["late:1".into()], vec![], 2).await;
    assert!(matches!(r, Ok(true)), "{r:?}");
    let r = cli::check(config(), missing.clone(), vec![]).await;
    assert!(matches!(r, Ok(true)), "{r:?}");
    let r = cli::unpin(config(), "late:1".into()).await;
    assert!(matches!(r, Ok(())), "{r:?}");
    assert!(cli::unpin(config(), "late:1".into()).await.is_err());
    let r = cli::pin(config(), "late:1".into(), vec![]).await;
    assert!(matches!(r, Ok(())), "{r:?}");

    hub.go_down().await;
    let mirror = TestMirror::start(&toml).await;
    assert_servable(&mirror, "team/app", &app).await;
    assert_servable(&mirror, "late", &late).await;
    let pins = get_json(&mirror, "/_hoard/pins").await;
    assert_eq!(pins["pins"].as_array().map(Vec::len), Some(2), "{pins}");
    mirror.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefetch_table_in_the_config_is_fetched_and_pinned_at_start() {
    let hub = FakeRegistry::start().await;
    let dir = tempfile::tempdir().unwrap();
    let app = hub.add_simple_image("team/app", "v1", 1);
    let toml = format!(
        "{}\n[prefetch]\nimages = [\"team/app:v1\", \"nope:1\"]\ninterval = \"1h\"\n",
        Cfg::new(dir.path())
            .upstream("docker.io", &hub.url())
            .toml()
    );
    let mirror = TestMirror::start(&toml).await;
    let start = tokio::time::Instant::now();
    loop {
        let pins = get_json(&mirror, "/_hoard/pins").await;
        if pins["pins"].as_array().is_some_and(|p| p.len() == 1) {
            assert_eq!(pins["pins"][0]["image"], "docker.io/team/app:v1", "{pins}");
            assert_eq!(pins["pins"][0]["digest"], app.digest, "{pins}");
            break;
        }
        assert!(start.elapsed() < DEADLINE, "not pinned: {pins}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    hub.go_down().await;
    assert_servable(&mirror, "team/app", &app).await;
    mirror.stop().await;

    let bad = toml.replace("interval = \"1h\"", "platforms = [\"linux\"]");
    let config = hoard::Config::from_toml(&bad).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let err = hoard::run(listener, config, async {}).await.unwrap_err();
    assert!(err.to_string().contains("prefetch.platforms"), "{err}");
}
