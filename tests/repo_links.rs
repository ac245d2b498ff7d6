//! Blobs and manifests are linked to the repositories that hold them
//! (issue 14, defect 3): the store is shared by digest, but a cached blob
//! is served through repository R only when R is known to hold it (fetched
//! for R, pushed to R, or confirmed by an upstream `HEAD` for R), so a
//! digest alone never reads content another repository brought in.

mod common;

use common::*;
use hyper::Method;

/// Anonymous may pull `library` only; `ci` may pull everything.
const RULES: &str = r#"
[[auth.rules]]
repository = "library"
users = ["anonymous", "*"]
allow = ["pull"]
[[auth.rules]]
repository = "*"
users = ["ci"]
allow = ["pull"]
"#;

struct Linked {
    hub: FakeRegistry,
    mirror: TestMirror,
    toml: String,
    _dir: tempfile::TempDir,
}

impl Linked {
    async fn start(auth: bool) -> Linked {
        let hub = FakeRegistry::start().await;
        let dir = tempfile::tempdir().unwrap();
        let mut toml = Cfg::new(&dir.path().join("cache"))
            .upstream("docker.io", &hub.url())
            .toml();
        if auth {
            let htpasswd = dir.path().join("htpasswd");
            std::fs::write(
                &htpasswd,
                format!("ci:{}", bcrypt::hash("ci-pw", 4).unwrap()),
            )
            .unwrap();
            toml = format!(
                "{toml}\n[auth]\nhtpasswd = {:?}\n{RULES}\n",
                htpasswd.display().to_string()
            );
        }
        let mirror = TestMirror::start(&toml).await;
        Linked {
            hub,
            mirror,
            toml,
            _dir: dir,
        }
    }

    async fn as_ci(&self, path: &str) -> reqwest::Response {
        self.mirror
            .client
            .get(self.mirror.url(path))
            .basic_auth("ci", Some("ci-pw"))
            .send()
            .await
            .unwrap()
    }

    /// `ci` pulls `image` (by tag, then each blob) through `name`.
    async fn pull_as_ci(&self, name: &str, tag: &str, image: &Image) {
        let resp = self.as_ci(&manifest_path(name, tag)).await;
        assert_eq!(resp.status(), 200, "ci pulls {name}:{tag}");
        for blob in image.blobs() {
            let resp = self.as_ci(&blob_path(name, &blob.digest)).await;
            assert_eq!(resp.status(), 200, "ci pulls {}", blob.digest);
            assert!(resp.bytes().await.unwrap() == blob.data);
        }
    }
}

/// Not served: a 404 (the repository does not hold it) or any refusal,
/// never the bytes.
async fn refused(resp: reqwest::Response, what: &str) {
    let status = resp.status().as_u16();
    assert!(
        status == 404 || status == 401 || status == 403 || status >= 500,
        "{what}: answered {status}"
    );
    assert_ne!(status, 200, "{what}");
}

/// The issue's reproduction: `ci` pulls bitnami/redis through hoard;
/// anonymous then asks for a redis layer through library/alpine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_cached_for_one_repository_is_not_served_through_another() {
    let env = Linked::start(true).await;
    env.hub.add_simple_image("library/alpine", "3", 1);
    let redis = env.hub.add_simple_image("bitnami/redis", "7.2", 2);
    env.pull_as_ci("bitnami/redis", "7.2", &redis).await;

    for blob in redis.blobs() {
        let path = blob_path("library/alpine", &blob.digest);
        refused(env.mirror.get(&path).await, &format!("GET {path}")).await;
        refused(env.mirror.head(&path).await, &format!("HEAD {path}")).await;
    }
    let path = manifest_path("library/alpine", &redis.digest);
    refused(env.mirror.get(&path).await, &format!("GET {path}")).await;

    // Nor once the upstream is gone: nothing confirms library/alpine has it.
    env.hub.go_down().await;
    for blob in redis.blobs() {
        let path = blob_path("library/alpine", &blob.digest);
        refused(env.mirror.get(&path).await, &format!("offline GET {path}")).await;
    }
    refused(env.mirror.get(&path).await, &format!("offline GET {path}")).await;
    // While ci still reads it through the repository it came from.
    for blob in redis.blobs() {
        let resp = env.as_ci(&blob_path("bitnami/redis", &blob.digest)).await;
        assert_eq!(resp.status(), 200, "offline, through bitnami/redis");
    }
}

