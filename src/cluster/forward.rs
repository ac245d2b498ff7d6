//! What one node asks of another besides a blob: the owner of a tag to
//! revalidate it, and the owner of an upload session to take a request of
//! it. Both go one hop, marked as forwarded, so the owner serves them
//! itself and never forwards them again.

use http::{header, HeaderMap, Method, Request, Response};
use hyper::body::Incoming;

use super::{Cluster, Member, PeerError};
use crate::body::Body;

/// The headers of a client's upload request the owner needs to answer it
/// as it would have answered the client (`Content-Length` and
/// `Content-Range` of the chunk, the client's credentials for `[auth]`).
const UPLOAD_HEADERS: &[header::HeaderName] = &[
    header::CONTENT_LENGTH,
    header::CONTENT_RANGE,
    header::CONTENT_TYPE,
    header::AUTHORIZATION,
];

/// Headers of one connection, never relayed (RFC 9110, 7.6.1).
const HOP_BY_HOP: &[header::HeaderName] = &[
    header::CONNECTION,
    header::TRANSFER_ENCODING,
    header::TE,
    header::TRAILER,
    header::UPGRADE,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
];

/// What the owner of a tag answered to a forwarded `HEAD` of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagAnswer {
    /// `Docker-Content-Digest`: what the tag points at now.
    pub digest: Option<String>,
    /// The owner could not revalidate it either (its answer carried the
    /// stale `Warning`): the upstream is down from where the owner stands.
    pub stale: bool,
}

impl Cluster {
    /// The owner of tag `tag` of `repo` on upstream `ns`: the key is
    /// `<upstream>/<repo>:<tag>`, so every node picks the same one. `None`
    /// when it is this node.
    pub fn tag_owner(&self, ns: &str, repo: &str, tag: &str) -> Option<Member> {
        self.owner(&format!("{ns}/{repo}:{tag}"))
    }

    /// A current member other than this node, by name: the only way an
    /// upload id's node becomes an address (never a host from the id).
    pub fn member(&self, name: &str) -> Option<Member> {
        let healthy = self.healthy.read().unwrap_or_else(|p| p.into_inner());
        healthy.get(name).map(|base| Member {
            name: name.to_owned(),
            base: base.clone(),
        })
    }

    /// Asks the owner of a tag for it with a forwarded `HEAD`: the owner
    /// runs its own single-flight revalidation (or fetch) and records the
    /// tag and the manifest in the bucket, where the asker then reads them.
    /// A 404 comes back as [`PeerError::Status`], any other failure means
    /// the owner could not say.
    pub async fn head_manifest(
        &self,
        owner: &Member,
        ns: &str,
        repo: &str,
        tag: &str,
    ) -> Result<TagAnswer, PeerError> {
        let url = format!("{}/v2/{repo}/manifests/{tag}?ns={ns}", owner.base);
        let resp = self.client.head(&url).await?;
        let h = resp.headers();
        let text = |name: &str| h.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
        Ok(TagAnswer {
            digest: text("docker-content-digest"),
            stale: text(header::WARNING.as_str()).is_some_and(|w| w.starts_with("110")),
        })
    }

    /// Sends a client's request of an upload session to the session's
    /// owner: same method, path and query, the headers in
    /// [`UPLOAD_HEADERS`], and the body streamed through as it arrives
    /// (never buffered whole). The owner's response comes back as it is,
    /// less the headers of its connection.
    pub async fn forward_upload(
        &self,
        owner: &Member,
        method: &Method,
        path_and_query: &str,
        headers: &HeaderMap,
        body: Body,
    ) -> Result<Response<Incoming>, PeerError> {
        let url = format!("{}{path_and_query}", owner.base);
        let mut req = Request::builder()
            .method(method.clone())
            .uri(&url)
            .body(body)
            .map_err(|_| PeerError::Url(url.clone()))?;
        for name in UPLOAD_HEADERS {
            for v in headers.get_all(name) {
                req.headers_mut().append(name.clone(), v.clone());
            }
        }
        let mut resp = self.client.send(req, true).await?;
        for name in HOP_BY_HOP {
            resp.headers_mut().remove(name);
        }
        Ok(resp)
    }
}
