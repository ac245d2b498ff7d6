//! hoard: a pull-through caching mirror for container registries.
//!
//! Clients (containerd, dockerd, podman, skopeo) pull through hoard; on a
//! miss it fetches from the configured upstream once, tees the stream to the
//! client and into a digest-verified on-disk cache, and afterwards serves
//! what it has seen with the upstream gone.
//!
//! # Layout
//! - [`auth`]: access control: htpasswd users, rules, hoard's own tokens.
//! - [`config`]: `mirror.toml` -> validated [`Config`], every section
//!   (`[auth]`, `[local]`, `[prefetch]`, upstreams) owned here.
//! - [`error`]: the API error, mapped once to HTTP status and OCI code.
//! - [`http`]: route table, query parameters, connection info: HTTP
//!   helpers below `server`, `admin`, `auth` and `registry`.
//! - [`metrics`]: Prometheus metrics on hoard's own registry.
//! - [`oci`]: validated digests, names, tags, references.
//! - [`registry`]: the `/v2` protocol: routing, and what to serve.
//! - [`policy`]: what a miss does: the leader of a fill fetches from the
//!   upstream, the cache only coalesces; manifest misses; the passthrough
//!   when the cache's disk fails.
//! - [`upstream`]: the client for configured registries (tokens, redirects).
//! - [`cache`]: verified blobs and tag records over the stores, in-flight
//!   fills, the index and its budget.
//! - [`storage`]: the ground floor under `cache`, `pins` and `local`: the
//!   [`storage::BlobStore`] and [`storage::Records`] traits, injected, their
//!   disk implementation (the one owner of `cache_dir`), and an S3 bucket
//!   with the disk as a tier in front (`[storage] kind = "s3"`).
//! - [`local`]: pushed repositories: uploads, manifests, records, GC.
//! - [`server`]: listeners (plain and TLS), connection limits, graceful shutdown.
//! - [`bundle`]: `hoard export` / `hoard import`: images to and from one
//!   OCI-layout tar, to carry a warmed cache to a disconnected site.
//! - [`pins`]: pinned images kept outside the budget.
//! - [`prefetch`]: fetching whole images ahead of need, readiness checks.
//! - [`admin`]: the operator API under `/_hoard/` (prefetch, pins, ls, check)
//!   (its client is in [`cli::client`]).
//! - [`malloc`]: glibc malloc settings that keep streaming buffers resident.
//! - [`logging`]: the log subscriber (colour only on a terminal, `NO_COLOR`).
//! - [`cluster`]: `[cluster]` membership, rendezvous owners of digests and
//!   one-hop forwarding of a blob miss to its owner.
//! - [`upkeep`]: jobs one replica at a time runs for all on a bucket, under a
//!   lease record: the bucket's budget for mirrored content.
//! - [`body`]: the response body every handler returns (an error aborts it).
//! - [`cli`]: the `hoard` command line, at the top (nothing imports it):
//!   argument parsing, `serve`, the offline and air-gap commands, terminal
//!   progress, the operator-API client, one typed error. `main.rs` only
//!   parses and calls [`cli::run`].

