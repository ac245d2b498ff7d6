//! What prefetch fetches for a manifest: an index's child manifests (with
//! their platforms), or an image manifest's config and layers, read by the
//! one manifest reader, [`crate::oci::Manifest`].

use crate::oci::{Child, Digest, Manifest, ManifestError};

/// A manifest's references.
#[derive(Debug)]
pub enum Refs {
    /// A multi-platform index (OCI image index or Docker manifest list).
    Index(Vec<Child>),
    /// An image manifest: config first, then layers, with declared sizes
    /// (0 when undeclared). Foreign layers live elsewhere: not fetched (a
    /// config is fetched even when it has `urls`).
    Image(Vec<(Digest, u64)>),
}

/// Parses manifest bytes. The media type decides index vs image when the
/// JSON alone is ambiguous.
pub fn refs(bytes: &[u8], media_type: &str) -> Result<Refs, String> {
    let m = Manifest::parse(bytes).map_err(message)?;
    if m.is_index(media_type) {
        let children = m.children().map_err(message)?;
        // An index entry's platform must name os and architecture: the
        // walk filters on them (the shared reader reads them leniently).
        if let Some(p) = children
            .iter()
            .filter_map(|c| c.platform.as_ref())
            .find(|p| p.os.is_empty() || p.architecture.is_empty())
        {
            let missing = if p.os.is_empty() {
                "os"
            } else {
                "architecture"
            };
            return Err(format!(
                "manifest is not valid JSON: an index entry's platform has no `{missing}`"
            ));
        }
        return Ok(Refs::Index(children));
    }
    Ok(Refs::Image(
        m.image_blobs()
            .map_err(message)?
            .into_iter()
            .filter(|b| !b.foreign)
            .map(|b| (b.digest, b.size.unwrap_or(0)))
            .collect(),
    ))
}

/// The operator's words for a manifest prefetch cannot read.
fn message(e: ManifestError) -> String {
    match e {
        ManifestError::Json(e) => format!("manifest is not valid JSON: {e}"),
        ManifestError::Digest { source, .. } => format!("manifest names a bad digest: {source}"),
    }
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
            c[0].platform.as_ref().map(|p| p.to_string()).as_deref(),
            Some("linux/arm/v7")
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

    /// What the reader's sharing must not have changed for prefetch.
    #[test]
    fn foreign_configs_bad_platforms_and_messages_as_before() {
        let d = |c: char| format!("sha256:{}", c.to_string().repeat(64));
        let image = format!(
            r#"{{"config":{{"digest":"{}","size":3,"urls":["https://x"]}},"fsLayers":[{{"blobSum":"{}"}}]}}"#,
            d('c'),
            d('e')
        );
        let Ok(Refs::Image(b)) = refs(image.as_bytes(), "") else {
            panic!("not an image")
        };
        assert_eq!(b.len(), 2, "a config with urls is still fetched");
        assert_eq!(b[1].1, 0, "schema 1 sizes read as 0");
        let no_os = format!(
            r#"{{"manifests":[{{"digest":"{}","platform":{{"architecture":"arm"}}}}]}}"#,
            d('a')
        );
        let err = refs(no_os.as_bytes(), "").unwrap_err();
        assert!(err.starts_with("manifest is not valid JSON: "), "{err}");
        let err = refs(b"{", "").unwrap_err();
        assert!(err.starts_with("manifest is not valid JSON: "), "{err}");
        assert!(!err.contains("not a manifest"), "{err}");
        let err = refs(br#"{"layers":[{"digest":"md5:x"}]}"#, "").unwrap_err();
        assert!(err.starts_with("manifest names a bad digest: "), "{err}");
        assert!(
            !err.contains("md5:x\""),
            "the digest error says it once: {err}"
        );
    }
}
