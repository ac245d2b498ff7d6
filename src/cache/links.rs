//! Which upstream repositories hold which cached content (issue 14,
//! defect 3).
//!
//! Blobs and manifests are stored once by digest, but a digest alone must
//! not read content through a repository that never held it: `ci` pulling
//! a private `bitnami/redis` must not let anonymous read its layers through
//! `library/alpine`. So, as distribution does, content is *linked* to a
//! repository when that repository is known to hold it: fetched from the
//! upstream for it, confirmed by an upstream `HEAD` for it, recorded under
//! one of its tags (a pull, a prefetch, an import, a pin), or referenced by
//! a manifest linked to it (a registry accepts a manifest only when the
//! repository holds what it references). The registry serves a cached
//! digest through a repository only when it is linked there, and otherwise
//! asks the upstream first; with the upstream unreachable an unlinked
//! digest is not served. Local (pushed) repositories keep their own links
//! in `local`.
//!
//! Links are records ([`RecordKey::link`]: `links/<repo id>/<digest>`, the
//! id being the sha256 of `upstream/repo`), so they survive restarts and
//! live wherever the records do (an object store included). One record per
//! (repository, digest) it was made for, written once; a manifest's record
//! lists what it references, so pulling an image writes one record per
//! manifest, not one per layer. In memory a repository's links are loaded
//! on its first request and dropped when idle. A cache written before links
//! existed has only tag records: at load, what a repository's tags
//! reference is linked too, so such a cache keeps serving its tagged
//! images offline.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::{Cache, TagKey};
use crate::oci::{Digest, RepoName};
use crate::storage::{RecordError, RecordKey, Records};

/// Repositories whose links stay in memory at once; an idle one is dropped
/// after [`IDLE`] and read again from its records when asked.
const REPOS_IN_MEMORY: u64 = 10_000;
const IDLE: Duration = Duration::from_secs(30 * 60);
/// How deep a manifest's references are followed (index → manifest →
/// config and layers).
const DEPTH: usize = 3;

/// The links of every repository, as far as they are in memory.
pub struct Links {
    records: Arc<dyn Records>,
    repos: moka::sync::Cache<RepoKey, Arc<RepoLinks>>,
}

/// The in-memory key of a repository's links. Looked up by [`RepoRef`]
/// without building a string: the record id (a SHA-256 of the name) is
/// computed only when records are read or written, not on every request.
#[derive(Clone, Hash, PartialEq, Eq)]
struct RepoKey {
    upstream: Box<str>,
    repo: Box<str>,
}

/// A borrowed [`RepoKey`]; hashes the same (same fields, `str` each).
#[derive(Hash)]
struct RepoRef<'a> {
    upstream: &'a str,
    repo: &'a str,
}

impl hashbrown::Equivalent<RepoKey> for RepoRef<'_> {
    fn equivalent(&self, key: &RepoKey) -> bool {
        *self.upstream == *key.upstream && *self.repo == *key.repo
    }
}

/// One repository's links.
#[derive(Default)]
struct RepoLinks {
    loaded: tokio::sync::OnceCell<()>,
    /// std mutex: set operations only, never held across an await.
    sets: Mutex<Sets>,
    /// When the records were last read again for a digest not held (a
    /// shared store: other replicas link after this one loaded).
    reread: Mutex<Option<std::time::Instant>>,
}

/// How often a repository's links may be read again from a shared store
/// for digests it does not hold: often enough that what another replica
/// linked is served within seconds, rarely enough that a client naming
/// unlinked digests cannot turn each request into a bucket listing.
const REREAD_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

#[derive(Default)]
struct Sets {
    /// Every digest the repository holds.
    held: HashSet<Digest>,
    /// Manifests whose references were linked too.
    closed: HashSet<Digest>,
}

impl RepoLinks {
    fn holds(&self, digest: &Digest) -> bool {
        let sets = self.sets.lock().unwrap_or_else(|p| p.into_inner());
        sets.held.contains(digest)
    }
}

/// A link record.
#[derive(Serialize, Deserialize)]
struct LinkFile {
    upstream: String,
    repo: String,
    /// Whether `digests` are a manifest's references (the first is the
    /// manifest).
    #[serde(default)]
    manifest: bool,
    digests: Vec<Digest>,
}

impl Links {
    /// Links kept as `records`.
    pub fn new(records: Arc<dyn Records>) -> Links {
        Links {
            records,
            repos: moka::sync::Cache::builder()
                .max_capacity(REPOS_IN_MEMORY)
                .time_to_idle(IDLE)
                .build(),
        }
    }
}