/// A layer both repositories hold upstream is confirmed with one `HEAD`
/// for the second repository, then served from the cache (offline too).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_layer_both_repositories_hold_is_confirmed_once_then_served_from_the_cache() {
    let env = Linked::start(false).await;
    let shared = pseudo_random(77, 4000);
    let a = env
        .hub
        .add_image("team/a", "1", 1, &[shared.clone(), pseudo_random(1, 10)]);
    let b = env
        .hub
        .add_image("team/b", "1", 2, std::slice::from_ref(&shared));
    let layer = &a.layers[0];
    assert_eq!(layer.digest, b.layers[0].digest);
    assert_eq!(
        env.mirror.get_ok(&blob_path("team/a", &layer.digest)).await,
        shared
    );
    let gets = env.hub.blob_gets();
    let heads = env.hub.count(Kind::Blob, Method::HEAD);

    for _ in 0..3 {
        let body = env.mirror.get_ok(&blob_path("team/b", &layer.digest)).await;
        assert!(body == shared);
    }
    assert_eq!(env.hub.blob_gets(), gets, "no second download");
    assert_eq!(
        env.hub.count(Kind::Blob, Method::HEAD),
        heads + 1,
        "one HEAD confirms team/b holds it"
    );
    env.hub.go_down().await;
    let body = env.mirror.get_ok(&blob_path("team/b", &layer.digest)).await;
    assert!(body == shared, "linked: served offline");
}

/// Pulling by tag links the manifest and everything it references, and the
/// links outlive a restart, so an offline mirror serves what it served.
/// A cache written before links existed keeps serving its tagged images:
/// the links are derived from the tag records.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn links_outlive_a_restart_and_are_derived_for_an_older_cache() {
    let env = Linked::start(false).await;
    let image = env.hub.add_simple_image("library/alpine", "3", 5);
    let other = env.hub.add_simple_image("team/other", "1", 6);
    assert_eq!(
        env.mirror
            .get_ok(&manifest_path("library/alpine", "3"))
            .await,
        image.manifest
    );
    for blob in image.blobs() {
        env.mirror
            .get_ok(&blob_path("library/alpine", &blob.digest))
            .await;
    }
    env.mirror.get_ok(&manifest_path("team/other", "1")).await;
    for blob in other.blobs() {
        env.mirror
            .get_ok(&blob_path("team/other", &blob.digest))
            .await;
    }
    let Linked {
        hub,
        mirror,
        toml,
        _dir,
    } = env;
    mirror.stop().await;
    hub.go_down().await;

    serves_only_its_own(TestMirror::start(&toml).await, &image, &other).await;

    let links = _dir.path().join("cache").join("links");
    assert!(
        links.is_dir(),
        "links are records under {}",
        links.display()
    );
    std::fs::remove_dir_all(&links).unwrap();
    serves_only_its_own(TestMirror::start(&toml).await, &image, &other).await;
}

/// Offline after a restart: `image` is served through library/alpine,
/// `other`'s blobs are not.
async fn serves_only_its_own(mirror: TestMirror, image: &Image, other: &Image) {
    let path = manifest_path("library/alpine", &image.digest);
    assert_eq!(mirror.get_ok(&path).await, image.manifest);
    for blob in image.blobs() {
        let body = mirror
            .get_ok(&blob_path("library/alpine", &blob.digest))
            .await;
        assert!(body == blob.data);
    }
    for blob in other.blobs() {
        let path = blob_path("library/alpine", &blob.digest);
        refused(mirror.get(&path).await, &path).await;
    }
    mirror.stop().await;
}
