//! Local repositories: images pushed to hoard, kept beside the mirror's
//! cache in the same content-addressed store, outside its size budget.
//!
//! - the `[local]` table itself is `config::local`.
//! - [`records`]: each repository's linked blobs, manifests and tags,
//!   persisted atomically in the [`Records`] store.
//! - [`uploads`]: upload sessions streaming into a staging of the blob store.
//! - [`manifest`]: what a pushed manifest references.
//! - [`gc`]: the online garbage collector.
//!
//! Bytes live in the cache's blob store, held by [`Holder::Local`] so the
//! budget never evicts them. A repository serves only blobs linked to it
//! (uploaded, mounted, or referenced by a manifest pushed to it). One async
//! lock, `commit`, orders every change of the records against the GC's
//! sweep: "check a manifest's references and record it" and "link an
//! uploaded blob" never interleave with "find unreferenced blobs and delete
//! them", so the GC cannot delete a blob a push is about to reference.

mod error;
pub mod gc;
pub mod manifest;
pub mod records;
mod shared;
pub mod uploads;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, RwLock};

use bytes::Bytes;

use crate::cache::{index::now_secs, Cache, Holder};
pub use crate::config::local::{LocalConfig, PushFrom};
use crate::metrics::Metrics;
use crate::oci::{Digest, Reference, RepoName};
use crate::storage::{Records, Staging, Version};
use records::{ManifestRecord, RepoRecord};
use uploads::Uploads;

pub use error::Error;

/// The local repositories.
pub struct Local {
    config: LocalConfig,
    records: Arc<dyn Records>,
    cache: Arc<Cache>,
    metrics: Arc<Metrics>,
    /// std lock: reads and swaps of records, never across an await.
    repos: RwLock<BTreeMap<RepoName, RepoRecord>>,
    /// The version of each record as last read or written: its next save
    /// is conditional on it (see [`records::save`]). std lock: map
    /// operations only; changed only under `commit`.
    versions: std::sync::Mutex<HashMap<RepoName, Version>>,
    /// Orders record changes against the GC (see the module doc).
    commit: tokio::sync::Mutex<()>,
    /// Open upload sessions.
    pub uploads: Uploads,
    /// Blobs a client looked at recently (`HEAD` before deciding not to
    /// upload them), unix seconds: the GC keeps them like fresh links, so a
    /// push that found a layer present can still reference it.
    /// std lock: map operations only.
    seen: std::sync::Mutex<HashMap<Digest, u64>>,
    /// Pushed blobs an upstream confirmed it has too (in memory: after a
    /// restart the first pull under an upstream name asks again).
    /// std lock: set operations only.
    confirmed: std::sync::Mutex<HashSet<Digest>>,
    /// Wakes the GC early (after a delete).
    gc_wake: Arc<tokio::sync::Notify>,
    /// Repositories whose record a read that missed re-read recently (a
    /// shared store, see `shared`): the entries expire after
    /// [`shared::LEARN_EVERY`].
    learned: moka::sync::Cache<RepoName, ()>,
}

/// Records read at start, before the cache opens (it must know what they
/// hold), with the version each was read at.
pub struct Loaded {
    repos: BTreeMap<RepoName, (RepoRecord, Version)>,
}

impl Loaded {
    /// Blobs the records hold, for [`Cache::open_holding`].
    pub fn held(&self) -> HashMap<Digest, Vec<Holder>> {
        records::held(&self.repos)
    }
}

impl Local {
    /// Reads the repositories' records (before the cache opens: it must
    /// know what they hold).
    pub async fn load(records: &dyn Records) -> Result<Loaded, Error> {
        let repos = records::load(records).await?;
        Ok(Loaded { repos })
    }

