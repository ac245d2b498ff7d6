//! Carrying a warmed cache to a disconnected site: `hoard export` and
//! `hoard import`.
//!
//! The archive is the OCI image layout in one tar (what `skopeo copy ...
//! oci-archive:` writes and reads, and what `umoci` works on once
//! unpacked): an `oci-layout` file, an `index.json` that names each image,
//! and `blobs/sha256/<hex>` for every manifest, index, config and layer.
//! Manifests keep their exact bytes and media types (Docker ones included),
//! so digests stay what the upstream served and pulls by digest work on the
//! other side.
//!
//! Images on the command line are resolved like `hoard prefetch`'s
//! ([`crate::prefetch::ImageRef`]).
//!
//! # Layout
//! - [`layout`]: the OCI layout's JSON (`index.json`, descriptors) and the
//!   walk from a manifest to everything it needs.
//! - [`export`]: cache -> archive, streaming each verified blob.
//! - [`import`]: archive -> cache, verifying every digest while staging and
//!   committing nothing until the whole archive checked out.
//! - [`progress`]: the trait export and import report progress to (the CLI
//!   renders it).
//! - [`stream`]: the archive as a response body from a running server
//!   (`hoard export --server`), and its receiving end.

pub mod export;
pub mod import;
pub mod layout;
pub mod progress;
pub mod stream;

use std::path::PathBuf;

use crate::oci::Digest;

/// Why an export or import failed. Every message says what to do next.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A reference given on the command line, or found in an archive,
    /// cannot be used.
    #[error("{0}")]
    Reference(String),
    /// An image or part of one is not in the cache.
    #[error("{image}: {what} {digest} is not in the cache: prefetch it first (`hoard prefetch {image}`){hint}")]
    Missing {
        /// The image as given.
        image: String,
        /// Which part (manifest, config, layer...).
        what: String,
        /// Its digest.
        digest: Digest,
        /// Extra advice (e.g. `--platform`).
        hint: String,
    },
    /// A tag has no record in the cache.
    #[error("{image}: no such tag in the cache: prefetch it first (`hoard prefetch {image}`)")]
    NoTag {
        /// The image as given.
        image: String,
    },
    /// Content in the cache does not hash to its name.
    #[error("{image}: cached {digest} is damaged (its bytes hash to {actual}); run `hoard verify`, then prefetch the image again")]
    Damaged {
        /// The image being exported.
        image: String,
        /// The blob's name.
        digest: Digest,
        /// What its bytes hash to.
        actual: Digest,
    },
    /// A manifest that cannot be parsed or walked.
    #[error("manifest {digest}: {why}")]
    Manifest {
        /// Its digest.
        digest: Digest,
        /// What is wrong.
        why: String,
    },
    /// The archive is malformed, truncated, or its content does not match
    /// its names. `entry` is the tar entry (or `index.json` item) at fault.
    #[error("archive entry {entry}: {why}; nothing was imported")]
    Archive {
        /// The entry.
        entry: String,
        /// What is wrong.
        why: String,
    },
    /// Reading or writing a file.
    #[error("{}: {source}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The cache.
    #[error(transparent)]
    Cache(#[from] crate::cache::Error),
    /// Recording a pin.
    #[error(transparent)]
    Pin(#[from] crate::pins::PinError),
}

impl Error {
    fn archive(entry: impl Into<String>, why: impl Into<String>) -> Error {
        Error::Archive {
            entry: entry.into(),
            why: why.into(),
        }
    }

    fn file(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
        move |source| Error::File {
            path: path.to_owned(),
            source,
        }
    }
}

/// Waits for blocking work; a panic in it is reported, not propagated.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Error> + Send + 'static,
) -> Result<T, Error> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Cache(std::io::Error::other(e).into()))?
}
