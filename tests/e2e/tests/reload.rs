//! Reloads through a real Envoy: what a configuration change did not touch keeps its state (on
//! the engine and in the module), and a large document is compiled without stalling traffic.

use policy_test_support::envoy as support;
use policy_test_support::jwt;

use std::sync::atomic::Ordering;
use std::time::Duration;
use support::host::Kind;
use support::traffic::Traffic;
use support::{Request, Stack};

// Kept state across reloads, on every host; the 5,000-route run below is the engine's own
// (the module's reloads under load are in module.rs).
policy_test_support::on_every_host!(
    a_drained_rate_limit_stays_drained_when_another_route_changes,
    a_jwt_route_keeps_accepting_tokens_across_reloads_while_the_jwks_endpoint_is_down,
);

const APPLY: Duration = Duration::from_secs(60);
/// A 5,000-route document in a debug build takes seconds of CPU, on a thread with a lower
/// priority than the traffic's: beside other CPU-heavy tests it may take minutes.
const APPLY_LARGE: Duration = Duration::from_secs(300);

fn limited(burst: u32, other: &str) -> String {
    format!(
        "version: v1\nroutes:\n  - route: public\n    policies:\n      - {{name: rate-limit, version: 1.0.0, params: {{requestsPerSecond: 0.01, burst: {burst}}}}}\n  - route: private\n    policies:\n      - {{name: set-header, version: 1.0.0, params: {{request: {{set: {{x-other: \"{other}\"}}}}}}}}\n"
    )
}

fn a_drained_rate_limit_stays_drained_when_another_route_changes(kind: Kind) {
    let stack = kind.start(&limited(2, "1"));
    for _ in 0..2 {
        assert_eq!(stack.send(Request::get("/public/a")).status, 200);
    }
    assert_eq!(stack.send(Request::get("/public/a")).status, 429);

    stack.apply_config(&limited(2, "2"), APPLY);
    assert_eq!(
        stack.upstream().received().len(),
        2,
        "nothing passed in between"
    );
    assert_eq!(stack.send(Request::get("/private/a")).status, 200);
    assert_eq!(
        stack.upstream().last().header("x-other").as_deref(),
        Some("2"),
        "the new document is the one serving"
    );
    let reply = stack.send(Request::get("/public/a"));
    assert_eq!(
        reply.status,
        429,
        "the bucket was kept, not refilled: {}",
        reply.text()
    );

    // Its own parameters change: a new instance, a full bucket.
    stack.apply_config(&limited(3, "2"), APPLY);
    for _ in 0..3 {
        assert_eq!(stack.send(Request::get("/public/a")).status, 200);
    }
    assert_eq!(stack.send(Request::get("/public/a")).status, 429);
}

fn jwt_config(server: &jwt::JwksServer, audiences: &str, other: &str) -> String {
    format!(
        "version: v1\nroutes:\n  - route: private\n    policies:\n      - {{name: jwt-validation, version: 1.0.0, params: {{issuer: \"{}\", audiences: [{audiences}], jwksUrl: \"{}\"}}}}\n  - route: public\n    policies:\n      - {{name: set-header, version: 1.0.0, params: {{request: {{set: {{x-other: \"{other}\"}}}}}}}}\n",
        jwt::ISSUER,
        server.url
    )
}

fn a_jwt_route_keeps_accepting_tokens_across_reloads_while_the_jwks_endpoint_is_down(kind: Kind) {
    let server = jwt::JwksServer::start(serde_json::json!({"keys": [jwt::jwk("rsa", "rsa-1")]}));
    let stack = kind.start(&jwt_config(&server, jwt::AUDIENCE, "1"));
    let token = jwt::token(
        "rsa",
        "rsa-1",
        &jwt::claims(serde_json::json!({"sub": "bob"})),
    );
    let bearer = format!("Bearer {token}");
    let call = || stack.send(Request::get("/private/orders").header("authorization", &bearer));
    assert_eq!(call().status, 200);
    assert_eq!(server.fetches(), 1, "the start hook's prefetch, waited for");

    server.down.store(true, Ordering::SeqCst);
    // Another route changes: the jwt instance is kept, keys and all.
    stack.apply_config(&jwt_config(&server, jwt::AUDIENCE, "2"), APPLY);
    let reply = call();
    assert_eq!(reply.status, 200, "{}", reply.text());

    // Its own audiences change: a new instance, which finds the keys in the shared cache.
    let audiences = format!("{}, billing", jwt::AUDIENCE);
    stack.apply_config(&jwt_config(&server, &audiences, "2"), APPLY);
    let reply = call();
    assert_eq!(reply.status, 200, "{}", reply.text());
    let billing = jwt::token(
        "rsa",
        "rsa-1",
        &jwt::claims(serde_json::json!({"aud": "billing"})),
    );
    let reply = stack.send(
        Request::get("/private/orders").header("authorization", &format!("Bearer {billing}")),
    );
    assert_eq!(
        reply.status,
        200,
        "the new audience is in force: {}",
        reply.text()
    );
    assert_eq!(server.fetches(), 1, "no fetch was needed");
}

fn generated(routes: usize, generation: u32) -> String {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/gen-routes.sh");
    let out = std::process::Command::new(script)
        .args([routes.to_string(), generation.to_string()])
        .output()
        .expect("run scripts/gen-routes.sh");
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).expect("UTF-8")
}

#[test]
fn applying_five_thousand_routes_under_load_fails_no_request() {
    let stack = Stack::start(&generated(0, 1));
    let traffic = Traffic::start(stack.port, "/public/tick", 4);
    traffic.wait_for(50);
    // 5,000 routes in, then every one of their entries changed.
    stack.apply_config(&generated(5000, 2), APPLY_LARGE);
    traffic.wait_for(50);
    stack.apply_config(&generated(5000, 3), APPLY_LARGE);
    traffic.wait_for(50);
    let results = traffic.stop();

    let failed: Vec<_> = results
        .iter()
        .filter(|(status, _)| *status != 200)
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed during the reloads: {:?}",
        failed.len(),
        results.len(),
        &failed[..failed.len().min(10)]
    );
    assert_eq!(
        results.last().and_then(|(_, v)| v.as_deref()),
        Some("3"),
        "the last document serves"
    );
    let routes = stack.admin(Request::get("/config")).json()["document"]["routes"]
        .as_array()
        .map(Vec::len);
    assert_eq!(routes, Some(5001));
}
