//! `jwt-validation` 1.0.0: validates bearer JWTs against a JWKS.
//!
//! ```yaml
//! - name: jwt-validation
//!   version: 1.0.0
//!   params:
//!     issuer: https://auth.example.com/
//!     audiences: [orders-api]
//!     jwksUrl: https://auth.example.com/.well-known/jwks.json
//! ```
//!
//! The building blocks ([`Provider`], [`extract_token`], [`reject`]) are public so later versions
//! of the policy reuse them.

pub mod jwks;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, Validation};
use jwks::{CacheSettings, Jwks, KeySet, Lookup};
use policy_sdk::{
    ImmediateResponse, Outcome, Policy, PolicyError, Request, RequestAction, RequestContext,
    RequestPolicy,
};
use serde::Deserialize;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;

/// Route parameters.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Params {
    /// Where the signing keys are published.
    #[serde(default)]
    pub jwks_url: Option<String>,
    /// Signing keys given inline.
    #[serde(default)]
    pub jwks: Option<JwkSet>,
    /// The required `iss`.
    pub issuer: String,
    /// Accepted `aud` values.
    pub audiences: Vec<String>,
    /// Accepted algorithms.
    #[serde(default = "default_algorithms")]
    pub algorithms: Vec<Algorithm>,
    /// Tolerance for `exp` and `nbf`.
    #[serde(default = "default_skew")]
    pub clock_skew_seconds: u64,
    /// Header carrying the token.
    #[serde(default = "default_header")]
    pub token_header: String,
    /// Scheme before the token (`Bearer`); empty for none.
    #[serde(default = "default_scheme")]
    pub token_scheme: String,
    /// Key cache settings.
    #[serde(default)]
    pub cache: CacheParams,
}

/// JWKS cache parameters.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CacheParams {
    /// Freshness of fetched keys.
    #[serde(default = "default_ttl")]
    pub ttl_seconds: u64,
    /// Least time between fetches.
    #[serde(default = "default_min_refresh")]
    pub min_refresh_interval_seconds: u64,
    /// Stale keys' grace period.
    #[serde(default = "default_grace")]
    pub stale_grace_seconds: u64,
    /// Fetch timeout.
    #[serde(default = "default_timeout")]
    pub fetch_timeout_ms: u64,
}

impl Default for CacheParams {
    fn default() -> Self {
        CacheParams {
            ttl_seconds: default_ttl(),
            min_refresh_interval_seconds: default_min_refresh(),
            stale_grace_seconds: default_grace(),
            fetch_timeout_ms: default_timeout(),
        }
    }
}

/// RS256 and ES256.
pub fn default_algorithms() -> Vec<Algorithm> {
    vec![Algorithm::RS256, Algorithm::ES256]
}
/// 30 seconds.
pub fn default_skew() -> u64 {
    30
}
/// `authorization`.
pub fn default_header() -> String {
    "authorization".into()
}
/// `Bearer`.
pub fn default_scheme() -> String {
    "Bearer".into()
}
fn default_ttl() -> u64 {
    300
}
fn default_min_refresh() -> u64 {
    10
}
fn default_grace() -> u64 {
    3600
}
/// Below the engine's default policy timeout (1000 ms), so a slow endpoint fails as a fetch.
fn default_timeout() -> u64 {
    800
}

/// Why a token was not accepted.
#[derive(Debug)]
pub enum Rejection {
    /// The token is invalid; the text is safe to show the client.
    Invalid(&'static str),
    /// No keys to check it with (the JWKS endpoint is down and the grace period is over).
    Unavailable(String),
}

/// One issuer: its keys and what its tokens must say.
pub struct Provider {
    /// The issuer.
    pub issuer: String,
    keys: Arc<Jwks>,
    validation: Validation,
}

impl std::fmt::Debug for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Provider")
            .field("issuer", &self.issuer)
            .finish_non_exhaustive()
    }
}

/// Whether `url` may serve keys: HTTPS, or plain HTTP on the loopback interface only (a sidecar
/// or a test server on the same host).
pub fn jwks_url_allowed(url: &str) -> bool {
    if url.starts_with("https://") {
        return true;
    }
    let Some(rest) = url.strip_prefix("http://") else {
        return false;
    };
    let host = rest.split(['/', '?']).next().unwrap_or_default();
    let host = host.rsplit_once(':').map_or(host, |(h, port)| {
        if port.chars().all(|c| c.is_ascii_digit()) {
            h
        } else {
            host
        }
    });
    matches!(host, "127.0.0.1" | "localhost" | "[::1]")
}

