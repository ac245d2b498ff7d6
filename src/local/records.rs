//! Records of local repositories: linked blobs, manifests, tags.
//!
//! One record per repository in the [`Records`] store, under
//! [`RecordKey::local`] of the sha256 of its name, replaced whole (on disk:
//! temp file + fsync + rename, like the cache's tag records), so a crash
//! leaves the old or the new record, never half of one. The name inside the
//! record is what counts; the key is only derived from it, so no client
//! text ever becomes a key. Everything is loaded at start.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::cache::Holder;
use crate::oci::{Digest, RepoName, Tag};
use crate::storage::{RecordKey, Records, Version};

/// A blob linked into a repository (uploaded, mounted, or a manifest).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Link {
    /// Its size in bytes.
    pub size: u64,
    /// Unix seconds when it was last linked (the GC's grace period).
    pub linked_at: u64,
    /// The store already had it from an upstream when it was linked:
    /// serving it under an upstream's name reveals nothing pushed.
    #[serde(default)]
    pub public: bool,
}

/// A pushed manifest: what the GC, the referrers API and the validation
/// of indexes need without reading its bytes again.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ManifestRecord {
    /// Media type as pushed (the `Content-Type` of the PUT).
    pub media_type: String,
    /// Size of its bytes.
    pub size: u64,
    /// Blobs it references (config, layers).
    #[serde(default)]
    pub blobs: Vec<Digest>,
    /// Those of `blobs` that are non-distributable (foreign) layers: a push
    /// need not have uploaded them (see [`super::manifest::is_non_distributable`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub foreign: Vec<Digest>,
    /// Manifests it references (an index's children).
    #[serde(default)]
    pub children: Vec<Digest>,
    /// The manifest it refers to (OCI 1.1 `subject`).
    #[serde(default)]
    pub subject: Option<Digest>,
    /// `artifactType`, or the config's media type (referrers API).
    #[serde(default)]
    pub artifact_type: Option<String>,
    /// Its `annotations` (referrers API).
    #[serde(default)]
    pub annotations: Option<BTreeMap<String, String>>,
}

/// One local repository.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct RepoRecord {
    /// Blobs this repository may serve, by digest.
    #[serde(default)]
    pub blobs: BTreeMap<Digest, Link>,
    /// Manifests pushed to it, by digest.
    #[serde(default)]
    pub manifests: BTreeMap<Digest, ManifestRecord>,
    /// Tag -> manifest digest.
    #[serde(default)]
    pub tags: BTreeMap<String, Digest>,
}

impl RepoRecord {
    /// A repository with nothing left in it stops existing.
    pub fn is_empty(&self) -> bool {
        self.blobs.is_empty() && self.manifests.is_empty() && self.tags.is_empty()
    }

    /// Links a blob now (a fresh link is in the GC's grace period).
    pub fn link(&mut self, digest: Digest, size: u64, public: bool) {
        let linked_at = crate::cache::index::now_secs();
        let public = public || self.blobs.get(&digest).is_some_and(|l| l.public);
        self.blobs.insert(
            digest,
            Link {
                size,
                linked_at,
                public,
            },
        );
    }

    /// Blobs that its manifests reference (kept by the GC regardless of age).
    pub fn referenced(&self) -> BTreeSet<Digest> {
        let mut out = BTreeSet::new();
        for (d, m) in &self.manifests {
            out.insert(d.clone());
            out.extend(m.blobs.iter().cloned());
            out.extend(m.children.iter().cloned());
        }
        out
    }
}

#[derive(Serialize, Deserialize)]
struct RepoFile {
    name: String,
    #[serde(flatten)]
    record: RepoRecord,
}

/// Where a repository's record lives: keyed by the hash of its name.
pub fn key_of(name: &RepoName) -> RecordKey {
    RecordKey::local(&Digest::of(name.as_str().as_bytes()))
}

