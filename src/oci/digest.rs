//! Content digests: `sha256:<64 lowercase hex>` and, for pushed content,
//! `sha512:<128 lowercase hex>`.
//!
//! sha256 is what every upstream uses and what the mirror side speaks; the
//! distribution spec also allows sha512 for content a client pushes, so a
//! local repository accepts both. The algorithm travels with the digest, so
//! a path, a hash check or a record derived from it can never mix them up.

use std::fmt;
use std::str::FromStr;

use sha2::{Digest as _, Sha256, Sha512};

/// A digest algorithm hoard accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Algorithm {
    /// The canonical one: every upstream, every tag push.
    Sha256,
    /// Allowed by the spec for pushed content (local repositories).
    Sha512,
}

impl Algorithm {
    /// Every algorithm, canonical first (the storage walks each one's
    /// directory).
    pub const ALL: [Algorithm; 2] = [Algorithm::Sha256, Algorithm::Sha512];

    /// Its name in a digest string and in storage paths.
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::Sha256 => "sha256",
            Algorithm::Sha512 => "sha512",
        }
    }

    /// Length of its lowercase hex encoding.
    pub fn hex_len(self) -> usize {
        match self {
            Algorithm::Sha256 => 64,
            Algorithm::Sha512 => 128,
        }
    }

    /// The algorithm named `name`, if hoard accepts it.
    pub fn from_name(name: &str) -> Option<Algorithm> {
        Algorithm::ALL.into_iter().find(|a| a.as_str() == name)
    }

    /// Digest of a complete byte slice with this algorithm.
    pub fn digest(self, bytes: &[u8]) -> Digest {
        let mut h = Hasher::for_algorithm(self);
        h.update(bytes);
        h.finish()
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A validated content digest. The only source of on-disk paths.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    algorithm: Algorithm,
    hex: String,
}

/// Why a digest string was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DigestError {
    /// The algorithm part is neither `sha256` nor `sha512`.
    #[error("unsupported digest algorithm {0:?}: sha256 and sha512 are supported")]
    Algorithm(String),
    /// The string has no `algorithm:` prefix.
    #[error(
        "digest {0:?} is not of the form <algorithm>:<hex> (sha256:<64 hex> or sha512:<128 hex>)"
    )]
    Form(String),
    /// The hex part has the wrong length or characters.
    #[error("digest hex must be lowercase hex, 64 characters for sha256 and 128 for sha512")]
    Hex,
}

impl Digest {
    /// sha256 digest of a complete byte slice (the canonical algorithm).
    pub fn of(bytes: &[u8]) -> Digest {
        Algorithm::Sha256.digest(bytes)
    }

    /// Whether `bytes` hash to this digest (with its own algorithm).
    pub fn matches(&self, bytes: &[u8]) -> bool {
        self.algorithm.digest(bytes) == *self
    }

    /// Its algorithm.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// The lowercase hex part (64 characters for sha256, 128 for sha512).
    pub fn hex(&self) -> &str {
        &self.hex
    }

    /// A digest from its two parts as found in a storage path
    /// (`blobs/<algorithm>/<2 hex>/<hex>`), validated like any other.
    pub fn from_parts(algorithm: &str, hex: &str) -> Result<Digest, DigestError> {
        format!("{algorithm}:{hex}").parse()
    }

    /// 32 bytes that stand for this digest in compact in-memory keys (the
    /// budget index): the raw sha256, or the first half of a sha512 (as
    /// unlikely to collide with anything as a sha256). Only a sha256 key
    /// can be turned back with [`Digest::from_bytes`]; the index keeps the
    /// few sha512 digests it lists beside their keys.
    pub fn to_bytes(&self) -> [u8; 32] {
        let mut raw = [0u8; 32];
        // The hex was validated at parse time: lowercase hex, at least 64
        // characters.
        if hex::decode_to_slice(&self.hex[..64], &mut raw).is_err() {
            debug_assert!(false, "a validated digest is hex");
        }
        raw
    }

    /// The sha256 digest of raw 32 bytes kept by [`Digest::to_bytes`].
    pub fn from_bytes(raw: [u8; 32]) -> Digest {
        Digest::from_raw(Algorithm::Sha256, &raw)
    }

    /// Builds a digest from a raw hash output.
    fn from_raw(algorithm: Algorithm, raw: &[u8]) -> Digest {
        Digest {
            algorithm,
            hex: hex::encode(raw),
        }
    }
}

impl FromStr for Digest {
    type Err = DigestError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (alg, hex) = s
            .split_once(':')
            .ok_or_else(|| DigestError::Form(truncate(s)))?;
        let algorithm =
            Algorithm::from_name(alg).ok_or_else(|| DigestError::Algorithm(truncate(alg)))?;
        let valid = hex.len() == algorithm.hex_len()
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if !valid {
            return Err(DigestError::Hex);
        }
        Ok(Digest {
            algorithm,
            hex: hex.to_owned(),
        })
    }
}

/// Keeps error messages short when a client sends something huge.
fn truncate(s: &str) -> String {
    s.chars().take(80).collect()
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.algorithm, self.hex)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Incremental hash, fed chunk by chunk as bytes stream past. sha256
/// unless made for another algorithm: whoever knows the digest to expect
/// hashes with its algorithm ([`Hasher::for_digest`]).
#[derive(Clone)]
pub struct Hasher(State);

#[derive(Clone)]
enum State {
    Sha256(Sha256),
    Sha512(Box<Sha512>),
}

