//! The executor's semantics: order, conditions, metadata, failures, timeouts, short-circuit.

use policy_test_support::policies as support;

use policy_core::{Decision, Snapshot};
use policy_sdk::{ErrorKind, HeaderChange, Request, RequestContext, Response, ResponseContext};
use support::snapshot;

fn route(policies: &str) -> Snapshot {
    snapshot(&format!(
        "version: v1\nroutes:\n  - route: r\n    policies:\n{policies}"
    ))
}

async fn run_request(snap: &Snapshot, req: Request) -> (Decision, RequestContext) {
    let chain = snap.chain_for("r").expect("route r");
    let mut ctx = RequestContext::new(req);
    let decision = chain.run_request(&mut ctx).await;
    (decision, ctx)
}

async fn run_both(snap: &Snapshot, req: Request) -> ResponseContext {
    let (decision, ctx) = run_request(snap, req).await;
    assert!(matches!(decision, Decision::Continue), "{decision:?}");
    let (req, meta) = ctx.into_parts();
    let mut rctx = ResponseContext::new(req, Response::new(200), meta);
    let decision = snap
        .chain_for("r")
        .expect("route r")
        .run_response(&mut rctx)
        .await;
    assert!(matches!(decision, Decision::Continue), "{decision:?}");
    rctx
}

fn get(path: &str) -> Request {
    Request::new("GET", path)
}

const ABC: &str = "      - {name: order, version: 1.0.0, params: {label: a}}\n\
                   \x20     - {name: order, version: 1.0.0, params: {label: b}}\n\
                   \x20     - {name: order, version: 1.0.0, params: {label: c}}\n";

#[tokio::test]
async fn request_policies_run_in_listed_order_and_see_earlier_changes() {
    let (decision, ctx) = run_request(&route(ABC), get("/")).await;
    assert!(matches!(decision, Decision::Continue));
    let order: Vec<&str> = ctx.request().headers().get_all("x-order").collect();
    assert_eq!(order, ["a", "b", "c"]);
    assert_eq!(ctx.metadata().get_str("seen.a"), Some(""));
    assert_eq!(ctx.metadata().get_str("seen.c"), Some("a,b"));
    let appended = ["a".to_string(), "b".to_string(), "c".to_string()];
    assert_eq!(
        ctx.changes().headers().collect::<Vec<_>>(),
        [HeaderChange::Appended("x-order", &appended)]
    );
}

#[tokio::test]
async fn response_policies_run_in_reverse_order() {
    let rctx = run_both(&route(ABC), get("/")).await;
    let order: Vec<&str> = rctx.response().headers().get_all("x-order").collect();
    assert_eq!(order, ["c", "b", "a"]);
}

