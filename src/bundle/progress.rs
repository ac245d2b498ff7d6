//! Progress of an export or import: a bar on a terminal (stderr), a log
//! line every few seconds otherwise, so a pipeline's log shows it is alive
//! without drowning in redraws.

use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How often the log-line form reports.
const LOG_EVERY: Duration = Duration::from_secs(5);

/// A byte counter shown to the operator. Shared between the thread doing
/// the work and the caller; cheap to update per chunk.
pub struct Progress {
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

impl Progress {
    /// A counter for `what` ("exporting", "importing") of `total` bytes.
    /// `quiet` shows nothing (tests, `-o -` to a terminal).
    pub fn new(what: &'static str, total: u64, quiet: bool) -> Progress {
        let bar = (!quiet && std::io::stderr().is_terminal()).then(|| {
            let bar = indicatif::ProgressBar::new(total);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{prefix} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} {wide_msg}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            bar.set_prefix(what);
            bar
        });
        Progress {
            what,
            bar,
            state: Mutex::new(State {
                done: 0,
                total,
                last_log: Instant::now(),
                item: String::new(),
            }),
        }
    }

    /// Names what is being worked on now (an entry, a digest).
    pub fn item(&self, item: &str) {
        if let Some(bar) = &self.bar {
            bar.set_message(item.to_owned());
        }
        if let Ok(mut s) = self.state.lock() {
            s.item = item.to_owned();
        }
    }

    /// Adds `n` bytes done.
    pub fn add(&self, n: u64) {
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

    /// Clears the bar (the caller prints the summary).
    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.finish();
    }
}
