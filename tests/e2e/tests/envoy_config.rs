//! `policy-engine envoy-config`: the generated Envoy configuration passes `envoy --mode validate`
//! and, loaded into the real Envoy, keeps routes with an empty chain away from the engine while
//! every other route goes through it.
#![allow(
    clippy::disallowed_methods,
    reason = "waits for the processes it started, on the test's own thread"
)]

use policy_test_support::envoy::{Request, Scratch, Upstream, envoy_bin, free_port};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

const ROUTES: &str = "version: v1
routes:
  - route: guarded
    policies:
      - {name: require-header, version: 1.0.0, params: {header: x-user}}
  - route: bodies
    policies:
      - {name: json-body-transform, version: 1.0.0, params: {request: {remove: [/secret]}}}
  - route: open
    policies: []
";

/// The value of Envoy's counter `name` (0 when it does not exist yet).
fn counter(admin: u16, name: &str) -> u64 {
    let reply = Request::get(&format!("/stats?filter=^{}$", name.replace('.', "\\.")))
        .send(admin)
        .expect("Envoy's admin answers");
    reply
        .text()
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name}: "))?.trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn the_generated_configuration_validates_and_an_empty_chain_never_reaches_the_engine() {
    let scratch = Scratch::new();
    let routes = scratch.path("routes.yaml");
    std::fs::write(&routes, ROUTES).expect("write routes");
    let engine_bin = env!("CARGO_BIN_EXE_dev-engine");
    let mut engine = Killed(
        Command::new(engine_bin)
            .args([
                "--listen",
                "127.0.0.1:0",
                "--admin-listen",
                "off",
                "--config",
            ])
            .arg(&routes)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the engine"),
    );
    let mut line = String::new();
    BufReader::new(engine.0.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("the engine announces itself");
    let engine_address = line
        .trim()
        .strip_prefix("policy-engine listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_owned();

    let upstream = Upstream::start();
    let (port, admin) = (free_port(), free_port());
    let generated = Command::new(engine_bin)
        .arg("envoy-config")
        .arg(&routes)
        .args([
            "--engine",
            &engine_address,
            "--concurrency",
            "20000",
            "--bootstrap",
        ])
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--admin", &format!("127.0.0.1:{admin}")])
        .args(["--upstream", &format!("127.0.0.1:{}", upstream.port)])
        .output()
        .expect("run envoy-config");
    assert!(generated.status.success(), "{generated:?}");
    let bootstrap = scratch.path("envoy.yaml");
    std::fs::write(&bootstrap, &generated.stdout).expect("write the bootstrap");
    let config: serde_json::Value = serde_json::from_slice(&generated.stdout).expect("JSON");
    let cluster = &config["static_resources"]["clusters"][0];
    assert_eq!(
        cluster["circuit_breakers"]["thresholds"][0]["max_pending_requests"], 25000,
        "sized above --concurrency"
    );

    let validate = Command::new(envoy_bin())
        .args(["--mode", "validate", "-c"])
        .arg(&bootstrap)
        .output()
        .expect("run envoy --mode validate");
    assert!(
        validate.status.success(),
        "envoy --mode validate: {}",
        String::from_utf8_lossy(&validate.stderr)
    );

    let _envoy = Killed(
        Command::new(envoy_bin())
            .arg("-c")
            .arg(&bootstrap)
            .args([
                "--disable-hot-restart",
                "--concurrency",
                "1",
                "--log-level",
                "warning",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start Envoy"),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while !Request::get("/ready")
        .send(admin)
        .is_ok_and(|r| r.status == 200)
    {
        assert!(Instant::now() < deadline, "Envoy did not get ready");
        std::thread::sleep(Duration::from_millis(50));
    }
    let streams = || counter(admin, "http.policy.ext_proc.streams_started");

    // The empty chain: straight to the upstream, no ext_proc stream at all.
    for _ in 0..3 {
        let reply = Request::get("/open/x").send(port).expect("through Envoy");
        assert_eq!(reply.status, 200, "{}", reply.text());
    }
    assert_eq!(streams(), 0, "the open route never reached the engine");

    // The guarded route goes through the engine, and its chain decides.
    let refused = Request::get("/guarded/x")
        .send(port)
        .expect("through Envoy");
    assert_eq!(refused.status, 401, "{}", refused.text());
    let allowed = Request::get("/guarded/x")
        .header("x-user", "alice")
        .send(port)
        .expect("through Envoy");
    assert_eq!(allowed.status, 200, "{}", allowed.text());
    assert_eq!(streams(), 2);

    // The body route gets its body buffered and rewritten by its per-route mode.
    let reply = Request::post("/bodies/x", br#"{"secret":1,"keep":2}"#)
        .header("content-type", "application/json")
        .send(port)
        .expect("through Envoy");
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(upstream.last().body, br#"{"keep":2}"#);
}
