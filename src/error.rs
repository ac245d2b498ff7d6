//! The API error: one place that turns any failure into an HTTP status and an
//! OCI `{"errors":[...]}` body.
//!
//! Lower layers have their own error enums (`upstream::Error`,
//! `cache::Error` and a fill's `FillError`, `local::Error`); they are
//! converted here, once, so every handler answers the same cause with the
//! same status and code. A failed fill carries its origin's error whole
//! (pingora's error source), so a client that joined a fill gets the same
//! answer as the one that started it. Internal detail is logged where the
//! conversion happens, the client gets a code and a message that says what
//! to do.
//!
//! This sits above `cache`, `upstream` and `local` and below the handlers
//! (`registry`, `auth`, `admin`): nothing it converts imports it.

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};

use crate::body::{self, Body};
use crate::cache::{self, FillError};
use crate::local;
use crate::oci::{Digest, DigestError, NameError};
use crate::upstream;

/// `Retry-After` when nobody said better: long enough for an upstream hiccup.
const DEFAULT_RETRY_AFTER: u64 = 30;

/// What an upstream's 401 is answered with, so the 401 carries the challenge
/// RFC 9110 requires. The fault is hoard's upstream credentials, not the
/// client's; a client that has none simply reports the message.
const UPSTREAM_CHALLENGE: &str = "Basic realm=\"hoard\"";

/// What a request was about, so an upstream's "not found" gets its OCI code
/// and says what was missing.
#[derive(Clone, Copy)]
pub enum Subject<'a> {
    /// A blob: `BLOB_UNKNOWN`.
    Blob(&'a Digest),
    /// A manifest by tag or digest: `MANIFEST_UNKNOWN`.
    Manifest(&'a dyn std::fmt::Display),
    /// A manifest the upstream has as `media_type`, but not in any type the
    /// request's `Accept` allows: `MANIFEST_UNKNOWN`.
    ManifestNotAccepted {
        /// The tag asked for.
        reference: &'a dyn std::fmt::Display,
        /// What the upstream has.
        media_type: &'a str,
    },
    /// A repository (tag lists): `NAME_UNKNOWN`.
    Repository(&'a dyn std::fmt::Display),
}

/// An error answered to a client.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// OCI error code (`MANIFEST_UNKNOWN`, ...).
    pub code: &'static str,
    /// Human-readable message.
    pub message: String,
    /// `Content-Range: bytes */size` for 416 answers.
    pub range_size: Option<u64>,
    /// `WWW-Authenticate` for 401 and 403 answers of access control.
    pub challenge: Option<String>,
    /// `Retry-After` seconds for 429 and 503 (None: hoard's default, 30).
    pub retry_after: Option<u64>,
    /// Set when an upstream failed: the body's `detail` and the log say
    /// which one and why, so an operator need not guess among several.
    /// (Boxed: errors travel in every `Result` of the handlers.)
    pub upstream: Option<Box<UpstreamFailure>>,
}

/// An upstream that failed a request, for the error body's `detail`.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct UpstreamFailure {
    /// Its key under `[upstreams]` (empty until the handler names it).
    pub upstream: String,
    /// The host hoard connected to (empty until the handler names it).
    pub host: String,
    /// What went wrong, as hoard saw it.
    pub cause: String,
}

