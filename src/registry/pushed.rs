//! Manifests of local repositories: `PUT` (validated, stored as pushed),
//! `GET`/`HEAD`, `DELETE` when enabled, and the OCI 1.1 referrers API.

use bytes::{Bytes, BytesMut};
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body_util::BodyExt;

use super::push::ReqBody;
use super::{json_response, ApiError, Registry};
use crate::body::{self, Body};
use crate::metrics::{Kind, Outcome, Source};
use crate::oci::{Digest, Reference, RepoName};

/// `PUT /v2/<name>/manifests/<reference>`.
pub async fn put<B: ReqBody>(
    reg: &Registry,
    req: &Request<()>,
    name: RepoName,
    reference: Reference,
    body: B,
) -> Result<Response<Body>, ApiError> {
    let limit = reg.local.config().max_manifest_size;
    let bytes = read_limited(req, body, limit).await?;
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or("").trim());
    let (digest, subject) = reg
        .local
        .put_manifest(&name, &reference, content_type, bytes)
        .await?;
    tracing::info!(repo = %name, %reference, %digest, "manifest pushed");
    let mut r = Response::new(body::empty());
    *r.status_mut() = StatusCode::CREATED;
    let h = r.headers_mut();
    let mut set = |k: &'static str, v: String| {
        if let Ok(v) = HeaderValue::from_str(&v) {
            h.insert(k, v);
        }
    };
    set("location", format!("/v2/{name}/manifests/{digest}"));
    set("docker-content-digest", digest.to_string());
    if let Some(s) = subject {
        set("oci-subject", s.to_string());
    }
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(0));
    Ok(r)
}

/// Reads a manifest body of at most `limit` bytes (else 413).
async fn read_limited<B: ReqBody>(
    req: &Request<()>,
    mut body: B,
    limit: usize,
) -> Result<Bytes, ApiError> {
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "MANIFEST_INVALID",
            format!("manifest larger than {limit} bytes ([local] max_manifest_size)"),
        )
    };
    let declared = crate::http::content_length(req.headers());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    let mut buf = BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "MANIFEST_INVALID",
                format!("request body: {e}"),
            )
        })?;
        if let Ok(data) = frame.into_data() {
            if buf.len() + data.len() > limit {
                return Err(too_large());
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(buf.freeze())
}

/// `GET`/`HEAD` of a local manifest by tag or digest.
pub async fn get(
    reg: &Registry,
    name: &RepoName,
    reference: Reference,
    head: bool,
) -> Result<Response<Body>, ApiError> {
    let (digest, media_type, bytes) = match reg.local.manifest(name, &reference).await {
        Ok(m) => m,
        Err(e) => {
            reg.metrics.request(Kind::Manifest, Outcome::Error);
            return Err(e.into());
        }
    };
    reg.metrics.request(Kind::Manifest, Outcome::Local);
    let len = bytes.len();
    let mut r = Response::new(if head {
        body::empty()
    } else {
        reg.metrics.served(Source::Local, len as u64);
        body::full(bytes)
    });
    let h = r.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&media_type) {
        h.insert(header::CONTENT_TYPE, v);
    }
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    if let Ok(v) = HeaderValue::from_str(&digest.to_string()) {
        h.insert("docker-content-digest", v);
    }
    if let Ok(v) = HeaderValue::from_str(&format!("\"{digest}\"")) {
        h.insert(header::ETAG, v);
    }
    Ok(r)
}

/// `DELETE` of a manifest (by digest) or a tag, when `[local] delete` allows.
pub async fn delete(
    reg: &Registry,
    name: &RepoName,
    reference: Reference,
) -> Result<Response<Body>, ApiError> {
    deletes_enabled(reg)?;
    reg.local.delete_manifest(name, &reference).await?;
    tracing::info!(repo = %name, %reference, "manifest deleted");
    Ok(accepted())
}

/// `DELETE` of a blob link, when `[local] delete` allows.
pub async fn delete_blob(
    reg: &Registry,
    name: &RepoName,
    digest: Digest,
) -> Result<Response<Body>, ApiError> {
    deletes_enabled(reg)?;
    reg.local.delete_blob(name, &digest).await?;
    Ok(accepted())
}

fn deletes_enabled(reg: &Registry) -> Result<(), ApiError> {
    if reg.local.config().delete {
        return Ok(());
    }
    Err(ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "UNSUPPORTED",
        "deletes are disabled: set delete = true under [local] in mirror.toml",
    ))
}

fn accepted() -> Response<Body> {
    let mut r = Response::new(body::empty());
    *r.status_mut() = StatusCode::ACCEPTED;
    r.headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from(0));
    r
}

/// `GET /v2/<name>/referrers/<digest>[?artifactType=]`: an image index of
/// the manifests whose `subject` is `digest` (empty when none).
pub fn referrers(
    reg: &Registry,
    name: &RepoName,
    digest: Digest,
    query: Option<&str>,
    head: bool,
) -> Result<Response<Body>, ApiError> {
    let filter = crate::http::query_param(query, "artifactType").filter(|t| !t.is_empty());
    let manifests = reg.local.referrers(name, &digest, filter.as_deref());
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": manifests,
    });
    let mut r = json_response(index.to_string().into_bytes(), head);
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/vnd.oci.image.index.v1+json"),
    );
    if filter.is_some() {
        r.headers_mut().insert(
            "oci-filters-applied",
            HeaderValue::from_static("artifactType"),
        );
    }
    Ok(r)
}
