//! Jobs that one node at a time runs for all replicas on a bucket: today
//! the bucket's budget for mirrored content (`[storage] bucket_max_size`).
//!
//! - [`lease`]: who runs them, by a lease record with conditional writes.
//! - [`budget`]: what to evict, decided from a listing and what is held.
//!
//! Every replica runs the loop; only the lease holder does the work, so
//! the bucket is listed once per interval by the fleet, not once per
//! replica, and two nodes never pick evictions from different views. A
//! holder that dies stops renewing; another takes over once the lease
//! expired (two intervals and a half minute).
//!
//! Layers: `lib` -> `upkeep` -> (`pins`, `local`, `storage`, `config`).

pub mod budget;
pub mod lease;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use crate::cache::index::now_secs;
use crate::config::Config;
use crate::oci::Digest;
use crate::storage::{BlobStore, RecordError, RecordKey, Records, Storage};

pub use lease::Lease;

/// Why a round failed. Logged; the next round tries again.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The lease record could not be read or written.
    #[error("upkeep lease: {0}")]
    Lease(#[from] RecordError),
    /// Listing or deleting in the bucket failed.
    #[error("bucket: {0}")]
    Bucket(#[from] std::io::Error),
    /// The pin records could not be read.
    #[error("pin records: {0}")]
    Pins(std::io::Error),
    /// The local repositories' records could not be read.
    #[error("local repository records: {0}")]
    Local(#[from] crate::local::Error),
}

/// What a round did, when this node held the lease.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Swept {
    /// Bytes of mirrored content in the bucket before the round.
    pub budgeted: u64,
    /// Bytes of held (pinned, pushed) content, outside the budget.
    pub held: u64,
    /// Blobs removed from the bucket.
    pub evicted: usize,
    /// Their bytes.
    pub freed: u64,
}

/// The bucket upkeep of one node.
pub struct Upkeep {
    records: Arc<dyn Records>,
    bucket: Arc<dyn BlobStore>,
    lease: Lease,
    budget: u64,
    grace: Duration,
    interval: Duration,
}

impl Upkeep {
    /// The upkeep `config` asks for: `None` without a bucket or without
    /// `bucket_max_size` (then nothing is ever removed from the bucket).
    /// The lease names this node by `[cluster] node`, or by host name and
    /// process id when there is no `[cluster]`.
    pub fn from_config(config: &Config, storage: &Storage) -> Option<Upkeep> {
        let bucket = storage.bucket.clone()?;
        let budget = config.storage.bucket_max_size?.as_u64();
        let node = match &config.cluster {
            Some(c) => c.node.clone(),
            None => {
                let host = crate::config::cluster::host_name();
                let host = if host.is_empty() {
                    "hoard".into()
                } else {
                    host
                };
                format!("{host}-{}", std::process::id())
            }
        };
        let interval = config.storage.bucket_check_interval;
        let key = RecordKey::lease("upkeep")?;
        let length = interval * 2 + Duration::from_secs(30);
        Some(Upkeep {
            records: storage.records.clone(),
            bucket,
            lease: Lease::new(storage.records.clone(), key, &node, length),
            budget,
            grace: config.storage.bucket_grace,
            interval,
        })
    }

    /// One round: take or renew the lease, and when held, bring the
    /// bucket's mirrored content within the budget. `Ok(None)` when
    /// another node holds the lease.
    pub async fn round(&self) -> Result<Option<Swept>, Error> {
        if !self.lease.take(now_secs()).await? {
            return Ok(None);
        }
        let listing = self.bucket.list().await?.blobs;
        let held = self.held().await?;
        let plan = budget::plan(
            listing,
            &held,
            self.budget,
            now_secs(),
            self.grace.as_secs(),
        );
        let mut swept = Swept {
            budgeted: plan.budgeted,
            held: plan.held,
            ..Swept::default()
        };
        if plan.evict.is_empty() {
            return Ok(Some(swept));
        }
        // Read again what is held just before deleting: a pin or a push
        // recorded since the listing keeps its blobs.
        let held = self.held().await?;
        for blob in plan.evict {
            if held.contains(&blob.digest) {
                continue;
            }
            self.bucket.remove(&blob.digest).await?;
            swept.evicted += 1;
            swept.freed += blob.size;
        }
        Ok(Some(swept))
    }

    /// What pins and local repositories hold, read from the records (not
    /// from this node's memory: another replica may have pinned or pushed).
    async fn held(&self) -> Result<HashSet<Digest>, Error> {
        let pins = crate::pins::Pins::load(self.records.clone())
            .await
            .map_err(Error::Pins)?;
        let local = crate::local::Local::load(&*self.records).await?;
        let mut held: HashSet<Digest> = pins.held().into_keys().collect();
        held.extend(local.held().into_keys());
        Ok(held)
    }

    /// Runs rounds every `bucket_check_interval` until aborted.
    pub fn spawn(self) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(self.interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                match self.round().await {
                    Ok(None) => {
                        tracing::debug!("bucket budget: another node holds the upkeep lease")
                    }
                    Ok(Some(s)) if s.evicted > 0 => tracing::info!(
                        evicted = s.evicted,
                        freed = s.freed,
                        budgeted = s.budgeted,
                        budget = self.budget,
                        held = s.held,
                        "bucket budget: evicted the oldest mirrored blobs"
                    ),
                    Ok(Some(s)) => tracing::debug!(
                        budgeted = s.budgeted,
                        budget = self.budget,
                        held = s.held,
                        "bucket budget: within the budget"
                    ),
                    Err(e) => tracing::warn!(
                        error = %e,
                        "bucket budget round failed; retrying next interval (check the bucket's reachability and credentials)"
                    ),
                }
            }
        })
    }
}
