//! The `[prefetch]` schedule: images the running server keeps prefetched
//! and pinned, refreshed every `interval` (the table itself is read by
//! `config::prefetch`).

use std::sync::Arc;

use super::{Options, Prefetcher};

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
