//! rate-limit with its buckets in a real redis-server (scripts/install-redis.sh): instances
//! share one limit, and an outage follows `onError`.

use policy_sdk::testkit::{self, expect_continue, expect_respond};
use policy_sdk::{Request, RequestContext};
use rate_limit::RateLimit;
use serde_json::json;

fn limiter(params: serde_json::Value) -> RateLimit {
    testkit::new_policy(params).expect("valid params")
}

fn redis_limiter(url: &str, on_error: &str, prefix: &str) -> RateLimit {
    limiter(json!({
        "requestsPerSecond": 0.01, "burst": 2, "key": {"header": "x-user"},
        "store": {"redis": {"url": url, "onError": on_error, "keyPrefix": prefix, "timeoutMs": 200}}
    }))
}

fn from(user: &str) -> RequestContext {
    RequestContext::new(Request::new("GET", "/").with_header("x-user", user))
}

#[test]
fn instances_with_a_redis_store_share_one_limit() {
    let server = policy_test_support::redis::RedisServer::start();
    let (a, b) = (
        redis_limiter(&server.url(), "deny", "t1:"),
        redis_limiter(&server.url(), "deny", "t1:"),
    );
    let mut ctx = from("alice");
    expect_continue(testkit::run_request(&a, &mut ctx));
    assert_eq!(ctx.metadata().get("ratelimit.remaining"), Some(&json!(1)));
    expect_continue(testkit::run_request(&b, &mut from("alice")));
    let r = expect_respond(testkit::run_request(&a, &mut from("alice")));
    assert_eq!((r.status(), r.header("retry-after")), (429, Some("100")));
    expect_respond(testkit::run_request(&b, &mut from("alice")));
    expect_continue(testkit::run_request(&b, &mut from("bob")));
    let other = redis_limiter(&server.url(), "deny", "t2:");
    expect_continue(testkit::run_request(&other, &mut from("alice")));
}

#[test]
fn a_redis_outage_follows_on_error() {
    let mut server = policy_test_support::redis::RedisServer::start();
    let (deny, allow) = (
        redis_limiter(&server.url(), "deny", "o:"),
        redis_limiter(&server.url(), "allow", "o:"),
    );
    server.stop();
    let r = expect_respond(testkit::run_request(&deny, &mut from("alice")));
    assert_eq!((r.status(), r.header("retry-after")), (503, Some("1")));
    let mut ctx = from("alice");
    expect_continue(testkit::run_request(&allow, &mut ctx));
    assert_eq!(
        ctx.metadata().get("ratelimit.store"),
        Some(&json!("unavailable"))
    );
}
