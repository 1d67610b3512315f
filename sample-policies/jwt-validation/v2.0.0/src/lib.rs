//! `jwt-validation` 2.0.0: 1.0.0 for several issuers, plus required scopes and claims mapped to
//! upstream headers.
//!
//! ```yaml
//! - name: jwt-validation
//!   version: 2.0.0
//!   params:
//!     issuers:
//!       - {issuer: https://auth.example.com/, audiences: [orders], jwksUrl: https://auth.example.com/jwks.json}
//!       - {issuer: https://partners.example.net/, audiences: [orders], jwksUrl: https://partners.example.net/keys}
//!     requiredScopes: [orders:read]
//!     claimsToHeaders: {sub: x-user-id, org.id: x-org-id}
//! ```

use jsonwebtoken::Algorithm;
use jsonwebtoken::jwk::JwkSet;
use jwt_validation_v1::{
    CacheParams, Provider, Rejection, default_algorithms, default_header, default_scheme,
    default_skew, extract_token, missing_token, record, reject,
};
use policy_sdk::{
    ImmediateResponse, Outcome, Policy, PolicyError, RequestAction, RequestContext, RequestPolicy,
    UpstreamRequestMods,
};
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::BTreeMap;

/// The longest header value a claim becomes; longer values are left out.
const MAX_HEADER_VALUE: usize = 8192;

/// Route parameters.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Params {
    /// Accepted issuers.
    pub issuers: Vec<IssuerParams>,
    /// Tolerance for `exp` and `nbf`.
    #[serde(default = "default_skew")]
    pub clock_skew_seconds: u64,
    /// Header carrying the token.
    #[serde(default = "default_header")]
    pub token_header: String,
    /// Scheme before the token.
    #[serde(default = "default_scheme")]
    pub token_scheme: String,
    /// Scopes the token must carry.
    #[serde(default)]
    pub required_scopes: Vec<String>,
    /// Claim path to upstream header.
    #[serde(default)]
    pub claims_to_headers: BTreeMap<String, String>,
}

/// One issuer.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct IssuerParams {
    /// The `iss` value.
    pub issuer: String,
    /// Accepted audiences.
    pub audiences: Vec<String>,
    /// JWKS URL.
    #[serde(default)]
    pub jwks_url: Option<String>,
    /// Inline JWKS.
    #[serde(default)]
    pub jwks: Option<JwkSet>,
    /// Accepted algorithms.
    #[serde(default = "default_algorithms")]
    pub algorithms: Vec<Algorithm>,
    /// Key cache.
    #[serde(default)]
    pub cache: CacheParams,
}

/// The policy.
#[derive(Debug)]
pub struct JwtValidation {
    providers: Vec<Provider>,
    header: String,
    scheme: String,
    scopes: Vec<String>,
    claims_to_headers: Vec<(Vec<String>, String)>,
}

impl Policy for JwtValidation {
    type Params = Params;
    /// Its only state is the key caches, which are per JWKS URL anyway.
    const SHARED_ACROSS_ROUTES: bool = true;

    fn new(p: Params) -> Result<Self, PolicyError> {
        let mut providers: Vec<Provider> = Vec::with_capacity(p.issuers.len());
        for (i, issuer) in p.issuers.into_iter().enumerate() {
            if providers.iter().any(|known| known.issuer == issuer.issuer) {
                return Err(PolicyError::invalid_param(
                    format!("issuers[{i}].issuer"),
                    "is listed twice",
                ));
            }
            providers.push(Provider::new(
                &format!("issuers[{i}]."),
                issuer.issuer,
                &issuer.audiences,
                &issuer.algorithms,
                p.clock_skew_seconds,
                (issuer.jwks_url, issuer.jwks),
                &issuer.cache,
            )?);
        }
        if providers.is_empty() {
            return Err(PolicyError::invalid_param(
                "issuers",
                "must list at least one issuer",
            ));
        }
        let header = p.token_header.to_ascii_lowercase();
        let mut claims_to_headers = Vec::new();
        for (claim, target) in p.claims_to_headers {
            let target = target.to_ascii_lowercase();
            if target == header
                || target.starts_with(':')
                || target == "host"
                || target == "content-length"
            {
                return Err(PolicyError::invalid_param(
                    format!("claimsToHeaders.{claim}"),
                    format!("cannot write to `{target}`"),
                ));
            }
            claims_to_headers.push((claim.split('.').map(str::to_owned).collect(), target));
        }
        Ok(JwtValidation {
            providers,
            header,
            scheme: p.token_scheme,
            scopes: p.required_scopes,
            claims_to_headers,
        })
    }

