//! What the log says, read as a log collector reads it: the real binary
//! with stderr on a pipe (not a terminal) and `NO_COLOR` unset, and the
//! labels of the request latency.

mod common;

use common::*;

/// The one `request` line of `method path`, once the server has written it
/// (it is written when the body has been sent, after the client has it).
async fn request_line(hoard: &Hoard, method: &str, path: &str) -> String {
    let needle = format!("request method={method} path={path} ");
    hoard
        .log()
        .wait_line(&needle, |l| l.contains(&needle))
        .await
        .unwrap_or_default()
}

#[tokio::test]
async fn request_log_on_a_pipe_is_plain_and_says_what_was_sent() {
    let hub = FakeRegistry::start().await;
    let image = hub.add_simple_image("library/alpine", "3.19", 7);
    let dir = tempfile::tempdir().expect("temp dir");
    let cfg = Cfg::new(&dir.path().join("cache"))
        .top("shutdown_grace", "\"2s\"")
        .upstream("docker.io", &hub.url())
        // Nothing listens on port 1: every request to it fails to connect.
        .upstream("dead.example", "http://127.0.0.1:1");
    let config = dir.path().join("mirror.toml");
    std::fs::write(&config, cfg.toml()).expect("write config");
    let hoard = Launch::new(&config).without_env("NO_COLOR").start().await;

    let manifest = manifest_path("library/alpine", "3.19");
    hoard.get_ok(&manifest).await;
    let layer = &image.layers[0];
    let layer_path = blob_path("library/alpine", &layer.digest);
    assert_eq!(hoard.get_ok(&layer_path).await, layer.data);
    let metrics = hoard.get_ok("/metrics").await;
    let dead = manifest_path("dead.example/app", "1");
    let head = hoard
        .client
        .head(hoard.url(&dead))
        .send()
        .await
        .expect("HEAD");
    assert_eq!(head.status(), 503);
    let resp = hoard.get(&dead).await;
    assert_eq!(resp.status(), 503);
    let body = resp.bytes().await.expect("body");
    let body: serde_json::Value = serde_json::from_slice(&body).expect("OCI error body");
    let detail = &body["errors"][0]["detail"];
    assert_eq!(detail["upstream"], "dead.example", "{body}");
    assert_eq!(detail["host"], "127.0.0.1:1", "{body}");
    let cause = detail["cause"].as_str().unwrap_or_default();
    assert!(cause.contains("unreachable"), "{body}");

    let metrics_line = request_line(&hoard, "GET", "/metrics").await;
    let layer_line = request_line(&hoard, "GET", &layer_path).await;
    let head_line = request_line(&hoard, "HEAD", &dead).await;
    let get_line = request_line(&hoard, "GET", &dead).await;
    let log = hoard.log().text();
    assert!(!log.contains("\u{1b}["), "colour codes on a pipe:\n{log}");
    assert!(
        !log.contains("Some("),
        "debug formatting in the log:\n{log}"
    );

    // Bytes actually sent: /metrics has no Content-Length but sends its
    // text; a layer sends itself; a HEAD sends nothing.
    let sent = format!(" bytes={} complete=true ", metrics.len());
    assert!(metrics_line.contains(&sent), "{metrics_line}");
    let sent = format!(" bytes={} complete=true ", layer.data.len());
    assert!(layer_line.contains(&sent), "{layer_line}");
    assert!(
        layer_line.contains("upstream=\"docker.io\""),
        "{layer_line}"
    );
    assert!(head_line.contains(" status=503 bytes=0 "), "{head_line}");
    for line in [&metrics_line, &layer_line, &head_line, &get_line] {
        assert!(line.contains(" peer=127.0.0.1:"), "{line}");
        assert!(
            line.contains(" headers_ms=") && line.contains(" total_ms="),
            "{line}"
        );
    }
    // The failed upstream is named, on the request line and with its cause.
    for line in [&head_line, &get_line] {
        assert!(
            line.contains("cache=\"error\" upstream=\"dead.example\""),
            "{line}"
        );
    }
    assert!(
        log.lines().any(|l| l.contains("upstream failed")
            && l.contains("upstream=dead.example host=127.0.0.1:1 cause=upstream unreachable")),
        "{log}"
    );

    // A second server on the same port says why it cannot start, once.
    let busy = dir.path().join("busy.toml");
    let text = cfg.toml().replace(
        "listen = \"127.0.0.1:0\"",
        &format!("listen = \"{}\"", hoard.addr),
    );
    std::fs::write(&busy, text).expect("write config");
    let exited = Launch::new(&busy)
        .without_env("NO_COLOR")
        .run_to_exit()
        .await;
    let (status, out) = (exited.status, exited.output());
    assert!(!status.success(), "{out}");
    assert_eq!(out.matches("cannot listen on").count(), 1, "{out}");
    assert!(!out.contains("\u{1b}["), "{out}");
    hoard.stop().await;
}

#[tokio::test]
async fn an_operator_request_is_logged_once_by_the_request_log() {
    let hub = FakeRegistry::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let cfg = Cfg::new(&dir.path().join("cache")).upstream("docker.io", &hub.url());
    let config = dir.path().join("mirror.toml");
    std::fs::write(&config, cfg.toml()).expect("write config");
    let hoard = Launch::new(&config).start().await;
    hoard.get_ok("/_hoard/pins").await;
    let refused = hoard
        .client
        .post(hoard.url("/_hoard/no-such-thing"))
        .send()
        .await
        .expect("POST");
    assert!(refused.status().is_client_error());
    let ok = request_line(&hoard, "GET", "/_hoard/pins").await;
    assert!(ok.contains(" status=200 "), "{ok}");
    let bad = request_line(&hoard, "POST", "/_hoard/no-such-thing").await;
    assert!(
        bad.contains(&format!(" status={} ", refused.status().as_u16())),
        "{bad}"
    );
    let log = hoard.log().text();
    for path in ["/_hoard/pins", "/_hoard/no-such-thing"] {
        let lines: Vec<&str> = log.lines().filter(|l| l.contains(path)).collect();
        assert_eq!(lines.len(), 1, "one line for {path}:\n{log}");
    }
    hoard.stop().await;
}

#[tokio::test]
async fn request_duration_is_labelled_by_kind() {
    let env = Env::start().await;
    let image = env.hub.add_simple_image("library/alpine", "3.19", 3);
    env.mirror
        .get_ok(&manifest_path("library/alpine", "3.19"))
        .await;
    env.mirror
        .get_ok(&blob_path("library/alpine", &image.config.digest))
        .await;
    env.mirror.get_ok("/v2/").await;
    let m = env.mirror.metrics().await;
    for kind in ["manifest", "blob", "other"] {
        let n = m.sum("hoard_request_duration_seconds_count", &[("kind", kind)]);
        assert!(n >= 1.0, "kind={kind}: {n}\n{}", m.0);
    }
    assert_eq!(
        m.sum(
            "hoard_request_duration_seconds_count",
            &[("kind", "upload")]
        ),
        0.0
    );
}
