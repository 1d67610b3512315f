//! Operating the engine behind a real Envoy: the admin API, readiness, metrics after known
//! traffic, the explain trace, the gRPC health service and graceful shutdown.

#![allow(
    clippy::disallowed_methods,
    reason = "polls processes it started, on the test's own thread"
)]

use policy_test_support::envoy as support;

use std::time::Duration;
use support::host::Kind;
use support::{Request, Stack};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

// The explain trace on every host; the rest is the engine's own operations.
policy_test_support::on_every_host!(the_explain_trace_says_why_a_request_was_denied);

/// SHA-256 of "s3cret-key-1".
const KEY_HASH: &str = "471ab1409a49f9f41dc83fe9480422b9df19e8ef3d096b8f034deae1d01b45be";

fn config() -> String {
    format!(
        r#"
version: v1
routes:
  - route: public
    policies:
      - {{name: set-header, version: 1.0.0, params: {{request: {{set: {{x-team: ops}}}}}}}}
  - route: private
    explain: true
    policies:
      - {{name: set-header, version: 1.0.0, condition: 'request.method == "DELETE"', params: {{request: {{set: {{x-deleting: "1"}}}}}}}}
      - {{name: require-header, version: 1.0.0, params: {{header: x-api-user}}}}
      - {{name: quota, version: 1.0.0, params: {{limit: 100}}}}
  - route: meta
    policies:
      - name: api-key-validation
        version: 1.0.0
        params: {{keys: [{{sha256: "{KEY_HASH}", consumer: ops}}]}}
"#
    )
}

/// The value of the Prometheus sample `series` (exact labels) in `text`.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

#[test]
fn admin_endpoints_answer_get_only_and_redact_secrets() {
    let stack = Stack::start(&config());
    let live = stack.admin(Request::get("/health/live"));
    assert_eq!(live.status, 200);
    let ready = stack.admin(Request::get("/health/ready"));
    assert_eq!(ready.status, 200, "{}", ready.text());
    assert_eq!(ready.json()["source"], "file");

    let config = stack.admin(Request::get("/config"));
    assert_eq!(config.status, 200);
    let config = config.json();
    assert_eq!(config["source"], "file");
    assert!(config["version"].as_str().is_some_and(|v| v.len() == 16));
    assert!(
        config["loadedAtUnixSeconds"]
            .as_u64()
            .is_some_and(|t| t > 1_700_000_000)
    );
    let keys = &config["document"]["routes"][2]["policies"][0]["params"]["keys"][0];
    assert_eq!(keys["sha256"], "[redacted]", "{config}");
    assert_eq!(keys["consumer"], "ops", "only secrets are redacted");
    assert!(!config.to_string().contains(KEY_HASH));
    assert_eq!(config["document"]["routes"][1]["explain"], true);

    let names = support::policy_keys(&stack.admin(Request::get("/policies")).json());
    assert!(names.contains(&"set-header:1.0.0".to_owned()), "{names:?}");
    let build = stack.admin(Request::get("/build-info"));
    assert_eq!(build.status, 200);
    assert!(build.json().is_object());

    let metrics = stack.admin(Request::get("/metrics"));
    assert_eq!(metrics.status, 200);
    assert!(
        metrics
            .header("content-type")
            .is_some_and(|c| c.starts_with("text/plain; version=0.0.4"))
    );

    for path in ["/metrics", "/config", "/health/ready", "/policies"] {
        let post = stack.admin(Request::post(path, b"{}"));
        assert_eq!(post.status, 405, "POST {path}");
        assert!(
            post.header("allow").is_some_and(|a| a.contains("GET")),
            "POST {path}"
        );
    }
    assert_eq!(stack.admin(Request::get("/nope")).status, 404);
}

