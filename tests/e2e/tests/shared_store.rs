//! Limits shared by engine replicas through a real `redis-server`: two dev engines behind one
//! Envoy cluster (ext_proc streams balanced round robin), each test with its own Redis on a
//! free loopback port (`scripts/install-redis.sh` installs the binary).
#![allow(
    clippy::disallowed_methods,
    reason = "the tests poll for a reconnect and a window boundary on their own threads"
)]

use policy_test_support::envoy::{Request, Stack};
use policy_test_support::redis::RedisServer;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// `policy_engine_policy_executions_total` of `policy` in a metrics text.
fn executions(metrics: &str, policy: &str) -> u64 {
    let series = format!("policy_engine_policy_executions_total{{policy=\"{policy}\"}} ");
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(&series)?.trim().parse().ok())
        .unwrap_or(0)
}

/// The rate-limit executions each engine of `stack` counted.
fn runs_per_replica(stack: &Stack) -> Vec<u64> {
    let mut runs = vec![executions(
        &stack.admin(Request::get("/metrics")).text(),
        "rate-limit:1.0.0",
    )];
    for replica in &stack.replicas {
        let port = replica
            .admin_port
            .expect("the replica serves its admin API");
        let text = Request::get("/metrics")
            .send(port)
            .expect("replica metrics")
            .text();
        runs.push(executions(&text, "rate-limit:1.0.0"));
    }
    runs
}

/// A route entry limiting `route` to a burst of `burst` per `x-user` (a token every 1,000 s),
/// its buckets in `store`.
fn limited_route(route: &str, burst: u32, store: &str) -> String {
    format!(
        r#"
  - route: {route}
    policies:
      - name: rate-limit
        version: 1.0.0
        params: {{requestsPerSecond: 0.001, burst: {burst}, key: {{header: x-user}}, store: {store}}}"#
    )
}

