//! The engine's command line, run as a process.

use std::process::{Command, Output};

fn engine(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dev-engine"))
        .args(args)
        .output()
        .expect("run dev-engine")
}

fn scratch_file(name: &str, content: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("policy-e2e-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch directory");
    let path = dir.join(name);
    std::fs::write(&path, content).expect("write");
    path
}

#[test]
fn validate_accepts_a_good_file_and_names_the_problems_of_a_bad_one() {
    let good = scratch_file(
        "good.yaml",
        "version: v1\nroutes: [{route: a, policies: [{name: quota, version: 1.0.0, params: {limit: 1}}]}]\n",
    );
    let out = engine(&["validate", good.to_str().expect("utf-8 path")]);
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("valid (1 routes)"));

    let bad = scratch_file(
        "bad.yaml",
        "version: v1\nroutes: [{route: a, policies: [{name: quota, version: 1.0.0, params: {limit: -1}}]}]\n",
    );
    let out = engine(&["validate", bad.to_str().expect("utf-8 path")]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    for part in ["bad.yaml", "quota", "limit"] {
        assert!(err.contains(part), "the report names {part:?}: {err}");
    }
}

#[test]
fn validate_warns_about_a_condition_that_skips_a_policy_when_a_header_is_missing() {
    let risky = scratch_file(
        "risky.yaml",
        "version: v1\nroutes:\n  - route: a\n    policies:\n      - {name: require-header, version: 1.0.0, params: {header: x-user}, condition: 'request.headers[\"x-tenant\"] != \"internal\"'}\n      - {name: require-header, version: 1.0.0, params: {header: x-user}, condition: '\"x-tenant\" in request.headers && request.headers[\"x-tenant\"] == \"a\"'}\n      - {name: require-header, version: 1.0.0, params: {header: x-user}, condition: 'request.headers[\"x-tenant\"] == \"a\"', onConditionError: deny}\n",
    );
    let out = engine(&["validate", risky.to_str().expect("utf-8 path")]);
    assert!(out.status.success(), "a warning is not an error: {out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    let warnings: Vec<&str> = err.lines().filter(|l| l.starts_with("warning:")).collect();
    assert_eq!(warnings.len(), 1, "only the unguarded skip warns: {err}");
    for part in [
        "routes[0].policies[0].condition",
        "has()",
        "onConditionError",
    ] {
        assert!(
            warnings[0].contains(part),
            "the warning names {part:?}: {err}"
        );
    }
}

#[test]
fn policies_lists_the_compiled_in_policies() {
    let out = engine(&["policies"]);
    assert!(out.status.success(), "{out:?}");
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let names: Vec<&str> = list
        .as_array()
        .expect("a list")
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    assert!(
        names.contains(&"set-header") && names.contains(&"quota"),
        "{names:?}"
    );
}

#[test]
fn a_unix_listen_path_that_is_not_a_socket_is_never_replaced() {
    let config = scratch_file("routes.yaml", "version: v1\nroutes: []\n");
    let precious = scratch_file("precious.txt", "keep me");
    let listen = format!("unix:{}", precious.display());
    let out = engine(&[
        "--admin-listen",
        "off",
        "--listen",
        &listen,
        "--config",
        config.to_str().expect("utf-8 path"),
    ]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("is not a socket"),
        "{out:?}"
    );
    assert_eq!(
        std::fs::read_to_string(&precious).expect("still there"),
        "keep me"
    );
}

#[test]
fn healthcheck_succeeds_only_while_an_engine_listens() {
    use std::io::{BufRead, BufReader};
    let config = scratch_file("health.yaml", "version: v1\nroutes: []\n");
    let mut serving = Command::new(env!("CARGO_BIN_EXE_dev-engine"))
        .args([
            "--admin-listen",
            "off",
            "--listen",
            "127.0.0.1:0",
            "--config",
        ])
        .arg(&config)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start the engine");
    let mut line = String::new();
    BufReader::new(serving.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("read");
    let address = line
        .trim()
        .strip_prefix("policy-engine listening on ")
        .expect("the announcement")
        .to_owned();
    // Without an admin API (`off`, as `serve` reads it) the check connects to ext_proc.
    let up = Command::new(env!("CARGO_BIN_EXE_dev-engine"))
        .args(["healthcheck", "--listen", &address])
        .env("POLICY_ENGINE_ADMIN_LISTEN", "off")
        .output()
        .expect("run dev-engine");
    let _ = serving.kill();
    let _ = serving.wait();
    assert!(up.status.success(), "{up:?}");
    let down = engine(&["healthcheck", "--listen", &address, "--timeout-ms", "500"]);
    assert_eq!(down.status.code(), Some(1), "{down:?}");
    assert!(String::from_utf8_lossy(&down.stderr).contains("connecting to"));
}

#[test]
fn the_configuration_source_is_chosen_explicitly() {
    let both = engine(&[
        "--listen",
        "127.0.0.1:0",
        "--config",
        "routes.yaml",
        "--xds-server",
        "http://127.0.0.1:1",
    ]);
    assert_eq!(both.status.code(), Some(2), "a usage error: {both:?}");
    let stderr = String::from_utf8_lossy(&both.stderr);
    assert!(
        stderr.contains("--config") && stderr.contains("--xds-server"),
        "{stderr}"
    );

    let neither = engine(&["--listen", "127.0.0.1:0"]);
    assert_eq!(neither.status.code(), Some(1), "{neither:?}");
    let stderr = String::from_utf8_lossy(&neither.stderr);
    assert!(
        stderr.contains("--config FILE (file mode) or --xds-server URL (xDS mode)"),
        "{stderr}"
    );

    let no_scheme = engine(&["--listen", "127.0.0.1:0", "--xds-server", "127.0.0.1:1"]);
    assert_eq!(no_scheme.status.code(), Some(1), "{no_scheme:?}");
    assert!(
        String::from_utf8_lossy(&no_scheme.stderr).contains("is not http://HOST:PORT"),
        "{no_scheme:?}"
    );
}

#[test]
fn validate_makes_no_network_call_for_a_jwks_url() {
    // A port that takes connections: any attempt to fetch the keys would be queued here.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.set_nonblocking(true).expect("nonblocking");
    let port = listener.local_addr().expect("addr").port();
    let config = scratch_file(
        "jwks-url.yaml",
        &format!(
            "version: v1\nroutes:\n  - route: a\n    policies:\n      - {{name: jwt-validation, version: 1.0.0, params: {{issuer: i, audiences: [a], jwksUrl: \"http://127.0.0.1:{port}/jwks.json\"}}}}\n      - {{name: jwt-validation, version: 2.0.0, params: {{issuers: [{{issuer: j, audiences: [a], jwksUrl: \"https://idp.invalid/jwks.json\"}}]}}}}\n"
        ),
    );
    let out = engine(&["validate", config.to_str().expect("utf-8 path")]);
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("valid (1 routes)"));
    match listener.accept() {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        other => panic!("validate connected to the JWKS URL: {other:?}"),
    }
}

/// `examples/decisions/`, from this crate's directory.
fn example(name: &str) -> String {
    format!(
        "{}/../../examples/decisions/{name}",
        env!("CARGO_MANIFEST_DIR")
    )
}

#[test]
fn the_sample_decision_tests_pass_with_full_coverage() {
    let out = engine(&["test", &example("samples.yaml"), "--fail-under", "100"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(stdout.contains("12 passed, 0 failed"), "{stdout}");
    assert!(
        stdout.contains("10 of 10 policy entries ran (100.0%)"),
        "{stdout}"
    );

    // Every variable and function docs/conditions.md documents, each true for one request.
    let out = engine(&["test", &example("conditions.yaml"), "--fail-under", "100"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(stdout.contains("1 passed, 0 failed"), "{stdout}");
}

#[test]
fn a_wrong_expectation_fails_with_the_difference_and_the_explain_trace() {
    let tests = scratch_file(
        "wrong.yaml",
        &format!(
            "config: {}\ncases:\n  - name: keyless requests pass (they do not)\n    route: partner-api\n    request: {{path: /orders}}\n    expect:\n      upstream: {{path: /orders}}\n  - name: acme is tiered gold (it is partner)\n    route: partner-api\n    request: {{headers: {{x-api-key: test}}}}\n    expect:\n      upstream: {{headers: {{x-consumer-tier: gold}}}}\n      metadata: {{auth.consumer: acme}}\n",
            example("routes.yaml")
        ),
    );
    let path = tests.to_str().expect("utf-8");
    let out = engine(&["test", path]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    for line in [
        "  FAIL  partner-api: keyless requests pass (they do not)",
        "        field   expected            actual",
        "        status  forwarded upstream  answered 401",
        "        explain: api-key-validation:1.0.0=respond 401; rate-limit:1.0.0=not run; set-header:1.0.0=not run",
        "  FAIL  partner-api: acme is tiered gold (it is partner)",
        "        upstream.headers.x-consumer-tier  \"gold\"    \"partner\"",
        "0 passed, 2 failed",
        "  routes no case reached: health, llm, maintenance, web",
    ] {
        assert!(
            stdout.lines().any(|l| l.starts_with(line)),
            "{line:?} in:\n{stdout}"
        );
    }

    let out = engine(&["test", path, "--format", "junit"]);
    assert_eq!(out.status.code(), Some(1));
    let xml = String::from_utf8_lossy(&out.stdout);
    assert!(
        xml.contains("<testsuite name=\"") && xml.contains("tests=\"2\" failures=\"2\">"),
        "{xml}"
    );
    assert!(
        xml.contains("<failure message=\"upstream.headers.x-consumer-tier: expected &quot;gold&quot;, got &quot;partner&quot;\">"),
        "{xml}"
    );
}

#[test]
fn low_coverage_and_unusable_files_fail_the_gate() {
    let one = scratch_file(
        "one.yaml",
        &format!(
            "config: {}\ncases:\n  - name: health passes\n    route: health\n",
            example("routes.yaml")
        ),
    );
    let out = engine(&["test", one.to_str().expect("utf-8")]);
    assert!(out.status.success(), "the case passes: {out:?}");
    let out = engine(&["test", one.to_str().expect("utf-8"), "--fail-under", "50"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("under --fail-under 50.0%"),
        "{out:?}"
    );

    let typo = scratch_file(
        "typo.yaml",
        "config: routes.yaml\ncases:\n  - name: x\n    route: r\n    expect: {stauts: 200}\n",
    );
    let out = engine(&["test", typo.to_str().expect("utf-8")]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("typo.yaml") && stderr.contains("stauts"),
        "{stderr}"
    );
}
