//! Entry points of the fuzz targets in `fuzz/` and of their replay on
//! stable (`tests/fuzz_corpora.rs`).
//!
//! One function per target, taking the raw input: the libFuzzer target and
//! the corpus replay call the same function, so what CI replays is exactly
//! what was fuzzed. Each feeds one parser that a client, an upstream or an
//! operator's file reaches, and asserts the properties that must hold for
//! any input (beyond "does not panic"): a parsed value prints back to
//! itself, a range lies inside the blob. Not part of hoard's API.

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use crate::oci::{Digest, Reference, RepoName, Tag};

/// A target's entry: one raw input.
pub type Entry = fn(&[u8]);

/// Every target: its name (the folder under `fuzz/corpus/`) and its entry.
pub const TARGETS: &[(&str, Entry)] = &[
    ("route", route),
    ("reference", reference),
    ("range", range),
    ("www_authenticate", www_authenticate),
    ("manifest", manifest),
    ("htpasswd", htpasswd),
    ("token", token),
    ("import", import),
    ("config", config),
];

/// The request line's target: `Route::parse` on the path, the query
/// parameters the handlers read, and the newtypes the handlers build from
/// the route's parts.
pub fn route(data: &[u8]) {
    let Ok(target) = std::str::from_utf8(data) else {
        return;
    };
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target, None),
    };
    for key in [
        "ns", "n", "last", "digest", "mount", "from", "scope", "service",
    ] {
        let _ = crate::http::query_param(query, key);
    }
    use crate::http::route::Route;
    match Route::parse(path) {
        Route::Manifest { name, reference } => {
            let _ = name.parse::<RepoName>();
            let _ = reference.parse::<Reference>();
        }
        Route::Blob { name, digest } | Route::Referrers { name, digest } => {
            let _ = name.parse::<RepoName>();
            let _ = digest.parse::<Digest>();
        }
        Route::Tags { name } | Route::Uploads { name } | Route::Upload { name, .. } => {
            let _ = name.parse::<RepoName>();
        }
        _ => {}
    }
}

/// Digests, repository names, tags and references: whatever parses prints
/// back to the same text and parses again to the same value.
pub fn reference(data: &[u8]) {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(d) = s.parse::<Digest>() {
        assert_eq!(d.to_string(), s, "a digest prints as it was parsed");
        assert_eq!(d.hex().len(), d.algorithm().hex_len());
        if d.algorithm() == crate::oci::Algorithm::Sha256 {
            assert_eq!(Digest::from_bytes(d.to_bytes()), d);
        }
    }
    if let Ok(n) = s.parse::<RepoName>() {
        assert_eq!(n.as_str(), s, "a name prints as it was parsed");
        let again = n.components().collect::<Vec<_>>().join("/");
        assert_eq!(again.parse::<RepoName>().ok().as_ref(), Some(&n));
        if let Some((first, rest)) = n.strip_first() {
            assert_eq!(format!("{first}/{rest}"), s);
        }
        let _ = n.with_library();
    }
    if let Ok(t) = s.parse::<Tag>() {
        assert_eq!(t.as_str(), s, "a tag prints as it was parsed");
    }
    if let Ok(r) = s.parse::<Reference>() {
        assert_eq!(r.to_string(), s, "a reference prints as it was parsed");
    }
}

/// `Range` against a blob size: the first 8 bytes are the size, the rest
/// the header. A range hoard serves lies inside the blob and is not empty.
pub fn range(data: &[u8]) {
    let (size, header) = data.split_at(data.len().min(8));
    let mut raw = [0u8; 8];
    raw[..size.len()].copy_from_slice(size);
    let size = u64::from_le_bytes(raw);
    let Ok(header) = std::str::from_utf8(header) else {
        return;
    };
    if let Ok(Some(r)) = crate::registry::range::parse(Some(header), size) {
        assert!(
            r.start < r.end && r.end <= size,
            "{header:?} on {size} bytes gave {r:?}"
        );
    }
}

/// What an upstream answers on a 401: the `WWW-Authenticate` challenge
/// (first line) and its token realm's JSON (the rest), turned into a
/// cached token.
pub fn www_authenticate(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let (challenge, body) = text.split_once('\n').unwrap_or((&text, ""));
    let _ = crate::upstream::auth::parse_challenge(challenge);
    if let Ok(t) = serde_json::from_str::<crate::upstream::auth::TokenResponse>(body) {
        let _ = crate::upstream::auth::Token::new(
            t.token.or(t.access_token).unwrap_or_default(),
            t.expires_in,
        );
    }
}

