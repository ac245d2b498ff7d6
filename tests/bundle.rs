//! `hoard export` / `hoard import` in process: a cache filled by pulls
//! through the real server is exported to an OCI-layout tar, imported into
//! a fresh directory, and served from there with the upstream down. A
//! corrupt or truncated archive stores nothing; an archive shaped like
//! skopeo's (blobs first, `ref.name` only a tag) imports with `--repo`.

mod common;

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use common::*;
use hoard::bundle::export::{self, Output};
use hoard::bundle::import::{self, Placement};
use hoard::bundle::layout::Platforms;
use hoard::bundle::Error;
use hoard::cache::{Cache, Holder};
use hoard::oci::Digest;
use hoard::prefetch::ImageRef;

/// A hub with `library/multi:latest` (an OCI index over two Docker
/// images) and `team/app:v1` (one image), and a mirror that has pulled
/// both completely (or, with `partial`, all but app's last layer).
struct Warm {
    env: Env,
    children: [Image; 2],
    index: (String, Bytes),
    app: Image,
}

async fn warm(partial: bool) -> Warm {
    let env = Env::start().await;
    let a = env.hub.add_simple_image("library/multi", "amd64-only", 1);
    let b = env.hub.add_simple_image("library/multi", "arm64-only", 2);
    let index = env.hub.add_index("library/multi", "latest", &[&a, &b]);
    let app = env.hub.add_image(
        "team/app",
        "v1",
        3,
        &[pseudo_random(30, 300_000), pseudo_random(31, 5000)],
    );
    let m = &env.mirror;
    m.get_ok(&manifest_path("library/multi", "latest")).await;
    for child in [&a, &b] {
        m.get_ok(&manifest_path("library/multi", &child.digest))
            .await;
        for blob in child.blobs() {
            m.get_ok(&blob_path("library/multi", &blob.digest)).await;
        }
    }
    m.get_ok(&manifest_path("team/app", "v1")).await;
    let blobs = app.blobs();
    let take = if partial {
        blobs.len() - 1
    } else {
        blobs.len()
    };
    for blob in &blobs[..take] {
        m.get_ok(&blob_path("team/app", &blob.digest)).await;
    }
    // Clients get their last byte before the blob is committed.
    m.settle().await;
    Warm {
        env,
        children: [a, b],
        index,
        app,
    }
}

fn config(cache_dir: &Path, upstream_url: &str) -> hoard::Config {
    let toml = Cfg::new(cache_dir)
        .upstream("docker.io", upstream_url)
        .toml();
    hoard::Config::from_toml(&toml).expect("config")
}

async fn open(dir: &Path) -> Arc<Cache> {
    let metrics = Arc::new(hoard::metrics::Metrics::new());
    Cache::open(dir, u64::MAX, metrics)
        .await
        .expect("open cache")
}

/// The pin records of the cache at `dir`.
async fn pins_of(dir: &Path) -> hoard::pins::Pins {
    let storage = hoard::storage::Storage::open_disk(dir)
        .await
        .expect("storage");
    hoard::pins::Pins::load(storage.records)
        .await
        .expect("pins")
}

fn refs(config: &hoard::Config, images: &[&str]) -> Vec<ImageRef> {
    images
        .iter()
        .map(|i| ImageRef::resolve(i, config).expect("image ref"))
        .collect()
}

async fn export_to(
    dir: &Path,
    hub_url: &str,
    images: &[&str],
    platforms: &str,
    out: &Path,
) -> Result<export::Summary, Error> {
    let config = config(dir, hub_url);
    let cache = open(dir).await;
    let platforms: Platforms = platforms.parse().expect("platforms");
    export::export(
        cache,
        &refs(&config, images),
        &platforms,
        Output::File(out.to_owned()),
        Arc::new(hoard::bundle::progress::Silent),
    )
    .await
}

