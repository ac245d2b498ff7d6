//! Durability of the real binary's cache: a SIGKILL in the middle of a fill,
//! `hoard verify` beside a serving hoard, strays at start, a foreign
//! directory, and a ranged request on a blob that is still being filled.
//!
//! These start `hoard serve` as a child process (see `common/child.rs`) against
//! the in-process fake upstream, whose gate holds a blob body after its
//! first chunk so a test can act while a fill is provably incomplete.

mod common;

use std::os::unix::fs::FileExt;

use common::*;

/// Several of the fake's 64 KiB chunks, so the gate can hold it mid-stream.
const BIG: usize = 4 * 1024 * 1024 + 123;

/// The repository upstream; clients say `alpine`.
const REPO: &str = "library/alpine";

fn path_of(blob: &Blob) -> String {
    blob_path("alpine", &blob.digest)
}

fn hex_of(digest: &str) -> &str {
    digest.strip_prefix("sha256:").expect("sha256 digest")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_fill_leaves_nothing_partial_and_the_blob_is_fetched_again() {
    let site = Site::new(&[]).await;
    let blob = site.hub.add_blob(REPO, pseudo_random(1, BIG));
    let path = path_of(&blob);
    let tmp = site.cache.join("tmp");
    site.hub.close_gate();

    let hoard = site.start().await;
    let mut resp = hoard.get(&path).await;
    assert_eq!(resp.status(), 200);
    let head = read_at_least(&mut resp, 1).await;
    assert!(blob.data.starts_with(&head), "first bytes differ");
    site.hub
        .wait_until("the fill is paused at the gate", |h| h.paused() >= 1)
        .await;
    // The partial fill is on disk: this is what a crash must not turn into content.
    wait_for(
        "the partial fill in tmp/",
        || std::future::ready(files_under(&tmp).iter().any(|p| file_len(p) > 0)),
        || listing(&site.cache),
    )
    .await;
    assert!(
        !site.blob_file(&blob.digest).exists(),
        "committed before verification"
    );

    hoard.kill9().await;
    // The client sees a broken body, never a complete-looking short one.
    match resp.bytes().await {
        Err(_) => {}
        Ok(rest) => panic!(
            "the body ended cleanly after {} of {BIG} bytes when hoard died",
            head.len() + rest.len()
        ),
    }
    assert!(
        !files_under(&tmp).is_empty(),
        "SIGKILL cannot clean up: the partial temp file should still be there"
    );
    site.hub.open_gate();

    let hoard = site.start().await;
    assert!(
        files_under(&tmp).is_empty(),
        "temp files survived the restart:\n{}",
        listing(&tmp)
    );
    assert!(
        find_named(&site.cache.join("blobs"), hex_of(&blob.digest)).is_empty(),
        "a partial blob entered blobs/:\n{}",
        listing(&site.cache)
    );

    let before = transfers(&site.hub);
    let body = hoard.get_cached(&path).await;
    assert!(
        body == blob.data,
        "refetched body differs ({} bytes)",
        body.len()
    );
    assert_eq!(
        transfers(&site.hub),
        before + 1,
        "the blob must be fetched again"
    );
    assert_eq!(file_digest(&site.blob_file(&blob.digest)), blob.digest);
    let body = hoard.get_ok(&path).await;
    assert!(body == blob.data, "cached body differs");
    assert_eq!(
        transfers(&site.hub),
        before + 1,
        "the second pull must be a hit"
    );
    hoard.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_beside_a_serving_hoard_quarantines_damage_which_is_then_fetched_again() {
    let site = Site::new(&[]).await;
    let damaged = site.hub.add_blob(REPO, pseudo_random(2, 300_000));
    let intact = site.hub.add_blob(REPO, pseudo_random(3, 200_000));
    let hoard = site.start().await;
    for b in [&damaged, &intact] {
        assert!(hoard.get_cached(&path_of(b)).await == b.data, "first pull");
    }
    let file = site.blob_file(&damaged.digest);
    assert_eq!(
        file_digest(&file),
        damaged.digest,
        "cached before the damage"
    );
    flip_byte(&file, 123_456);

    let run = hoard_verify(&["--cache-dir".as_ref(), site.cache.as_os_str()]).await;
    assert_eq!(
        run.status.code(),
        Some(1),
        "verify must fail on damage: {run:#?}"
    );
    assert!(
        run.stdout.contains(&damaged.digest),
        "the summary must name the damaged digest: {run:#?}"
    );
    assert!(
        !run.stdout.contains(&intact.digest),
        "the intact blob is not damage: {run:#?}"
    );
    assert!(
        !file.exists(),
        "the damaged file is still served from blobs/"
    );
    let moved = find_named(&site.cache.join("quarantine"), hex_of(&damaged.digest));
    assert_eq!(moved.len(), 1, "quarantine:\n{}", listing(&site.cache));
    assert_eq!(file_len(&moved[0]), 300_000, "quarantined, not truncated");
    assert_ne!(
        file_digest(&moved[0]),
        damaged.digest,
        "the damage is kept for inspection"
    );
    assert_eq!(file_digest(&site.blob_file(&intact.digest)), intact.digest);

    // The running server finds the file gone and fetches it again.
    let before = transfers(&site.hub);
    let body = hoard.get_cached(&path_of(&damaged)).await;
    assert!(body == damaged.data, "served damaged bytes after verify");
    assert_eq!(
        transfers(&site.hub),
        before + 1,
        "the damaged blob must come from upstream"
    );
    assert_eq!(file_digest(&file), damaged.digest, "cached again");
    assert!(hoard.get_ok(&path_of(&intact)).await == intact.data);
    assert_eq!(
        transfers(&site.hub),
        before + 1,
        "the intact blob is still a hit"
    );

    let again = hoard_verify(&["--config".as_ref(), site.config.as_os_str()]).await;
    assert_eq!(again.status.code(), Some(0), "second verify: {again:#?}");
    assert!(again.stdout.contains("0 damaged"), "{again:#?}");
    hoard.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ranged_cold_request_is_answered_while_the_fill_is_held_and_fetched_once() {
    const FROM: usize = 40_000; // inside the first chunk, which passes the gate
    let site = Site::new(&[]).await;
    let blob = site.hub.add_blob(REPO, pseudo_random(4, BIG));
    let path = path_of(&blob);
    site.hub.close_gate();
    let hoard = site.start().await;

    let mut resp = hoard.get_range(&path, &format!("bytes={FROM}-")).await;
    assert_eq!(resp.status(), 206);
    assert_eq!(
        header(&resp, "Content-Range"),
        format!("bytes {FROM}-{}/{BIG}", BIG - 1)
    );
    assert_eq!(header(&resp, "Content-Length"), (BIG - FROM).to_string());
    let first = read_at_least(&mut resp, 1).await;
    site.hub
        .wait_until("the fill is paused at the gate", |h| h.paused() >= 1)
        .await;
    // The gate is closed: whatever arrived came from an unfinished fill.
    assert_eq!(hoard.metric("hoard_fills_in_flight").await, 1.0);
    assert!(
        !site.blob_file(&blob.digest).exists(),
        "fill completed behind a closed gate?"
    );
    assert!(
        first[..] == blob.data[FROM..FROM + first.len()],
        "first {} bytes differ",
        first.len()
    );

    site.hub.open_gate();
    let rest = resp.bytes().await.expect("the rest of the range");
    let mut all = first;
    all.extend_from_slice(&rest);
    assert!(
        all[..] == blob.data[FROM..],
        "ranged body differs ({} bytes)",
        all.len()
    );
    assert_eq!(
        blob_transfers(&site.hub, Some(&blob.digest)),
        vec![None],
        "one whole-blob GET upstream"
    );
    // The fill went on to cache the whole blob.
    hoard.settle().await;
    assert_eq!(file_digest(&site.blob_file(&blob.digest)), blob.digest);
    assert!(hoard.get_ok(&path).await == blob.data);
    assert_eq!(transfers(&site.hub), 1, "the full GET afterwards is a hit");
    hoard.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strays_are_quarantined_at_start_and_the_cache_serves_normally() {
    let site = Site::new(&[]).await;
    let blob = site.hub.add_blob(REPO, pseudo_random(5, 100_000));
    let hoard = site.start().await;
    assert!(hoard.get_ok(&path_of(&blob)).await == blob.data);
    hoard.stop().await;

    let shards = site.cache.join("blobs").join("sha256");
    let misplaced_data = b"a blob in the wrong shard".to_vec();
    let misplaced_digest = sha256_digest(&misplaced_data);
    let hex = hex_of(&misplaced_digest);
    let wrong_shard = if hex.starts_with("00") { "01" } else { "00" };
    let strays: Vec<(String, Vec<u8>)> = vec![
        ("blobs/sha256/ab/notes.txt".into(), b"not a blob".to_vec()),
        (format!("blobs/sha256/{wrong_shard}/{hex}"), misplaced_data),
        ("junk/inner/readme.txt".into(), b"someone else's".to_vec()),
    ];
    for (rel, data) in &strays {
        let p = site.cache.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, data).unwrap();
    }

    let hoard = site.start().await;
    for (rel, data) in &strays {
        assert!(!site.cache.join(rel).exists(), "{rel} was left in place");
        let moved: Vec<_> = files_under(&site.cache.join("quarantine"))
            .into_iter()
            .filter(|p| p.ends_with(rel))
            .collect();
        assert_eq!(
            moved.len(),
            1,
            "{rel} must be in quarantine/<session>/{rel}:\n{}",
            listing(&site.cache)
        );
        assert_eq!(&std::fs::read(&moved[0]).unwrap(), data, "{rel} content");
    }
    assert!(!site.cache.join("junk").exists());
    assert!(!shards.join("ab").join("notes.txt").exists());

    let before = transfers(&site.hub);
    assert!(hoard.get_ok(&path_of(&blob)).await == blob.data);
    assert_eq!(
        transfers(&site.hub),
        before,
        "the real blob is still cached"
    );
    assert_eq!(file_digest(&site.blob_file(&blob.digest)), blob.digest);

    // The quarantine is part of the layout: a further start leaves it be.
    let quarantined = files_under(&site.cache.join("quarantine"));
    hoard.stop().await;
    let hoard = site.start().await;
    assert_eq!(files_under(&site.cache.join("quarantine")), quarantined);
    hoard.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_non_empty_directory_is_refused_and_left_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let foreign = dir.path().join("somebodys-home");
    std::fs::create_dir_all(foreign.join("photos")).unwrap();
    std::fs::write(foreign.join("notes.txt"), b"keep me").unwrap();
    std::fs::write(foreign.join("photos").join("cat.jpg"), b"meow").unwrap();
    let site = Site::with_cache_dir(dir, foreign.clone(), &[]).await;
    let before = entries_under(&foreign);

    let run = Launch::new(&site.config).run_to_exit().await;
    let (status, output) = (run.status, run.output());
    assert!(
        !status.success(),
        "hoard must refuse to start: {status}\n{output}"
    );
    assert!(
        output.contains(&foreign.display().to_string()),
        "the message must name the directory:\n{output}"
    );
    assert_eq!(entries_under(&foreign), before, "the directory was changed");
}

fn file_len(p: &std::path::Path) -> u64 {
    std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

/// Every path under `dir` (files and directories), relative and sorted.
fn entries_under(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            out.push(e.path().strip_prefix(dir).unwrap().display().to_string());
            if e.file_type().unwrap().is_dir() {
                todo.push(e.path());
            }
        }
    }
    out.sort();
    out
}

/// Inverts one byte of a file in place, as a bad disk would.
fn flip_byte(path: &std::path::Path, at: u64) {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, at).unwrap();
    b[0] ^= 0xff;
    f.write_all_at(&b, at).unwrap();
    f.sync_all().unwrap();
}
