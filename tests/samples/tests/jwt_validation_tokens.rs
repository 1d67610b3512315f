//! Tokens minted with real RSA and EC keys against the policy: every way a token can be wrong.

use jwt_validation::JwtValidation;
use policy_sdk::testkit::{self, expect_continue, expect_respond};
use policy_sdk::{PolicyError, Request, RequestAction, RequestContext};
use policy_test_support::jwt::*;
use serde_json::{Value, json};

fn policy(extra: Value) -> JwtValidation {
    let mut params = json!({
        "issuer": ISSUER,
        "audiences": [AUDIENCE, "billing"],
        "jwks": {"keys": [jwk("rsa", "rsa-1"), jwk("ec", "ec-1")]},
    });
    if let (Some(p), Some(e)) = (params.as_object_mut(), extra.as_object()) {
        p.extend(e.clone());
    }
    testkit::new_policy(params).expect("valid params")
}

fn run(
    p: &JwtValidation,
    authorization: Option<&str>,
) -> (Result<RequestAction, PolicyError>, RequestContext) {
    let mut request = Request::new("GET", "/orders");
    if let Some(value) = authorization {
        request = request.with_header("authorization", value);
    }
    let mut ctx = RequestContext::new(request);
    (testkit::run_request(p, &mut ctx), ctx)
}

/// Asserts a 401 invalid_token naming `why`.
fn rejected(p: &JwtValidation, token: &str, why: &str) {
    let (result, ctx) = run(p, Some(&format!("Bearer {token}")));
    let r = expect_respond(result);
    assert_eq!(r.status(), 401, "{why}");
    let challenge = r.header("www-authenticate").unwrap_or_default();
    assert!(
        challenge.starts_with("Bearer error=\"invalid_token\""),
        "{challenge}"
    );
    let body: Value = serde_json::from_slice(r.body()).expect("json");
    assert_eq!(body["error"], "invalid_token");
    assert!(
        body["message"].as_str().unwrap_or_default().contains(why),
        "{body} for {why}"
    );
    assert!(ctx.metadata().get("auth.subject").is_none());
}

#[test]
fn valid_rsa_and_ec_tokens_are_accepted_and_their_claims_recorded() {
    let p = policy(json!({}));
    for (key, kid) in [("rsa", "rsa-1"), ("ec", "ec-1")] {
        let token = token(key, kid, &claims(json!({"scope": "orders:read"})));
        let (result, ctx) = run(&p, Some(&format!("bearer {token}")));
        assert!(expect_continue(result).is_empty(), "{key}");
        assert_eq!(ctx.metadata().get_str("auth.subject"), Some("alice"));
        assert_eq!(ctx.metadata().get_str("auth.method"), Some("jwt"));
        assert_eq!(ctx.metadata().get_str("auth.issuer"), Some(ISSUER));
        assert_eq!(
            ctx.metadata()
                .get("auth.claims")
                .and_then(|c| c.get("scope")),
            Some(&json!("orders:read"))
        );
    }
}

#[test]
fn every_kind_of_bad_token_gets_401() {
    let p = policy(json!({}));
    rejected(
        &p,
        &token("rsa", "rsa-1", &claims(json!({"exp": now() - 3600}))),
        "expired",
    );
    rejected(
        &p,
        &token("rsa", "rsa-1", &claims(json!({"nbf": now() + 3600}))),
        "not valid yet",
    );
    rejected(
        &p,
        &token(
            "rsa",
            "rsa-1",
            &claims(json!({"iss": "https://evil.example/"})),
        ),
        "issuer",
    );
    rejected(
        &p,
        &token("rsa", "rsa-1", &claims(json!({"aud": "payments"}))),
        "audience",
    );
    rejected(
        &p,
        &token("rsa-other", "rsa-1", &claims(json!({}))),
        "signature",
    );
    rejected(&p, &token("rsa", "rsa-9", &claims(json!({}))), "unknown");
    rejected(&p, &unsigned(&claims(json!({}))), "malformed");
    rejected(
        &p,
        &token("rsa", "rsa-1", &claims(json!({"exp": null}))),
        "required claim",
    );
    rejected(&p, "not.a.token", "malformed");
    let rsa_only = policy(json!({"algorithms": ["RS256"]}));
    rejected(
        &rsa_only,
        &token("ec", "ec-1", &claims(json!({}))),
        "algorithm",
    );
}

#[test]
fn clock_skew_is_tolerated_up_to_its_setting() {
    let p = policy(json!({"clockSkewSeconds": 30}));
    let (result, _) = run(
        &p,
        Some(&format!(
            "Bearer {}",
            token("rsa", "rsa-1", &claims(json!({"exp": now() - 10})))
        )),
    );
    assert!(expect_continue(result).is_empty());
    rejected(
        &p,
        &token("rsa", "rsa-1", &claims(json!({"exp": now() - 120}))),
        "expired",
    );
    let (result, _) = run(
        &p,
        Some(&format!(
            "Bearer {}",
            token("rsa", "rsa-1", &claims(json!({"nbf": now() + 10})))
        )),
    );
    assert!(expect_continue(result).is_empty());
}

#[test]
fn missing_tokens_and_other_schemes_get_a_bare_challenge() {
    let p = policy(json!({}));
    for header in [
        None,
        Some("Basic YWxpY2U6cHc="),
        Some("Bearer "),
        Some("Bearer"),
    ] {
        let (result, _) = run(&p, header);
        let r = expect_respond(result);
        assert_eq!(
            (r.status(), r.header("www-authenticate")),
            (401, Some("Bearer")),
            "{header:?}"
        );
    }
    let custom = policy(json!({"tokenHeader": "X-Token", "tokenScheme": ""}));
    let mut ctx = RequestContext::new(
        Request::new("GET", "/").with_header("x-token", token("rsa", "rsa-1", &claims(json!({})))),
    );
    assert!(expect_continue(testkit::run_request(&custom, &mut ctx)).is_empty());
}

#[test]
fn unsafe_settings_name_their_field() {
    for (params, field) in [
        (
            json!({"jwksUrl": "http://auth.example.com/jwks.json", "jwks": null}),
            "jwksUrl",
        ),
        (json!({"algorithms": ["HS256"]}), "algorithms"),
        (
            json!({"jwksUrl": "https://auth.example.com/jwks.json"}),
            "jwks",
        ),
        (json!({"audiences": []}), "audiences"),
    ] {
        let mut full = json!({"issuer": ISSUER, "audiences": [AUDIENCE], "jwks": {"keys": [jwk("rsa", "rsa-1")]}});
        if let (Some(f), Some(p)) = (full.as_object_mut(), params.as_object()) {
            for (k, v) in p {
                if v.is_null() {
                    f.remove(k);
                } else {
                    f.insert(k.clone(), v.clone());
                }
            }
        }
        let err = testkit::new_policy::<JwtValidation>(full.clone()).expect_err(&full.to_string());
        assert!(err.to_string().contains(field), "{err} for {full}");
    }
}