async fn import_into(
    dir: &Path,
    archive: &Path,
    placement: &Placement,
) -> (Result<import::Summary, Error>, Arc<Cache>) {
    // The upstream of the disconnected site: nothing listens there.
    let config = config(dir, "http://127.0.0.1:9");
    let pins = pins_of(dir).await;
    let cache = open(dir).await;
    let r = import::import(
        cache.clone(),
        &config,
        archive,
        placement,
        &pins,
        Arc::new(hoard::bundle::progress::Silent),
    )
    .await;
    (r, cache)
}

/// Every (path, bytes) in a tar, in order.
fn entries(archive: &Path) -> Vec<(String, Vec<u8>)> {
    let mut tar = tar::Archive::new(std::fs::File::open(archive).expect("open archive"));
    tar.entries()
        .expect("entries")
        .map(|e| {
            let mut e = e.expect("entry");
            let path = e.path().unwrap().to_string_lossy().into_owned();
            let mut data = Vec::new();
            e.read_to_end(&mut data).unwrap();
            (path, data)
        })
        .collect()
}

/// Writes a tar of `files` (in order).
fn write_tar(path: &Path, files: &[(String, Vec<u8>)]) {
    let mut b = tar::Builder::new(std::fs::File::create(path).unwrap());
    for (name, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, name, &data[..]).unwrap();
    }
    b.into_inner().unwrap();
}

fn blob_entry(digest: &str) -> String {
    format!("blobs/sha256/{}", digest.trim_start_matches("sha256:"))
}

/// Regular files under `dir`, recursively.
fn files_below(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_owned()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let t = e.file_type().unwrap();
            if t.is_dir() {
                todo.push(e.path());
            } else if t.is_file() {
                out.push(e.path());
            }
        }
    }
    out
}

/// The mirror on `dir` with its only upstream refusing connections.
async fn offline_mirror(dir: &Path) -> TestMirror {
    let toml = Cfg::new(dir)
        .upstream("docker.io", "http://127.0.0.1:9")
        .toml();
    TestMirror::start(&toml).await
}

async fn assert_serves(m: &TestMirror, repo: &str, reference: &str, want: &[u8]) {
    let got = m.get_ok(&manifest_path(repo, reference)).await;
    assert_eq!(&got[..], want, "{repo}:{reference}");
}

/// `m` serves both images of `w` by tag, and every blob of `team/app`.
async fn assert_serves_both(m: &TestMirror, w: &Warm) {
    assert_serves(m, "library/multi", "latest", &w.index.1).await;
    assert_serves(m, "team/app", "v1", &w.app.manifest).await;
    for blob in w.app.blobs() {
        assert_eq!(
            m.get_ok(&blob_path("team/app", &blob.digest)).await,
            blob.data
        );
    }
}

