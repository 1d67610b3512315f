//! The Envoy module host through real Envoys, 1.36.2 and 1.40.0: the development module loaded
//! into Envoy's worker threads runs the same chains as the ext_proc engine, with the same answers.
//! Every scenario runs on both (`envoy_1_36::*`, `envoy_1_40::*`).

#![allow(
    clippy::disallowed_methods,
    reason = "waits on servers it started, on the test's own thread"
)]

use policy_test_support::envoy as support;
use policy_test_support::jwt;

use std::io::Write;
use std::time::{Duration, Instant};
use support::Request;
use support::module::{Abi, ModuleStack};
use support::traffic::Traffic;

/// Runs each scenario on Envoy 1.36 and on Envoy 1.40.
macro_rules! on_both_envoys {
    ($($scenario:ident),* $(,)?) => {
        mod envoy_1_36 {
            $(#[test]
            fn $scenario() {
                super::$scenario(super::Abi::V1_36);
            })*
        }
        mod envoy_1_40 {
            $(#[test]
            fn $scenario() {
                super::$scenario(super::Abi::V1_40);
            })*
        }
    };
}

on_both_envoys!(
    headers_change_both_ways_and_unknown_routes_are_denied,
    a_policy_answer_short_circuits_the_chain_and_metadata_reaches_the_response_phase,
    a_body_is_judged_whole_and_a_body_past_the_limit_is_refused,
    a_waiting_policy_resumes_the_stream_and_one_past_its_timeout_fails_closed,
    a_panicking_policy_is_a_500_with_an_error_id_and_envoy_keeps_serving,
    an_invalid_configuration_keeps_envoy_from_starting_and_names_the_problem,
    a_changed_file_is_reloaded_and_an_invalid_one_keeps_the_running_chains,
    a_jwks_fetch_that_ends_after_the_client_left_harms_nothing,
    reloads_under_load_fail_no_request,
    chains_are_counted_in_envoy_stats,
    the_policies_own_counters_reach_envoy_stats,
);

fn headers_change_both_ways_and_unknown_routes_are_denied(abi: Abi) {
    let stack = ModuleStack::start(
        abi,
        r#"
version: v1
routes:
  - route: public
    policies:
      - name: set-header
        version: 1.0.0
        params:
          request: {set: {x-team: platform}, remove: [x-internal]}
          response: {set: {x-served-by: policy-module}}
"#,
    );
    let reply = stack.send(Request::get("/public/items?q=1").header("x-internal", "secret"));
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.header("x-served-by"), Some("policy-module"));
    let seen = stack.upstream.last();
    assert_eq!(seen.path, "/public/items?q=1");
    assert_eq!(seen.header("x-team").as_deref(), Some("platform"));
    assert_eq!(seen.header("x-internal"), None);

    let before = stack.upstream.received().len();
    let reply = stack.send(Request::get("/elsewhere"));
    assert_eq!(reply.status, 403, "{}", reply.text());
    assert_eq!(reply.json()["error"], "route_not_configured");
    assert_eq!(
        stack.upstream.received().len(),
        before,
        "nothing reached upstream"
    );
    stack.wait_for_log("no policy chain for this route", Duration::from_secs(5));
}

fn a_policy_answer_short_circuits_the_chain_and_metadata_reaches_the_response_phase(abi: Abi) {
    let stack = ModuleStack::start(
        abi,
        r#"
version: v1
routes:
  - route: private
    policies:
      - {name: require-header, version: 1.0.0, params: {header: x-api-user}}
      - {name: quota, version: 1.0.0, params: {limit: 1}}
      - {name: meta-header, version: 1.0.0, params: {key: auth.user, header: x-user-seen}}
"#,
    );
    for _ in 0..2 {
        let reply = stack.send(Request::get("/private/data"));
        assert_eq!(reply.status, 401, "{}", reply.text());
        assert_eq!(reply.header("www-authenticate"), Some("ApiKey"));
    }
    // The two refused requests used none of the quota of one.
    let reply = stack.send(Request::get("/private/data").header("x-api-user", "alice"));
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.header("x-user-seen"), Some("alice"));
    let reply = stack.send(Request::get("/private/data").header("x-api-user", "alice"));
    assert_eq!(reply.status, 429, "{}", reply.text());
}

