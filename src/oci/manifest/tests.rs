//! The reader's contract, one behaviour per test: what each caller
//! (prefetch, bundle, push, cache links) relied on before it was shared.

use super::*;

fn three() -> (Digest, Digest, Digest) {
    (Digest::of(b"a"), Digest::of(b"b"), Digest::of(b"c"))
}

#[test]
fn an_index_lists_its_children_with_sizes_media_types_and_platforms() {
    let (a, b, _) = three();
    let index = format!(
        r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"{OCI_MANIFEST}","digest":"{a}","size":3,"platform":{{"os":"linux","architecture":"arm","variant":"v7"}}}},{{"digest":"{b}","size":1}}]}}"#
    );
    let m = Manifest::parse(index.as_bytes()).unwrap();
    assert!(m.is_index(""), "having manifests makes it an index");
    let kids = m.children().unwrap();
    assert_eq!(kids.len(), 2);
    assert_eq!((&kids[0].digest, kids[0].size), (&a, 3));
    assert_eq!(kids[0].media_type, OCI_MANIFEST);
    assert_eq!(
        kids[0]
            .platform
            .as_ref()
            .map(Platform::to_string)
            .as_deref(),
        Some("linux/arm/v7")
    );
    assert_eq!((&kids[1].digest, kids[1].media_type.as_str()), (&b, ""));
    assert!(kids[1].platform.is_none());
}

#[test]
fn the_media_type_decides_index_when_the_json_does_not() {
    let m = Manifest::parse(b"{}").unwrap();
    assert!(m.is_index(OCI_INDEX));
    assert!(m.is_index("application/vnd.docker.distribution.manifest.list.v2+json"));
    assert!(!m.is_index(OCI_MANIFEST));
    assert!(m.children().unwrap().is_empty());
}

