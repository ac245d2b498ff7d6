//! [`Records`] over a bucket: one small object per key.
//!
//! A record's version is its ETag. Where the server honours them (see
//! [`super::probe`]) `create` is a create-only `PUT` (`If-None-Match: *`)
//! and `replace` a `PUT` with `If-Match: <etag>`, so of several replicas
//! that read the same version exactly one wins. Where it does not, both
//! read, compare and write under a lock striped by key: exact between the
//! writers of this process, and between replicas once each key has one
//! owning node (the cluster's rendezvous hashing, issue 13 item 3).

use bytes::Bytes;
use futures_util::TryStreamExt;
use object_store::{PutMode, PutOptions, PutResult, UpdateVersion};

use super::{io_error, Bucket};
use crate::oci::Digest;
use crate::storage::{BoxFuture, RecordError, RecordKey, Records, Version, Versioned};

/// Stripes of the fallback write lock.
const STRIPES: usize = 64;

/// Records in a bucket.
pub struct S3Records {
    bucket: Bucket,
    /// Held across the read-compare-write of the fallback only (tokio
    /// mutexes: that spans awaits on the network).
    stripes: [tokio::sync::Mutex<()>; STRIPES],
}

impl S3Records {
    /// The record store of `bucket`.
    pub fn new(bucket: Bucket) -> S3Records {
        S3Records {
            bucket,
            stripes: std::array::from_fn(|_| tokio::sync::Mutex::new(())),
        }
    }

    async fn write(
        &self,
        key: &RecordKey,
        value: Bytes,
        mode: PutMode,
    ) -> Result<Version, RecordError> {
        let opts = PutOptions {
            mode,
            ..Default::default()
        };
        let path = self.bucket.path(key.as_str());
        match self
            .bucket
            .store()
            .put_opts(&path, value.into(), opts)
            .await
        {
            Ok(done) => Ok(version_of(&done, None)),
            Err(object_store::Error::AlreadyExists { .. }) => Err(RecordError::Exists(key.clone())),
            Err(
                object_store::Error::Precondition { .. } | object_store::Error::NotFound { .. },
            ) => Err(RecordError::Changed(key.clone())),
            Err(e) => Err(io_error(e).into()),
        }
    }

    /// The fallback for a server without the conditional write: read,
    /// check, write, with `key`'s stripe held.
    async fn locked_write(
        &self,
        key: &RecordKey,
        value: Bytes,
        check: impl FnOnce(Option<Version>) -> Result<(), RecordError>,
    ) -> Result<Version, RecordError> {
        let _w = self.stripes[stripe_of(key)].lock().await;
        check(self.get(key).await?.map(|v| v.version))?;
        self.write(key, value, PutMode::Overwrite).await
    }
}

/// The version of what a `PUT` wrote: its ETag, or the sha256 of the bytes
/// for a server that sends none.
fn version_of(done: &PutResult, bytes: Option<&[u8]>) -> Version {
    match (&done.e_tag, bytes) {
        (Some(e), _) => Version(e.clone()),
        (None, Some(b)) => Version(Digest::of(b).hex().to_owned()),
        (None, None) => Version(String::new()),
    }
}

fn stripe_of(key: &RecordKey) -> usize {
    use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
    BuildHasherDefault::<DefaultHasher>::default().hash_one(key) as usize % STRIPES
}

