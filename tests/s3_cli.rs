//! The air-gap commands on a bucket (`[storage] kind = "s3"`): they open
//! the disk tier in front of the bucket, as the server does, so a node
//! whose disk does not hold an image still exports it, and an import lands
//! in the bucket for every replica. SeaweedFS as in `tests/s3.rs`.

mod common;

use std::collections::BTreeSet;

use common::*;

/// The `blobs/sha256/<hex>` entries of an OCI-layout tar, as digests.
fn blobs_in_archive(path: &std::path::Path) -> BTreeSet<String> {
    let file = std::fs::File::open(path).unwrap();
    let mut archive = tar::Archive::new(file);
    archive
        .entries()
        .unwrap()
        .filter_map(|e| {
            let e = e.unwrap();
            let p = e.path().unwrap().to_string_lossy().to_string();
            p.strip_prefix("blobs/sha256/")
                .filter(|hex| !hex.is_empty())
                .map(|hex| format!("sha256:{hex}"))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_from_an_empty_disk_tier_reads_the_bucket_and_import_lands_in_it() {
    let Some(weed) = Weed::start().await else {
        return;
    };
    let hub = FakeRegistry::start().await;
    let image = hub.add_image(
        "library/app",
        "v1",
        11,
        &[pseudo_random(21, 700_000), pseudo_random(22, 5000)],
    );
    let mut want: BTreeSet<String> = image.blobs().into_iter().map(|b| b.digest).collect();
    want.insert(image.digest.clone());

    // One replica pulls the image: it is in the bucket.
    let node1 = tempfile::tempdir().unwrap();
    let cfg = Cfg::new(node1.path()).upstream("docker.io", &hub.url());
    let mirror = TestMirror::start(&(cfg.toml() + &weed.storage_toml("cli"))).await;
    mirror.get_ok("/v2/library/app/manifests/v1").await;
    for blob in image.blobs() {
        mirror.get_ok(&blob_path("library/app", &blob.digest)).await;
    }
    mirror.settle().await;
    mirror.stop().await;

    // Another node, its disk tier empty and its upstream unreachable,
    // exports it: every byte comes from the bucket.
    let node2 = tempfile::tempdir().unwrap();
    let dead = Cfg::new(&node2.path().join("cache")).upstream("docker.io", "http://127.0.0.1:9");
    let config = write_config(node2.path(), &(dead.toml() + &weed.storage_toml("cli")));
    let archive = node2.path().join("app.tar");
    let run = Launch::args(["export", "--config"])
        .extra_args(&[
            config.to_str().unwrap(),
            "-o",
            archive.to_str().unwrap(),
            "library/app:v1",
        ])
        .run_to_exit()
        .await;
    assert!(run.status.success(), "export: {}", run.output());
    assert_eq!(blobs_in_archive(&archive), want, "the whole image");

    // Imported on a third node under another prefix: into that bucket.
    let node3 = tempfile::tempdir().unwrap();
    let dead = Cfg::new(&node3.path().join("cache")).upstream("docker.io", "http://127.0.0.1:9");
    let config = write_config(
        node3.path(),
        &(dead.toml() + &weed.storage_toml("cli-import")),
    );
    let run = Launch::args(["import", "--config"])
        .extra_args(&[config.to_str().unwrap(), archive.to_str().unwrap()])
        .run_to_exit()
        .await;
    assert!(run.status.success(), "import: {}", run.output());
    let landed: BTreeSet<String> = blob_digests(&weed.bucket("cli-import").await)
        .await
        .into_iter()
        .collect();
    assert_eq!(landed, want, "every blob of the archive is in the bucket");

    // A server on a fourth, empty node serves the imported image offline.
    let node4 = tempfile::tempdir().unwrap();
    let dead = Cfg::new(node4.path()).upstream("docker.io", "http://127.0.0.1:9");
    let mirror = TestMirror::start(&(dead.toml() + &weed.storage_toml("cli-import"))).await;
    assert_eq!(
        mirror.get_ok("/v2/library/app/manifests/v1").await,
        image.manifest
    );
    for blob in image.blobs() {
        let got = mirror.get_ok(&blob_path("library/app", &blob.digest)).await;
        assert!(got == blob.data, "{} from the bucket", blob.digest);
    }
    mirror.stop().await;
}
