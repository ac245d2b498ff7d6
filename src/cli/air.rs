//! The air-gap commands: `hoard prefetch`, `pin`, `unpin`, `ls` and
//! `check`, through a running server's operator API (`--server URL`) or
//! in-process on a stopped server's cache directory. Both ways print the
//! same output.

use std::io::IsTerminal;
use std::path::Path;
use std::sync::Arc;

use super::client::Client;
use super::display::{self, Display};
use super::Error;
use crate::admin::{ls::Entry, PinView};
use crate::prefetch::{Event, Options, Platform, Prefetcher, Readiness};
use crate::upstream::Upstreams;

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
) -> Result<(crate::pins::CacheLock, Arc<Prefetcher>), Error> {
    let lock = crate::pins::CacheLock::acquire(&config.cache_dir)?;
    let (cache, pins, metrics) =
        super::offline::open_cache(config, config.max_size.as_u64()).await?;
    let upstreams = Upstreams::new(config, metrics.clone()).map_err(Error::Upstreams)?;
    let engine = Prefetcher::new(config.clone(), upstreams.into(), cache, pins, metrics);
    Ok((lock, engine.into()))
}

/// The images named on the command line and in `--file` (one a line,
/// `#` comments).
pub fn image_list(images: Vec<String>, file: Option<&Path>) -> Result<Vec<String>, Error> {
    let mut all = images;
    if let Some(f) = file {
        let text = std::fs::read_to_string(f).map_err(|source| Error::ReadFile {
            path: f.to_owned(),
            source,
        })?;
        all.extend(crate::prefetch::parse_list(&text));
    }
    if all.is_empty() {
        return Err(Error::NoImages);
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
) -> Result<bool, Error> {
    let parsed = platforms_of(&platforms)?;
    let mut display = Display::new(std::io::stderr().is_terminal(), images.len());
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
            let summary = run.await.map_err(|e| Error::Task("prefetch", e))?;
            display.finish();
            Ok(summary.failed == 0)
        }
    }
}

/// `hoard pin`: pins an image that is complete in the cache.
pub async fn pin(target: Site, image: String, platforms: Vec<String>) -> Result<(), Error> {
    let view: PinView = match target {
        Site::Server(url) => {
            let body = serde_json::json!({"image": image, "platforms": platforms});
            Client::new(&url)?
                .json(http::Method::POST, "pins", Some(body))
                .await?
        }
        Site::Local(config) => {
            let parsed = platforms_of(&platforms)?;
            let (_lock, engine) = local_engine(&config).await?;
            PinView::from(
                &engine
                    .pin_cached(&image, &parsed)
                    .await
                    .map_err(Error::Image)?,
            )
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
pub async fn unpin(target: Site, image: String) -> Result<(), Error> {
    let view: PinView = match target {
        Site::Server(url) => {
            let body = serde_json::json!({ "image": image });
            Client::new(&url)?
                .json(http::Method::DELETE, "pins", Some(body))
                .await?
        }
        Site::Local(config) => {
            let (_lock, engine) = local_engine(&config).await?;
            PinView::from(&engine.unpin(&image).await.map_err(Error::Image)?)
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
pub async fn ls(target: Site, json: bool) -> Result<(), Error> {
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
) -> Result<bool, Error> {
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
            let parsed = platforms_of(&platforms)?;
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

/// `--platform` values as the engine wants them.
fn platforms_of(platforms: &[String]) -> Result<Vec<Platform>, Error> {
    Platform::parse_list(platforms).map_err(|e| Error::Platform(e.to_string()))
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