/// The id of a repository: the sha256 of `upstream/repo`, so no client
/// text becomes a key.
fn repo_id(upstream: &str, repo: &RepoName) -> Digest {
    Digest::of(format!("{upstream}/{repo}").as_bytes())
}

impl Cache {
    /// Whether `repo` of `upstream` is known to hold `digest`.
    /// With a store that other replicas write too, a digest not held here
    /// has the repository's records read again (at most every
    /// [`REREAD_EVERY`]).
    pub async fn linked(&self, upstream: &str, repo: &RepoName, digest: &Digest) -> bool {
        let links = self.repo_links(upstream, repo).await;
        if links.holds(digest) {
            return true;
        }
        if !self.store.shared() {
            return false;
        }
        Box::pin(self.linked_elsewhere(&links, upstream, repo, digest)).await
    }

    /// Whether another replica linked `digest` to the repository since
    /// its records were read (a shared store only).
    async fn linked_elsewhere(
        &self,
        links: &RepoLinks,
        upstream: &str,
        repo: &RepoName,
        digest: &Digest,
    ) -> bool {
        // The link made for this very digest (a manifest's, or a blob's own).
        let id = repo_id(upstream, repo);
        let own = self.links.records.get(&RecordKey::link(&id, digest)).await;
        if let Ok(Some(v)) = own {
            if let Ok(f) = serde_json::from_slice::<LinkFile>(&v.bytes) {
                links.add(&f.digests);
                if f.manifest {
                    links.close(digest);
                }
                return links.holds(digest);
            }
        }
        {
            let mut last = links.reread.lock().unwrap_or_else(|p| p.into_inner());
            let now = std::time::Instant::now();
            if last.is_some_and(|t| now.duration_since(t) < REREAD_EVERY) {
                return false;
            }
            *last = Some(now);
        }
        let (held, closed) = self.load_links(&id, upstream, repo).await;
        let mut sets = links.sets.lock().unwrap_or_else(|p| p.into_inner());
        sets.held.extend(held);
        sets.closed.extend(closed);
        sets.held.contains(digest)
    }

    /// Records that `repo` of `upstream` holds the blob `digest` (the
    /// upstream served or confirmed it for that repository).
    pub async fn link(&self, upstream: &str, repo: &RepoName, digest: &Digest) {
        let links = self.repo_links(upstream, repo).await;
        if !links.add(std::slice::from_ref(digest)) {
            return;
        }
        self.write_link(upstream, repo, digest, false, vec![digest.clone()])
            .await;
    }

    /// Records that `repo` of `upstream` holds the manifest `digest` and,
    /// when it is cached, everything it references (children of an index
    /// and theirs, configs, layers).
    pub async fn link_manifest(&self, upstream: &str, repo: &RepoName, digest: &Digest) {
        let links = self.repo_links(upstream, repo).await;
        if links.is_closed(digest) {
            return;
        }
        let all = self.references(digest).await;
        links.add(&all);
        links.close(digest);
        self.write_link(upstream, repo, digest, true, all).await;
    }

    /// `repo`'s links, loaded from the records on first use.
    async fn repo_links(&self, upstream: &str, repo: &RepoName) -> Arc<RepoLinks> {
        let name = RepoRef {
            upstream,
            repo: repo.as_str(),
        };
        let links = match self.links.repos.get(&name) {
            Some(links) => links,
            None => {
                let key = RepoKey {
                    upstream: upstream.into(),
                    repo: repo.as_str().into(),
                };
                self.links.repos.get_with(key, Default::default)
            }
        };
        if links.loaded.initialized() {
            return links;
        }
        // Boxed: loading happens once per repository, but its state
        // would otherwise be part of every request's future.
        links
            .loaded
            .get_or_init(|| {
                Box::pin(async {
                    let id = repo_id(upstream, repo);
                    let (held, closed) = self.load_links(&id, upstream, repo).await;
                    let mut sets = links.sets.lock().unwrap_or_else(|p| p.into_inner());
                    sets.held.extend(held);
                    sets.closed.extend(closed);
                })
            })
            .await;
        links
    }

