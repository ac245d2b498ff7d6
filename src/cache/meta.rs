//! Manifest media types and tag -> digest mappings, persisted atomically.
//!
//! Manifest bytes live in the blob store like any blob; this keeps what the
//! bytes alone do not say: each manifest's media type
//! (`manifests/sha256/<2 hex>/<hex>`, the type as text) and each tag record
//! (`tags/<2 hex>/<hex>.json`, named by the sha256 of
//! `upstream/repo:tag` so no client text ever becomes a path). Everything is
//! loaded into memory at start; lookups never touch the disk.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::{atomic, layout};
use crate::oci::{Digest, RepoName, Tag};

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
    root: PathBuf,
    tmp: PathBuf,
    /// std lock: short map operations only, never held across an await.
    tags: RwLock<BTreeMap<TagKey, TagRecord>>,
    types: moka::sync::Cache<Digest, Arc<str>>,
}

impl Meta {
    /// Loads every record under `root` (blocking: call at start). Records
    /// that cannot be read are moved aside; their count is returned.
    pub fn load(root: &Path, tmp: &Path) -> io::Result<(Meta, usize)> {
        let meta = Meta {
            root: root.to_owned(),
            tmp: tmp.to_owned(),
            tags: RwLock::new(BTreeMap::new()),
            types: moka::sync::Cache::builder().build(),
        };
        let mut moved = 0;
        for (path, digest) in
            walk_sharded(root, &root.join("manifests").join("sha256"), "", &mut moved)?
        {
            match std::fs::read_to_string(&path) {
                Ok(t) if !t.trim().is_empty() => meta.types.insert(digest, Arc::from(t.trim())),
                _ => {
                    layout::quarantine(root, &path)?;
                    moved += 1;
                }
            }
        }
        let mut tags = BTreeMap::new();
        for (path, _) in walk_sharded(root, &root.join("tags"), ".json", &mut moved)? {
            match std::fs::read(&path).ok().and_then(|b| parse_tag(&b)) {
                Some((k, r)) => {
                    tags.insert(k, r);
                }
                None => {
                    layout::quarantine(root, &path)?;
                    moved += 1;
                }
            }
        }
        *meta.tags.write().unwrap_or_else(|p| p.into_inner()) = tags;
        Ok((meta, moved))
    }

    /// Forgets a manifest's media type (its blob is gone or damaged).
    pub fn remove_manifest_type(&self, digest: &Digest) -> io::Result<()> {
        self.types.invalidate(digest);
        let hex = digest.hex();
        let path = self
            .root
            .join("manifests")
            .join("sha256")
            .join(&hex[..2])
            .join(hex);
        match std::fs::remove_file(path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// The media type of a cached manifest.
    pub fn manifest_type(&self, digest: &Digest) -> Option<Arc<str>> {
        self.types.get(digest)
    }

    /// Records a manifest's media type durably (blocking).
    pub fn put_manifest_type(&self, digest: &Digest, media_type: &str) -> io::Result<()> {
        let hex = digest.hex();
        let path = self
            .root
            .join("manifests")
            .join("sha256")
            .join(&hex[..2])
            .join(hex);
        atomic::write_durable(&self.tmp, &path, media_type.as_bytes())?;
        self.types.insert(digest.clone(), Arc::from(media_type));
        Ok(())
    }

    /// The record of a tag.
    pub fn tag(&self, key: &TagKey) -> Option<TagRecord> {
        self.tags.read().ok()?.get(key).cloned()
    }

    /// Records a tag durably (blocking).
    pub fn put_tag(&self, key: &TagKey, record: &TagRecord) -> io::Result<()> {
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
        atomic::write_durable(&self.tmp, &self.tag_path(key), &json)?;
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

    fn tag_path(&self, key: &TagKey) -> PathBuf {
        let id = Digest::of(format!("{}/{}:{}", key.upstream, key.repo, key.tag).as_bytes());
        let hex = id.hex();
        self.root
            .join("tags")
            .join(&hex[..2])
            .join(format!("{hex}.json"))
    }
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

/// Files `dir/<2 hex>/<hex><suffix>`, with the digest their name spells;
/// anything else is moved aside (counted in `moved`).
fn walk_sharded(
    root: &Path,
    dir: &Path,
    suffix: &str,
    moved: &mut usize,
) -> io::Result<Vec<(PathBuf, Digest)>> {
    let mut out = Vec::new();
    let shards = match std::fs::read_dir(dir) {
        Ok(r) => r,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e),
    };
    for shard in shards {
        let shard = shard?;
        if !shard.file_type()?.is_dir() {
            layout::quarantine(root, &shard.path())?;
            *moved += 1;
            continue;
        }
        for entry in std::fs::read_dir(shard.path())? {
            let entry = entry?;
            let name = entry.file_name();
            let digest = name
                .to_str()
                .and_then(|n| n.strip_suffix(suffix))
                .and_then(|h| format!("sha256:{h}").parse::<Digest>().ok());
            match digest {
                Some(d) => out.push((entry.path(), d)),
                None => {
                    tracing::warn!(path = %entry.path().display(), "unexpected metadata file, left alone")
                }
            }
        }
    }
    Ok(out)
}
