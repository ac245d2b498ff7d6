//! The command line: every subcommand and flag, as clap parses them. The
//! doc comments here are the `--help` text.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// `hoard`'s arguments.
#[derive(Parser)]
#[command(
    name = "hoard",
    version,
    about = "A pull-through caching mirror for container registries"
)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// One subcommand and its arguments.
#[derive(Subcommand)]
pub enum Command {
    /// Run the mirror (on the embedded default config unless --config is given).
    Serve {
        /// Configuration file (TOML); default: the embedded mirror.toml.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Override `listen` from the config: `HOST:PORT`, the host an IP
        /// address or a name (`localhost:5000`; an IPv4 address of it first).
        #[arg(long, value_parser = crate::config::parse_listen)]
        listen: Option<std::net::SocketAddr>,
        /// Override `cache_dir` from the config.
        #[arg(long)]
        cache_dir: Option<PathBuf>,
    },
    /// Re-hash every cached blob and manifest; move damage aside. Exits 1 when
    /// it found damage. Safe to run beside a serving hoard.
    Verify {
        /// Configuration file (for cache_dir); default: the embedded mirror.toml.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Cache directory (overrides the config).
        #[arg(long)]
        cache_dir: Option<PathBuf>,
    },
    /// Print the embedded default configuration.
    DefaultConfig,
    /// Write cached images (every manifest, config and layer, with their
    /// tags) to one OCI-layout tar, for `hoard import`, skopeo
    /// (`oci-archive:`) or umoci. Reads the cache only.
    Export {
        /// Images: `alpine:3.19`, `ghcr.io/org/app:v1`, `team/app@sha256:...`.
        images: Vec<String>,
        /// Also every pinned image, as pinned: the pinned digest under its
        /// tag, only the platforms it was pinned for (--platform does not
        /// apply to them).
        #[arg(long)]
        pinned: bool,
        /// The archive to write (`-` for standard output).
        #[arg(long, short)]
        output: PathBuf,
        /// Only these platforms of multi-platform images
        /// (`linux/amd64,linux/arm64`); default: all.
        #[arg(long)]
        platform: Option<String>,
        /// With `--server`, streamed from the running hoard (it keeps serving).
        #[command(flatten)]
        place: Place,
    },
    /// Load an OCI-layout tar (from `hoard export` or `skopeo copy ...
    /// oci-archive:`) into the cache, verifying every digest, and pin it.
    /// Complete or nothing. Into a stopped server's cache, or with
    /// `--server` into a running hoard (it keeps serving).
    Import {
        /// The archive.
        archive: PathBuf,
        /// Put every image under this upstream (a key of `[upstreams]`).
        #[arg(long)]
        upstream: Option<String>,
        /// Put every image in this repository (needed when the archive names
        /// images only by a tag).
        #[arg(long)]
        repo: Option<String>,
        /// A stopped server's cache, or with `--server` a running hoard.
        #[command(flatten)]
        place: Place,
    },
    /// Fetch whole images ahead of need and pin them (air-gap). Exits 1 when
    /// an image failed.
    Prefetch {
        /// Images (`alpine:3.19`, `ghcr.io/org/app:v1`, `repo@sha256:...`).
        images: Vec<String>,
        /// File with one image a line (`#` comments).
        #[arg(long)]
        file: Option<PathBuf>,
        /// Platforms of multi-platform images to keep (default: all).
        #[arg(long, value_delimiter = ',')]
        platform: Vec<String>,
        /// Blobs fetched at once.
        #[arg(long, default_value_t = crate::prefetch::DEFAULT_JOBS)]
        jobs: usize,
        #[command(flatten)]
        place: Place,
    },
    /// Pin an image that is complete in the cache (no network).
    Pin {
        /// Image reference.
        image: String,
        /// Platforms to pin (default: all in the cache's index).
        #[arg(long, value_delimiter = ',')]
        platform: Vec<String>,
        #[command(flatten)]
        place: Place,
    },
    /// Unpin an image: its content returns under the disk budget.
    Unpin {
        /// Image reference, as pinned.
        image: String,
        #[command(flatten)]
        place: Place,
    },
    /// List cached and pinned images: size, last use, tag -> digest.
    Ls {
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        place: Place,
    },
    /// Say whether images can be served with the network gone (never
    /// contacts an upstream). Exits 1 when something is missing.
    Check {
        /// Images.
        images: Vec<String>,
        /// File with one image a line (`#` comments).
        #[arg(long)]
        file: Option<PathBuf>,
        /// Platforms that must be there (default: what the index lists).
        #[arg(long, value_delimiter = ',')]
        platform: Vec<String>,
        #[command(flatten)]
        place: Place,
    },
}

/// Where the air-gap commands work: a running server, or a cache directory
/// (which must not be in use by a server).
#[derive(clap::Args)]
pub struct Place {
    /// A running hoard's plain-HTTP address, e.g. http://127.0.0.1:5000
    /// (its operator API answers loopback clients only).
    #[arg(long, conflicts_with_all = ["config", "cache_dir"])]
    pub server: Option<String>,
    /// Configuration file (upstreams, cache_dir); default: the embedded mirror.toml.
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// Cache directory (overrides the config).
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
}
