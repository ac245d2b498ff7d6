//! Offline commands the binary runs besides `serve`.

use std::io::IsTerminal;
use std::path::Path;
use std::time::{Duration, Instant};

/// `hoard verify`: re-hashes the cache at `cache_dir`, moving damage aside.
/// Shows a progress bar on a terminal and a log line every few seconds
/// otherwise. Returns whether the cache was intact.
pub fn verify(cache_dir: &Path) -> Result<bool, String> {
    let Some(store) = crate::storage::FsBlobs::beside(cache_dir) else {
        return Err(format!(
            "{} holds no hoard cache (no blobs/ directory): check --cache-dir or cache_dir",
            cache_dir.display()
        ));
    };
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
    let report = crate::cache::verify::verify_blocking(&store, &mut progress)
        .map_err(|e| format!("verify failed: {e}"))?;
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
) -> Result<String, String> {
    use crate::bundle::{export, layout::Platforms};
    if images.is_empty() && !pinned {
        return Err(
            "no images to export: name them, or pass --pinned for every pinned image".into(),
        );
    }
    let platforms: Platforms = platform.unwrap_or("").parse()?;
    let mut wanted = images
        .iter()
        .map(|i| {
            crate::prefetch::ImageRef::resolve(i, config)
                .map(|r| (r, platforms.clone()))
                .map_err(|e| e.to_string())
        })
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
        export::export_each(cache, &wanted, out, false).await
    })?;
    Ok(s.line(output, started.elapsed()))
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
    Ok(s.report(&archive.display().to_string(), started.elapsed()))
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
    let _lock = crate::pins::CacheLock::acquire(&config.cache_dir).map_err(|e| match e {
        crate::pins::LockError::Busy(dir) => format!(
            "the cache directory {} is in use by another hoard process (a running `hoard serve`?): export and import work on a stopped server's cache: stop it first, or go through it with `hoard export --server http://127.0.0.1:PORT` / `hoard import --server ...`",
            dir.display()
        ),
        other => other.to_string(),
    })?;
    let runtime =
        tokio::runtime::Runtime::new().map_err(|e| format!("cannot start the runtime: {e}"))?;
    let dir = config.cache_dir.display();
    let cannot = |e: &dyn std::fmt::Display| format!("cannot open the cache at {dir}: {e}");
    runtime.block_on(async {
        let storage = crate::storage::Storage::open_disk(&config.cache_dir)
            .await
            .map_err(|e| cannot(&e))?;
        let pins = crate::load_pins(&storage)
            .await
            .map_err(|e| e.to_string())?;
        let metrics = std::sync::Arc::new(crate::metrics::Metrics::new());
        let cache = crate::cache::Cache::open_holding(&storage, u64::MAX, metrics, &pins.held())
            .await
            .map_err(|e| cannot(&e))?;
        work(cache, pins).await.map_err(|e| e.to_string())
    })
}

/// Where an air-gap command works: through a running server's operator
/// API, or directly on a stopped server's cache directory.
pub enum Site {
    /// `--server URL`.
    Server(String),
    /// The cache directory of this config (taken under the lock).
    Local(Box<crate::Config>),
}

/// An engine on the cache directory itself, under its lock (refused while a server uses it).
async fn local_engine(
    config: &crate::Config,
) -> Result<(crate::pins::CacheLock, std::sync::Arc<Prefetcher>), String> {
    let lock = crate::pins::CacheLock::acquire(&config.cache_dir).map_err(|e| e.to_string())?;
    let metrics = std::sync::Arc::new(crate::metrics::Metrics::new());
    let storage = crate::storage::Storage::open_disk(&config.cache_dir)
        .await
        .map_err(|e| format!("cannot open the cache: {e}"))?;
    let pins = crate::load_pins(&storage)
        .await
        .map_err(|e| e.to_string())?;
    let cache = crate::cache::Cache::open_holding(
        &storage,
        config.max_size.as_u64(),
        metrics.clone(),
        &pins.held(),
    )
    .await
    .map_err(|e| format!("cannot open the cache: {e}"))?;
    let upstreams = Upstreams::new(config, metrics.clone()).map_err(|e| e.to_string())?;
    let engine = Prefetcher::new(config.clone(), upstreams.into(), cache, pins, metrics);
    Ok((lock, engine.into()))
}

