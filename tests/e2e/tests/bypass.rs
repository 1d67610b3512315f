//! Never walked around: every path a request or response can take through a real Envoy is
//! either judged by its route's chain or refused, logged and counted.

#![allow(
    clippy::disallowed_methods,
    reason = "waits on servers it started, on the test's own thread"
)]

use policy_test_support::envoy as support;
use policy_test_support::jwt;

use std::io::{BufReader, Write};
use std::net::TcpStream;
use std::time::Duration;
use support::host::Kind;
use support::http::read_message;
use support::{EnvoyOptions, Request, Stack};

// The fail-closed paths that are not about ext_proc's own protocol, on every host; the tests
// below are the engine's (processing modes, message limits, its metrics endpoint).
policy_test_support::on_every_host!(condition_errors_follow_on_condition_error);

/// The engine's body limit in these tests; bodies are sent at 3x and 20x of it (20x is past
/// the gRPC decode limit, `limit + 1 MiB`).
const LIMIT: usize = 64 * 1024;

const BODY_CHAINS: &str = r#"version: v1
routes:
  - route: body
    policies:
      - {name: body-rewrite, version: 1.0.0}
  - route: private
    policies:
      - {name: require-header, version: 1.0.0, params: {header: x-user}}
  - route: meta
    policies:
      - {name: meta-header, version: 1.0.0, params: {key: k, set: seen, header: x-meta}}
  - route: public
    policies: []
"#;

/// Envoy buffers far more than the engine accepts, so the engine's limit is what is tested.
fn big_buffers() -> EnvoyOptions {
    EnvoyOptions {
        buffer_limit_bytes: Some(64 * 1024 * 1024),
        ..EnvoyOptions::default()
    }
}

/// The start of a reply's body, for assertion messages (bodies here can be megabytes).
fn head(reply: &support::Reply) -> String {
    reply.text().chars().take(200).collect()
}

