//! The push side of the distribution API: blob uploads (monolithic,
//! chunked, cross-repository mounts) into local repositories.
//!
//! Every answer carries the headers clients rely on: `Location` of the
//! session or the blob, `Range: 0-<last byte>` of what the session holds,
//! `Docker-Upload-UUID`, `Docker-Content-Digest`, `Content-Length: 0`.

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};

use super::{ApiError, Registry};
use crate::body::{self, Body};
use crate::http::query_param;
use crate::local::{self, uploads::Session};
use crate::oci::{Digest, RepoName};

/// What a handler needs of a request body: streamed frame by frame.
pub trait ReqBody:
    hyper::body::Body<Data = Bytes, Error: std::fmt::Display> + Send + Unpin
{
}
impl<B> ReqBody for B where
    B: hyper::body::Body<Data = Bytes, Error: std::fmt::Display> + Send + Unpin
{
}

/// `POST /v2/<name>/blobs/uploads/`: a mount (`?mount=&from=`), a
/// monolithic upload (`?digest=` with the body), or a new session.
pub async fn start<B: ReqBody>(
    reg: &Registry,
    req: &Request<()>,
    name: RepoName,
    body: B,
) -> Result<Response<Body>, ApiError> {
    let query = req.uri().query();
    if let Some(mount) = query_param(query, "mount") {
        let digest: Digest = mount.parse()?;
        let from = query_param(query, "from").and_then(|f| f.parse::<RepoName>().ok());
        if let Some(from) = from {
            if reg.local.mount(&name, &from, &digest).await? {
                return Ok(created(&name, &digest));
            }
        }
        // Not mountable: the spec says fall back to a new session.
    }
    let session = reg.local.uploads.start(name.clone()).await?;
    if let Some(d) = query_param(query, "digest") {
        let digest: Digest = d.parse()?;
        return Ok(finish(reg, &session, &digest, None, body).await?);
    }
    Ok(progress(StatusCode::ACCEPTED, &session, 0))
}

/// `/v2/<name>/blobs/uploads/<id>`: `GET` status, `PATCH` a chunk, `PUT`
/// to finish, `DELETE` to cancel.
pub async fn session<B: ReqBody>(
    reg: &Registry,
    req: &Request<()>,
    name: RepoName,
    id: &str,
    body: B,
) -> Result<Response<Body>, ApiError> {
    let s = reg.local.uploads.get(&name, id).await?;
    let uploads = &reg.local.uploads;
    match *req.method() {
        Method::GET | Method::HEAD => {
            let size = uploads.size(&s).await;
            Ok(progress(StatusCode::NO_CONTENT, &s, size))
        }
        Method::PATCH => {
            let range = content_range(req)?;
            match uploads.append(&s, range, body, reg.local.metrics()).await {
                Ok(size) => Ok(progress(StatusCode::ACCEPTED, &s, size)),
                Err(e) => out_of_order(&s, e),
            }
        }
        Method::PUT => {
            let digest: Digest = query_param(req.uri().query(), "digest")
                .ok_or_else(|| {
                    ApiError::new(
                        StatusCode::BAD_REQUEST,
                        "DIGEST_INVALID",
                        "finishing an upload needs ?digest=sha256:<hex>",
                    )
                })?
                .parse()?;
            let range = content_range(req)?;
            finish(reg, &s, &digest, range, body)
                .await
                .or_else(|e| out_of_order(&s, e))
        }
        Method::DELETE => {
            uploads.cancel(&s).await;
            let mut r = Response::new(body::empty());
            *r.status_mut() = StatusCode::NO_CONTENT;
            Ok(r)
        }
        _ => Err(ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "UNSUPPORTED",
            "an upload session takes GET, PATCH, PUT and DELETE",
        )),
    }
}

