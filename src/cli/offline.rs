//! The commands that work on a stopped server's cache directory:
//! `hoard verify` (safe beside a running server), `hoard export` and
//! `hoard import`.

use std::io::IsTerminal;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::progress::Bar;
use super::Error;
use crate::cache::Cache;
use crate::pins::{LockError, Pins};

/// `hoard verify`: re-hashes the cache at `cache_dir`, moving damage aside.
/// Shows a progress bar on a terminal and a log line every few seconds
/// otherwise. Returns whether the cache was intact.
pub fn verify(cache_dir: &Path) -> Result<bool, Error> {
    let Some(store) = crate::storage::FsBlobs::beside(cache_dir) else {
        return Err(Error::NoCache(cache_dir.to_owned()));
    };
    let started = Instant::now();
    let bar = std::io::stderr().is_terminal().then(|| {
        super::progress::bar("verifying [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} {msg}")
    });
    let mut last_log = Instant::now();
    let mut progress = |done: u64, total: u64, bytes: u64, total_bytes: u64| match &bar {
        Some(bar) => {
            bar.set_length(total_bytes);
            bar.set_position(bytes);
            bar.set_message(format!("{done}/{total} blobs"));
        }
        None => {
            if last_log.elapsed() >= Duration::from_secs(5) || done == total {
                last_log = Instant::now();
                tracing::info!(
                    blobs = done,
                    of = total,
                    bytes,
                    of_bytes = total_bytes,
                    "verifying"
                );
            }
        }
    };
    let report =
        crate::cache::verify::verify_blocking(&store, &mut progress).map_err(Error::Verify)?;
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    println!(
        "verified {} blobs ({} bytes) in {:.1}s: {} damaged, {} unreadable",
        report.checked,
        report.bytes,
        started.elapsed().as_secs_f64(),
        report.damaged.len(),
        report.unreadable.len()
    );
    for (digest, to) in &report.damaged {
        println!("damaged: {digest} moved to {to}");
    }
    for (digest, why) in &report.unreadable {
        println!("unreadable: {digest}: {why}");
    }
    if !report.is_clean() {
        println!("a running hoard fetches damaged blobs again on their next pull; inspect quarantine/ and delete it when done");
    }
    Ok(report.is_clean())
}

/// `hoard export`: writes `images` (with `pinned`, also every pinned
/// image, each with the platforms it was pinned for) from the cache at
/// `config.cache_dir` to one OCI-layout tar at `output` (`-` for standard
/// output). Returns the summary line.
pub fn export(
    config: &crate::Config,
    images: &[String],
    pinned: bool,
    platform: Option<&str>,
    output: &Path,
) -> Result<String, Error> {
    use crate::bundle::{export, layout::Platforms};
    if images.is_empty() && !pinned {
        return Err(Error::NothingToExport);
    }
    let platforms: Platforms = platform.unwrap_or("").parse().map_err(Error::Platform)?;
    let mut wanted = images
        .iter()
        .map(|i| crate::prefetch::ImageRef::resolve(i, config).map(|r| (r, platforms.clone())))
        .collect::<Result<Vec<_>, _>>()?;
    let out = if output == Path::new("-") {
        export::Output::Stdout
    } else {
        export::Output::File(output.to_owned())
    };
    let started = Instant::now();
    let s = offline_cache(config, |cache, pins| async move {
        if pinned {
            let all = export::pinned(&pins)?;
            if all.is_empty() {
                return Err(crate::bundle::Error::Reference(format!(
                    "--pinned: nothing is pinned in {} (`hoard prefetch` or `hoard pin` images first)",
                    config.cache_dir.display()
                )));
            }
            wanted.extend(all);
        }
        export::export_each(cache, &wanted, out, Arc::new(Bar::new("exporting"))).await
    })?;
    Ok(s.line(output, started.elapsed()))
}

/// `hoard import`: loads an OCI-layout tar into the cache at
/// `config.cache_dir`, verifying every digest. Returns the summary lines.
pub fn import(
    config: &crate::Config,
    archive: &Path,
    placement: &crate::bundle::import::Placement,
) -> Result<String, Error> {
    let started = Instant::now();
    let s = offline_cache(config, |cache, pins| async move {
        let bar = Arc::new(Bar::new("importing"));
        crate::bundle::import::import(cache, config, archive, placement, &pins, bar).await
    })?;
    Ok(s.report(&archive.display().to_string(), started.elapsed()))
}

/// Opens the cache for an offline command on its own runtime and runs
/// `work` on it with the pins. Takes the cache directory's lock first (a
/// running server, or another command, makes this fail saying so: they
/// clean `tmp/` and write records at start). The budget is not applied
/// here (it is u64::MAX): a command that reads or adds pinned content must
/// not evict anything; the server applies it when it next starts.
fn offline_cache<'a, T, F>(
    config: &'a crate::Config,
    work: impl FnOnce(Arc<Cache>, Arc<Pins>) -> F,
) -> Result<T, Error>
where
    F: std::future::Future<Output = Result<T, crate::bundle::Error>> + 'a,
{
    let _lock = crate::pins::CacheLock::acquire(&config.cache_dir).map_err(|e| match e {
        LockError::Busy(dir) => Error::BusyForBundle(dir),
        other => Error::Lock(other),
    })?;
    let runtime = tokio::runtime::Runtime::new().map_err(Error::Runtime)?;
    runtime.block_on(async {
        let (cache, pins, _) = open_cache(config, u64::MAX).await?;
        Ok(work(cache, pins).await?)
    })
}

/// The cache at `config.cache_dir` with its pins and a fresh metrics
/// registry, evicting down to `budget`. The caller holds the lock. On
/// `[storage] kind = "s3"` that is the disk tier in front of the bucket, as
/// the server has it: an export reads what only the bucket holds, an import
/// and a pin land in the bucket for every replica.
pub(super) async fn open_cache(
    config: &crate::Config,
    budget: u64,
) -> Result<(Arc<Cache>, Arc<Pins>, Arc<crate::metrics::Metrics>), Error> {
    let dir = &config.cache_dir;
    let storage = crate::storage::Storage::open(dir, &config.storage)
        .await
        .map_err(|e| Error::open(dir, e))?;
    let pins = crate::load_pins(&storage)
        .await
        .map_err(|e| Error::open(dir, e))?;
    let metrics = Arc::new(crate::metrics::Metrics::new());
    let cache = Cache::open_holding(&storage, budget, metrics.clone(), &pins.held())
        .await
        .map_err(|e| Error::open(dir, e))?;
    Ok((cache, pins, metrics))
}