    /// The local repositories over an opened cache; drops the upload
    /// sessions a previous run left.
    pub async fn open(
        loaded: Loaded,
        config: LocalConfig,
        records: Arc<dyn Records>,
        cache: Arc<Cache>,
        metrics: Arc<Metrics>,
        node: Option<String>,
    ) -> Result<Arc<Local>, Error> {
        let timeout = config.upload_timeout;
        let uploads = Uploads::open(records.clone(), cache.clone(), timeout, node).await?;
        let missing: usize = loaded
            .repos
            .values()
            .flat_map(|(r, _)| r.blobs.keys())
            .filter(|d| cache.blob_size(d).is_none())
            .count();
        if missing > 0 {
            tracing::error!(
                missing,
                "blobs of local repositories are missing from the store; pulls of them will fail"
            );
        }
        tracing::info!(
            repositories = loaded.repos.len(),
            "local repositories loaded"
        );
        Ok(Arc::new(Local {
            config,
            records,
            cache,
            metrics,
            versions: std::sync::Mutex::new(
                loaded
                    .repos
                    .iter()
                    .map(|(n, (_, v))| (n.clone(), v.clone()))
                    .collect(),
            ),
            repos: RwLock::new(loaded.repos.into_iter().map(|(n, (r, _))| (n, r)).collect()),
            commit: tokio::sync::Mutex::new(()),
            uploads,
            seen: std::sync::Mutex::new(HashMap::new()),
            confirmed: std::sync::Mutex::new(HashSet::new()),
            gc_wake: Arc::new(tokio::sync::Notify::new()),
            learned: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(shared::LEARN_EVERY)
                .build(),
        }))
    }

    /// The `[local]` configuration.
    pub fn config(&self) -> &LocalConfig {
        &self.config
    }

    /// The metrics (uploads count their bytes).
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Whether `name` is a local repository.
    pub fn exists(&self, name: &RepoName) -> bool {
        self.read().contains_key(name)
    }

    /// Names of local repositories.
    pub fn names(&self) -> Vec<String> {
        self.read().keys().map(|n| n.to_string()).collect()
    }

    /// Tags of a local repository, sorted; `None` when it does not exist.
    pub fn tags(&self, name: &RepoName) -> Option<Vec<String>> {
        self.read()
            .get(name)
            .map(|r| r.tags.keys().cloned().collect())
    }

    /// The size of a blob `name` may serve, when linked and in the store.
    /// Counts as a use for the GC's grace period.
    pub fn blob(&self, name: &RepoName, digest: &Digest) -> Option<u64> {
        self.read().get(name)?.blobs.get(digest)?;
        let size = self.cache.blob_size(digest)?;
        if let Ok(mut seen) = self.seen.lock() {
            seen.insert(digest.clone(), now_secs());
        }
        Some(size)
    }

    /// A manifest of `name` by tag or digest: its digest, media type and
    /// bytes. On a shared store a miss re-reads the repository's record
    /// (another replica may have pushed it) and looks once more.
    pub async fn manifest(
        &self,
        name: &RepoName,
        reference: &Reference,
    ) -> Result<(Digest, String, Bytes), Error> {
        if matches!(reference, Reference::Tag(_)) {
            // A tag may have moved through another replica (`shared`).
            self.learn(name).await;
        }
        match self.manifest_known(name, reference).await {
            Err(Error::ManifestUnknown(_)) if self.learn(name).await => {
                self.manifest_known(name, reference).await
            }
            other => other,
        }
    }

    /// [`Local::manifest`] from what this process knows.
    async fn manifest_known(
        &self,
        name: &RepoName,
        reference: &Reference,
    ) -> Result<(Digest, String, Bytes), Error> {
        let unknown = || Error::ManifestUnknown(reference.to_string());
        let (digest, media_type) = {
            let repos = self.read();
            let repo = repos.get(name).ok_or_else(unknown)?;
            let digest = match reference {
                Reference::Digest(d) => d.clone(),
                Reference::Tag(t) => repo.tags.get(t.as_str()).ok_or_else(unknown)?.clone(),
            };
            let m = repo.manifests.get(&digest).ok_or_else(unknown)?;
            (digest, m.media_type.clone())
        };
        let bytes = self.cache.read_small(&digest).await?.ok_or_else(unknown)?;
        Ok((digest, media_type, bytes))
    }

    /// Commits an uploaded, verified staging as `digest` and links it
    /// into `name` (creating the repository).
    pub async fn commit_upload(
        &self,
        name: &RepoName,
        digest: &Digest,
        staged: Box<dyn Staging>,
        size: u64,
    ) -> Result<(), Error> {
        let _order = self.commit.lock().await;
        let public = self.pulled_before(digest);
        self.cache
            .commit_held(digest, staged, size, Holder::Local)
            .await?;
        self.link(name, digest, size, public).await
    }