impl Records for S3Records {
    fn get<'a>(
        &'a self,
        key: &'a RecordKey,
    ) -> BoxFuture<'a, Result<Option<Versioned>, RecordError>> {
        Box::pin(async move {
            let path = self.bucket.path(key.as_str());
            let got = match self.bucket.store().get(&path).await {
                Ok(got) => got,
                Err(object_store::Error::NotFound { .. }) => return Ok(None),
                Err(e) => return Err(io_error(e).into()),
            };
            let e_tag = got.meta.e_tag.clone();
            let bytes = got.bytes().await.map_err(io_error)?;
            let done = PutResult {
                e_tag,
                version: None,
            };
            Ok(Some(Versioned {
                version: version_of(&done, Some(&bytes)),
                bytes,
            }))
        })
    }

    fn list<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<Vec<RecordKey>, RecordError>> {
        Box::pin(async move {
            // Listed by namespace and filtered, as on disk: an object store
            // lists by whole path segments.
            let ns = prefix.split('/').next().unwrap_or_default();
            let root = self.bucket.path(ns);
            let mut objects = self.bucket.store().list(Some(&root));
            let mut keys = Vec::new();
            while let Some(meta) = objects.try_next().await.map_err(io_error)? {
                let key = self.bucket.key_of(&meta.location).and_then(RecordKey::new);
                if let Some(key) = key.filter(|k| k.as_str().starts_with(prefix)) {
                    keys.push(key);
                }
            }
            keys.sort();
            Ok(keys)
        })
    }

    fn put<'a>(
        &'a self,
        key: &'a RecordKey,
        value: Bytes,
    ) -> BoxFuture<'a, Result<Version, RecordError>> {
        Box::pin(self.write(key, value, PutMode::Overwrite))
    }

    fn create<'a>(
        &'a self,
        key: &'a RecordKey,
        value: Bytes,
    ) -> BoxFuture<'a, Result<Version, RecordError>> {
        Box::pin(async move {
            if self.bucket.guarantees().create_only {
                return self.write(key, value, PutMode::Create).await;
            }
            self.locked_write(key, value, |now| match now {
                None => Ok(()),
                Some(_) => Err(RecordError::Exists(key.clone())),
            })
            .await
        })
    }

    fn replace<'a>(
        &'a self,
        key: &'a RecordKey,
        value: Bytes,
        expected: &'a Version,
    ) -> BoxFuture<'a, Result<Version, RecordError>> {
        Box::pin(async move {
            let g = self.bucket.guarantees();
            if g.compare_and_swap {
                let version = UpdateVersion {
                    e_tag: Some(g.if_match(&expected.0)),
                    version: None,
                };
                return self.write(key, value, PutMode::Update(version)).await;
            }
            self.locked_write(key, value, |now| match now {
                Some(v) if v == *expected => Ok(()),
                _ => Err(RecordError::Changed(key.clone())),
            })
            .await
        })
    }

    fn delete<'a>(&'a self, key: &'a RecordKey) -> BoxFuture<'a, Result<(), RecordError>> {
        Box::pin(async move {
            let path = self.bucket.path(key.as_str());
            match self.bucket.store().delete(&path).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                Err(e) => Err(io_error(e).into()),
            }
        })
    }

    fn set_aside<'a>(&'a self, key: &'a RecordKey) -> BoxFuture<'a, Result<(), RecordError>> {
        Box::pin(async move {
            let from = self.bucket.path(key.as_str());
            let to = self.bucket.path(&format!("quarantine/{key}"));
            let s = self.bucket.store();
            match s.copy(&from, &to).await {
                Ok(()) => {}
                Err(object_store::Error::NotFound { .. }) => return Ok(()),
                Err(e) => return Err(io_error(e).into()),
            }
            self.delete(key).await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::s3::bare_if_match::BareIfMatch;
    use crate::storage::s3::{probe, Guarantees};
    use object_store::memory::InMemory;
    use object_store::ObjectStore;
    use std::sync::Arc;

    /// The same contract, with the server's conditional writes, with the
    /// fallback, and with the bare `If-Match` Ceph RGW 16.2 wants.
    #[tokio::test]
    async fn create_is_create_only_and_replace_is_compare_and_swap() {
        let none = Guarantees {
            create_only: false,
            compare_and_swap: false,
            bare_if_match: false,
        };
        let in_memory = || -> Arc<dyn ObjectStore> { Arc::new(InMemory::new()) };
        // Ceph RGW 16.2's If-Match, with what the probe finds on it.
        let rgw: Arc<dyn ObjectStore> = Arc::new(BareIfMatch::default());
        let rgw_found = probe(rgw.clone(), None).await.unwrap().guarantees();
        for (store, g) in [
            (in_memory(), Guarantees::FULL),
            (in_memory(), none),
            (rgw, rgw_found),
        ] {
            let bucket = Bucket::new(store, None, g);
            let records = S3Records::new(bucket);
            let key = RecordKey::local(&Digest::of(b"repo"));
            let v1 = records.create(&key, "one".into()).await.unwrap();
            let again = records.create(&key, "two".into()).await;
            assert!(matches!(again, Err(RecordError::Exists(_))), "{g:?}");
            let read = records.get(&key).await.unwrap().unwrap();
            assert_eq!((read.bytes.as_ref(), &read.version), (&b"one"[..], &v1));
            let v2 = records.replace(&key, "two".into(), &v1).await.unwrap();
            let stale = records.replace(&key, "three".into(), &v1).await;
            assert!(matches!(stale, Err(RecordError::Changed(_))), "{g:?}");
            let read = records.get(&key).await.unwrap().unwrap();
            assert_eq!((read.bytes.as_ref(), &read.version), (&b"two"[..], &v2));

            let pin = RecordKey::pin(&Digest::of(b"pin"));
            records.put(&pin, "p".into()).await.unwrap();
            assert_eq!(records.list("pins/").await.unwrap(), vec![pin.clone()]);
            assert_eq!(records.list("local/").await.unwrap(), vec![key.clone()]);
            records.set_aside(&pin).await.unwrap();
            assert!(records.get(&pin).await.unwrap().is_none());
            records.delete(&key).await.unwrap();
            records.delete(&key).await.unwrap();
            let gone = records.replace(&key, "x".into(), &v2).await;
            assert!(matches!(gone, Err(RecordError::Changed(_))), "{g:?}");
        }
    }
}
