//! Prefetch: fetch whole images ahead of need and pin them.
//!
//! For each reference the engine resolves the tag upstream (a `HEAD`),
//! fetches the index, the child manifests of the selected platforms, their
//! configs and layers, and pins the lot. Manifests go through
//! `Upstream::get_manifest` + `Cache::put_manifest` and blobs through
//! `policy::fill`, the same code a pull uses: a blob a client is pulling at
//! the same moment is downloaded once, everything is verified against its
//! digest before it enters the store, and the fill metrics count it.
//! Blobs already cached are skipped, so a prefetch interrupted half-way
//! resumes where it stopped. Each blob is held for the pin as soon as it is
//! in the cache, so a large image cannot evict its own first layers.
//!
//! The same engine runs inside the server (`POST /_hoard/prefetch`, the
//! `[prefetch]` schedule) and in the CLI on a stopped server's cache.

mod held;
pub mod manifest;
mod offline;
pub mod reference;
pub mod schedule;
mod walk;

use std::sync::Arc;
use std::time::SystemTime;

use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, Semaphore};

use crate::cache::{Cache, Holder, ReadError};
pub use crate::config::prefetch::DEFAULT_JOBS;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::oci::Digest;
pub use crate::oci::Platform;
use crate::pins::{Pin, Pins};
use crate::policy;
use crate::upstream::{Upstream, Upstreams};
pub use offline::Readiness;
pub use reference::{parse_list, ImageRef, RefError};
pub use walk::Plan;

/// Progress is reported at most once per this many bytes of a blob.
const PROGRESS_STEP: u64 = 1024 * 1024;

/// What to fetch and how.
#[derive(Debug, Clone)]
pub struct Options {
    /// Platforms of an index to keep; empty: all.
    pub platforms: Vec<Platform>,
    /// Blobs fetched at once (and images walked at once).
    pub jobs: usize,
}

/// A progress event: one NDJSON line on the operator API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// The image's manifests are known: what it needs, what is cached.
    Resolved {
        /// Canonical reference.
        image: String,
        /// Top manifest digest.
        digest: String,
        /// Configs and layers.
        blobs: usize,
        /// Their total size.
        bytes: u64,
        /// How much of it was cached already.
        cached_bytes: u64,
    },
    /// Bytes of the image arrived.
    Progress {
        /// Canonical reference.
        image: String,
        /// Bytes since the last progress event of this image.
        bytes: u64,
    },
    /// Something the operator should know that did not fail the image.
    Warning {
        /// Canonical reference.
        image: String,
        /// What happened.
        message: String,
    },
    /// The image is complete in the cache and pinned.
    Done {
        /// Canonical reference.
        image: String,
        /// Top manifest digest.
        digest: String,
        /// Configs and layers.
        blobs: usize,
        /// Bytes downloaded now.
        fetched_bytes: u64,
        /// Bytes that were cached already.
        cached_bytes: u64,
    },
    /// The image could not be prefetched.
    Failed {
        /// The reference as given or resolved.
        image: String,
        /// Why.
        error: String,
    },
    /// Always the last event.
    Summary(Summary),
}

/// Totals of one prefetch run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// Images asked for.
    pub images: usize,
    /// Images that failed.
    pub failed: usize,
    /// Configs and layers of the images that completed.
    pub blobs: usize,
    /// Bytes downloaded.
    pub fetched_bytes: u64,
    /// Bytes found cached.
    pub cached_bytes: u64,
}

/// Runs prefetches, checks and pins on one cache.
pub struct Prefetcher {
    config: Config,
    upstreams: Arc<Upstreams>,
    cache: Arc<Cache>,
    pins: Arc<Pins>,
    metrics: Arc<Metrics>,
}

pub(crate) type Events = mpsc::UnboundedSender<Event>;

impl Prefetcher {
    /// An engine over an opened cache and its pins, fetching through the
    /// process's clients for the configured upstreams (the server's own:
    /// one connection pool and token cache per upstream).
    pub fn new(
        config: Config,
        upstreams: Arc<Upstreams>,
        cache: Arc<Cache>,
        pins: Arc<Pins>,
        metrics: Arc<Metrics>,
    ) -> Prefetcher {
        Prefetcher {
            config,
            upstreams,
            cache,
            pins,
            metrics,
        }
    }

    /// The pins this engine records into.
    pub fn pins(&self) -> &Arc<Pins> {
        &self.pins
    }

