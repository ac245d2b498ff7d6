//! A request of an upload session that reached a replica other than the
//! one holding the session (a load balancer that is not sticky).
//!
//! The session's id names its node ([`crate::local::uploads::session_node`]).
//! That name is looked up among the cluster's *current* members: a
//! member's address comes from the membership, never from the id, so an id
//! cannot send a request anywhere the operator did not configure. The
//! request goes one hop, marked as forwarded, with its body streamed
//! through; a forwarded request naming yet another node, a node that is not
//! a member (gone, or never was), or an owner that cannot be reached is
//! answered `404 BLOB_UPLOAD_UNKNOWN`, and the client starts the upload
//! again.

use http::{Request, Response};
use http_body_util::BodyExt;

use super::{ApiError, Registry, ReqBody};
use crate::body::Body;
use crate::cluster::Member;
use crate::local::{self, uploads::session_node};

/// Who holds an upload session, as far as this node can tell.
pub enum Holder {
    /// This node (or no cluster, or an id naming no node: looked up here).
    Here,
    /// A current member: the request goes to it.
    Peer(Member),
    /// No member this node may hand the request to.
    Nobody,
}

/// Who holds session `id`; `forwarded` when a peer sent the request here.
pub fn holder(reg: &Registry, id: &str, forwarded: bool) -> Holder {
    let Some(cluster) = reg.cluster.as_ref() else {
        return Holder::Here;
    };
    match session_node(id) {
        None => Holder::Here,
        Some(node) if node == cluster.me() => Holder::Here,
        // A peer forwards one hop only: a session it thinks lives on a
        // third node is not looked for any further.
        Some(_) if forwarded => Holder::Nobody,
        Some(node) => cluster.member(&node).map_or(Holder::Nobody, Holder::Peer),
    }
}

/// The request handed to `owner`, body streamed, and the owner's answer
/// (status, `Location`, `Range`, `Docker-Upload-UUID`,
/// `Docker-Content-Digest`, error body) returned as it is. The `Location`
/// the owner sends is a path, so the client's next request may land on
/// any replica.
pub async fn forward<B: ReqBody + 'static>(
    reg: &Registry,
    req: &Request<()>,
    owner: &Member,
    body: B,
) -> Result<Response<Body>, ApiError> {
    let Some(cluster) = reg.cluster.as_ref() else {
        return Err(local::Error::UploadUnknown.into());
    };
    let path = req
        .uri()
        .path_and_query()
        .map_or_else(|| req.uri().path(), |p| p.as_str());
    let body = body
        .map_err(|e| std::io::Error::other(e.to_string()))
        .boxed_unsync();
    match cluster
        .forward_upload(owner, req.method(), path, req.headers(), body)
        .await
    {
        Ok(resp) => Ok(resp.map(|b| b.map_err(std::io::Error::other).boxed_unsync())),
        Err(e) => {
            tracing::warn!(owner = %owner.name, error = %e, "upload session's node failed; the client must start again");
            Err(local::Error::UploadUnknown.into())
        }
    }
}
