//! The `[prefetch]` table of `mirror.toml`: images the running server keeps
//! prefetched and pinned, refreshed on a schedule.

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use super::{Options, Platform, Prefetcher, DEFAULT_JOBS};
use crate::config::ConfigError;

/// `[prefetch]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrefetchConfig {
    /// References to keep (`alpine:3.19`, `ghcr.io/org/app:v1`).
    #[serde(default)]
    pub images: Vec<String>,
    /// Platforms of multi-platform images to keep; empty: all.
    #[serde(default)]
    pub platforms: Vec<String>,
    /// How often to refresh (resolve tags again, fetch what is new, re-pin);
    /// the first run is at start. `0s` or absent: only at start.
    #[serde(default, with = "humantime_serde")]
    pub interval: Option<Duration>,
    /// Blobs fetched at once.
    #[serde(default = "default_jobs")]
    pub jobs: usize,
}

fn default_jobs() -> usize {
    DEFAULT_JOBS
}

impl Default for PrefetchConfig {
    fn default() -> PrefetchConfig {
        PrefetchConfig {
            images: Vec::new(),
            platforms: Vec::new(),
            interval: None,
            jobs: DEFAULT_JOBS,
        }
    }
}

impl PrefetchConfig {
    /// Checks the platforms and job count (images are checked when resolved,
    /// so one bad line does not stop the server).
    pub fn validate(&self) -> Result<Vec<Platform>, ConfigError> {
        if self.jobs == 0 {
            return Err(ConfigError::Invalid {
                key: "prefetch.jobs".into(),
                msg: "must be at least 1".into(),
            });
        }
        Platform::parse_list(&self.platforms).map_err(|e| ConfigError::Invalid {
            key: "prefetch.platforms".into(),
            msg: e.to_string(),
        })
    }
}

/// Runs the configured prefetch at start and then every `interval`, until
/// the returned task is aborted. `None` when nothing is configured.
pub fn spawn(engine: Arc<Prefetcher>) -> Option<tokio::task::JoinHandle<()>> {
    let cfg = engine.config().prefetch.clone();
    if cfg.images.is_empty() {
        return None;
    }
    let platforms = match cfg.validate() {
        Ok(p) => p,
        Err(e) => {
            tracing::error!(error = %e, "[prefetch] not run");
            return None;
        }
    };
    let opts = Options {
        platforms,
        jobs: cfg.jobs,
    };
    Some(tokio::spawn(async move {
        loop {
            tracing::info!(images = cfg.images.len(), "scheduled prefetch starting");
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
            // Nobody watches the events of a scheduled run but the log.
            let drain = tokio::spawn(async move { while rx.recv().await.is_some() {} });
            engine.run(&cfg.images, &opts, &tx).await;
            drop(tx);
            let _ = drain.await;
            match cfg.interval.filter(|i| !i.is_zero()) {
                Some(i) => tokio::time::sleep(i).await,
                None => break,
            }
        }
    }))
}