use crate::admin::client::Client;
use crate::admin::{ls::Entry, PinView};
use crate::prefetch::{display, Event, Options, Platform, Prefetcher, Readiness};
use crate::upstream::Upstreams;

/// The images named on the command line and in `--file` (one a line,
/// `#` comments).
pub fn image_list(images: Vec<String>, file: Option<&Path>) -> Result<Vec<String>, String> {
    let mut all = images;
    if let Some(f) = file {
        let text =
            std::fs::read_to_string(f).map_err(|e| format!("cannot read {}: {e}", f.display()))?;
        all.extend(crate::prefetch::parse_list(&text));
    }
    if all.is_empty() {
        return Err("no images given: name them or pass --file images.txt".into());
    }
    Ok(all)
}

/// `hoard prefetch`: fetches and pins `images`, showing progress; returns
/// whether every image succeeded.
pub async fn prefetch(
    target: Site,
    images: Vec<String>,
    platforms: Vec<String>,
    jobs: usize,
) -> Result<bool, String> {
    let parsed = Platform::parse_list(&platforms).map_err(|e| e.to_string())?;
    let mut display = display::Display::new(std::io::stderr().is_terminal(), images.len());
    match target {
        Site::Server(url) => {
            let body = serde_json::json!({"images": images, "platforms": platforms, "jobs": jobs});
            let result = Client::new(&url)?
                .prefetch(body, |ev| display.event(ev))
                .await;
            let summary = display.finish();
            result?;
            Ok(summary.is_some_and(|s| s.failed == 0))
        }
        Site::Local(config) => {
            let (_lock, engine) = local_engine(&config).await?;
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Event>();
            let opts = Options {
                platforms: parsed,
                jobs,
            };
            let run = tokio::spawn(async move { engine.run(&images, &opts, &tx).await });
            while let Some(ev) = rx.recv().await {
                display.event(ev);
            }
            let summary = run
                .await
                .map_err(|e| format!("prefetch task failed: {e}"))?;
            display.finish();
            Ok(summary.failed == 0)
        }
    }
}

/// `hoard pin`: pins an image that is complete in the cache.
pub async fn pin(target: Site, image: String, platforms: Vec<String>) -> Result<(), String> {
    let view: PinView = match target {
        Site::Server(url) => {
            let body = serde_json::json!({"image": image, "platforms": platforms});
            Client::new(&url)?
                .json(http::Method::POST, "pins", Some(body))
                .await?
        }
        Site::Local(config) => {
            let parsed = Platform::parse_list(&platforms).map_err(|e| e.to_string())?;
            let (_lock, engine) = local_engine(&config).await?;
            PinView::from(&engine.pin_cached(&image, &parsed).await?)
        }
    };
    println!(
        "pinned {} -> {} ({} blobs, {})",
        view.image,
        view.digest,
        view.blobs,
        display::human(view.bytes)
    );
    Ok(())
}

/// `hoard unpin`: lets an image's content return under the budget.
pub async fn unpin(target: Site, image: String) -> Result<(), String> {
    let view: PinView = match target {
        Site::Server(url) => {
            let body = serde_json::json!({ "image": image });
            Client::new(&url)?
                .json(http::Method::DELETE, "pins", Some(body))
                .await?
        }
        Site::Local(config) => {
            let (_lock, engine) = local_engine(&config).await?;
            PinView::from(&engine.unpin(&image).await?)
        }
    };
    println!(
        "unpinned {} ({} now under the budget)",
        view.image,
        display::human(view.bytes)
    );
    Ok(())
}

