//! Tests of the budget index.

use super::*;

fn d(n: u8) -> Digest {
    Digest::of(&[n])
}

#[test]
fn evicts_least_recently_used_to_stay_under_budget() {
    let (idx, mut rx) = BlobIndex::new(10 * 1024);
    for n in 0..4 {
        idx.insert(d(n), 3 * 1024, now_secs());
    }
    // 12 KiB into a 10 KiB budget: the first inserted is evicted.
    let ev = rx.try_recv().expect("one eviction");
    assert_eq!(ev.digest, d(0));
    assert!(idx.bytes() <= 10 * 1024, "{}", idx.bytes());
    assert!(!idx.contains(&d(0)));
    // Using d(1) makes d(2) the next victim.
    assert!(idx.get(&d(1)).is_some());
    idx.insert(d(9), 3 * 1024, now_secs());
    assert_eq!(rx.try_recv().expect("second eviction").digest, d(2));
}

#[test]
fn fills_in_flight_are_counted_against_the_budget() {
    let (idx, mut rx) = BlobIndex::new(10 * 1024);
    for n in 0..3 {
        idx.insert(d(n), 3 * 1024, now_secs());
    }
    assert!(rx.try_recv().is_err(), "9 KiB fit");
    // A 4 KiB fill starts: room is made now, not at its commit.
    assert!(idx.reserve(4 * 1024));
    assert_eq!(rx.try_recv().expect("one eviction").digest, d(0));
    assert!(rx.try_recv().is_err());
    idx.unreserve(4 * 1024);
    idx.insert(d(3), 4 * 1024, now_secs());
    assert!(rx.try_recv().is_err(), "its commit fits in the room made");
    // A fill larger than the budget does not empty it.
    assert!(!idx.reserve(100 * 1024));
    assert!(rx.try_recv().is_err());
}

#[test]
fn pinned_blobs_are_never_evicted() {
    let (idx, mut rx) = BlobIndex::new(8 * 1024);
    idx.insert(d(0), 4 * 1024, now_secs());
    assert!(idx.hold(&d(0), Holder::Pin));
    assert!(!idx.hold(&d(9), Holder::Pin), "not indexed, cannot be held");
    idx.insert_held(d(7), 2 * 1024, Holder::Local);
    assert!(idx.hold(&d(7), Holder::Pin));
    for n in 1..6 {
        idx.insert(d(n), 4 * 1024, now_secs());
    }
    while let Ok(ev) = rx.try_recv() {
        assert!(ev.digest != d(0) && ev.digest != d(7));
    }
    assert_eq!(idx.get(&d(0)), Some(4 * 1024));
    assert_eq!(idx.held_by(Holder::Pin), (6 * 1024, 2));
    assert_eq!(idx.held_by(Holder::Local), (2 * 1024, 1));
    assert!(!idx.release(&d(7), Holder::Local), "still pinned");
    assert!(idx.is_held_by(&d(7), Holder::Pin));
    assert!(idx.release(&d(7), Holder::Pin));
    assert!(!idx.is_held(&d(7)));
    assert!(idx.release(&d(0), Holder::Pin));
    assert!(idx.contains(&d(0)));
}

#[test]
fn the_budget_waits_for_the_load_and_commits_stay_newest() {
    let (idx, mut rx) = BlobIndex::new(8 * 1024);
    idx.start_loading();
    // Committed while the store is walked: over budget, nothing evicted yet.
    idx.insert(d(9), 4 * 1024, now_secs());
    idx.found(d(8), 4 * 1024);
    idx.insert(d(7), 4 * 1024, now_secs());
    assert!(rx.try_recv().is_err(), "no eviction while loading");
    let blobs = (0..3).map(|n| (d(n), 4 * 1024, u64::from(n))).collect();
    idx.load(blobs, &HashMap::new());
    assert!(!idx.is_loading());
    let evicted: Vec<Digest> =
        std::iter::from_fn(|| rx.try_recv().ok().map(|e| e.digest)).collect();
    // The walk's blobs are older than anything used while it ran.
    assert_eq!(evicted, vec![d(0), d(1), d(2), d(9)]);
    assert!(idx.contains(&d(8)) && idx.contains(&d(7)));
    assert_eq!(idx.bytes(), 8 * 1024);
}

#[test]
fn held_blobs_survive_the_budget_at_load() {
    let (idx, _rx) = BlobIndex::new(4 * 1024);
    let held = HashMap::from([(d(0), vec![Holder::Local])]);
    let blobs = (0..4).map(|n| (d(n), 4 * 1024, u64::from(n))).collect();
    idx.load(blobs, &held);
    assert!(idx.is_held_by(&d(0), Holder::Local));
    assert!(idx.contains(&d(3)));
    assert!(!idx.contains(&d(1)), "oldest unheld blob evicted");
    assert_eq!(idx.bytes(), 8 * 1024);
}

#[test]
fn oldest_picks_by_last_use() {
    let (idx, _rx) = BlobIndex::new(1 << 30);
    idx.insert(d(0), 100, 30);
    idx.insert(d(1), 100, 10);
    idx.insert(d(2), 100, 20);
    let v: Vec<_> = idx.oldest(150).into_iter().map(|(d, _)| d).collect();
    assert_eq!(v, vec![d(1), d(2)]);
    assert_eq!(idx.remove(&d(1)), Some(100));
    assert_eq!(idx.bytes(), 200);
}

#[test]
fn sha512_blobs_leave_the_budget_under_their_own_name() {
    let (idx, mut rx) = BlobIndex::new(8 * 1024);
    let long = crate::oci::Algorithm::Sha512.digest(b"pushed");
    idx.insert_held(long.clone(), 4 * 1024, Holder::Local);
    assert_eq!(idx.get(&long), Some(4 * 1024));
    assert!(idx.release(&long, Holder::Local), "back under the budget");
    assert!(idx.contains(&long));
    assert_eq!(idx.get(&long), Some(4 * 1024));
    assert_eq!(idx.oldest(1), vec![(long.clone(), 4 * 1024)]);
    for n in 0..2 {
        idx.insert(d(n), 4 * 1024, now_secs());
    }
    assert_eq!(rx.try_recv().expect("evicted").digest, long);
    assert!(!idx.contains(&long));
    assert!(idx.long().is_empty(), "its name is forgotten");
}
