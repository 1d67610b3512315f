//! Keys fetched from a JWKS endpoint: cached, refreshed on an unknown kid (rate-limited), stale
//! keys used while the endpoint is down, and fail closed past the grace period.

#![allow(
    clippy::disallowed_methods,
    reason = "waits on servers it started, on the test's own thread"
)]

use jwt_validation::JwtValidation;
use policy_sdk::testkit::{self, expect_continue, expect_respond};
use policy_sdk::{PolicyError, Request, RequestAction, RequestContext};
use policy_test_support::jwt::*;
use serde_json::{Value, json};
use std::sync::atomic::Ordering;
use std::time::Duration;

fn policy(server: &JwksServer, cache: Value) -> JwtValidation {
    testkit::new_policy(json!({
        "issuer": ISSUER, "audiences": [AUDIENCE], "jwksUrl": server.url, "cache": cache,
    }))
    .expect("valid params")
}

fn run(p: &JwtValidation, token: &str) -> Result<RequestAction, PolicyError> {
    let mut ctx = RequestContext::new(
        Request::new("GET", "/").with_header("authorization", format!("Bearer {token}")),
    );
    testkit::run_request(p, &mut ctx)
}

#[test]
fn keys_are_fetched_once_and_refreshed_on_an_unknown_kid_at_most_once_per_interval() {
    let server = JwksServer::start(json!({"keys": [jwk("rsa", "k1")]}));
    let p = policy(&server, json!({"minRefreshIntervalSeconds": 3600}));
    for _ in 0..3 {
        assert!(expect_continue(run(&p, &token("rsa", "k1", &claims(json!({}))))).is_empty());
    }
    assert_eq!(server.fetches(), 1, "cached after the first fetch");

    // The issuer rotates to an EC key: the first token with the new kid triggers one refresh...
    *server.set.lock().expect("set") = json!({"keys": [jwk("rsa", "k1"), jwk("ec", "k2")]});
    let p = policy(&server, json!({"minRefreshIntervalSeconds": 0}));
    assert!(expect_continue(run(&p, &token("rsa", "k1", &claims(json!({}))))).is_empty());
    let before = server.fetches();
    assert!(expect_continue(run(&p, &token("ec", "k2", &claims(json!({}))))).is_empty());
    assert_eq!(server.fetches(), before, "already in the fresh set");

    // ...while unknown kids cannot make it fetch more than once per interval.
    let p = policy(&server, json!({"minRefreshIntervalSeconds": 3600}));
    assert!(expect_continue(run(&p, &token("rsa", "k1", &claims(json!({}))))).is_empty());
    let before = server.fetches();
    for kid in ["forged-1", "forged-2", "forged-3"] {
        let r = expect_respond(run(&p, &token("rsa-other", kid, &claims(json!({})))));
        assert_eq!(r.status(), 401);
    }
    assert_eq!(
        server.fetches(),
        before,
        "the prefetch was recent: no refresh at all"
    );
}

#[test]
fn an_unknown_kid_refreshes_the_keys_once_the_interval_allows() {
    let server = JwksServer::start(json!({"keys": [jwk("rsa", "k1")]}));
    let p = policy(&server, json!({"minRefreshIntervalSeconds": 0}));
    assert!(expect_continue(run(&p, &token("rsa", "k1", &claims(json!({}))))).is_empty());
    *server.set.lock().expect("set") = json!({"keys": [jwk("ec", "k2")]});
    let before = server.fetches();
    assert!(expect_continue(run(&p, &token("ec", "k2", &claims(json!({}))))).is_empty());
    assert_eq!(
        server.fetches(),
        before + 1,
        "one refresh found the new key"
    );
}

#[test]
fn stale_keys_serve_while_the_endpoint_is_down_then_the_policy_fails_closed() {
    let server = JwksServer::start(json!({"keys": [jwk("rsa", "k1")]}));
    let graceful = policy(
        &server,
        json!({"ttlSeconds": 1, "minRefreshIntervalSeconds": 0, "staleGraceSeconds": 3600}),
    );
    let strict = policy(
        &server,
        json!({"ttlSeconds": 1, "minRefreshIntervalSeconds": 0, "staleGraceSeconds": 0}),
    );
    let good = token("rsa", "k1", &claims(json!({})));
    assert!(expect_continue(run(&graceful, &good)).is_empty());
    assert!(expect_continue(run(&strict, &good)).is_empty());

    server.down.store(true, Ordering::SeqCst);
    std::thread::sleep(Duration::from_millis(1100));
    assert!(
        expect_continue(run(&graceful, &good)).is_empty(),
        "the last keys are used within the grace period"
    );
    let error = run(&strict, &good).expect_err("no keys: the policy fails (onFailure decides)");
    assert!(error.to_string().contains("503"), "{error}");
}