#[tokio::test]
async fn exported_images_import_into_an_empty_cache_and_serve_offline() {
    let w = warm(false).await;
    let out_dir = tempfile::tempdir().unwrap();
    let archive = out_dir.path().join("bundle.tar");
    let summary = export_to(
        w.env.dir.path(),
        &w.env.hub.url(),
        &["multi", "docker.io/team/app:v1"],
        "",
        &archive,
    )
    .await
    .expect("export");
    // index + 2 children + app; 3 blobs each.
    assert_eq!(
        (summary.images, summary.manifests, summary.blobs),
        (2, 4, 9)
    );

    let files = entries(&archive);
    assert_eq!(files[0].0, "oci-layout");
    let layout: serde_json::Value = serde_json::from_slice(&files[0].1).unwrap();
    assert_eq!(layout["imageLayoutVersion"], "1.0.0");
    let index: serde_json::Value = serde_json::from_slice(&files[1].1).unwrap();
    let names: Vec<&str> = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            m["annotations"]["org.opencontainers.image.ref.name"]
                .as_str()
                .unwrap()
        })
        .collect();
    assert_eq!(
        names,
        ["docker.io/library/multi:latest", "docker.io/team/app:v1"]
    );
    assert_eq!(index["manifests"][0]["digest"], w.index.0.as_str());
    assert_eq!(
        index["manifests"][0]["annotations"]["io.hoard.repository"],
        "library/multi"
    );
    let blobs: BTreeMap<&str, &[u8]> = files
        .iter()
        .filter(|(p, _)| p.starts_with("blobs/sha256/") && p.len() > 14)
        .map(|(p, d)| (p.as_str(), &d[..]))
        .collect();
    assert_eq!(blobs.len(), 4 + 9);
    for (path, data) in &blobs {
        assert_eq!(
            &blob_entry(&sha256_digest(data)),
            path,
            "content matches its name"
        );
    }
    assert_eq!(
        blobs[blob_entry(&w.app.digest).as_str()],
        &w.app.manifest[..]
    );

    // The disconnected site: an empty cache, the upstream gone.
    w.env.hub.go_down().await;
    let site = tempfile::tempdir().unwrap();
    let (imported, cache) = import_into(site.path(), &archive, &Placement::default()).await;
    let imported = imported.expect("import");
    assert_eq!(imported.images, 2);
    assert_eq!((imported.new_blobs, imported.present_blobs), (13, 0));
    assert_eq!(imported.unreferenced, 0);
    for d in [&w.index.0, &w.app.digest, &w.app.layers[0].digest] {
        let d: Digest = d.parse().unwrap();
        assert!(cache.is_held_by(&d, Holder::Pin), "{d} is pinned");
    }
    assert!(files_in_tmp(site.path()).is_empty(), "no staged files left");
    drop(cache);
    // Durable pins: every digest of both images is held from the next start.
    let pins = pins_of(site.path()).await;
    let keys: Vec<String> = pins.list().iter().map(|p| p.key()).collect();
    assert_eq!(
        keys,
        ["docker.io/library/multi:latest", "docker.io/team/app:v1"]
    );
    let held = pins.held();
    for (path, data) in &blobs {
        let d: Digest = sha256_digest(data).parse().unwrap();
        assert!(held.contains_key(&d), "{path} pinned");
    }
    assert_eq!(held.len(), 13);

    let m = offline_mirror(site.path()).await;
    assert_serves(&m, "multi", "latest", &w.index.1).await;
    assert_serves(&m, "library/multi", &w.index.0, &w.index.1).await;
    assert_serves(&m, "team/app", "v1", &w.app.manifest).await;
    for image in w.children.iter().chain([&w.app]) {
        assert_serves(&m, &image.repo, &image.digest, &image.manifest).await;
        for blob in image.blobs() {
            let got = m.get_ok(&blob_path(&image.repo, &blob.digest)).await;
            assert_eq!(got, blob.data, "{}", blob.digest);
        }
    }
    let resp = m.head(&manifest_path("team/app", "v1")).await;
    assert_eq!(header(&resp, "docker-content-digest"), w.app.digest);
    assert_eq!(
        header(&resp, "content-type"),
        DOCKER_MANIFEST,
        "media type kept"
    );
    m.stop().await;

    // Importing the same archive again adds nothing and still succeeds.
    let (again, _cache) = import_into(site.path(), &archive, &Placement::default()).await;
    let again = again.expect("second import");
    assert_eq!((again.new_blobs, again.present_blobs), (0, 13));
}

fn files_in_tmp(dir: &Path) -> Vec<PathBuf> {
    files_below(&dir.join("tmp"))
}

#[tokio::test]
async fn platform_filter_exports_only_those_children() {
    let w = warm(false).await;
    let out = tempfile::tempdir().unwrap();
    let archive = out.path().join("arm.tar");
    let s = export_to(
        w.env.dir.path(),
        &w.env.hub.url(),
        &["multi"],
        "linux/arm64",
        &archive,
    )
    .await
    .expect("export");
    assert_eq!((s.manifests, s.blobs), (2, 3), "index and the arm64 image");
    let names: Vec<String> = entries(&archive).into_iter().map(|(p, _)| p).collect();
    assert!(names.contains(&blob_entry(&w.children[1].digest)));
    assert!(!names.contains(&blob_entry(&w.children[0].digest)));

    let site = tempfile::tempdir().unwrap();
    let (r, _cache) = import_into(site.path(), &archive, &Placement::default()).await;
    assert_eq!(r.expect("import").absent_children, 1);
    let pins = pins_of(site.path()).await;
    let pin = &pins.list()[0];
    assert_eq!(pin.platforms, ["linux/arm64"], "the pin says what it holds");
    assert_eq!(
        pin.manifests,
        [w.children[1].digest.parse::<Digest>().unwrap()]
    );
}