#[test]
fn readiness_follows_the_first_valid_configuration() {
    let stack = Stack::start_with(None, &[]);
    let before = stack.admin(Request::get("/health/ready"));
    assert_eq!(before.status, 503, "{}", before.text());
    assert_eq!(before.json()["status"], "not_ready");
    assert_eq!(stack.admin(Request::get("/config")).status, 503);
    assert_eq!(stack.admin(Request::get("/health/live")).status, 200);
    assert_eq!(stack.send(Request::get("/public")).status, 503);

    stack.write_config("version: v1\nroutes:\n  - route: public\n    policies: []\n");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while stack.admin(Request::get("/health/ready")).status != 200 {
        assert!(std::time::Instant::now() < deadline, "never ready");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(stack.send(Request::get("/public")).status, 200);
}

#[test]
fn metrics_count_known_traffic_by_route_outcome_and_policy() {
    let stack = Stack::start(&config());
    for _ in 0..3 {
        assert_eq!(stack.send(Request::get("/public/a")).status, 200);
    }
    for _ in 0..2 {
        assert_eq!(stack.send(Request::get("/private/a")).status, 401);
    }
    assert_eq!(
        stack
            .send(Request::get("/private/a").header("x-api-user", "ann"))
            .status,
        200
    );
    assert_eq!(stack.send(Request::get("/elsewhere")).status, 403);

    let text = stack.admin(Request::get("/metrics")).text();
    let expect = |series: &str, value: f64| {
        assert_eq!(sample(&text, series), Some(value), "{series}\n{text}");
    };
    expect(
        "policy_engine_requests_total{route=\"public\",phase=\"request\",outcome=\"continue\",status=\"\"}",
        3.0,
    );
    expect(
        "policy_engine_requests_total{route=\"private\",phase=\"request\",outcome=\"immediate\",status=\"401\"}",
        2.0,
    );
    expect(
        "policy_engine_requests_total{route=\"private\",phase=\"request\",outcome=\"continue\",status=\"\"}",
        1.0,
    );
    expect(
        "policy_engine_requests_total{route=\"(unknown)\",phase=\"request\",outcome=\"error\",status=\"403\"}",
        1.0,
    );
    expect(
        "policy_engine_chain_duration_seconds_count{route=\"public\",phase=\"request\"}",
        3.0,
    );
    expect(
        "policy_engine_policy_executions_total{policy=\"set-header:1.0.0\"}",
        3.0,
    );
    expect(
        "policy_engine_policy_skipped_total{policy=\"set-header:1.0.0\"}",
        3.0,
    );
    expect(
        "policy_engine_policy_executions_total{policy=\"require-header:1.0.0\"}",
        3.0,
    );
    expect(
        "policy_engine_policy_executions_total{policy=\"quota:1.0.0\"}",
        1.0,
    );
    expect(
        "policy_engine_policy_duration_seconds_count{policy=\"quota:1.0.0\"}",
        1.0,
    );
    expect(
        "policy_engine_config_reloads_total{source=\"file\",result=\"applied\"}",
        1.0,
    );

    stack.write_config(
        "version: v1\nroutes:\n  - route: public\n    policies: [{name: nope, version: 1.0.0}]\n",
    );
    stack.wait_for_log("configuration rejected", Duration::from_secs(10));
    let text = stack.admin(Request::get("/metrics")).text();
    assert_eq!(
        sample(
            &text,
            "policy_engine_config_reloads_total{source=\"file\",result=\"rejected\"}"
        ),
        Some(1.0),
        "{text}"
    );
    let info = text
        .lines()
        .find(|l| l.starts_with("policy_engine_config_info{source=\"file\",version=\""))
        .expect("config info");
    assert!(info.ends_with(" 1"), "{info}");
}

fn the_explain_trace_says_why_a_request_was_denied(kind: Kind) {
    let stack = kind.start(&config());
    let denied = stack.send(Request::get("/private/a"));
    assert_eq!(denied.status, 401);
    assert_eq!(
        denied.header("x-policy-explain"),
        Some(
            "set-header:1.0.0=skipped (condition false); require-header:1.0.0=respond 401; quota:1.0.0=not run"
        )
    );
    let logs = stack.wait_for_log("explain", Duration::from_secs(5));
    assert!(logs.contains("require-header:1.0.0=respond 401"), "{logs}");

    let allowed = stack.send(
        Request::get("/private/a")
            .method("DELETE")
            .header("x-api-user", "ann"),
    );
    assert_eq!(allowed.status, 200);
    assert_eq!(
        allowed.header("x-policy-explain"),
        None,
        "forwarded requests are traced in the log"
    );
    stack.wait_for_log(
        "set-header:1.0.0=continue; require-header:1.0.0=continue; quota:1.0.0=continue",
        Duration::from_secs(5),
    );

    let public = stack.send(Request::get("/elsewhere"));
    assert_eq!(
        public.header("x-policy-explain"),
        None,
        "only routes with explain: true"
    );
}

#[test]
fn sigterm_lets_streams_in_flight_finish_and_exits_cleanly() {
    let mut stack = Stack::start(
        "version: v1\nroutes:\n  - route: public\n    policies: [{name: slow, version: 1.0.0, params: {ms: 700}}]\n",
    );
    let port = stack.port;
    let in_flight: Vec<_> = (0..8)
        .map(|_| std::thread::spawn(move || Request::get("/public/slow").send(port)))
        .collect();
    std::thread::sleep(Duration::from_millis(250));
    stack.signal_engine("-TERM");
    for (i, request) in in_flight.into_iter().enumerate() {
        let reply = request.join().expect("thread").expect("a reply");
        assert_eq!(reply.status, 200, "request {i}: {}", reply.text());
    }
    assert_eq!(
        stack.upstream.received().len(),
        8,
        "every request reached upstream"
    );
    assert!(
        stack
            .upstream
            .received()
            .iter()
            .all(|r| r.header("x-slow").as_deref() == Some("done"))
    );
    assert_eq!(stack.wait_engine(Duration::from_secs(10)), Some(0));
    let logs = stack.engine_logs();
    assert!(logs.contains("shutting down"), "{logs}");
    assert!(logs.contains("stopped"), "{logs}");
}

#[test]
fn the_grpc_health_service_and_the_healthcheck_command_follow_readiness() {
    let stack = Stack::start_with(None, &[]);
    let admin = format!("127.0.0.1:{}", stack.engine_admin_port.expect("admin"));
    // As the image's HEALTHCHECK runs it: the admin address from the variable `serve` reads.
    let check = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_dev-engine"))
            .arg("healthcheck")
            .env("POLICY_ENGINE_ADMIN_LISTEN", &admin)
            .output()
            .expect("run healthcheck")
    };
    let grpc = |service: &str| grpc_health(&stack.engine_address, service);
    let not_ready = check();
    assert_eq!(not_ready.status.code(), Some(1), "{not_ready:?}");
    assert!(String::from_utf8_lossy(&not_ready.stderr).contains("503"));
    assert_eq!(grpc(""), ServingStatus::NotServing);

    stack.write_config("version: v1\nroutes: []\n");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !check().status.success() {
        assert!(std::time::Instant::now() < deadline, "never ready");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(grpc(""), ServingStatus::Serving);
    assert_eq!(
        grpc("envoy.service.ext_proc.v3.ExternalProcessor"),
        ServingStatus::Serving
    );
}

/// `grpc.health.v1.Health/Check` on the engine's ext_proc port.
fn grpc_health(address: &str, service: &str) -> ServingStatus {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{address}"))
            .expect("uri")
            .connect()
            .await
            .expect("connect to the engine");
        let reply = HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: service.to_owned(),
            })
            .await
            .expect("Health/Check")
            .into_inner();
        ServingStatus::try_from(reply.status).expect("a known status")
    })
}