#[tokio::test]
async fn an_immediate_response_stops_the_chain() {
    let snap = route(
        "      - {name: order, version: 1.0.0, params: {label: a}}\n\
         \x20     - {name: respond, version: 1.0.0, params: {status: 401}}\n\
         \x20     - {name: order, version: 1.0.0, params: {label: b}}\n",
    );
    let (decision, ctx) = run_request(&snap, get("/")).await;
    let Decision::Respond(response) = decision else {
        panic!("expected a response, got {decision:?}")
    };
    assert_eq!(response.status(), 401);
    assert_eq!(response.body(), br#"{"error":"denied"}"#);
    assert!(ctx.metadata().contains("seen.a"));
    assert!(
        !ctx.metadata().contains("seen.b"),
        "the policy after the response ran"
    );
}

#[tokio::test]
async fn a_method_condition_skips_a_get_and_runs_for_a_post() {
    let snap = route(
        "      - name: order\n        version: 1.0.0\n        condition: 'request.method in [\"POST\", \"PUT\", \"DELETE\"]'\n        params: {label: write}\n",
    );
    let (_, ctx) = run_request(&snap, get("/")).await;
    assert!(
        !ctx.request().headers().contains("x-order"),
        "ran for a GET"
    );
    let (_, ctx) = run_request(&snap, Request::new("POST", "/")).await;
    assert_eq!(ctx.request().header("x-order"), Some("write"));
}

#[tokio::test]
async fn a_path_condition_selects_requests() {
    let snap = route(
        "      - name: order\n        version: 1.0.0\n        condition: 'request.path.startsWith(\"/api/\")'\n        params: {label: api}\n",
    );
    let (_, ctx) = run_request(&snap, get("/api/users?x=1")).await;
    assert_eq!(ctx.request().header("x-order"), Some("api"));
    let (_, ctx) = run_request(&snap, get("/health")).await;
    assert_eq!(ctx.request().header("x-order"), None);
}

#[tokio::test]
async fn metadata_flows_to_later_conditions_and_to_the_response_phase() {
    let snap = route(
        "      - {name: meta, version: 1.0.0, params: {key: auth.user, value: alice, header: x-user}}\n\
         \x20     - name: order\n        version: 1.0.0\n        condition: 'metadata[\"auth.user\"] == \"alice\"'\n        params: {label: for-alice}\n\
         \x20     - name: order\n        version: 1.0.0\n        condition: 'metadata[\"auth.user\"] == \"bob\"'\n        params: {label: for-bob}\n",
    );
    let rctx = run_both(&snap, get("/")).await;
    assert_eq!(
        rctx.request()
            .headers()
            .get_all("x-order")
            .collect::<Vec<_>>(),
        ["for-alice"]
    );
    assert_eq!(rctx.response().header("x-user"), Some("alice"));
}

#[tokio::test]
async fn the_last_metadata_writer_wins() {
    let snap = route(
        "      - {name: meta, version: 1.0.0, params: {key: k, value: first}}\n\
         \x20     - {name: meta, version: 1.0.0, params: {key: k, value: second, header: x-k}}\n",
    );
    let rctx = run_both(&snap, get("/")).await;
    assert_eq!(rctx.metadata().get_str("k"), Some("second"));
    assert_eq!(rctx.response().header("x-k"), Some("second"));
}

fn failing_then_b(on_failure: &str) -> Snapshot {
    route(&format!(
        "      - {{name: order, version: 1.0.0, params: {{label: a}}}}\n\
         \x20     - {{name: fail, version: 1.0.0, onFailure: {on_failure}}}\n\
         \x20     - {{name: order, version: 1.0.0, params: {{label: b}}}}\n"
    ))
}

#[tokio::test]
async fn on_failure_deny_stops_with_the_failing_policy_named() {
    let (decision, ctx) = run_request(&failing_then_b("deny"), get("/")).await;
    let Decision::Deny(denial) = decision else {
        panic!("expected a denial, got {decision:?}")
    };
    assert_eq!(&*denial.policy, "fail:1.0.0");
    assert_eq!(denial.error.to_string(), "the test backend is unreachable");
    assert!(!ctx.metadata().contains("seen.b"));
}

#[tokio::test]
async fn on_failure_defaults_to_deny() {
    let snap = route("      - {name: fail, version: 1.0.0}\n");
    assert!(matches!(
        run_request(&snap, get("/")).await.0,
        Decision::Deny(_)
    ));
}

#[tokio::test]
async fn on_failure_continue_runs_the_rest() {
    let (decision, ctx) = run_request(&failing_then_b("continue"), get("/")).await;
    assert!(matches!(decision, Decision::Continue));
    assert_eq!(
        ctx.request()
            .headers()
            .get_all("x-order")
            .collect::<Vec<_>>(),
        ["a", "b"]
    );
}

#[tokio::test]
async fn on_failure_skip_remaining_lets_the_request_through_with_earlier_changes() {
    let (decision, ctx) = run_request(&failing_then_b("skip_remaining"), get("/")).await;
    assert!(matches!(decision, Decision::Continue));
    assert_eq!(
        ctx.request()
            .headers()
            .get_all("x-order")
            .collect::<Vec<_>>(),
        ["a"]
    );
}

#[tokio::test]
async fn disabled_policies_never_run() {
    let snap = route(
        "      - {name: fail, version: 1.0.0, enabled: false}\n\
         \x20     - {name: order, version: 1.0.0, params: {label: a}}\n",
    );
    let (decision, ctx) = run_request(&snap, get("/")).await;
    assert!(matches!(decision, Decision::Continue));
    assert_eq!(ctx.request().header("x-order"), Some("a"));
    assert_eq!(snap.chain_for("r").expect("r").request_steps().len(), 1);
}

#[tokio::test]
async fn a_condition_that_fails_at_run_time_skips_the_policy() {
    let snap = route(
        "      - name: fail\n        version: 1.0.0\n        condition: 'metadata[\"absent\"] == \"x\"'\n\
         \x20     - {name: order, version: 1.0.0, params: {label: a}}\n",
    );
    let (decision, ctx) = run_request(&snap, get("/")).await;
    assert!(matches!(decision, Decision::Continue), "{decision:?}");
    assert_eq!(ctx.request().header("x-order"), Some("a"));
}

#[tokio::test(start_paused = true)]
async fn an_async_policy_within_its_timeout_completes_and_its_changes_apply() {
    let snap = route("      - {name: slow, version: 1.0.0, timeoutMs: 500, params: {ms: 100}}\n");
    let (decision, ctx) = run_request(&snap, get("/")).await;
    assert!(matches!(decision, Decision::Continue), "{decision:?}");
    assert_eq!(ctx.request().header("x-slow"), Some("done"));
    assert!(ctx.metadata().contains("slow.done"));
}

#[tokio::test(start_paused = true)]
async fn an_async_policy_past_its_timeout_fails_with_a_timeout() {
    let snap = route("      - {name: slow, version: 1.0.0, timeoutMs: 50, params: {ms: 5000}}\n");
    let (decision, ctx) = run_request(&snap, get("/")).await;
    let Decision::Deny(denial) = decision else {
        panic!("expected a denial, got {decision:?}")
    };
    assert_eq!(denial.error.kind(), ErrorKind::Timeout);
    assert_eq!(denial.error.to_string(), "timed out after 50 ms");
    assert!(!ctx.request().headers().contains("x-slow"));
}

#[tokio::test(start_paused = true)]
async fn the_default_policy_timeout_applies() {
    let snap = snapshot(
        "version: v1\ndefaults: {policyTimeoutMs: 30}\nroutes:\n  - route: r\n    policies:\n\
         \x20     - {name: slow, version: 1.0.0, onFailure: continue, params: {ms: 100}}\n\
         \x20     - {name: order, version: 1.0.0, params: {label: after}}\n",
    );
    let (decision, ctx) = run_request(&snap, get("/")).await;
    assert!(matches!(decision, Decision::Continue));
    assert!(!ctx.request().headers().contains("x-slow"));
    assert_eq!(ctx.request().header("x-order"), Some("after"));
}

#[test]
fn body_and_phase_needs_are_computed_per_chain() {
    let snap = snapshot(
        "version: v1\nroutes:\n\
         \x20 - route: headers-only\n    policies: [{name: fail, version: 1.0.0}]\n\
         \x20 - route: both-phases\n    policies: [{name: order, version: 1.0.0, params: {label: x}}]\n\
         \x20 - route: body\n    policies: [{name: limits, version: 1.0.0, params: {requestsPerSecond: 1}}]\n\
         \x20 - route: body-disabled\n    policies: [{name: limits, version: 1.0.0, enabled: false, params: {requestsPerSecond: 1}}]\n",
    );
    let needs = |r: &str| snap.route(r).expect(r).needs();
    let h = needs("headers-only");
    assert!(!h.request_body && !h.response_headers && !h.response_body);
    let b = needs("both-phases");
    assert!(!b.request_body && b.response_headers && !b.response_body);
    assert!(needs("body").request_body);
    assert!(!needs("body-disabled").request_body);
}

#[test]
fn an_instance_with_nothing_to_do_in_a_phase_leaves_it_out() {
    let snap = snapshot(
        "version: v1\nroutes:\n\
         \x20 - route: request-only\n    policies: [{name: meta, version: 1.0.0, params: {key: k, value: v}}]\n\
         \x20 - route: both\n    policies: [{name: meta, version: 1.0.0, params: {key: k, header: x-k}}]\n",
    );
    let request_only = snap.route("request-only").expect("route");
    assert_eq!(request_only.request_steps().len(), 1);
    assert!(request_only.response_steps().is_empty());
    assert!(
        !request_only.needs().response_headers,
        "Envoy would send response headers for nothing"
    );
    assert!(snap.route("both").expect("route").needs().response_headers);
}

#[test]
fn unknown_routes_are_denied_unless_allowed_or_defaulted() {
    let base = "routes:\n  - route: known\n    policies: [{name: order, version: 1.0.0, params: {label: k}}]\n";
    let deny = snapshot(&format!("version: v1\n{base}"));
    assert!(deny.chain_for("other").is_none());
    assert_eq!(deny.chain_for("known").expect("known").route(), "known");

    let allow = snapshot(&format!(
        "version: v1\ndefaults: {{unknownRoute: allow}}\n{base}"
    ));
    let chain = allow.chain_for("other").expect("allowed");
    assert!(chain.request_steps().is_empty() && chain.response_steps().is_empty());

    let defaulted = snapshot(&format!(
        "version: v1\ndefaults: {{defaultRoute: known}}\n{base}"
    ));
    assert_eq!(
        defaulted.chain_for("other").expect("default").route(),
        "known"
    );
}

#[tokio::test]
async fn an_empty_chain_passes_the_request_unchanged() {
    let snap = snapshot("version: v1\nroutes:\n  - route: r\n    policies: []\n");
    let (decision, ctx) = run_request(&snap, get("/").with_header("a", "b")).await;
    assert!(matches!(decision, Decision::Continue));
    assert!(ctx.changes().is_empty());
}