#[test]
fn one_bad_child_digest_refuses_the_index() {
    let (a, _, _) = three();
    let index = format!(r#"{{"manifests":[{{"digest":"{a}"}},{{"digest":"md5:x"}}]}}"#);
    let err = Manifest::parse(index.as_bytes())
        .unwrap()
        .children()
        .unwrap_err();
    assert!(
        err.to_string().starts_with("bad digest \"md5:x\": "),
        "{err}"
    );
}

#[test]
fn an_image_names_config_then_layers_with_sizes_and_foreign_marks() {
    let (a, b, c) = three();
    let image = format!(
        r#"{{"config":{{"mediaType":"x/c","digest":"{a}","size":1,"urls":["http://x"]}},"layers":[{{"digest":"{b}","size":2,"urls":["http://x"]}},{{"digest":"{c}","size":4}}]}}"#
    );
    let m = Manifest::parse(image.as_bytes()).unwrap();
    assert!(!m.is_index(OCI_MANIFEST) && m.has_image_content());
    let refs = m.image_blobs().unwrap();
    let seen: Vec<_> = refs
        .iter()
        .map(|r| (r.digest.clone(), r.role, r.size, r.foreign))
        .collect();
    assert_eq!(
        seen,
        vec![
            (a, Role::Config, Some(1), false),
            (b, Role::Layer, Some(2), true),
            (c, Role::Layer, Some(4), false),
        ]
    );
    assert_eq!(Role::Config.to_string(), "config");
}

#[test]
fn artifact_blobs_are_not_image_blobs_and_are_not_validated_there() {
    let (a, _, _) = three();
    let artifact =
        format!(r#"{{"config":{{"digest":"{a}","size":1}},"blobs":[{{"digest":"md5:x"}}]}}"#);
    let m = Manifest::parse(artifact.as_bytes()).unwrap();
    let refs = m.image_blobs().unwrap();
    assert_eq!(refs.len(), 1);
    assert_eq!(m.blobs.len(), 1, "still read, for a push to check");
}

#[test]
fn schema_1_layers_come_last_once_each_and_without_a_size() {
    let (a, b, c) = three();
    let v1 = format!(
        r#"{{"schemaVersion":1,"layers":[{{"digest":"{a}","size":7}}],"fsLayers":[{{"blobSum":"{b}"}},{{"blobSum":"{a}"}},{{"blobSum":"{b}"}},{{"blobSum":"{c}"}}]}}"#
    );
    let m = Manifest::parse(v1.as_bytes()).unwrap();
    let refs: Vec<_> = m
        .image_blobs()
        .unwrap()
        .into_iter()
        .map(|r| (r.digest, r.size))
        .collect();
    assert_eq!(refs, vec![(a, Some(7)), (b, None), (c.clone(), None)]);
    let only_v1 = format!(r#"{{"fsLayers":[{{"blobSum":"{c}"}}]}}"#);
    assert!(Manifest::parse(only_v1.as_bytes())
        .unwrap()
        .has_image_content());
    let bad = Manifest::parse(br#"{"fsLayers":[{"blobSum":"sha256:zz"}]}"#).unwrap();
    let err = bad.image_blobs().unwrap_err();
    assert!(
        err.to_string().starts_with("bad blobSum \"sha256:zz\": "),
        "{err}"
    );
}

#[test]
fn nothing_to_fetch_is_no_image() {
    assert!(!Manifest::parse(b"{}").unwrap().has_image_content());
    let only_blobs = format!(r#"{{"blobs":[{{"digest":"{}"}}]}}"#, Digest::of(b"x"));
    assert!(!Manifest::parse(only_blobs.as_bytes())
        .unwrap()
        .has_image_content());
}

#[test]
fn the_media_type_is_the_hint_else_declared_else_guessed() {
    let index = br#"{"manifests":[]}"#;
    assert_eq!(Manifest::media_type_of("x/y", index), "x/y");
    assert_eq!(Manifest::media_type_of("", index), OCI_INDEX);
    assert_eq!(
        Manifest::media_type_of("", br#"{"layers":[]}"#),
        OCI_MANIFEST
    );
    assert_eq!(
        Manifest::media_type_of("", br#"{"mediaType":"a/b","manifests":[]}"#),
        "a/b"
    );
    assert_eq!(Manifest::media_type_of("", b"not json"), OCI_MANIFEST);
}

#[test]
fn an_absent_media_type_is_not_an_empty_one() {
    let (a, _, _) = three();
    let absent = format!(r#"{{"config":{{"digest":"{a}","size":1}}}}"#);
    let empty = format!(r#"{{"config":{{"mediaType":"","digest":"{a}","size":1}}}}"#);
    let config = |j: &str| Manifest::parse(j.as_bytes()).unwrap().config.unwrap();
    assert_eq!(config(&absent).media_type, None);
    assert_eq!(config(&empty).media_type.as_deref(), Some(""));
    let written = serde_json::to_string(&config(&absent)).unwrap();
    assert!(!written.contains("mediaType"), "{written}");
}

#[test]
fn named_digests_keep_order_and_repeats_and_skip_ill_formed_ones() {
    let (a, b, c) = three();
    let index =
        format!(r#"{{"manifests":[{{"digest":"{a}"}},{{"digest":"x"}},{{"digest":"{b}"}}]}}"#);
    let m = Manifest::parse(index.as_bytes()).unwrap();
    assert_eq!(m.named_digests(), vec![a.clone(), b.clone()]);
    let image = format!(
        r#"{{"config":{{"digest":"{a}"}},"layers":[{{"digest":"{b}","urls":["http://x"]}}],"blobs":[{{"digest":"{c}"}}],"fsLayers":[{{"blobSum":"{b}"}}]}}"#
    );
    let m = Manifest::parse(image.as_bytes()).unwrap();
    assert_eq!(m.named_digests(), vec![a, b.clone(), b]);
}

#[test]
fn what_is_not_json_or_not_a_manifest_says_so() {
    let err = Manifest::parse(b"not json").unwrap_err();
    assert!(matches!(err, ManifestError::Json(_)));
    assert!(err.to_string().starts_with("not a manifest: "), "{err}");
    assert!(Manifest::parse(br#"{"layers":{}}"#).is_err());
    assert!(
        Manifest::parse(br#"{"config":{"size":1}}"#).is_err(),
        "a descriptor needs a digest"
    );
}
