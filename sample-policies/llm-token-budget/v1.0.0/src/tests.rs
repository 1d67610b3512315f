use super::*;
use policy_sdk::testkit::{self, expect_continue, expect_respond, expect_response_continue};
use policy_sdk::{Metadata, Request, Response};

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

#[test]
fn a_consumer_is_refused_once_its_budget_is_spent_until_the_window_ends() {
    let p = budget(json!({"tokens": 100, "window": "day", "consumer": {"header": "x-user"}}));
    for (n, used) in [(1, 40), (2, 80), (3, 120)] {
        let metadata = exchange(&p, chat("alice", "m"), 40)
            .unwrap_or_else(|r| panic!("request {n}: {}", r.status()));
        assert_eq!(metadata.get("llm.budget.used"), Some(&json!(used)));
        assert_eq!(metadata.get("llm.tokens.used"), Some(&json!(40)));
        assert_eq!(metadata.get("llm.tokens.prompt"), Some(&json!(1)));
    }
    let refused = exchange(&p, chat("alice", "m"), 1).expect_err("the fourth is over budget");
    assert_eq!(refused.status(), 429);
    let retry: u64 = refused
        .header("retry-after")
        .and_then(|v| v.parse().ok())
        .expect("Retry-After");
    let now = unix_now();
    assert_eq!(now + retry, Window::Day.bounds(now).1, "until midnight UTC");
    assert_eq!(refused.header("x-ratelimit-limit-tokens"), Some("100"));
    let body: serde_json::Value = serde_json::from_slice(refused.body()).expect("JSON");
    assert_eq!(body["error"], "token_budget_exceeded");
    exchange(&p, chat("bob", "m"), 1).expect("another consumer has its own budget");
}

#[test]
fn a_model_with_a_budget_of_its_own_is_refused_before_the_overall_one() {
    let p = budget(json!({
        "tokens": 1000, "window": "month", "consumer": {"header": "x-user"},
        "models": {"big": 50}
    }));
    let metadata = exchange(&p, chat("alice", "big"), 60).expect("within budget");
    assert_eq!(metadata.get("llm.budget.model"), Some(&json!("big")));
    assert_eq!(
        exchange(&p, chat("alice", "big"), 1)
            .expect_err("big is spent")
            .status(),
        429
    );
    let metadata =
        exchange(&p, chat("alice", "small"), 10).expect("other models use the overall budget");
    assert_eq!(metadata.get("llm.budget.used"), Some(&json!(70)));
    assert_eq!(metadata.get("llm.budget.model"), None);
}

#[test]
fn streamed_answers_are_counted_from_their_last_usage_event() {
    let p = budget(json!({"tokens": 10, "window": "hour", "consumer": {"header": "x-user"}}));
    let mut ctx = RequestContext::new(chat("alice", "m"));
    expect_continue(testkit::run_request(&p, &mut ctx));
    assert_eq!(ctx.metadata().get("llm.budget.remaining"), Some(&json!(10)));
    let (request, metadata) = ctx.into_parts();
    let sse =
        "data: {\"choices\":[]}\n\ndata: {\"usage\":{\"total_tokens\":12}}\n\ndata: [DONE]\n\n";
    let response = Response::new(200)
        .with_header("content-type", "text/event-stream")
        .with_body(sse);
    let mut ctx = ResponseContext::new(request, response, metadata);
    expect_response_continue(testkit::run_response(&p, &mut ctx));
    assert_eq!(ctx.metadata().get("llm.budget.used"), Some(&json!(12)));
    assert_eq!(
        exchange(&p, chat("alice", "m"), 1)
            .expect_err("spent")
            .status(),
        429
    );
}

#[test]
fn requests_without_a_consumer_share_or_are_refused() {
    let shared = budget(json!({"tokens": 5, "window": "minute", "consumer": {"header": "x-user"}}));
    let anonymous = || Request::new("POST", "/").with_body("{}");
    exchange(&shared, anonymous(), 5).expect("the shared budget");
    exchange(&shared, anonymous(), 1).expect_err("spent by every anonymous caller together");
    let strict = budget(json!({
        "tokens": 5, "window": "minute", "consumer": {"header": "x-user"}, "missingConsumer": "reject"
    }));
    let mut ctx = RequestContext::new(anonymous());
    assert_eq!(
        expect_respond(testkit::run_request(&strict, &mut ctx)).status(),
        429
    );
}

#[test]
fn bad_settings_name_their_field() {
    for (params, field) in [
        (
            json!({"tokens": 1, "window": "day", "models": {"m": 0}}),
            "models.m",
        ),
        (
            json!({"tokens": 1, "window": "day", "consumer": {"client": "port"}}),
            "consumer.client",
        ),
        (
            json!({"tokens": 1, "window": "day", "store": {"redis": {"url": "redis://h", "timeoutMs": 0}}}),
            "store.redis.timeoutMs",
        ),
    ] {
        let err =
            testkit::new_policy::<TokenBudget>(params.clone()).expect_err(&params.to_string());
        assert!(err.to_string().contains(field), "{err}");
    }
}