/// The value of one series of the engine's `/metrics`, 0 when absent.
fn metric(stack: &Stack, series: &str) -> u64 {
    stack
        .admin(Request::get("/metrics"))
        .text()
        .lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn bodies_past_the_limit_are_refused_in_both_directions_at_any_size() {
    let limit = LIMIT.to_string();
    let stack = Stack::start_with_envoy(BODY_CHAINS, &["--max-body-bytes", &limit], &big_buffers());
    for times in [3, 20] {
        let body = vec![b'x'; LIMIT * times];
        let reply = stack.send(Request::post("/body/up", &body));
        assert_eq!(reply.status, 413, "{times}x the limit: {}", head(&reply));
        assert_eq!(reply.json()["error"], "payload_too_large");
    }
    assert!(
        stack.upstream.received().is_empty(),
        "no oversized request reached the upstream"
    );
    for times in [3, 20] {
        let size = (LIMIT * times).to_string();
        let reply = stack.send(Request::post("/body/down", b"{}").header("x-echo-size", &size));
        assert_eq!(reply.status, 502, "{times}x the limit: {}", head(&reply));
        let body = reply.json();
        assert_eq!(body["error"], "upstream_response_refused");
        assert!(body["errorId"].as_str().is_some_and(|id| !id.is_empty()));
        assert!(
            !reply.text().contains("aaaa"),
            "none of the response passed"
        );
    }
    // Within the limit both directions still work.
    let reply = stack.send(Request::post("/body/ok", br#"{"a":1}"#));
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(
        metric(
            &stack,
            "policy_engine_refusals_total{route=\"body\",reason=\"body_too_large\"}"
        ),
        4
    );
    let logs = stack.engine_logs();
    assert_eq!(
        logs.matches("body larger than the engine's limit: refused")
            .count(),
        4,
        "each refusal is a log line: {logs}"
    );
    assert!(logs.contains("request_id"), "{logs}");
}

#[test]
fn without_mode_override_every_chain_still_runs() {
    let envoy = EnvoyOptions {
        allow_mode_override: false,
        ..EnvoyOptions::default()
    };
    let stack = Stack::start_with_envoy(BODY_CHAINS, &[], &envoy);

    // Request policies of a body chain run on the body; the response body is judged too.
    let reply = stack.send(Request::post(
        "/body/orders",
        br#"{"id":1,"internal_id":7}"#,
    ));
    assert_eq!(reply.status, 200, "{}", reply.text());
    let seen: serde_json::Value =
        serde_json::from_slice(&stack.upstream.last().body).expect("JSON upstream");
    assert_eq!(seen, serde_json::json!({"id": 1, "rewritten": true}));
    assert!(reply.json()["wrapped"].is_string(), "{}", reply.text());

    // Header-only chains run on the headers; the bodies Envoy still sends are acknowledged.
    let reply = stack.send(Request::post("/private/x", b"payload"));
    assert_eq!(reply.status, 401);
    let reply = stack.send(Request::post("/private/x", b"payload").header("x-user", "ada"));
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(stack.upstream.last().body, b"payload");

    // Response-phase policies run although the override asking for them was not honoured.
    let reply = stack.send(Request::get("/meta/x"));
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("x-meta"), Some("seen"));
}

#[test]
fn an_envoy_that_does_not_send_a_needed_body_gets_refusals_not_passes() {
    // The old minimal filter configuration with the override ignored.
    let envoy = EnvoyOptions {
        allow_mode_override: false,
        response_header_mode: "SKIP",
        request_body_mode: "NONE",
        response_body_mode: "NONE",
        buffer_limit_bytes: None,
    };
    let stack = Stack::start_with_envoy(BODY_CHAINS, &[], &envoy);
    let reply = stack.send(Request::post("/body/orders", br#"{"id":1}"#));
    assert_eq!(reply.status, 500, "{}", reply.text());
    assert!(
        stack.upstream.received().is_empty(),
        "the request never reached the upstream unjudged"
    );
    stack.wait_for_log("does not send it: refused", Duration::from_secs(5));
    assert_eq!(
        metric(
            &stack,
            "policy_engine_refusals_total{route=\"body\",reason=\"body_not_sent\"}"
        ),
        1
    );
    // A response phase Envoy never sends is at least logged and counted.
    let reply = stack.send(Request::get("/meta/x"));
    assert_eq!(reply.status, 200);
    stack.wait_for_log(
        "the ext_proc stream ended before the chain saw everything",
        Duration::from_secs(5),
    );
    assert!(
        metric(
            &stack,
            "policy_engine_refusals_total{route=\"meta\",reason=\"stream_incomplete\"}"
        ) >= 1
    );
}

/// Sends a chunked POST in `parts`, pausing between them, and reads the answer.
fn send_chunked(port: u16, path: &str, parts: &[&[u8]]) -> support::Reply {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to Envoy");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: e2e.test\r\nconnection: close\r\ntransfer-encoding: chunked\r\ncontent-type: application/json\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).expect("send the head");
    for part in parts {
        stream
            .write_all(format!("{:x}\r\n", part.len()).as_bytes())
            .and_then(|()| stream.write_all(part))
            .and_then(|()| stream.write_all(b"\r\n"))
            .and_then(|()| stream.flush())
            .expect("send a part");
        std::thread::sleep(Duration::from_millis(50));
    }
    stream.write_all(b"0\r\n\r\n").expect("end the body");
    let message = read_message(&mut BufReader::new(stream))
        .expect("read the answer")
        .expect("an answer");
    support::Reply {
        status: message
            .start
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .expect("a status"),
        headers: message.headers,
        body: message.body,
    }
}

#[test]
fn a_streamed_body_is_judged_whole_never_on_its_first_part() {
    let envoy = EnvoyOptions {
        allow_mode_override: false,
        request_body_mode: "STREAMED",
        ..EnvoyOptions::default()
    };
    let stack = Stack::start_with_envoy(BODY_CHAINS, &[], &envoy);
    let reply = send_chunked(
        stack.port,
        "/body/streamed",
        &[b"{\"a\":", b"1,\"internal_id\":7,", b"\"b\":2}"],
    );
    assert_eq!(reply.status, 200, "{}", reply.text());
    let seen: serde_json::Value =
        serde_json::from_slice(&stack.upstream.last().body).expect("JSON upstream");
    assert_eq!(
        seen,
        serde_json::json!({"a": 1, "b": 2, "rewritten": true}),
        "the chain saw every part"
    );
    // Parts past the limit are refused, never forwarded.
    let limit = 1024;
    let stack = Stack::start_with_envoy(BODY_CHAINS, &["--max-body-bytes", "1024"], &envoy);
    let part = vec![b' '; limit / 2];
    let reply = send_chunked(
        stack.port,
        "/body/streamed",
        &[b"{", &part, &part, &part, b"}"],
    );
    assert_eq!(reply.status, 413, "{}", reply.text());
    assert!(
        stack
            .upstream
            .received()
            .iter()
            .all(|r| r.body.len() < limit),
        "no body past the limit reached the upstream"
    );
}

#[test]
fn a_partial_buffer_is_refused_not_judged() {
    let envoy = EnvoyOptions {
        allow_mode_override: false,
        request_body_mode: "BUFFERED_PARTIAL",
        buffer_limit_bytes: Some(16 * 1024),
        ..EnvoyOptions::default()
    };
    let stack = Stack::start_with_envoy(BODY_CHAINS, &[], &envoy);
    let mut big = b"{\"pad\":\"".to_vec();
    big.extend(std::iter::repeat_n(b'p', 64 * 1024));
    big.extend_from_slice(b"\"}");
    let reply = stack.send(Request::post("/body/partial", &big));
    assert_eq!(reply.status, 413, "{}", reply.text());
    assert!(
        stack.upstream.received().is_empty(),
        "the unjudged rest never reached the upstream"
    );
    // A body that fits Envoy's buffer is whole, and judged.
    let reply = stack.send(Request::post("/body/partial", br#"{"a":1}"#));
    assert_eq!(reply.status, 200, "{}", reply.text());
}

#[test]
fn a_panicking_policy_is_a_failure_with_an_error_id_and_the_engine_keeps_serving() {
    let stack = Stack::start(
        r#"version: v1
routes:
  - route: fail
    policies:
      - {name: panic, version: 1.0.0}
  - route: short
    policies:
      - {name: panic, version: 1.0.0, params: {pending: true}, onFailure: continue}
      - {name: set-header, version: 1.0.0, params: {request: {set: {x-after: ran}}}}
  - route: public
    policies: []
"#,
    );
    for _ in 0..2 {
        let reply = stack.send(Request::get("/fail/x"));
        assert_eq!(reply.status, 500, "{}", reply.text());
        let body = reply.json();
        assert_eq!(body["error"], "policy_error");
        let id = body["errorId"].as_str().expect("an error id").to_owned();
        let logs = stack.wait_for_log("policy panicked", Duration::from_secs(5));
        assert!(
            logs.lines()
                .any(|l| l.contains("policy panicked") && l.contains("request_id")),
            "{logs}"
        );
        assert!(logs.contains(&id), "the error id is in the log: {logs}");
    }
    let reply = stack.send(Request::get("/short/x"));
    assert_eq!(reply.status, 200, "onFailure: continue: {}", reply.text());
    assert_eq!(
        stack.upstream.last().header("x-after").as_deref(),
        Some("ran")
    );
    assert_eq!(stack.send(Request::get("/public/x")).status, 200);
    assert_eq!(
        metric(
            &stack,
            "policy_engine_policy_panics_total{policy=\"panic:1.0.0\"}"
        ),
        3
    );
}

#[test]
fn header_values_that_are_not_utf8_pass_untouched() {
    let stack = Stack::start(
        r#"version: v1
routes:
  - route: public
    policies:
      - {name: set-header, version: 1.0.0, params: {request: {set: {x-added: "on"}}}}
"#,
    );
    let mut stream = TcpStream::connect(("127.0.0.1", stack.port)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut head =
        b"GET /public/raw HTTP/1.1\r\nhost: e2e.test\r\nconnection: close\r\nx-raw: caf".to_vec();
    head.extend_from_slice(&[0xe9, 0xff]);
    head.extend_from_slice(b"\r\n\r\n");
    stream.write_all(&head).expect("send");
    let reply = read_message(&mut BufReader::new(stream))
        .expect("read")
        .expect("an answer");
    assert!(
        reply.start.contains(" 200 "),
        "{}\n{}\n{}",
        reply.start,
        String::from_utf8_lossy(&reply.body),
        stack.engine_logs()
    );
    let seen = stack.upstream.last();
    // The harness reads bytes as Latin-1: 0xe9 0xff arrive as "éÿ".
    assert_eq!(seen.header("x-raw").as_deref(), Some("caféÿ"));
    assert_eq!(seen.header("x-added").as_deref(), Some("on"));
}

fn condition_errors_follow_on_condition_error(kind: Kind) {
    let stack = kind.start(
        r#"version: v1
routes:
  - route: private
    policies:
      - name: require-header
        version: 1.0.0
        params: {header: x-user}
        condition: 'request.headers["x-tenant"] != "internal"'
        onConditionError: run
  - route: cel
    policies:
      - name: require-header
        version: 1.0.0
        params: {header: x-user}
        condition: 'request.headers["x-tenant"] != "internal"'
        onConditionError: deny
  - route: public
    policies:
      - name: require-header
        version: 1.0.0
        params: {header: x-user}
        condition: 'request.headers["x-tenant"] != "internal"'
"#,
    );
    // No x-tenant header: the condition fails at run time.
    assert_eq!(stack.send(Request::get("/private/x")).status, 401, "run");
    let reply = stack.send(Request::get("/cel/x"));
    assert_eq!(reply.status, 500, "deny: {}", reply.text());
    assert_eq!(reply.json()["error"], "policy_error");
    assert_eq!(
        stack.send(Request::get("/public/x")).status,
        200,
        "skip (the default) skips the policy"
    );
    // With the header the condition decides.
    let reply = stack.send(Request::get("/cel/x").header("x-tenant", "acme"));
    assert_eq!(reply.status, 401);
    // The engine's own counter (the module does not export per-policy series yet).
    for (route, engine) in ["private", "cel", "public"]
        .into_iter()
        .filter_map(|route| Some((route, stack.engine()?)))
    {
        assert_eq!(
            metric(
                engine,
                &format!(
                    "policy_engine_condition_errors_total{{route=\"{route}\",policy=\"require-header:1.0.0\"}}"
                )
            ),
            1,
            "{route}"
        );
    }
    stack.wait_for_log("the condition reads a header", Duration::from_secs(5));
}

#[test]
fn metrics_can_be_scraped_without_exposing_the_configuration() {
    let stack = Stack::start_with(
        Some(
            "version: v1\nroutes:\n  - route: public\n    policies:\n      - {name: require-header, version: 1.0.0, params: {header: x-user}}\n",
        ),
        &["--metrics-listen", "127.0.0.1:0"],
    );
    assert_eq!(stack.send(Request::get("/public/x")).status, 401);
    let port = stack
        .engine_metrics_port
        .expect("the engine announced its metrics listener");
    let get = |path| {
        Request::get(path)
            .send(port)
            .unwrap_or_else(|e| panic!("GET {path}: {e}"))
    };
    let metrics = get("/metrics");
    assert_eq!(metrics.status, 200);
    assert!(
        metrics
            .text()
            .contains("policy_engine_requests_total{route=\"public\""),
        "{}",
        metrics.text()
    );
    assert_eq!(get("/health/ready").status, 200);
    for hidden in ["/config", "/policies", "/build-info"] {
        assert_eq!(
            get(hidden).status,
            404,
            "{hidden} is not on the metrics listener"
        );
    }
    // The full admin API is still where it was.
    assert_eq!(stack.admin(Request::get("/config")).status, 200);
}

#[test]
fn many_held_bodies_cannot_exhaust_memory() {
    let envoy = EnvoyOptions {
        allow_mode_override: false,
        request_body_mode: "STREAMED",
        ..EnvoyOptions::default()
    };
    let stack = Stack::start_with_envoy(
        BODY_CHAINS,
        &[
            "--max-body-bytes",
            "65536",
            "--max-buffered-body-bytes",
            "80000",
        ],
        &envoy,
    );
    // A holds 60,000 bytes in the engine: its body has not ended.
    let mut a = TcpStream::connect(("127.0.0.1", stack.port)).expect("connect");
    a.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut first = b"{\"pad\":\"".to_vec();
    first.extend(std::iter::repeat_n(b'p', 60_000 - first.len()));
    a.write_all(
        b"POST /body/a HTTP/1.1\r\nhost: e2e.test\r\nconnection: close\r\ntransfer-encoding: chunked\r\n\r\n",
    )
    .and_then(|()| a.write_all(format!("{:x}\r\n", first.len()).as_bytes()))
    .and_then(|()| a.write_all(&first))
    .and_then(|()| a.write_all(b"\r\n"))
    .expect("send A's first part");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while metric(&stack, "policy_engine_buffered_body_bytes") < 60_000 {
        assert!(
            std::time::Instant::now() < deadline,
            "the engine never held A's part"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // B would pass the budget: 503, counted, never forwarded whole.
    let b = vec![b' '; 30_000];
    let reply = stack.send(Request::post("/body/b", &b));
    assert_eq!(reply.status, 503, "{}", reply.text());
    assert_eq!(reply.json()["error"], "overloaded");
    assert_eq!(
        metric(
            &stack,
            "policy_engine_refusals_total{route=\"body\",reason=\"body_budget\"}"
        ),
        1
    );
    // A completes within the budget.
    a.write_all(b"2\r\n\"}\r\n0\r\n\r\n").expect("end A");
    let reply = read_message(&mut BufReader::new(a))
        .expect("read A's answer")
        .expect("an answer");
    assert!(reply.start.contains(" 200 "), "{}", reply.start);
    assert_eq!(metric(&stack, "policy_engine_buffered_body_bytes"), 0);
}

#[test]
fn a_cancelled_jwks_refresh_never_blocks_later_requests() {
    let server = jwt::JwksServer::start(serde_json::json!({"keys": [jwt::jwk("rsa", "rsa-1")]}));
    let stack = Stack::start(&format!(
        "version: v1\nroutes:\n  - route: private\n    policies:\n      - name: jwt-validation\n        version: 1.0.0\n        timeoutMs: 300\n        params: {{issuer: \"{}\", audiences: [{}], jwksUrl: \"{}\", cache: {{minRefreshIntervalSeconds: 0, fetchTimeoutMs: 5000}}}}\n",
        jwt::ISSUER,
        jwt::AUDIENCE,
        server.url
    ));
    let bearer = |key: &str, kid: &str| {
        format!(
            "Bearer {}",
            jwt::token(key, kid, &jwt::claims(serde_json::json!({"sub": "bob"})))
        )
    };
    let rsa = bearer("rsa", "rsa-1");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while stack
        .send(Request::get("/private/x").header("authorization", &rsa))
        .status
        != 200
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the first fetch never ended"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // The issuer rotates to a new key behind a slow endpoint: the request that starts the
    // refresh times out (the policy's 300 ms), dropping its lookup mid-fetch.
    *server.set.lock().expect("set") =
        serde_json::json!({"keys": [jwt::jwk("rsa", "rsa-1"), jwt::jwk("ec", "ec-1")]});
    server
        .delay_ms
        .store(1000, std::sync::atomic::Ordering::SeqCst);
    let ec = bearer("ec", "ec-1");
    let reply = stack.send(Request::get("/private/x").header("authorization", &ec));
    assert_eq!(reply.status, 500, "timed out: {}", reply.text());
    stack.wait_for_log("timed out", Duration::from_secs(5));

    // The fetch finishes on its own and later requests get the new key (before the fix, every
    // later request waited on the abandoned fetch until it timed out).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let reply = stack.send(Request::get("/private/x").header("authorization", &ec));
        if reply.status == 200 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "requests after a cancelled refresh never recovered: {} {}",
            reply.status,
            reply.text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        stack
            .send(Request::get("/private/x").header("authorization", &rsa))
            .status,
        200
    );
}