const BODY: &str = r#"
version: v1
routes:
  - route: body
    policies:
      - {name: body-rewrite, version: 1.0.0}
"#;

fn a_body_is_judged_whole_and_a_body_past_the_limit_is_refused(abi: Abi) {
    let stack = ModuleStack::start_on(abi, BODY, "maxBodyBytes: 100000");
    let reply = stack.send(Request::post(
        "/body/orders",
        br#"{"item": "book", "internal_id": 7}"#,
    ));
    assert_eq!(reply.status, 200, "{}", reply.text());
    let seen = stack.upstream.last();
    let body: serde_json::Value = serde_json::from_slice(&seen.body).expect("JSON upstream");
    assert_eq!(body, serde_json::json!({"item": "book", "rewritten": true}));
    assert_eq!(
        seen.header("content-length"),
        Some(seen.body.len().to_string())
    );

    let reply = stack.send(Request::post("/body/orders", br#"not json"#));
    assert_eq!(reply.status, 400, "{}", reply.text());

    // Arriving in many parts, judged and replaced whole.
    let pad = "x".repeat(60_000);
    let big = format!(r#"{{"pad": "{pad}", "internal_id": 7}}"#);
    let reply = stack.send(Request::post("/body/orders", big.as_bytes()));
    assert_eq!(reply.status, 200, "{}", reply.text());
    let seen = stack.upstream.last();
    let body: serde_json::Value = serde_json::from_slice(&seen.body).expect("JSON upstream");
    assert_eq!(body, serde_json::json!({"pad": pad, "rewritten": true}));

    let before = stack.upstream.received().len();
    let big = format!(r#"{{"pad": "{}"}}"#, "x".repeat(200_000));
    let reply = stack.send(Request::post("/body/orders", big.as_bytes()));
    assert_eq!(reply.status, 413, "{}", reply.text());
    assert!(reply.json()["errorId"].is_string(), "{}", reply.text());
    assert_eq!(
        stack.upstream.received().len(),
        before,
        "nothing reached upstream"
    );
}

fn a_waiting_policy_resumes_the_stream_and_one_past_its_timeout_fails_closed(abi: Abi) {
    let stack = ModuleStack::start(
        abi,
        r#"
version: v1
routes:
  - route: public
    policies:
      - {name: slow, version: 1.0.0, params: {ms: 50}}
  - route: private
    policies:
      - {name: slow, version: 1.0.0, params: {ms: 5000}}
defaults:
  policyTimeoutMs: 200
"#,
    );
    let reply = stack.send(Request::get("/public/a"));
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(
        stack.upstream.last().header("x-slow").as_deref(),
        Some("done")
    );

    let before = stack.upstream.received().len();
    let reply = stack.send(Request::get("/private/a"));
    assert_eq!(reply.status, 500, "{}", reply.text());
    assert_eq!(reply.json()["error"], "policy_error");
    assert_eq!(
        stack.upstream.received().len(),
        before,
        "nothing reached upstream"
    );
}

fn a_panicking_policy_is_a_500_with_an_error_id_and_envoy_keeps_serving(abi: Abi) {
    let stack = ModuleStack::start(
        abi,
        r#"
version: v1
routes:
  - route: fail
    policies:
      - {name: panic, version: 1.0.0}
  - route: short
    policies:
      - {name: panic, version: 1.0.0, params: {pending: true}}
  - route: public
    policies: []
"#,
    );
    for path in ["/fail/x", "/short/x"] {
        let reply = stack.send(Request::get(path));
        assert_eq!(reply.status, 500, "{path}: {}", reply.text());
        let id = reply.json()["errorId"]
            .as_str()
            .expect("an error id")
            .to_owned();
        let logs = stack.wait_for_log(&id, Duration::from_secs(5));
        assert!(logs.contains("policy panicked"), "{logs}");
    }
    let reply = stack.send(Request::get("/public/x"));
    assert_eq!(reply.status, 200, "{}", reply.text());
}

fn an_invalid_configuration_keeps_envoy_from_starting_and_names_the_problem(abi: Abi) {
    let scratch = support::Scratch::new();
    let routes = "version: v1\nroutes:\n  - route: public\n    policies:\n      - {name: no-such-policy, version: 1.0.0}\n";
    let Err(log) = ModuleStack::try_start(abi, scratch, routes) else {
        panic!("Envoy started with an unknown policy");
    };
    assert!(log.contains("no-such-policy"), "{log}");
    assert!(log.contains("configuration refused"), "{log}");
}

fn a_changed_file_is_reloaded_and_an_invalid_one_keeps_the_running_chains(abi: Abi) {
    let stack = ModuleStack::start(
        abi,
        r#"
version: v1
routes:
  - route: public
    policies:
      - {name: set-header, version: 1.0.0, params: {request: {set: {x-gen: "1"}}}}
"#,
    );
    let reply = stack.send(Request::get("/public/a"));
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(stack.upstream.last().header("x-gen").as_deref(), Some("1"));

    stack.write_config(
        r#"
version: v1
routes:
  - route: public
    policies:
      - {name: set-header, version: 1.0.0, params: {request: {set: {x-gen: "2"}}}}
      - {name: set-header, version: 1.0.0, params: {response: {set: {x-gen: "2"}}}}
"#,
    );
    stack.wait_for_log("instances=2", Duration::from_secs(10));
    let reply = stack.send(Request::get("/public/a"));
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(stack.upstream.last().header("x-gen").as_deref(), Some("2"));

    stack.write_config(
        "version: v1\nroutes: [{route: public, policies: [{name: nope, version: 1.0.0}]}]\n",
    );
    stack.wait_for_log("configuration rejected", Duration::from_secs(10));
    let reply = stack.send(Request::get("/public/a"));
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(stack.upstream.last().header("x-gen").as_deref(), Some("2"));
}

fn a_jwks_fetch_that_ends_after_the_client_left_harms_nothing(abi: Abi) {
    let server = jwt::JwksServer::start(serde_json::json!({"keys": [jwt::jwk("rsa", "rsa-1")]}));
    let stack = ModuleStack::start(
        abi,
        &format!(
            "version: v1\nroutes:\n  - route: private\n    policies:\n      - name: jwt-validation\n        version: 1.0.0\n        timeoutMs: 5000\n        params: {{issuer: \"{}\", audiences: [{}], jwksUrl: \"{}\", cache: {{minRefreshIntervalSeconds: 0, fetchTimeoutMs: 5000}}}}\n",
            jwt::ISSUER,
            jwt::AUDIENCE,
            server.url
        ),
    );
    let bearer = |key: &str, kid: &str| {
        format!(
            "Bearer {}",
            jwt::token(key, kid, &jwt::claims(serde_json::json!({"sub": "bob"})))
        )
    };
    let rsa = bearer("rsa", "rsa-1");
    let deadline = Instant::now() + Duration::from_secs(10);
    while stack
        .send(Request::get("/private/x").header("authorization", &rsa))
        .status
        != 200
    {
        assert!(Instant::now() < deadline, "the first fetch never ended");
        std::thread::sleep(Duration::from_millis(50));
    }

    // A new key behind a slow endpoint: the request that needs it waits on the module's
    // runtime while the client goes away.
    *server.set.lock().expect("set") =
        serde_json::json!({"keys": [jwt::jwk("rsa", "rsa-1"), jwt::jwk("ec", "ec-1")]});
    server
        .delay_ms
        .store(1000, std::sync::atomic::Ordering::SeqCst);
    let fetches = server.fetches();
    let ec = bearer("ec", "ec-1");
    let mut client = std::net::TcpStream::connect(("127.0.0.1", stack.port)).expect("connect");
    write!(
        client,
        "GET /private/x HTTP/1.1\r\nhost: test\r\nauthorization: {ec}\r\n\r\n"
    )
    .expect("send");
    let deadline = Instant::now() + Duration::from_secs(10);
    while server.fetches() == fetches {
        assert!(Instant::now() < deadline, "the refresh never started");
        std::thread::sleep(Duration::from_millis(10));
    }
    drop(client);
    stack.wait_for_log("a running chain's decision", Duration::from_secs(10));

    // The fetch ends on the runtime and wakes a stream Envoy has forgotten: nothing breaks, and
    // the key it fetched serves the next request.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let reply = stack.send(Request::get("/private/x").header("authorization", &ec));
        if reply.status == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "Envoy stopped serving after the abandoned stream: {} {}",
            reply.status,
            reply.text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
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

fn reloads_under_load_fail_no_request(abi: Abi) {
    let stack = ModuleStack::start(abi, &generated(0, 1));
    let traffic = Traffic::start(stack.port, "/public/tick", 4);
    traffic.wait_for_config("1");
    // 1,000 routes in, then every one of their entries changed, while requests flow.
    stack.write_config(&generated(1000, 2));
    traffic.wait_for_config("2");
    stack.write_config(&generated(1000, 3));
    traffic.wait_for_config("3");
    traffic.wait_for(50);
    let results = traffic.stop();
    let failed: Vec<_> = results
        .iter()
        .filter(|(status, _)| *status != 200)
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed during reloads: {:?}",
        failed.len(),
        results.len(),
        &failed[..failed.len().min(5)]
    );
}

fn chains_are_counted_in_envoy_stats(abi: Abi) {
    let stack = ModuleStack::start_on(
        abi,
        "version: v1\nroutes:\n  - route: public\n    policies:\n      - {name: set-header, version: 1.0.0, params: {request: {set: {x-a: \"1\"}}}}\n",
        "policyStatsIntervalMs: 0",
    );
    for _ in 0..2 {
        assert_eq!(stack.send(Request::get("/public/x")).status, 200);
    }
    assert_eq!(stack.send(Request::get("/elsewhere")).status, 403);
    let stats = stack.envoy_admin("/stats?filter=policy_");
    for line in [
        "dynamicmodulescustom.policy_requests.route.public.phase.request.outcome.continue.status.none: 2",
        "dynamicmodulescustom.policy_requests.route.(unknown).phase.request.outcome.error.status.403: 1",
        "dynamicmodulescustom.policy_refusals.route.(unknown).reason.unknown_route: 1",
    ] {
        assert!(stats.lines().any(|l| l == line), "{line} in:\n{stats}");
    }
    // Histograms reach the admin API at Envoy's next stats flush; the series exists at once.
    assert!(
        stats.contains("dynamicmodulescustom.policy_chain_duration_us.route.public.phase.request"),
        "{stats}"
    );
    let prometheus = stack.envoy_admin("/stats/prometheus");
    let series =
        r#"policy_requests{route="public",phase="request",outcome="continue",status="none"} 2"#;
    // 1.36 names it `policy_requests`, 1.40 `envoy_dynamicmodulescustom_policy_requests`.
    assert!(
        prometheus.lines().any(|l| l.ends_with(series)),
        "{prometheus}"
    );
}

fn the_policies_own_counters_reach_envoy_stats(abi: Abi) {
    let stack = ModuleStack::start_on(
        abi,
        r#"
version: v1
routes:
  - route: body
    policies:
      - {name: llm-token-budget, version: 1.0.0, params: {tokens: 1000, window: day}}
"#,
        "policyStatsIntervalMs: 0",
    );
    let answer = br#"{"model": "m", "usage": {"total_tokens": 40}}"#;
    for _ in 0..2 {
        let reply = stack.send(
            Request::post("/body/v1/chat/completions", answer)
                .header("content-type", "application/json")
                .header("x-echo-raw", "1"),
        );
        assert_eq!(reply.status, 200, "{}", reply.text());
    }
    let stats = stack.envoy_admin("/stats?filter=policy_counter");
    let line = "dynamicmodulescustom.policy_counter.name.llm_tokens: 80";
    assert!(stats.lines().any(|l| l == line), "{line} in:\n{stats}");
}
