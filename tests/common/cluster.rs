//! Hoard replicas on one bucket (issue 13): real in-process nodes, each with
//! its own disk tier, `[cluster]` naming all of them, one SeaweedFS bucket.

use tokio::net::TcpListener;

use super::{wait_for, Cfg, FakeRegistry, Server, TestMirror, Weed};

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
    let mut listeners = Vec::new();
    for _ in 0..n {
        listeners.push(TcpListener::bind("127.0.0.1:0").await.unwrap());
    }
    let peers: Vec<String> = listeners
        .iter()
        .enumerate()
        .map(|(i, l)| format!("\"hoard-{i}\" = \"http://{}\"", l.local_addr().unwrap()))
        .collect();
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
        let text = cfg.toml() + &weed.storage_toml(prefix) + &cluster;
        out.push(Replica {
            mirror: TestMirror::start_on(listener, &text).await,
            _dir: dir,
        });
    }
    for r in &out {
        let (client, url) = (r.mirror.client().clone(), r.mirror.url("/v2/"));
        wait_for(
            "a replica to answer /v2/",
            || {
                let (client, url) = (client.clone(), url.clone());
                async move {
                    client
                        .get(&url)
                        .send()
                        .await
                        .is_ok_and(|r| r.status() == 200)
                }
            },
            || url.clone(),
        )
        .await;
    }
    out
}
