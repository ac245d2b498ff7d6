//! Prometheus metrics, on hoard's own registry.
//!
//! Labels are bounded: request kinds and outcomes come from enums, upstream
//! labels from the configured upstream names. Never a repository or digest.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

mod labels;

pub use labels::{AuthOutcome, FillResult, Kind, Outcome, Source};

/// All of hoard's metrics.
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    served_bytes: IntCounterVec,
    upstream_requests: IntCounterVec,
    upstream_latency: HistogramVec,
    token_fetches: IntCounterVec,
    fills_in_flight: IntGauge,
    fills: IntCounterVec,
    cache_size: IntGauge,
    cache_blobs: IntGauge,
    budgeted_bytes: IntGauge,
    local_bytes: IntGauge,
    local_blobs: IntGauge,
    pinned_bytes: IntGauge,
    pinned_blobs: IntGauge,
    stale_tags: IntCounter,
    request_duration: HistogramVec,
    cache_limit: IntGauge,
    evictions: IntCounter,
    evicted_bytes: IntCounter,
    disk_full: IntGauge,
    storage_reachable: IntGauge,
    ratelimit_remaining: IntGaugeVec,
    ratelimit_limit: IntGaugeVec,
    connections_open: IntGauge,
    connections_parked: IntGauge,
    connections_rejected: IntCounter,
    auth_logins: IntCounterVec,
    auth_tokens: IntCounterVec,
    auth_denied: IntCounterVec,
    push_bytes: IntCounter,
    blob_mounts: IntCounter,
    gc_blobs: IntCounter,
    gc_bytes: IntCounter,
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels)
                .expect("static metric definition");
            registry
                .register(Box::new(c.clone()))
                .expect("metric registered once");
            c
        };
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("static metric definition");
            registry
                .register(Box::new(g.clone()))
                .expect("metric registered once");
            g
        };
        let requests = counter(
            "hoard_requests_total",
            "Manifest and blob requests by kind and cache outcome.",
            &["kind", "outcome"],
        );
        let served_bytes = counter(
            "hoard_served_bytes_total",
            "Body bytes sent to clients, by where they came from.",
            &["source"],
        );
        let upstream_requests = counter(
            "hoard_upstream_requests_total",
            "Requests sent to upstream registries, by upstream and HTTP status (or 'error').",
            &["upstream", "status"],
        );
        let token_fetches = counter(
            "hoard_upstream_token_fetches_total",
            "Bearer tokens fetched from upstream token realms.",
            &["upstream"],
        );
        let fills = counter(
            "hoard_fills_total",
            "Blob fills from an upstream, by result.",
            &["result"],
        );
        let upstream_latency = HistogramVec::new(
            HistogramOpts::new(
                "hoard_upstream_request_duration_seconds",
                "Time until an upstream answered with headers.",
            )
            .buckets(vec![
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            ]),
            &["upstream"],
        )
        .expect("static metric definition");
        registry
            .register(Box::new(upstream_latency.clone()))
            .expect("metric registered once");
        let request_duration = HistogramVec::new(
            HistogramOpts::new(
                "hoard_request_duration_seconds",
                "Time until hoard answered a client with headers, by kind of request.",
            )
            .buckets(vec![
                0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0,
            ]),
            &["kind"],
        )
        .expect("static metric definition");
        registry
            .register(Box::new(request_duration.clone()))
            .expect("metric registered once");
        let stale_tags = IntCounter::new(
            "hoard_stale_tags_served_total",
            "Tags served from cache because the upstream could not revalidate them.",
        )
        .expect("static metric definition");
        registry
            .register(Box::new(stale_tags.clone()))
            .expect("metric registered once");
        let plain_counter = |name: &str, help: &str| {
            let c = IntCounter::new(name, help).expect("static metric definition");
            registry
                .register(Box::new(c.clone()))
                .expect("metric registered once");
            c
        };
        let gauge_vec = |name: &str, help: &str, labels: &[&str]| {
            let g =
                IntGaugeVec::new(Opts::new(name, help), labels).expect("static metric definition");
            registry
                .register(Box::new(g.clone()))
                .expect("metric registered once");
            g
        };
        let auth_logins = counter(
            "hoard_auth_logins_total",
            "Password checks (Basic credentials, also at /token), by result: ok, failed, rate_limited.",
            &["result"],
        );
        let auth_tokens = counter(
            "hoard_auth_tokens_total",
            "Bearer tokens issued by /token or refused on a request (forged, expired).",
            &["result"],
        );
        let auth_denied = counter(
            "hoard_auth_denied_total",
            "Requests refused by access control: unauthenticated (401) or forbidden (403).",
            &["reason"],
        );
        Metrics {
            auth_logins,
            auth_tokens,
            auth_denied,
            cache_limit: gauge("hoard_cache_limit_bytes", "The disk budget (max_size)."),
            evictions: plain_counter("hoard_evictions_total", "Blobs evicted to stay within max_size or to free a full disk."),
            evicted_bytes: plain_counter("hoard_evicted_bytes_total", "Bytes evicted."),
            disk_full: gauge("hoard_disk_full", "1 while the cache's last write failed for lack of space, else 0."),
            storage_reachable: {
                let g = gauge("hoard_storage_reachable", "0 while the shared store (the bucket) failed its last health check, else 1.");
                g.set(1);
                g
            },
            ratelimit_remaining: gauge_vec(
                "hoard_upstream_ratelimit_remaining",
                "Last ratelimit-remaining header an upstream sent (Docker Hub pulls left in the window).",
                &["upstream"],
            ),
            ratelimit_limit: gauge_vec(
                "hoard_upstream_ratelimit_limit",
                "Last ratelimit-limit header an upstream sent.",
                &["upstream"],
            ),
            connections_open: gauge("hoard_connections_open", "Client connections open now."),
            connections_parked: gauge(
                "hoard_connections_parked",
                "Idle HTTP/1 connections (plain or TLS) parked without HTTP state (counted in hoard_connections_open too).",
            ),
            push_bytes: plain_counter("hoard_push_bytes_total", "Bytes received in blob uploads to local repositories."),
            blob_mounts: plain_counter("hoard_blob_mounts_total", "Cross-repository mounts answered by linking, copying no bytes."),
            gc_blobs: plain_counter("hoard_gc_reclaimed_blobs_total", "Local blobs deleted by the garbage collector."),
            gc_bytes: plain_counter("hoard_gc_reclaimed_bytes_total", "Bytes of local blobs deleted by the garbage collector."),
            connections_rejected: plain_counter(
                "hoard_connections_rejected_total",
                "Client connections closed at once because max_connections (or max_connections_per_address from their address) were open.",
            ),
            fills_in_flight: gauge(
                "hoard_fills_in_flight",
                "Blob fills currently streaming from an upstream.",
            ),
            cache_size: gauge(
                "hoard_cache_size_bytes",
                "Bytes of verified content in the cache.",
            ),
            cache_blobs: gauge(
                "hoard_cache_blobs",
                "Number of verified blobs (layers, configs, manifests) in the cache.",
            ),
            budgeted_bytes: gauge(
                "hoard_cache_budgeted_bytes",
                "Bytes of cached content under the max_size budget (evictable): the cache size without local and pinned content.",
            ),
            local_bytes: gauge(
                "hoard_local_bytes",
                "Bytes of blobs referenced by local (pushed) repositories; outside max_size.",
            ),
            local_blobs: gauge(
                "hoard_local_blobs",
                "Number of blobs referenced by local (pushed) repositories.",
            ),
            pinned_bytes: gauge(
                "hoard_pinned_bytes",
                "Bytes of blobs of pinned images; outside max_size, never evicted.",
            ),
            pinned_blobs: gauge(
                "hoard_pinned_blobs",
                "Number of blobs of pinned images.",
            ),
            registry,
            requests,
            served_bytes,
            upstream_requests,
            upstream_latency,
            token_fetches,
            fills,
            stale_tags,
            request_duration,
        }
    }

    /// Counts a request outcome.
    pub fn request(&self, kind: Kind, outcome: Outcome) {
        self.requests
            .with_label_values(&[kind.as_str(), outcome.as_str()])
            .inc();
    }

    /// Counts bytes sent to a client.
    pub fn served(&self, source: Source, bytes: u64) {
        let label = match source {
            Source::Cache => "cache",
            Source::Upstream => "upstream",
            Source::Local => "local",
        };
        self.served_bytes.with_label_values(&[label]).inc_by(bytes);
    }

    /// Records an upstream answer (or failure) and how long it took.
    pub fn upstream(&self, upstream: &str, status: Option<u16>, seconds: f64) {
        let status = status.map_or_else(|| "error".to_owned(), |s| s.to_string());
        self.upstream_requests
            .with_label_values(&[upstream, &status])
            .inc();
        self.upstream_latency
            .with_label_values(&[upstream])
            .observe(seconds);
    }

    /// Counts a token fetch.
    pub fn token_fetch(&self, upstream: &str) {
        self.token_fetches.with_label_values(&[upstream]).inc();
    }

    /// Gauge of fills in flight.
    pub fn fills_in_flight(&self) -> &IntGauge {
        &self.fills_in_flight
    }

    /// Counts a finished fill.
    pub fn fill_done(&self, result: FillResult) {
        self.fills.with_label_values(&[result.as_str()]).inc();
    }

    /// Sets the cache size gauges.
    pub fn set_cache_size(&self, bytes: u64, blobs: u64) {
        self.cache_size
            .set(i64::try_from(bytes).unwrap_or(i64::MAX));
        self.cache_blobs
            .set(i64::try_from(blobs).unwrap_or(i64::MAX));
    }

    /// Sets the bytes under the budget.
    pub fn set_budgeted(&self, bytes: u64) {
        self.budgeted_bytes
            .set(i64::try_from(bytes).unwrap_or(i64::MAX));
    }

    /// Sets the gauges of content held outside the budget by local (pushed)
    /// repositories and by pins: plain numbers, not the cache's `Holder`, so
    /// metrics stays on the ground floor.
    pub fn set_held(&self, local: (u64, u64), pinned: (u64, u64)) {
        let set = |g: &IntGauge, v: u64| g.set(i64::try_from(v).unwrap_or(i64::MAX));
        set(&self.local_bytes, local.0);
        set(&self.local_blobs, local.1);
        set(&self.pinned_bytes, pinned.0);
        set(&self.pinned_blobs, pinned.1);
    }

    /// Counts bytes received by blob uploads.
    pub fn pushed(&self, bytes: u64) {
        self.push_bytes.inc_by(bytes);
    }

    /// Counts a cross-repository mount.
    pub fn mounted(&self) {
        self.blob_mounts.inc();
    }

    /// Counts a blob reclaimed by the garbage collector.
    pub fn reclaimed(&self, bytes: u64) {
        self.gc_blobs.inc();
        self.gc_bytes.inc_by(bytes);
    }

    /// Counts a stale tag served.
    pub fn stale_tag(&self) {
        self.stale_tags.inc();
    }

    /// Sets the disk budget gauge.
    pub fn set_cache_limit(&self, bytes: u64) {
        self.cache_limit
            .set(i64::try_from(bytes).unwrap_or(i64::MAX));
    }

    /// Counts an eviction.
    pub fn evicted(&self, bytes: u64) {
        self.evictions.inc();
        self.evicted_bytes.inc_by(bytes);
    }

    /// Sets the disk-full flag.
    pub fn set_disk_full(&self, full: bool) {
        self.disk_full.set(i64::from(full));
    }

    /// Whether the shared store answered its last health check.
    pub fn set_storage_reachable(&self, reachable: bool) {
        self.storage_reachable.set(i64::from(reachable));
    }

    /// Records an upstream's rate-limit headers (`100;w=21600` -> 100).
    pub fn ratelimit(&self, upstream: &str, limit: Option<i64>, remaining: Option<i64>) {
        if let Some(l) = limit {
            self.ratelimit_limit.with_label_values(&[upstream]).set(l);
        }
        if let Some(r) = remaining {
            self.ratelimit_remaining
                .with_label_values(&[upstream])
                .set(r);
        }
    }

    /// Gauge of open client connections.
    pub fn connections_open(&self) -> &IntGauge {
        &self.connections_open
    }

    /// Idle HTTP/1 connections, plain or TLS, parked now (see `server::park`).
    pub fn connections_parked(&self) -> &IntGauge {
        &self.connections_parked
    }

    /// Counts a connection refused for being over max_connections.
    pub fn connection_rejected(&self) {
        self.connections_rejected.inc();
    }

    /// Counts an access-control outcome.
    pub fn auth(&self, outcome: AuthOutcome) {
        use AuthOutcome as A;
        let (vec, label) = match outcome {
            A::LoginOk => (&self.auth_logins, "ok"),
            A::LoginFailed => (&self.auth_logins, "failed"),
            A::LoginRateLimited => (&self.auth_logins, "rate_limited"),
            A::TokenIssued => (&self.auth_tokens, "issued"),
            A::TokenRefused => (&self.auth_tokens, "refused"),
            A::Unauthenticated => (&self.auth_denied, "unauthenticated"),
            A::Forbidden => (&self.auth_denied, "forbidden"),
        };
        vec.with_label_values(&[label]).inc();
    }

    /// Observes the time to answer a client with headers.
    pub fn request_duration(&self, kind: Kind, seconds: f64) {
        self.request_duration
            .with_label_values(&[kind.as_str()])
            .observe(seconds);
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        let encoder = TextEncoder::new();
        if let Err(e) = encoder.encode(&self.registry.gather(), &mut out) {
            tracing::error!(error = %e, "encoding metrics");
        }
        String::from_utf8(out).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}