    /// Reads a repository's link records, and links what its tag records
    /// reference (a cache from before links). Unreadable records are set
    /// aside; a store that fails leaves the repository with fewer links
    /// (asking the upstream again), never more.
    async fn load_links(
        &self,
        id: &Digest,
        upstream: &str,
        repo: &RepoName,
    ) -> (Vec<Digest>, Vec<Digest>) {
        let (mut held, mut closed) = (Vec::new(), Vec::new());
        let records = &self.links.records;
        let prefix = RecordKey::links_of(id);
        let keys = records.list(&prefix).await.unwrap_or_else(|e| {
            tracing::warn!(%upstream, %repo, error = %e, "cannot list links");
            Vec::new()
        });
        for key in keys {
            let file = match records.get(&key).await {
                Ok(Some(v)) => serde_json::from_slice::<LinkFile>(&v.bytes).ok(),
                Ok(None) => continue,
                Err(e) => {
                    tracing::warn!(%key, error = %e, "cannot read a link");
                    continue;
                }
            };
            match file {
                Some(f) => {
                    if f.manifest {
                        closed.extend(f.digests.first().cloned());
                    }
                    held.extend(f.digests);
                }
                None => {
                    let _ = records.set_aside(&key).await;
                }
            }
        }
        for tag in self.tags_of(upstream, repo) {
            let Ok(tag) = tag.parse() else { continue };
            let key = TagKey {
                upstream: upstream.to_owned(),
                repo: repo.clone(),
                tag,
            };
            if let Some(rec) = self.tag(&key) {
                held.extend(self.references(&rec.digest).await);
            }
        }
        (held, closed)
    }

    /// `digest` and, as far as they are cached, the manifests and blobs it
    /// references, to [`DEPTH`].
    async fn references(&self, digest: &Digest) -> Vec<Digest> {
        let mut all = vec![digest.clone()];
        let mut todo = vec![(digest.clone(), 0)];
        while let Some((d, depth)) = todo.pop() {
            let Ok(Some((bytes, _))) = self.manifest(&d).await else {
                continue;
            };
            for r in referenced(&bytes) {
                if !all.contains(&r) {
                    all.push(r.clone());
                    if depth + 1 < DEPTH {
                        todo.push((r, depth + 1));
                    }
                }
            }
        }
        all
    }

    /// Writes a link record, once: an existing one is left alone. Best
    /// effort: a link that could not be written is in memory until the
    /// repository goes idle, then asked of the upstream again.
    async fn write_link(
        &self,
        upstream: &str,
        repo: &RepoName,
        digest: &Digest,
        manifest: bool,
        digests: Vec<Digest>,
    ) {
        let file = LinkFile {
            upstream: upstream.to_owned(),
            repo: repo.to_string(),
            manifest,
            digests,
        };
        let Ok(json) = serde_json::to_vec(&file) else {
            return;
        };
        let key = RecordKey::link(&repo_id(upstream, repo), digest);
        match self.links.records.create(&key, Bytes::from(json)).await {
            Ok(_) | Err(RecordError::Exists(_)) => {}
            Err(e) => tracing::warn!(%upstream, %repo, %digest, error = %e, "link not recorded"),
        }
    }
}

impl RepoLinks {
    /// Adds `digests`; whether any was new.
    fn add(&self, digests: &[Digest]) -> bool {
        let mut sets = self.sets.lock().unwrap_or_else(|p| p.into_inner());
        let mut new = false;
        for d in digests {
            new |= sets.held.insert(d.clone());
        }
        new
    }

    fn is_closed(&self, manifest: &Digest) -> bool {
        let sets = self.sets.lock().unwrap_or_else(|p| p.into_inner());
        sets.closed.contains(manifest)
    }

    fn close(&self, manifest: &Digest) {
        let mut sets = self.sets.lock().unwrap_or_else(|p| p.into_inner());
        sets.closed.insert(manifest.clone());
    }
}

/// The digests a manifest or index references: child manifests, config,
/// layers (schema 1's `fsLayers` too), read by the one manifest reader.
/// Foreign layers are included: a digest says nothing about where the bytes
/// came from. Bytes that are no manifest reference nothing.
fn referenced(bytes: &[u8]) -> Vec<Digest> {
    crate::oci::Manifest::parse(bytes)
        .map(|m| m.named_digests())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_of_an_index_a_manifest_and_schema_1() {
        let (a, b, c) = (Digest::of(b"a"), Digest::of(b"b"), Digest::of(b"c"));
        let index = format!(r#"{{"manifests":[{{"digest":"{a}"}},{{"digest":"{b}"}}]}}"#);
        assert_eq!(referenced(index.as_bytes()), vec![a.clone(), b.clone()]);
        let image = format!(
            r#"{{"config":{{"digest":"{a}"}},"layers":[{{"digest":"{b}"}},{{"digest":"x"}}]}}"#
        );
        assert_eq!(referenced(image.as_bytes()), vec![a.clone(), b]);
        let v1 = format!(r#"{{"fsLayers":[{{"blobSum":"{c}"}}]}}"#);
        assert_eq!(referenced(v1.as_bytes()), vec![c]);
        assert!(referenced(b"not json").is_empty());
    }
}