/// `hoard ls`: cached and pinned images, a table or JSON.
pub async fn ls(target: Site, json: bool) -> Result<(), String> {
    let entries: Vec<Entry> = match target {
        Site::Server(url) => {
            #[derive(serde::Deserialize)]
            struct Listing {
                images: Vec<Entry>,
            }
            let l: Listing = Client::new(&url)?
                .json(http::Method::GET, "ls", None)
                .await?;
            l.images
        }
        Site::Local(config) => {
            let (_lock, engine) = local_engine(&config).await?;
            crate::admin::ls::list(&engine).await
        }
    };
    if json {
        println!("{}", serde_json::json!({ "images": entries }));
        return Ok(());
    }
    println!(
        "{:<50} {:<7} {:>10} {:<19} {:<26} DIGEST",
        "IMAGE", "PINNED", "SIZE", "LAST USE (UTC)", "PLATFORMS"
    );
    for e in entries {
        let state = match (e.pinned, e.complete) {
            (true, _) => "pinned",
            (false, true) => "-",
            (false, false) => "partial",
        };
        println!(
            "{:<50} {:<7} {:>10} {:<19} {:<26} {}",
            e.image,
            state,
            display::human(e.bytes),
            utc(e.last_use),
            e.platforms.join(","),
            &e.digest[..e.digest.len().min(19)]
        );
    }
    Ok(())
}

/// `hoard check`: whether every image (and platform) can be served with
/// the network gone. Never contacts an upstream. Returns whether all are.
pub async fn check(
    target: Site,
    images: Vec<String>,
    platforms: Vec<String>,
) -> Result<bool, String> {
    let results: Vec<Readiness> = match target {
        Site::Server(url) => {
            #[derive(serde::Deserialize)]
            struct Checked {
                images: Vec<Readiness>,
            }
            let body = serde_json::json!({"images": images, "platforms": platforms});
            let c: Checked = Client::new(&url)?
                .json(http::Method::POST, "check", Some(body))
                .await?;
            c.images
        }
        Site::Local(config) => {
            let parsed = Platform::parse_list(&platforms).map_err(|e| e.to_string())?;
            let (_lock, engine) = local_engine(&config).await?;
            let mut out = Vec::new();
            for image in &images {
                out.push(engine.check(image, &parsed).await);
            }
            out
        }
    };
    let mut all = true;
    for r in &results {
        all &= r.ready;
        let pinned = if r.pinned { " (pinned)" } else { "" };
        match (r.ready, &r.digest) {
            (true, Some(d)) => println!("ready    {} -> {d}{pinned}", r.image),
            _ => println!(
                "MISSING  {}: {}{}",
                r.image,
                r.missing
                    .iter()
                    .take(3)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join("; "),
                if r.missing.len() > 3 {
                    format!(" (and {} more)", r.missing.len() - 3)
                } else {
                    String::new()
                }
            ),
        }
    }
    let ready = results.iter().filter(|r| r.ready).count();
    println!("{ready} of {} images can be served offline", results.len());
    Ok(all)
}

/// `YYYY-MM-DD hh:mm:ss` in UTC ("-" for 0).
fn utc(secs: u64) -> String {
    if secs == 0 {
        return "-".into();
    }
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_dates() {
        assert_eq!(utc(0), "-");
        assert_eq!(utc(1_700_000_000), "2023-11-14 22:13:20");
        assert_eq!(utc(951_782_400), "2000-02-29 00:00:00");
    }

    #[test]
    fn image_lists_merge_arguments_and_file() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("images.txt");
        std::fs::write(&f, "# base\nalpine:3.19\n\nteam/app:v1 # app\n").unwrap();
        let all = image_list(vec!["busybox".into()], Some(&f)).unwrap();
        assert_eq!(all, ["busybox", "alpine:3.19", "team/app:v1"]);
        assert!(image_list(vec![], None).is_err());
    }
}
