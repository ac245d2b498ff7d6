//! What a pushed manifest references, read from its JSON.
//!
//! Any media type is accepted and stored as pushed (images, indexes, Helm
//! charts, signatures, SBOMs); only the fields the registry must check are
//! read: `config`, `layers` and `blobs` (blobs that must exist), `manifests`
//! (children that must exist), `subject`, `artifactType`, `annotations`.

use super::records::ManifestRecord;
use super::Error;
use crate::oci::{Descriptor, Digest, Manifest, ManifestError};

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
    // Every digest a push is checked against is validated before the media
    // type, so a manifest that names a bad one is "not a manifest" first.
    // Schema 1 `fsLayers` are not read: a push never required them.
    let invalid = |e: ManifestError| match e {
        ManifestError::Digest { source, .. } => {
            Error::ManifestInvalid(format!("not a manifest: {source}"))
        }
        json => Error::ManifestInvalid(json.to_string()),
    };
    let p = Manifest::parse(bytes).map_err(invalid)?;
    let digests = |ds: &[Descriptor]| {
        ds.iter()
            .map(Descriptor::digest)
            .collect::<Result<Vec<Digest>, _>>()
            .map_err(invalid)
    };
    let blobs = [
        digests(p.config.as_slice())?,
        digests(&p.layers)?,
        digests(&p.blobs)?,
    ]
    .concat();
    let children = digests(p.manifests.as_deref().unwrap_or_default())?;
    let subject = digests(p.subject.as_slice())?.pop();
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
    // A config's `mediaType: ""` is an (empty) artifact type; an absent one
    // is none.
    let artifact_type = p
        .artifact_type
        .or_else(|| p.config.as_ref().and_then(|c| c.media_type.clone()));
    let foreign = p
        .layers
        .iter()
        .filter(|d| d.media_type.as_deref().is_some_and(is_non_distributable))
        .map(Descriptor::digest)
        .collect::<Result<_, _>>()
        .map_err(invalid)?;
    Ok(ManifestRecord {
        media_type,
        size: bytes.len() as u64,
        blobs,
        foreign,
        children,
        subject,
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

    /// What the reader's sharing must not have changed for a push.
    #[test]
    fn schema_1_empty_config_types_and_bad_digests_as_before() {
        let v1 = br#"{"schemaVersion":1,"fsLayers":[{"blobSum":"sha256:zz"}]}"#;
        let m = parse(
            v1,
            Some("application/vnd.docker.distribution.manifest.v1+json"),
        )
        .unwrap();
        assert!(m.blobs.is_empty(), "fsLayers are not required of a push");
        let c = Digest::of(b"c");
        let empty = format!(r#"{{"config":{{"mediaType":"","digest":"{c}","size":1}}}}"#);
        let m = parse(empty.as_bytes(), Some("x/y")).unwrap();
        assert_eq!(m.artifact_type.as_deref(), Some(""));
        let absent = format!(r#"{{"config":{{"digest":"{c}","size":1}}}}"#);
        assert_eq!(
            parse(absent.as_bytes(), Some("x/y")).unwrap().artifact_type,
            None
        );
        // A bad digest is reported before a missing media type.
        match parse(br#"{"subject":{"digest":"sha256:../x"}}"#, None) {
            Err(Error::ManifestInvalid(why)) => {
                assert!(why.starts_with("not a manifest: "), "{why}")
            }
            other => panic!("{other:?}"),
        }
    }
}