#[tokio::test]
async fn export_names_what_is_missing_and_leaves_no_archive() {
    let w = warm(true).await;
    let out = tempfile::tempdir().unwrap();
    let archive = out.path().join("bundle.tar");
    let err = export_to(
        w.env.dir.path(),
        &w.env.hub.url(),
        &["team/app:v1"],
        "",
        &archive,
    )
    .await
    .expect_err("a layer is missing");
    let msg = err.to_string();
    let missing = &w.app.layers[1].digest;
    assert!(
        msg.contains("docker.io/team/app:v1")
            && msg.contains(missing.as_str())
            && msg.contains("prefetch"),
        "{msg}"
    );
    let err = export_to(
        w.env.dir.path(),
        &w.env.hub.url(),
        &["team/app:v2"],
        "",
        &archive,
    )
    .await
    .expect_err("no such tag");
    assert!(err.to_string().contains("no such tag"), "{err}");
    assert!(
        files_below(out.path()).is_empty(),
        "no archive, no partial file"
    );
}

#[tokio::test]
async fn export_refuses_damaged_cache_content() {
    let w = warm(false).await;
    let layer = &w.app.layers[0];
    let hex = layer.digest.trim_start_matches("sha256:");
    let path = w
        .env
        .dir
        .path()
        .join("blobs/sha256")
        .join(&hex[..2])
        .join(hex);
    let mut data = std::fs::read(&path).unwrap();
    data[100] ^= 0xff;
    std::fs::write(&path, data).unwrap();
    let out = tempfile::tempdir().unwrap();
    let err = export_to(
        w.env.dir.path(),
        &w.env.hub.url(),
        &["team/app:v1"],
        "",
        &out.path().join("b.tar"),
    )
    .await
    .expect_err("damaged layer");
    assert!(matches!(err, Error::Damaged { .. }), "{err}");
    assert!(err.to_string().contains(&layer.digest), "{err}");
    assert!(files_below(out.path()).is_empty());
}

/// An archive whose blob `victim` is damaged by `damage` must fail naming
/// that entry and leave the cache without any of the archive's content.
async fn assert_rejected(
    archive: &Path,
    victim: &str,
    damage: impl Fn(&mut Vec<(String, Vec<u8>)>),
) {
    let mut files = entries(archive);
    damage(&mut files);
    let bad = archive.with_file_name("bad.tar");
    write_tar(&bad, &files);
    let site = tempfile::tempdir().unwrap();
    let (r, cache) = import_into(site.path(), &bad, &Placement::default()).await;
    let err = r.expect_err("damaged archive");
    assert!(
        err.to_string().contains(&blob_entry(victim)),
        "names the entry: {err}"
    );
    for (path, data) in &files {
        if path.starts_with("blobs/sha256/") && path.len() > 14 {
            let d: Digest = sha256_digest(data).parse().unwrap();
            assert_eq!(cache.blob_size(&d), None, "{path} not in the cache");
        }
    }
    assert!(files_in_tmp(site.path()).is_empty(), "staged files removed");
    assert!(files_below(&site.path().join("blobs")).is_empty());
    assert!(files_below(&site.path().join("tags")).is_empty());
    assert!(files_below(&site.path().join("manifests")).is_empty());
}

