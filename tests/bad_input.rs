//! Hostile and malformed requests: each gets a 4xx with an OCI error body,
//! never a panic, never a path outside the cache, and never an upstream request.
//! Paths are sent verbatim (no client-side normalisation of `..` or `%2e`).

mod common;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const GOOD_HEX: &str = "b5bb9d8014a0f9b1d61e21e796d78dccdf1352f23cd32812f4850b878ae4944c";

/// Sends each (method, path) and checks status and code; then that the
/// upstream saw nothing and the mirror still answers.
async fn expect_all(env: &Env, cases: &[(&str, String, u16, &[&str])]) {
    for (method, path, status, codes) in cases {
        let resp = raw_request(env.mirror.addr, method, path, &[]).await;
        let text = String::from_utf8_lossy(&resp.body).to_string();
        assert_eq!(resp.status, *status, "{method} {path}: body {text}");
        if *method != "HEAD" {
            let code = check_client_error(resp.status, &resp.body);
            assert!(
                codes.is_empty() || codes.contains(&code.as_str()),
                "{method} {path}: code {code}, expected {codes:?}"
            );
        }
    }
    assert_eq!(
        env.hub.content_requests(),
        0,
        "bad input reached the upstream: {:?}",
        env.hub.content_paths()
    );
    assert_eq!(
        env.mirror.get("/v2/").await.status(),
        200,
        "mirror still serving"
    );
}

