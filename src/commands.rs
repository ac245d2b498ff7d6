//! Offline commands the binary runs besides `serve`.

use std::io::IsTerminal;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::cache::verify;

/// `hoard verify`: re-hashes the cache at `cache_dir`, moving damage aside.
/// Shows a progress bar on a terminal and a log line every few seconds
/// otherwise. Returns whether the cache was intact.
pub fn verify(cache_dir: &Path) -> Result<bool, String> {
    if !cache_dir.join("blobs").is_dir() {
        return Err(format!(
            "{} holds no hoard cache (no blobs/ directory): check --cache-dir or cache_dir",
            cache_dir.display()
        ));
    }
    let started = Instant::now();
    let bar = std::io::stderr().is_terminal().then(|| {
        let bar = indicatif::ProgressBar::new(0);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "verifying [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} {msg}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        bar
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
        verify::verify(cache_dir, &mut progress).map_err(|e| format!("verify failed: {e}"))?;
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
        println!("damaged: {digest} moved to {}", to.display());
    }
    for (digest, why) in &report.unreadable {
        println!("unreadable: {digest}: {why}");
    }
    if !report.is_clean() {
        println!("a running hoard fetches damaged blobs again on their next pull; inspect quarantine/ and delete it when done");
    }
    Ok(report.is_clean())
}

/// `hoard export`: writes `images` from the cache at `config.cache_dir` to
/// one OCI-layout tar at `output` (`-` for standard output). Returns the
/// summary line.
pub fn export(
    config: &crate::Config,
    images: &[String],
    platform: Option<&str>,
    output: &Path,
) -> Result<String, String> {
    use crate::bundle::{export, image::ImageRef, layout::Platforms};
    let images = images
        .iter()
        .map(|i| ImageRef::parse(i, config))
        .collect::<Result<Vec<_>, _>>()?;
    let platforms: Platforms = platform.unwrap_or("").parse()?;
    let out = if output == Path::new("-") {
        export::Output::Stdout
    } else {
        export::Output::File(output.to_owned())
    };
    let started = Instant::now();
    let s = offline_cache(config, |cache, _pins| async move {
        export::export(cache, &images, &platforms, out, false).await
    })?;
    Ok(format!(
        "exported {} images ({} manifests, {} blobs, {}) to {} in {:.1}s",
        s.images,
        s.manifests,
        s.blobs,
        bytesize::ByteSize::b(s.bytes).to_string_as(true),
        output.display(),
        started.elapsed().as_secs_f64()
    ))
}

/// `hoard import`: loads an OCI-layout tar into the cache at
/// `config.cache_dir`, verifying every digest. Returns the summary lines.
pub fn import(
    config: &crate::Config,
    archive: &Path,
    placement: &crate::bundle::import::Placement,
) -> Result<String, String> {
    let started = Instant::now();
    let s = offline_cache(config, |cache, pins| async move {
        crate::bundle::import::import(cache, config, archive, placement, &pins, false).await
    })?;
    let mut out = format!(
        "imported {} images from {} in {:.1}s: {} blobs new ({}), {} already cached",
        s.images,
        archive.display(),
        started.elapsed().as_secs_f64(),
        s.new_blobs,
        bytesize::ByteSize::b(s.new_bytes).to_string_as(true),
        s.present_blobs,
    );
    for tag in &s.tags {
        out.push_str(&format!("\ntagged {tag}"));
    }
    for pin in &s.pins {
        out.push_str(&format!("\npinned {pin}"));
    }
    for d in &s.unnamed {
        out.push_str(&format!(
            "\nno name for {d}: pull it by digest; not pinned (import with --repo to pin it)"
        ));
    }
    if s.absent_children > 0 {
        out.push_str(&format!("\n{} platform manifests of multi-platform images are not in the archive (exported with --platform)", s.absent_children));
    }
    if s.unreferenced > 0 {
        out.push_str(&format!(
            "\n{} blobs in the archive belong to no image and were left out",
            s.unreferenced
        ));
    }
    Ok(out)
}

/// Opens the cache for an offline command on its own runtime and runs
/// `work` on it with the pins. Takes the cache directory's lock first (a
/// running server, or another command, makes this fail saying so: they
/// clean `tmp/` and write records at start). The budget is not applied
/// here (it is u64::MAX): a command that reads or adds pinned content must
/// not evict anything; the server applies it when it next starts.
fn offline_cache<'a, T, E: std::fmt::Display, F>(
    config: &'a crate::Config,
    work: impl FnOnce(std::sync::Arc<crate::cache::Cache>, std::sync::Arc<crate::pins::Pins>) -> F,
) -> Result<T, String>
where
    F: std::future::Future<Output = Result<T, E>> + 'a,
{
    let _lock = crate::pins::CacheLock::acquire(&config.cache_dir).map_err(|e| e.to_string())?;
    let runtime =
        tokio::runtime::Runtime::new().map_err(|e| format!("cannot start the runtime: {e}"))?;
    runtime.block_on(async {
        let pins = crate::load_pins(&config.cache_dir)
            .await
            .map_err(|e| e.to_string())?;
        let metrics = std::sync::Arc::new(crate::metrics::Metrics::new());
        let cache =
            crate::cache::Cache::open_holding(&config.cache_dir, u64::MAX, metrics, &pins.held())
                .await
                .map_err(|e| {
                    format!(
                        "cannot open the cache at {}: {e}",
                        config.cache_dir.display()
                    )
                })?;
        work(cache, pins).await.map_err(|e| e.to_string())
    })
}
