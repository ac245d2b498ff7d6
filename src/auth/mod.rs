//! Access control: who is asking (Basic password, hoard's own Bearer token,
//! or nobody), and whether the `[auth]` rules let them do what the request
//! needs ([`access`] says what that is).
//!
//! Off without an `[auth]` table. With one, a refused request gets the
//! challenge real clients understand: 401 with `WWW-Authenticate: Bearer
//! realm="<hoard>/token",service=...,scope=...` (or `Basic realm=...`) when
//! the client is anonymous or its token lacks a scope the user would be
//! given, 403 `DENIED` when a known user is not allowed.
//!
//! # Layout
//! - [`access`]: what each request needs (route + method -> resource, action).
//! - the `[auth]` table itself is `config::auth`.
//! - [`htpasswd`]: the bcrypt user file.
//! - [`login`]: password checks with a failure limit and a success cache.
//! - [`rules`]: rule evaluation.
//! - [`token`]: HS256 tokens and scopes.
//! - [`endpoint`]: the `/token` issuer.
//! - [`challenge`]: `WWW-Authenticate` values and the realm URL.

pub mod access;
pub mod challenge;
pub mod endpoint;
pub mod htpasswd;
mod limit;
pub mod login;
pub mod rules;
pub mod token;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::SystemTime;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use http::{header, Request, StatusCode};

pub use crate::config::auth::{Action, AuthConfig, Scheme};

use crate::config::ConfigError;
use crate::error::ApiError;
use crate::http::{ConnInfo, Route};
use crate::metrics::{AuthOutcome, Metrics};
use access::{Need, Resource};
use login::{LoginError, Logins};
use rules::Rules;
use token::{Claims, Signer};

/// Access control for the registry; [`Auth::off`] allows everything.
#[derive(Clone)]
pub struct Auth {
    policy: Option<Arc<Policy>>,
}

/// Everything an enabled access control needs.
struct Policy {
    config: AuthConfig,
    logins: Logins,
    rules: Rules,
    signer: Signer,
    metrics: Arc<Metrics>,
}

/// Who sent a request, as proven by its `Authorization` header.
enum Principal {
    /// No credentials.
    Anonymous,
    /// A checked password.
    User(String),
    /// A valid hoard token (its `sub` may be empty: an anonymous token).
    Token(Claims),
}

impl Principal {
    fn user(&self) -> Option<&str> {
        match self {
            Principal::Anonymous => None,
            Principal::User(u) => Some(u),
            Principal::Token(c) => Some(c.sub.as_str()).filter(|s| !s.is_empty()),
        }
    }
}

/// What a request was allowed to do; the catalog uses it to list only
/// repositories the client may pull.
pub struct Grant {
    policy: Option<Arc<Policy>>,
    user: Option<String>,
}

impl Grant {
    /// What a request another replica forwarded is granted: everything.
    /// The forwarding replica authorized its client for this very request
    /// (same method and path) before forwarding it, and only a peer with
    /// the cluster secret can mark a request forwarded; checking again
    /// here would need the client's credentials, which a blob or tag
    /// forwarded on a miss does not carry.
    pub fn peer() -> Grant {
        Grant {
            policy: None,
            user: None,
        }
    }

    /// Whether the client may pull `repository` (as named in `_catalog`).
    pub fn may_pull(&self, repository: &str) -> bool {
        self.policy.as_ref().is_none_or(|p| {
            p.rules
                .allows(self.user.as_deref(), repository, Action::Pull)
        })
    }
}

impl Auth {
    /// No access control: every request is allowed.
    pub fn off() -> Auth {
        Auth { policy: None }
    }

    /// Access control as `[auth]` configures it (off when absent). Reads
    /// the htpasswd and key files; errors name the key.
    pub fn from_config(
        config: Option<&AuthConfig>,
        metrics: Arc<Metrics>,
    ) -> Result<Auth, ConfigError> {
        let Some(config) = config else {
            return Ok(Auth::off());
        };
        config.validate()?;
        let htpasswd = match &config.htpasswd {
            Some(path) => htpasswd::Htpasswd::load(path)?,
            None => htpasswd::Htpasswd::empty(),
        };
        tracing::info!(
            users = htpasswd.len(),
            rules = config.rules.len(),
            challenge = ?config.challenge,
            "access control on"
        );
        let signer = Signer::new(
            config.token_key_file.as_deref(),
            &config.service,
            config.token_ttl,
        )?;
        Ok(Auth {
            policy: Some(Arc::new(Policy {
                logins: Logins::new(
                    htpasswd,
                    config.htpasswd.clone(),
                    config.max_failures,
                    config.failure_window,
                    config.login_cache_ttl,
                ),
                rules: Rules::new(config.rules.clone()),
                signer,
                config: config.clone(),
                metrics,
            })),
        })
    }

