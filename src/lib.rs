//! hoard: a pull-through caching mirror for container registries.
//!
//! Clients (containerd, dockerd, podman, skopeo) pull through hoard; on a
//! miss it fetches from the configured upstream once, tees the stream to the
//! client and into a digest-verified on-disk cache, and afterwards serves
//! what it has seen with the upstream gone.
//!
//! # Layout
//! - [`config`]: `mirror.toml` -> validated [`Config`].
//! - [`error`]: the API error, mapped once to HTTP status and OCI code.
//! - [`metrics`]: Prometheus metrics on hoard's own registry.
//! - [`oci`]: validated digests, names, tags, references.
//! - [`registry`]: the `/v2` protocol: routing and the cache policy.
//! - [`upstream`]: the client for configured registries (tokens, redirects).
//! - [`cache`]: content-addressed store, tag records, in-flight fills, index.
//! - [`server`]: accept loop and graceful shutdown.

pub mod body;
pub mod cache;
pub mod commands;
pub mod config;
pub mod error;
pub mod metrics;
pub mod oci;
pub mod registry;
pub mod server;
pub mod upstream;

use std::future::Future;
use std::sync::Arc;

pub use config::Config;

/// Why hoard could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Configuration.
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    /// Opening the cache.
    #[error("cannot open the cache directory: {0}")]
    Cache(#[from] cache::Error),
}

/// Serves the mirror on `listener` until `shutdown` resolves.
pub async fn run(
    listener: tokio::net::TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let metrics = Arc::new(metrics::Metrics::new());
    let upstreams = upstream::Upstreams::new(&config, metrics.clone())?;
    let cache =
        cache::Cache::open(&config.cache_dir, config.max_size.as_u64(), metrics.clone()).await?;
    let registry = Arc::new(registry::Registry::new(config, upstreams, cache, metrics));
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "hoard listening");
    }
    server::serve(listener, registry, shutdown).await;
    Ok(())
}
