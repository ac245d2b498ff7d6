//! `tags/list` (local repositories from their records; upstream ones from
//! the upstream when reachable, cached tags otherwise) and `_catalog`
//! (local and cached repositories), with `n`/`last` pagination.

use http::{header, HeaderValue, Response, StatusCode};

use super::{json_response, ApiError, Registry};
use crate::body::Body;
use crate::error::Subject;
use crate::http::query_param;
use crate::policy::{self, Target};

/// Most entries one page returns.
const MAX_PAGE: usize = 10_000;

/// `GET /v2/<name>/tags/list`. Online or offline, hoard pages the list
/// itself: it takes the whole list from the upstream (following the
/// upstream's own pages), sorts it and applies `n` and `last`, so a client
/// sees the same pages whatever the upstream does with `n` (distribution
/// ignores it and answers every tag, unsorted). Offline, the cached tags.
pub async fn tags(
    reg: &Registry,
    target: &Target,
    client_name: &str,
    query: Option<&str>,
    head: bool,
) -> Result<Response<Body>, ApiError> {
    let (n, last) = pagination(query)?;
    let all = policy::tags(&reg.cache, target).await.map_err(|e| {
        ApiError::upstream(e, target.upstream.name(), Subject::Repository(&client_name))
    })?;
    let (page, next) = paginate(all, n, last.as_deref());
    let json = serde_json::json!({ "name": client_name, "tags": page });
    let mut r = json_response(json.to_string().into_bytes(), head);
    if let Some(next) = next {
        link_header(&mut r, &format!("/v2/{client_name}/tags/list"), &next, n);
    }
    Ok(r)
}

/// `GET /v2/<name>/tags/list` of a local repository.
pub fn local_tags(
    reg: &Registry,
    name: &crate::oci::RepoName,
    query: Option<&str>,
    head: bool,
) -> Result<Response<Body>, ApiError> {
    let (n, last) = pagination(query)?;
    let tags = reg.local.tags(name).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "NAME_UNKNOWN",
            format!("repository {name} is not known"),
        )
    })?;
    let (page, next) = paginate(tags, n, last.as_deref());
    let json = serde_json::json!({ "name": name.as_str(), "tags": page });
    let mut r = json_response(json.to_string().into_bytes(), head);
    if let Some(next) = next {
        link_header(&mut r, &format!("/v2/{name}/tags/list"), &next, n);
    }
    Ok(r)
}

/// `GET /v2/_catalog`: local repositories and repositories with cached
/// tags, named as a client would pull them (path-prefixed for upstreams
/// other than the default), and only those the client may pull.
pub fn catalog(
    reg: &Registry,
    query: Option<&str>,
    head: bool,
    grant: &crate::auth::Grant,
) -> Result<Response<Body>, ApiError> {
    let (n, last) = pagination(query)?;
    let mut names: Vec<String> = reg
        .cache
        .repositories()
        .into_iter()
        .map(|(up, repo)| {
            if up == reg.default_upstream {
                repo.to_string()
            } else {
                format!("{up}/{repo}")
            }
        })
        .chain(reg.local.names())
        .filter(|name| grant.may_pull(name))
        .collect();
    names.sort();
    names.dedup();
    let (page, next) = paginate(names, n, last.as_deref());
    let json = serde_json::json!({ "repositories": page });
    let mut r = json_response(json.to_string().into_bytes(), head);
    if let Some(next) = next {
        link_header(&mut r, "/v2/_catalog", &next, n);
    }
    Ok(r)
}

fn pagination(query: Option<&str>) -> Result<(Option<usize>, Option<String>), ApiError> {
    let n = match query_param(query, "n") {
        None => None,
        Some(v) => Some(v.parse::<usize>().map_err(|_| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "PAGINATION_NUMBER_INVALID",
                "n must be a non-negative number",
            )
        })?),
    };
    Ok((n, query_param(query, "last").filter(|l| !l.is_empty())))
}

/// Entries after `last`, at most `n`; the last entry returned when more follow.
fn paginate(
    sorted: Vec<String>,
    n: Option<usize>,
    last: Option<&str>,
) -> (Vec<String>, Option<String>) {
    let limit = n.unwrap_or(MAX_PAGE).min(MAX_PAGE);
    let mut rest: Vec<String> = sorted
        .into_iter()
        .filter(|s| last.is_none_or(|l| s.as_str() > l))
        .collect();
    let more = rest.len() > limit;
    rest.truncate(limit);
    let next = if more { rest.last().cloned() } else { None };
    (rest, next)
}

fn link_header(r: &mut Response<Body>, path: &str, last: &str, n: Option<usize>) {
    let n = n.unwrap_or(MAX_PAGE);
    let value = format!(
        "<{path}?last={}&n={n}>; rel=\"next\"",
        crate::upstream::auth::encode_query(last)
    );
    if let Ok(v) = HeaderValue::from_str(&value) {
        r.headers_mut().insert(header::LINK, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages() {
        let all: Vec<String> = ["a", "b", "c", "d"].iter().map(|s| s.to_string()).collect();
        assert_eq!(
            paginate(all.clone(), Some(2), None),
            (vec!["a".into(), "b".into()], Some("b".into()))
        );
        assert_eq!(
            paginate(all.clone(), Some(2), Some("b")),
            (vec!["c".into(), "d".into()], None)
        );
        assert_eq!(paginate(all, None, Some("d")), (vec![], None));
    }
}