pub mod admin;
pub mod auth;
pub mod body;
pub mod bundle;
pub mod cache;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod error;
/// Entry points of the fuzz targets and their corpus replay (not API).
#[doc(hidden)]
pub mod fuzzing;
pub mod http;
pub mod local;
pub mod logging;
pub mod malloc;
pub mod metrics;
pub mod oci;
pub mod pins;
pub mod policy;
pub mod prefetch;
pub mod registry;
pub mod server;
pub mod storage;
pub mod upkeep;
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
    /// Loading local repositories' records.
    #[error("cannot open local repositories: {0}")]
    Local(#[from] local::Error),
    /// Loading the TLS certificate or key (the message names the key and file).
    #[error(transparent)]
    Tls(#[from] server::TlsError),
    /// Another process writes the cache directory.
    #[error(transparent)]
    Lock(#[from] pins::LockError),
}

/// Serves the mirror on `listener` (plain HTTP only) until `shutdown`
/// resolves, then drains for `shutdown_grace`. Tests drive the real server
/// through this; a `[tls]` section in `config` is not served here (the
/// binary uses [`run_listeners`]).
pub async fn run(
    listener: tokio::net::TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    // A closed channel: nothing will ask for a certificate reload.
    let (_, reload) = tokio::sync::mpsc::channel(1);
    run_listeners(listener, None, config, shutdown, reload).await
}

/// Serves plain HTTP on `plain` and, when `tls` is given, HTTPS on it with
/// the certificate `[tls]` names, until `shutdown` resolves; then stops
/// accepting and lets in-flight responses and fills finish within
/// `shutdown_grace`. Each message on `reload` (the binary sends one per
/// SIGHUP) reads the certificate files again without dropping connections.
///
/// The listeners are bound by the caller, so tests can bind port 0 and a
/// bad address fails before the cache is opened. The certificate is read
/// before anything else: a bad file is a start-up error naming the key.
pub async fn run_listeners(
    plain: tokio::net::TcpListener,
    tls: Option<tokio::net::TcpListener>,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
    reload: tokio::sync::mpsc::Receiver<()>,
) -> Result<(), Error> {
    let tls = match (tls, &config.tls) {
        (Some(listener), Some(t)) => Some((listener, server::TlsCerts::load(t).await?)),
        (Some(_), None) => {
            return Err(config::ConfigError::Invalid {
                key: "tls".into(),
                msg: "a TLS listener was given but there is no [tls] section with cert and key"
                    .into(),
            }
            .into())
        }
        (None, Some(_)) => {
            tracing::warn!(
                "[tls] is configured but no TLS listener was given: serving plain HTTP only"
            );
            None
        }
        (None, None) => None,
    };
    config.prefetch.validate()?;
    let metrics = Arc::new(metrics::Metrics::new());
    // One client per upstream for the whole process (connection pool and
    // token cache), shared by pulls and prefetches.
    let upstreams = Arc::new(upstream::Upstreams::new(&config, metrics.clone())?);
    // One writer per cache directory.
    let _lock = pins::CacheLock::acquire(&config.cache_dir)?;
    // The stores, built once and injected: the disk, or a bucket behind it.
    let storage = storage::Storage::open(&config.cache_dir, &config.storage)
        .await
        .map_err(cache::Error::from)?;
    // Local records and pins first: the cache must know what they hold
    // before it applies its budget to what it finds in the store.
    let loaded = local::Local::load(&*storage.records).await?;
    let pins = load_pins(&storage).await?;
    let mut held = loaded.held();
    for (digest, holders) in pins.held() {
        held.entry(digest).or_default().extend(holders);
    }
    let cache =
        cache::Cache::open_serving(&storage, config.max_size.as_u64(), metrics.clone(), &held)
            .await?;
    let local = local::Local::open(
        loaded,
        config.local.clone(),
        storage.records.clone(),
        cache.clone(),
        metrics.clone(),
        config.cluster.as_ref().map(|c| c.node.clone()),
    )
    .await?;
    local.spawn_background();
    // One node at a time keeps the bucket's budget (`[storage] bucket_max_size`).
    let upkeep = upkeep::Upkeep::from_config(&config, &storage).map(upkeep::Upkeep::spawn);
    let limits = server::Limits::from_config(&config);
    let auth = auth::Auth::from_config(config.auth.as_ref(), metrics.clone())?;
    let engine = Arc::new(prefetch::Prefetcher::new(
        config.clone(),
        upstreams.clone(),
        cache.clone(),
        pins.clone(),
        metrics.clone(),
    ));
    let cluster = config
        .cluster
        .as_ref()
        .map(cluster::Cluster::new)
        .transpose()?;
    let mut registry =
        registry::Registry::new(config, upstreams, cache.clone(), local, metrics.clone())
            .with_auth(auth.clone())
            .with_pins(pins.clone());
    let mut membership = None;
    if let Some(c) = cluster {
        tracing::info!(node = c.me(), "cluster mode: blob misses and stale tags go to their owner, upload requests to their session's node");
        membership = Some(c.spawn());
        registry = registry.with_cluster(c);
    }
    let registry = Arc::new(registry);
    let admin = Arc::new(admin::Admin::new(engine.clone()).with_auth(auth));
    let scheduled = prefetch::schedule::spawn(engine);
    if let Ok(addr) = plain.local_addr() {
        tracing::info!(%addr, scheme = "http", "hoard listening");
    }
    if let Some(addr) = tls.as_ref().and_then(|(l, _)| l.local_addr().ok()) {
        tracing::info!(%addr, scheme = "https", "hoard listening");
    }
    let listeners = server::Listeners { plain, tls };
    let shared = server::Shared {
        registry,
        admin: Some(admin),
        cache,
        metrics,
    };
    server::serve(listeners, shared, limits, shutdown, reload).await;
    if let Some(task) = scheduled {
        task.abort();
    }
    if let Some(task) = membership {
        task.abort();
    }
    if let Some(task) = upkeep {
        task.abort();
    }
    Ok(())
}

/// Reads the pin records of `storage`.
pub async fn load_pins(storage: &storage::Storage) -> Result<Arc<pins::Pins>, Error> {
    let pins = pins::Pins::load(storage.records.clone())
        .await
        .map_err(cache::Error::from)?;
    Ok(Arc::new(pins))
}
