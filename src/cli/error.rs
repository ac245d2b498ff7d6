//! Why a command failed, said to the operator: what failed (which file,
//! which server, which image) and what to do about it. One enum for the
//! whole CLI, so `main` prints every failure the same way (`hoard: ...`)
//! and the exit status is chosen in one place.

use std::io;
use std::path::PathBuf;

use http::StatusCode;

/// A command's failure. `Display` is the whole message the operator sees.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file named on the command line (`--config`, `--file`) cannot be read.
    #[error("cannot read {}: {source}", path.display())]
    ReadFile {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The configuration is invalid.
    #[error("{origin}: {source}")]
    Config {
        /// The file it came from (or "embedded mirror.toml").
        origin: String,
        /// What is wrong, naming the key.
        source: crate::config::ConfigError,
    },
    /// A command that needs images got none.
    #[error("no images given: name them or pass --file images.txt")]
    NoImages,
    /// `hoard export` without images and without `--pinned`.
    #[error("no images to export: name them, or pass --pinned for every pinned image")]
    NothingToExport,
    /// `--platform` does not parse.
    #[error("--platform: {0}")]
    Platform(String),
    /// An image reference does not parse or names no configured upstream.
    #[error("{0}")]
    Reference(#[from] crate::prefetch::RefError),
    /// The directory holds no cache (a typo in `--cache-dir`?).
    #[error("{} holds no hoard cache (no blobs/ directory): check --cache-dir or cache_dir", .0.display())]
    NoCache(PathBuf),
    /// Re-hashing the cache stopped on an I/O error.
    #[error("verify failed: {0}")]
    Verify(io::Error),
    /// The cache directory is locked by a server (or another command);
    /// export and import say how to work with a running server instead.
    #[error("the cache directory {} is in use by another hoard process (a running `hoard serve`?): export and import work on a stopped server's cache: stop it first, or go through it with `hoard export --server http://127.0.0.1:PORT` / `hoard import --server ...`", .0.display())]
    BusyForBundle(PathBuf),
    /// The cache directory's lock could not be taken (in use, or unwritable).
    #[error("{0}")]
    Lock(#[from] crate::pins::LockError),
    /// The cache (or its pins) could not be opened.
    #[error("cannot open the cache at {}: {source}", dir.display())]
    OpenCache {
        /// The cache directory.
        dir: PathBuf,
        /// Why.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The configured upstreams cannot be set up.
    #[error("{0}")]
    Upstreams(crate::config::ConfigError),
    /// The async runtime cannot start (out of threads or memory).
    #[error("cannot start the async runtime: {0}")]
    Runtime(io::Error),
    /// The address to listen on is taken or not ours.
    #[error("{key}cannot listen on {addr}: {source} (is another process using the port?{hint})")]
    Listen {
        /// `config key \`tls.listen\`: ` for the TLS listener, empty otherwise.
        key: &'static str,
        /// The address.
        addr: std::net::SocketAddr,
        /// Why.
        source: io::Error,
        /// What to change.
        hint: &'static str,
    },
    /// The server stopped with an error.
    #[error("{0}")]
    Serve(#[from] crate::Error),
    /// Export or import failed (the archive, the cache, a reference).
    #[error("{0}")]
    Bundle(#[from] crate::bundle::Error),
    /// An image cannot be pinned or unpinned: the engine's message, which
    /// names the image and what to do ("prefetch it", "is not pinned").
    #[error("{0}")]
    Image(String),
    /// A task of the command died.
    #[error("the {0} task failed: {1}")]
    Task(&'static str, tokio::task::JoinError),
    /// `--server` is not a plain-HTTP URL.
    #[error("--server {0}: give the server's plain-HTTP address, e.g. http://127.0.0.1:5000 (the operator API answers loopback clients only)")]
    ServerUrl(String),
    /// The server cannot be reached.
    #[error("cannot reach hoard at {server}: {source} (is it running? is --server its plain-HTTP address?)")]
    Unreachable {
        /// The server's address.
        server: String,
        /// Why.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The server refused the request.
    #[error("hoard answered {status}: {message}")]
    Refused {
        /// Its status.
        status: StatusCode,
        /// Its error message.
        message: String,
    },
    /// The server's answer broke off or is not what this CLI expects
    /// (a server of another version?).
    #[error("{server}: {what}")]
    Answer {
        /// The server's address.
        server: String,
        /// What went wrong.
        what: String,
    },
}

impl Error {
    /// A failure to open the cache at `dir`.
    pub(crate) fn open(
        dir: &std::path::Path,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Error {
        Error::OpenCache {
            dir: dir.to_owned(),
            source: source.into(),
        }
    }
}