    /// The cache it fills.
    pub fn cache(&self) -> &Arc<Cache> {
        &self.cache
    }

    /// The configuration (for resolving references).
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Prefetches and pins `images`, reporting on `events`; the last event
    /// is the [`Summary`], which is also returned.
    pub async fn run(&self, images: &[String], opts: &Options, events: &Events) -> Summary {
        let jobs = opts.jobs.max(1);
        let blob_slots = Arc::new(Semaphore::new(jobs));
        let mut summary = Summary {
            images: images.len(),
            ..Summary::default()
        };
        // Each image's `done` or `failed` goes out as soon as it is known.
        let mut results = futures_util::stream::iter(images.to_vec())
            .map(|text: String| {
                let slots = blob_slots.clone();
                async move {
                    let r = ImageRef::resolve(&text, &self.config).map_err(|e| Event::Failed {
                        image: text.clone(),
                        error: e.to_string(),
                    })?;
                    self.image(&r, opts, &slots, events)
                        .await
                        .map_err(|error| Event::Failed {
                            image: r.to_string(),
                            error,
                        })
                }
            })
            .buffer_unordered(jobs);
        while let Some(result) = results.next().await {
            let ev = match result {
                Ok(ev) => ev,
                Err(ev) => {
                    summary.failed += 1;
                    ev
                }
            };
            if let Event::Done {
                blobs,
                fetched_bytes,
                cached_bytes,
                ..
            } = &ev
            {
                summary.blobs += blobs;
                summary.fetched_bytes += fetched_bytes;
                summary.cached_bytes += cached_bytes;
            }
            if let Event::Failed { image, error } = &ev {
                tracing::warn!(%image, %error, "prefetch failed");
            }
            let _ = events.send(ev);
        }
        tracing::info!(
            images = summary.images,
            failed = summary.failed,
            blobs = summary.blobs,
            fetched_bytes = summary.fetched_bytes,
            cached_bytes = summary.cached_bytes,
            "prefetch finished"
        );
        let _ = events.send(Event::Summary(summary.clone()));
        summary
    }

    /// One image: walk, fetch what is missing, pin. Returns its `Done`.
    async fn image(
        &self,
        r: &ImageRef,
        opts: &Options,
        slots: &Arc<Semaphore>,
        events: &Events,
    ) -> Result<Event, String> {
        let upstream = self
            .upstreams
            .get(&r.upstream)
            .cloned()
            .ok_or_else(|| RefError::NotConfigured(r.upstream.clone()).to_string())?;
        let mut reserved = Vec::new();
        let result = self
            .image_reserving(r, &upstream, opts, slots, events, &mut reserved)
            .await;
        self.pins.unreserve(&self.cache, &reserved).await;
        result
    }

