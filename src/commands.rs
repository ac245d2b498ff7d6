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
