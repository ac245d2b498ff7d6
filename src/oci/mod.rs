//! Validated OCI value types, parsed once at the edge, and the one reader
//! of manifest JSON ([`Manifest`]) and one [`Platform`].
//!
//! Everything that later becomes part of a disk path or an upstream URL is
//! one of these newtypes, so a malformed or hostile string never reaches the
//! store or the client.

mod digest;
mod manifest;
mod media;
mod name;
mod platform;

pub use digest::{digest_file, Algorithm, Digest, DigestError, Hasher};
pub use manifest::{
    BlobRef, Child, Descriptor, Manifest, ManifestError, Role, OCI_INDEX, OCI_MANIFEST,
};
pub use media::{is_index, MediaType, MANIFEST_MEDIA_TYPES};
pub use name::{NameError, Reference, RepoName, Tag};
pub use platform::{Platform, PlatformError};
