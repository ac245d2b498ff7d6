//! Manifest media types and tag -> digest mappings, kept as records.
//!
//! Manifest bytes live in the blob store like any blob; this keeps what the
//! bytes alone do not say: each manifest's media type
//! ([`RecordKey::media_type`], the type as text) and each tag record
//! ([`RecordKey::tag`], named by the sha256 of `upstream/repo:tag` so no
//! client text ever becomes a key). Everything is loaded into memory at
//! start; lookups never touch the store.

use std::collections::BTreeMap;
use std::io;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::oci::{Digest, RepoName, Tag};
use crate::storage::{RecordKey, Records};

/// Which tag of which repository of which upstream.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TagKey {
    /// Upstream registry name.
    pub upstream: String,
    /// Repository as named upstream (`library/alpine`).
    pub repo: RepoName,
    /// The tag.
    pub tag: Tag,
}

/// What a tag pointed to when last checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagRecord {
    /// Manifest digest.
    pub digest: Digest,
    /// When the upstream last confirmed it.
    pub checked_at: SystemTime,
}

#[derive(Serialize, Deserialize)]
struct TagFile {
    upstream: String,
    repo: String,
    tag: String,
    digest: String,
    checked_at_ms: u64,
}

/// The metadata side of the cache.
pub struct Meta {
    records: Arc<dyn Records>,
    /// std lock: short map operations only, never held across an await.
    tags: RwLock<BTreeMap<TagKey, TagRecord>>,
    types: moka::sync::Cache<Digest, Arc<str>>,
}

impl Meta {
    /// Loads every record (at start). Records that cannot be read are
    /// set aside; their count is returned.
    pub async fn load(records: Arc<dyn Records>) -> io::Result<(Meta, usize)> {
        let meta = Meta {
            records,
            tags: RwLock::new(BTreeMap::new()),
            types: moka::sync::Cache::builder().build(),
        };
        let mut moved = 0;
        for key in meta.records.list("manifests/").await? {
            let mut parts = key.as_str().split('/').skip(1);
            let digest = parts
                .next()
                .zip(parts.nth(1))
                .and_then(|(alg, h)| Digest::from_parts(alg, h).ok())
                .filter(|d| RecordKey::media_type(d) == key);
            let text = match meta.records.get(&key).await? {
                Some(v) => String::from_utf8(v.bytes.to_vec()).ok(),
                None => continue,
            };
            match (digest, text) {
                (Some(d), Some(t)) if !t.trim().is_empty() => {
                    meta.types.insert(d, Arc::from(t.trim()))
                }
                _ => {
                    meta.records.set_aside(&key).await?;
                    moved += 1;
                }
            }
        }
        let mut tags = BTreeMap::new();
        for key in meta.records.list("tags/").await? {
            let Some(v) = meta.records.get(&key).await? else {
                continue;
            };
            match parse_tag(&v.bytes) {
                Some((k, r)) => {
                    tags.insert(k, r);
                }
                None => {
                    meta.records.set_aside(&key).await?;
                    moved += 1;
                }
            }
        }
        *meta.tags.write().unwrap_or_else(|p| p.into_inner()) = tags;
        Ok((meta, moved))
    }

    /// Forgets a manifest's media type (its blob is gone or damaged).
    pub async fn remove_manifest_type(&self, digest: &Digest) -> io::Result<()> {
        self.types.invalidate(digest);
        Ok(self.records.delete(&RecordKey::media_type(digest)).await?)
    }

    /// The media type of a cached manifest.
    pub fn manifest_type(&self, digest: &Digest) -> Option<Arc<str>> {
        self.types.get(digest)
    }

    /// Records a manifest's media type durably.
    pub async fn put_manifest_type(&self, digest: &Digest, media_type: &str) -> io::Result<()> {
        let value = Bytes::copy_from_slice(media_type.as_bytes());
        self.records
            .put(&RecordKey::media_type(digest), value)
            .await?;
        self.types.insert(digest.clone(), Arc::from(media_type));
        Ok(())
    }

    /// The record of a tag.
    pub fn tag(&self, key: &TagKey) -> Option<TagRecord> {
        self.tags.read().ok()?.get(key).cloned()
    }

    /// The record of a tag, read from the records store when this process
    /// has not seen it: replicas on one bucket write tags for each other
    /// after start, and a replica must serve those offline too.
    pub async fn tag_or_read(&self, key: &TagKey) -> Option<TagRecord> {
        if let Some(rec) = self.tag(key) {
            return Some(rec);
        }
        let value = self.records.get(&tag_key(key)).await.ok()??;
        let (k, rec) = parse_tag(&value.bytes).filter(|(k, _)| k == key)?;
        let mut tags = self.tags.write().unwrap_or_else(|p| p.into_inner());
        Some(tags.entry(k).or_insert(rec).clone())
    }

