//! Replays every fuzz target's committed corpus (`fuzz/corpus/<target>/`)
//! through the same entry points the libFuzzer targets call
//! (`hoard::fuzzing`), on stable: a parser change that panics on an input
//! the fuzzer once found fails here, without nightly.

use std::path::Path;

/// Runs `target` on each file of its corpus, naming the file that panics.
fn replay(name: &str) {
    let (_, entry) = hoard::fuzzing::TARGETS
        .iter()
        .find(|(n, _)| *n == name)
        .expect("a target of that name");
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(name);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("corpus entry").path())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{} is empty", dir.display());
    for file in files {
        let data = std::fs::read(&file).expect("corpus file");
        if std::panic::catch_unwind(|| entry(&data)).is_err() {
            panic!("{} panics on {}", name, file.display());
        }
    }
}

#[test]
fn every_target_has_a_replay() {
    let replayed = [
        "route",
        "reference",
        "range",
        "www_authenticate",
        "manifest",
        "htpasswd",
        "token",
        "import",
        "config",
    ];
    for (name, _) in hoard::fuzzing::TARGETS {
        assert!(replayed.contains(name), "no replay test for target {name}");
    }
}

#[test]
fn route_corpus() {
    replay("route");
}

#[test]
fn reference_corpus() {
    replay("reference");
}

#[test]
fn range_corpus() {
    replay("range");
}

#[test]
fn www_authenticate_corpus() {
    replay("www_authenticate");
}

#[test]
fn manifest_corpus() {
    replay("manifest");
}

#[test]
fn htpasswd_corpus() {
    replay("htpasswd");
}

#[test]
fn token_corpus() {
    replay("token");
}

#[test]
fn import_corpus() {
    replay("import");
}

#[test]
fn config_corpus() {
    replay("config");
}
