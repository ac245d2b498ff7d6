//! Every CLI failure says what failed (the file, the server, the
//! directory) and what to do.

use super::client::Client;
use super::*;

#[test]
fn a_missing_or_bad_config_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.toml");
    let e = load(Some(missing.clone()), None, None).unwrap_err();
    assert!(matches!(e, Error::ReadFile { .. }), "{e:?}");
    assert!(e.to_string().contains(&*missing.to_string_lossy()), "{e}");

    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "no_such_key = 1\n").unwrap();
    let e = load(Some(bad.clone()), None, None).unwrap_err();
    assert!(matches!(e, Error::Config { .. }), "{e:?}");
    let text = e.to_string();
    assert!(text.starts_with(&*bad.to_string_lossy()), "{text}");
    assert!(text.contains("no_such_key"), "{text}");
}

#[test]
fn an_unreadable_image_list_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("images.txt");
    let e = image_list(vec![], Some(&missing)).unwrap_err();
    assert!(e.to_string().starts_with("cannot read "), "{e}");
    assert!(e.to_string().contains(&*missing.to_string_lossy()), "{e}");
    let e = image_list(vec![], None).unwrap_err();
    assert!(e.to_string().contains("--file"), "{e}");
}

#[test]
fn verify_of_a_directory_without_a_cache_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let e = verify(dir.path()).unwrap_err();
    assert!(matches!(e, Error::NoCache(_)), "{e:?}");
    let text = e.to_string();
    assert!(text.contains(&*dir.path().to_string_lossy()), "{text}");
    assert!(text.contains("--cache-dir"), "{text}");
}

#[tokio::test]
async fn a_server_that_is_not_there_is_named() {
    let e = Client::new("https://127.0.0.1:5000").err().unwrap();
    assert!(
        e.to_string().contains("--server https://127.0.0.1:5000"),
        "{e}"
    );
    assert!(e.to_string().contains("plain-HTTP"), "{e}");

    // A port nothing listens on: bound, then released.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let e = ls(Site::Server(url.clone()), true).await.unwrap_err();
    assert!(matches!(e, Error::Unreachable { .. }), "{e:?}");
    assert!(
        e.to_string()
            .contains(&format!("cannot reach hoard at {url}")),
        "{e}"
    );
}

#[test]
fn export_and_import_on_a_busy_cache_say_how_to_go_through_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = crate::Config::embedded().unwrap();
    config.cache_dir = dir.path().join("cache");
    let _held = crate::pins::CacheLock::acquire(&config.cache_dir).unwrap();
    let e = export(
        &config,
        &["alpine:3.19".into()],
        false,
        None,
        &dir.path().join("o.tar"),
    )
    .unwrap_err();
    assert!(matches!(e, Error::BusyForBundle(_)), "{e:?}");
    let text = e.to_string();
    assert!(
        text.contains("in use") && text.contains("--server"),
        "{text}"
    );
}
