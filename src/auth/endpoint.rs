//! `GET /token`: hoard as its own token issuer, the way distribution's
//! token specification describes it.
//!
//! The client sends Basic credentials (or none, for an anonymous token),
//! `service` and any number of `scope=repository:<name>:pull,push`
//! parameters; the token grants, per scope, the intersection of the
//! actions asked for and the actions the rules give that user. A scope
//! that grants nothing is left out rather than refused, as the spec says.

use std::time::SystemTime;

use http::{header, HeaderValue, Request, Response, StatusCode};

use super::token::{parse_scope, Access};
use super::{basic, Policy};
use crate::body::{self, Body};
use crate::error::ApiError;
use crate::http::query_param;
use crate::metrics::AuthOutcome;

/// Issues a token for `req`.
pub(super) async fn issue<B>(
    policy: &Policy,
    req: &Request<B>,
    head: bool,
) -> Result<Response<Body>, ApiError> {
    let query = req.uri().query();
    let user = match req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
    {
        Some((scheme, b64)) if scheme.eq_ignore_ascii_case("basic") => {
            match basic(b64.trim()) {
                None => {
                    return Err(ApiError::new(
                        StatusCode::BAD_REQUEST,
                        "UNAUTHORIZED",
                        "malformed Basic credentials",
                    ))
                }
                Some((u, p)) if u.is_empty() && p.is_empty() => None,
                Some((u, p)) => {
                    policy.login(req, &u, &p).await.map_err(|mut e| {
                        // Here the challenge is for the password itself.
                        if e.challenge.is_some() {
                            e.challenge = Some(format!(
                                "Basic realm=\"{}\",charset=\"UTF-8\"",
                                policy.config.service
                            ));
                        }
                        e
                    })?;
                    Some(u)
                }
            }
        }
        // No credentials (or a token, which is not a password): anonymous.
        _ => None,
    };
    let mut access: Vec<Access> = Vec::new();
    for scope in all_params(query, "scope") {
        for (kind, name, asked) in parse_scope(&scope) {
            let granted = policy.allowed_actions(user.as_deref(), &kind, &name, &asked);
            if granted.is_empty() {
                continue;
            }
            let actions = granted.iter().map(|a| a.as_str().to_owned()).collect();
            access.push(Access {
                kind,
                name,
                actions,
            });
        }
    }
    let now = SystemTime::now();
    let token = policy
        .signer
        .mint(user.as_deref().unwrap_or(""), access, now);
    policy.metrics.auth(AuthOutcome::TokenIssued);
    let json = serde_json::json!({
        "token": token,
        "access_token": token,
        "expires_in": policy.signer.ttl().as_secs(),
        "issued_at": humantime_serde::re::humantime::format_rfc3339_seconds(now).to_string(),
    })
    .to_string();
    let len = json.len();
    let mut resp = Response::new(if head {
        body::empty()
    } else {
        body::full(json.into())
    });
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    // A token is a credential: no cache along the way may keep it.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(resp)
}

/// Every value of `key` in a query (scopes may repeat).
fn all_params(query: Option<&str>, key: &str) -> Vec<String> {
    query
        .unwrap_or("")
        .split('&')
        .filter_map(|pair| query_param(Some(pair), key))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_scopes() {
        assert_eq!(
            all_params(
                Some("service=hoard&scope=repository%3Aa%3Apull&scope=repository:b:push"),
                "scope"
            ),
            vec!["repository:a:pull", "repository:b:push"]
        );
        assert!(all_params(None, "scope").is_empty());
    }
}
