//! Access control against the real server: anonymous pull by default,
//! pulls and pushes that need credentials, the Basic and Bearer challenges
//! and hoard's own `/token`, scope intersection, identical answers for an
//! unknown user and a wrong password, the failed-login limit, and tokens
//! that are expired or not hoard's.

mod common;

use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use common::*;

/// `alice` may pull everything and push under `team`; `bob` may only pull;
/// `root` may do anything; anonymous may pull `public`.
const RULES: &str = r#"
[[auth.rules]]
repository = "public"
users = ["anonymous", "*"]
allow = ["pull"]
[[auth.rules]]
repository = "*"
users = ["alice", "bob"]
allow = ["pull"]
[[auth.rules]]
repository = "team"
users = ["alice"]
allow = ["push"]
[[auth.rules]]
repository = "*"
users = ["root"]
allow = ["pull", "push", "delete", "admin"]
"#;

const USERS: [(&str, &str); 3] = [("alice", "a-pw"), ("bob", "b-pw"), ("root", "r-pw")];

/// Credentials a test request carries.
#[derive(Clone, Copy)]
enum As<'a> {
    Anonymous,
    /// Basic, with the user's password from [`USERS`].
    User(&'a str),
    Token(&'a str),
}

struct AuthEnv {
    hub: FakeRegistry,
    mirror: TestMirror,
    dir: tempfile::TempDir,
}

impl AuthEnv {
    /// A mirror with `auth` (TOML lines of the `[auth]` table, rules
    /// included) and an htpasswd file of [`USERS`].
    async fn start(auth: &str) -> AuthEnv {
        let hub = FakeRegistry::start().await;
        let dir = tempfile::tempdir().unwrap();
        let htpasswd = dir.path().join("htpasswd");
        let lines: Vec<String> = USERS
            .iter()
            .map(|(u, p)| format!("{u}:{}", bcrypt::hash(p, 4).unwrap()))
            .collect();
        std::fs::write(&htpasswd, lines.join("\n")).unwrap();
        let cache = dir.path().join("cache");
        let toml = format!(
            "{}\n[auth]\nhtpasswd = {:?}\n{auth}\n",
            Cfg::new(&cache).upstream("docker.io", &hub.url()).toml(),
            htpasswd.display().to_string(),
        );
        let mirror = TestMirror::start(&toml).await;
        AuthEnv { hub, mirror, dir }
    }

    fn req(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.mirror.client.request(method, self.mirror.url(path))
    }

    /// Sends `method path` with `who`'s credentials.
    async fn send(&self, method: reqwest::Method, path: &str, who: As<'_>) -> reqwest::Response {
        let r = self.req(method, path);
        let r = match who {
            As::Anonymous => r,
            As::User(u) => {
                let pw = USERS
                    .iter()
                    .find(|(n, _)| *n == u)
                    .expect("a user of USERS")
                    .1;
                r.basic_auth(u, Some(pw))
            }
            As::Token(t) => r.bearer_auth(t),
        };
        r.send().await.unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    /// `POST /v2/team/app/blobs/uploads/` (the start of a push) as `who`.
    async fn start_upload(&self, who: As<'_>) -> reqwest::Response {
        self.send(reqwest::Method::POST, "/v2/team/app/blobs/uploads/", who)
            .await
    }

    /// A token from `/token` for `scope`, asked for by `who`.
    async fn token(&self, who: As<'_>, scope: &str) -> String {
        let path = format!("/token?service=hoard&scope={scope}");
        let resp = self.send(reqwest::Method::GET, &path, who).await;
        assert_eq!(resp.status(), 200, "token for {scope}");
        let json: serde_json::Value = serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap();
        json["token"].as_str().expect("token").to_owned()
    }
}

/// The claims of a token, read without checking (the server checks).
fn claims(token: &str) -> serde_json::Value {
    let payload = token.split('.').nth(1).expect("three parts");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}

/// Actions the token grants on `repository:<name>`.
fn granted(token: &str, name: &str) -> Vec<String> {
    claims(token)["access"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["type"] == "repository" && a["name"] == name)
        .flat_map(|a| a["actions"].as_array().unwrap().clone())
        .map(|a| a.as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_auth_table_everything_is_anonymous_and_allowed() {
    let env = Env::start().await;
    let image = env.hub.add_simple_image("library/alpine", "3", 1);
    assert_eq!(
        env.mirror.get_ok(&manifest_path("alpine", "3")).await,
        image.manifest
    );
    assert_eq!(env.mirror.get("/v2/").await.status(), 200);
    let resp = env
        .mirror
        .client
        .post(env.mirror.url("/v2/team/app/blobs/uploads/"))
        .send()
        .await
        .unwrap();
    assert_ne!(resp.status(), 401, "no challenge without [auth]");
    assert!(header(&resp, "WWW-Authenticate").is_empty());
    // No token issuer either.
    assert_eq!(env.mirror.get("/token").await.status(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_rules_allow_anonymous_pull_and_challenge_a_push() {
    let env = AuthEnv::start("").await;
    let image = env.hub.add_simple_image("library/alpine", "3", 1);
    for blob in image.blobs() {
        env.mirror.get_ok(&blob_path("alpine", &blob.digest)).await;
    }
    assert_eq!(
        env.mirror.get_ok(&manifest_path("alpine", "3")).await,
        image.manifest
    );

    // The push is refused before any push handler runs.
    let resp = env.start_upload(As::Anonymous).await;
    let challenge = header(&resp, "WWW-Authenticate");
    assert_eq!(
        challenge,
        format!(
            "Bearer realm=\"http://{}/token\",service=\"hoard\",scope=\"repository:team/app:pull,push\"",
            env.mirror.addr
        )
    );
    assert_oci_error(resp, 401, &["UNAUTHORIZED"]).await;

    // A mount also asks for pull on the source.
    let resp = env
        .send(
            reqwest::Method::POST,
            "/v2/team/app/blobs/uploads/?mount=sha256:00&from=other/app",
            As::Anonymous,
        )
        .await;
    assert!(
        header(&resp, "WWW-Authenticate")
            .ends_with("scope=\"repository:other/app:pull repository:team/app:pull,push\""),
        "{}",
        header(&resp, "WWW-Authenticate")
    );
    assert_eq!(resp.status(), 401);

    // Any logged-in user may push with the default rules.
    let resp = env.start_upload(As::User("bob")).await;
    assert_eq!(
        resp.status(),
        202,
        "bob passes access control; the push side starts an upload"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pulls_can_require_credentials() {
    let env = AuthEnv::start(RULES).await;
    let image = env.hub.add_simple_image("library/private", "1", 2);
    let path = manifest_path("private", "1");

    let resp = env.mirror.get(&path).await;
    assert!(header(&resp, "WWW-Authenticate").contains("scope=\"repository:private:pull\""));
    assert_oci_error(resp, 401, &["UNAUTHORIZED"]).await;
    // HEAD too, with no body.
    assert_eq!(env.mirror.head(&path).await.status(), 401);
    assert_eq!(
        env.hub.manifest_gets() + env.hub.manifest_heads(),
        0,
        "refused before the upstream"
    );

    let resp = env.send(reqwest::Method::GET, &path, As::User("bob")).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.bytes().await.unwrap(), image.manifest);

    // The ping asks anonymous clients to log in, so `docker login` checks
    // the password; known users get 200.
    let resp = env.mirror.get("/v2/").await;
    assert_eq!(
        header(&resp, "WWW-Authenticate"),
        format!(
            "Bearer realm=\"http://{}/token\",service=\"hoard\"",
            env.mirror.addr
        )
    );
    assert_eq!(resp.status(), 401);
    let resp = env
        .send(reqwest::Method::GET, "/v2/", As::User("alice"))
        .await;
    assert_eq!(resp.status(), 200);
    // Health, readiness and metrics stay open for probes and scrapers.
    for open in ["/healthz", "/readyz", "/metrics"] {
        assert_eq!(env.mirror.get(open).await.status(), 200, "{open}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ns_requests_match_rules_with_the_registry_prefix() {
    let env = AuthEnv::start(
        r#"
[[auth.rules]]
repository = "docker.io/library"
users = ["anonymous"]
allow = ["pull"]
"#,
    )
    .await;
    let image = env.hub.add_simple_image("library/alpine", "3", 3);
    let path = format!("{}?ns=docker.io", manifest_path("library/alpine", "3"));
    assert_eq!(env.mirror.get_ok(&path).await, image.manifest);
    // The same repository without ns is named "library/alpine": no rule.
    assert_eq!(
        env.mirror
            .get(&manifest_path("library/alpine", "3"))
            .await
            .status(),
        401
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_challenge_and_forbidden_users() {
    let env = AuthEnv::start(&format!("challenge = \"basic\"\n{RULES}")).await;
    let resp = env.start_upload(As::Anonymous).await;
    assert_eq!(
        header(&resp, "WWW-Authenticate"),
        "Basic realm=\"hoard\",charset=\"UTF-8\""
    );
    assert_oci_error(resp, 401, &["UNAUTHORIZED"]).await;

    use reqwest::Method as M;
    // (method, path, who, status): 403 DENIED for known users the rules
    // do not allow; 202 when the push side takes over.
    let cases = [
        // bob may only pull.
        (M::POST, "/v2/team/app/blobs/uploads/", "bob", 403),
        // alice may push under team, not elsewhere, and not delete.
        (M::POST, "/v2/team/app/blobs/uploads/", "alice", 202),
        (M::PUT, "/v2/teams/app/manifests/v1", "alice", 403),
        (M::DELETE, "/v2/team/app/manifests/v1", "alice", 403),
        // The operator API needs admin.
        (M::GET, "/_hoard/pins", "alice", 403),
    ];
    for (method, path, user, status) in cases {
        let resp = env.send(method.clone(), path, As::User(user)).await;
        if status == 403 {
            assert_oci_error(resp, 403, &["DENIED"]).await;
        } else {
            assert_eq!(resp.status(), status, "{method} {path} as {user}");
        }
    }
    let resp = env.send(M::GET, "/_hoard/pins", As::User("root")).await;
    assert!(
        ![401, 403].contains(&resp.status().as_u16()),
        "root passes access control: {}",
        resp.status()
    );
    let m = env.mirror.metrics().await;
    assert!(m.sum("hoard_auth_denied_total", &[("reason", "forbidden")]) >= 4.0);
    assert!(m.sum("hoard_auth_logins_total", &[("result", "ok")]) >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_flow_with_scope_intersection() {
    let env = AuthEnv::start(RULES).await;
    let image = env.hub.add_simple_image("team/app", "1", 4);

    let resp = env.send(reqwest::Method::GET, "/token?service=hoard&scope=repository:team/app:pull,push,delete&scope=repository:other:pull,push&scope=repository:team/new:push", As::User("alice")).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "Cache-Control"), "no-store");
    let json: serde_json::Value = serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap();
    let token = json["token"].as_str().unwrap().to_owned();
    assert_eq!(json["access_token"], json["token"]);
    assert_eq!(json["expires_in"], 300);
    assert!(json["issued_at"].as_str().unwrap().ends_with('Z'), "{json}");
    assert_eq!(claims(&token)["sub"], "alice");
    assert_eq!(granted(&token, "team/app"), ["pull", "push"]);
    assert_eq!(granted(&token, "other"), ["pull"]);
    assert_eq!(granted(&token, "team/new"), ["push"]);

    // The token pulls team/app and may push to team/new...
    let resp = env
        .send(
            reqwest::Method::GET,
            &manifest_path("team/app", "1"),
            As::Token(&token),
        )
        .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.bytes().await.unwrap(), image.manifest);
    // (team/app is in the cache, so the push side keeps it for the
    // upstream: push to a new name.)
    let resp = env
        .send(
            reqwest::Method::POST,
            "/v2/team/new/blobs/uploads/",
            As::Token(&token),
        )
        .await;
    assert_eq!(resp.status(), 202);
    // ...and /v2/.
    let resp = env
        .send(reqwest::Method::GET, "/v2/", As::Token(&token))
        .await;
    assert_eq!(resp.status(), 200);

    // A token without the scope: 401 insufficient_scope, so the client
    // fetches a better one (alice would be given it).
    let narrow = env
        .token(As::User("alice"), "repository:team/app:pull")
        .await;
    let resp = env.start_upload(As::Token(&narrow)).await;
    assert!(header(&resp, "WWW-Authenticate")
        .ends_with("scope=\"repository:team/app:pull,push\",error=\"insufficient_scope\""));
    assert_oci_error(resp, 401, &["UNAUTHORIZED"]).await;

    // bob asks for push and gets pull only; pushing with it is forbidden.
    let bob = env
        .token(As::User("bob"), "repository:team/app:pull,push")
        .await;
    assert_eq!(granted(&bob, "team/app"), ["pull"]);
    let resp = env.start_upload(As::Token(&bob)).await;
    assert!(header(&resp, "WWW-Authenticate").contains("error=\"insufficient_scope\""));
    assert_oci_error(resp, 403, &["DENIED"]).await;

    // Anonymous tokens grant what anonymous may do: pull of public only.
    let anon = env
        .token(As::Anonymous, "repository:public/x:pull,push")
        .await;
    assert_eq!(claims(&anon)["sub"], "");
    assert_eq!(granted(&anon, "public/x"), ["pull"]);
    let anon = env.token(As::Anonymous, "repository:team/app:pull").await;
    assert!(granted(&anon, "team/app").is_empty());
    let resp = env
        .send(
            reqwest::Method::GET,
            &manifest_path("team/app", "1"),
            As::Token(&anon),
        )
        .await;
    assert_oci_error(resp, 401, &["UNAUTHORIZED"]).await;
    // The OAuth2 POST form is not spoken: 404 tells clients to use GET.
    let resp = env
        .req(reqwest::Method::POST, "/token")
        .basic_auth("alice", Some("a-pw"))
        .body("grant_type=password&service=hoard&scope=repository:team/app:pull")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    let m = env.mirror.metrics().await;
    assert!(m.sum("hoard_auth_tokens_total", &[("result", "issued")]) >= 5.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_user_and_wrong_password_get_identical_answers() {
    let env = AuthEnv::start(RULES).await;
    let mut answers = Vec::new();
    for (user, path) in [
        ("alice", "/v2/public/x/manifests/1"),
        ("mallory", "/v2/public/x/manifests/1"),
        ("alice", "/token?service=hoard&scope=repository:a:pull"),
        ("mallory", "/token?service=hoard&scope=repository:a:pull"),
    ] {
        let resp = env
            .req(reqwest::Method::GET, path)
            .basic_auth(user, Some("not-the-password"))
            .send()
            .await
            .unwrap();
        let mut headers: Vec<(String, String)> = resp
            .headers()
            .iter()
            .filter(|(k, _)| *k != "date")
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap().to_owned()))
            .collect();
        headers.sort();
        let status = resp.status().as_u16();
        answers.push((status, headers, resp.bytes().await.unwrap()));
    }
    assert_eq!(answers[0], answers[1], "registry route");
    assert_eq!(answers[2], answers[3], "token endpoint");
    assert_eq!(answers[0].0, 401);
    check_oci_error(answers[0].0, &answers[0].2, 401, &["UNAUTHORIZED"]);
    assert_eq!(answers[2].0, 401);
    let m = env.mirror.metrics().await;
    assert_eq!(
        m.sum("hoard_auth_logins_total", &[("result", "failed")]),
        4.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_logins_are_rate_limited() {
    let env = AuthEnv::start(&format!("max_failures = 3\n{RULES}")).await;
    let try_login = |pw: &'static str| {
        env.req(reqwest::Method::GET, "/v2/")
            .basic_auth("alice", Some(pw))
            .send()
    };
    for _ in 0..3 {
        assert_eq!(try_login("wrong").await.unwrap().status(), 401);
    }
    // Now even the right password is refused, unchecked, with 429.
    let resp = try_login("a-pw").await.unwrap();
    assert_eq!(header(&resp, "Retry-After"), "30");
    assert_oci_error(resp, 429, &["TOOMANYREQUESTS"]).await;
    // Also at the token endpoint, and for another name from this address.
    let resp = env
        .send(
            reqwest::Method::GET,
            "/token?service=hoard",
            As::User("bob"),
        )
        .await;
    assert_eq!(resp.status(), 429);
    let m = env.mirror.metrics().await;
    assert_eq!(
        m.sum("hoard_auth_logins_total", &[("result", "failed")]),
        3.0
    );
    assert_eq!(
        m.sum("hoard_auth_logins_total", &[("result", "rate_limited")]),
        2.0
    );
    // Anonymous pulls still work: the limit is on logins.
    assert_ne!(env.mirror.get("/v2/public/x/tags/list").await.status(), 401);
}

/// An HS256 token signed with `key`, expiring at `exp`.
fn mint(key: &[u8], sub: &str, name: &str, exp: u64) -> String {
    let header = URL_SAFE_NO_PAD.encode(r#"{"alg":"HS256","typ":"JWT"}"#);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = serde_json::json!({
        "iss": "hoard", "sub": sub, "aud": "hoard", "exp": exp, "nbf": now - 600,
        "iat": now - 600, "jti": "x",
        "access": [{"type": "repository", "name": name, "actions": ["pull", "push"]}],
    });
    let input = format!("{header}.{}", URL_SAFE_NO_PAD.encode(claims.to_string()));
    let sig = ring::hmac::sign(
        &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key),
        input.as_bytes(),
    );
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_and_forged_tokens_are_refused() {
    let key = b"0123456789abcdef0123456789abcdef-shared";
    let key_dir = tempfile::tempdir().unwrap();
    let key_file = key_dir.path().join("token.key");
    std::fs::write(&key_file, key).unwrap();
    let env = AuthEnv::start(&format!(
        "token_key_file = {:?}\n{RULES}",
        key_file.display().to_string()
    ))
    .await;
    let image = env.hub.add_simple_image("team/app", "1", 5);
    let path = manifest_path("team/app", "1");
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();

    // A token minted with the shared key works: replicas can share tokens.
    let good = mint(key, "alice", "team/app", now + 60);
    let resp = env
        .send(reqwest::Method::GET, &path, As::Token(&good))
        .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.bytes().await.unwrap(), image.manifest);

    let expired = mint(key, "alice", "team/app", now - 1);
    let forged = mint(
        b"another key of at least 32 bytes!!",
        "alice",
        "team/app",
        now + 60,
    );
    let (h, rest) = good.split_once('.').unwrap();
    let sig = rest.rsplit_once('.').unwrap().1;
    let root_claims = mint(key, "root", "team/app", now + 60);
    let tampered = format!("{h}.{}.{sig}", root_claims.split('.').nth(1).unwrap());
    for (what, token) in [
        ("expired", expired.as_str()),
        ("forged", forged.as_str()),
        ("tampered", tampered.as_str()),
        ("garbage", "not-a-token"),
    ] {
        let resp = env
            .send(reqwest::Method::GET, &path, As::Token(token))
            .await;
        assert!(
            header(&resp, "WWW-Authenticate").starts_with("Bearer realm="),
            "{what}"
        );
        assert_oci_error(resp, 401, &["UNAUTHORIZED"]).await;
    }
    // A token naming a user the rules do not allow is no better than its user.
    let bob = mint(key, "bob", "team/app", now + 60);
    let resp = env.start_upload(As::Token(&bob)).await;
    assert_oci_error(resp, 403, &["DENIED"]).await;
    let m = env.mirror.metrics().await;
    assert_eq!(
        m.sum("hoard_auth_tokens_total", &[("result", "refused")]),
        4.0
    );
    drop(env.dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catalog_lists_only_what_the_client_may_pull() {
    let env = AuthEnv::start(RULES).await;
    for (i, repo) in ["public/a", "team/b", "other/c"].iter().enumerate() {
        env.hub.add_simple_image(repo, "1", 10 + i as u64);
        let resp = env
            .send(
                reqwest::Method::GET,
                &manifest_path(repo, "1"),
                As::User("root"),
            )
            .await;
        assert_eq!(resp.status(), 200, "{repo}");
    }
    let list = |resp: reqwest::Response| async move {
        assert_eq!(resp.status(), 200);
        let json: serde_json::Value = serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap();
        json["repositories"].clone()
    };
    let all = list(
        env.send(reqwest::Method::GET, "/v2/_catalog", As::User("root"))
            .await,
    )
    .await;
    assert_eq!(all, serde_json::json!(["other/c", "public/a", "team/b"]));
    let anon = list(env.mirror.get("/v2/_catalog").await).await;
    assert_eq!(anon, serde_json::json!(["public/a"]));

    // Where anonymous may pull nothing, the catalog asks it to log in.
    let closed = AuthEnv::start(
        "[[auth.rules]]\nrepository = \"*\"\nusers = [\"alice\"]\nallow = [\"pull\"]\n",
    )
    .await;
    let resp = closed.mirror.get("/v2/_catalog").await;
    assert!(header(&resp, "WWW-Authenticate").ends_with("scope=\"registry:catalog:*\""));
    assert_eq!(resp.status(), 401);
    let token = closed.token(As::User("alice"), "registry:catalog:*").await;
    let resp = closed
        .send(reqwest::Method::GET, "/v2/_catalog", As::Token(&token))
        .await;
    assert_eq!(resp.status(), 200);
}

#[test]
fn bad_auth_config_is_named_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let base = Cfg::new(dir.path())
        .upstream("docker.io", "http://127.0.0.1:9")
        .toml();
    let err = hoard::Config::from_toml(&format!("{base}\n[auth]\nchallenge = \"digest\"\n"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("digest"), "{err}");
    let err = hoard::Config::from_toml(&format!("{base}\n[auth]\nmax_failures = 0\n"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("auth.max_failures"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weak_htpasswd_hashes_stop_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let htpasswd = dir.path().join("htpasswd");
    std::fs::write(&htpasswd, "alice:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=\n").unwrap();
    let toml = format!(
        "{}\n[auth]\nhtpasswd = {:?}\n",
        Cfg::new(&dir.path().join("c"))
            .upstream("docker.io", "http://127.0.0.1:9")
            .toml(),
        htpasswd.display().to_string()
    );
    let config = hoard::Config::from_toml(&toml).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let err = hoard::run(listener, config, std::future::pending())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("auth.htpasswd") && err.contains("bcrypt"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn htpasswd_changes_apply_without_a_restart() {
    // Polling with a wrong password must not trip the failure limit.
    let env = AuthEnv::start(&format!("max_failures = 100000\n{RULES}")).await;
    let login = |user: &'static str, pw: &'static str| {
        env.req(reqwest::Method::GET, "/v2/")
            .basic_auth(user, Some(pw))
            .send()
    };
    assert_eq!(login("bob", "b-pw").await.unwrap().status(), 200);
    assert_eq!(login("carol", "c-pw").await.unwrap().status(), 401);
    let bobs_token = env.token(As::User("bob"), "repository:bob/app:pull").await;
    let with_token = |token: String| {
        env.req(reqwest::Method::GET, "/v2/")
            .bearer_auth(token)
            .send()
    };
    assert_eq!(with_token(bobs_token.clone()).await.unwrap().status(), 200);

    // carol joins, bob leaves.
    let path = env.dir.path().join("htpasswd");
    let text = format!(
        "alice:{}\ncarol:{}\n",
        bcrypt::hash("a-pw", 4).unwrap(),
        bcrypt::hash("c-pw", 4).unwrap()
    );
    std::fs::write(&path, text).unwrap();
    let start = tokio::time::Instant::now();
    while login("carol", "c-pw").await.unwrap().status() != 200 {
        assert!(start.elapsed() < DEADLINE, "carol was never let in");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // bob's earlier success was cached; the reload dropped it.
    assert_eq!(login("bob", "b-pw").await.unwrap().status(), 401);
    // And the token issued to bob before is refused (issue 14).
    assert_eq!(with_token(bobs_token).await.unwrap().status(), 401);

    // A broken file keeps the users loaded before.
    std::fs::write(&path, "alice:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=\n").unwrap();
    let start = tokio::time::Instant::now();
    while start.elapsed() < hoard::auth::login::RELOAD_CHECK * 2 {
        assert_eq!(login("carol", "c-pw").await.unwrap().status(), 200);
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}