impl ApiError {
    /// Builds an error.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            range_size: None,
            challenge: None,
            retry_after: None,
            upstream: None,
        }
    }

    /// Names the upstream of an upstream failure (no-op for other errors).
    pub fn at_upstream(mut self, upstream: &crate::upstream::Upstream) -> ApiError {
        if let Some(f) = &mut self.upstream {
            upstream.name().clone_into(&mut f.upstream);
            upstream.host().clone_into(&mut f.host);
        }
        self
    }

    /// 404 for an unknown route.
    pub fn not_found_route() -> ApiError {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            "no such endpoint: hoard serves the OCI distribution API under /v2/, plus /metrics",
        )
    }

    /// 405 for a method the route does not take.
    pub fn method_not_allowed() -> ApiError {
        ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "UNSUPPORTED",
            "method not allowed on this endpoint (pushes go to /v2/<name>/blobs/uploads/ and /v2/<name>/manifests/<reference>)",
        )
    }

    /// 404 for a registry that is not configured.
    pub fn registry_not_configured(registry: &str) -> ApiError {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "NAME_UNKNOWN",
            format!(
                "registry {registry:?} is not configured in hoard: add it under [upstreams] in mirror.toml"
            ),
        )
    }

    /// 416 with the size for `Content-Range: bytes */size`.
    pub fn range(message: impl Into<String>, size: Option<u64>) -> ApiError {
        ApiError {
            range_size: size,
            ..ApiError::new(StatusCode::RANGE_NOT_SATISFIABLE, "RANGE_INVALID", message)
        }
    }

    /// 500 for a local failure; the detail is logged, not sent.
    pub fn internal(context: &str, err: impl std::fmt::Display) -> ApiError {
        tracing::error!(error = %err, "{context}");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "UNKNOWN",
            format!("{context}; see hoard's log"),
        )
    }

    /// 507 for a write the disk had no room for; says what to do.
    pub fn storage_full(context: &str, err: impl std::fmt::Display) -> ApiError {
        tracing::warn!(error = %err, "{context}: out of disk space");
        ApiError::new(
            StatusCode::INSUFFICIENT_STORAGE,
            "UNKNOWN",
            format!(
                "{context}: the mirror's disk is full; nothing was stored. \
                 Free space under cache_dir (or lower max_size) and retry"
            ),
        )
    }

    /// The OCI error body; `detail` names the failed upstream, if any.
    pub fn body_json(&self) -> String {
        serde_json::json!({
            "errors": [{ "code": self.code, "message": self.message, "detail": self.upstream }]
        })
        .to_string()
    }

    /// The full HTTP response.
    pub fn into_response(self, head_only: bool) -> Response<Body> {
        let json = self.body_json();
        let len = json.len();
        let mut resp = Response::new(if head_only {
            body::empty()
        } else {
            body::full(Bytes::from(json))
        });
        *resp.status_mut() = self.status;
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
        if let Some(size) = self.range_size {
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}")) {
                h.insert(header::CONTENT_RANGE, v);
            }
        }
        if let Some(v) = self
            .challenge
            .as_deref()
            .and_then(|c| HeaderValue::from_str(c).ok())
        {
            h.insert(header::WWW_AUTHENTICATE, v);
        }
        if self.status == StatusCode::TOO_MANY_REQUESTS
            || self.status == StatusCode::SERVICE_UNAVAILABLE
        {
            let secs = self.retry_after.unwrap_or(DEFAULT_RETRY_AFTER);
            h.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}

impl From<DigestError> for ApiError {
    fn from(e: DigestError) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "DIGEST_INVALID", e.to_string())
    }
}

impl From<NameError> for ApiError {
    fn from(e: NameError) -> ApiError {
        match e {
            NameError::Digest(d) => d.into(),
            NameError::Tag => {
                ApiError::new(StatusCode::BAD_REQUEST, "MANIFEST_INVALID", e.to_string())
            }
            NameError::Name(_) => {
                ApiError::new(StatusCode::BAD_REQUEST, "NAME_INVALID", e.to_string())
            }
        }
    }
}

impl ApiError {
    /// `e` from the upstream configured as `upstream` (its key in
    /// mirror.toml), while serving `about`. Every upstream failure a client
    /// sees is chosen here, and its message names the upstream it came
    /// from, so an operator knows which registry to look at.
    pub fn upstream(e: upstream::Error, upstream: &str, about: Subject<'_>) -> ApiError {
        use upstream::Error as U;
        let failed = ApiError::upstream_status(&e, upstream, about);
        match e {
            U::NotFound => failed,
            _ => ApiError {
                upstream: Some(Box::new(UpstreamFailure {
                    upstream: upstream.to_owned(),
                    cause: e.to_string(),
                    ..UpstreamFailure::default()
                })),
                ..failed
            },
        }
    }