    /// Whether access control is on.
    pub fn is_on(&self) -> bool {
        self.policy.is_some()
    }

    /// Decides whether `req` (already routed) may go on. Call it before any
    /// handler runs; the error is the 401/403/429 to answer.
    pub async fn authorize<B>(
        &self,
        req: &Request<B>,
        route: &Route<'_>,
        ns: Option<&str>,
    ) -> Result<Grant, ApiError> {
        let Some(policy) = &self.policy else {
            return Ok(Grant {
                policy: None,
                user: None,
            });
        };
        let need = access::need(req.method(), route, req.uri().query(), ns);
        if need == Need::Nothing {
            return Ok(Grant {
                policy: Some(policy.clone()),
                user: None,
            });
        }
        let principal = policy.principal(req).await?;
        let user = principal.user().map(str::to_owned);
        let grant = Grant {
            policy: Some(policy.clone()),
            user: user.clone(),
        };
        let needs = match need {
            Need::Nothing => return Ok(grant),
            Need::Login => {
                if matches!(principal, Principal::Anonymous) {
                    return Err(policy.unauthenticated(req, &[], "authentication required"));
                }
                return Ok(grant);
            }
            Need::All(needs) => needs,
        };
        let mut rules_ok = true;
        let mut token_ok = true;
        for (resource, action) in &needs {
            rules_ok &= policy.rules_allow(user.as_deref(), resource, *action);
            if let Principal::Token(claims) = &principal {
                let (kind, name) = resource.scope();
                token_ok &= claims.grants(kind, name, *action);
            }
        }
        if rules_ok && token_ok {
            return Ok(grant);
        }
        if rules_ok || user.is_none() {
            // The client can fix this: log in, or fetch a token with the scope.
            let why = if user.is_none() {
                "authentication required"
            } else {
                "the token does not grant this; fetch one with the scope in the challenge"
            };
            let mut e = policy.unauthenticated(req, &needs, why);
            if matches!(principal, Principal::Token(_)) {
                e.challenge = e.challenge.map(|c| challenge::insufficient(&c));
            }
            return Err(e);
        }
        policy.metrics.auth(AuthOutcome::Forbidden);
        let mut e = ApiError::new(
            StatusCode::FORBIDDEN,
            "DENIED",
            format!(
                "user {:?} is not allowed to {}",
                user.unwrap_or_default(),
                describe(&needs)
            ),
        );
        e.challenge = Some(challenge::insufficient(&policy.challenge(req, &needs)));
        Err(e)
    }

    /// Answers `GET /token`. 404 when access control is off, and for the
    /// OAuth2 `POST` form, which clients then retry as `GET` (the token
    /// spec's "404 means use GET").
    pub async fn token_endpoint<B>(
        &self,
        req: &Request<B>,
    ) -> Result<http::Response<crate::body::Body>, ApiError> {
        let head = req.method() == http::Method::HEAD;
        match &self.policy {
            Some(p) if req.method() == http::Method::GET || head => {
                endpoint::issue(p, req, head).await
            }
            _ => Err(ApiError::not_found_route()),
        }
    }
}

impl Policy {
    /// Who sent `req`; a wrong password or a bad token is an error even
    /// where anonymous access would do, so clients learn their credentials
    /// are wrong instead of silently pulling less.
    async fn principal<B>(&self, req: &Request<B>) -> Result<Principal, ApiError> {
        let Some(value) = req.headers().get(header::AUTHORIZATION) else {
            return Ok(Principal::Anonymous);
        };
        let value = value.to_str().unwrap_or("");
        let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
        let rest = rest.trim();
        if scheme.eq_ignore_ascii_case("bearer") {
            return match self.signer.verify(rest, SystemTime::now()) {
                // A user removed from htpasswd loses their tokens at once.
                Ok(claims)
                    if !claims.sub.is_empty() && !self.logins.user_exists(&claims.sub).await =>
                {
                    tracing::info!(user = %claims.sub, "token of a user no longer in htpasswd refused");
                    self.metrics.auth(AuthOutcome::TokenRefused);
                    Err(self.unauthenticated(req, &[], "invalid or expired token"))
                }
                Ok(claims) => Ok(Principal::Token(claims)),
                Err(why) => {
                    tracing::debug!(error = %why, "token refused");
                    self.metrics.auth(AuthOutcome::TokenRefused);
                    Err(self.unauthenticated(req, &[], "invalid or expired token"))
                }
            };
        }
        if scheme.eq_ignore_ascii_case("basic") {
            return match basic(rest) {
                None => Err(self.unauthenticated(req, &[], "malformed Basic credentials")),
                // containers/image sends an empty Basic pair when it has none.
                Some((u, p)) if u.is_empty() && p.is_empty() => Ok(Principal::Anonymous),
                Some((user, password)) => {
                    self.login(req, &user, &password).await?;
                    Ok(Principal::User(user))
                }
            };
        }
        Err(self.unauthenticated(
            req,
            &[],
            "unsupported Authorization scheme: use Basic or Bearer",
        ))
    }

