//! Record keys: `namespace/...`, built from digests and ids hoard made.
//!
//! A key is the record's relative path on disk and its object key on an
//! object store, so it is validated like a path that must stay inside its
//! directory: segments of `[a-z0-9._-]`, none empty, `.` or `..`, and a
//! first segment naming a namespace the layout knows.

use std::fmt;

use crate::oci::Digest;

/// Namespaces records live in (top-level directories of the disk layout).
/// A new kind of record adds its namespace here (and a constructor below):
/// its directory then belongs to the layout and is not quarantined at start.
pub const NAMESPACES: &[&str] = &[
    "manifests",
    "tags",
    "pins",
    "local",
    "uploads",
    "links",
    "leases",
];

/// A validated record key.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RecordKey(String);

impl RecordKey {
    /// Parses a key (see the module doc for what is accepted).
    pub fn new(key: &str) -> Option<RecordKey> {
        let mut segments = key.split('/');
        let ns = segments.next()?;
        if !NAMESPACES.contains(&ns) {
            return None;
        }
        let mut rest = 0;
        for s in segments {
            let ok = !s.is_empty()
                && s != "."
                && s != ".."
                && s.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
                });
            if !ok {
                return None;
            }
            rest += 1;
        }
        (rest > 0).then(|| RecordKey(key.to_owned()))
    }

    /// The key as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// A manifest's media type: `manifests/<algorithm>/<2 hex>/<hex>`.
    pub fn media_type(digest: &Digest) -> RecordKey {
        let hex = digest.hex();
        let alg = digest.algorithm();
        RecordKey(format!("manifests/{alg}/{}/{hex}", &hex[..2]))
    }

    /// A tag record, by the sha256 of `upstream/repo:tag`:
    /// `tags/<2 hex>/<hex>.json`.
    pub fn tag(id: &Digest) -> RecordKey {
        let hex = id.hex();
        RecordKey(format!("tags/{}/{hex}.json", &hex[..2]))
    }

    /// A pin, by the sha256 of its key: `pins/<hex>.json`.
    pub fn pin(id: &Digest) -> RecordKey {
        RecordKey(format!("pins/{}.json", id.hex()))
    }

    /// A local repository, by the sha256 of its name: `local/<hex>.json`.
    pub fn local(id: &Digest) -> RecordKey {
        RecordKey(format!("local/{}.json", id.hex()))
    }

    /// A link of content to an upstream repository (see `cache::links`),
    /// by the repository's id (sha256 of `upstream/repo`) and the digest
    /// it was made for: `links/<id>/<hex>`.
    pub fn link(repo: &Digest, digest: &Digest) -> RecordKey {
        RecordKey(format!("links/{}/{}", repo.hex(), digest.hex()))
    }

    /// The prefix of one repository's links, for [`Records::list`](super::Records::list).
    pub fn links_of(repo: &Digest) -> String {
        format!("links/{}/", repo.hex())
    }

    /// A lease, by the job it is for (`upkeep`): `leases/<job>.json`.
    pub fn lease(job: &str) -> Option<RecordKey> {
        RecordKey::new(&format!("leases/{job}.json"))
    }

    /// An upload session, by its id (hex hoard made): `uploads/<id>.json`.
    pub fn upload(id: &str) -> Option<RecordKey> {
        RecordKey::new(&format!("uploads/{id}.json"))
    }
}

impl fmt::Display for RecordKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_stay_inside_their_namespace() {
        let d = Digest::of(b"x");
        for k in [
            RecordKey::tag(&d),
            RecordKey::pin(&d),
            RecordKey::local(&d),
            RecordKey::media_type(&d),
            RecordKey::link(&d, &d),
        ] {
            assert_eq!(RecordKey::new(k.as_str()), Some(k.clone()), "{k}");
        }
        for bad in [
            "",
            "tags",
            "tags/",
            "tags//a",
            "tags/../x",
            "tags/./x",
            "blobs/sha256/aa/bb",
            "tmp/x",
            "/tags/x",
            "tags/A",
            "tags/a b",
            "quarantine/x",
        ] {
            assert_eq!(RecordKey::new(bad), None, "{bad:?}");
        }
    }
}