impl Provider {
    /// A provider; `at` prefixes field names in errors (e.g. `issuers[0].`); the keys come from
    /// a JWKS URL or an inline JWKS.
    pub fn new(
        at: &str,
        issuer: String,
        audiences: &[String],
        algorithms: &[Algorithm],
        skew: u64,
        (jwks_url, jwks): (Option<String>, Option<JwkSet>),
        cache: &CacheParams,
    ) -> Result<Provider, PolicyError> {
        if let Some(bad) = algorithms
            .iter()
            .find(|a| matches!(a, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512))
        {
            return Err(PolicyError::invalid_param(
                format!("{at}algorithms"),
                format!(
                    "{bad:?} is symmetric; a JWKS carries public keys, use RS*, PS*, ES* or EdDSA"
                ),
            ));
        }
        if algorithms.is_empty() {
            return Err(PolicyError::invalid_param(
                format!("{at}algorithms"),
                "must list at least one algorithm",
            ));
        }
        if audiences.is_empty() {
            return Err(PolicyError::invalid_param(
                format!("{at}audiences"),
                "must list at least one audience",
            ));
        }
        let keys = match (jwks_url, jwks) {
            (Some(_), Some(_)) => {
                return Err(PolicyError::invalid_param(
                    format!("{at}jwks"),
                    "give jwksUrl or jwks, not both",
                ));
            }
            (None, None) => {
                return Err(PolicyError::invalid_param(
                    format!("{at}jwksUrl"),
                    "is required (or jwks with inline keys)",
                ));
            }
            (Some(url), None) => {
                if !jwks_url_allowed(&url) {
                    return Err(PolicyError::invalid_param(
                        format!("{at}jwksUrl"),
                        "must be HTTPS (plain http only for 127.0.0.1, localhost or [::1])",
                    ));
                }
                if cache.ttl_seconds == 0 || cache.fetch_timeout_ms == 0 {
                    return Err(PolicyError::invalid_param(
                        format!("{at}cache"),
                        "ttlSeconds and fetchTimeoutMs must be positive",
                    ));
                }
                Jwks::remote(
                    url,
                    CacheSettings {
                        ttl: Duration::from_secs(cache.ttl_seconds),
                        min_refresh_interval: Duration::from_secs(
                            cache.min_refresh_interval_seconds,
                        ),
                        stale_grace: Duration::from_secs(cache.stale_grace_seconds),
                        timeout: Duration::from_millis(cache.fetch_timeout_ms),
                    },
                )
            }
            (None, Some(set)) => {
                let keys = KeySet::from_jwks(&set);
                if keys.is_empty() {
                    return Err(PolicyError::invalid_param(
                        format!("{at}jwks"),
                        "has no usable signing key",
                    ));
                }
                Jwks::inline(keys)
            }
        };
        let mut validation = Validation::new(algorithms[0]);
        validation.algorithms = algorithms.to_vec();
        validation.leeway = skew;
        validation.validate_nbf = true;
        validation.set_issuer(&[&issuer]);
        validation.set_audience(audiences);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        Ok(Provider {
            issuer,
            keys,
            validation,
        })
    }

    /// Starts fetching the keys in the background, if they come from a URL and no fetch was
    /// made yet (the policy's start hook).
    pub fn start(&self) {
        self.keys.prefetch();
    }

