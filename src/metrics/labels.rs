//! The label values of hoard's metrics: enums, so every label set is
//! bounded and spelled once.

/// What a request was for. `hoard_requests_total` counts manifests and
/// blobs only; `hoard_request_duration_seconds` labels every request, so
/// a slow blob download does not hide inside the latency of manifests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A manifest by tag or digest (pulls, pushes and deletes).
    Manifest,
    /// A blob (pulls and deletes).
    Blob,
    /// A blob upload session (`POST`, `PATCH`, `PUT` of pushes).
    Upload,
    /// Anything else: tag lists, the catalog, referrers, `/v2/`, tokens,
    /// health, readiness, metrics and unknown paths.
    Other,
}

impl Kind {
    /// Label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Manifest => "manifest",
            Kind::Blob => "blob",
            Kind::Upload => "upload",
            Kind::Other => "other",
        }
    }
}

/// How a request was answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// From the cache.
    Hit,
    /// Fetched from the upstream.
    Miss,
    /// Joined a fill another request started.
    Coalesced,
    /// Served from the cache although the upstream could not confirm it.
    Stale,
    /// From a local (pushed) repository: not mirror traffic, so kept apart
    /// from `hit` for an honest mirror hit ratio.
    Local,
    /// Answered with an error.
    Error,
}

impl Outcome {
    /// Label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Hit => "hit",
            Outcome::Miss => "miss",
            Outcome::Coalesced => "coalesced",
            Outcome::Stale => "stale",
            Outcome::Local => "local",
            Outcome::Error => "error",
        }
    }
}

/// Where served bytes came from.
#[derive(Debug, Clone, Copy)]
pub enum Source {
    /// A committed cache entry.
    Cache,
    /// An upstream stream (directly or through an in-progress fill).
    Upstream,
    /// A blob of a local (pushed) repository.
    Local,
}

/// Why a fill ended.
#[derive(Debug, Clone, Copy)]
pub enum FillResult {
    /// Verified and committed.
    Ok,
    /// The bytes did not hash to the digest.
    DigestMismatch,
    /// The upstream failed or stalled.
    UpstreamError,
    /// The local disk failed.
    DiskError,
}

impl FillResult {
    /// Label value.
    pub fn as_str(self) -> &'static str {
        match self {
            FillResult::Ok => "ok",
            FillResult::DigestMismatch => "digest_mismatch",
            FillResult::UpstreamError => "upstream_error",
            FillResult::DiskError => "disk_error",
        }
    }
}

/// An access-control outcome (see `src/auth`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthOutcome {
    /// A user name and password were accepted.
    LoginOk,
    /// A user name and password were refused (unknown user or wrong password).
    LoginFailed,
    /// A login was refused unchecked: too many recent failures.
    LoginRateLimited,
    /// `/token` issued a token.
    TokenIssued,
    /// A Bearer token was refused (forged, expired, malformed).
    TokenRefused,
    /// A request without valid credentials was answered 401.
    Unauthenticated,
    /// A known user was answered 403: the rules do not allow it.
    Forbidden,
}
