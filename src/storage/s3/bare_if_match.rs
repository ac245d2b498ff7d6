//! A test double of Ceph RGW 16.2's `If-Match`: an in-memory store that
//! quotes its ETags, as S3 servers do, and fails every `If-Match` that
//! quotes one back (RGW compares the bare value), so the probe and the
//! records can be shown to work on such a server without running one.

use std::fmt;

use async_trait::async_trait;
use futures_util::stream::{BoxStream, StreamExt};
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{
    GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore, PutMode,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, Result,
};

/// [`InMemory`] behind RGW 16.2's `If-Match` (see the module doc).
#[derive(Debug, Default)]
pub struct BareIfMatch(InMemory);

fn quoted(e_tag: Option<String>) -> Option<String> {
    e_tag.map(|t| format!("\"{t}\""))
}

fn quote_meta(mut meta: ObjectMeta) -> ObjectMeta {
    meta.e_tag = quoted(meta.e_tag);
    meta
}

impl fmt::Display for BareIfMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BareIfMatch")
    }
}

#[async_trait]
impl ObjectStore for BareIfMatch {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        if let PutMode::Update(v) = &opts.mode {
            if let Some(tag) = v.e_tag.as_deref().filter(|t| t.starts_with('"')) {
                return Err(object_store::Error::Precondition {
                    path: location.to_string(),
                    source: format!("If-Match {tag} is quoted").into(),
                });
            }
        }
        let mut put = self.0.put_opts(location, payload, opts).await?;
        put.e_tag = quoted(put.e_tag);
        Ok(put)
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        self.0.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        let mut got = self.0.get_opts(location, options).await?;
        got.meta = quote_meta(got.meta);
        Ok(got)
    }

    async fn delete(&self, location: &Path) -> Result<()> {
        self.0.delete(location).await
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        self.0.list(prefix).map(|m| m.map(quote_meta)).boxed()
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        let mut listed = self.0.list_with_delimiter(prefix).await?;
        listed.objects = listed.objects.into_iter().map(quote_meta).collect();
        Ok(listed)
    }

    async fn copy(&self, from: &Path, to: &Path) -> Result<()> {
        self.0.copy(from, to).await
    }

    async fn copy_if_not_exists(&self, from: &Path, to: &Path) -> Result<()> {
        self.0.copy_if_not_exists(from, to).await
    }
}
