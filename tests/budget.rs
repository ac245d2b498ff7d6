//! The disk budget (`max_size`) of the real binary: the bytes under
//! `blobs/` stay within it while more than it is pulled, least recently used
//! blobs go first, and a restart (with the same or a smaller budget) keeps
//! the cache within it.

mod common;

use common::*;

const MIB: usize = 1024 * 1024;
const REPO: &str = "library/alpine";

fn path_of(blob: &Blob) -> String {
    blob_path("alpine", &blob.digest)
}

/// Waits until the files under `blobs/` add up to at most `budget` (the
/// deleter runs in the background, shortly after an eviction).
async fn within_budget(site: &Site, budget: u64, when: &str) {
    let blobs = site.cache.join("blobs");
    wait_for(
        &format!("blobs/ within {budget} bytes {when}"),
        || std::future::ready(bytes_under(&blobs) <= budget),
        || format!("{} bytes:\n{}", bytes_under(&blobs), listing(&blobs)),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cache_stays_within_max_size_evicting_least_recently_used_blobs() {
    const BUDGET: u64 = 4 * MIB as u64;
    let site = Site::new(&[("max_size", "\"4MiB\"")]).await;
    let blobs: Vec<Blob> = (0..10)
        .map(|i| site.hub.add_blob(REPO, pseudo_random(100 + i, MIB)))
        .collect();
    let hoard = site.start().await;
    assert_eq!(hoard.metric("hoard_cache_limit_bytes").await, BUDGET as f64);

    for (i, b) in blobs.iter().enumerate() {
        let body = hoard.get_cached(&path_of(b)).await;
        assert!(body == b.data, "blob {i}: body differs");
        assert!(
            site.blob_file(&b.digest).is_file(),
            "blob {i} was not cached"
        );
        within_budget(&site, BUDGET, &format!("after pull {i}")).await;
    }
    assert_eq!(transfers(&site.hub), 10);
    // 10 MiB pulled, at most 4 MiB kept: at least 6 MiB went.
    let m = hoard
        .wait_metrics("evictions counted", |m| {
            m.sum("hoard_evictions_total", &[]) >= 6.0
                && m.sum("hoard_evicted_bytes_total", &[]) >= (6 * MIB) as f64
        })
        .await;
    assert!(
        m.sum("hoard_cache_size_bytes", &[]) <= BUDGET as f64,
        "{}",
        m.0
    );

    // Least recently *used*, not first in: touch blob 6, then bring blob 0
    // back; blob 7 is now the oldest use and must be the one to go.
    let before = transfers(&site.hub);
    for i in [9, 6] {
        assert!(hoard.get_ok(&path_of(&blobs[i])).await == blobs[i].data);
    }
    assert_eq!(transfers(&site.hub), before, "blobs 6 and 9 must be hits");
    // get_cached: blob 7 now goes when blob 0's fill starts (fills in
    // flight count against the budget), so its deletion no longer says
    // that blob 0 was committed.
    assert!(hoard.get_cached(&path_of(&blobs[0])).await == blobs[0].data);
    assert_eq!(transfers(&site.hub), before + 1, "blob 0 was evicted");
    within_budget(&site, BUDGET, "after bringing blob 0 back").await;
    let file = |i: usize| site.blob_file(&blobs[i].digest);
    wait_for(
        "blob 7 (least recently used) deleted",
        || std::future::ready(!file(7).exists()),
        || listing(&site.cache.join("blobs")),
    )
    .await;
    for i in [6, 9, 0] {
        assert!(
            file(i).is_file(),
            "blob {i} was used recently and must stay"
        );
    }

    // A restart rebuilds the index from disk and stays within the budget.
    hoard.stop().await;
    let hoard = site.start().await;
    within_budget(&site, BUDGET, "after a restart").await;
    let on_disk = bytes_under(&site.cache.join("blobs"));
    assert_eq!(
        hoard.metric("hoard_cache_size_bytes").await,
        on_disk as f64,
        "the index must account for what is on disk"
    );
    let before = transfers(&site.hub);
    assert!(hoard.get_ok(&path_of(&blobs[0])).await == blobs[0].data);
    assert_eq!(transfers(&site.hub), before, "blob 0 survives the restart");
    for (i, b) in blobs.iter().enumerate().take(4) {
        assert!(
            hoard.get_ok(&path_of(b)).await == b.data,
            "blob {i} after restart"
        );
        within_budget(&site, BUDGET, &format!("after restart pull {i}")).await;
    }

    // A smaller budget at start: the cache shrinks to it.
    hoard.stop().await;
    const SMALLER: u64 = 2 * MIB as u64;
    site.write_config(&[("max_size", "\"2MiB\"")]);
    let hoard = site.start().await;
    within_budget(&site, SMALLER, "after restarting with max_size = 2MiB").await;
    assert!(
        bytes_under(&site.cache.join("blobs")) > 0,
        "shrinking must not empty the cache"
    );
    let m = hoard
        .wait_metrics("evictions at start counted", |m| {
            m.sum("hoard_evictions_total", &[]) >= 2.0
        })
        .await;
    assert_eq!(m.sum("hoard_cache_limit_bytes", &[]), SMALLER as f64);
    assert!(
        m.sum("hoard_cache_size_bytes", &[]) <= SMALLER as f64,
        "{}",
        m.0
    );
    for (i, b) in blobs.iter().enumerate().skip(7) {
        assert!(
            hoard.get_ok(&path_of(b)).await == b.data,
            "blob {i} after shrink"
        );
        within_budget(&site, SMALLER, &format!("after shrink pull {i}")).await;
    }
    hoard.stop().await;
}