/// Manifests and indexes as an upstream, a pushing client or an archive
/// sends them, through every reader: the first byte picks the media type
/// (one of the known ones, none, or an unknown one), the rest is the body.
pub fn manifest(data: &[u8]) {
    let Some((&pick, bytes)) = data.split_first() else {
        return;
    };
    let types = crate::oci::MANIFEST_MEDIA_TYPES;
    let media_type = match usize::from(pick) % (types.len() + 2) {
        i if i < types.len() => types[i],
        i if i == types.len() => "",
        _ => "application/octet-stream",
    };
    let _ = crate::prefetch::manifest::refs(bytes, media_type);
    let _ = crate::local::manifest::parse(bytes, Some(media_type));
    let _ = crate::local::manifest::parse(bytes, None);
    let guessed = crate::bundle::layout::media_type_of(media_type, bytes);
    let _ = crate::bundle::layout::needs(&Digest::of(bytes), &guessed, bytes);
}

/// An htpasswd file's lines (the bcrypt work is left out: its cost is
/// bounded by the parser, and hashing is not parsing).
pub fn htpasswd(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = crate::auth::htpasswd::parse_lines(text, "fuzz");
    }
}

/// The key the `token` target signs with (a file, as in production).
const TOKEN_KEY: &[u8] = b"fuzzing-key-fuzzing-key-fuzzing-key!";

/// hoard's own tokens as a client sends them back: the input as a token,
/// as the `scope` of a token request, and as the claims of a token signed
/// with the right key (so the fuzzer gets past the signature).
pub fn token(data: &[u8]) {
    static SIGNER: OnceLock<Option<crate::auth::token::Signer>> = OnceLock::new();
    let Some(signer) = SIGNER.get_or_init(token_signer) else {
        return;
    };
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let text = String::from_utf8_lossy(data);
    let _ = signer.verify(&text, now);
    let _ = crate::auth::token::parse_scope(&text);
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"HS256","typ":"JWT"}"#),
        URL_SAFE_NO_PAD.encode(data)
    );
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, TOKEN_KEY);
    let sig = ring::hmac::sign(&key, input.as_bytes());
    let signed = format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref()));
    if let Ok(claims) = signer.verify(&signed, now) {
        let _ = claims.grants("repository", "a", crate::auth::Action::Pull);
    }
}

fn token_signer() -> Option<crate::auth::token::Signer> {
    let dir = Scratch::new("token")?;
    let path = dir.0.join("key");
    std::fs::write(&path, TOKEN_KEY).ok()?;
    crate::auth::token::Signer::new(Some(&path), "hoard", Duration::from_secs(60)).ok()
}

/// A `hoard import` of the input as the archive, into an empty cache of
/// its own (the real command: tar walk, `index.json`, placement, checks).
pub fn import(data: &[u8]) {
    let Some(dir) = Scratch::new("import") else {
        return;
    };
    let archive = dir.0.join("bundle.tar");
    if std::fs::write(&archive, data).is_err() {
        return;
    }
    // The embedded mirror.toml names docker.io, ghcr.io, quay.io and
    // registry.k8s.io: placement sees real upstream keys. Nothing is fetched.
    let Ok(mut config) = crate::Config::embedded() else {
        return;
    };
    config.cache_dir = dir.0.join("cache");
    let placement = crate::bundle::import::Placement::default();
    let _ = crate::cli::import(&config, &archive, &placement);
}

/// `mirror.toml` as an operator writes it: TOML, then validation.
pub fn config(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = crate::Config::from_toml(text);
    }
}

/// A directory of one input's own under the system's temp dir, removed
/// when dropped (even when the target panics), so nothing is left behind.
struct Scratch(PathBuf);

impl Scratch {
    fn new(what: &str) -> Option<Scratch> {
        use std::sync::atomic::{AtomicU64, Ordering};
        static N: AtomicU64 = AtomicU64::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("hoard-fuzz-{what}-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).ok()?;
        Some(Scratch(dir))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