/// A `store` parameter for the Redis at `url`.
fn redis_store(url: &str, timeout_ms: u64, on_error: &str) -> String {
    format!(r#"{{redis: {{url: "{url}", timeoutMs: {timeout_ms}, onError: {on_error}}}}}"#)
}

fn count(statuses: &[u16], status: u16) -> usize {
    statuses.iter().filter(|s| **s == status).count()
}

#[test]
fn two_engine_replicas_share_one_rate_limit_in_redis() {
    // AUTH through the URL; the password never shows.
    let redis = RedisServer::start_with_password(Some("s3cret-pass"));
    let config = format!(
        "version: v1\nroutes:{}{}\n",
        limited_route("private", 10, &redis_store(&redis.url(), 1000, "deny")),
        limited_route("public", 3, "memory")
    );
    let stack = Stack::start_replicas(&config, 2);
    let send = |path: &str| {
        stack
            .send(Request::get(path).header("x-user", "alice"))
            .status
    };
    // 24 requests at once from 4 clients: the decisions race on two engines.
    let shared: Vec<u16> = std::thread::scope(|scope| {
        let clients: Vec<_> = (0..4)
            .map(|_| scope.spawn(|| (0..6).map(|_| send("/private/x")).collect::<Vec<u16>>()))
            .collect();
        clients
            .into_iter()
            .flat_map(|c| c.join().expect("a client thread"))
            .collect()
    });
    assert_eq!(
        (count(&shared, 200), count(&shared, 429)),
        (10, 14),
        "the two replicas together allow the burst once: {shared:?}"
    );
    let runs = runs_per_replica(&stack);
    assert!(
        runs.iter().all(|&n| n > 0) && runs.iter().sum::<u64>() == 24,
        "both replicas decided: {runs:?}"
    );
    assert_eq!(redis.keys(), 1, "one bucket for alice");

    // The same limit in memory is per replica: each allows its own burst.
    let apart: Vec<u16> = (0..8).map(|_| send("/public/x")).collect();
    assert_eq!(count(&apart, 200), 6, "3 per replica: {apart:?}");

    let config = stack.admin(Request::get("/config")).text();
    assert!(
        config.contains("[redacted]") && !config.contains("s3cret-pass"),
        "{config}"
    );
    assert!(!stack.engine_logs().contains("s3cret-pass"));
}

#[test]
fn a_redis_outage_follows_on_error_and_enforcement_resumes_without_a_restart() {
    let mut redis = RedisServer::start();
    let config = format!(
        "version: v1\nroutes:{}{}\n",
        limited_route("private", 1, &redis_store(&redis.url(), 200, "deny")),
        limited_route("public", 1, &redis_store(&redis.url(), 200, "allow"))
    );
    let stack = Stack::start_replicas(&config, 2);
    let send = |path: &str| stack.send(Request::get(path).header("x-user", "alice"));
    assert_eq!(send("/private/x").status, 200);
    assert_eq!(send("/private/x").status, 429);

    redis.stop();
    for _ in 0..2 {
        let denied = send("/private/x");
        assert_eq!(denied.status, 503, "{}", denied.text());
        assert_eq!(denied.json()["error"], "rate_limit_unavailable");
        assert_eq!(denied.header("retry-after"), Some("1"));
        assert_eq!(send("/public/x").status, 200, "onError: allow");
        assert_eq!(
            send("/public/x").status,
            200,
            "uncounted while Redis is away"
        );
    }
    stack.wait_for_log("the Redis store is unavailable", Duration::from_secs(5));
    let counted = counter_on_every_engine(&stack, "counter_store_redis_errors");
    assert!(counted >= 4, "each failed decision is counted: {counted}");

    // A fresh Redis on the same address: the engines reconnect by themselves.
    redis.restart();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match send("/private/x").status {
            200 => break,
            503 => assert!(Instant::now() < deadline, "the engines never reconnected"),
            other => panic!("expected 503 until Redis answers, then 200; got {other}"),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(send("/private/x").status, 429, "enforced again");
}

#[test]
fn a_token_budget_is_spent_on_the_nth_request_and_resets_at_the_window_boundary() {
    const WINDOW: u64 = 4;
    let redis = RedisServer::start();
    let stack = Stack::start_replicas(
        &format!(
            r#"
version: v1
routes:
  - route: body
    policies:
      - name: meta-header
        version: 1.0.0
        params: {{key: llm.budget.used, header: x-budget-used}}
      - name: llm-token-budget
        version: 1.0.0
        params:
          tokens: 100
          window: {{seconds: {WINDOW}}}
          consumer: {{header: x-user}}
          store: {{redis: {{url: "{url}", timeoutMs: 1000}}}}
"#,
            url = redis.url()
        ),
        2,
    );
    // The upstream plays the model: it answers with the request's body, usage included.
    let answer = br#"{"model": "gpt-4o-mini", "usage": {"prompt_tokens": 10, "completion_tokens": 30, "total_tokens": 40}}"#;
    let send = || {
        stack.send(
            Request::post("/body/v1/chat/completions", answer)
                .header("content-type", "application/json")
                .header("x-echo-raw", "1")
                .header("x-user", "alice"),
        )
    };
    // Start at the beginning of a window, so the first four requests share one.
    let unix = || {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("after 1970")
    };
    let into_window = unix().as_millis() as u64 % (WINDOW * 1000);
    if into_window > 1000 {
        std::thread::sleep(Duration::from_millis(WINDOW * 1000 - into_window + 50));
    }
    let window = unix().as_secs() / WINDOW;
    for used in ["40", "80", "120"] {
        let reply = send();
        assert_eq!(reply.status, 200, "{}", reply.text());
        assert_eq!(reply.header("x-budget-used"), Some(used));
    }
    let refused = send();
    assert_eq!(refused.status, 429, "{}", refused.text());
    assert_eq!(refused.json()["error"], "token_budget_exceeded");
    let retry: u64 = refused
        .header("retry-after")
        .and_then(|v| v.parse().ok())
        .expect("Retry-After");
    assert!(
        (1..=WINDOW).contains(&retry),
        "until the window ends: {retry}"
    );
    assert_eq!(
        unix().as_secs() / WINDOW,
        window,
        "the four requests fell into one window"
    );

    // The next window starts from zero.
    let deadline = Instant::now() + Duration::from_secs(WINDOW + 5);
    let reply = loop {
        let reply = send();
        if reply.status == 200 {
            break reply;
        }
        assert_eq!(reply.status, 429, "{}", reply.text());
        assert!(Instant::now() < deadline, "the budget never reset");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        unix().as_secs() / WINDOW > window,
        "reset only in a later window"
    );
    assert_eq!(reply.header("x-budget-used"), Some("40"));

    // Both replicas export what they counted.
    let counter = |name: &str| -> u64 { counter_on_every_engine(&stack, name) };
    assert_eq!(
        counter("llm_tokens"),
        4 * 40,
        "three answers, then one in the next window"
    );
    assert!(counter("llm_token_budget_exceeded") >= 1);
}

/// The sum of policy counter `name` over the engines of `stack`.
fn counter_on_every_engine(stack: &Stack, name: &str) -> u64 {
    let mut metrics = vec![stack.admin(Request::get("/metrics")).text()];
    for replica in &stack.replicas {
        let port = replica
            .admin_port
            .expect("the replica serves its admin API");
        metrics.push(Request::get("/metrics").send(port).expect("metrics").text());
    }
    let series = format!("policy_engine_policy_counter_total{{name=\"{name}\"}} ");
    metrics
        .iter()
        .filter_map(|text| {
            text.lines()
                .find_map(|l| l.strip_prefix(&series)?.trim().parse::<u64>().ok())
        })
        .sum()
}

#[test]
fn a_redis_store_over_tls_trusts_only_a_certificate_it_can_verify() {
    let redis = RedisServer::start_tls();
    let config = format!(
        "version: v1\nroutes:{}\n",
        limited_route("private", 1, &redis_store(&redis.tls_url(), 1000, "deny"))
    );
    let request = || Request::get("/private/x").header("x-user", "alice");
    // The engine trusts the test CA (the store's TLS reads the system roots, which
    // SSL_CERT_FILE replaces).
    let ca = redis.ca_file();
    let trusted = Stack::start_replicas_with_env(&config, 1, &[("SSL_CERT_FILE", &ca)]);
    assert_eq!(trusted.send(request()).status, 200);
    assert_eq!(trusted.send(request()).status, 429, "counted over TLS");
    assert_eq!(redis.keys(), 1);

    // Without it the server's certificate cannot be verified: nothing is granted.
    let untrusted = Stack::start_replicas(&config, 1);
    let reply = untrusted.send(Request::get("/private/x").header("x-user", "bob"));
    assert_eq!(reply.status, 503, "{}", reply.text());
    untrusted.wait_for_log("the Redis store is unavailable", Duration::from_secs(5));
    assert_eq!(redis.keys(), 1, "bob was never counted");
}
