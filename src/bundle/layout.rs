//! The OCI image layout's JSON: `oci-layout`, `index.json` and the
//! descriptors in them, and what a manifest needs (its children, config and
//! layers), for both directions of the carry.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::Error;
use crate::oci::{is_index, Digest};

/// The file that marks an OCI layout, and its only version.
pub const OCI_LAYOUT: &str = "oci-layout";
/// Layout version written and accepted.
pub const LAYOUT_VERSION: &str = "1.0.0";
/// The layout's entry point.
pub const INDEX_JSON: &str = "index.json";
/// The OCI index media type (that of `index.json` itself).
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// The OCI image manifest media type.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

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

/// An OCI content descriptor.
#[derive(Serialize, Deserialize, Clone, Debug, Default)]
pub struct Descriptor {
    /// Media type of what it points to.
    #[serde(rename = "mediaType", default)]
    pub media_type: String,
    /// `sha256:<hex>` (validated by [`Descriptor::digest`]).
    pub digest: String,
    /// Size in bytes.
    #[serde(default)]
    pub size: u64,
    /// Where a foreign layer lives; such layers may be absent.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub urls: Vec<String>,
    /// The platform of an index entry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    /// Names and other annotations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

impl Descriptor {
    /// The validated digest; `at` names where the descriptor was found.
    pub fn digest(&self, at: &str) -> Result<Digest, Error> {
        self.digest
            .parse()
            .map_err(|e| Error::archive(at, format!("bad digest {:?}: {e}", self.digest)))
    }

    /// An annotation's value.
    pub fn annotation(&self, key: &str) -> Option<&str> {
        self.annotations.get(key).map(String::as_str)
    }
}

/// A platform as written in an index.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct Platform {
    /// e.g. `amd64`.
    #[serde(default)]
    pub architecture: String,
    /// e.g. `linux`.
    #[serde(default)]
    pub os: String,
    /// e.g. `v8`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// Platforms to keep from multi-platform images (`linux/amd64,linux/arm64/v8`),
/// parsed as `hoard prefetch --platform` parses them. Empty: all of them.
#[derive(Debug, Clone, Default)]
pub struct Platforms(Vec<crate::oci::Platform>);

impl std::str::FromStr for Platforms {
    type Err = String;

    fn from_str(s: &str) -> Result<Platforms, String> {
        crate::oci::Platform::parse_list(&[s.to_owned()])
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
        self.0
            .iter()
            .any(|want| want.matches(&p.os, &p.architecture, p.variant.as_deref()))
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
    /// An image manifest: config and layers.
    Blobs(Vec<Needed>),
}

/// A child manifest of an index.
#[derive(Debug)]
pub struct Child {
    /// Its digest.
    pub digest: Digest,
    /// Its size as the index says.
    pub size: u64,
    /// Its media type as the index says.
    pub media_type: String,
    /// Its platform, when given.
    pub platform: Option<Platform>,
}

/// A blob an image manifest references.
#[derive(Debug)]
pub struct Needed {
    /// Its digest.
    pub digest: Digest,
    /// Its size as the manifest says (schema 1 manifests do not say).
    pub size: Option<u64>,
    /// "config" or "layer", for messages.
    pub role: &'static str,
    /// A foreign layer (with `urls`): not served by registries, so it may
    /// be absent.
    pub optional: bool,
}

#[derive(Deserialize)]
struct AnyManifest {
    #[serde(rename = "mediaType", default)]
    media_type: Option<String>,
    #[serde(default)]
    manifests: Option<Vec<Descriptor>>,
    #[serde(default)]
    config: Option<Descriptor>,
    #[serde(default)]
    layers: Vec<Descriptor>,
    /// Docker schema 1.
    #[serde(rename = "fsLayers", default)]
    fs_layers: Vec<FsLayer>,
}

#[derive(Deserialize)]
struct FsLayer {
    #[serde(rename = "blobSum")]
    blob_sum: String,
}

/// The media type of a manifest: the one its referrer gave, else the one it
/// declares, else guessed from its shape (OCI allows leaving it out).
pub fn media_type_of(hint: &str, bytes: &[u8]) -> String {
    if !hint.is_empty() {
        return hint.to_owned();
    }
    match serde_json::from_slice::<AnyManifest>(bytes) {
        Ok(m) => match m.media_type {
            Some(t) => t,
            None if m.manifests.is_some() => OCI_INDEX.to_owned(),
            None => OCI_MANIFEST.to_owned(),
        },
        Err(_) => OCI_MANIFEST.to_owned(),
    }
}

/// What the manifest `digest` of `media_type` needs.
pub fn needs(digest: &Digest, media_type: &str, bytes: &[u8]) -> Result<Needs, Error> {
    let bad = |why: String| Error::Manifest {
        digest: digest.clone(),
        why,
    };
    let m: AnyManifest =
        serde_json::from_slice(bytes).map_err(|e| bad(format!("not a manifest: {e}")))?;
    let parse = |d: &Descriptor| {
        d.digest
            .parse::<Digest>()
            .map_err(|e| bad(format!("bad digest {:?}: {e}", d.digest)))
    };
    if is_index(media_type) || m.manifests.is_some() {
        let children = m.manifests.unwrap_or_default();
        return children
            .iter()
            .map(|d| {
                Ok(Child {
                    digest: parse(d)?,
                    size: d.size,
                    media_type: d.media_type.clone(),
                    platform: d.platform.clone(),
                })
            })
            .collect::<Result<_, _>>()
            .map(Needs::Children);
    }
    let mut out = Vec::new();
    if let Some(c) = &m.config {
        out.push(Needed {
            digest: parse(c)?,
            size: Some(c.size),
            role: "config",
            optional: false,
        });
    }
    for l in &m.layers {
        out.push(Needed {
            digest: parse(l)?,
            size: Some(l.size),
            role: "layer",
            optional: !l.urls.is_empty(),
        });
    }
    for l in &m.fs_layers {
        let digest = l
            .blob_sum
            .parse()
            .map_err(|e| bad(format!("bad blobSum {:?}: {e}", l.blob_sum)))?;
        if !out.iter().any(|n: &Needed| n.digest == digest) {
            out.push(Needed {
                digest,
                size: None,
                role: "layer",
                optional: false,
            });
        }
    }
    if m.config.is_none() && m.layers.is_empty() && m.fs_layers.is_empty() {
        return Err(bad("has neither manifests, config nor layers".into()));
    }
    Ok(Needs::Blobs(out))
}

#[cfg(test)]
mod tests {
    use super::*;

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
                assert_eq!((n[0].role, n[1].role), ("config", "layer"));
                assert!(!n[0].optional && n[1].optional);
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
