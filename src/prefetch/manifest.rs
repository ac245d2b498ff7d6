//! What a manifest refers to: an index's child manifests (with their
//! platforms), or an image manifest's config and layers.

use serde::Deserialize;

use crate::oci::Digest;

/// One entry of an index.
#[derive(Debug, Clone)]
pub struct Child {
    /// The child manifest.
    pub digest: Digest,
    /// `os/arch[/variant]` as the index says, if it says.
    pub platform: Option<(String, String, Option<String>)>,
}

/// A manifest's references.
#[derive(Debug)]
pub enum Refs {
    /// A multi-platform index (OCI image index or Docker manifest list).
    Index(Vec<Child>),
    /// An image manifest: config first, then layers, with declared sizes.
    Image(Vec<(Digest, u64)>),
}

#[derive(Deserialize)]
struct Raw {
    #[serde(default)]
    manifests: Option<Vec<RawDescriptor>>,
    #[serde(default)]
    config: Option<RawDescriptor>,
    #[serde(default)]
    layers: Vec<RawDescriptor>,
    /// Docker schema 1.
    #[serde(default, rename = "fsLayers")]
    fs_layers: Vec<RawFsLayer>,
}

#[derive(Deserialize)]
struct RawDescriptor {
    digest: String,
    #[serde(default)]
    size: u64,
    #[serde(default)]
    platform: Option<RawPlatform>,
    /// Foreign (non-distributable) layers live elsewhere: not fetched.
    #[serde(default)]
    urls: Vec<String>,
}

#[derive(Deserialize)]
struct RawPlatform {
    os: String,
    architecture: String,
    #[serde(default)]
    variant: Option<String>,
}

#[derive(Deserialize)]
struct RawFsLayer {
    #[serde(rename = "blobSum")]
    blob_sum: String,
}

/// Parses manifest bytes. The media type decides index vs image when the
/// JSON alone is ambiguous.
pub fn refs(bytes: &[u8], media_type: &str) -> Result<Refs, String> {
    let raw: Raw =
        serde_json::from_slice(bytes).map_err(|e| format!("manifest is not valid JSON: {e}"))?;
    let digest = |s: &str| {
        s.parse::<Digest>()
            .map_err(|e| format!("manifest names a bad digest: {e}"))
    };
    if crate::oci::is_index(media_type) || raw.manifests.is_some() {
        let children = raw
            .manifests
            .unwrap_or_default()
            .into_iter()
            .map(|m| {
                Ok(Child {
                    digest: digest(&m.digest)?,
                    platform: m.platform.map(|p| (p.os, p.architecture, p.variant)),
                })
            })
            .collect::<Result<_, String>>()?;
        return Ok(Refs::Index(children));
    }
    let mut blobs = Vec::new();
    if let Some(c) = raw.config {
        blobs.push((digest(&c.digest)?, c.size));
    }
    for l in raw.layers.into_iter().filter(|l| l.urls.is_empty()) {
        blobs.push((digest(&l.digest)?, l.size));
    }
    for l in raw.fs_layers {
        let d = digest(&l.blob_sum)?;
        if !blobs.iter().any(|(x, _)| *x == d) {
            blobs.push((d, 0));
        }
    }
    Ok(Refs::Image(blobs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_and_image() {
        let d = |c: char| format!("sha256:{}", c.to_string().repeat(64));
        let index = format!(
            r#"{{"schemaVersion":2,"manifests":[{{"digest":"{}","size":1,"platform":{{"os":"linux","architecture":"arm","variant":"v7"}}}},{{"digest":"{}","size":1}}]}}"#,
            d('a'),
            d('b')
        );
        let Refs::Index(c) =
            refs(index.as_bytes(), "application/vnd.oci.image.index.v1+json").unwrap()
        else {
            panic!("not an index")
        };
        assert_eq!(c.len(), 2);
        assert_eq!(
            c[0].platform,
            Some(("linux".into(), "arm".into(), Some("v7".into())))
        );
        assert!(c[1].platform.is_none());
        let image = format!(
            r#"{{"config":{{"digest":"{}","size":3}},"layers":[{{"digest":"{}","size":9}},{{"digest":"{}","size":5,"urls":["https://x"]}}]}}"#,
            d('c'),
            d('e'),
            d('f')
        );
        let Refs::Image(b) = refs(
            image.as_bytes(),
            "application/vnd.oci.image.manifest.v1+json",
        )
        .unwrap() else {
            panic!("not an image")
        };
        assert_eq!(b.len(), 2, "foreign layer skipped");
        assert_eq!(b[1].1, 9);
        assert!(refs(b"{\"layers\":[{\"digest\":\"md5:x\"}]}", "x").is_err());
    }
}
