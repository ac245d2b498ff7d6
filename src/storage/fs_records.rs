//! [`Records`] on local disk: one file per key (`<cache_dir>/<key>`),
//! written temp + fsync + rename + fsync of the directory.
//!
//! A record's version is the sha256 of its bytes. Conditional writes
//! (`create`, `replace`) read, compare and write under a lock striped by
//! key, so of several writers in this process exactly one wins; the
//! directory lock ([`super::CacheLock`]) keeps other processes out.

use std::io;
use std::sync::{Arc, Mutex};

use bytes::Bytes;

use super::dir::CacheDir;
use super::key::RecordKey;
use super::{BoxFuture, RecordError, Records, Version, Versioned};
use crate::oci::Digest;

/// Stripes of the write lock: writers of different keys rarely wait.
const STRIPES: usize = 64;

/// Records on the local filesystem.
pub struct FsRecords {
    dir: Arc<CacheDir>,
    /// std locks: held around one record's read-compare-write on a
    /// blocking thread, never across an await.
    stripes: Arc<[Mutex<()>; STRIPES]>,
}

impl FsRecords {
    /// The record store of a claimed cache directory.
    pub fn new(dir: Arc<CacheDir>) -> FsRecords {
        FsRecords {
            dir,
            stripes: Arc::new(std::array::from_fn(|_| Mutex::new(()))),
        }
    }

    /// Runs `f` on a blocking thread with `key`'s stripe locked.
    fn locked<T: Send + 'static>(
        &self,
        key: &RecordKey,
        f: impl FnOnce(&CacheDir) -> Result<T, RecordError> + Send + 'static,
    ) -> BoxFuture<'static, Result<T, RecordError>> {
        let (dir, stripes) = (self.dir.clone(), self.stripes.clone());
        let stripe = stripe_of(key);
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                let _w = stripes[stripe].lock().unwrap_or_else(|p| p.into_inner());
                f(&dir)
            })
            .await
            .map_err(io::Error::other)?
        })
    }

    /// Writes `value` under `key` if `check` (when given) accepts the
    /// version there now (`None`: absent).
    fn write_if(
        &self,
        key: &RecordKey,
        value: Bytes,
        check: Option<Check>,
    ) -> BoxFuture<'static, Result<Version, RecordError>> {
        let k = key.clone();
        self.locked(key, move |dir| {
            let path = dir.record(&k);
            if let Some(check) = check {
                check(read(&path)?.map(|v| v.version))?;
            }
            std::fs::create_dir_all(dir.tmp())?;
            super::durable::write_durable(&dir.temp_path("record"), &path, &value)?;
            Ok(version_of(&value))
        })
    }
}

/// A condition on the version a record has before it is written.
type Check = Box<dyn FnOnce(Option<Version>) -> Result<(), RecordError> + Send>;

fn stripe_of(key: &RecordKey) -> usize {
    use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
    BuildHasherDefault::<DefaultHasher>::default().hash_one(key) as usize % STRIPES
}

fn version_of(bytes: &[u8]) -> Version {
    Version(Digest::of(bytes).hex().to_owned())
}

