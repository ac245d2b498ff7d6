//! How long `Cache::open` takes to rebuild the index from disk. hoard does
//! this at every start before it serves: it walks
//! `blobs/sha256/<2 hex>/<hex>`, loads the tag and manifest records and
//! fills the LRU, so this is the start-up time of a large cache.
//!
//! Builds one cache directory in a temp dir with a few tag and manifest
//! records written through the cache itself, fills it with 10,000 small
//! blob files in the real layout, times `Cache::open` several times, grows
//! it to 100,000 blobs and times again. The files were just written, so
//! these are warm page-cache figures (a cold start after a reboot reads
//! the directory from disk and is slower).
//!
//! Run: `cargo bench --bench index_rebuild`

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use hoard::cache::{Cache, TagKey, TagRecord};
use hoard::metrics::Metrics;
use hoard::oci::Digest;

/// Blob counts measured, in increasing order (the directory grows).
const SIZES: [usize; 2] = [10_000, 100_000];
/// Timed opens per size (after one untimed warm-up).
const RUNS: usize = 7;
/// Tags and manifests recorded (a few images' worth of metadata).
const RECORDS: usize = 3;
/// A budget no run reaches: opening must not evict, which would delete
/// files and change the directory between runs.
const MAX_SIZE: u64 = 1 << 40;

fn main() {
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path().join("cache");
    let mut bytes = runtime.block_on(write_records(&root));
    let mut written = 0;
    for size in SIZES {
        bytes += write_blobs(&root, written, size);
        written = size;
        let blobs = size + RECORDS;
        let mut times = Vec::with_capacity(RUNS);
        for run in 0..=RUNS {
            let metrics = Arc::new(Metrics::new());
            let started = Instant::now();
            let cache = runtime
                .block_on(Cache::open(&root, MAX_SIZE, metrics))
                .expect("open the cache");
            let took = started.elapsed();
            // A rebuild that skipped files would look fast: check it saw them all.
            assert_eq!(
                cache.size(),
                bytes,
                "indexed bytes after opening {blobs} blobs"
            );
            drop(cache);
            if run > 0 {
                times.push(took);
            }
        }
        times.sort_unstable();
        println!(
            "index_rebuild/{size:>6} blobs (+{RECORDS} tags, {RECORDS} manifests): median {}, min {} ({RUNS} runs)",
            ms(times[times.len() / 2]),
            ms(times[0]),
        );
    }
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

/// Tag and manifest records, written through the cache so their format is
/// the real one. Returns the bytes of the manifests (they are blobs too).
async fn write_records(root: &Path) -> u64 {
    let cache = Cache::open(root, MAX_SIZE, Arc::new(Metrics::new()))
        .await
        .expect("create the cache");
    let mut bytes = 0;
    for i in 0..RECORDS {
        let manifest = Bytes::from(format!(
            "{{\"schemaVersion\":2,\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\",\"config\":{{\"size\":{i}}},\"layers\":[]}}"
        ));
        let digest = Digest::of(&manifest);
        bytes += manifest.len() as u64;
        cache
            .put_manifest(
                &digest,
                manifest,
                "application/vnd.oci.image.manifest.v1+json",
            )
            .await
            .expect("put a manifest");
        let key = TagKey {
            upstream: "docker.io".to_owned(),
            repo: "library/alpine".parse().expect("repository name"),
            tag: format!("3.{i}").parse().expect("tag"),
        };
        let record = TagRecord {
            digest,
            checked_at: SystemTime::now(),
        };
        cache.put_tag(key, record).await.expect("put a tag");
    }
    bytes
}

/// Writes blobs `from..to` as `blobs/sha256/<2 hex>/<hex>` files whose
/// content hashes to their name. Returns the bytes written.
fn write_blobs(root: &Path, from: usize, to: usize) -> u64 {
    let shards = root.join("blobs").join("sha256");
    let mut bytes = 0;
    for i in from..to {
        let data = format!("blob number {i}\n");
        let digest = Digest::of(data.as_bytes());
        let hex = digest.hex();
        let shard = shards.join(&hex[..2]);
        std::fs::create_dir_all(&shard).expect("shard directory");
        std::fs::write(shard.join(hex), &data).expect("blob file");
        bytes += data.len() as u64;
    }
    bytes
}
