//! Criterion micro-benchmarks of hoard's per-request and per-byte hot paths.
//!
//! - `sha256`: the fill's hashing, one 1 MiB chunk per iteration through
//!   [`hoard::oci::Hasher`] (compare with `openssl speed -evp sha256`; sha2
//!   picks SHA-NI at run time when the CPU has it).
//! - `route`: [`Route::parse`] and the `ns` query lookup, run for every request.
//! - `oci`: digest, repository name and reference parsing at the edge.
//! - `index`: [`BlobIndex`] lookups in a 100k-blob index (spread over all of
//!   it, and the same blob repeatedly, which shows what is memory latency),
//!   and inserts (what start-up does once per cached blob).
//! - `serve_file`: a cached blob read through [`Cache::open_blob`] and a
//!   `ReaderStream`, as the blob handler does, at several chunk sizes.
//! - `fill`: a cold 16 MiB blob through [`Cache::fill`] from the test
//!   suite's in-process upstream on 127.0.0.1, read by one client to its
//!   last byte and then committed: receiving, writing and hashing the fill
//!   side by side, then `fsync` and rename.
//!
//! Measurement times are short so the whole run takes a couple of minutes:
//! `cargo bench --bench hot_paths` (add a filter, e.g. `-- index`, for one group).

use std::sync::Arc;
use std::time::Duration;

use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use futures_util::StreamExt;
use hoard::cache::index::{now_secs, BlobIndex};
use hoard::cache::Cache;
use hoard::http::{query_param, Route};
use hoard::metrics::Metrics;
use hoard::oci::{Digest, Hasher, Reference, RepoName};
use hoard::upstream::Upstreams;

/// How long the fake upstream waits for a stalled client; `fake.rs` reads
/// it from its parent module, as `tests/common/mod.rs` defines it there.
const DEADLINE: std::time::Duration = std::time::Duration::from_secs(10);

/// The test suite's in-process upstream registry (`tests/common`).
#[allow(dead_code, unused_imports)]
#[path = "../tests/common/fake.rs"]
mod fake;
#[allow(dead_code, unused_imports)]
#[path = "../tests/common/fake_http.rs"]
mod fake_http;

/// Digests that look like real ones (sha256 of a counter).
fn digests(n: usize) -> Vec<Digest> {
    (0..n as u64)
        .map(|i| Digest::of(&i.to_le_bytes()))
        .collect()
}

/// Bytes that do not compress or repeat (a xorshift stream).
fn noise(len: usize) -> Vec<u8> {
    noise_from(len, 0)
}

/// [`noise`] from another starting point: another blob.
fn noise_from(len: usize, seed: u64) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15 ^ seed.wrapping_mul(0x2545_f491_4f6c_dd1d);
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

fn sha256(c: &mut Criterion) {
    let chunk = noise(1 << 20);
    let mut g = c.benchmark_group("sha256");
    g.throughput(Throughput::Bytes(chunk.len() as u64));
    g.bench_function("hasher_update_1MiB", |b| {
        let mut h = Hasher::new();
        b.iter(|| h.update(black_box(&chunk)));
    });
    g.bench_function("digest_of_1MiB", |b| {
        b.iter(|| Digest::of(black_box(&chunk)))
    });
    g.finish();
}

fn route(c: &mut Criterion) {
    let d = Digest::of(b"x").to_string();
    let blob = format!("/v2/library/alpine/blobs/{d}");
    let paths = [
        (
            "manifest_tag",
            "/v2/library/alpine/manifests/3.19".to_owned(),
        ),
        ("blob_digest", blob),
        (
            "deep_name_manifest",
            "/v2/ghcr.io/org/team/app/manifests/v1.2.3".to_owned(),
        ),
        ("tags_list", "/v2/library/alpine/tags/list".to_owned()),
        ("base", "/v2/".to_owned()),
        ("unknown", "/favicon.ico".to_owned()),
    ];
    let mut g = c.benchmark_group("route");
    g.throughput(Throughput::Elements(1));
    for (label, path) in &paths {
        g.bench_function(*label, |b| {
            b.iter(|| Route::parse(black_box(path.as_str())))
        });
    }
    let query = "ns=docker.io";
    g.bench_function("query_ns", |b| {
        b.iter(|| query_param(black_box(Some(query)), "ns"))
    });
    g.finish();
}

fn oci(c: &mut Criterion) {
    let digest = Digest::of(b"x").to_string();
    let mut g = c.benchmark_group("oci");
    g.throughput(Throughput::Elements(1));
    g.bench_function("digest_parse", |b| {
        b.iter(|| black_box(digest.as_str()).parse::<Digest>())
    });
    g.bench_function("name_parse_library_alpine", |b| {
        b.iter(|| black_box("library/alpine").parse::<RepoName>())
    });
    g.bench_function("name_parse_deep", |b| {
        b.iter(|| black_box("my-org/platform_team/service.api-gateway").parse::<RepoName>())
    });
    g.bench_function("reference_parse_tag", |b| {
        b.iter(|| black_box("v1.2.3-alpine").parse::<Reference>())
    });
    g.bench_function("reference_parse_digest", |b| {
        b.iter(|| black_box(digest.as_str()).parse::<Reference>())
    });
    g.bench_function("digest_to_string", |b| {
        let d = Digest::of(b"x");
        b.iter(|| black_box(&d).to_string())
    });
    g.finish();
}

