//! The one reader of manifest JSON: what an index or an image manifest
//! refers to (child manifests with their platforms; config, layers and
//! artifact blobs with sizes and media types), for prefetch, bundle, pushed
//! manifests and the cache's repository links alike. It reads only the
//! fields hoard acts on and accepts any media type; each caller decides
//! what it requires and how strict it is (a push refuses what the cache's
//! links skip).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{is_index, Digest, DigestError, Platform};

/// The OCI index media type.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// The OCI image manifest media type.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

/// Why manifest bytes could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// Not JSON, or JSON of the wrong shape.
    #[error("not a manifest: {0}")]
    Json(#[from] serde_json::Error),
    /// A descriptor whose digest is not `algorithm:hex`.
    #[error("bad {field} {digest:?}: {source}")]
    Digest {
        /// `digest` or `blobSum`.
        field: &'static str,
        /// The text as found.
        digest: String,
        /// What is wrong with it.
        source: DigestError,
    },
}

/// An OCI content descriptor, as found in a manifest or an `index.json`
/// (and written into one by `hoard export`).
#[derive(Serialize, Deserialize, Clone, Debug, Default)]
pub struct Descriptor {
    /// Media type of what it points to. Absent and empty differ: a pushed
    /// manifest's config `mediaType: ""` is its (empty) artifact type.
    #[serde(rename = "mediaType", default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    /// `sha256:<hex>` as written (validated by [`Descriptor::digest`]).
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
    /// The validated digest.
    pub fn digest(&self) -> Result<Digest, ManifestError> {
        parse_digest("digest", &self.digest)
    }

    /// An annotation's value.
    pub fn annotation(&self, key: &str) -> Option<&str> {
        self.annotations.get(key).map(String::as_str)
    }
}

/// A manifest of any kind: an index (OCI image index, Docker manifest
/// list), an image manifest (OCI, Docker schema 2 or schema 1) or an
/// artifact manifest.
#[derive(Deserialize, Debug, Default)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    /// The `mediaType` it declares.
    #[serde(default)]
    pub media_type: Option<String>,
    /// `artifactType`.
    #[serde(default)]
    pub artifact_type: Option<String>,
    /// The image config.
    #[serde(default)]
    pub config: Option<Descriptor>,
    /// Image layers.
    #[serde(default)]
    pub layers: Vec<Descriptor>,
    /// OCI artifact manifests (draft) list their blobs here.
    #[serde(default)]
    pub blobs: Vec<Descriptor>,
    /// An index's children.
    #[serde(default)]
    pub manifests: Option<Vec<Descriptor>>,
    /// The manifest this one refers to (signatures, SBOMs).
    #[serde(default)]
    pub subject: Option<Descriptor>,
    /// Annotations.
    #[serde(default)]
    pub annotations: Option<BTreeMap<String, String>>,
    /// Docker schema 1 layers.
    #[serde(default, rename = "fsLayers")]
    fs_layers: Vec<FsLayer>,
}

#[derive(Deserialize, Debug)]
struct FsLayer {
    #[serde(rename = "blobSum")]
    blob_sum: String,
}

/// One entry of an index.
#[derive(Debug, Clone)]
pub struct Child {
    /// The child manifest.
    pub digest: Digest,
    /// Its size as the index says.
    pub size: u64,
    /// Its media type as the index says (empty when it does not).
    pub media_type: String,
    /// Its platform, when the index says.
    pub platform: Option<Platform>,
}

/// What a blob is to the image manifest that names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The image config.
    Config,
    /// A layer (schema 2, OCI, or schema 1's `fsLayers`).
    Layer,
}

