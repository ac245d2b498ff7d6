//! Presigned `GET` URLs for blobs in the bucket (`[storage] redirect`):
//! a node can answer a bucket hit with a `307` and let the client fetch the
//! bytes from the bucket itself (issue 13 item 5).
//!
//! The URL carries a SigV4 signature for one object, one method and
//! `redirect_expiry`, signed for the endpoint clients reach (which may not
//! be the one hoard uses). Nothing else leaves: not the client's
//! `Authorization` (hoard never puts it anywhere), not hoard's keys.

use std::io;
use std::time::Duration;

use object_store::aws::AmazonS3;
use object_store::signer::Signer;

use super::Bucket;
use crate::oci::Digest;

/// Signs blob URLs for clients.
pub struct Presigner {
    /// A client configured for the endpoint clients reach; used to sign
    /// only, it never sends a request.
    signer: AmazonS3,
    /// Key layout (prefix) of the bucket the blobs are in.
    bucket: Bucket,
    expiry: Duration,
}

impl Presigner {
    /// Signs for `signer`'s endpoint the keys of `bucket`, valid `expiry`.
    pub fn new(signer: AmazonS3, bucket: Bucket, expiry: Duration) -> Presigner {
        Presigner {
            signer,
            bucket,
            expiry,
        }
    }

    /// A URL a client may `GET` `digest`'s object from, for a while.
    pub async fn url(&self, digest: &Digest) -> io::Result<String> {
        let url = self
            .signer
            .signed_url(http::Method::GET, &self.bucket.blob(digest), self.expiry)
            .await
            .map_err(super::io_error)?;
        Ok(url.into())
    }
}