fn index(c: &mut Criterion) {
    const N: usize = 100_000;
    let all = digests(N + 1);
    let (present, absent) = all.split_at(N);
    let (idx, _evicted) = BlobIndex::new(u64::MAX / 2);
    let now = now_secs();
    for d in present {
        idx.insert(d.clone(), 4096, now);
    }
    let mut g = c.benchmark_group("index");
    g.throughput(Throughput::Elements(1));
    let mut i = 0;
    g.bench_function("get_hit_100k", |b| {
        b.iter(|| {
            i = (i + 7919) % N;
            idx.get(black_box(&present[i]))
        })
    });
    // The same blob again and again: the code path without cache misses.
    g.bench_function("get_hit_same_100k", |b| {
        b.iter(|| idx.get(black_box(&present[0])))
    });
    g.bench_function("get_miss_100k", |b| {
        b.iter(|| idx.get(black_box(&absent[0])))
    });
    g.bench_function("contains_hit_100k", |b| {
        b.iter(|| {
            i = (i + 7919) % N;
            idx.contains(black_box(&present[i]))
        })
    });
    // Start-up inserts every cached blob once: 10k inserts into a fresh index.
    const BATCH: usize = 10_000;
    let batch = &present[..BATCH];
    g.throughput(Throughput::Elements(BATCH as u64));
    g.sample_size(10);
    g.bench_function("insert_10k_fresh", |b| {
        b.iter_batched(
            || BlobIndex::new(u64::MAX / 2),
            |(idx, rx)| {
                for d in batch {
                    idx.insert(d.clone(), 4096, now);
                }
                (idx, rx)
            },
            BatchSize::PerIteration,
        )
    });
    g.finish();
}

/// A runtime like the server's on this 2-core machine.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn serve_file(c: &mut Criterion) {
    const SIZE: usize = 64 << 20;
    let rt = runtime();
    let dir = tempfile::tempdir().expect("temp dir");
    let data = noise(SIZE);
    let digest = Digest::of(&data);
    let hex = digest.hex().to_owned();
    let shard = dir.path().join("blobs/sha256").join(&hex[..2]);
    std::fs::create_dir_all(&shard).expect("shard dir");
    std::fs::write(shard.join(&hex), &data).expect("blob file");
    drop(data);
    let cache: Arc<Cache> = rt
        .block_on(Cache::open(dir.path(), 1 << 40, Arc::new(Metrics::new())))
        .expect("open cache");

    let mut g = c.benchmark_group("serve_file_64MiB");
    g.throughput(Throughput::Bytes(SIZE as u64));
    g.sample_size(10);
    for chunk in [64 << 10, 256 << 10, 1 << 20] {
        g.bench_function(format!("reader_stream_{}KiB", chunk >> 10), |b| {
            b.iter(|| {
                rt.block_on(async {
                    let reader = cache
                        .open_blob(&digest, 0, SIZE as u64)
                        .await
                        .expect("open blob")
                        .expect("blob present");
                    let mut stream = tokio_util::io::ReaderStream::with_capacity(reader, chunk);
                    let mut total = 0usize;
                    while let Some(buf) = stream.next().await {
                        total += buf.expect("read").len();
                    }
                    assert_eq!(total, SIZE);
                    total
                })
            })
        });
    }
    g.finish();
}

fn fill(c: &mut Criterion) {
    const SIZE: usize = 16 << 20;
    let rt = runtime();
    let hub = rt.block_on(fake::FakeRegistry::start());
    let dir = tempfile::tempdir().expect("temp dir");
    let toml = format!(
        "listen = \"127.0.0.1:0\"\ncache_dir = \"{}\"\ndefault_upstream = \"docker.io\"\n\
         tag_ttl = \"5m\"\n\n[upstreams.\"docker.io\"]\nurl = \"{}\"\n",
        dir.path().display(),
        hub.url()
    );
    let config = hoard::Config::from_toml(&toml).expect("bench config");
    let metrics = Arc::new(Metrics::new());
    let upstreams = Upstreams::new(&config, metrics.clone()).expect("upstreams");
    let upstream = upstreams.get("docker.io").expect("docker.io").clone();
    // A budget of a few blobs: the cache evicts as the benchmark goes.
    let cache: Arc<Cache> = rt
        .block_on(Cache::open(dir.path(), 8 * SIZE as u64, metrics.clone()))
        .expect("open cache");
    let repo: RepoName = "library/bench".parse().expect("repository name");

    let mut g = c.benchmark_group("fill_16MiB");
    g.throughput(Throughput::Bytes(SIZE as u64));
    g.sample_size(10);
    let mut seed = 0;
    g.bench_function("cold_to_last_byte_and_commit", |b| {
        b.iter_batched(
            || {
                // A blob the cache has never seen (setup, not timed).
                seed += 1;
                let blob = hub.add_blob("library/bench", noise_from(SIZE, seed));
                blob.digest.parse::<Digest>().expect("digest")
            },
            |digest| {
                rt.block_on(async {
                    let fill = hoard::policy::fill(&cache, &upstream, &repo, &digest, None)
                        .expect("a blob the cache lacks starts a fill")
                        .fill;
                    let read = hoard::policy::Read {
                        upstream: upstream.clone(),
                        repo: repo.clone(),
                        size: SIZE as u64,
                        start: 0,
                        end: SIZE as u64,
                    };
                    let mut body =
                        std::pin::pin!(hoard::policy::read(fill.clone(), read, metrics.clone()));
                    let mut total = 0;
                    while let Some(chunk) = body.next().await {
                        total += chunk.expect("fill body").len();
                    }
                    assert_eq!(total, SIZE);
                    fill.finished().await.expect("fill committed");
                })
            },
            BatchSize::PerIteration,
        )
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(500));
    targets = sha256, route, oci, index, serve_file, fill
}
criterion_main!(benches);