fn read(path: &std::path::Path) -> io::Result<Option<Versioned>> {
    match std::fs::read(path) {
        Ok(b) => Ok(Some(Versioned {
            version: version_of(&b),
            bytes: Bytes::from(b),
        })),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

impl Records for FsRecords {
    fn get<'a>(
        &'a self,
        key: &'a RecordKey,
    ) -> BoxFuture<'a, Result<Option<Versioned>, RecordError>> {
        let path = self.dir.record(key);
        Box::pin(async move {
            tokio::task::spawn_blocking(move || read(&path))
                .await
                .map_err(io::Error::other)?
                .map_err(RecordError::from)
        })
    }

    fn list<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<Vec<RecordKey>, RecordError>> {
        let dir = self.dir.clone();
        let prefix = prefix.to_owned();
        Box::pin(async move {
            let walked = prefix.clone();
            let keys = tokio::task::spawn_blocking(move || dir.walk_records(&walked))
                .await
                .map_err(io::Error::other)??;
            Ok(keys
                .into_iter()
                .filter(|k| k.as_str().starts_with(&prefix))
                .collect())
        })
    }

    fn put<'a>(
        &'a self,
        key: &'a RecordKey,
        value: Bytes,
    ) -> BoxFuture<'a, Result<Version, RecordError>> {
        self.write_if(key, value, None)
    }

    fn create<'a>(
        &'a self,
        key: &'a RecordKey,
        value: Bytes,
    ) -> BoxFuture<'a, Result<Version, RecordError>> {
        let k = key.clone();
        let check: Check = Box::new(move |now| match now {
            None => Ok(()),
            Some(_) => Err(RecordError::Exists(k)),
        });
        self.write_if(key, value, Some(check))
    }

    fn replace<'a>(
        &'a self,
        key: &'a RecordKey,
        value: Bytes,
        expected: &'a Version,
    ) -> BoxFuture<'a, Result<Version, RecordError>> {
        let (k, expected) = (key.clone(), expected.clone());
        let check: Check = Box::new(move |now| match now {
            Some(v) if v == expected => Ok(()),
            _ => Err(RecordError::Changed(k)),
        });
        self.write_if(key, value, Some(check))
    }

    fn delete<'a>(&'a self, key: &'a RecordKey) -> BoxFuture<'a, Result<(), RecordError>> {
        let k = key.clone();
        self.locked(key, move |dir| {
            Ok(super::durable::remove_durable(&dir.record(&k))?)
        })
    }

    fn set_aside<'a>(&'a self, key: &'a RecordKey) -> BoxFuture<'a, Result<(), RecordError>> {
        let k = key.clone();
        self.locked(key, move |dir| match dir.quarantine(&dir.record(&k)) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            other => Ok(other.map(drop)?),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn store() -> (tempfile::TempDir, FsRecords) {
        let tmp = tempfile::tempdir().unwrap();
        let dir = CacheDir::open(&tmp.path().join("cache")).await.unwrap();
        (tmp, FsRecords::new(dir))
    }

    fn key(s: &str) -> RecordKey {
        RecordKey::new(s).unwrap()
    }

    #[tokio::test]
    async fn create_only_refuses_an_existing_key() {
        let (_tmp, r) = store().await;
        let k = key("pins/a.json");
        let v1 = r.create(&k, Bytes::from_static(b"one")).await.unwrap();
        let err = r.create(&k, Bytes::from_static(b"two")).await.unwrap_err();
        assert!(matches!(err, RecordError::Exists(_)), "{err}");
        let got = r.get(&k).await.unwrap().unwrap();
        assert_eq!((&got.bytes[..], got.version), (&b"one"[..], v1));
        r.delete(&k).await.unwrap();
        assert!(r.get(&k).await.unwrap().is_none());
        r.create(&k, Bytes::from_static(b"three")).await.unwrap();
    }

    #[tokio::test]
    async fn replace_needs_the_version_last_read() {
        let (_tmp, r) = store().await;
        let k = key("local/x.json");
        let stale = Version("0".repeat(64));
        let err = r.replace(&k, Bytes::from_static(b"a"), &stale).await;
        assert!(matches!(err, Err(RecordError::Changed(_))), "absent key");
        let v1 = r.put(&k, Bytes::from_static(b"a")).await.unwrap();
        let v2 = r.replace(&k, Bytes::from_static(b"b"), &v1).await.unwrap();
        assert_ne!(v1, v2);
        let err = r.replace(&k, Bytes::from_static(b"c"), &v1).await;
        assert!(matches!(err, Err(RecordError::Changed(_))), "stale version");
        assert_eq!(&r.get(&k).await.unwrap().unwrap().bytes[..], b"b");
        r.delete(&k).await.unwrap();
        let err = r.replace(&k, Bytes::from_static(b"d"), &v2).await;
        assert!(matches!(err, Err(RecordError::Changed(_))), "deleted since");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn of_racing_replaces_exactly_one_wins() {
        let (_tmp, r) = store().await;
        let r = Arc::new(r);
        let k = key("tags/ab/counter.json");
        let v0 = r.put(&k, Bytes::from_static(b"start")).await.unwrap();
        let barrier = Arc::new(tokio::sync::Barrier::new(16));
        let racers: Vec<_> = (0..16)
            .map(|n| {
                let (r, k, v0, barrier) = (r.clone(), k.clone(), v0.clone(), barrier.clone());
                tokio::spawn(async move {
                    barrier.wait().await;
                    r.replace(&k, Bytes::from(format!("writer {n}")), &v0).await
                })
            })
            .collect();
        let mut winners = Vec::new();
        for (n, t) in racers.into_iter().enumerate() {
            match t.await.unwrap() {
                Ok(_) => winners.push(n),
                Err(RecordError::Changed(_)) => {}
                Err(e) => panic!("racer {n}: {e}"),
            }
        }
        assert_eq!(winners.len(), 1, "winners: {winners:?}");
        let now = r.get(&k).await.unwrap().unwrap();
        assert_eq!(now.bytes, Bytes::from(format!("writer {}", winners[0])));
    }

    #[tokio::test]
    async fn list_by_prefix_and_set_aside() {
        let (tmp, r) = store().await;
        for k in ["tags/aa/1.json", "tags/bb/2.json", "pins/3.json"] {
            r.put(&key(k), Bytes::from_static(b"x")).await.unwrap();
        }
        let keys: Vec<String> = r
            .list("tags/")
            .await
            .unwrap()
            .iter()
            .map(|k| k.to_string())
            .collect();
        assert_eq!(keys, ["tags/aa/1.json", "tags/bb/2.json"]);
        assert_eq!(r.list("tags/bb/").await.unwrap().len(), 1);
        r.set_aside(&key("pins/3.json")).await.unwrap();
        assert!(r.list("pins/").await.unwrap().is_empty());
        let quarantine = tmp.path().join("cache/quarantine");
        assert_eq!(std::fs::read_dir(quarantine).unwrap().count(), 1);
    }
}
