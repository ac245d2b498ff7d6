//! Cluster mode: replicas on one bucket that agree which of them fetches a
//! blob or revalidates a tag, so N replicas cost the upstream one `GET` per
//! blob and one `HEAD` per stale tag, not N; and that hand an upload
//! session's requests to the node holding it.
//!
//! - [`hash`]: rendezvous hashing, the owner of a key among the members.
//! - [`auth`]: the shared secret and the headers that carry it.
//! - [`peer`]: the HTTP client between nodes.
//! - `forward`: asking a tag's owner to revalidate it, and handing an
//!   upload session's request to the node that holds the session.
//!
//! Membership is the configured static peers plus the addresses of a DNS
//! name (a Kubernetes headless Service), re-resolved every `refresh`; a
//! peer counts while it answers an authenticated `GET` of [`PING_PATH`]
//! with its name. Every node computes owners from its own view; views
//! that differ for a moment cost at most an extra upstream fetch, never
//! a wrong byte (the bucket is content-addressed and verified).
//!
//! Layers: `policy` and `registry` -> `cluster` -> (`config`, `http`).

pub mod auth;
mod forward;
pub mod hash;
pub mod peer;

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use bytes::Bytes;

pub use auth::{admit, Caller, Refused, Secret};
pub use forward::TagAnswer;
pub use peer::PeerError;

use crate::config::{ClusterConfig, ConfigError};

/// The operator path a peer's health is checked on.
pub const PING_PATH: &str = "/_hoard/cluster/ping";
/// [`PING_PATH`] after `/_hoard/`, as routes see it.
pub const PING_REST: &str = "cluster/ping";

/// A member other than this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Its name (`[cluster] node` on that node).
    pub name: String,
    /// Its base URL (`http://host:port`).
    pub base: String,
}

/// This node's view of the cluster and its client to the others.
pub struct Cluster {
    me: String,
    secret: Secret,
    client: peer::PeerClient,
    static_peers: Vec<Member>,
    dns: Option<(String, u16)>,
    refresh: Duration,
    /// The peers that answered the last ping round, by name. A std lock:
    /// held only to clone or replace the map, never across an `.await`.
    healthy: RwLock<BTreeMap<String, String>>,
}

impl Cluster {
    /// Builds the cluster view from `[cluster]`, reading the secret.
    /// Static peers count as healthy until a ping says otherwise, so
    /// nodes agree from the start.
    pub fn new(cfg: &ClusterConfig) -> Result<Arc<Cluster>, ConfigError> {
        let secret = Secret::new(cfg.secret()?);
        let static_peers: Vec<Member> = cfg
            .peers
            .iter()
            .filter(|(name, _)| **name != cfg.node)
            .map(|(name, url)| Member {
                name: name.clone(),
                base: url.trim_end_matches('/').to_owned(),
            })
            .collect();
        let healthy = static_peers
            .iter()
            .map(|m| (m.name.clone(), m.base.clone()))
            .collect();
        Ok(Arc::new(Cluster {
            me: cfg.node.clone(),
            client: peer::PeerClient::new(secret.clone(), cfg.node.clone()),
            secret,
            static_peers,
            dns: cfg.dns.clone().zip(cfg.port),
            refresh: cfg.refresh,
            healthy: RwLock::new(healthy),
        }))
    }

    /// This node's name.
    pub fn me(&self) -> &str {
        &self.me
    }

    /// The shared secret, to check requests with.
    pub fn secret(&self) -> &Secret {
        &self.secret
    }

