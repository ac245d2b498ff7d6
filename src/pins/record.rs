//! A pin as stored: one record per pinned reference, keyed by the sha256
//! of the reference so no client text becomes a key.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::cache::TagKey;
use crate::oci::{Digest, RepoName, Tag};

/// One pinned image: the reference it was asked by and every digest it
/// needs, so the set held out of the budget can be rebuilt at start without
/// parsing a manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pin {
    /// Configured upstream key (`docker.io`).
    pub upstream: String,
    /// Repository as named upstream (`library/alpine`).
    pub repo: RepoName,
    /// The tag, when pinned by tag: pulls of it keep getting `digest`.
    pub tag: Option<Tag>,
    /// The top manifest (an index or a single-platform manifest).
    pub digest: Digest,
    /// Child manifests kept (the selected platforms of an index).
    pub manifests: Vec<Digest>,
    /// Configs and layers.
    pub blobs: Vec<Digest>,
    /// Platforms asked for (`linux/arm64`); empty means all.
    pub platforms: Vec<String>,
    /// Total bytes of the manifests and blobs.
    pub bytes: u64,
    /// When it was pinned.
    pub pinned_at: SystemTime,
}

impl Pin {
    /// What identifies this pin: `upstream/repo:tag`, or `@digest` when
    /// pinned by digest only. Pinning the same reference again replaces it.
    pub fn key(&self) -> String {
        match &self.tag {
            Some(t) => format!("{}/{}:{t}", self.upstream, self.repo),
            None => format!("{}/{}@{}", self.upstream, self.repo, self.digest),
        }
    }

    /// The tag record key this pin fixes, if pinned by tag.
    pub fn tag_key(&self) -> Option<TagKey> {
        Some(TagKey {
            upstream: self.upstream.clone(),
            repo: self.repo.clone(),
            tag: self.tag.clone()?,
        })
    }

    /// Every digest the pin holds: top manifest, children, blobs.
    pub fn digests(&self) -> impl Iterator<Item = &Digest> {
        std::iter::once(&self.digest)
            .chain(self.manifests.iter())
            .chain(self.blobs.iter())
    }

    /// Where the pin of `key` is recorded: by the sha256 of the key.
    pub fn record_key(key: &str) -> crate::storage::RecordKey {
        crate::storage::RecordKey::pin(&Digest::of(key.as_bytes()))
    }
}

/// The JSON form (strings, validated again when loaded).
#[derive(Serialize, Deserialize)]
pub struct PinFile {
    upstream: String,
    repo: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tag: Option<String>,
    digest: String,
    manifests: Vec<String>,
    blobs: Vec<String>,
    #[serde(default)]
    platforms: Vec<String>,
    bytes: u64,
    pinned_at_ms: u64,
}

impl From<&Pin> for PinFile {
    fn from(p: &Pin) -> PinFile {
        PinFile {
            upstream: p.upstream.clone(),
            repo: p.repo.to_string(),
            tag: p.tag.as_ref().map(|t| t.to_string()),
            digest: p.digest.to_string(),
            manifests: p.manifests.iter().map(|d| d.to_string()).collect(),
            blobs: p.blobs.iter().map(|d| d.to_string()).collect(),
            platforms: p.platforms.clone(),
            bytes: p.bytes,
            pinned_at_ms: p
                .pinned_at
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_millis() as u64,
        }
    }
}

impl PinFile {
    /// The typed pin; `None` when a field does not validate (the file was
    /// damaged or edited by hand).
    pub fn into_pin(self) -> Option<Pin> {
        let digests = |v: Vec<String>| v.iter().map(|d| d.parse().ok()).collect::<Option<_>>();
        Some(Pin {
            upstream: self.upstream,
            repo: self.repo.parse().ok()?,
            tag: match self.tag {
                Some(t) => Some(t.parse().ok()?),
                None => None,
            },
            digest: self.digest.parse().ok()?,
            manifests: digests(self.manifests)?,
            blobs: digests(self.blobs)?,
            platforms: self.platforms,
            bytes: self.bytes,
            pinned_at: UNIX_EPOCH + Duration::from_millis(self.pinned_at_ms),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_damage() {
        let pin = Pin {
            upstream: "docker.io".into(),
            repo: "library/alpine".parse().unwrap(),
            tag: Some("3.19".parse().unwrap()),
            digest: Digest::of(b"index"),
            manifests: vec![Digest::of(b"amd64")],
            blobs: vec![Digest::of(b"config"), Digest::of(b"layer")],
            platforms: vec!["linux/amd64".into()],
            bytes: 42,
            pinned_at: UNIX_EPOCH + Duration::from_millis(1_700_000_000_123),
        };
        let json = serde_json::to_vec(&PinFile::from(&pin)).unwrap();
        let back: PinFile = serde_json::from_slice(&json).unwrap();
        assert_eq!(back.into_pin(), Some(pin.clone()));
        assert_eq!(pin.key(), "docker.io/library/alpine:3.19");
        assert_eq!(pin.digests().count(), 4);
        let bad = String::from_utf8(json)
            .unwrap()
            .replace("library/alpine", "../etc");
        let back: PinFile = serde_json::from_str(&bad).unwrap();
        assert_eq!(back.into_pin(), None);
    }
}
