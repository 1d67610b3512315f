//! End-to-end scenarios: a real Envoy 1.36.2 calls the development engine over ext_proc and
//! forwards to an echo upstream; the scenarios that are not about ext_proc also run through the
//! Envoy module on Envoy 1.36 and 1.40.

#![allow(
    clippy::disallowed_methods,
    reason = "waits on servers it started, on the test's own thread"
)]

use policy_test_support::envoy as support;

use support::host::Kind;
use support::traffic::Traffic;
use support::{Request, Stack};

// The scenarios every host runs; the tests below them are the ext_proc engine's own (its
// processing modes, readiness, file reload signals, Unix socket).
policy_test_support::on_every_host!(
    public_route_reaches_upstream_with_headers_added,
    private_route_rejects_without_credentials_and_the_rate_limiter_never_runs,
    short_circuit_never_reaches_upstream,
    cel_conditions_select_policies_by_path_method_and_metadata,
    body_chains_rewrite_request_and_response_bodies_and_status,
    metadata_set_in_the_request_phase_is_read_in_the_response_phase,
    a_failing_policy_denies_with_an_error_id_that_is_in_the_logs,
    unknown_routes_fail_closed_unless_configured_otherwise,
    bodies_over_the_limit_get_413,
    path_and_method_changes_reach_upstream,
);

fn public_route_reaches_upstream_with_headers_added(kind: Kind) {
    let stack = kind.start(
        r#"
version: v1
routes:
  - route: public
    policies:
      - name: set-header
        version: 1.0.0
        params:
          request: {set: {x-team: platform}, remove: [x-internal]}
          response: {set: {x-served-by: policy-engine}}
"#,
    );
    let reply = stack.send(Request::get("/public/items?q=1").header("x-internal", "secret"));
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.header("x-served-by"), Some("policy-engine"));
    let seen = stack.upstream().last();
    assert_eq!(seen.path, "/public/items?q=1");
    assert_eq!(seen.header("x-team").as_deref(), Some("platform"));
    assert_eq!(seen.header("x-internal"), None);
}

const PRIVATE: &str = r#"
version: v1
routes:
  - route: private
    policies:
      - {name: require-header, version: 1.0.0, params: {header: x-api-user}}
      - {name: quota, version: 1.0.0, params: {limit: 2}}
"#;

fn private_route_rejects_without_credentials_and_the_rate_limiter_never_runs(kind: Kind) {
    let stack = kind.start(PRIVATE);
    for _ in 0..3 {
        let reply = stack.send(Request::get("/private/data"));
        assert_eq!(reply.status, 401, "{}", reply.text());
        assert_eq!(reply.header("www-authenticate"), Some("ApiKey"));
        assert_eq!(reply.json()["error"], "unauthenticated");
    }
    // Three rejected requests consumed none of the quota of two.
    for used in ["1", "2"] {
        let reply = stack.send(Request::get("/private/data").header("x-api-user", "alice"));
        assert_eq!(reply.status, 200, "{}", reply.text());
        assert_eq!(
            stack.upstream().last().header("x-quota-used").as_deref(),
            Some(used)
        );
    }
    let reply = stack.send(Request::get("/private/data").header("x-api-user", "alice"));
    assert_eq!(reply.status, 429, "{}", reply.text());
    assert_eq!(stack.upstream().received().len(), 2);
}

fn short_circuit_never_reaches_upstream(kind: Kind) {
    let stack = kind.start(PRIVATE);
    let reply = stack.send(Request::post("/private/orders", b"{\"n\":1}"));
    assert_eq!(reply.status, 401);
    assert_eq!(
        reply.header("content-type"),
        Some("application/json"),
        "immediate responses keep their headers"
    );
    assert!(
        stack.upstream().received().is_empty(),
        "the upstream received {:?}",
        stack.upstream().received()
    );
}

