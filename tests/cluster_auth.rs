//! Replicas with `[auth]` (issue 13): a blob miss is still fetched once for
//! the fleet. The replica a client reached checks the client's credentials;
//! the owner it forwards to trusts the forwarded request because it carries
//! the cluster secret, and would otherwise refuse it (no client credentials
//! travel with a forwarded miss) and make the asker fetch it again.

mod common;

use common::cluster::replicas_with_sections;
use common::*;

const REPO: &str = "library/app";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_auth_a_blob_miss_is_fetched_once_for_the_fleet() {
    let Some(weed) = Weed::start().await else {
        return;
    };
    let hub = FakeRegistry::start().await;
    let blob = hub.add_blob(REPO, pseudo_random(31, 3 * 1024 * 1024));

    let dir = tempfile::tempdir().unwrap();
    let htpasswd = dir.path().join("htpasswd");
    std::fs::write(
        &htpasswd,
        format!("ci:{}\n", bcrypt::hash("ci-pw", 4).unwrap()),
    )
    .unwrap();
    // One signing key for every replica, so a token one issued is good on
    // the others (a load balancer sends the next request anywhere).
    let key = dir.path().join("token-key");
    std::fs::write(&key, "a-token-key-every-replica-shares-0123456789").unwrap();
    let auth = format!(
        "\n[auth]\nhtpasswd = {:?}\ntoken_key_file = {:?}\n\
         [[auth.rules]]\nrepository = \"*\"\nusers = [\"ci\"]\nallow = [\"pull\"]\n",
        htpasswd.display().to_string(),
        key.display().to_string(),
    );
    let nodes = replicas_with_sections(3, &weed, "auth", &hub, |c| c, &auth).await;

    let path = blob_path(REPO, &blob.digest);
    for (i, node) in nodes.iter().enumerate() {
        let resp = node.mirror.get(&path).await;
        assert_eq!(resp.status(), 401, "anonymous on replica {i}");
    }
    assert_eq!(hub.blob_gets(), 0, "nothing fetched for a refused client");

    let mut pulls = Vec::new();
    for i in 0..24 {
        let m = &nodes[i % 3].mirror;
        let req = m.client().get(m.url(&path)).basic_auth("ci", Some("ci-pw"));
        pulls.push(async move {
            let resp = req.send().await.expect("send");
            assert_eq!(resp.status(), 200, "pull {i}");
            read_body(resp).await.expect("body")
        });
    }
    for got in futures::future::join_all(pulls).await {
        assert!(got == blob.data, "right bytes");
    }
    assert_eq!(
        hub.blob_gets(),
        1,
        "24 authorized cold GETs over 3 replicas: one upstream GET"
    );

    // A token from one replica works on another.
    let token_url = nodes[0].mirror.url(&format!(
        "/token?service=hoard&scope=repository:{REPO}:pull"
    ));
    let resp = nodes[0]
        .mirror
        .client()
        .get(token_url)
        .basic_auth("ci", Some("ci-pw"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let json: serde_json::Value = serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap();
    let token = json["token"].as_str().expect("a token").to_owned();
    let m = &nodes[2].mirror;
    let resp = m
        .client()
        .get(m.url(&path))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "replica 0's token on replica 2");
    for node in nodes {
        node.mirror.stop().await;
    }
}