#[tokio::test]
async fn corrupt_or_truncated_archives_store_nothing() {
    let w = warm(false).await;
    let out = tempfile::tempdir().unwrap();
    let archive = out.path().join("bundle.tar");
    export_to(
        w.env.dir.path(),
        &w.env.hub.url(),
        &["multi", "team/app:v1"],
        "",
        &archive,
    )
    .await
    .expect("export");
    let layer = w.app.layers[0].digest.clone();
    let name = blob_entry(&layer);
    // A flipped byte in the last image's big layer: everything before it
    // was staged already, and must go.
    assert_rejected(&archive, &layer, |files| {
        let e = files.iter_mut().find(|(p, _)| *p == name).unwrap();
        e.1[1234] ^= 1;
    })
    .await;

    // Cut in the middle of that layer.
    let bytes = std::fs::read(&archive).unwrap();
    let mut offset = 0usize;
    let mut tar = tar::Archive::new(&bytes[..]);
    for e in tar.entries().unwrap() {
        let e = e.unwrap();
        if e.path().unwrap().to_string_lossy() == name {
            offset = e.raw_file_position() as usize + 1000;
        }
    }
    let cut = out.path().join("cut.tar");
    std::fs::write(&cut, &bytes[..offset]).unwrap();
    let site = tempfile::tempdir().unwrap();
    let (r, _cache) = import_into(site.path(), &cut, &Placement::default()).await;
    let err = r.expect_err("truncated archive");
    assert!(err.to_string().contains(&name), "{err}");
    assert!(files_below(&site.path().join("blobs")).is_empty());
    assert!(files_in_tmp(site.path()).is_empty());

    // A manifest's layer missing from the archive.
    let config = w.app.config.digest.clone();
    let mut files = entries(&archive);
    files.retain(|(p, _)| *p != blob_entry(&config));
    let holey = out.path().join("holey.tar");
    write_tar(&holey, &files);
    let site = tempfile::tempdir().unwrap();
    let (r, _cache) = import_into(site.path(), &holey, &Placement::default()).await;
    let err = r.expect_err("config missing");
    assert!(
        err.to_string().contains(&config) && err.to_string().contains("not in the archive"),
        "{err}"
    );
    assert!(files_below(&site.path().join("blobs")).is_empty());
}

/// What `skopeo copy docker://... oci-archive:app.tar:v1` writes: the
/// blobs first (a directory walk), then `index.json` naming the image by
/// the tag alone, then `oci-layout`.
fn skopeo_style(app: &Image, path: &Path) {
    let mut files: Vec<(String, Vec<u8>)> = app
        .blobs()
        .iter()
        .map(|b| (blob_entry(&b.digest), b.data.to_vec()))
        .collect();
    files.push((blob_entry(&app.digest), app.manifest.to_vec()));
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": app.media_type,
            "digest": app.digest,
            "size": app.manifest.len(),
            "annotations": { "org.opencontainers.image.ref.name": "v1" },
        }],
    });
    files.push(("index.json".into(), serde_json::to_vec(&index).unwrap()));
    files.push((
        "oci-layout".into(),
        br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec(),
    ));
    write_tar(path, &files);
}

#[tokio::test]
async fn a_tag_only_archive_needs_repo_and_then_serves() {
    let hub = FakeRegistry::start().await;
    let app = hub.add_simple_image("team/app", "v1", 7);
    let out = tempfile::tempdir().unwrap();
    let archive = out.path().join("app.tar");
    skopeo_style(&app, &archive);

    let site = tempfile::tempdir().unwrap();
    let (r, cache) = import_into(site.path(), &archive, &Placement::default()).await;
    let err = r.expect_err("tag only");
    assert!(err.to_string().contains("--repo"), "{err}");
    assert!(files_below(&site.path().join("blobs")).is_empty());
    drop(cache);

    let placement = Placement {
        upstream: Some("docker.io".into()),
        repo: Some("team/app".into()),
    };
    let (r, cache) = import_into(site.path(), &archive, &placement).await;
    let s = r.expect("import with --repo");
    assert_eq!(s.tags, [format!("docker.io/team/app:v1@{}", app.digest)]);
    assert_eq!(s.pins, ["docker.io/team/app:v1"]);
    drop(cache);
    let m = offline_mirror(site.path()).await;
    assert_serves(&m, "team/app", "v1", &app.manifest).await;
    for blob in app.blobs() {
        assert_eq!(
            m.get_ok(&blob_path("team/app", &blob.digest)).await,
            blob.data
        );
    }
    m.stop().await;

    // A registry that is not configured is refused with what to do.
    let placement = Placement {
        upstream: Some("registry.example.com".into()),
        repo: Some("team/app".into()),
    };
    let fresh = tempfile::tempdir().unwrap();
    let (r, _cache) = import_into(fresh.path(), &archive, &placement).await;
    let err = r.expect_err("unconfigured upstream").to_string();
    assert!(
        err.contains("registry.example.com") && err.contains("not configured"),
        "{err}"
    );
}

