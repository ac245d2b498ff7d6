//! The `[prefetch]` table of `mirror.toml`: images the running server keeps
//! prefetched and pinned, refreshed on a schedule (run by
//! `prefetch::schedule`).

use std::time::Duration;

use serde::Deserialize;

use super::ConfigError;
use crate::oci::Platform;

/// Default number of blobs fetched at once (`jobs`, and the CLI's `--jobs`).
pub const DEFAULT_JOBS: usize = 4;

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