    /// Whether the store holds `digest` from an upstream (cached, not yet
    /// held by any local repository).
    fn pulled_before(&self, digest: &Digest) -> bool {
        self.cache.blob_size(digest).is_some() && !self.cache.is_held_by(digest, Holder::Local)
    }

    /// Whether `digest` is pushed content only: linked by a local
    /// repository, and neither cached from an upstream before it was
    /// linked, nor pinned, nor confirmed present upstream since. Such a blob
    /// is not served under an upstream's name without asking that upstream.
    pub fn is_private(&self, digest: &Digest) -> bool {
        if self.cache.is_held_by(digest, Holder::Pin)
            || !self.cache.is_held_by(digest, Holder::Local)
        {
            return false;
        }
        if self.confirmed().contains(digest) {
            return false;
        }
        let links: Vec<bool> = self
            .read()
            .values()
            .filter_map(|r| r.blobs.get(digest).map(|l| l.public))
            .collect();
        !links.is_empty() && !links.contains(&true)
    }

    /// Records that an upstream has `digest` too (see [`Local::is_private`]).
    pub fn confirm_public(&self, digest: &Digest) {
        self.confirmed().insert(digest.clone());
    }

    fn confirmed(&self) -> std::sync::MutexGuard<'_, HashSet<Digest>> {
        self.confirmed.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Cross-repository mount: links a blob `from` has into `name` without
    /// copying a byte. `false` when `from` does not have it.
    pub async fn mount(
        &self,
        name: &RepoName,
        from: &RepoName,
        digest: &Digest,
    ) -> Result<bool, Error> {
        let _order = self.commit.lock().await;
        self.reload(from).await?;
        let Some(size) = self.blob(from, digest) else {
            return Ok(false);
        };
        if !self.cache.hold(digest, Holder::Local) {
            return Ok(false);
        }
        self.link(name, digest, size, false).await?;
        self.metrics.mounted();
        tracing::info!(repo = %name, %from, %digest, bytes_copied = 0, "blob mounted");
        Ok(true)
    }

    /// `PUT` of a manifest: checks that every blob and child it references
    /// is in `name`, stores its bytes as pushed and records it (and the tag).
    pub async fn put_manifest(
        &self,
        name: &RepoName,
        reference: &Reference,
        content_type: Option<&str>,
        bytes: Bytes,
    ) -> Result<(Digest, Option<Digest>), Error> {
        // By tag: the canonical sha256. By digest: that digest's algorithm
        // (the spec lets a client push a manifest by its sha512).
        let digest = match reference {
            Reference::Digest(d) => d.algorithm().digest(&bytes),
            Reference::Tag(_) => Digest::of(&bytes),
        };
        if let Reference::Digest(d) = reference {
            if *d != digest {
                return Err(Error::DigestInvalid {
                    expected: d.clone(),
                    actual: digest,
                });
            }
        }
        let record = manifest::parse(&bytes, content_type)?;
        let _order = self.commit.lock().await;
        self.reload(name).await?;
        {
            let repos = self.read();
            let repo = repos.get(name);
            let has_blob = |d: &Digest| {
                repo.is_some_and(|r| r.blobs.contains_key(d)) && self.cache.blob_size(d).is_some()
            };
            let missing = |d: &&Digest| !record.foreign.contains(d) && !has_blob(d);
            if let Some(d) = record.blobs.iter().find(missing) {
                return Err(Error::ManifestBlobUnknown(d.clone()));
            }
            let has_child = |d: &Digest| repo.is_some_and(|r| r.manifests.contains_key(d));
            if let Some(d) = record.children.iter().find(|d| !has_child(d)) {
                return Err(Error::ChildUnknown(d.clone()));
            }
        }
        let size = bytes.len() as u64;
        let public = self.pulled_before(&digest);
        self.cache
            .store_bytes(&digest, bytes, Some(Holder::Local))
            .await?;
        let subject = record.subject.clone();
        self.update(name, |repo| {
            repo.link(digest.clone(), size, public);
            repo.manifests.insert(digest.clone(), record.clone());
            if let Reference::Tag(t) = reference {
                repo.tags.insert(t.as_str().to_owned(), digest.clone());
            }
        })
        .await?;
        Ok((digest, subject))
    }