#[tokio::test]
async fn export_pinned_writes_every_pin_with_its_platforms() {
    use hoard::cli::{self, Site};
    let Warm {
        env,
        children,
        app,
        index: multi,
    } = warm(false).await;
    env.mirror.stop().await;
    let config = config(env.dir.path(), &env.hub.url());
    let local = || Site::Local(Box::new(config.clone()));
    let arm64 = vec!["linux/arm64".to_string()];
    cli::pin(local(), "multi".into(), arm64)
        .await
        .expect("pin multi");
    cli::pin(local(), "team/app:v1".into(), vec![])
        .await
        .expect("pin app");

    let out = tempfile::tempdir().unwrap();
    let archive = out.path().join("pinned.tar");
    let export = |images: Vec<String>, pinned: bool| {
        let (config, archive) = (config.clone(), archive.clone());
        tokio::task::spawn_blocking(move || cli::export(&config, &images, pinned, None, &archive))
    };
    let neither = export(vec![], false).await.unwrap();
    assert!(
        neither
            .as_ref()
            .is_err_and(|e| e.to_string().contains("--pinned")),
        "{neither:?}"
    );
    assert!(!archive.exists());
    // Named on the command line too: written once.
    let summary = export(vec!["team/app:v1".into()], true).await.unwrap();
    assert!(
        summary
            .as_ref()
            .is_ok_and(|s| s.contains("exported 2 images")),
        "{summary:?}"
    );

    let files = entries(&archive);
    let index: serde_json::Value = serde_json::from_slice(&files[1].1).unwrap();
    let mut named: Vec<(&str, &str)> = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let name = &m["annotations"]["org.opencontainers.image.ref.name"];
            (name.as_str().unwrap(), m["digest"].as_str().unwrap())
        })
        .collect();
    named.sort();
    assert_eq!(
        named,
        [
            ("docker.io/library/multi:latest", multi.0.as_str()),
            ("docker.io/team/app:v1", app.digest.as_str()),
        ]
    );
    let names: Vec<&str> = files.iter().map(|(p, _)| p.as_str()).collect();
    assert!(names.contains(&blob_entry(&children[1].digest).as_str()));
    assert!(
        !names.contains(&blob_entry(&children[0].digest).as_str()),
        "multi was pinned for linux/arm64 only"
    );
}