    /// Starts the membership loop: resolve and ping every `refresh`. It
    /// holds only a weak reference, so it ends when the server drops the
    /// cluster.
    pub fn spawn(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let weak: Weak<Cluster> = Arc::downgrade(self);
        let every = self.refresh;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(cluster) = weak.upgrade() else {
                    return;
                };
                cluster.refresh().await;
            }
        })
    }

    /// One round: the candidates (static peers and the DNS name's
    /// addresses), each pinged; those that answer with a name other than
    /// ours become the healthy set.
    pub async fn refresh(&self) {
        let mut candidates: Vec<(Option<String>, String)> = self
            .static_peers
            .iter()
            .map(|m| (Some(m.name.clone()), m.base.clone()))
            .collect();
        if let Some((name, port)) = &self.dns {
            match tokio::net::lookup_host((name.as_str(), *port)).await {
                Ok(addrs) => candidates.extend(addrs.map(|a| (None, format!("http://{a}")))),
                Err(e) => tracing::warn!(dns = %name, error = %e, "cannot resolve cluster peers"),
            }
        }
        let pings = candidates.into_iter().map(|(name, base)| async move {
            let url = format!("{base}{PING_PATH}");
            match self.client.get_bytes(&url).await {
                Ok(body) => match ping_name(&body) {
                    Some(said) if name.as_ref().is_none_or(|n| *n == said) => Some((said, base)),
                    said => {
                        tracing::warn!(%base, expected = ?name, ?said, "peer answered with another name");
                        None
                    }
                },
                Err(e) => {
                    tracing::debug!(%base, error = %e, "peer did not answer its ping");
                    None
                }
            }
        });
        let healthy: BTreeMap<String, String> = futures_util::future::join_all(pings)
            .await
            .into_iter()
            .flatten()
            .filter(|(name, _)| *name != self.me)
            .collect();
        let mut current = self.healthy.write().unwrap_or_else(|p| p.into_inner());
        if *current != healthy {
            tracing::info!(node = %self.me, peers = ?healthy.keys().collect::<Vec<_>>(), "cluster membership changed");
            *current = healthy;
        }
    }

    /// The member that owns `key` (a digest) among this node and its
    /// healthy peers; `None` when it is this node.
    pub fn owner(&self, key: &str) -> Option<Member> {
        let healthy = self.healthy.read().unwrap_or_else(|p| p.into_inner());
        let names = healthy.keys().map(String::as_str).chain([self.me.as_str()]);
        let owner = hash::owner(key, names)?;
        if owner == self.me {
            return None;
        }
        let base = healthy.get(owner)?.clone();
        Some(Member {
            name: owner.to_owned(),
            base,
        })
    }

    /// Takes `member` out of the healthy set until the next ping round
    /// answers for it: a request to it found it unreachable. Without this,
    /// every retry before that round would forward to the dead node again,
    /// fail, and fetch from the upstream itself; with it, the survivors
    /// agree on the next owner at once (each computes it without the dead
    /// one), so a dead owner costs the fleet one more upstream fetch.
    pub fn suspect(&self, member: &Member) {
        let mut healthy = self.healthy.write().unwrap_or_else(|p| p.into_inner());
        if healthy.get(&member.name) == Some(&member.base) {
            healthy.remove(&member.name);
            tracing::warn!(node = %self.me, peer = %member.name, "peer unreachable; it owns nothing until it answers a ping again");
        }
    }

    /// The answer to a peer's ping: this node's name and the members it
    /// sees (itself included), e.g. `{"node":"a","members":["a","b"]}`.
    pub fn ping_body(&self) -> Vec<u8> {
        let mut members: Vec<String> = self
            .healthy
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .cloned()
            .collect();
        members.push(self.me.clone());
        members.sort();
        serde_json::json!({ "node": self.me, "members": members })
            .to_string()
            .into_bytes()
    }

    /// `GET`s a blob from its owner as a forwarded request, so the owner
    /// serves it itself: from its store, or through its own single-flight
    /// fill from the upstream named `ns`. Returns the size (when sent) and
    /// the body; an error means nothing was received.
    pub async fn get_blob(
        &self,
        owner: &Member,
        ns: &str,
        repo: &str,
        digest: &str,
    ) -> Result<
        (
            Option<u64>,
            impl futures_util::Stream<Item = Result<Bytes, PeerError>> + Send + 'static,
        ),
        PeerError,
    > {
        let url = format!("{}/v2/{repo}/blobs/{digest}?ns={ns}", owner.base);
        let resp = self.client.get(&url, true).await?;
        let size = crate::http::content_length(resp.headers());
        Ok((size, peer::body_stream(resp.into_body())))
    }
}

/// The name in a ping's answer.
fn ping_name(body: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    v.get("node")?.as_str().map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_is_none_for_own_keys_and_a_peer_otherwise() {
        std::env::set_var("HOARD_TEST_CLUSTER_SECRET_MOD", "0123456789abcdef");
        let cfg: ClusterConfig = toml::from_str(
            "node = \"a\"\nsecret_env = \"HOARD_TEST_CLUSTER_SECRET_MOD\"\n\
             peers = { a = \"http://127.0.0.1:1\", b = \"http://127.0.0.1:2/\" }",
        )
        .unwrap();
        let c = Cluster::new(&cfg).unwrap();
        let (mut mine, mut theirs) = (0, 0);
        for i in 0..200 {
            let key = format!("sha256:{i:064x}");
            match c.owner(&key) {
                None => mine += 1,
                Some(m) => {
                    assert_eq!(m.name, "b");
                    assert_eq!(m.base, "http://127.0.0.1:2");
                    theirs += 1;
                }
            }
            let expect_me = hash::owner(&key, ["a", "b"]) == Some("a");
            assert_eq!(c.owner(&key).is_none(), expect_me);
        }
        assert!(mine > 50 && theirs > 50, "{mine} {theirs}");
        assert_eq!(ping_name(&c.ping_body()).as_deref(), Some("a"));
    }
}