    /// Status, code and message for an upstream failure; the message names
    /// `upstream`.
    fn upstream_status(e: &upstream::Error, upstream: &str, about: Subject<'_>) -> ApiError {
        use upstream::Error as U;
        let not_found = |code, what: String| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                code,
                format!("{what} is not known upstream ({upstream})"),
            )
        };
        match e {
            U::NotFound => match about {
                Subject::Blob(digest) => not_found("BLOB_UNKNOWN", format!("blob {digest}")),
                Subject::Manifest(what) => {
                    not_found("MANIFEST_UNKNOWN", format!("manifest {what}"))
                }
                Subject::ManifestNotAccepted {
                    reference,
                    media_type,
                } => ApiError::new(
                    StatusCode::NOT_FOUND,
                    "MANIFEST_UNKNOWN",
                    format!(
                        "manifest {reference} is a {media_type}, which the request's Accept \
                         header does not allow ({upstream})"
                    ),
                ),
                Subject::Repository(name) => {
                    not_found("NAME_UNKNOWN", format!("repository {name}"))
                }
            },
            // Names its upstream already.
            U::RateLimited { retry_after, .. } => ApiError {
                retry_after: *retry_after,
                ..ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "TOOMANYREQUESTS",
                    format!("{e}; pull again later, or configure credentials for this upstream"),
                )
            },
            U::Unauthorized(_) => ApiError {
                challenge: Some(UPSTREAM_CHALLENGE.to_owned()),
                ..ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "UNAUTHORIZED",
                    format!("{upstream}: {e}; check the upstream's credentials in mirror.toml"),
                )
            },
            U::Denied(_) => {
                ApiError::new(StatusCode::FORBIDDEN, "DENIED", format!("{upstream}: {e}"))
            }
            U::Unreachable(_) | U::Timeout(_) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "UNAVAILABLE",
                format!(
                    "{upstream}: {e}; the content is not cached, so hoard cannot serve it offline"
                ),
            ),
            U::Status { .. } | U::Protocol(_) | U::TooLarge(_) | U::DigestMismatch { .. } => {
                ApiError::new(
                    StatusCode::BAD_GATEWAY,
                    "UNAVAILABLE",
                    format!("{upstream}: {e}"),
                )
            }
        }
    }

    /// A failed fill of `digest`, which a request routed to `upstream`
    /// joined: the origin's own error when the origin failed (an upstream's
    /// 404 is `BLOB_UNKNOWN` for every reader of the fill, named after the
    /// upstream the leader asked), else 502.
    pub fn fill(e: FillError, digest: &Digest, upstream: &str) -> ApiError {
        if let FillError::Origin(origin) = &e {
            if let Some(u) = origin.downcast_ref::<upstream::Error>() {
                return ApiError::upstream(u.clone(), origin.origin(), Subject::Blob(digest));
            }
        }
        let from = match &e {
            FillError::Origin(origin) => origin.origin(),
            _ => upstream,
        };
        ApiError::fetch_failed(digest, from, &e)
    }

    /// 502: fetching `digest` from `from` failed, and why. For a fill's
    /// error ([`ApiError::fill`]) and for a read of the fill that broke
    /// before its first byte went out.
    pub fn fetch_failed(digest: &Digest, from: &str, why: &dyn std::fmt::Display) -> ApiError {
        ApiError::new(
            StatusCode::BAD_GATEWAY,
            "UNAVAILABLE",
            format!("fetching {digest} from {from} failed: {why}"),
        )
    }
}

impl From<cache::Error> for ApiError {
    fn from(e: cache::Error) -> ApiError {
        match e {
            cache::Error::Io(io) if cache::is_out_of_space(&io) => {
                ApiError::storage_full("writing to the cache", io)
            }
            other => ApiError::internal("cache failure", other),
        }
    }
}

impl From<local::Error> for ApiError {
    fn from(e: local::Error) -> ApiError {
        use local::Error as L;
        let (status, code) = match &e {
            L::UploadUnknown => (StatusCode::NOT_FOUND, "BLOB_UPLOAD_UNKNOWN"),
            L::RangeInvalid { size } => {
                return ApiError::range(e.to_string(), Some(*size));
            }
            L::DigestInvalid { .. } => (StatusCode::BAD_REQUEST, "DIGEST_INVALID"),
            L::Body(_) => (StatusCode::BAD_REQUEST, "BLOB_UPLOAD_INVALID"),
            L::ManifestInvalid(_) => (StatusCode::BAD_REQUEST, "MANIFEST_INVALID"),
            L::ManifestBlobUnknown(_) => (StatusCode::BAD_REQUEST, "MANIFEST_BLOB_UNKNOWN"),
            L::ChildUnknown(_) => (StatusCode::BAD_REQUEST, "MANIFEST_UNKNOWN"),
            L::ManifestUnknown(_) => (StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN"),
            L::BlobUnknown(_) => (StatusCode::NOT_FOUND, "BLOB_UNKNOWN"),
            L::Io(io) if cache::is_out_of_space(io) => {
                return ApiError::storage_full("storing the upload", io);
            }
            L::Cache(cache::Error::Io(io)) if cache::is_out_of_space(io) => {
                return ApiError::storage_full("storing the upload", io);
            }
            L::Cache(_) | L::Io(_) => {
                return ApiError::internal("local repository failure", e);
            }
        };
        ApiError::new(status, code, e.to_string())
    }
}
