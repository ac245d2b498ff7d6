//! The `hoard` command line: argument parsing, the commands, their terminal
//! output and the operator-API client the `--server` commands use. It sits
//! above every other module and no library layer imports it; the
//! library reports progress through plain events and traits
//! ([`crate::prefetch::Event`], [`crate::bundle::progress::Progress`]) that
//! this module renders.
//!
//! - [`args`]: the subcommands and flags (clap).
//! - [`serve`]: `hoard serve`: bind, signals, run until SIGTERM.
//! - [`offline`]: `verify`, `export`, `import` on a stopped server's cache.
//! - [`air`]: `prefetch`, `pin`, `unpin`, `ls`, `check`, through a server or
//!   on its cache directory.
//! - [`client`]: the operator API's client (`--server URL`).
//! - [`display`], [`progress`]: prefetch bars and export/import bars.
//! - [`error`]: the one error type; its message says what failed and what
//!   to do.
//!
//! Only [`crate::fuzzing`] (a harness, itself at the top) calls in here, to
//! fuzz the real `hoard import`.
//!
//! Exit status: 0 done, 1 the command ran and found a failure (an image
//! failed or is missing, damage found, an export or import failed), 2 the
//! command could not run (bad configuration, unreachable server).

pub mod air;
pub mod args;
pub mod client;
pub mod display;
pub mod error;
pub mod offline;
pub mod progress;
pub mod serve;

use std::path::PathBuf;
use std::process::ExitCode;

pub use air::{check, image_list, ls, pin, prefetch, unpin, Site};
pub use args::{Cli, Command, Place};
pub use error::Error;
pub use offline::{export, import, verify};

use crate::config::Config;

/// Runs the parsed command line to its exit status.
pub fn run(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Prefetch {
            images,
            file,
            platform,
            jobs,
            place,
        } => air_command(place, |target| async move {
            let images = image_list(images, file.as_deref())?;
            prefetch(target, images, platform, jobs).await
        }),
        Command::Pin {
            image,
            platform,
            place,
        } => air_command(place, |t| async move {
            pin(t, image, platform).await.map(|()| true)
        }),
        Command::Unpin { image, place } => {
            air_command(
                place,
                |t| async move { unpin(t, image).await.map(|()| true) },
            )
        }
        Command::Ls { json, place } => {
            air_command(place, |t| async move { ls(t, json).await.map(|()| true) })
        }
        Command::Check {
            images,
            file,
            platform,
            place,
        } => air_command(place, |target| async move {
            let images = image_list(images, file.as_deref())?;
            check(target, images, platform).await
        }),
        Command::Verify { config, cache_dir } => {
            let config = match load_with_logs(config, cache_dir) {
                Ok(c) => c,
                Err(code) => return code,
            };
            match verify(&config.cache_dir) {
                Ok(true) => ExitCode::SUCCESS,
                Ok(false) => ExitCode::FAILURE,
                Err(e) => fail(e, 2),
            }
        }
        Command::Export {
            images,
            pinned,
            output,
            platform,
            place: Place {
                server: Some(url), ..
            },
        } => on_site(Site::Server(url.clone()), |_| async move {
            client::export(&url, images, pinned, platform, &output).await
        }),
        Command::Export {
            images,
            pinned,
            output,
            platform,
            place: Place {
                config, cache_dir, ..
            },
        } => offline_command(config, cache_dir, output.as_os_str() == "-", |c| {
            export(c, &images, pinned, platform.as_deref(), &output)
        }),
        Command::Import {
            archive,
            upstream,
            repo,
            place: Place {
                server: Some(url), ..
            },
        } => on_site(Site::Server(url.clone()), |_| async move {
            let placement = crate::bundle::import::Placement { upstream, repo };
            client::import(&url, &archive, &placement).await
        }),
        Command::Import {
            archive,
            upstream,
            repo,
            place: Place {
                config, cache_dir, ..
            },
        } => offline_command(config, cache_dir, false, |c| {
            let placement = crate::bundle::import::Placement { upstream, repo };
            import(c, &archive, &placement)
        }),
        Command::DefaultConfig => {
            print!("{}", crate::config::DEFAULT_CONFIG);
            ExitCode::SUCCESS
        }
        Command::Serve {
            config,
            listen,
            cache_dir,
        } => serve::main(config, listen, cache_dir),
    }
}