    /// The record of a tag as the records store has it now, kept in memory
    /// when it was checked later than what this process knew: the owner of
    /// a tag (another replica) revalidates it and writes it there. Falls
    /// back to what this process knows when the store has nothing newer or
    /// cannot be read.
    pub async fn reread_tag(&self, key: &TagKey) -> Option<TagRecord> {
        let read = match self.records.get(&tag_key(key)).await {
            Ok(v) => v
                .and_then(|v| parse_tag(&v.bytes))
                .filter(|(k, _)| k == key),
            Err(e) => {
                tracing::warn!(tag = %key.tag, error = %e, "cannot read a tag record");
                None
            }
        };
        let mut tags = self.tags.write().unwrap_or_else(|p| p.into_inner());
        if let Some((k, rec)) = read {
            let newer = tags
                .get(&k)
                .is_none_or(|old| old.checked_at < rec.checked_at);
            if newer {
                tags.insert(k, rec);
            }
        }
        tags.get(key).cloned()
    }

    /// The media type of a stored manifest, read from the records store
    /// when this process has not seen it (see [`Meta::tag_or_read`]).
    pub async fn manifest_type_or_read(&self, digest: &Digest) -> Option<Arc<str>> {
        if let Some(t) = self.types.get(digest) {
            return Some(t);
        }
        let value = self
            .records
            .get(&RecordKey::media_type(digest))
            .await
            .ok()??;
        let text = std::str::from_utf8(&value.bytes).ok()?.trim();
        if text.is_empty() {
            return None;
        }
        let t: Arc<str> = Arc::from(text);
        self.types.insert(digest.clone(), t.clone());
        Some(t)
    }

    /// Records a tag durably.
    pub async fn put_tag(&self, key: &TagKey, record: &TagRecord) -> io::Result<()> {
        let file = TagFile {
            upstream: key.upstream.clone(),
            repo: key.repo.to_string(),
            tag: key.tag.to_string(),
            digest: record.digest.to_string(),
            checked_at_ms: record
                .checked_at
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_millis() as u64,
        };
        let json = serde_json::to_vec(&file).map_err(io::Error::other)?;
        self.records.put(&tag_key(key), Bytes::from(json)).await?;
        self.tags
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key.clone(), record.clone());
        Ok(())
    }

    /// Cached tags of one repository, sorted.
    pub fn tags_of(&self, upstream: &str, repo: &RepoName) -> Vec<String> {
        let tags = self.tags.read().unwrap_or_else(|p| p.into_inner());
        tags.keys()
            .filter(|k| k.upstream == upstream && &k.repo == repo)
            .map(|k| k.tag.to_string())
            .collect()
    }

    /// Every (upstream, repository) with at least one cached tag.
    pub fn repositories(&self) -> Vec<(String, RepoName)> {
        let tags = self.tags.read().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<_> = tags
            .keys()
            .map(|k| (k.upstream.clone(), k.repo.clone()))
            .collect();
        out.dedup();
        out
    }
}

/// Where a tag is recorded: by the hash of `upstream/repo:tag`.
fn tag_key(key: &TagKey) -> RecordKey {
    RecordKey::tag(&Digest::of(
        format!("{}/{}:{}", key.upstream, key.repo, key.tag).as_bytes(),
    ))
}

fn parse_tag(bytes: &[u8]) -> Option<(TagKey, TagRecord)> {
    let f: TagFile = serde_json::from_slice(bytes).ok()?;
    Some((
        TagKey {
            upstream: f.upstream,
            repo: f.repo.parse().ok()?,
            tag: f.tag.parse().ok()?,
        },
        TagRecord {
            digest: f.digest.parse().ok()?,
            checked_at: UNIX_EPOCH + Duration::from_millis(f.checked_at_ms),
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::Storage;

    fn key() -> TagKey {
        TagKey {
            upstream: "docker.io".into(),
            repo: "library/app".parse().unwrap(),
            tag: "v1".parse().unwrap(),
        }
    }

    fn record(digest: &[u8], secs: u64) -> TagRecord {
        TagRecord {
            digest: Digest::of(digest),
            checked_at: UNIX_EPOCH + Duration::from_secs(secs),
        }
    }

    /// Two replicas on one records store: what the tag's owner wrote
    /// later replaces what the other knew; an older record never does.
    #[tokio::test]
    async fn a_reread_takes_what_the_owner_checked_later() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open_disk(dir.path()).await.unwrap();
        let (owner, _) = Meta::load(storage.records.clone()).await.unwrap();
        let (other, _) = Meta::load(storage.records.clone()).await.unwrap();
        assert_eq!(other.reread_tag(&key()).await, None);

        owner.put_tag(&key(), &record(b"a", 100)).await.unwrap();
        assert_eq!(other.tag(&key()), None, "not read yet");
        assert_eq!(other.reread_tag(&key()).await, Some(record(b"a", 100)));

        owner.put_tag(&key(), &record(b"b", 200)).await.unwrap();
        assert_eq!(
            other.tag(&key()),
            Some(record(b"a", 100)),
            "memory is behind"
        );
        assert_eq!(other.reread_tag(&key()).await, Some(record(b"b", 200)));

        // This replica checked it later itself: the store's older record
        // does not replace it.
        other.put_tag(&key(), &record(b"c", 300)).await.unwrap();
        owner.put_tag(&key(), &record(b"b", 250)).await.unwrap();
        assert_eq!(other.reread_tag(&key()).await, Some(record(b"c", 300)));
    }
}
