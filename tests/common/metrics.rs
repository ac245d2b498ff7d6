//! [`Metrics`]: hoard's `/metrics` exposition, parsed on demand.

/// Prometheus text exposition, parsed on demand.
pub struct Metrics(pub String);

impl Metrics {
    /// The value of the one series of `name` whose labels include `labels`;
    /// `None` when absent.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let found: Vec<f64> = self.series(name, labels).collect();
        match found.len() {
            0 => None,
            1 => Some(found[0]),
            _ => Some(found.iter().sum()),
        }
    }

    /// Sum over all series of `name` whose labels include `labels` (0 if none).
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.series(name, labels).sum()
    }

    /// Whether the exposition mentions `name` at all.
    pub fn has(&self, name: &str) -> bool {
        self.0.lines().any(|l| {
            let l = l
                .trim_start_matches("# TYPE ")
                .trim_start_matches("# HELP ");
            l.starts_with(name) && l[name.len()..].starts_with([' ', '{'])
        })
    }

    fn series<'a>(
        &'a self,
        name: &'a str,
        labels: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = f64> + 'a {
        self.0
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(move |line| {
                let (series, value) = line.rsplit_once(' ')?;
                let (metric, label_text) = match series.split_once('{') {
                    Some((m, rest)) => (m, rest.strip_suffix('}')?),
                    None => (series, ""),
                };
                if metric != name {
                    return None;
                }
                let have: Vec<(&str, &str)> = label_text
                    .split(',')
                    .filter(|p| !p.is_empty())
                    .filter_map(|p| {
                        let (k, v) = p.split_once('=')?;
                        Some((k.trim(), v.trim().trim_matches('"')))
                    })
                    .collect();
                if labels.iter().all(|want| have.contains(want)) {
                    value.trim().parse::<f64>().ok()
                } else {
                    None
                }
            })
    }

    pub fn blob_requests(&self, outcome: &str) -> f64 {
        self.sum(
            "hoard_requests_total",
            &[("kind", "blob"), ("outcome", outcome)],
        )
    }
}
