//! What a pushed manifest references, read from its JSON.
//!
//! Any media type is accepted and stored as pushed (images, indexes, Helm
//! charts, signatures, SBOMs); only the fields the registry must check are
//! read: `config`, `layers` and `blobs` (blobs that must exist), `manifests`
//! (children that must exist), `subject`, `artifactType`, `annotations`.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::records::ManifestRecord;
use super::Error;
use crate::oci::Digest;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Descriptor {
    digest: Digest,
    #[serde(default)]
    media_type: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Parsed {
    #[serde(default)]
    media_type: Option<String>,
    #[serde(default)]
    artifact_type: Option<String>,
    #[serde(default)]
    config: Option<Descriptor>,
    #[serde(default)]
    layers: Vec<Descriptor>,
    /// OCI artifact manifests (draft) list their blobs here.
    #[serde(default)]
    blobs: Vec<Descriptor>,
    #[serde(default)]
    manifests: Vec<Descriptor>,
    #[serde(default)]
    subject: Option<Descriptor>,
    #[serde(default)]
    annotations: Option<BTreeMap<String, String>>,
}

/// Whether a layer's media type marks it non-distributable ("foreign"):
/// Windows base layers and the like, which clients fetch from the
/// descriptor's `urls` and registries need not hold. The OCI image spec
/// lets a registry accept a manifest referencing them without the blob
/// (distribution does, for Windows images), so a push checks only the
/// other blobs; one that was uploaded anyway is kept like any layer.
pub fn is_non_distributable(media_type: &str) -> bool {
    media_type == "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
        || media_type.starts_with("application/vnd.oci.image.layer.nondistributable.")
}

/// Parses a pushed manifest. `content_type` is the PUT's media type; when
/// absent the manifest's own `mediaType` is used.
pub fn parse(bytes: &[u8], content_type: Option<&str>) -> Result<ManifestRecord, Error> {
    let p: Parsed = serde_json::from_slice(bytes)
        .map_err(|e| Error::ManifestInvalid(format!("not a manifest: {e}")))?;
    let media_type = content_type
        .filter(|t| !t.is_empty() && *t != "application/octet-stream")
        .map(str::to_owned)
        .or(p.media_type.clone())
        .ok_or_else(|| {
            Error::ManifestInvalid("no media type: send Content-Type or a mediaType field".into())
        })?;
    if let (Some(field), Some(ct)) = (&p.media_type, content_type) {
        if field != ct && ct != "application/octet-stream" {
            return Err(Error::ManifestInvalid(format!(
                "Content-Type {ct} does not match the manifest's mediaType {field}"
            )));
        }
    }
    let artifact_type = p
        .artifact_type
        .or_else(|| p.config.as_ref().and_then(|c| c.media_type.clone()));
    let foreign = p
        .layers
        .iter()
        .filter(|d| d.media_type.as_deref().is_some_and(is_non_distributable))
        .map(|d| d.digest.clone())
        .collect();
    let blobs = p
        .config
        .into_iter()
        .chain(p.layers)
        .chain(p.blobs)
        .map(|d| d.digest)
        .collect();
    Ok(ManifestRecord {
        media_type,
        size: bytes.len() as u64,
        blobs,
        foreign,
        children: p.manifests.into_iter().map(|d| d.digest).collect(),
        subject: p.subject.map(|d| d.digest),
        artifact_type,
        annotations: p.annotations,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_references() {
        let (c, l, s) = (Digest::of(b"c"), Digest::of(b"l"), Digest::of(b"s"));
        let json = format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",
            "config":{{"mediaType":"application/vnd.cncf.helm.config.v1+json","digest":"{c}","size":1}},
            "layers":[{{"digest":"{l}","size":1}}],"subject":{{"digest":"{s}","size":1}}}}"#
        );
        let m = parse(json.as_bytes(), None).unwrap();
        assert_eq!(m.blobs, vec![c, l]);
        assert_eq!(m.subject, Some(s));
        assert_eq!(
            m.artifact_type.as_deref(),
            Some("application/vnd.cncf.helm.config.v1+json")
        );
        assert!(matches!(
            parse(
                json.as_bytes(),
                Some("application/vnd.oci.image.index.v1+json")
            ),
            Err(Error::ManifestInvalid(_))
        ));
        assert!(m.foreign.is_empty());
        assert!(matches!(parse(b"{", None), Err(Error::ManifestInvalid(_))));
        assert!(matches!(
            parse(br#"{"layers":[{"digest":"sha256:../x"}]}"#, Some("x/y")),
            Err(Error::ManifestInvalid(_))
        ));
    }

    #[test]
    fn foreign_layers_are_marked() {
        let (l, f, n) = (Digest::of(b"l"), Digest::of(b"f"), Digest::of(b"n"));
        let json = format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",
            "layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{l}","size":1}},
            {{"mediaType":"application/vnd.docker.image.rootfs.foreign.diff.tar.gzip","digest":"{f}","size":1}},
            {{"mediaType":"application/vnd.oci.image.layer.nondistributable.v1.tar+zstd","digest":"{n}","size":1}}]}}"#
        );
        let m = parse(json.as_bytes(), None).unwrap();
        assert_eq!(m.blobs, vec![l, f.clone(), n.clone()]);
        assert_eq!(m.foreign, vec![f, n]);
    }
}
