//! llm-token-budget with its counters in a real redis-server (scripts/install-redis.sh):
//! instances share one budget that expires with its window, and an outage follows `onError`.

use llm_token_budget::{KeySource, TokenBudget, Window};
use policy_sdk::testkit::{self, expect_response_continue};
use policy_sdk::{
    ImmediateResponse, Metadata, Request, RequestAction, RequestContext, Response, ResponseContext,
};
use serde_json::json;
use std::time::{SystemTime, UNIX_EPOCH};

fn budget(params: serde_json::Value) -> TokenBudget {
    testkit::new_policy(params).expect("valid params")
}

fn chat(user: &str, model: &str) -> Request {
    Request::new("POST", "/v1/chat/completions")
        .with_header("x-user", user)
        .with_body(json!({"model": model, "messages": []}).to_string())
}

/// One exchange: the request phase, then (when admitted) a response reporting `tokens`.
fn exchange(p: &TokenBudget, request: Request, tokens: u64) -> Result<Metadata, ImmediateResponse> {
    let mut ctx = RequestContext::new(request);
    match testkit::run_request(p, &mut ctx).expect("no failure") {
        RequestAction::Respond(r) => Err(r),
        _ => {
            let (request, metadata) = ctx.into_parts();
            let response = Response::new(200)
                .with_header("content-type", "application/json")
                .with_body(json!({"usage": {"prompt_tokens": 1, "completion_tokens": tokens - 1, "total_tokens": tokens}}).to_string());
            let mut ctx = ResponseContext::new(request, response, metadata);
            expect_response_continue(testkit::run_response(p, &mut ctx));
            Ok(ctx.metadata().clone())
        }
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[test]
fn instances_with_a_redis_store_share_one_budget() {
    let server = policy_test_support::redis::RedisServer::start();
    let params = json!({
        "tokens": 100, "window": "day", "consumer": {"header": "x-user"},
        "store": {"redis": {"url": server.url(), "timeoutMs": 1000}}
    });
    let (a, b) = (budget(params.clone()), budget(params));
    exchange(&a, chat("alice", "m"), 60).expect("first");
    let metadata = exchange(&b, chat("alice", "m"), 60).expect("second, on the other instance");
    assert_eq!(metadata.get("llm.budget.used"), Some(&json!(120)));
    assert_eq!(
        exchange(&a, chat("alice", "m"), 1)
            .expect_err("spent")
            .status(),
        429
    );
    let ttl = server
        .query(&[
            "PTTL",
            &format!(
                "policy:llm-token-budget:Day:{}:{}",
                KeySource::Header("x-user".into()).digest("alice"),
                Window::Day.bounds(unix_now()).0
            ),
        ])
        .expect("PTTL");
    let ttl: i64 = ttl.trim_start_matches(':').parse().expect("a number");
    assert!(
        ttl > 0 && ttl <= (86_400 + 60) * 1000,
        "expires after the window: {ttl}"
    );
}

#[test]
fn a_redis_outage_follows_on_error_when_checking() {
    let mut server = policy_test_support::redis::RedisServer::start();
    let params = |on_error: &str| {
        json!({
            "tokens": 100, "window": "day",
            "store": {"redis": {"url": server.url(), "timeoutMs": 200, "onError": on_error}}
        })
    };
    let (deny, allow) = (budget(params("deny")), budget(params("allow")));
    server.stop();
    let refused = exchange(&deny, chat("alice", "m"), 1).expect_err("cannot check");
    assert_eq!(refused.status(), 503);
    let metadata = exchange(&allow, chat("alice", "m"), 1).expect("let through");
    assert_eq!(
        metadata.get("llm.budget.store"),
        Some(&json!("unavailable"))
    );
    assert_eq!(metadata.get("llm.budget.used"), None, "not counted either");
}