/// Prints a failure the one way the CLI does and returns its exit status.
fn fail(e: Error, code: u8) -> ExitCode {
    eprintln!("hoard: {e}");
    ExitCode::from(code)
}

/// Runs an offline command: exit 2 for a bad config, 1 when the command
/// failed (its message on stderr), 0 with its summary on stdout (stderr
/// when stdout carries the command's output).
fn offline_command(
    config: Option<PathBuf>,
    cache_dir: Option<PathBuf>,
    stdout_busy: bool,
    command: impl FnOnce(&Config) -> Result<String, Error>,
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
        Err(e) => fail(e, 1),
    }
}

/// Where `place` says a command works: the server, or the cache of the
/// configuration it names (a bad one is reported: exit status 2).
fn site(place: Place) -> Result<Site, ExitCode> {
    match place.server {
        Some(url) => Ok(Site::Server(url)),
        None => match load(place.config, None, place.cache_dir) {
            Ok(c) => Ok(Site::Local(Box::new(c))),
            Err(e) => Err(fail(e, 2)),
        },
    }
}

/// Runs an air-gap command where `place` says (see [`on_site`]).
fn air_command<F, Fut>(place: Place, run: F) -> ExitCode
where
    F: FnOnce(Site) -> Fut,
    Fut: std::future::Future<Output = Result<bool, Error>>,
{
    match site(place) {
        Ok(target) => on_site(target, run),
        Err(code) => code,
    }
}

/// Runs an air-gap command on `target`: exit 0 when it returns `Ok(true)`,
/// 1 for `Ok(false)` (an image failed or is missing), 2 for an error.
fn on_site<F, Fut>(target: Site, run: F) -> ExitCode
where
    F: FnOnce(Site) -> Fut,
    Fut: std::future::Future<Output = Result<bool, Error>>,
{
    // Errors only: the display reports failures and warnings itself, and
    // log lines would tear through the progress bars.
    crate::logging::init(crate::config::LogFormat::Text, "error");
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => return fail(Error::Runtime(e), 2),
    };
    match runtime.block_on(run(target)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => fail(e, 2),
    }
}

/// The configuration of a one-shot command that works on the cache
/// directory, with logging set up in its format; a bad configuration is
/// reported and becomes exit status 2.
fn load_with_logs(config: Option<PathBuf>, cache_dir: Option<PathBuf>) -> Result<Config, ExitCode> {
    match load(config, None, cache_dir) {
        Ok(c) => {
            crate::logging::init(c.log_format, "info");
            Ok(c)
        }
        Err(e) => Err(fail(e, 2)),
    }
}

/// The configuration at `path` (the embedded one without it), with the
/// command line's overrides.
fn load(
    path: Option<PathBuf>,
    listen: Option<std::net::SocketAddr>,
    cache_dir: Option<PathBuf>,
) -> Result<Config, Error> {
    let text = match &path {
        Some(p) => std::fs::read_to_string(p).map_err(|source| Error::ReadFile {
            path: p.clone(),
            source,
        })?,
        None => crate::config::DEFAULT_CONFIG.to_owned(),
    };
    let mut config = Config::from_toml(&text).map_err(|source| Error::Config {
        origin: path.map_or_else(
            || "embedded mirror.toml".to_owned(),
            |p| p.display().to_string(),
        ),
        source,
    })?;
    if let Some(l) = listen {
        config.listen = l;
    }
    if let Some(d) = cache_dir {
        config.cache_dir = d;
    }
    Ok(config)
}

#[cfg(test)]
mod tests;