/// Issue 16 section 2: `hoard export --server` streams the archive from a
/// running mirror (whose cache directory the file export cannot open):
/// the same bytes every time, importable into a fresh cache that then
/// serves the images offline. A blob found damaged mid-stream breaks the
/// stream, and the receiving end leaves no file.
#[tokio::test]
async fn export_through_a_running_server_imports_and_serves() {
    let w = warm(false).await;
    let client = hoard::cli::client::Client::new(&w.env.mirror.url("")).unwrap();
    let out_dir = tempfile::tempdir().unwrap();
    let body = serde_json::json!({"images": ["multi", "docker.io/team/app:v1"]});
    let archive = out_dir.path().join("bundle.tar");
    let (summary, bytes) = client.export(body.clone(), &archive).await.expect("export");
    assert_eq!(
        (summary.images, summary.manifests, summary.blobs),
        (2, 4, 9)
    );
    assert_eq!(std::fs::metadata(&archive).unwrap().len(), bytes);
    let again = out_dir.path().join("again.tar");
    client.export(body, &again).await.expect("export again");
    assert!(
        std::fs::read(&archive).unwrap() == std::fs::read(&again).unwrap(),
        "the same content makes the same archive"
    );
    let names: Vec<String> = entries(&archive).into_iter().map(|(n, _)| n).collect();
    assert_eq!(names[..2], ["oci-layout", "index.json"]);

    let fresh = tempfile::tempdir().unwrap();
    let (r, cache) = import_into(fresh.path(), &archive, &Placement::default()).await;
    r.expect("import");
    drop(cache);
    let m = offline_mirror(fresh.path()).await;
    assert_serves_both(&m, &w).await;
    // A missing image is refused before any byte, naming it.
    let missing = out_dir.path().join("missing.tar");
    let err = client
        .export(serde_json::json!({"images": ["team/nothere:v1"]}), &missing)
        .await
        .expect_err("not cached");
    assert!(err.to_string().contains("409"), "{err}");

    // Damage a layer on the serving cache: the stream breaks off.
    let layer = &w.app.layers[0];
    let hex = layer.digest.trim_start_matches("sha256:");
    let path = w
        .env
        .dir
        .path()
        .join("blobs/sha256")
        .join(&hex[..2])
        .join(hex);
    let mut data = std::fs::read(&path).unwrap();
    data[100] ^= 0xff;
    std::fs::write(&path, data).unwrap();
    let broken = tempfile::tempdir().unwrap();
    let err = client
        .export(
            serde_json::json!({"images": ["docker.io/team/app:v1"]}),
            &broken.path().join("b.tar"),
        )
        .await
        .expect_err("damaged layer");
    assert!(err.to_string().contains("broke off"), "{err}");
    assert!(files_below(broken.path()).is_empty());
}

/// Issue 16 section 2: `hoard import --server` loads an archive into a
/// running mirror, which serves it at once and keeps serving meanwhile;
/// complete or not at all, as offline.
#[tokio::test]
async fn import_into_a_running_server_serves_at_once_and_a_cut_archive_changes_nothing() {
    let w = warm(false).await;
    let out = tempfile::tempdir().unwrap();
    let archive = out.path().join("bundle.tar");
    hoard::cli::client::Client::new(&w.env.mirror.url(""))
        .unwrap()
        .export(
            serde_json::json!({"images": ["multi", "docker.io/team/app:v1"]}),
            &archive,
        )
        .await
        .expect("export");

    // The disconnected site's mirror, running, its upstream unreachable.
    let site = tempfile::tempdir().unwrap();
    let m = offline_mirror(site.path()).await;
    let client = hoard::cli::client::Client::new(&m.url("")).unwrap();

    // Cut in the middle of its blobs: refused, and nothing reached the cache.
    let whole = std::fs::read(&archive).unwrap();
    let cut = out.path().join("cut.tar");
    std::fs::write(&cut, &whole[..whole.len() * 2 / 3]).unwrap();
    let blobs_before = files_below(&site.path().join("blobs"));
    let err = client
        .import(&cut, &Placement::default())
        .await
        .expect_err("a cut archive")
        .to_string();
    assert!(
        err.contains("400") && err.contains("nothing was imported"),
        "{err}"
    );
    assert_eq!(files_below(&site.path().join("blobs")), blobs_before);
    assert!(files_below(&site.path().join("tmp")).is_empty());
    assert_ne!(m.get(&manifest_path("team/app", "v1")).await.status(), 200);

    // The whole archive: served at once, without a restart, and pinned.
    let s = client
        .import(&archive, &Placement::default())
        .await
        .expect("import");
    assert_eq!(s.images, 2, "{s:?}");
    assert!(s.new_blobs >= 9 && s.present_blobs == 0, "{s:?}");
    assert_serves_both(&m, &w).await;
    let pins: serde_json::Value = serde_json::from_slice(&m.get_ok("/_hoard/pins").await).unwrap();
    assert_eq!(pins["pins"].as_array().map(Vec::len), Some(2), "{pins}");
    // Again: everything is there already.
    let again = client
        .import(&archive, &Placement::default())
        .await
        .expect("import again");
    assert_eq!((again.new_blobs, again.present_blobs), (0, s.new_blobs));
}
