//! Decision tests: cases run through the executor, compared field by field, with coverage.

use policy_core::decisions::{Coverage, DecisionFile, run_case};
use policy_core::{Registry, Snapshot};
use policy_test_support::policies::{order, require_header};

fn snapshot(config: &str) -> Snapshot {
    let mut registry = Registry::new();
    for export in [require_header::policy_export(), order::policy_export()] {
        registry.register(export).expect("registers");
    }
    policy_core::load(config, "routes.yaml", &registry).expect("a valid configuration")
}

const CONFIG: &str = "version: v1
routes:
  - route: private
    policies:
      - {name: require-header, version: 1.0.0, params: {header: x-user}}
      - {name: order, version: 1.0.0, params: {label: a}}
  - route: public
    policies:
      - {name: order, version: 1.0.0, params: {label: p}}
  - route: health
    policies: []
";

const CASES: &str = r#"
cases:
  - name: no user, no entry
    route: private
    expect:
      status: 401
      headers: {www-authenticate: ApiKey}
      json: {error: unauthenticated}
  - name: a user goes upstream, marked
    route: private
    request: {method: POST, path: /orders?x=1, headers: {X-User: alice}, json: {a: 1}}
    response: {status: 201, headers: {content-type: text/plain}, body: made}
    expect:
      upstream: {method: POST, path: /orders?x=1, headers: {x-order: a, x-missing: null}, json: {a: 1}}
      metadata: {auth.user: alice, other: null}
      response: {status: 201, headers: {x-order: a}, body: made}
  - name: wrong on purpose
    route: private
    request: {headers: {x-user: bob}}
    expect:
      upstream: {headers: {x-order: b}}
      metadata: {auth.user: alice}
  - name: answered where forwarding was expected
    route: private
    expect:
      upstream: {path: /}
  - name: an unknown route is refused as hosts refuse it
    route: nowhere
    expect: {status: 403, json: {error: route_not_configured}}
"#;

#[tokio::test]
async fn cases_pass_or_name_every_difference_and_coverage_lists_what_none_reached() {
    let snapshot = snapshot(CONFIG);
    let file = DecisionFile::from_yaml(CASES).expect("a valid test file");
    let mut coverage = Coverage::of(&snapshot);
    let mut results = Vec::new();
    for case in &file.cases {
        results.push(run_case(&snapshot, case, &mut coverage).await);
    }
    let failed: Vec<(&str, Vec<String>)> = results
        .iter()
        .filter(|r| !r.passed())
        .map(|r| {
            (
                r.name.as_str(),
                r.mismatches.iter().map(ToString::to_string).collect(),
            )
        })
        .collect();
    assert_eq!(
        failed,
        [
            (
                "wrong on purpose",
                vec![
                    r#"upstream.headers.x-order: expected "b", got "a""#.to_owned(),
                    r#"metadata.auth.user: expected "alice", got "bob""#.to_owned(),
                ]
            ),
            (
                "answered where forwarding was expected",
                vec![
                    r#"status: expected forwarded upstream, got answered 401 {"error":"unauthenticated"}"#
                        .to_owned()
                ]
            ),
        ]
    );
    assert_eq!(
        results[1].trace,
        "require-header:1.0.0=continue; order:1.0.0=continue | response: order:1.0.0=continue"
    );
    assert_eq!(coverage.routes_missed(), ["health", "public"]);
    let missed: Vec<String> = coverage
        .entries_missed()
        .iter()
        .map(|(route, phase, key, _)| format!("{route} {phase} {key}"))
        .collect();
    assert_eq!(
        missed,
        ["public request order:1.0.0", "public response order:1.0.0"]
    );
    // 3 of 5 entries and 0 of 1 empty route.
    assert!(
        (coverage.percent() - 50.0).abs() < 1e-9,
        "{}",
        coverage.percent()
    );
}

#[test]
fn a_malformed_file_says_which_field() {
    let error =
        DecisionFile::from_yaml("cases:\n  - name: x\n    route: r\n    expect: {stauts: 200}\n")
            .expect_err("a typo");
    assert!(error.to_string().contains("stauts"), "{error}");
    let error = DecisionFile::from_yaml(
        "cases:\n  - name: both\n    route: r\n    expect: {status: 200, upstream: {path: /}}\n",
    )
    .expect_err("contradiction");
    assert!(error.to_string().contains("keep one"), "{error}");
    assert!(DecisionFile::from_yaml("cases: []\n").is_err());
}