/// Writes a repository's record durably; an empty one is removed.
/// Conditional: `expected` is the version this process last read or wrote
/// (`None`: the record must not exist yet), so a writer that raced another
/// (a second replica on a shared store) fails instead of overwriting it.
/// Returns the new version (`None` once removed).
pub async fn save(
    records: &dyn Records,
    name: &RepoName,
    record: &RepoRecord,
    expected: Option<&Version>,
) -> io::Result<Option<Version>> {
    let key = key_of(name);
    if record.is_empty() {
        records.delete(&key).await?;
        return Ok(None);
    }
    let file = RepoFile {
        name: name.to_string(),
        record: record.clone(),
    };
    let bytes = Bytes::from(serde_json::to_vec(&file).map_err(io::Error::other)?);
    let version = match expected {
        Some(v) => records.replace(&key, bytes, v).await?,
        None => records.create(&key, bytes).await?,
    };
    Ok(Some(version))
}

/// Every record. A record that cannot be read is skipped with an error in
/// the log and left in place for the operator: its blobs are then not held.
pub async fn load(records: &dyn Records) -> io::Result<BTreeMap<RepoName, (RepoRecord, Version)>> {
    let mut out = BTreeMap::new();
    for key in records.list("local/").await? {
        let Some(v) = records.get(&key).await? else {
            continue;
        };
        match parse(&key, &v.bytes) {
            Some((name, record)) => {
                out.insert(name, (record, v.version));
            }
            None => {
                tracing::error!(record = %key, "unreadable local repository record skipped; move it away or fix it")
            }
        }
    }
    Ok(out)
}

/// A record read under `key`: its repository and what it holds; `None`
/// when it does not parse, names a repository whose key is not `key`, or
/// holds a tag that is not one.
pub fn parse(key: &RecordKey, bytes: &[u8]) -> Option<(RepoName, RepoRecord)> {
    serde_json::from_slice::<RepoFile>(bytes)
        .ok()
        .and_then(|f| Some((f.name.parse::<RepoName>().ok()?, f.record)))
        .filter(|(name, rec)| {
            key_of(name) == *key && rec.tags.keys().all(|t| t.parse::<Tag>().is_ok())
        })
}

/// Every blob some local repository links, for [`crate::cache::Cache::open_holding`].
pub fn held(repos: &BTreeMap<RepoName, (RepoRecord, Version)>) -> HashMap<Digest, Vec<Holder>> {
    repos
        .values()
        .flat_map(|(r, _)| r.blobs.keys())
        .map(|d| (d.clone(), vec![Holder::Local]))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::Storage;

    #[tokio::test]
    async fn round_trip_and_empty_removes() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open_disk(dir.path()).await.unwrap();
        let recs = &*storage.records;
        let name: RepoName = "team/app".parse().unwrap();
        let mut rec = RepoRecord::default();
        rec.blobs.insert(
            Digest::of(b"x"),
            Link {
                size: 1,
                linked_at: 5,
                public: false,
            },
        );
        rec.tags.insert("v1".into(), Digest::of(b"m"));
        let v1 = save(recs, &name, &rec, None).await.unwrap();
        let loaded = load(recs).await.unwrap();
        assert_eq!(loaded.get(&name), Some(&(rec.clone(), v1.clone().unwrap())));
        let again = save(recs, &name, &rec, None).await.unwrap_err();
        assert_eq!(again.kind(), io::ErrorKind::AlreadyExists, "{again}");
        rec.tags.insert("v2".into(), Digest::of(b"n"));
        let v2 = save(recs, &name, &rec, v1.as_ref()).await.unwrap();
        let stale = save(recs, &name, &rec, v1.as_ref()).await;
        assert!(stale.is_err(), "a writer with an old version loses");
        save(recs, &name, &RepoRecord::default(), v2.as_ref())
            .await
            .unwrap();
        assert!(load(recs).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_record_under_the_wrong_key_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open_disk(dir.path()).await.unwrap();
        let key = RecordKey::new("local/x.json").unwrap();
        let body = Bytes::from_static(br#"{"name":"team/app"}"#);
        storage.records.put(&key, body).await.unwrap();
        assert!(load(&*storage.records).await.unwrap().is_empty());
    }
}