    /// Checks `token`: algorithm, signature, `iss`, `aud`, `exp`, `nbf`. Returns the claims.
    pub async fn verify(&self, token: &str) -> Result<Value, Rejection> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| Rejection::Invalid("the token is malformed"))?;
        if !self.validation.algorithms.contains(&header.alg) {
            return Err(Rejection::Invalid("the token's algorithm is not allowed"));
        }
        let key = match self.keys.key(header.kid.as_deref(), header.alg).await {
            Lookup::Key(key) => key,
            Lookup::UnknownKid => {
                return Err(Rejection::Invalid("the token's signing key is unknown"));
            }
            Lookup::Unavailable(why) => return Err(Rejection::Unavailable(why)),
        };
        let mut validation = self.validation.clone();
        validation.algorithms = vec![header.alg];
        jsonwebtoken::decode::<Value>(token, &key, &validation)
            .map(|data| data.claims)
            .map_err(|e| {
                Rejection::Invalid(match e.kind() {
                    ErrorKind::ExpiredSignature => "the token has expired",
                    ErrorKind::ImmatureSignature => "the token is not valid yet",
                    ErrorKind::InvalidIssuer => "the token's issuer is not accepted",
                    ErrorKind::InvalidAudience => "the token's audience is not accepted",
                    ErrorKind::InvalidSignature => "the token's signature is invalid",
                    ErrorKind::MissingRequiredClaim(_) => "the token lacks a required claim",
                    _ => "the token is invalid",
                })
            })
    }
}

/// The token from `header`, after `scheme` (case-insensitive) when one is configured.
pub fn extract_token<'r>(request: &'r Request, header: &str, scheme: &str) -> Option<&'r str> {
    let value = request.header(header)?.trim();
    let token = if scheme.is_empty() {
        value
    } else {
        let (given, token) = value.split_once(' ')?;
        if !given.eq_ignore_ascii_case(scheme) {
            return None;
        }
        token.trim()
    };
    (!token.is_empty()).then_some(token)
}

/// `401` for a missing token (RFC 6750: a bare challenge).
pub fn missing_token() -> ImmediateResponse {
    ImmediateResponse::json(
        401,
        &json!({"error": "missing_token", "message": "a bearer token is required"}),
    )
    .with_header("www-authenticate", "Bearer")
}

/// `401` for an invalid token, with `error="invalid_token"`.
pub fn reject(description: &str) -> ImmediateResponse {
    ImmediateResponse::json(
        401,
        &json!({"error": "invalid_token", "message": description}),
    )
    .with_header(
        "www-authenticate",
        format!("Bearer error=\"invalid_token\", error_description=\"{description}\""),
    )
}

/// Writes the standard metadata for accepted `claims`.
pub fn record(ctx: &mut RequestContext, issuer: &str, claims: Value) {
    let metadata = ctx.metadata_mut();
    if let Some(subject) = claims.get("sub").and_then(Value::as_str) {
        metadata.set("auth.subject", subject);
    }
    metadata.set("auth.issuer", issuer);
    metadata.set("auth.method", "jwt");
    metadata.set("auth.claims", claims);
}

/// The policy.
#[derive(Debug)]
pub struct JwtValidation {
    provider: Provider,
    header: String,
    scheme: String,
}

impl Policy for JwtValidation {
    type Params = Params;
    /// Its only state is the key cache, which is per JWKS URL anyway.
    const SHARED_ACROSS_ROUTES: bool = true;

    fn new(p: Params) -> Result<Self, PolicyError> {
        Ok(JwtValidation {
            provider: Provider::new(
                "",
                p.issuer,
                &p.audiences,
                &p.algorithms,
                p.clock_skew_seconds,
                (p.jwks_url, p.jwks),
                &p.cache,
            )?,
            header: p.token_header.to_ascii_lowercase(),
            scheme: p.token_scheme,
        })
    }

    fn start(&self) {
        self.provider.start();
    }
}

impl RequestPolicy for JwtValidation {
    fn on_request<'a>(&'a self, ctx: &'a mut RequestContext) -> Outcome<'a, RequestAction> {
        let Some(token) =
            extract_token(ctx.request(), &self.header, &self.scheme).map(str::to_owned)
        else {
            return Outcome::ready(RequestAction::Respond(missing_token()));
        };
        Outcome::pending(async move {
            match self.provider.verify(&token).await {
                Ok(claims) => {
                    record(ctx, &self.provider.issuer, claims);
                    Ok(RequestAction::pass())
                }
                Err(Rejection::Invalid(why)) => Ok(RequestAction::Respond(reject(why))),
                Err(Rejection::Unavailable(why)) => Err(PolicyError::new(format!(
                    "no signing keys to check the token with: {why}"
                ))),
            }
        })
    }
}

policy_sdk::export_policy!(JwtValidation, phases = [request]);
