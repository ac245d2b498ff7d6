//! `POST /_hoard/import[?upstream=&repo=]`: the archive `hoard import`
//! reads, as the request body, into the running server's cache — so a
//! disconnected site loads a carried cache without stopping the mirror its
//! cluster pulls from.
//!
//! Complete or nothing, as offline: the body is read to its end (staged
//! and verified, see [`crate::bundle::import`]) before anything reaches the
//! cache, so a body that breaks off, a damaged entry or a missing blob
//! leaves the cache as it was. The answer is the import's summary as JSON.

use std::io;

use bytes::Buf;
use futures_util::TryStreamExt;
use http::{Request, Response, StatusCode};
use http_body_util::BodyStream;

use super::{json, AdminError};
use crate::body::Body;
use crate::bundle::import::{self, Placement};
use crate::bundle::Error;
use crate::http::query_param;
use crate::prefetch::Prefetcher;

/// Reads the archive from the body and imports it.
pub async fn import<B>(engine: &Prefetcher, req: Request<B>) -> Result<Response<Body>, AdminError>
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let query = req.uri().query();
    let placement = Placement {
        upstream: query_param(query, "upstream").filter(|s| !s.is_empty()),
        repo: query_param(query, "repo").filter(|s| !s.is_empty()),
    };
    let total = crate::http::content_length(req.headers()).unwrap_or(0);
    let frames = BodyStream::new(req.into_body())
        .map_err(|e| io::Error::other(e.into()))
        .try_filter_map(|frame| async move {
            Ok(frame
                .into_data()
                .ok()
                .map(|mut d| d.copy_to_bytes(d.remaining())))
        });
    let reader = tokio_util::io::StreamReader::new(Box::pin(frames));
    // The tar is read with std I/O on a blocking thread: the bridge blocks
    // that thread, never the runtime, on each chunk of the body.
    let reader = tokio_util::io::SyncIoBridge::new(reader);
    let summary = import::import_from(
        engine.cache().clone(),
        engine.config(),
        reader,
        total,
        &placement,
        engine.pins(),
        std::sync::Arc::new(crate::bundle::progress::Silent),
    )
    .await
    .map_err(|e| match e {
        Error::Archive { .. } | Error::Manifest { .. } => AdminError::BadRequest(e.to_string()),
        e => AdminError::Failed(e.to_string()),
    })?;
    tracing::info!(
        images = summary.images,
        new_blobs = summary.new_blobs,
        new_bytes = summary.new_bytes,
        present_blobs = summary.present_blobs,
        "archive imported through the operator API"
    );
    Ok(json(StatusCode::OK, &summary))
}
