//! xDS mode end to end: the engine takes its chains from the reference control plane (a
//! process) while a real Envoy sends it traffic.

#![allow(
    clippy::disallowed_methods,
    reason = "waits on servers it started, on the test's own thread"
)]

use policy_test_support::envoy as support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use support::control_plane::ControlPlane;
use support::{Request, Stack, free_port};

/// A chain that stamps responses on route `public` with `x-chain: <tag>`.
fn chain(tag: &str) -> String {
    format!(
        "version: v1\nroutes:\n  - route: public\n    policies:\n      - {{name: set-header, version: 1.0.0, params: {{response: {{set: {{x-chain: {tag}}}}}}}}}\n"
    )
}

fn start_engine(plane: &ControlPlane) -> Stack {
    let url = plane.url();
    Stack::start_with(
        None,
        &[
            "--xds-server",
            &url,
            "--xds-resource",
            "edge",
            "--node-id",
            "e2e-engine",
            "--node-cluster",
            "e2e",
            "--xds-backoff-initial-ms",
            "50",
            "--xds-backoff-max-ms",
            "400",
        ],
    )
}

/// The `x-chain` of one request, asserting it succeeded.
fn chain_seen(stack: &Stack) -> String {
    let reply = stack.send(Request::get("/public/x"));
    assert_eq!(reply.status, 200, "{}", reply.text());
    reply.header("x-chain").unwrap_or("").to_owned()
}

fn wait_for_chain(stack: &Stack, tag: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let reply = stack.send(Request::get("/public/x"));
        if reply.status == 200 && reply.header("x-chain") == Some(tag) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "chain {tag} never applied; last reply {} {:?}; engine log:\n{}",
            reply.status,
            reply.header("x-chain"),
            stack.engine_logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Requests sent back to back from another thread until stopped: `(status, x-chain)` each.
struct Traffic {
    stop: Arc<AtomicBool>,
    worker: JoinHandle<Vec<(u16, String)>>,
}

impl Traffic {
    fn start(port: u16) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let worker = std::thread::spawn(move || {
            let mut seen = Vec::new();
            while !flag.load(Ordering::Relaxed) {
                match Request::get("/public/x").send(port) {
                    Ok(reply) => seen.push((
                        reply.status,
                        reply.header("x-chain").unwrap_or("").to_owned(),
                    )),
                    Err(error) => seen.push((0, error.to_string())),
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            seen
        });
        Traffic { stop, worker }
    }

    fn stop(self) -> Vec<(u16, String)> {
        self.stop.store(true, Ordering::Relaxed);
        self.worker.join().expect("traffic thread")
    }
}

/// Every reply was a 200 stamped by one of `tags`, and the tags appear in that order (once a
/// newer chain answered, an older one never did again).
fn assert_all_served_in_order(seen: &[(u16, String)], tags: &[&str]) {
    assert!(seen.len() > 20, "too little traffic: {}", seen.len());
    let mut at = 0;
    for (i, (status, tag)) in seen.iter().enumerate() {
        assert_eq!(*status, 200, "request {i} failed: {tag}");
        let position = tags
            .iter()
            .position(|t| t == tag)
            .unwrap_or_else(|| panic!("request {i} saw chain {tag:?}"));
        assert!(position >= at, "request {i} went back to chain {tag}");
        at = position;
    }
}

#[test]
fn pushes_apply_without_restart_or_failed_requests_and_invalid_pushes_are_nacked() {
    let plane = ControlPlane::start(free_port());
    plane.write("edge", &chain("a"));
    let stack = start_engine(&plane);
    wait_for_chain(&stack, "a");
    let connected = plane.wait_for("connected", |_| true);
    assert_eq!(connected["node"], "e2e-engine");
    assert_eq!(connected["cluster"], "e2e");
    assert_eq!(connected["resources"], serde_json::json!(["edge"]));

    let traffic = Traffic::start(stack.port);
    std::thread::sleep(Duration::from_millis(300));
    plane.write("edge", &chain("b"));
    let b_version = plane.wait_for("ack", |e| e["nonce"] == "2")["version"].clone();
    std::thread::sleep(Duration::from_millis(300));

    // Policy set-header has no version 9.9.9 in this engine: the whole update is rejected.
    plane.write(
        "edge",
        "version: v1\nroutes:\n  - route: public\n    policies: []\n  - route: private\n    policies: [{name: set-header, version: 9.9.9}]\n",
    );
    let nack = plane.wait_for("nack", |_| true);
    std::thread::sleep(Duration::from_millis(300));
    let seen = traffic.stop();

    let error = nack["error"].as_str().expect("error_detail");
    assert!(error.contains("routes[1].policies[0]"), "{error}");
    assert!(error.contains("set-header"), "{error}");
    assert!(error.contains("9.9.9"), "{error}");
    assert_eq!(
        nack["kept"], b_version,
        "the engine says which version it kept"
    );
    assert_all_served_in_order(&seen, &["a", "b"]);
    assert!(
        seen.iter().any(|(_, tag)| tag == "a") && seen.last().is_some_and(|(_, t)| t == "b"),
        "the traffic spanned the push"
    );
    assert_eq!(
        chain_seen(&stack),
        "b",
        "the rejected update changed nothing"
    );
    let logs = stack.engine_logs();
    assert!(logs.contains("xDS configuration rejected (NACK)"), "{logs}");
}

#[test]
fn the_engine_waits_for_its_first_config_and_rides_out_a_control_plane_restart() {
    let port = free_port();
    let mut plane = ControlPlane::start(port);
    plane.kill();
    let stack = start_engine(&plane);
    std::thread::sleep(Duration::from_millis(300));
    let reply = stack.send(Request::get("/public/x"));
    assert_eq!(reply.status, 503, "not ready before any configuration");

    plane.write("edge", &chain("a"));
    plane.restart();
    wait_for_chain(&stack, "a");
    let first = plane.wait_for("ack", |_| true);

    let traffic = Traffic::start(stack.port);
    std::thread::sleep(Duration::from_millis(200));
    plane.kill();
    stack.wait_for_log("reconnecting to the control plane", Duration::from_secs(5));
    std::thread::sleep(Duration::from_millis(1500));
    plane.write("edge", &chain("b"));
    plane.restart();
    let reconnected = plane.wait_for("connected", |e| e["version"] != "");
    assert_eq!(
        reconnected["version"], first["version"],
        "the engine resubscribes saying which version it holds"
    );
    wait_for_chain(&stack, "b");
    std::thread::sleep(Duration::from_millis(200));
    let seen = traffic.stop();
    assert_all_served_in_order(&seen, &["a", "b"]);
}

#[test]
fn a_push_that_changes_another_route_keeps_a_drained_rate_limit() {
    let document = |tag: &str| {
        format!(
            "{}  - route: private\n    policies:\n      - {{name: rate-limit, version: 1.0.0, params: {{requestsPerSecond: 0.01, burst: 1}}}}\n",
            chain(tag)
        )
    };
    let plane = ControlPlane::start(free_port());
    plane.write("edge", &document("a"));
    let stack = start_engine(&plane);
    wait_for_chain(&stack, "a");
    assert_eq!(stack.send(Request::get("/private/x")).status, 200);
    assert_eq!(stack.send(Request::get("/private/x")).status, 429);

    // The control plane re-sends the whole document for a change to `public` only.
    plane.write("edge", &document("b"));
    wait_for_chain(&stack, "b");
    let reply = stack.send(Request::get("/private/x"));
    assert_eq!(reply.status, 429, "the bucket was kept: {}", reply.text());
}