/// The request's `Content-Range` (`None` without one; 400 when unreadable).
fn content_range(req: &Request<()>) -> Result<Option<(u64, u64)>, ApiError> {
    let Some(v) = req.headers().get(header::CONTENT_RANGE) else {
        return Ok(None);
    };
    let range = parse_content_range(v.to_str().unwrap_or("")).ok_or_else(|| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "BLOB_UPLOAD_INVALID",
            "Content-Range must be <start>-<end>",
        )
    })?;
    Ok(Some(range))
}

/// A chunk that does not continue the session: `416` with the session's
/// headers (it is kept, and `Range` says where to resume); other session
/// errors as usual.
fn out_of_order(s: &Session, e: local::Error) -> Result<Response<Body>, ApiError> {
    let local::Error::RangeInvalid { size } = e else {
        return Err(e.into());
    };
    let err = ApiError::new(
        StatusCode::RANGE_NOT_SATISFIABLE,
        "BLOB_UPLOAD_INVALID",
        format!(
            "chunk does not continue the upload: it holds {size} bytes, send from offset {size}"
        ),
    );
    let mut r = err.into_response(false);
    session_headers(&mut r, s, size);
    Ok(r)
}

/// Takes the last chunk (checked against `range` when given), verifies
/// the digest and commits the blob.
async fn finish<B: ReqBody>(
    reg: &Registry,
    s: &Session,
    digest: &Digest,
    range: Option<(u64, u64)>,
    body: B,
) -> Result<Response<Body>, local::Error> {
    let (staged, size) = reg
        .local
        .uploads
        .finish(s, digest, range, body, reg.local.metrics())
        .await?;
    // A staging that fails to commit is dropped, and its bytes with it.
    reg.local
        .commit_upload(&s.repo, digest, staged, size)
        .await?;
    tracing::info!(repo = %s.repo, %digest, bytes = size, "blob pushed");
    Ok(created(&s.repo, digest))
}

/// `201 Created` for a blob now in `name`.
fn created(name: &RepoName, digest: &Digest) -> Response<Body> {
    let mut r = Response::new(body::empty());
    *r.status_mut() = StatusCode::CREATED;
    let h = r.headers_mut();
    set(h, header::LOCATION, &format!("/v2/{name}/blobs/{digest}"));
    set(h, "docker-content-digest", &digest.to_string());
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(0));
    r
}

/// `202`/`204` describing a session holding `size` bytes.
fn progress(status: StatusCode, s: &Session, size: u64) -> Response<Body> {
    let mut r = Response::new(body::empty());
    *r.status_mut() = status;
    session_headers(&mut r, s, size);
    r.headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from(0));
    r
}

fn session_headers(r: &mut Response<Body>, s: &Session, size: u64) {
    let h = r.headers_mut();
    set(
        h,
        header::LOCATION,
        &format!("/v2/{}/blobs/uploads/{}", s.repo, s.id),
    );
    set(h, header::RANGE, &format!("0-{}", size.saturating_sub(1)));
    set(h, "docker-upload-uuid", &s.id);
}

fn set<K: header::IntoHeaderName>(h: &mut http::HeaderMap, k: K, v: &str) {
    if let Ok(v) = HeaderValue::from_str(v) {
        h.insert(k, v);
    }
}

/// `<start>-<end>` (inclusive), also with a `bytes ` or `bytes=` prefix
/// and a `/<total>` suffix, as clients send it.
fn parse_content_range(v: &str) -> Option<(u64, u64)> {
    let v = v.trim();
    let v = v
        .strip_prefix("bytes=")
        .or_else(|| v.strip_prefix("bytes "))
        .unwrap_or(v);
    let v = v.split('/').next()?;
    let (a, b) = v.split_once('-')?;
    Some((a.trim().parse().ok()?, b.trim().parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_ranges() {
        assert_eq!(parse_content_range("0-99"), Some((0, 99)));
        assert_eq!(parse_content_range("bytes=5-9"), Some((5, 9)));
        assert_eq!(parse_content_range("bytes 5-9/*"), Some((5, 9)));
        assert_eq!(parse_content_range("x-9"), None);
        assert_eq!(parse_content_range("5"), None);
    }
}
