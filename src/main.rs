//! The `hoard` binary: parses arguments, sets up logging, runs the mirror.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use hoard::config::Config;

#[derive(Parser)]
#[command(
    name = "hoard",
    version,
    about = "A pull-through caching mirror for container registries"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the mirror (on the embedded default config unless --config is given).
    Serve {
        /// Configuration file (TOML); default: the embedded mirror.toml.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Override `listen` from the config: `HOST:PORT`, the host an IP
        /// address or a name (`localhost:5000`; an IPv4 address of it first).
        #[arg(long, value_parser = hoard::config::parse_listen)]
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
        /// Put every image under this upstream (a key of [upstreams]).
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
        #[arg(long, default_value_t = hoard::prefetch::DEFAULT_JOBS)]
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
struct Place {
    /// A running hoard's plain-HTTP address, e.g. http://127.0.0.1:5000
    /// (its operator API answers loopback clients only).
    #[arg(long, conflicts_with_all = ["config", "cache_dir"])]
    server: Option<String>,
    /// Configuration file (upstreams, cache_dir); default: the embedded mirror.toml.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Cache directory (overrides the config).
    #[arg(long)]
    cache_dir: Option<PathBuf>,
}

fn main() -> ExitCode {
    hoard::malloc::tune();
    let cli = Cli::parse();
    match cli.command {
        Command::Prefetch {
            images,
            file,
            platform,
            jobs,
            place,
        } => air(place, |target| async move {
            let images = hoard::commands::image_list(images, file.as_deref())?;
            hoard::commands::prefetch(target, images, platform, jobs).await
        }),
        Command::Pin {
            image,
            platform,
            place,
        } => air(place, |t| async move {
            hoard::commands::pin(t, image, platform)
                .await
                .map(|()| true)
        }),
        Command::Unpin { image, place } => air(place, |t| async move {
            hoard::commands::unpin(t, image).await.map(|()| true)
        }),
        Command::Ls { json, place } => air(place, |t| async move {
            hoard::commands::ls(t, json).await.map(|()| true)
        }),
        Command::Check {
            images,
            file,
            platform,
            place,
        } => air(place, |target| async move {
            let images = hoard::commands::image_list(images, file.as_deref())?;
            hoard::commands::check(target, images, platform).await
        }),
        Command::Verify { config, cache_dir } => {
            let config = match load_with_logs(config, cache_dir) {
                Ok(c) => c,
                Err(code) => return code,
            };
            match hoard::commands::verify(&config.cache_dir) {
                Ok(true) => ExitCode::SUCCESS,
                Ok(false) => ExitCode::FAILURE,
                Err(e) => {
                    eprintln!("hoard: {e}");
                    ExitCode::from(2)
                }
            }
        }
        Command::Export {
            images,
            pinned,
            output,
            platform,
            place: place @ Place {
                server: Some(_), ..
            },
        } => air(place, |target| async move {
            let hoard::commands::Site::Server(url) = target else {
                return Err("export --server needs the server's address".into());
            };
            hoard::admin::client::export(&url, images, pinned, platform, &output).await
        }),
        Command::Export {
            images,
            pinned,
            output,
            platform,
            place: Place {
                config, cache_dir, ..
            },
        } => offline(config, cache_dir, output.as_os_str() == "-", |c| {
            hoard::commands::export(c, &images, pinned, platform.as_deref(), &output)
        }),
        Command::Import {
            archive,
            upstream,
            repo,
            place: place @ Place {
                server: Some(_), ..
            },
        } => air(place, |target| async move {
            let hoard::commands::Site::Server(url) = target else {
                return Err("import --server needs the server's address".into());
            };
            let placement = hoard::bundle::import::Placement { upstream, repo };
            hoard::admin::client::import(&url, &archive, &placement).await
        }),
        Command::Import {
            archive,
            upstream,
            repo,
            place: Place {
                config, cache_dir, ..
            },
        } => offline(config, cache_dir, false, |c| {
            let placement = hoard::bundle::import::Placement { upstream, repo };
            hoard::commands::import(c, &archive, &placement)
        }),
        Command::DefaultConfig => {
            print!("{}", hoard::config::DEFAULT_CONFIG);
            ExitCode::SUCCESS
        }
        Command::Serve {
            config,
            listen,
            cache_dir,
        } => {
            let config = match load(config, listen, cache_dir) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("hoard: {e}");
                    return ExitCode::from(2);
                }
            };
            hoard::logging::init(config.log_format, "info");
            ignore_file_size_signal();
            let runtime = match tokio::runtime::Runtime::new() {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("hoard: cannot start the async runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(serve(config)) {
                Ok(()) => ExitCode::SUCCESS,
                // Once, through the log (a JSON line under log_format =
                // "json"), not a second time on stderr.
                Err(e) => {
                    tracing::error!("{e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// Runs an offline command: exit 2 for a bad config, 1 when the command
/// failed (its message on stderr), 0 with its summary on stdout (stderr
/// when stdout carries the command's output).
fn offline(
    config: Option<PathBuf>,
    cache_dir: Option<PathBuf>,
    stdout_busy: bool,
    command: impl FnOnce(&Config) -> Result<String, String>,
) -> ExitCode {
    let config = match load_with_logs(config, cache_dir) {
        Ok(c) => c,
        Err(code) => return code,
    };
    match command(&config) {
        Ok(summary) if stdout_busy => {
            eprintln!("{summary}");
            ExitCode::SUCCESS
        }
        Ok(summary) => {
            println!("{summary}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("hoard: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Runs an air-gap command: exit 0 when it returns `Ok(true)`, 1 for
/// `Ok(false)` (an image failed or is missing), 2 for an error.
fn air<F, Fut>(place: Place, run: F) -> ExitCode
where
    F: FnOnce(hoard::commands::Site) -> Fut,
    Fut: std::future::Future<Output = Result<bool, String>>,
{
    // Errors only: the display reports failures and warnings itself, and
    // log lines would tear through the progress bars.
    hoard::logging::init(hoard::config::LogFormat::Text, "error");
    let target = match place.server {
        Some(url) => hoard::commands::Site::Server(url),
        None => match load(place.config, None, place.cache_dir) {
            Ok(c) => hoard::commands::Site::Local(Box::new(c)),
            Err(e) => {
                eprintln!("hoard: {e}");
                return ExitCode::from(2);
            }
        },
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("hoard: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(run(target)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("hoard: {e}");
            ExitCode::from(2)
        }
    }
}

/// The configuration of a one-shot command that works on the cache
/// directory, with logging set up in its format; a bad configuration is
/// reported and becomes exit status 2.
fn load_with_logs(config: Option<PathBuf>, cache_dir: Option<PathBuf>) -> Result<Config, ExitCode> {
    match load(config, None, cache_dir) {
        Ok(c) => {
            hoard::logging::init(c.log_format, "info");
            Ok(c)
        }
        Err(e) => {
            eprintln!("hoard: {e}");
            Err(ExitCode::from(2))
        }
    }
}

fn load(
    path: Option<PathBuf>,
    listen: Option<std::net::SocketAddr>,
    cache_dir: Option<PathBuf>,
) -> Result<Config, String> {
    let text = match &path {
        Some(p) => {
            std::fs::read_to_string(p).map_err(|e| format!("cannot read {}: {e}", p.display()))?
        }
        None => hoard::config::DEFAULT_CONFIG.to_owned(),
    };
    let origin = path.map_or_else(
        || "embedded mirror.toml".to_owned(),
        |p| p.display().to_string(),
    );
    let mut config = Config::from_toml(&text).map_err(|e| format!("{origin}: {e}"))?;
    if let Some(l) = listen {
        config.listen = l;
    }
    if let Some(d) = cache_dir {
        config.cache_dir = d;
    }
    Ok(config)
}

/// A write past the process's file-size limit (RLIMIT_FSIZE) must fail with
/// EFBIG, which the cache handles like a full disk, instead of killing hoard
/// with SIGXFSZ.
fn ignore_file_size_signal() {
    // SAFETY: called once at start-up, before the runtime's threads exist;
    // SIG_IGN installs no handler code.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
    }
}

/// Binds the listeners (a bad address fails here, naming its key), wires
/// the signals and runs until SIGTERM or SIGINT.
async fn serve(config: Config) -> Result<(), String> {
    let plain = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e} (is another process using the port? set `listen` or --listen)", config.listen))?;
    let tls = match &config.tls {
        Some(t) => Some(tokio::net::TcpListener::bind(t.listen).await.map_err(|e| {
            format!(
                "config key `tls.listen`: cannot listen on {}: {e} (is another process using the port?)",
                t.listen
            )
        })?),
        None => None,
    };
    let reload = reload_signal();
    hoard::run_listeners(plain, tls, config, shutdown_signal(), reload)
        .await
        .map_err(|e| e.to_string())
}

/// A message per SIGHUP, which asks for the TLS certificate to be read
/// again. Installing the handler also keeps SIGHUP from killing hoard.
fn reload_signal() -> tokio::sync::mpsc::Receiver<()> {
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    #[cfg(unix)]
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(mut hup) => {
            tokio::spawn(async move {
                while hup.recv().await.is_some() {
                    tracing::info!("SIGHUP: reloading the TLS certificate");
                    // Full means a reload is already pending: it will read
                    // the newest files anyway.
                    if let Err(tokio::sync::mpsc::error::TrySendError::Closed(())) = tx.try_send(())
                    {
                        break;
                    }
                }
            });
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch SIGHUP; certificate reloads need a restart")
        }
    }
    #[cfg(not(unix))]
    drop(tx);
    rx
}

/// Resolves on SIGINT or SIGTERM. The handlers are installed now, not at
/// the first poll, so a signal that arrives while the cache is still being
/// opened is not lost (or fatal): the server stops as soon as it is up.
fn shutdown_signal() -> impl std::future::Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let int = signal(SignalKind::interrupt());
        let term = signal(SignalKind::terminate());
        async move {
            match (int, term) {
                (Ok(mut int), Ok(mut term)) => tokio::select! {
                    _ = int.recv() => tracing::info!("SIGINT received"),
                    _ = term.recv() => tracing::info!("SIGTERM received"),
                },
                (Err(e), _) | (_, Err(e)) => {
                    tracing::warn!(error = %e, "cannot watch SIGINT/SIGTERM; only Ctrl-C stops hoard");
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
    }
    #[cfg(not(unix))]
    async {
        let _ = tokio::signal::ctrl_c().await;
    }
}
