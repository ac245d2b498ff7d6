//! The OCI image layout's JSON: `oci-layout`, `index.json` and the
//! descriptors in them, and what a manifest needs (its children, config and
//! layers), for both directions of the carry.

use serde::{Deserialize, Serialize};

use super::Error;
use crate::oci::{BlobRef, Child, Digest, Manifest, ManifestError, Platform};
pub use crate::oci::{Descriptor, OCI_INDEX, OCI_MANIFEST};

/// The file that marks an OCI layout, and its only version.
pub const OCI_LAYOUT: &str = "oci-layout";
/// Layout version written and accepted.
pub const LAYOUT_VERSION: &str = "1.0.0";
/// The layout's entry point.
pub const INDEX_JSON: &str = "index.json";

/// The name skopeo's `oci-archive:path:<name>` and umoci's `--image
/// dir:<name>` look up.
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";
/// The full name `ctr images import` gives an image.
pub const CONTAINERD_NAME: &str = "io.containerd.image.name";
/// Where hoard found the image: the `[upstreams]` key...
pub const HOARD_UPSTREAM: &str = "io.hoard.upstream";
/// ...the repository as named there...
pub const HOARD_REPOSITORY: &str = "io.hoard.repository";
/// ...and the tag, so an import puts the tag back where it came from.
pub const HOARD_TAG: &str = "io.hoard.tag";

/// The content of the `oci-layout` file.
#[derive(Serialize, Deserialize)]
pub struct LayoutFile {
    /// Always [`LAYOUT_VERSION`].
    #[serde(rename = "imageLayoutVersion")]
    pub image_layout_version: String,
}

/// `index.json` (an OCI image index).
#[derive(Serialize, Deserialize, Default)]
pub struct Index {
    /// Always 2.
    #[serde(rename = "schemaVersion")]
    pub schema_version: u32,
    /// [`OCI_INDEX`]; optional when reading.
    #[serde(rename = "mediaType", default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    /// The images.
    #[serde(default)]
    pub manifests: Vec<Descriptor>,
}

/// The validated digest of an `index.json` entry; `at` names the entry.
pub fn digest(d: &Descriptor, at: &str) -> Result<Digest, Error> {
    // The reader's error already reads `bad digest "<text>": <why>`.
    d.digest().map_err(|e| Error::archive(at, e.to_string()))
}

/// Platforms to keep from multi-platform images (`linux/amd64,linux/arm64/v8`),
/// parsed as `hoard prefetch --platform` parses them. Empty: all of them.
#[derive(Debug, Clone, Default)]
pub struct Platforms(Vec<Platform>);

impl std::str::FromStr for Platforms {
    type Err = String;

    fn from_str(s: &str) -> Result<Platforms, String> {
        Platform::parse_list(&[s.to_owned()])
            .map(Platforms)
            .map_err(|e| e.to_string())
    }
}

impl Platforms {
    /// Whether an index entry with `platform` is wanted. With a filter, an
    /// entry without a platform (an attestation, say) is not.
    pub fn wants(&self, platform: Option<&Platform>) -> bool {
        if self.0.is_empty() {
            return true;
        }
        let Some(p) = platform else { return false };
        self.0.iter().any(|want| want.matches(p))
    }

    /// Whether every platform is kept.
    pub fn all(&self) -> bool {
        self.0.is_empty()
    }
}

/// What a manifest needs besides itself.
#[derive(Debug)]
pub enum Needs {
    /// An index (OCI or Docker list): its child manifests.
    Children(Vec<Child>),
    /// An image manifest: config and layers (a foreign one may be absent).
    Blobs(Vec<BlobRef>),
}

/// The media type of a manifest: the one its referrer gave, else the one it
/// declares, else guessed from its shape (OCI allows leaving it out).
pub fn media_type_of(hint: &str, bytes: &[u8]) -> String {
    Manifest::media_type_of(hint, bytes)
}

/// What the manifest `digest` of `media_type` needs.
pub fn needs(digest: &Digest, media_type: &str, bytes: &[u8]) -> Result<Needs, Error> {
    let bad = |e: ManifestError| Error::Manifest {
        digest: digest.clone(),
        why: e.to_string(),
    };
    let m = Manifest::parse(bytes).map_err(bad)?;
    if m.is_index(media_type) {
        return m.children().map(Needs::Children).map_err(bad);
    }
    let blobs = m.image_blobs().map_err(bad)?;
    if !m.has_image_content() {
        return Err(Error::Manifest {
            digest: digest.clone(),
            why: "has neither manifests, config nor layers".into(),
        });
    }
    Ok(Needs::Blobs(blobs))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::Role;

    #[test]
    fn platforms_filter() {
        let p: Platforms = "linux/amd64, linux/arm64/v8".parse().unwrap();
        let amd = Platform {
            os: "linux".into(),
            architecture: "amd64".into(),
            variant: None,
        };
        let arm = Platform {
            architecture: "arm64".into(),
            variant: Some("v8".into()),
            ..amd.clone()
        };
        let s390 = Platform {
            architecture: "s390x".into(),
            ..amd.clone()
        };
        assert!(p.wants(Some(&amd)) && p.wants(Some(&arm)));
        assert!(!p.wants(Some(&s390)) && !p.wants(None));
        assert!(Platforms::default().wants(None));
        assert!("linux".parse::<Platforms>().is_err());
        assert_eq!(arm.to_string(), "linux/arm64/v8");
    }

    #[test]
    fn walks_indexes_manifests_and_schema1() {
        let d = Digest::of(b"m");
        let (a, b) = (Digest::of(b"a"), Digest::of(b"b"));
        let index = format!(
            r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"{OCI_MANIFEST}","digest":"{a}","size":3,"platform":{{"os":"linux","architecture":"arm64"}}}}]}}"#
        );
        assert_eq!(media_type_of("", index.as_bytes()), OCI_INDEX);
        match needs(&d, OCI_INDEX, index.as_bytes()).unwrap() {
            Needs::Children(c) => {
                assert_eq!(c[0].digest, a);
                assert_eq!(c[0].platform.as_ref().unwrap().architecture, "arm64");
            }
            other => panic!("{other:?}"),
        }
        let image = format!(
            r#"{{"schemaVersion":2,"config":{{"digest":"{a}","size":1}},"layers":[{{"digest":"{b}","size":2,"urls":["http://x"]}}]}}"#
        );
        match needs(&d, OCI_MANIFEST, image.as_bytes()).unwrap() {
            Needs::Blobs(n) => {
                assert_eq!((n[0].role, n[1].role), (Role::Config, Role::Layer));
                assert!(!n[0].foreign && n[1].foreign);
            }
            other => panic!("{other:?}"),
        }
        let v1 = format!(
            r#"{{"schemaVersion":1,"fsLayers":[{{"blobSum":"{b}"}},{{"blobSum":"{b}"}}]}}"#
        );
        match needs(
            &d,
            "application/vnd.docker.distribution.manifest.v1+prettyjws",
            v1.as_bytes(),
        )
        .unwrap()
        {
            Needs::Blobs(n) => assert_eq!(n.len(), 1),
            other => panic!("{other:?}"),
        }
        assert!(needs(&d, OCI_MANIFEST, b"{}").is_err());
        assert!(needs(&d, OCI_MANIFEST, b"not json").is_err());
        let bad = r#"{"config":{"digest":"sha256:zz","size":1}}"#;
        assert!(needs(&d, OCI_MANIFEST, bad.as_bytes()).is_err());
    }
}
