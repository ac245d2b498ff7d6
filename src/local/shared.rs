//! Local repositories on a store shared by replicas (a bucket).
//!
//! Each replica keeps the repositories' records in memory, loaded at start.
//! With a shared store another replica may push to a repository meanwhile
//! (a push whose requests a load balancer spreads over replicas commits
//! layers on several of them), so:
//! - every change re-reads the record under the `commit` lock before it
//!   applies, and a compare-and-swap that lost to another replica's write
//!   reads it again and applies once more (see [`Local::update`]);
//! - a read that misses (a repository, tag, manifest or blob not known
//!   here) re-reads the record from the store, at most once per
//!   [`LEARN_EVERY`] per repository, so naming repositories that do not
//!   exist cannot turn every request into a store read.
//!
//! - a read by tag re-reads the record too (at most once per
//!   [`LEARN_EVERY`]), so a tag pushed again through another replica is
//!   served at most that much behind;
//! - the GC reads every record before its mark ([`Local::reload_all`]): its
//!   sweep saves records with compare-and-swap, which fails on a version
//!   another replica replaced, and it must not drop from this replica's
//!   disk tier a blob that a repository it never saw links.
//!
//! A record learned this way holds its blobs on this replica too (they are
//! in the bucket: the replica that committed them put them there first).

use std::io;
use std::time::Duration;

use super::records::{self, RepoRecord};
use super::{Error, Local};
use crate::cache::Holder;
use crate::oci::{Digest, RepoName};
use crate::storage::RecordError;

/// How often a read that misses may re-read one repository's record.
pub const LEARN_EVERY: Duration = Duration::from_secs(1);

/// How often a change is applied again after losing a compare-and-swap.
const ATTEMPTS: usize = 8;

impl Local {
    /// Reads `name`'s record from the store again when the store is
    /// shared; a newer version replaces what this process knew (and holds
    /// its blobs here), a deleted one is forgotten.
    pub(super) async fn reload(&self, name: &RepoName) -> Result<(), Error> {
        if !self.cache.shared() {
            return Ok(());
        }
        let key = records::key_of(name);
        let read = self.records.get(&key).await.map_err(io::Error::from)?;
        let Some(read) = read else {
            self.versions().remove(name);
            self.repos
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .remove(name);
            return Ok(());
        };
        if self.versions().get(name) == Some(&read.version) {
            return Ok(());
        }
        let Some((_, record)) = records::parse(&key, &read.bytes).filter(|(n, _)| n == name) else {
            tracing::error!(record = %key, "unreadable local repository record; keeping what this replica knew");
            return Ok(());
        };
        for digest in record.blobs.keys() {
            self.hold_shared(digest).await;
        }
        self.versions().insert(name.clone(), read.version);
        self.repos
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.clone(), record);
        Ok(())
    }

    /// Reads every repository's record from a shared store: those changed
    /// or new replace what this process knew, those gone are forgotten.
    /// The GC's mark then sees what every replica linked.
    pub(super) async fn reload_all(&self) -> Result<(), Error> {
        if !self.cache.shared() {
            return Ok(());
        }
        let all = records::load(&*self.records).await?;
        for record in all.values() {
            for digest in record.0.blobs.keys() {
                self.hold_shared(digest).await;
            }
        }
        let mut versions = self.versions();
        let mut repos = self.repos.write().unwrap_or_else(|p| p.into_inner());
        versions.clear();
        repos.clear();
        for (name, (record, version)) in all {
            versions.insert(name.clone(), version);
            repos.insert(name, record);
        }
        Ok(())
    }

    /// Holds a blob another replica linked, once this replica's index
    /// knows it (a lookup in the shared store finds it).
    async fn hold_shared(&self, digest: &Digest) {
        if self.cache.is_held_by(digest, Holder::Local) {
            return;
        }
        if self.cache.lookup(digest).await.is_some() {
            self.cache.hold(digest, Holder::Local);
        }
    }

    /// After a read missed: re-reads `name`'s record, at most once per
    /// [`LEARN_EVERY`]; `true` when it did (the caller looks again). Names
    /// that are no repository are remembered for as long, so a client
    /// repeating one costs one store read a second, not one a request.
    pub async fn learn(&self, name: &RepoName) -> bool {
        if !self.cache.shared() || self.learned.contains_key(name) {
            return false;
        }
        self.learned.insert(name.clone(), ());
        match self.reload(name).await {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(repo = %name, error = %e, "cannot read a local repository's record");
                false
            }
        }
    }

    /// The size of a blob `name` may serve ([`Local::blob`]), learning the
    /// repository's record from the store when it misses.
    pub async fn blob_or_learn(&self, name: &RepoName, digest: &Digest) -> Option<u64> {
        if let Some(size) = self.blob(name, digest) {
            return Some(size);
        }
        if self.learn(name).await {
            return self.blob(name, digest);
        }
        None
    }

    /// Applies `change` to `name`'s record and saves it (caller holds
    /// `commit`). On a shared store the record is read first, and a save
    /// that lost to another replica's write reads it again and applies the
    /// change once more, up to [`ATTEMPTS`] times.
    pub(super) async fn update(
        &self,
        name: &RepoName,
        change: impl Fn(&mut RepoRecord),
    ) -> Result<(), Error> {
        self.reload(name).await?;
        let mut attempt = 1;
        loop {
            let mut repo = self.read().get(name).cloned().unwrap_or_default();
            change(&mut repo);
            match self.save(name, repo).await {
                Err(Error::Io(e)) if attempt < ATTEMPTS && self.cache.shared() && lost(&e) => {
                    tracing::debug!(repo = %name, attempt, "another replica changed the repository; applying again");
                    attempt += 1;
                    self.reload(name).await?;
                }
                other => return other,
            }
        }
    }
}

/// Whether a save failed because another writer got there first.
fn lost(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::AlreadyExists
        || e.get_ref()
            .and_then(|inner| inner.downcast_ref::<RecordError>())
            .is_some_and(|r| matches!(r, RecordError::Changed(_) | RecordError::Exists(_)))
}
