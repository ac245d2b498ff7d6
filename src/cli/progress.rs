//! Progress of an export or import, as the operator sees it: a bar on a
//! terminal (stderr), a log line every few seconds otherwise, so a
//! pipeline's log shows it is alive without drowning in redraws.

use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How often the log-line form reports.
const LOG_EVERY: Duration = Duration::from_secs(5);

/// Renders [`crate::bundle::progress::Progress`] reports. Shared between
/// the thread doing the work and the command; cheap to update per chunk.
pub struct Bar {
    what: &'static str,
    bar: Option<indicatif::ProgressBar>,
    /// std lock: a few field updates per chunk, never held across an await.
    state: Mutex<State>,
}

struct State {
    done: u64,
    total: u64,
    last_log: Instant,
    item: String,
}

impl Bar {
    /// A counter for `what` ("exporting", "importing"): a bar when stderr
    /// is a terminal (an archive on stdout does not disturb it).
    pub fn new(what: &'static str) -> Bar {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = bar("{prefix} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} {wide_msg}");
            bar.set_prefix(what);
            bar
        });
        Bar {
            what,
            bar,
            state: Mutex::new(State {
                done: 0,
                total: 0,
                last_log: Instant::now(),
                item: String::new(),
            }),
        }
    }
}

/// A byte bar drawn with `template` (a plain bar if the template is bad).
pub(super) fn bar(template: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template(template)
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar
}

impl crate::bundle::progress::Progress for Bar {
    fn start(&self, total: u64) {
        if let Some(bar) = &self.bar {
            bar.set_length(total);
        }
        if let Ok(mut s) = self.state.lock() {
            s.total = total;
        }
    }

    fn item(&self, item: &str) {
        if let Some(bar) = &self.bar {
            bar.set_message(item.to_owned());
        }
        if let Ok(mut s) = self.state.lock() {
            s.item = item.to_owned();
        }
    }

    fn add(&self, n: u64) {
        if let Some(bar) = &self.bar {
            bar.inc(n);
            return;
        }
        let Ok(mut s) = self.state.lock() else { return };
        s.done += n;
        if s.last_log.elapsed() >= LOG_EVERY {
            s.last_log = Instant::now();
            tracing::info!(
                bytes = s.done,
                of_bytes = s.total,
                at = %s.item,
                "{}", self.what
            );
        }
    }

    /// Clears the bar (the command prints the summary).
    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

impl Drop for Bar {
    fn drop(&mut self) {
        crate::bundle::progress::Progress::finish(self);
    }
}
