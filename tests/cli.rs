//! The command line and the config file as a user writes them: host names
//! for `--listen`, keys left out for their defaults.

mod common;

use common::*;

#[tokio::test]
async fn listen_takes_a_host_name_and_tag_ttl_may_be_left_out() {
    let hub = FakeRegistry::start().await;
    hub.add_simple_image("library/alpine", "3.19", 5);
    let dir = tempfile::tempdir().expect("temp dir");
    let text = Cfg::new(&dir.path().join("cache"))
        .upstream("docker.io", &hub.url())
        .toml();
    // No tag_ttl: the embedded file's "5m" applies.
    let text: String = text
        .lines()
        .filter(|l| !l.starts_with("tag_ttl"))
        .map(|l| format!("{l}\n"))
        .collect();
    assert!(!text.contains("tag_ttl"), "{text}");
    let config = write_config(dir.path(), &text);
    let hoard = Launch::new(&config)
        .extra_args(&["--listen", "localhost:0"])
        .start()
        .await;
    assert!(hoard.addr.ip().is_loopback(), "{}", hoard.addr);
    assert!(
        hoard.addr.is_ipv4(),
        "localhost is 127.0.0.1 first: {}",
        hoard.addr
    );
    hoard.get_ok(&manifest_path("library/alpine", "3.19")).await;
    hoard.stop().await;

    // A name that does not resolve is refused before anything starts.
    let exited = Launch::new(&config)
        .extra_args(&["--listen", "no-such-host.invalid:5000"])
        .run_to_exit()
        .await;
    let (status, out) = (exited.status, exited.output());
    assert!(!status.success(), "{out}");
    assert!(out.contains("no-such-host.invalid:5000"), "{out}");
}
