//! 2.0.0: several issuers, required scopes, claims to headers; tokens minted with real keys.

use jwt_validation_v2::JwtValidation;
use policy_sdk::testkit::{self, expect_continue, expect_respond};
use policy_sdk::{HeaderOp, PolicyError, Request, RequestAction, RequestContext};
use policy_test_support::jwt::*;
use serde_json::{Value, json};

const PARTNER: &str = "https://partners.example.net/";

fn policy(extra: Value) -> JwtValidation {
    let mut params = json!({
        "issuers": [
            {"issuer": ISSUER, "audiences": [AUDIENCE], "jwks": {"keys": [jwk("rsa", "main")]}},
            {"issuer": PARTNER, "audiences": [AUDIENCE], "jwks": {"keys": [jwk("ec", "partner")]}, "algorithms": ["ES256"]},
        ],
    });
    if let (Some(p), Some(e)) = (params.as_object_mut(), extra.as_object()) {
        p.extend(e.clone());
    }
    testkit::new_policy(params).expect("valid params")
}

fn run(
    p: &JwtValidation,
    token: &str,
    extra_header: Option<(&str, &str)>,
) -> (Result<RequestAction, PolicyError>, RequestContext) {
    let mut request =
        Request::new("GET", "/orders").with_header("authorization", format!("Bearer {token}"));
    if let Some((name, value)) = extra_header {
        request = request.with_header(name, value);
    }
    let mut ctx = RequestContext::new(request);
    (testkit::run_request(p, &mut ctx), ctx)
}

#[test]
fn each_issuer_is_checked_with_its_own_keys() {
    let p = policy(json!({}));
    let main = token("rsa", "main", &claims(json!({})));
    let (result, ctx) = run(&p, &main, None);
    assert!(expect_continue(result).is_empty());
    assert_eq!(ctx.metadata().get_str("auth.issuer"), Some(ISSUER));

    let partner = token(
        "ec",
        "partner",
        &claims(json!({"iss": PARTNER, "sub": "p-1"})),
    );
    let (result, ctx) = run(&p, &partner, None);
    assert!(expect_continue(result).is_empty());
    assert_eq!(ctx.metadata().get_str("auth.issuer"), Some(PARTNER));
    assert_eq!(ctx.metadata().get_str("auth.subject"), Some("p-1"));

    // A token claiming the partner but signed with the main issuer's key fails.
    let forged = token("rsa", "main", &claims(json!({"iss": PARTNER})));
    let r = expect_respond(run(&p, &forged, None).0);
    assert_eq!(r.status(), 401);
    let unknown = token(
        "rsa",
        "main",
        &claims(json!({"iss": "https://other.example/"})),
    );
    let r = expect_respond(run(&p, &unknown, None).0);
    assert_eq!(r.status(), 401);
    assert!(String::from_utf8_lossy(r.body()).contains("issuer"));
}

#[test]
fn required_scopes_from_scope_or_scp() {
    let p = policy(json!({"requiredScopes": ["orders:read", "orders:write"]}));
    for granted in [
        json!({"scope": "orders:read orders:write profile"}),
        json!({"scp": ["orders:write", "orders:read"]}),
    ] {
        let (result, _) = run(&p, &token("rsa", "main", &claims(granted.clone())), None);
        assert!(expect_continue(result).is_empty(), "{granted}");
    }
    let r = expect_respond(
        run(
            &p,
            &token("rsa", "main", &claims(json!({"scope": "orders:read"}))),
            None,
        )
        .0,
    );
    assert_eq!(r.status(), 403);
    assert_eq!(
        r.header("www-authenticate"),
        Some("Bearer error=\"insufficient_scope\", scope=\"orders:read orders:write\"")
    );
}

#[test]
fn claims_become_headers_and_client_copies_are_dropped() {
    let p = policy(
        json!({"claimsToHeaders": {"sub": "X-User-Id", "org.id": "x-org-id", "roles": "x-roles", "missing": "x-missing"}}),
    );
    let t = token(
        "rsa",
        "main",
        &claims(json!({"org": {"id": 42}, "roles": ["admin", "dev"]})),
    );
    let (result, _) = run(&p, &t, Some(("x-user-id", "forged")));
    let ops = expect_continue(result).header_ops().to_vec();
    for expected in [
        HeaderOp::Remove("x-user-id".into()),
        HeaderOp::Set("x-user-id".into(), "alice".into()),
        HeaderOp::Set("x-org-id".into(), "42".into()),
        HeaderOp::Set("x-roles".into(), "admin,dev".into()),
        HeaderOp::Remove("x-missing".into()),
    ] {
        assert!(ops.contains(&expected), "{expected:?} in {ops:?}");
    }
    assert!(!ops.contains(&HeaderOp::Set("x-missing".into(), String::new())));
}

#[test]
fn bad_settings_name_their_field() {
    for (params, field) in [
        (
            json!({"issuers": [{"issuer": ISSUER, "audiences": [AUDIENCE], "jwksUrl": "http://keys.example.com/"}]}),
            "issuers[0].jwksUrl",
        ),
        (
            json!({"issuers": [
                {"issuer": ISSUER, "audiences": [AUDIENCE], "jwks": {"keys": [jwk("rsa", "a")]}},
                {"issuer": ISSUER, "audiences": [AUDIENCE], "jwks": {"keys": [jwk("rsa", "b")]}},
            ]}),
            "issuers[1].issuer",
        ),
        (
            json!({"issuers": [{"issuer": ISSUER, "audiences": [AUDIENCE], "jwks": {"keys": [jwk("rsa", "a")]}}], "claimsToHeaders": {"sub": "authorization"}}),
            "claimsToHeaders.sub",
        ),
    ] {
        let err =
            testkit::new_policy::<JwtValidation>(params.clone()).expect_err(&params.to_string());
        assert!(err.to_string().contains(field), "{err}");
    }
}