    /// Checks a password; the error is the answer for the client (the same
    /// for an unknown user and a wrong password).
    async fn login<B>(&self, req: &Request<B>, user: &str, password: &str) -> Result<(), ApiError> {
        match self.logins.check(peer_ip(req), user, password).await {
            Ok(()) => {
                self.metrics.auth(AuthOutcome::LoginOk);
                Ok(())
            }
            Err(LoginError::Failed) => {
                self.metrics.auth(AuthOutcome::LoginFailed);
                tracing::info!(
                    peer = peer_ip(req).map(tracing::field::display),
                    user,
                    "failed login"
                );
                let mut e = ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "UNAUTHORIZED",
                    "authentication failed: wrong user name or password",
                );
                e.challenge = Some(self.challenge(req, &[]));
                Err(e)
            }
            Err(LoginError::RateLimited) => {
                self.metrics.auth(AuthOutcome::LoginRateLimited);
                tracing::warn!(
                    peer = peer_ip(req).map(tracing::field::display),
                    user,
                    "login refused: too many failures"
                );
                Err(ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "TOOMANYREQUESTS",
                    "too many failed logins; wait a minute and try again",
                ))
            }
        }
    }

    /// Whether the rules let `user` do `action` on `resource`.
    fn rules_allow(&self, user: Option<&str>, resource: &Resource, action: Action) -> bool {
        match resource {
            Resource::Repository { rule_name, .. } => self.rules.allows(user, rule_name, action),
            // Listing is allowed to whoever may pull something; the list is
            // filtered by `Grant::may_pull`.
            Resource::Catalog => self.rules.allows_any(user, Action::Pull),
            Resource::Admin => self.rules.allows(user, "", Action::Admin),
        }
    }

    /// Actions of a token scope the rules give `user`.
    fn allowed_actions(
        &self,
        user: Option<&str>,
        kind: &str,
        name: &str,
        asked: &[Action],
    ) -> Vec<Action> {
        let resource = match kind {
            "repository" => Resource::Repository {
                name: name.to_owned(),
                rule_name: name.to_owned(),
            },
            "registry" if name == "catalog" => Resource::Catalog,
            "hoard" if name == "admin" => Resource::Admin,
            _ => return Vec::new(),
        };
        let mut out: Vec<Action> = asked
            .iter()
            .copied()
            .filter(|a| match resource {
                Resource::Catalog => *a == Action::Pull,
                Resource::Admin => *a == Action::Admin,
                Resource::Repository { .. } => *a != Action::Admin,
            })
            .filter(|a| self.rules_allow(user, &resource, *a))
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// The `WWW-Authenticate` value for `req` asking for `needs`.
    fn challenge<B>(&self, req: &Request<B>, needs: &[(Resource, Action)]) -> String {
        challenge::header(&self.config, req, needs)
    }

    /// 401 `UNAUTHORIZED` with the challenge.
    fn unauthenticated<B>(
        &self,
        req: &Request<B>,
        needs: &[(Resource, Action)],
        why: &str,
    ) -> ApiError {
        self.metrics.auth(AuthOutcome::Unauthenticated);
        let mut e = ApiError::new(StatusCode::UNAUTHORIZED, "UNAUTHORIZED", why);
        e.challenge = Some(self.challenge(req, needs));
        e
    }
}

/// `user:password` from a Basic credential.
fn basic(b64: &str) -> Option<(String, String)> {
    let bytes = STANDARD.decode(b64).ok()?;
    let text = String::from_utf8(bytes).ok()?;
    let (u, p) = text.split_once(':')?;
    Some((u.to_owned(), p.to_owned()))
}

/// The client's IP address, from the connection.
fn peer_ip<B>(req: &Request<B>) -> Option<IpAddr> {
    req.extensions().get::<ConnInfo>().map(|c| c.peer.ip())
}

/// "push to a, pull from b", for a 403 message.
fn describe(needs: &[(Resource, Action)]) -> String {
    needs
        .iter()
        .map(|(r, a)| match r {
            Resource::Repository { rule_name, .. } => format!("{} {rule_name}", a.as_str()),
            Resource::Catalog => "list repositories".to_owned(),
            Resource::Admin => "use the operator API".to_owned(),
        })
        .collect::<Vec<_>>()
        .join(", ")
}
