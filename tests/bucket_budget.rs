//! The bucket's budget for mirrored content (`[storage] bucket_max_size`),
//! kept by one replica at a time under the upkeep lease, against a real S3
//! server (SeaweedFS `weed mini`, see `tests/s3.rs`).

mod common;

use std::time::{Duration, Instant};

use common::*;
use hoard::storage::s3::S3Records;
use hoard::storage::{RecordKey, Records};

const MIB: usize = 1024 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_replica_keeps_mirrored_content_in_the_bucket_within_its_budget() {
    let Some(weed) = Weed::start().await else {
        return;
    };
    let hub = FakeRegistry::start().await;
    let mirrored: Vec<_> = (0..4)
        .map(|i| hub.add_blob("library/app", pseudo_random(100 + i, MIB)))
        .collect();
    // 2.5 MiB for mirrored content: two of the four 1 MiB blobs fit.
    let storage = weed.storage_toml("budget")
        + "bucket_max_size = \"2.5MiB\"\nbucket_check_interval = \"1s\"\nbucket_grace = \"0s\"\n";
    let (disk_a, disk_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = TestMirror::start(
        &(Cfg::new(disk_a.path())
            .upstream("docker.io", &hub.url())
            .toml()
            + &storage),
    )
    .await;
    let b = TestMirror::start(
        &(Cfg::new(disk_b.path())
            .upstream("docker.io", &hub.url())
            .toml()
            + &storage),
    )
    .await;

    // Pushed content is held: outside the budget, never evicted.
    let pushed = pseudo_random(200, MIB);
    let pushed_digest = sha256_digest(&pushed);
    push_blob_as(&a, "team/app", &pushed, &pushed_digest).await;
    // The bucket dates objects to the second: one second apart, so
    // "oldest first" has one answer.
    for (i, blob) in mirrored.iter().enumerate() {
        let via = if i % 2 == 0 { &a } else { &b };
        let got = via.get_ok(&blob_path("library/app", &blob.digest)).await;
        assert!(got == blob.data, "blob {i} served intact");
        via.settle().await;
        tokio::time::sleep(Duration::from_millis(1100)).await;
    }

    let mut want = vec![
        mirrored[2].digest.clone(),
        mirrored[3].digest.clone(),
        pushed_digest.clone(),
    ];
    want.sort();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let now = blob_digests(&weed.bucket("budget").await).await;
        if now == want {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the two newest mirrored blobs and the pushed one should remain; the bucket holds {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    // One replica holds the lease.
    let records = S3Records::new(weed.bucket("budget").await);
    let lease = records
        .get(&RecordKey::lease("upkeep").unwrap())
        .await
        .unwrap()
        .expect("a lease record");
    let text = String::from_utf8_lossy(&lease.bytes).to_string();
    assert!(text.contains("\"holder\""), "{text}");

    // An evicted blob is still served from the disk tier that has it,
    // and fetched again (once) by a replica that has it nowhere.
    let got = a
        .get_ok(&blob_path("library/app", &mirrored[0].digest))
        .await;
    assert!(got == mirrored[0].data, "served from a's disk tier");
    let gets = hub.blob_gets();
    let disk_c = tempfile::tempdir().unwrap();
    let c = TestMirror::start(
        &(Cfg::new(disk_c.path())
            .upstream("docker.io", &hub.url())
            .toml()
            + &weed.storage_toml("budget")),
    )
    .await;
    let got = c
        .get_ok(&blob_path("library/app", &mirrored[1].digest))
        .await;
    assert!(got == mirrored[1].data, "refetched intact");
    assert_eq!(hub.blob_gets(), gets + 1, "one upstream GET for it");
    let got = c.get_ok(&blob_path("team/app", &pushed_digest)).await;
    assert!(got == pushed, "the pushed blob, from the bucket");
    assert_eq!(hub.blob_gets(), gets + 1, "the pushed blob is not upstream");
    for m in [a, b, c] {
        m.stop().await;
    }
}
