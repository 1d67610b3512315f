//! `api-key-validation` 1.0.0: API keys checked against SHA-256 hashes, mapped to consumers.
//!
//! ```yaml
//! - name: api-key-validation
//!   version: 1.0.0
//!   params:
//!     keys:
//!       - {sha256: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08, consumer: acme}
//!     consumerHeader: x-consumer-id
//! ```
//!
//! The presented key is hashed and looked up by its digest; the final comparison of digests is
//! constant-time. Lookup timing depends only on the digest of what the client sent, which tells
//! it nothing about the configured keys.

use policy_sdk::{
    ImmediateResponse, Outcome, Policy, PolicyError, Request, RequestAction, RequestContext,
    RequestPolicy, UpstreamRequestMods, query_param,
};
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256};
use std::collections::HashMap;

/// Route parameters.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Params {
    /// Header carrying the key.
    #[serde(default = "default_header")]
    pub header: String,
    /// Query parameter carrying the key.
    #[serde(default)]
    pub query_param: Option<String>,
    /// Valid keys.
    pub keys: Vec<Key>,
    /// Header for the consumer id.
    #[serde(default)]
    pub consumer_header: Option<String>,
    /// Forward the key upstream.
    #[serde(default)]
    pub keep_key: bool,
}

/// One valid key.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Key {
    /// SHA-256 of the key, hex.
    pub sha256: String,
    /// Its consumer.
    pub consumer: String,
}

fn default_header() -> String {
    "x-api-key".into()
}

/// The policy: digests to consumers.
pub struct ApiKeyValidation {
    header: String,
    query_param: Option<String>,
    keys: HashMap<[u8; 32], String>,
    consumer_header: Option<String>,
    keep_key: bool,
    challenge: String,
}

impl std::fmt::Debug for ApiKeyValidation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiKeyValidation")
            .field("header", &self.header)
            .field("keys", &self.keys.len())
            .finish_non_exhaustive()
    }
}

impl Policy for ApiKeyValidation {
    type Params = Params;
    /// No state of its own: routes with equal parameters share one instance.
    const SHARED_ACROSS_ROUTES: bool = true;

    fn new(p: Params) -> Result<Self, PolicyError> {
        let mut keys = HashMap::with_capacity(p.keys.len());
        for (i, key) in p.keys.into_iter().enumerate() {
            let digest = decode_hex(&key.sha256).ok_or_else(|| {
                PolicyError::invalid_param(
                    format!("keys[{i}].sha256"),
                    "must be 64 lower-case hex digits",
                )
            })?;
            if keys.insert(digest, key.consumer).is_some() {
                return Err(PolicyError::invalid_param(
                    format!("keys[{i}].sha256"),
                    "is listed twice; each key identifies one consumer",
                ));
            }
        }
        let header = p.header.to_ascii_lowercase();
        Ok(ApiKeyValidation {
            challenge: format!("ApiKey header=\"{header}\""),
            header,
            query_param: p.query_param,
            keys,
            consumer_header: p.consumer_header.map(|h| h.to_ascii_lowercase()),
            keep_key: p.keep_key,
        })
    }
}

fn decode_hex(hex: &str) -> Option<[u8; 32]> {
    let bytes = hex.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in bytes.chunks(2).enumerate() {
        let text = std::str::from_utf8(pair).ok()?;
        out[i] = u8::from_str_radix(text, 16).ok()?;
    }
    Some(out)
}

/// Compares without an early exit.
fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Where the key came from.
enum Found {
    Header(String),
    Query(String),
}

impl ApiKeyValidation {
    fn find(&self, request: &Request) -> Option<Found> {
        if let Some(key) = request.header(&self.header) {
            return Some(Found::Header(key.to_owned()));
        }
        let name = self.query_param.as_deref()?;
        let key = query_param(request.query()?, name)?;
        Some(Found::Query(key.into_owned()))
    }

    fn consumer(&self, key: &str) -> Option<&str> {
        let digest: [u8; 32] = Sha256::digest(key.as_bytes()).into();
        self.keys
            .get_key_value(&digest)
            .filter(|(stored, _)| constant_time_eq(stored, &digest))
            .map(|(_, consumer)| consumer.as_str())
    }

    /// The path without the key's query parameter (every occurrence, its name decoded exactly
    /// as when it was found, so `api%5Fkey=` cannot slip the key upstream).
    fn path_without(&self, request: &Request, name: &str) -> String {
        let kept: Vec<&str> = request
            .query()
            .unwrap_or_default()
            .split('&')
            .filter(|pair| !pair.is_empty() && query_param(pair, name).is_none())
            .collect();
        let path = request.path_without_query();
        if kept.is_empty() {
            path.to_owned()
        } else {
            format!("{path}?{}", kept.join("&"))
        }
    }
}

