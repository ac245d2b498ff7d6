//! Content digests (`sha256:<64 lowercase hex>`).

use std::fmt;
use std::str::FromStr;

use sha2::{Digest as _, Sha256};

/// A validated sha256 content digest. The only source of on-disk paths.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    hex: String,
}

/// Why a digest string was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DigestError {
    /// The algorithm part is not `sha256`.
    #[error("unsupported digest algorithm {0:?}: only sha256 is supported")]
    Algorithm(String),
    /// The string has no `algorithm:` prefix.
    #[error("digest {0:?} is not of the form sha256:<hex>")]
    Form(String),
    /// The hex part has the wrong length or characters.
    #[error("digest hex must be 64 lowercase hex characters")]
    Hex,
}

impl Digest {
    /// Digest of a complete byte slice.
    pub fn of(bytes: &[u8]) -> Digest {
        Digest {
            hex: hex::encode(Sha256::digest(bytes)),
        }
    }

    /// The 64-character lowercase hex part.
    pub fn hex(&self) -> &str {
        &self.hex
    }

    /// The raw 32 bytes, for compact in-memory keys (the budget index).
    pub fn to_bytes(&self) -> [u8; 32] {
        let mut raw = [0u8; 32];
        // The hex was validated at parse time: 64 lowercase hex characters.
        if hex::decode_to_slice(&self.hex, &mut raw).is_err() {
            debug_assert!(false, "a validated digest is hex");
        }
        raw
    }

    /// The digest of raw 32 bytes kept by [`Digest::to_bytes`].
    pub fn from_bytes(raw: [u8; 32]) -> Digest {
        Digest::from_raw(&raw)
    }

    /// Builds a digest from a raw 32-byte sha256 output.
    fn from_raw(raw: &[u8]) -> Digest {
        Digest {
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
        if alg != "sha256" {
            return Err(DigestError::Algorithm(truncate(alg)));
        }
        let valid = hex.len() == 64
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if !valid {
            return Err(DigestError::Hex);
        }
        Ok(Digest {
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
        write!(f, "sha256:{}", self.hex)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Incremental sha256, fed chunk by chunk as bytes stream past.
#[derive(Default, Clone)]
pub struct Hasher(Sha256);

impl Hasher {
    /// A fresh hasher.
    pub fn new() -> Hasher {
        Hasher(Sha256::new())
    }

    /// Feeds more bytes.
    pub fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    /// The digest of everything fed so far.
    pub fn finish(self) -> Digest {
        Digest::from_raw(&self.0.finalize())
    }
}

/// Records (local repositories) store digests as their `sha256:<hex>` text.
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
            "sha512:00".parse::<Digest>(),
            Err(DigestError::Algorithm(_))
        ));
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
}
