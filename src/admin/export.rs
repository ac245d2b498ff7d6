//! `POST /_hoard/export`: the archive `hoard export` writes, streamed from
//! the running server (see [`crate::bundle::stream`]).

use http::{header, HeaderValue, Response, StatusCode};
use serde::{Deserialize, Serialize};

use super::AdminError;
use crate::body::{self, Body};
use crate::bundle::{export, layout::Platforms, stream};
use crate::prefetch::{ImageRef, Prefetcher};

/// What to export: as `hoard export`'s arguments.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportRequest {
    /// References (`alpine:3.19`, `ghcr.io/org/app:v1`).
    #[serde(default)]
    pub images: Vec<String>,
    /// Only these platforms of multi-platform images (`linux/amd64`);
    /// empty: all.
    #[serde(default)]
    pub platforms: Vec<String>,
    /// Also every pinned image, as pinned.
    #[serde(default)]
    pub pinned: bool,
}

/// Plans the archive (a missing image or blob is a `409` naming it, before
/// any byte), then streams it as `application/x-tar` with the summary in
/// [`stream::SUMMARY_HEADER`].
pub async fn export(engine: &Prefetcher, req: ExportRequest) -> Result<Response<Body>, AdminError> {
    if req.images.is_empty() && !req.pinned {
        return Err(AdminError::BadRequest(
            "no images to export: name them, or set \"pinned\": true".into(),
        ));
    }
    let bad = |e: String| AdminError::BadRequest(e);
    let platforms: Platforms = req.platforms.join(",").parse().map_err(bad)?;
    let mut wanted = Vec::new();
    for image in &req.images {
        let r = ImageRef::resolve(image, engine.config()).map_err(|e| bad(e.to_string()))?;
        wanted.push((r, platforms.clone()));
    }
    if req.pinned {
        let pinned = export::pinned(engine.pins()).map_err(|e| bad(e.to_string()))?;
        if pinned.is_empty() && wanted.is_empty() {
            return Err(AdminError::Conflict("pinned: nothing is pinned".into()));
        }
        wanted.extend(pinned);
    }
    let cache = engine.cache().clone();
    // The plan needs the whole index (a blob still loading is not missing).
    cache
        .index_loaded()
        .await
        .map_err(|e| AdminError::Conflict(e.to_string()))?;
    let planned = export::plan_each(&cache, &wanted)
        .await
        .map_err(|e| AdminError::Conflict(e.to_string()))?;
    let summary = serde_json::to_string(&planned.summary).unwrap_or_default();
    let mut resp = Response::new(body::stream(stream::archive(cache, planned)));
    *resp.status_mut() = StatusCode::OK;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-tar"),
    );
    if let Ok(v) = HeaderValue::from_str(&summary) {
        h.insert(stream::SUMMARY_HEADER, v);
    }
    Ok(resp)
}