    fn start(&self) {
        self.providers.iter().for_each(Provider::start);
    }
}

/// The token's scopes: `scope` (space-separated) and `scp` (a list or a space-separated string).
fn scopes(claims: &Value) -> Vec<&str> {
    let mut out = Vec::new();
    for name in ["scope", "scp"] {
        match &claims[name] {
            Value::String(s) => out.extend(s.split_whitespace()),
            Value::Array(items) => out.extend(items.iter().filter_map(Value::as_str)),
            _ => {}
        }
    }
    out
}

/// A claim's value as a header value, if it has a representable one.
fn header_value(claims: &Value, path: &[String]) -> Option<String> {
    let value = path.iter().try_fold(claims, |v, key| v.get(key))?;
    let text = match value {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Array(items) => items
            .iter()
            .map(|i| {
                i.as_str()
                    .map(str::to_owned)
                    .unwrap_or_else(|| i.to_string())
            })
            .collect::<Vec<_>>()
            .join(","),
        Value::Object(_) => value.to_string(),
        Value::Null => return None,
    };
    let clean = !text.chars().any(|c| c == '\r' || c == '\n' || c == '\0');
    (clean && text.len() <= MAX_HEADER_VALUE).then_some(text)
}

fn insufficient_scope(required: &[String]) -> ImmediateResponse {
    let scope = required.join(" ");
    ImmediateResponse::json(
        403,
        &json!({"error": "insufficient_scope", "message": "the token lacks a required scope", "required": required}),
    )
    .with_header(
        "www-authenticate",
        format!("Bearer error=\"insufficient_scope\", scope=\"{scope}\""),
    )
}

impl RequestPolicy for JwtValidation {
    fn on_request<'a>(&'a self, ctx: &'a mut RequestContext) -> Outcome<'a, RequestAction> {
        let Some(token) =
            extract_token(ctx.request(), &self.header, &self.scheme).map(str::to_owned)
        else {
            return Outcome::ready(RequestAction::Respond(missing_token()));
        };
        // The issuer decides which keys to check with; the claim is verified with them.
        let issuer = jsonwebtoken::dangerous::insecure_decode_claims::<Value>(&token)
            .ok()
            .and_then(|claims| claims.get("iss").and_then(Value::as_str).map(str::to_owned));
        let Some(provider) = issuer
            .as_deref()
            .and_then(|iss| self.providers.iter().find(|p| p.issuer == iss))
        else {
            return Outcome::ready(RequestAction::Respond(reject(
                "the token's issuer is not accepted",
            )));
        };
        Outcome::pending(async move {
            let claims = match provider.verify(&token).await {
                Ok(claims) => claims,
                Err(Rejection::Invalid(why)) => return Ok(RequestAction::Respond(reject(why))),
                Err(Rejection::Unavailable(why)) => {
                    return Err(PolicyError::new(format!(
                        "no signing keys to check the token with: {why}"
                    )));
                }
            };
            let granted = scopes(&claims);
            if !self.scopes.iter().all(|s| granted.contains(&s.as_str())) {
                return Ok(RequestAction::Respond(insufficient_scope(&self.scopes)));
            }
            let mut mods = UpstreamRequestMods::new();
            for (path, header) in &self.claims_to_headers {
                // Whatever the client sent under these names is dropped: only claims fill them.
                mods = mods.remove_header(header);
                if let Some(value) = header_value(&claims, path) {
                    mods = mods.set_header(header, value);
                }
            }
            record(ctx, &provider.issuer, claims);
            Ok(RequestAction::Continue(mods))
        })
    }
}

policy_sdk::export_policy!(JwtValidation, phases = [request]);
