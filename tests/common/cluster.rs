//! Hoard replicas on one bucket (issue 13): real in-process nodes, each with
//! its own disk tier, `[cluster]` naming all of them, one SeaweedFS bucket.

use std::time::Duration;

use tokio::net::TcpListener;

use super::{Cfg, FakeRegistry, Server, TestMirror, Weed, DEADLINE};

/// The shared secret every replica reads from its file.
pub const CLUSTER_SECRET: &str = "cluster-test-secret-0123456789";

/// A replica: the mirror, and the directory with its disk tier and the
/// cluster secret's file.
pub struct Replica {
    pub mirror: TestMirror,
    _dir: tempfile::TempDir,
}

/// `n` replicas named `hoard-0`.. on `weed`'s bucket under `prefix`, every
/// one listing all of them as peers, in front of `hub` as `docker.io`.
pub async fn replicas(n: usize, weed: &Weed, prefix: &str, hub: &FakeRegistry) -> Vec<Replica> {
    replicas_with(n, weed, prefix, hub, |cfg| cfg).await
}

/// [`replicas`], each config changed by `tweak` first (a `tag_ttl`, say).
pub async fn replicas_with(
    n: usize,
    weed: &Weed,
    prefix: &str,
    hub: &FakeRegistry,
    tweak: impl Fn(Cfg) -> Cfg,
) -> Vec<Replica> {
    replicas_with_sections(n, weed, prefix, hub, tweak, "").await
}

/// [`replicas_with`], with `sections` (TOML tables, an `[auth]` say)
/// appended to every replica's config.
pub async fn replicas_with_sections(
    n: usize,
    weed: &Weed,
    prefix: &str,
    hub: &FakeRegistry,
    tweak: impl Fn(Cfg) -> Cfg,
    sections: &str,
) -> Vec<Replica> {
    let mut listeners = Vec::new();
    for _ in 0..n {
        listeners.push(TcpListener::bind("127.0.0.1:0").await.unwrap());
    }
    let peers: Vec<String> = listeners
        .iter()
        .enumerate()
        .map(|(i, l)| format!("\"hoard-{i}\" = \"http://{}\"", l.local_addr().unwrap()))
        .collect();
    // One at a time: each start probes the bucket, and starts side by side
    // on a busy machine were seen to leave one replica not answering.
    let mut out = Vec::new();
    for (i, listener) in listeners.into_iter().enumerate() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("cluster-secret");
        std::fs::write(&secret, CLUSTER_SECRET).unwrap();
        let cluster = format!(
            "\n[cluster]\nnode = \"hoard-{i}\"\npeers = {{ {} }}\nrefresh = \"200ms\"\nsecret_file = \"{}\"\n",
            peers.join(", "),
            secret.display()
        );
        let cfg = tweak(Cfg::new(&dir.path().join("cache")).upstream("docker.io", &hub.url()));
        let text = cfg.toml() + &weed.storage_toml(prefix) + &cluster + sections;
        let mut mirror = TestMirror::start_on(listener, &text).await;
        answering(&mut mirror).await;
        out.push(Replica { mirror, _dir: dir });
    }
    out
}

/// Waits until `mirror` answers `/v2/`; fails with `run`'s own error if it
/// ended instead (a start-up failure), or after the deadline.
async fn answering(mirror: &mut TestMirror) {
    let url = mirror.url("/v2/");
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let resp = mirror.client().get(&url).send().await;
        // 401: serving, with `[auth]` refusing an anonymous `/v2/`.
        if resp.is_ok_and(|r| r.status() == 200 || r.status() == 401) {
            return;
        }
        if let Some(why) = mirror.ended().await {
            panic!("a replica at {url} ended while starting: {why}");
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {DEADLINE:?} waiting for a replica to answer {url}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