#[test]
fn the_endpoint_never_reachable_fails_closed() {
    let server = JwksServer::start(json!({"keys": []}));
    server.down.store(true, Ordering::SeqCst);
    let p = policy(&server, json!({"fetchTimeoutMs": 500}));
    let error = run(&p, &token("rsa", "k1", &claims(json!({})))).expect_err("no keys");
    assert!(error.to_string().contains("no signing keys"), "{error}");
}

#[test]
fn a_cancelled_lookup_never_leaves_the_next_one_waiting() {
    use jwt_validation::jwks::{CacheSettings, Jwks, Lookup};
    use std::future::Future;
    use std::task::{Context, Waker};

    let server = JwksServer::start(json!({"keys": [jwk("rsa", "k1")]}));
    let jwks = Jwks::remote(
        server.url.clone(),
        CacheSettings {
            ttl: Duration::from_secs(300),
            min_refresh_interval: Duration::ZERO,
            stale_grace: Duration::from_secs(3600),
            timeout: Duration::from_secs(5),
        },
    );
    assert!(matches!(
        testkit::block_on(jwks.key(Some("k1"), jsonwebtoken::Algorithm::RS256)),
        Lookup::Key(_)
    ));

    // The issuer adds k2; the lookup that starts the refresh is dropped mid-fetch (the client
    // went away, or the policy timed out).
    *server.set.lock().expect("set") = json!({"keys": [jwk("rsa", "k1"), jwk("ec", "k2")]});
    server.delay_ms.store(300, Ordering::SeqCst);
    {
        let mut lookup = Box::pin(jwks.key(Some("k2"), jsonwebtoken::Algorithm::ES256));
        let mut cx = Context::from_waker(Waker::noop());
        assert!(lookup.as_mut().poll(&mut cx).is_pending(), "fetching");
    }

    // The next lookup gets the new key once the fetch ends, instead of waiting forever.
    let (tx, rx) = std::sync::mpsc::channel();
    let next = std::sync::Arc::clone(&jwks);
    std::thread::spawn(move || {
        let found = matches!(
            testkit::block_on(next.key(Some("k2"), jsonwebtoken::Algorithm::ES256)),
            Lookup::Key(_)
        );
        let _ = tx.send(found);
    });
    assert_eq!(
        rx.recv_timeout(Duration::from_secs(10)),
        Ok(true),
        "the lookup after a cancelled one completes with the fetched key"
    );
}

#[test]
fn symmetric_keys_are_ignored_and_a_keys_alg_is_honoured() {
    use jsonwebtoken::Algorithm;
    use jsonwebtoken::jwk::JwkSet;
    use jwt_validation::jwks::KeySet;

    // A published JWKS is public: an `oct` key in it is a secret anyone could sign with.
    let set: JwkSet = serde_json::from_value(json!({"keys": [
        {"kty": "oct", "k": "c2VjcmV0", "kid": "h1", "alg": "HS256"},
        jwk("rsa", "k1"),
    ]}))
    .expect("a JWK set");
    let keys = KeySet::from_jwks(&set);
    assert_eq!(keys.len(), 1, "{keys:?}");
    assert!(keys.get(Some("h1"), Algorithm::HS256).is_none());
    // k1's JWK says RS256: a token naming another algorithm does not get the key.
    assert!(keys.get(Some("k1"), Algorithm::RS256).is_some());
    assert!(keys.get(Some("k1"), Algorithm::RS384).is_none());
    assert!(keys.get(Some("k1"), Algorithm::PS256).is_none());
}

#[test]
fn start_prefetches_once_and_a_changed_instance_keeps_the_fetched_keys() {
    use policy_sdk::Policy;

    let server = JwksServer::start(json!({"keys": [jwk("rsa", "k1")]}));
    let first = policy(&server, json!({}));
    first.start();
    // The prefetch runs on its own thread: wait for it to land, then the token needs no fetch.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while server.fetches() == 0 {
        assert!(std::time::Instant::now() < deadline, "start never fetched");
        std::thread::sleep(Duration::from_millis(5));
    }
    let good = token("rsa", "k1", &claims(json!({})));
    assert!(expect_continue(run(&first, &good)).is_empty());
    first.start();
    assert_eq!(
        server.fetches(),
        1,
        "one prefetch, and a second start fetches nothing"
    );

    // A reload changes the accepted audiences: a new instance, built while the old one still
    // serves, finds the same URL's cache, so it accepts tokens with the endpoint down.
    server.down.store(true, Ordering::SeqCst);
    let changed: JwtValidation = testkit::new_policy(json!({
        "issuer": ISSUER, "audiences": [AUDIENCE, "billing"], "jwksUrl": server.url,
    }))
    .expect("valid params");
    changed.start();
    drop(first);
    assert!(expect_continue(run(&changed, &good)).is_empty());
    assert_eq!(server.fetches(), 1, "the keys came from the shared cache");
}