fn cel_conditions_select_policies_by_path_method_and_metadata(kind: Kind) {
    let stack = kind.start(
        r#"
version: v1
routes:
  - route: cel
    policies:
      - name: set-header
        version: 1.0.0
        condition: request.method == "POST"
        params: {request: {set: {x-post: "yes"}}}
      - name: set-header
        version: 1.0.0
        condition: request.url_path.startsWith("/cel/admin")
        params: {request: {set: {x-admin: "yes"}}}
      - name: meta-header
        version: 1.0.0
        condition: '"x-beta" in request.headers'
        params: {key: beta, set: "on", header: x-beta-seen}
      - name: set-header
        version: 1.0.0
        condition: '"beta" in metadata && metadata["beta"] == "on"'
        params: {request: {set: {x-beta-features: enabled}}}
"#,
    );
    let cases: [(Request<'_>, [Option<&str>; 3]); 4] = [
        (Request::get("/cel/items"), [None, None, None]),
        (
            Request::post("/cel/items", b"{}"),
            [Some("yes"), None, None],
        ),
        (Request::get("/cel/admin/users"), [None, Some("yes"), None]),
        (
            Request::get("/cel/items").header("x-beta", "1"),
            [None, None, Some("enabled")],
        ),
    ];
    for (request, [post, admin, beta]) in cases {
        let reply = stack.send(request);
        assert_eq!(reply.status, 200, "{}", reply.text());
        let seen = stack.upstream().last();
        let what = format!("{} {}", seen.method, seen.path);
        assert_eq!(seen.header("x-post").as_deref(), post, "{what}");
        assert_eq!(seen.header("x-admin").as_deref(), admin, "{what}");
        assert_eq!(seen.header("x-beta-features").as_deref(), beta, "{what}");
    }
}

#[test]
fn header_only_chains_never_send_bodies_to_the_engine() {
    let stack = Stack::start(
        r#"
version: v1
routes:
  - route: public
    policies:
      - {name: set-header, version: 1.0.0, params: {request: {set: {x-checked: "1"}}}}
"#,
    );
    let sent = "http.e2e.ext_proc.stream_msgs_sent";
    let before = stack.envoy_counter(sent);
    let body = br#"{"payload":"left alone","internal_id":7}"#;
    let reply = stack.send(Request::post("/public/upload", body));
    assert_eq!(reply.status, 200, "{}", reply.text());
    let seen = stack.upstream.last();
    assert_eq!(seen.body, body, "the body reaches upstream untouched");
    assert_eq!(seen.header("content-length"), Some(body.len().to_string()));
    assert_eq!(seen.header("x-checked").as_deref(), Some("1"));
    assert_eq!(
        stack.envoy_counter(sent) - before,
        1,
        "Envoy sent the request headers only: no body, no response phase"
    );
}

fn body_chains_rewrite_request_and_response_bodies_and_status(kind: Kind) {
    let stack = kind.start(
        r#"
version: v1
routes:
  - route: body
    policies:
      - {name: body-rewrite, version: 1.0.0, params: {status: 201}}
"#,
    );
    let sent = "http.e2e.ext_proc.stream_msgs_sent";
    let before = stack.envoy_counter(sent);
    let reply = stack.send(Request::post(
        "/body/orders",
        br#"{"item":"book","internal_id":"db-42"}"#,
    ));
    assert_eq!(reply.status, 201, "{}", reply.text());
    let seen = stack.upstream().last();
    let upstream_body: serde_json::Value =
        serde_json::from_slice(&seen.body).expect("the upstream got JSON");
    assert_eq!(
        upstream_body,
        serde_json::json!({"item": "book", "rewritten": true})
    );
    assert_eq!(
        seen.header("content-length"),
        Some(seen.body.len().to_string()),
        "content-length matches the rewritten body"
    );
    // The response body is the echo of the upstream, wrapped by the policy.
    let wrapped = reply.json();
    let echo: serde_json::Value = serde_json::from_str(
        wrapped["wrapped"]
            .as_str()
            .expect("the response body was wrapped"),
    )
    .expect("the wrapped body is the upstream's JSON");
    assert_eq!(echo["path"], "/body/orders");
    assert_eq!(
        reply.header("content-length"),
        Some(reply.body.len().to_string().as_str())
    );
    if kind == Kind::Engine {
        assert_eq!(
            stack.envoy_counter(sent) - before,
            4,
            "request headers, request body, response headers, response body"
        );
    }

    let reply = stack.send(Request::post("/body/orders", b"not json"));
    assert_eq!(reply.status, 400, "{}", reply.text());
}

fn metadata_set_in_the_request_phase_is_read_in_the_response_phase(kind: Kind) {
    let stack = kind.start(
        r#"
version: v1
routes:
  - route: meta
    policies:
      - {name: require-header, version: 1.0.0, params: {header: x-api-user}}
      - {name: meta-header, version: 1.0.0, params: {key: auth.user, header: x-authenticated-user}}
"#,
    );
    for user in ["alice", "bob"] {
        let reply = stack.send(Request::get("/meta/whoami").header("x-api-user", user));
        assert_eq!(reply.status, 200, "{}", reply.text());
        assert_eq!(reply.header("x-authenticated-user"), Some(user));
    }
}

fn a_failing_policy_denies_with_an_error_id_that_is_in_the_logs(kind: Kind) {
    let stack = kind.start(
        r#"
version: v1
routes:
  - route: fail
    policies:
      - {name: fail, version: 1.0.0, onFailure: deny}
  - route: public
    policies:
      - {name: fail, version: 1.0.0, onFailure: continue}
      - {name: set-header, version: 1.0.0, params: {request: {set: {x-after-failure: "1"}}}}
"#,
    );
    let reply = stack.send(Request::get("/fail/now"));
    assert_eq!(reply.status, 500, "{}", reply.text());
    let body = reply.json();
    assert_eq!(body["error"], "policy_error");
    assert!(
        !reply.text().contains("unreachable"),
        "no internals in the body"
    );
    let id = body["errorId"].as_str().expect("an error id").to_owned();
    let logs = stack.wait_for_log(&id, std::time::Duration::from_secs(5));
    assert!(
        logs.lines()
            .any(|l| l.contains(&id) && l.contains("the test backend is unreachable")),
        "{logs}"
    );
    assert!(stack.upstream().received().is_empty());

    let reply = stack.send(Request::get("/public/after"));
    assert_eq!(reply.status, 200, "onFailure: continue: {}", reply.text());
    assert_eq!(
        stack.upstream().last().header("x-after-failure").as_deref(),
        Some("1")
    );
}

fn unknown_routes_fail_closed_unless_configured_otherwise(kind: Kind) {
    let stack = kind.start(PRIVATE);
    let reply = stack.send(Request::get("/somewhere/else"));
    assert_eq!(reply.status, 403, "{}", reply.text());
    assert_eq!(reply.json()["error"], "route_not_configured");
    assert!(stack.upstream().received().is_empty());

    stack.write_config(&format!("{PRIVATE}defaults: {{defaultRoute: private}}\n"));
    stack.wait_for_log("configuration loaded", std::time::Duration::from_secs(5));
    wait_until(|| stack.send(Request::get("/somewhere/else")).status == 401);

    stack.write_config(&format!("{PRIVATE}defaults: {{unknownRoute: allow}}\n"));
    wait_until(|| stack.send(Request::get("/somewhere/else")).status == 200);
    assert_eq!(stack.upstream().last().path, "/somewhere/else");
}

#[test]
fn before_any_valid_configuration_the_engine_answers_503() {
    let stack = Stack::start_with(None, &[]);
    let reply = stack.send(Request::get("/public/x"));
    assert_eq!(reply.status, 503, "{}", reply.text());
    assert_eq!(reply.json()["error"], "not_ready");

    stack.write_config(
        "version: v1\nroutes: [{route: public, policies: [{name: nope, version: 1.0.0}]}]\n",
    );
    stack.wait_for_log("configuration rejected", std::time::Duration::from_secs(5));
    assert_eq!(stack.send(Request::get("/public/x")).status, 503);

    stack.write_config("version: v1\nroutes: [{route: public, policies: []}]\n");
    wait_until(|| stack.send(Request::get("/public/x")).status == 200);
    assert!(stack.upstream.received().len() == 1);
}

fn bodies_over_the_limit_get_413(kind: Kind) {
    let stack = kind.start_with_body_limit(
        "version: v1\nroutes: [{route: body, policies: [{name: body-rewrite, version: 1.0.0}]}]\n",
        Some(1024),
    );
    let big = format!("{{\"text\":\"{}\"}}", "a".repeat(2000));
    let reply = stack.send(Request::post("/body/big", big.as_bytes()));
    assert_eq!(reply.status, 413, "{}", reply.text());
    assert!(stack.upstream().received().is_empty());
    let reply = stack.send(Request::post("/body/small", b"{}"));
    assert_eq!(reply.status, 200, "{}", reply.text());
}

/// Retries `check` for up to five seconds (the engine polls its file every 100 ms).
fn wait_until(mut check: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !check() {
        assert!(
            std::time::Instant::now() < deadline,
            "the condition never held"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

fn versioned(version: &str) -> String {
    format!(
        "version: v1\nroutes:\n  - route: public\n    policies:\n      - {{name: set-header, version: 1.0.0, params: {{request: {{set: {{x-config: \"{version}\"}}}}}}}}\n"
    )
}

#[test]
fn hot_reload_under_traffic_loses_no_request_and_keeps_the_last_good_chain() {
    let stack = Stack::start(&versioned("1"));
    let traffic = Traffic::start(stack.port, "/public/tick", 2);
    traffic.wait_for_config("1");
    stack.write_config(&versioned("2"));
    traffic.wait_for_config("2");
    let switched_at = traffic.seen().len();

    // An invalid document: the parameter must be a string.
    stack.write_config(&versioned("2").replace("\"2\"", "[2]"));
    let logs = stack.wait_for_log("configuration rejected", std::time::Duration::from_secs(5));
    traffic.wait_for(20);
    let results = traffic.stop();

    assert!(
        results.iter().all(|(status, _)| *status == 200),
        "every request during the reloads succeeded: {results:?}"
    );
    // Two threads: a request that started before the swap may land just after the first "2".
    let after = &results[(switched_at + 2).min(results.len())..];
    assert!(
        after.iter().all(|(_, v)| v.as_deref() == Some("2")),
        "after the swap every request used the new chain, also after the rejected one: {after:?}"
    );
    let report = logs
        .split("configuration rejected")
        .nth(1)
        .expect("the rejection report");
    let config = stack.config_path().display().to_string();
    for part in [config.as_str(), "public", "set-header", "x-config"] {
        assert!(
            report.contains(part),
            "the report names {part:?}:\n{report}"
        );
    }
}

#[test]
fn configmap_symlink_swaps_and_sighup_reload_the_file() {
    let stack = Stack::start_with(None, &["--reload-interval-ms", "600000"]);
    // The layout Kubernetes gives a mounted ConfigMap: routes.yaml -> ..data/routes.yaml,
    // ..data -> a versioned directory, swapped atomically by renaming a new link over it.
    let publish = |version: &str| {
        let dir = stack.scratch.path(&format!("..v{version}"));
        std::fs::create_dir_all(&dir).expect("version directory");
        std::fs::write(dir.join("routes.yaml"), versioned(version)).expect("write");
        let link = stack.scratch.path("..data_tmp");
        std::os::unix::fs::symlink(format!("..v{version}"), &link).expect("symlink");
        std::fs::rename(&link, stack.scratch.path("..data")).expect("swap ..data");
    };
    publish("1");
    std::os::unix::fs::symlink("..data/routes.yaml", stack.config_path()).expect("symlink");
    stack.hangup_engine();
    wait_until(|| stack.send(Request::get("/public/a")).status == 200);
    assert_eq!(
        stack.upstream.last().header("x-config").as_deref(),
        Some("1")
    );

    publish("2");
    stack.hangup_engine();
    wait_until(|| {
        stack.send(Request::get("/public/b")).status == 200
            && stack.upstream.last().header("x-config").as_deref() == Some("2")
    });
}

fn path_and_method_changes_reach_upstream(kind: Kind) {
    let stack = kind.start(
        r#"
version: v1
routes:
  - route: public
    policies:
      - {name: reroute, version: 1.0.0, params: {path: "/v2/moved?from=public", method: PUT}}
"#,
    );
    let reply = stack.send(Request::get("/public/old"));
    assert_eq!(reply.status, 200, "{}", reply.text());
    let seen = stack.upstream().last();
    assert_eq!(
        (seen.method.as_str(), seen.path.as_str()),
        ("PUT", "/v2/moved?from=public")
    );
}

#[test]
fn envoy_reaches_the_engine_over_a_unix_socket() {
    let socket = std::env::temp_dir().join(format!("policy-e2e-{}.sock", std::process::id()));
    let listen = format!("unix:{}", socket.display());
    let stack = Stack::start_with(Some(&versioned("unix")), &["--listen", listen.as_str()]);
    let reply = stack.send(Request::get("/public/over-a-socket"));
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(
        stack.upstream.last().header("x-config").as_deref(),
        Some("unix")
    );
    drop(stack);
    let _ = std::fs::remove_file(socket);
}