async fn env() -> Env {
    let env = Env::start().await;
    // Content the bad requests could reach if they leaked through.
    env.hub.add_simple_image("library/alpine", "latest", 1);
    env
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_digests_are_digest_invalid() {
    let env = env().await;
    let d: &[&str] = &["DIGEST_INVALID"];
    let mut cases = Vec::new();
    for digest in [
        "sha256:xyz".to_string(),
        "sha256:abcd".to_string(),
        format!("sha256:{}", GOOD_HEX.to_uppercase()),
        format!("sha256:{GOOD_HEX}0"),
        format!("sha256:{}", &GOOD_HEX[1..]),
        format!("sha256:{}g", &GOOD_HEX[1..]),
        "sha256:".to_string(),
        format!("sha256:%2e%2e{}", &GOOD_HEX[6..]),
    ] {
        cases.push(("GET", blob_path("library/alpine", &digest), 400, d));
        cases.push(("HEAD", blob_path("library/alpine", &digest), 400, d));
    }
    cases.push((
        "GET",
        "/v2/library/alpine/blobs/notadigest".to_string(),
        400,
        d,
    ));
    cases.push(("GET", manifest_path("library/alpine", "sha256:xyz"), 400, d));
    cases.push((
        "GET",
        manifest_path(
            "library/alpine",
            &format!("sha256:{}", GOOD_HEX.to_uppercase()),
        ),
        400,
        d,
    ));
    expect_all(&env, &cases).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_names_are_name_invalid() {
    let env = env().await;
    let n: &[&str] = &["NAME_INVALID"];
    let digest = format!("sha256:{GOOD_HEX}");
    let mut cases = Vec::new();
    for name in [
        "Library/Alpine".to_string(),
        "library/ALPINE".to_string(),
        "library/../etc".to_string(),
        "../../etc".to_string(),
        "library/./alpine".to_string(),
        "library//alpine".to_string(),
        "library/alpine/".to_string(),
        "-alpine".to_string(),
        "alpine_".to_string(),
        "al pine".replace(' ', "%20"),
        "a".repeat(300),
    ] {
        cases.push(("GET", manifest_path(&name, "latest"), 400, n));
        cases.push(("GET", blob_path(&name, &digest), 400, n));
    }
    cases.push(("GET", "/v2/library/../etc/tags/list".to_string(), 400, n));
    expect_all(&env, &cases).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_tags_are_rejected() {
    let env = env().await;
    // Issue 16 section 8: a reference that is no valid tag names no
    // manifest, so a pull of it is the spec's 404, not a 400.
    let t: &[&str] = &["MANIFEST_UNKNOWN"];
    let mut cases = Vec::new();
    for tag in [
        "-bad".to_string(),
        ".bad".to_string(),
        "a".repeat(129),
        "bad%20tag".to_string(),
        "bad$tag".to_string(),
        "..".to_string(),
    ] {
        cases.push(("GET", manifest_path("library/alpine", &tag), 404, t));
        cases.push(("HEAD", manifest_path("library/alpine", &tag), 404, t));
    }
    expect_all(&env, &cases).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_routes_are_404_with_an_errors_body() {
    let env = env().await;
    let any: &[&str] = &[];
    let cases: Vec<(&str, String, u16, &[&str])> = [
        "/",
        "/v3/",
        "/v1/_ping",
        "/favicon.ico",
        "/v2/alpine",
        "/v2/alpine/tags",
        "/v2/alpine/unknown/latest",
        "/v2/alpine/referrers",
        "/v2/_catalogue",
    ]
    .into_iter()
    .map(|p| ("GET", p.to_string(), 404, any))
    .collect();
    expect_all(&env, &cases).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_are_refused() {
    let env = env().await;
    let digest = format!("sha256:{GOOD_HEX}");
    let cases = [
        ("POST", "/v2/library/alpine/blobs/uploads/".to_string()),
        ("PUT", "/v2/library/alpine/manifests/latest".to_string()),
        ("DELETE", "/v2/library/alpine/manifests/latest".to_string()),
        ("DELETE", blob_path("library/alpine", &digest)),
        ("PATCH", "/v2/library/alpine/blobs/uploads/1234".to_string()),
    ];
    for (method, path) in &cases {
        let resp = raw_request(env.mirror.addr, method, path, &[]).await;
        check_client_error(resp.status, &resp.body);
    }
    assert_eq!(
        env.hub.content_requests(),
        0,
        "a write reached the upstream: {:?}",
        env.hub.content_paths()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn percent_encoded_dot_dot_does_not_escape() {
    let env = env().await;
    let digest = format!("sha256:{GOOD_HEX}");
    let paths = [
        "/v2/%2e%2e/%2e%2e/manifests/latest".to_string(),
        "/v2/library/%2e%2e/manifests/latest".to_string(),
        "/v2/library/%2E%2E/%2E%2E/blobs/".to_string() + &digest,
        "/v2/%2e%2e%2f%2e%2e%2fetc/manifests/latest".to_string(),
        "/v2/alpine/blobs/..%2f..%2f..%2fetc%2fpasswd".to_string(),
        "/v2/alpine/blobs/sha256:..%2f..%2f..%2fetc%2fpasswd".to_string(),
        "/v2/alpine/manifests/..%2f..%2fetc%2fpasswd".to_string(),
        "/v2/alpine/manifests/%2e%2e".to_string(),
        "/v2/library%2f..%2f..%2f/alpine/manifests/latest".to_string(),
        "/v2/alpine/tags/list/%2e%2e".to_string(),
    ];
    for path in &paths {
        let resp = raw_request(env.mirror.addr, "GET", path, &[]).await;
        check_client_error(resp.status, &resp.body);
    }
    assert_eq!(
        env.hub.content_requests(),
        0,
        "traversal reached the upstream: {:?}",
        env.hub.content_paths()
    );
    // The cache directory holds nothing a traversal could have written.
    let leftovers: Vec<_> = walk(env.dir.path());
    assert!(
        leftovers
            .iter()
            .all(|p| !p.contains("passwd") && !p.contains("..")),
        "{leftovers:?}"
    );
}

fn walk(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            out.push(e.path().display().to_string());
            if e.path().is_dir() {
                out.extend(walk(&e.path()));
            }
        }
    }
    out
}

/// Writes `request` on a fresh connection while reading; returns what came back.
async fn send_raw(addr: std::net::SocketAddr, request: Vec<u8>) -> String {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut rd, mut wr) = stream.into_split();
    let writer = tokio::spawn(async move {
        let _ = wr.write_all(&request).await;
        wr // keep the write half open: the server must answer without our EOF
    });
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let read = async {
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
            if got.windows(4).any(|w| w == b"\r\n\r\n") {
                break;
            }
        }
    };
    let timed_out = tokio::time::timeout(DEADLINE, read).await.is_err();
    assert!(
        !timed_out,
        "no answer within {DEADLINE:?}; got {:?}",
        String::from_utf8_lossy(&got)
    );
    writer.abort();
    String::from_utf8_lossy(&got).into_owned()
}

/// Whether a raw answer's status line is 431 or 400.
fn rejected(answer: &str) -> bool {
    let status_line = answer.lines().next().unwrap_or("");
    status_line.starts_with("HTTP/1.")
        && matches!(status_line.split(' ').nth(1), Some("431" | "400"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_headers_are_rejected_and_the_server_keeps_serving() {
    let env = env().await;
    let addr = env.mirror.addr;

    let big = format!(
        "GET /v2/ HTTP/1.1\r\nHost: {addr}\r\nX-Big: {}\r\n\r\n",
        "a".repeat(200 * 1024)
    );
    let answer = send_raw(addr, big.into_bytes()).await;
    assert!(
        rejected(&answer),
        "200 KiB header answered {:?}",
        answer.lines().next()
    );

    let mut many = format!("GET /v2/ HTTP/1.1\r\nHost: {addr}\r\n");
    for i in 0..500 {
        many.push_str(&format!("X-H{i}: {}\r\n", "b".repeat(100)));
    }
    many.push_str("\r\n");
    let answer = send_raw(addr, many.into_bytes()).await;
    assert!(
        rejected(&answer),
        "500 headers answered {:?}",
        answer.lines().next()
    );

    assert_eq!(
        env.mirror.get("/v2/").await.status(),
        200,
        "mirror still serving"
    );
    assert_eq!(env.hub.content_requests(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_client_hello_on_the_http_port_gets_a_quick_400() {
    // skopeo and podman try TLS first and expect an HTTP error back.
    let env = env().await;
    let mut hello = vec![
        0x16, 0x03, 0x01, 0x00, 0x2d, 0x01, 0x00, 0x00, 0x29, 0x03, 0x03,
    ];
    hello.extend_from_slice(&pseudo_random(99, 32));
    hello.extend_from_slice(&[0x00, 0x00, 0x02, 0x00, 0x2f, 0x01, 0x00]);
    let answer = send_raw(env.mirror.addr, hello).await;
    // hyper answers a request it cannot parse as HTTP/1.0 (it never learnt the version).
    let status_line = answer.lines().next().unwrap_or("");
    assert!(
        status_line.starts_with("HTTP/1.") && status_line.split(' ').nth(1) == Some("400"),
        "TLS ClientHello answered {status_line:?}"
    );
    assert_eq!(
        env.mirror.get("/v2/").await.status(),
        200,
        "mirror still serving"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_query_strings_do_not_break_routing() {
    let env = env().await;
    for path in [
        "/v2/alpine/manifests/latest?ns=%ZZ",
        "/v2/alpine/manifests/latest?ns=docker.io%2F..%2F",
        "/v2/alpine/manifests/latest?ns=http://127.0.0.1:1/",
    ] {
        let resp = raw_request(env.mirror.addr, "GET", path, &[]).await;
        check_client_error(resp.status, &resp.body);
    }
    assert_eq!(
        env.hub.content_requests(),
        0,
        "{:?}",
        env.hub.content_paths()
    );
}
