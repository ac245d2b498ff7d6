//! The error of the local-repository layer, mapped to an OCI error once
//! (in `crate::error`).

use crate::cache;
use crate::oci::Digest;

/// A failure of a local repository operation (mapped to an OCI error in
/// `registry::push`).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Local disk.
    #[error("local repository I/O: {0}")]
    Io(#[from] std::io::Error),
    /// The cache store.
    #[error(transparent)]
    Cache(#[from] cache::Error),
    /// No such upload session (never started, finished, cancelled, expired).
    #[error("upload session unknown or expired: start a new one")]
    UploadUnknown,
    /// A chunk does not continue the upload; `size` bytes are held.
    #[error("chunk does not continue the upload")]
    RangeInvalid {
        /// Bytes received so far.
        size: u64,
    },
    /// The uploaded bytes do not hash to the digest given.
    #[error("uploaded content has digest {actual}, not {expected}")]
    DigestInvalid {
        /// Digest the client named.
        expected: Digest,
        /// Digest of what arrived.
        actual: Digest,
    },
    /// The request body broke off.
    #[error("request body: {0}")]
    Body(String),
    /// A manifest that cannot be parsed or does not match its reference.
    #[error("{0}")]
    ManifestInvalid(String),
    /// A manifest references a blob the repository does not have.
    #[error("blob {0} is not in this repository: push it first")]
    ManifestBlobUnknown(Digest),
    /// A manifest references a child manifest the repository does not have.
    #[error("manifest {0} is not in this repository: push it first")]
    ChildUnknown(Digest),
    /// No such manifest or tag.
    #[error("manifest {0} is not in this repository")]
    ManifestUnknown(String),
    /// No such blob in this repository.
    #[error("blob {0} is not in this repository")]
    BlobUnknown(Digest),
}
