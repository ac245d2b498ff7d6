//! `hoard serve`: load the configuration, bind the listeners, wire the
//! signals and run the mirror until SIGTERM or SIGINT.

use std::path::PathBuf;
use std::process::ExitCode;

use super::Error;
use crate::config::Config;

/// Runs the server to its exit status: 2 for a bad configuration, 1 when
/// it could not start or stopped on an error, 0 after a clean shutdown.
pub fn main(
    config: Option<PathBuf>,
    listen: Option<std::net::SocketAddr>,
    cache_dir: Option<PathBuf>,
) -> ExitCode {
    let config = match super::load(config, listen, cache_dir) {
        Ok(c) => c,
        Err(e) => return super::fail(e, 2),
    };
    crate::logging::init(config.log_format, "info");
    ignore_file_size_signal();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => return super::fail(Error::Runtime(e), 1),
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
async fn serve(config: Config) -> Result<(), Error> {
    let plain = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| Error::Listen {
            key: "",
            addr: config.listen,
            source,
            hint: " set `listen` or --listen",
        })?;
    let tls = match &config.tls {
        Some(t) => Some(
            tokio::net::TcpListener::bind(t.listen)
                .await
                .map_err(|source| Error::Listen {
                    key: "config key `tls.listen`: ",
                    addr: t.listen,
                    source,
                    hint: "",
                })?,
        ),
        None => None,
    };
    let reload = reload_signal();
    crate::run_listeners(plain, tls, config, shutdown_signal(), reload).await?;
    Ok(())
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