    /// Deletes a tag, or a manifest (with every tag pointing at it) by
    /// digest; its blobs go at the next GC if nothing else references them.
    pub async fn delete_manifest(
        &self,
        name: &RepoName,
        reference: &Reference,
    ) -> Result<(), Error> {
        let _order = self.commit.lock().await;
        self.reload(name).await?;
        let unknown = || Error::ManifestUnknown(reference.to_string());
        let mut repo = self.read().get(name).cloned().ok_or_else(unknown)?;
        match reference {
            Reference::Tag(t) => {
                repo.tags.remove(t.as_str()).ok_or_else(unknown)?;
            }
            Reference::Digest(d) => {
                repo.manifests.remove(d).ok_or_else(unknown)?;
                repo.tags.retain(|_, v| v != d);
            }
        }
        self.save(name, repo).await?;
        self.gc_wake.notify_one();
        Ok(())
    }

    /// Unlinks a blob from `name` (reclaimed by the GC if unreferenced).
    pub async fn delete_blob(&self, name: &RepoName, digest: &Digest) -> Result<(), Error> {
        let _order = self.commit.lock().await;
        self.reload(name).await?;
        let mut repo = self
            .read()
            .get(name)
            .cloned()
            .ok_or_else(|| Error::BlobUnknown(digest.clone()))?;
        repo.blobs
            .remove(digest)
            .ok_or_else(|| Error::BlobUnknown(digest.clone()))?;
        self.save(name, repo).await?;
        self.gc_wake.notify_one();
        Ok(())
    }

    /// Manifests of `name` whose `subject` is `digest`, with an optional
    /// `artifactType` filter, as OCI descriptors.
    pub fn referrers(
        &self,
        name: &RepoName,
        digest: &Digest,
        artifact_type: Option<&str>,
    ) -> Vec<serde_json::Value> {
        let repos = self.read();
        let Some(repo) = repos.get(name) else {
            return Vec::new();
        };
        repo.manifests
            .iter()
            .filter(|(_, m)| m.subject.as_ref() == Some(digest))
            .filter(|(_, m)| artifact_type.is_none_or(|t| m.artifact_type.as_deref() == Some(t)))
            .map(|(d, m)| descriptor(d, m))
            .collect()
    }

    /// Links a committed blob into `name` (caller holds `commit`).
    async fn link(
        &self,
        name: &RepoName,
        digest: &Digest,
        size: u64,
        public: bool,
    ) -> Result<(), Error> {
        self.update(name, |repo| repo.link(digest.clone(), size, public))
            .await
    }

    /// Persists a repository's record, then makes it visible (caller holds
    /// `commit`, so records change one at a time).
    async fn save(&self, name: &RepoName, repo: RepoRecord) -> Result<(), Error> {
        let expected = self.versions().get(name).cloned();
        let version = records::save(&*self.records, name, &repo, expected.as_ref()).await?;
        match version {
            Some(v) => self.versions().insert(name.clone(), v),
            None => self.versions().remove(name),
        };
        let mut repos = self.repos.write().unwrap_or_else(|p| p.into_inner());
        if repo.is_empty() {
            repos.remove(name);
        } else {
            repos.insert(name.clone(), repo);
        }
        Ok(())
    }

    fn versions(&self) -> std::sync::MutexGuard<'_, HashMap<RepoName, Version>> {
        self.versions.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<RepoName, RepoRecord>> {
        self.repos.read().unwrap_or_else(|p| p.into_inner())
    }
}

/// An OCI descriptor of a recorded manifest (referrers API).
fn descriptor(digest: &Digest, m: &ManifestRecord) -> serde_json::Value {
    let mut d = serde_json::json!({
        "mediaType": m.media_type,
        "digest": digest.to_string(),
        "size": m.size,
    });
    if let Some(t) = &m.artifact_type {
        d["artifactType"] = serde_json::Value::String(t.clone());
    }
    if let Some(a) = &m.annotations {
        d["annotations"] = serde_json::json!(a);
    }
    d
}