    async fn image_reserving(
        &self,
        r: &ImageRef,
        upstream: &Arc<Upstream>,
        opts: &Options,
        slots: &Arc<Semaphore>,
        events: &Events,
        reserved: &mut Vec<Digest>,
    ) -> Result<Event, String> {
        let image = r.to_string();
        let plan = self.walk(r, Some(upstream), &opts.platforms).await?;
        for message in &plan.warnings {
            let _ = events.send(Event::Warning {
                image: image.clone(),
                message: message.clone(),
            });
        }
        let top = plan.top.clone().ok_or("no top manifest")?;
        for d in std::iter::once(&top).chain(&plan.manifests) {
            if !self.pins.reserve(&self.cache, d) {
                return Err(format!(
                    "manifest {d} left the cache before it could be pinned"
                ));
            }
            reserved.push(d.clone());
        }
        let mut cached_bytes = 0;
        let mut missing = Vec::new();
        for (d, size) in &plan.blobs {
            if self.pins.reserve(&self.cache, d) {
                reserved.push(d.clone());
                cached_bytes += self.cache.blob_size(d).unwrap_or(*size);
            } else {
                missing.push(d.clone());
            }
        }
        let total: u64 = plan.blobs.iter().map(|(_, s)| s).sum();
        let _ = events.send(Event::Resolved {
            image: image.clone(),
            digest: top.to_string(),
            blobs: plan.blobs.len(),
            bytes: total.max(cached_bytes),
            cached_bytes,
        });
        let image_ref = &image;
        // A blob over half the budget is downloaded straight into the held
        // set: through the LRU it would push out most unpinned content, or
        // itself, before the pin could hold it.
        let max_size = self.config.max_size.as_u64();
        let declared: std::collections::HashMap<Digest, u64> = plan.blobs.iter().cloned().collect();
        let declared = &declared;
        let fetched: Vec<Result<u64, String>> = futures_util::stream::iter(missing)
            .map(|d: Digest| async move {
                let _slot = slots.acquire().await.map_err(|e| e.to_string())?;
                let size = if declared.get(&d).is_some_and(|s| s.saturating_mul(2) > max_size) {
                    self.download_held(upstream, &r.repo, &d, image_ref, events)
                        .await?
                } else {
                    self.fetch_blob(r, upstream, &d, image_ref, events).await?
                };
                if !self.pins.reserve(&self.cache, &d) {
                    return Err(format!(
                        "blob {d} left the cache before it could be pinned (is it larger than max_size?)"
                    ));
                }
                Ok((d, size))
            })
            .buffer_unordered(opts.jobs.max(1))
            .map(|r| {
                r.map(|(d, size)| {
                    reserved.push(d);
                    size
                })
            })
            .collect()
            .await;
        let mut fetched_bytes = 0;
        for f in fetched {
            fetched_bytes += f?;
        }
        self.record_tag(r, &top).await;
        let pin = Pin {
            upstream: r.upstream.clone(),
            repo: r.repo.clone(),
            tag: r.tag.clone(),
            digest: top.clone(),
            manifests: plan.manifests.clone(),
            blobs: plan.blobs.iter().map(|(d, _)| d.clone()).collect(),
            platforms: opts.platforms.iter().map(|p| p.to_string()).collect(),
            bytes: plan.manifest_bytes + cached_bytes + fetched_bytes,
            pinned_at: SystemTime::now(),
        };
        self.pins
            .put(&self.cache, pin)
            .await
            .map_err(|e| e.to_string())?;
        Ok(Event::Done {
            image,
            digest: top.to_string(),
            blobs: plan.blobs.len(),
            fetched_bytes,
            cached_bytes,
        })
    }

    /// Fills one blob through the cache (joining a pull's fill of it if
    /// one is running), reporting bytes as they arrive. Returns its size.
    async fn fetch_blob(
        &self,
        r: &ImageRef,
        upstream: &Arc<Upstream>,
        digest: &Digest,
        image: &str,
        events: &Events,
    ) -> Result<u64, String> {
        // Committed straight into the held set: the pin takes it next, and
        // through the LRU it would first evict as many unpinned bytes.
        let _held = self.cache.hold_on_commit(digest, Holder::Pin);
        for _ in 0..3 {
            // Stored already (the index may still be loading: ask the store).
            if let Some(size) = self.cache.lookup(digest).await {
                return Ok(size);
            }
            let Some(policy::Filling { fill, .. }) =
                policy::fill(&self.cache, upstream, &r.repo, digest, None)
            else {
                // Committed meanwhile (a pull got there first).
                match self.cache.blob_size(digest) {
                    Some(size) => return Ok(size),
                    None => continue,
                }
            };
            let Some(size) = fill
                .started()
                .await
                .map_err(|e| format!("blob {digest}: {e}"))?
            else {
                return fill
                    .finished()
                    .await
                    .map_err(|e| format!("blob {digest}: {e}"));
            };
            // Reading the fill as a client would shows its progress; the
            // bytes come from the fill's temp file, not a second download.
            // A disk failure fails the prefetch with the fill's own error
            // (below): there is no client to pass the rest through to, and
            // nothing would be cached.
            let mut stream = Box::pin(fill.clone().reader(0, size, self.metrics.clone()));
            let mut unreported = 0;
            while let Some(chunk) = stream.next().await {
                let chunk = match chunk {
                    Ok(chunk) => chunk,
                    Err(ReadError::DiskFailed(_)) => break,
                    Err(e) => return Err(format!("blob {digest}: {e}")),
                };
                unreported += chunk.len() as u64;
                if unreported >= PROGRESS_STEP {
                    let _ = events.send(Event::Progress {
                        image: image.to_owned(),
                        bytes: std::mem::take(&mut unreported),
                    });
                }
            }
            if unreported > 0 {
                let _ = events.send(Event::Progress {
                    image: image.to_owned(),
                    bytes: unreported,
                });
            }
            return fill
                .finished()
                .await
                .map_err(|e| format!("blob {digest}: {e}"));
        }
        Err(format!("blob {digest}: lookup did not settle"))
    }
}
