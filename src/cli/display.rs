//! Showing prefetch progress: bars on a terminal (one per image and one
//! for all bytes), plain log lines otherwise. Fed the same events whether
//! the prefetch runs in this process or in a server.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::prefetch::{Event, Summary};

/// Renders events; [`Display::finish`] returns the summary seen.
pub struct Display {
    bars: Option<Bars>,
    summary: Option<Summary>,
    failed: Vec<(String, String)>,
    /// Plain mode: bytes so far, and when the last line was printed.
    plain_bytes: u64,
    last_line: Instant,
}

struct Bars {
    multi: MultiProgress,
    total: ProgressBar,
    images: HashMap<String, ProgressBar>,
}

fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ")
}

impl Display {
    /// Bars when `tty`, log lines otherwise.
    pub fn new(tty: bool, images: usize) -> Display {
        let bars = tty.then(|| {
            let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
            let total = multi.add(ProgressBar::new(0));
            total.set_style(style(
                "{prefix:>12.bold} [{bar:40.cyan/blue}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta} {msg}",
            ));
            total.set_prefix("total");
            total.set_message(format!("0/{images} images"));
            total.enable_steady_tick(Duration::from_millis(200));
            Bars {
                multi,
                total,
                images: HashMap::new(),
            }
        });
        Display {
            bars,
            summary: None,
            failed: Vec::new(),
            plain_bytes: 0,
            last_line: Instant::now(),
        }
    }

    /// Shows one event.
    pub fn event(&mut self, ev: Event) {
        match (&mut self.bars, ev) {
            (_, Event::Summary(s)) => self.summary = Some(s),
            (Some(b), ev) => b.event(ev, &mut self.failed),
            (None, ev) => self.line(ev),
        }
    }

    fn line(&mut self, ev: Event) {
        match ev {
            Event::Resolved {
                image,
                digest,
                blobs,
                bytes,
                cached_bytes,
            } => eprintln!(
                "resolved {image} -> {digest}: {blobs} blobs, {} ({} cached)",
                human(bytes),
                human(cached_bytes)
            ),
            Event::Progress { bytes, .. } => {
                self.plain_bytes += bytes;
                if self.last_line.elapsed() >= Duration::from_secs(5) {
                    self.last_line = Instant::now();
                    eprintln!("fetched {} so far", human(self.plain_bytes));
                }
            }
            Event::Warning { image, message } => eprintln!("warning {image}: {message}"),
            Event::Done {
                image,
                fetched_bytes,
                cached_bytes,
                ..
            } => eprintln!(
                "pinned {image}: fetched {}, {} already cached",
                human(fetched_bytes),
                human(cached_bytes)
            ),
            Event::Failed { image, error } => {
                eprintln!("FAILED {image}: {error}");
                self.failed.push((image, error));
            }
            Event::Summary(_) => {}
        }
    }

    /// Clears the bars, prints the summary line and the failures; returns
    /// the summary (`None` if the run ended without one).
    pub fn finish(self) -> Option<Summary> {
        if let Some(b) = &self.bars {
            b.total.finish_and_clear();
            let _ = b.multi.clear();
        }
        let s = self.summary?;
        println!(
            "{} images ({} failed), {} blobs: fetched {}, already cached {}",
            s.images,
            s.failed,
            s.blobs,
            human(s.fetched_bytes),
            human(s.cached_bytes)
        );
        if self.bars.is_some() {
            for (image, error) in &self.failed {
                println!("failed: {image}: {error}");
            }
        }
        Some(s)
    }
}

impl Bars {
    fn event(&mut self, ev: Event, failed: &mut Vec<(String, String)>) {
        match ev {
            Event::Resolved {
                image,
                bytes,
                cached_bytes,
                ..
            } => {
                let bar = self
                    .multi
                    .insert_before(&self.total, ProgressBar::new(bytes));
                bar.set_style(style("{prefix:>12} [{bar:40}] {bytes}/{total_bytes} {msg}"));
                bar.set_prefix(short(&image));
                bar.set_position(cached_bytes);
                bar.set_message(format!("{} cached", human(cached_bytes)));
                self.total.inc_length(bytes);
                self.total.inc(cached_bytes);
                self.images.insert(image, bar);
            }
            Event::Progress { image, bytes } => {
                if let Some(bar) = self.images.get(&image) {
                    bar.inc(bytes);
                }
                self.total.inc(bytes);
            }
            Event::Warning { image, message } => {
                let _ = self.multi.println(format!("warning {image}: {message}"));
            }
            Event::Done { image, .. } => {
                if let Some(bar) = self.images.get(&image) {
                    bar.set_position(bar.length().unwrap_or(0));
                    bar.finish_with_message("pinned");
                }
                self.count_done();
            }
            Event::Failed { image, error } => {
                match self.images.get(&image) {
                    Some(bar) => bar.abandon_with_message(format!("FAILED: {error}")),
                    None => {
                        let _ = self.multi.println(format!("FAILED {image}: {error}"));
                    }
                }
                failed.push((image, error));
                self.count_done();
            }
            Event::Summary(_) => {}
        }
    }

    fn count_done(&self) {
        let msg = self.total.message();
        let (done, of) = msg.split_once('/').unwrap_or(("0", "0 images"));
        let done = done.parse::<u64>().unwrap_or(0) + 1;
        self.total.set_message(format!("{done}/{of}"));
    }
}

/// The last path component and tag, so bars stay narrow.
fn short(image: &str) -> String {
    let s = image.rsplit('/').next().unwrap_or(image);
    let s = s.split('@').next().unwrap_or(s);
    if s.chars().count() > 24 {
        format!("{}…", s.chars().take(23).collect::<String>())
    } else {
        s.to_owned()
    }
}

/// Bytes for people.
pub fn human(bytes: u64) -> String {
    indicatif::HumanBytes(bytes).to_string()
}