impl Default for Hasher {
    fn default() -> Hasher {
        Hasher::new()
    }
}

impl Hasher {
    /// A fresh sha256 hasher.
    pub fn new() -> Hasher {
        Hasher::for_algorithm(Algorithm::Sha256)
    }

    /// A fresh hasher for `algorithm`.
    pub fn for_algorithm(algorithm: Algorithm) -> Hasher {
        Hasher(match algorithm {
            Algorithm::Sha256 => State::Sha256(Sha256::new()),
            Algorithm::Sha512 => State::Sha512(Box::default()),
        })
    }

    /// A fresh hasher with the algorithm of the digest the bytes must have.
    pub fn for_digest(digest: &Digest) -> Hasher {
        Hasher::for_algorithm(digest.algorithm())
    }

    /// The algorithm it hashes with.
    pub fn algorithm(&self) -> Algorithm {
        match self.0 {
            State::Sha256(_) => Algorithm::Sha256,
            State::Sha512(_) => Algorithm::Sha512,
        }
    }

    /// Feeds more bytes.
    pub fn update(&mut self, bytes: &[u8]) {
        match &mut self.0 {
            State::Sha256(h) => h.update(bytes),
            State::Sha512(h) => h.update(bytes),
        }
    }

    /// The digest of everything fed so far.
    pub fn finish(self) -> Digest {
        match self.0 {
            State::Sha256(h) => Digest::from_raw(Algorithm::Sha256, &h.finalize()),
            State::Sha512(h) => Digest::from_raw(Algorithm::Sha512, &h.finalize()),
        }
    }
}

/// The digest of the first `len` bytes of `file` with `algorithm`, read
/// back at offsets (blocking: call it on a blocking thread). For bytes that
/// were hashed with another algorithm as they arrived (a chunked upload
/// learns the client's algorithm only with its last request).
pub fn digest_file(
    file: &std::fs::File,
    algorithm: Algorithm,
    len: u64,
) -> std::io::Result<Digest> {
    use std::os::unix::fs::FileExt;
    let mut h = Hasher::for_algorithm(algorithm);
    let mut buf = vec![0u8; 1024 * 1024];
    let mut at = 0u64;
    while at < len {
        let want = usize::try_from((len - at).min(buf.len() as u64)).unwrap_or(buf.len());
        file.read_exact_at(&mut buf[..want], at)?;
        h.update(&buf[..want]);
        at += want as u64;
    }
    Ok(h.finish())
}

/// Records (local repositories) store digests as their `<algorithm>:<hex>` text.
impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Parsed and validated like any digest from the network: a record edited
/// by hand cannot smuggle a path in.
impl<'de> serde::Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints() {
        let d = Digest::of(b"hello");
        let s = d.to_string();
        assert_eq!(
            s,
            "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
        );
        assert_eq!(s.parse::<Digest>(), Ok(d));
    }

    #[test]
    fn refuses_bad_digests() {
        assert!(matches!(
            "sha256:xyz".parse::<Digest>(),
            Err(DigestError::Hex)
        ));
        assert!(matches!(
            "nocolon".parse::<Digest>(),
            Err(DigestError::Form(_))
        ));
        assert!(matches!(
            "sha384:00".parse::<Digest>(),
            Err(DigestError::Algorithm(_))
        ));
        assert_eq!("sha512:00".parse::<Digest>(), Err(DigestError::Hex));
        let short = format!("sha512:{}", "a".repeat(64));
        assert_eq!(short.parse::<Digest>(), Err(DigestError::Hex));
        let long = format!("sha256:{}", "a".repeat(128));
        assert_eq!(long.parse::<Digest>(), Err(DigestError::Hex));
        let upper = format!("sha256:{}", "A".repeat(64));
        assert_eq!(upper.parse::<Digest>(), Err(DigestError::Hex));
        let dots = format!("sha256:../{}", "a".repeat(61));
        assert_eq!(dots.parse::<Digest>(), Err(DigestError::Hex));
    }

    #[test]
    fn incremental_matches_whole() {
        let mut h = Hasher::new();
        h.update(b"hel");
        h.update(b"lo");
        assert_eq!(h.finish(), Digest::of(b"hello"));
    }

    #[test]
    fn sha512_parses_prints_and_hashes() {
        let d = Algorithm::Sha512.digest(b"hello");
        let s = d.to_string();
        assert_eq!(
            s,
            "sha512:9b71d224bd62f3785d96d46ad3ea3d73319bfbc2890caadae2dff72519673ca72323c3d99ba5c11d7c7acc6e14b8c5da0c4663475c2e5c3adef46f73bcdec043"
        );
        assert_eq!(d.algorithm(), Algorithm::Sha512);
        assert_eq!(s.parse::<Digest>(), Ok(d.clone()));
        assert!(d.matches(b"hello"));
        assert!(!d.matches(b"hellO"));
        assert_ne!(d, Digest::of(b"hello"));
        let mut h = Hasher::for_digest(&d);
        h.update(b"he");
        h.update(b"llo");
        assert_eq!(h.finish(), d);
        assert_eq!(Digest::from_parts("sha512", d.hex()), Ok(d));
    }

    #[test]
    fn a_file_is_rehashed_with_any_algorithm() {
        use std::io::Write;
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(b"hello world").unwrap();
        let d = digest_file(&f, Algorithm::Sha512, 5).unwrap();
        assert_eq!(d, Algorithm::Sha512.digest(b"hello"));
        assert!(
            digest_file(&f, Algorithm::Sha256, 99).is_err(),
            "short file"
        );
    }
}
