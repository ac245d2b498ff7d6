//! The budget counts fills in flight (issue 14, defect 7): a soak with
//! churn saw the cache at 167 MiB against `max_size = 150MiB`, because the
//! temp files of fills in flight took disk space the budget did not know
//! of. A fill that announced its size now makes room when it starts.

mod common;

use std::sync::Arc;

use common::*;

const MIB: usize = 1024 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fills_in_flight_make_room_in_the_budget_before_they_commit() {
    let env = Env::start_with(|c| c.top("max_size", "\"4MiB\"")).await;
    let old: Vec<Blob> = (0..4)
        .map(|i| {
            env.hub
                .add_blob("library/alpine", pseudo_random(300 + i, MIB - 4096))
        })
        .collect();
    let new: Vec<Blob> = (0..2)
        .map(|i| {
            env.hub
                .add_blob("library/alpine", pseudo_random(400 + i, MIB - 4096))
        })
        .collect();
    for b in &old {
        assert!(env.mirror.get_ok(&blob_path("alpine", &b.digest)).await == b.data);
    }
    env.mirror
        .wait_metrics("4 blobs cached", |m| {
            m.sum("hoard_cache_size_bytes", &[]) >= (4 * (MIB - 4096)) as f64
        })
        .await;

    // Two fills start and stall after their first chunk.
    env.hub.close_gate();
    let mirror = Arc::new(env.mirror);
    let pulls: Vec<_> = new
        .iter()
        .map(|b| {
            let (mirror, path, data) = (
                mirror.clone(),
                blob_path("alpine", &b.digest),
                b.data.clone(),
            );
            tokio::spawn(async move { assert!(mirror.get_ok(&path).await == data) })
        })
        .collect();
    env.hub
        .wait_until("both fills stalled", |h| h.paused() >= 2)
        .await;
    // Cached bytes plus the two fills' announced sizes fit the 4 MiB: two
    // old blobs made room already.
    mirror
        .wait_metrics("room made for the fills in flight", |m| {
            m.sum("hoard_cache_size_bytes", &[]) <= (2 * MIB) as f64
        })
        .await;
    env.hub.open_gate();
    for p in pulls {
        p.await.unwrap();
    }
    let m = mirror
        .wait_metrics("both committed", |m| {
            m.sum("hoard_cache_size_bytes", &[]) >= (4 * (MIB - 4096)) as f64
        })
        .await;
    assert!(
        m.sum("hoard_cache_size_bytes", &[]) <= (4 * MIB) as f64,
        "{}",
        m.0
    );
}
