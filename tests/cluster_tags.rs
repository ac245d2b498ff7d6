//! The revalidation of a tag in a cluster (issue 13, item 3): 150 pulls of
//! one tag (GET and HEAD, round-robin over three replicas) cost the upstream
//! exactly one manifest request when the tag is new, and exactly one more
//! when it has gone stale: the tag's owner asks, the other replicas ask the
//! owner; with the upstream down every replica serves the tag stale; with
//! the owner gone, the next owner asks once.

mod common;

use std::time::Duration;

use common::*;

const REPO: &str = "library/tagged";

/// Requests the upstream saw for the manifest of `tag`: (GETs, HEADs).
fn tag_requests(hub: &FakeRegistry, tag: &str) -> (usize, usize) {
    let suffix = format!("/manifests/{tag}");
    let seen: Vec<_> = hub
        .log()
        .into_iter()
        .filter(|s| s.kind == Kind::Manifest && s.path.ends_with(&suffix))
        .collect();
    let gets = seen
        .iter()
        .filter(|s| s.method == hyper::Method::GET)
        .count();
    let heads = seen
        .iter()
        .filter(|s| s.method == hyper::Method::HEAD)
        .count();
    (gets, heads)
}

/// `n` pulls of `tag`, request `i` on replica `i % 3`, GET and HEAD in
/// turn, all at once; each must answer 200 with the manifest's digest (and
/// its bytes for a GET).
async fn pull_tag_everywhere(nodes: &[Replica], tag: &str, n: usize, image: &Image) {
    let path = manifest_path(REPO, tag);
    let pulls: Vec<_> = (0..n)
        .map(|i| {
            let m = &nodes[i % nodes.len()].mirror;
            let req = if i % 2 == 0 {
                m.client().get(m.url(&path))
            } else {
                m.client().head(m.url(&path))
            };
            tokio::spawn(async move {
                let resp = req.send().await.expect("send");
                let status = resp.status().as_u16();
                let digest = header(&resp, "Docker-Content-Digest");
                (status, digest, resp.bytes().await.expect("body"))
            })
        })
        .collect();
    for (i, p) in pulls.into_iter().enumerate() {
        let (status, digest, body) = tokio::time::timeout(DEADLINE, p)
            .await
            .expect("pull finished")
            .expect("pull task");
        assert_eq!(
            status,
            200,
            "pull {i} on replica {}: {body:?}",
            i % nodes.len()
        );
        assert_eq!(digest, image.digest, "pull {i}");
        if i % 2 == 0 {
            assert!(body == image.manifest, "pull {i}: wrong manifest bytes");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tag_is_revalidated_by_its_owner_once_for_the_fleet() {
    let Some(weed) = Weed::start().await else {
        return;
    };
    let hub = FakeRegistry::start().await;
    let image = hub.add_simple_image(REPO, "v1", 70);
    // Long enough for 150 pulls on a busy machine, short enough to wait out.
    let ttl = Duration::from_secs(5);
    let mut nodes = replicas_with(3, &weed, "owners-tags", &hub, |c| c.tag_ttl("5s")).await;

    // A tag no replica has seen: one upstream GET, fleet-wide.
    pull_tag_everywhere(&nodes, "v1", 150, &image).await;
    assert_eq!(
        tag_requests(&hub, "v1"),
        (1, 0),
        "150 pulls of a new tag over 3 replicas: one upstream GET, no HEAD"
    );

    // Once stale everywhere: one revalidating HEAD, by the tag's owner.
    tokio::time::sleep(ttl + Duration::from_millis(300)).await;
    pull_tag_everywhere(&nodes, "v1", 150, &image).await;
    assert_eq!(
        tag_requests(&hub, "v1"),
        (1, 1),
        "150 pulls of a stale tag over 3 replicas: one upstream HEAD"
    );

    // Stale again, the upstream down: every replica serves the tag stale
    // (the owner could not revalidate it, the others pass that on).
    tokio::time::sleep(ttl + Duration::from_millis(300)).await;
    hub.go_down().await;
    for (i, n) in nodes.iter().enumerate() {
        let resp = n.mirror.get(&manifest_path(REPO, "v1")).await;
        assert_eq!(resp.status(), 200, "replica {i}, upstream down");
        assert!(
            header(&resp, "Warning").starts_with("110"),
            "replica {i}: stale"
        );
        assert!(resp.bytes().await.unwrap() == image.manifest, "replica {i}");
    }
    hub.come_up().await;

    // The owner goes: the two left agree on another owner, which
    // revalidates the (still stale) tag once for both.
    let names = ["hoard-0", "hoard-1", "hoard-2"];
    let owner = hoard::cluster::hash::owner(&format!("docker.io/{REPO}:v1"), names).unwrap();
    let gone: usize = owner["hoard-".len()..].parse().unwrap();
    nodes.remove(gone).mirror.stop().await;
    for n in &nodes {
        let (client, url) = (
            n.mirror.client().clone(),
            n.mirror.url("/_hoard/cluster/ping"),
        );
        wait_for(
            "the replicas left to see two members",
            || {
                let (client, url) = (client.clone(), url.clone());
                async move {
                    let resp = client
                        .get(&url)
                        .header("x-hoard-cluster-secret", CLUSTER_SECRET)
                        .send()
                        .await;
                    let Ok(resp) = resp else { return false };
                    let body = resp.bytes().await.unwrap_or_default();
                    let body: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                    body["members"].as_array().is_some_and(|m| m.len() == 2)
                }
            },
            || url.clone(),
        )
        .await;
    }
    pull_tag_everywhere(&nodes, "v1", 60, &image).await;
    assert_eq!(
        tag_requests(&hub, "v1"),
        (1, 2),
        "the owner gone: the next owner revalidates the stale tag once for the two left"
    );

    // The owner's answer is the upstream's: a tag it does not have is a
    // 404 on every replica.
    for n in &nodes {
        let resp = n.mirror.get(&manifest_path(REPO, "nope")).await;
        assert_oci_error(resp, 404, &["MANIFEST_UNKNOWN"]).await;
    }
    assert_eq!(
        tag_requests(&hub, "nope").0,
        nodes.len(),
        "an unknown tag is not recorded: each pull asks again (through the owner)"
    );

    for n in nodes {
        n.mirror.stop().await;
    }
}