impl RequestPolicy for ApiKeyValidation {
    fn on_request<'a>(&'a self, ctx: &'a mut RequestContext) -> Outcome<'a, RequestAction> {
        let Some(found) = self.find(ctx.request()) else {
            return Outcome::ready(RequestAction::Respond(
                ImmediateResponse::json(
                    401,
                    &json!({"error": "missing_api_key", "message": "an API key is required"}),
                )
                .with_header("www-authenticate", &self.challenge),
            ));
        };
        let key = match &found {
            Found::Header(k) | Found::Query(k) => k,
        };
        let Some(consumer) = self.consumer(key).map(str::to_owned) else {
            return Outcome::ready(RequestAction::Respond(ImmediateResponse::json(
                403,
                &json!({"error": "invalid_api_key", "message": "the API key is not valid"}),
            )));
        };
        let mut mods = UpstreamRequestMods::new();
        if !self.keep_key {
            mods = match &found {
                Found::Header(_) => mods.remove_header(&self.header),
                Found::Query(_) => {
                    let name = self.query_param.as_deref().unwrap_or_default();
                    mods.set_path(self.path_without(ctx.request(), name))
                }
            };
        }
        if let Some(header) = &self.consumer_header {
            mods = mods.set_header(header, &consumer);
        }
        ctx.metadata_mut().set("auth.consumer", consumer);
        ctx.metadata_mut().set("auth.method", "api-key");
        Outcome::ready(RequestAction::Continue(mods))
    }
}

policy_sdk::export_policy!(ApiKeyValidation, phases = [request]);

#[cfg(test)]
mod tests {
    use super::*;
    use policy_sdk::HeaderOp;
    use policy_sdk::testkit::{self, expect_continue, expect_respond};

    /// SHA-256 of "test".
    const TEST_HASH: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

    fn policy(extra: serde_json::Value) -> ApiKeyValidation {
        let mut params = json!({"keys": [{"sha256": TEST_HASH, "consumer": "acme"}]});
        if let (Some(p), Some(e)) = (params.as_object_mut(), extra.as_object()) {
            p.extend(e.clone());
        }
        testkit::new_policy(params).expect("valid params")
    }

    #[test]
    fn a_valid_header_key_names_the_consumer_and_is_not_forwarded() {
        let p = policy(json!({"consumerHeader": "X-Consumer-Id"}));
        let mut ctx =
            RequestContext::new(Request::new("GET", "/").with_header("x-api-key", "test"));
        let mods = expect_continue(testkit::run_request(&p, &mut ctx));
        assert_eq!(
            mods.header_ops(),
            [
                HeaderOp::Remove("x-api-key".into()),
                HeaderOp::Set("x-consumer-id".into(), "acme".into()),
            ]
        );
        assert_eq!(ctx.metadata().get_str("auth.consumer"), Some("acme"));
        assert_eq!(ctx.metadata().get_str("auth.method"), Some("api-key"));
    }

    #[test]
    fn missing_keys_get_401_with_a_challenge_and_invalid_ones_403() {
        let p = policy(json!({}));
        let mut ctx = RequestContext::new(Request::new("GET", "/"));
        let r = expect_respond(testkit::run_request(&p, &mut ctx));
        assert_eq!(r.status(), 401);
        assert_eq!(
            r.header("www-authenticate"),
            Some("ApiKey header=\"x-api-key\"")
        );
        let mut ctx =
            RequestContext::new(Request::new("GET", "/").with_header("x-api-key", "tesT"));
        let r = expect_respond(testkit::run_request(&p, &mut ctx));
        assert_eq!(r.status(), 403);
        assert!(
            !String::from_utf8_lossy(r.body()).contains("tesT"),
            "the key is not echoed"
        );
        assert!(ctx.metadata().get("auth.consumer").is_none());
    }

    #[test]
    fn query_keys_are_read_only_when_configured_and_stripped_from_the_path() {
        let request = || Request::new("GET", "/items?page=2&api_key=test&sort=asc");
        let mut ctx = RequestContext::new(request());
        let r = expect_respond(testkit::run_request(&policy(json!({})), &mut ctx));
        assert_eq!(r.status(), 401, "query keys are off by default");

        let p = policy(json!({"queryParam": "api_key"}));
        let mut ctx = RequestContext::new(request());
        let mods = expect_continue(testkit::run_request(&p, &mut ctx));
        assert_eq!(mods.path(), Some("/items?page=2&sort=asc"));
        let mut ctx = RequestContext::new(Request::new("GET", "/items?api_key=test"));
        let mods = expect_continue(testkit::run_request(&p, &mut ctx));
        assert_eq!(mods.path(), Some("/items"));
        // An encoded name is found and removed alike, with every repeat of it.
        let mut ctx = RequestContext::new(Request::new(
            "GET",
            "/items?api%5Fkey=test&page=2&api_key=again",
        ));
        let mods = expect_continue(testkit::run_request(&p, &mut ctx));
        assert_eq!(mods.path(), Some("/items?page=2"));
    }

    #[test]
    fn keep_key_forwards_it() {
        let p = policy(json!({"keepKey": true}));
        let mut ctx =
            RequestContext::new(Request::new("GET", "/").with_header("x-api-key", "test"));
        assert!(expect_continue(testkit::run_request(&p, &mut ctx)).is_empty());
    }

    #[test]
    fn duplicate_hashes_are_rejected_by_field() {
        let err = testkit::new_policy::<ApiKeyValidation>(json!({"keys": [
            {"sha256": TEST_HASH, "consumer": "a"}, {"sha256": TEST_HASH, "consumer": "b"}
        ]}))
        .expect_err("duplicate");
        assert!(err.to_string().contains("keys[1].sha256"), "{err}");
    }

    #[test]
    fn digests_compare_in_full() {
        let a = [7u8; 32];
        let mut b = a;
        assert!(constant_time_eq(&a, &b));
        b[31] ^= 1;
        assert!(!constant_time_eq(&a, &b));
    }
}
