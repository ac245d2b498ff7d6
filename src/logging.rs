//! hoard's log output: one subscriber, on stderr, coloured only for a
//! person at a terminal.

use crate::config::LogFormat;

/// Colour only on a terminal: escape codes in a file, a pipe, journald or
/// `kubectl logs` are noise. `NO_COLOR` (any non-empty value) turns it off
/// even there (<https://no-color.org>).
pub fn colour() -> bool {
    use std::io::IsTerminal;
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// Installs the global subscriber on stderr, text or JSON as `log_format`
/// says; `RUST_LOG` filters, else `default` (`info` for the server, `error`
/// under a progress display, whose bars log lines would tear through).
pub fn init(format: LogFormat, default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(colour());
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}
