//! A lease over the records store: of the replicas on one bucket, one at a
//! time holds a job's lease and runs the job.
//!
//! The lease is one small record, `{"holder": <node>, "until": <unix s>}`.
//! Taking it is a create-only write when it is absent, and a
//! compare-and-swap against the version read when it expired or is ours
//! (renewal), so of two nodes that see it free exactly one wins: the
//! records store's guarantees (`If-None-Match: *` and `If-Match` on S3)
//! are the only coordination, no other service. Clocks matter only to
//! within the lease's length: a node whose clock runs ahead by more than a
//! lease takes it early, and the job must stay safe with two holders for a
//! moment (the bucket budget is: it deletes only what it re-checked).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::storage::{RecordError, RecordKey, Records};

/// What the lease record holds.
#[derive(Debug, Serialize, Deserialize)]
struct Held {
    holder: String,
    /// Unix seconds after which another node may take it.
    until: u64,
}

/// One node's handle on one job's lease.
pub struct Lease {
    records: Arc<dyn Records>,
    key: RecordKey,
    node: String,
    length: Duration,
}

impl Lease {
    /// `node`'s handle on the lease `key`, each take good for `length`.
    pub fn new(records: Arc<dyn Records>, key: RecordKey, node: &str, length: Duration) -> Lease {
        Lease {
            records,
            key,
            node: node.to_owned(),
            length,
        }
    }

    /// Takes or renews the lease at `now` (unix seconds). `Ok(true)`: this
    /// node holds it until `now + length`; `Ok(false)`: another node
    /// holds it, or won the race for it.
    pub async fn take(&self, now: u64) -> Result<bool, RecordError> {
        let value = Bytes::from(
            serde_json::to_vec(&Held {
                holder: self.node.clone(),
                until: now.saturating_add(self.length.as_secs()),
            })
            .map_err(|e| RecordError::Io(std::io::Error::other(e)))?,
        );
        let Some(current) = self.records.get(&self.key).await? else {
            return match self.records.create(&self.key, value).await {
                Ok(_) => Ok(true),
                Err(RecordError::Exists(_)) => Ok(false),
                Err(e) => Err(e),
            };
        };
        // A record that does not parse is treated as expired: it cannot
        // name a holder, and leaving it would stop the job for good.
        let free = match serde_json::from_slice::<Held>(&current.bytes) {
            Ok(held) => held.holder == self.node || held.until < now,
            Err(e) => {
                tracing::warn!(key = %self.key, error = %e, "unreadable lease record; taking it over");
                true
            }
        };
        if !free {
            return Ok(false);
        }
        match self
            .records
            .replace(&self.key, value, &current.version)
            .await
        {
            Ok(_) => Ok(true),
            Err(RecordError::Changed(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The node holding the lease at `now`, if any.
    pub async fn holder(&self, now: u64) -> Result<Option<String>, RecordError> {
        let Some(current) = self.records.get(&self.key).await? else {
            return Ok(None);
        };
        Ok(serde_json::from_slice::<Held>(&current.bytes)
            .ok()
            .filter(|h| h.until >= now)
            .map(|h| h.holder))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::s3::{Bucket, Guarantees, S3Records};

    fn memory() -> Arc<dyn Records> {
        let store = Arc::new(object_store::memory::InMemory::new());
        Arc::new(S3Records::new(Bucket::new(store, None, Guarantees::FULL)))
    }

    fn lease(records: &Arc<dyn Records>, node: &str) -> Lease {
        let key = RecordKey::lease("upkeep").expect("key");
        Lease::new(records.clone(), key, node, Duration::from_secs(60))
    }

    #[tokio::test]
    async fn one_node_holds_it_until_it_expires_then_another_takes_it() {
        let records = memory();
        let (a, b) = (lease(&records, "a"), lease(&records, "b"));
        assert!(a.take(1000).await.unwrap(), "free: a takes it");
        assert!(!b.take(1001).await.unwrap(), "held by a");
        assert!(a.take(1030).await.unwrap(), "a renews");
        assert!(!b.take(1089).await.unwrap(), "the renewal counts");
        assert_eq!(b.holder(1089).await.unwrap().as_deref(), Some("a"));
        assert!(b.take(1091).await.unwrap(), "expired: b takes it");
        assert!(!a.take(1092).await.unwrap(), "a lost it");
        assert_eq!(a.holder(1092).await.unwrap().as_deref(), Some("b"));
    }

    #[tokio::test]
    async fn of_two_nodes_racing_for_a_free_lease_exactly_one_wins() {
        let records = memory();
        for round in 0..20u64 {
            let now = 10_000 * (round + 1);
            let nodes: Vec<Lease> = (0..4).map(|i| lease(&records, &format!("n{i}"))).collect();
            let won = futures_util::future::join_all(nodes.iter().map(|l| l.take(now))).await;
            let winners = won.into_iter().filter(|w| *w.as_ref().unwrap()).count();
            // Round 0 races the create; later rounds race the replace of
            // an expired record.
            assert_eq!(winners, 1, "round {round}");
        }
    }

    #[tokio::test]
    async fn an_unreadable_record_is_taken_over() {
        let records = memory();
        let key = RecordKey::lease("upkeep").unwrap();
        records
            .put(&key, Bytes::from_static(b"{nope"))
            .await
            .unwrap();
        assert!(lease(&records, "a").take(5).await.unwrap());
    }
}