impl Role {
    /// The word used in messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Config => "config",
            Role::Layer => "layer",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A blob an image manifest references.
#[derive(Debug, Clone)]
pub struct BlobRef {
    /// Its digest.
    pub digest: Digest,
    /// Its size as the manifest says (schema 1 manifests do not say).
    pub size: Option<u64>,
    /// What it is to the manifest.
    pub role: Role,
    /// A layer with `urls` (a foreign layer): registries do not serve it,
    /// so it may be absent. A config is never foreign, `urls` or not.
    pub foreign: bool,
}

fn parse_digest(field: &'static str, text: &str) -> Result<Digest, ManifestError> {
    text.parse().map_err(|source| ManifestError::Digest {
        field,
        digest: text.to_owned(),
        source,
    })
}

impl Manifest {
    /// Reads manifest bytes.
    pub fn parse(bytes: &[u8]) -> Result<Manifest, ManifestError> {
        Ok(serde_json::from_slice(bytes)?)
    }

    /// The media type of a manifest: `hint` (what its referrer or the
    /// request said) when given, else the one it declares, else guessed
    /// from its shape (OCI allows leaving it out).
    pub fn media_type_of(hint: &str, bytes: &[u8]) -> String {
        if !hint.is_empty() {
            return hint.to_owned();
        }
        match Manifest::parse(bytes) {
            Ok(m) => match m.media_type {
                Some(t) => t,
                None if m.manifests.is_some() => OCI_INDEX.to_owned(),
                None => OCI_MANIFEST.to_owned(),
            },
            Err(_) => OCI_MANIFEST.to_owned(),
        }
    }

    /// Whether this is an index: by `media_type` (as stored or sent), or
    /// by having `manifests` when the type alone does not say.
    pub fn is_index(&self, media_type: &str) -> bool {
        is_index(media_type) || self.manifests.is_some()
    }

    /// An index's children (none for an image manifest); the first bad
    /// digest refuses them all.
    pub fn children(&self) -> Result<Vec<Child>, ManifestError> {
        self.manifests
            .iter()
            .flatten()
            .map(|d| {
                Ok(Child {
                    digest: d.digest()?,
                    size: d.size,
                    media_type: d.media_type.clone().unwrap_or_default(),
                    platform: d.platform.clone(),
                })
            })
            .collect()
    }

    /// An image's blobs: config, layers, then schema 1 layers not already
    /// named. Artifact `blobs` are not an image's (a push checks them, see
    /// `local::manifest`), so they are neither read nor validated here.
    pub fn image_blobs(&self) -> Result<Vec<BlobRef>, ManifestError> {
        let described = |role: Role| {
            move |d: &Descriptor| {
                Ok(BlobRef {
                    digest: d.digest()?,
                    size: Some(d.size),
                    role,
                    foreign: role == Role::Layer && !d.urls.is_empty(),
                })
            }
        };
        let mut out = self
            .config
            .iter()
            .map(described(Role::Config))
            .chain(self.layers.iter().map(described(Role::Layer)))
            .collect::<Result<Vec<_>, ManifestError>>()?;
        for l in &self.fs_layers {
            let digest = parse_digest("blobSum", &l.blob_sum)?;
            if !out.iter().any(|b| b.digest == digest) {
                out.push(BlobRef {
                    digest,
                    size: None,
                    role: Role::Layer,
                    foreign: false,
                });
            }
        }
        Ok(out)
    }

    /// Whether it names any image blob at all (an image manifest without
    /// config, layers or schema 1 layers is no image).
    pub fn has_image_content(&self) -> bool {
        self.config.is_some() || !self.layers.is_empty() || !self.fs_layers.is_empty()
    }

    /// Every well-formed digest it names as a child, config or layer
    /// (schema 1 too), in that order, repeats kept; an ill-formed one is
    /// skipped rather than refusing the rest. Foreign layers are included:
    /// a digest says nothing about where the bytes came from. What the
    /// cache links to a repository.
    pub fn named_digests(&self) -> Vec<Digest> {
        self.manifests
            .iter()
            .flatten()
            .chain(&self.config)
            .chain(&self.layers)
            .map(|d| d.digest.as_str())
            .chain(self.fs_layers.iter().map(|l| l.blob_sum.as_str()))
            .filter_map(|d| d.parse().ok())
            .collect()
    }
}

#[cfg(test)]
mod tests;
