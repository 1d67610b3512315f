//! Loading route configurations: every problem reported at once, with its location.

use policy_test_support::policies as support;

use policy_core::{ConfigError, Problem, load};
use support::registry;

fn problems(yaml: &str) -> Vec<Problem> {
    match load(yaml, "routes.yaml", &registry()) {
        Err(ConfigError::Invalid {
            problems,
            source_name,
        }) => {
            assert_eq!(source_name, "routes.yaml");
            problems
        }
        Err(other) => panic!("expected an invalid-document error, got: {other}"),
        Ok(_) => panic!("the document was accepted"),
    }
}

fn one_route(policies: &str) -> String {
    format!("version: v1\nroutes:\n  - route: api\n    policies:\n{policies}")
}

#[test]
fn an_unknown_version_is_rejected_with_the_available_versions() {
    let p = problems(&one_route("      - {name: limits, version: 3.0.0}\n"));
    assert_eq!(p.len(), 1, "{p:?}");
    assert_eq!(p[0].path, "routes[0].policies[0].version");
    assert_eq!(
        p[0].context.as_deref(),
        Some("route \"api\", policy limits:3.0.0")
    );
    assert_eq!(
        p[0].message,
        "policy limits has no version \"3.0.0\"; available versions: 1.0.0, 2.0.0"
    );
}

#[test]
fn an_unknown_policy_is_rejected_with_the_available_names() {
    let p = problems(&one_route("      - {name: limitz, version: 1.0.0}\n"));
    assert_eq!(p[0].path, "routes[0].policies[0].name");
    assert!(
        p[0].message.starts_with(
            "no policy named \"limitz\" is compiled into this engine; available: counter, fail, limits, meta"
        ),
        "{}",
        p[0].message
    );
}

#[test]
fn three_schema_violations_are_reported_in_one_error() {
    let yaml = one_route(
        "      - name: limits\n        version: 1.0.0\n        params: {requestsPerSecond: -5, burst: 0, keySource: cookie}\n",
    );
    let err = load(&yaml, "routes.yaml", &registry()).expect_err("rejected");
    let p = err.problems();
    assert_eq!(p.len(), 3, "{err}");
    let find = |field: &str| {
        p.iter()
            .find(|p| p.path == format!("routes[0].policies[0].params.{field}"))
            .unwrap_or_else(|| panic!("no problem at {field}: {err}"))
    };
    assert!(find("requestsPerSecond").message.contains("-5"), "{err}");
    assert!(
        find("requestsPerSecond").message.contains("minimum"),
        "{err}"
    );
    assert!(
        find("burst").message.contains("less than the minimum of 1"),
        "{err}"
    );
    assert!(find("keySource").message.contains("\"cookie\""), "{err}");
    let text = err.to_string();
    assert!(
        text.starts_with("routes.yaml: 3 problems found:\n  - routes[0].policies[0].params."),
        "{text}"
    );
}

#[test]
fn missing_required_and_unknown_parameters_are_reported() {
    let p = problems(&one_route(
        "      - {name: limits, version: 1.0.0, params: {rps: 1}}\n",
    ));
    let text: Vec<String> = p.iter().map(ToString::to_string).collect();
    assert_eq!(p.len(), 2, "{text:?}");
    assert!(
        text.iter()
            .any(|t| t.contains("\"requestsPerSecond\" is a required property")),
        "{text:?}"
    );
    assert!(text.iter().any(|t| t.contains("rps")), "{text:?}");
}

#[test]
fn secret_parameter_values_never_appear_in_errors() {
    let p = problems(&one_route(
        "      - {name: limits, version: 1.0.0, params: {requestsPerSecond: 1, secret: hunter2}}\n",
    ));
    assert_eq!(p[0].path, "routes[0].policies[0].params.secret");
    assert!(!p[0].message.contains("hunter2"), "{}", p[0].message);
}

#[test]
fn semantic_parameter_checks_name_the_field() {
    let p = problems(&one_route(
        "      - {name: limits, version: 1.0.0, params: {requestsPerSecond: 1, burst: 500}}\n",
    ));
    assert_eq!(p[0].path, "routes[0].policies[0].params.burst");
    assert_eq!(
        p[0].message,
        "burst must be at most 100 times requestsPerSecond"
    );
}

#[test]
fn each_version_validates_against_its_own_schema() {
    // v2's schema allows what v1's rejects: routes pin versions side by side.
    let yaml = "version: v1\nroutes:\n\
        \x20 - route: old\n    policies: [{name: limits, version: 1.0.0, params: {requestsPerSecond: 2}}]\n\
        \x20 - route: new\n    policies: [{name: limits, version: 2.0.0, params: {requestsPerSecond: -1}}]\n";
    let snap = load(yaml, "routes.yaml", &registry()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        snap.route("old").expect("old").request_steps()[0].key(),
        "limits:1.0.0"
    );
    assert_eq!(
        snap.route("new").expect("new").request_steps()[0].key(),
        "limits:2.0.0"
    );
}

#[test]
fn problems_across_routes_are_all_reported() {
    let yaml = "version: v2\nroutes:\n\
        \x20 - route: a\n    policies:\n      - {name: order, version: 1.0.0, condition: 'request.path ==', params: {label: x}}\n\
        \x20 - route: a\n    policies:\n      - {name: order, version: 1.0.0, timeoutMs: 0, params: {label: x}}\n\
        \x20 - route: b\n    policies:\n      - {name: order, version: 1.0.0, condition: 'req.path == \"/\"', params: {label: x}}\n\
        defaults: {defaultRoute: nowhere}\n";
    let p = problems(yaml);
    let paths: Vec<&str> = p.iter().map(|p| p.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "version",
            "routes[0].policies[0].condition",
            "routes[1].route",
            "routes[1].policies[0].timeoutMs",
            "routes[2].policies[0].condition",
            "defaults.defaultRoute",
        ],
        "{p:#?}"
    );
    assert!(p[2].message.contains("listed twice"));
    assert!(p[4].message.contains("unknown variable `req`"));
    assert!(p[3].message.contains("use 1 to 60000"));
}

#[test]
fn unknown_keys_are_parse_errors_that_name_the_key_and_the_file() {
    let err = load(
        "version: v1\nroutes:\n  - route: a\n    polices: []\n",
        "routes.yaml",
        &registry(),
    )
    .expect_err("rejected");
    assert!(matches!(err, ConfigError::Parse { .. }), "{err}");
    let text = err.to_string();
    assert!(text.starts_with("routes.yaml: "), "{text}");
    assert!(text.contains("polices"), "{text}");
}

#[test]
fn a_wrong_on_failure_value_is_a_parse_error() {
    let err = load(
        &one_route("      - {name: fail, version: 1.0.0, onFailure: ignore}\n"),
        "r.yaml",
        &registry(),
    )
    .expect_err("rejected");
    assert!(err.to_string().contains("ignore"), "{err}");
}

#[test]
fn invalid_yaml_is_a_parse_error() {
    let err = load("version: v1\nroutes: [\n", "r.yaml", &registry()).expect_err("rejected");
    assert!(matches!(err, ConfigError::Parse { .. }), "{err}");
}

#[test]
fn an_oversized_document_is_refused_before_parsing() {
    let huge = format!(
        "version: v1\n#{}\n",
        "x".repeat(policy_core::config::MAX_DOCUMENT_BYTES)
    );
    let err = load(&huge, "r.yaml", &registry()).expect_err("rejected");
    assert!(matches!(err, ConfigError::TooLarge { .. }), "{err}");
}

#[test]
fn json_documents_load_too() {
    let snap = load(
        r#"{"version": "v1", "routes": [{"route": "a", "policies": [{"name": "fail", "version": "1.0.0"}]}]}"#,
        "routes.json",
        &registry(),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(snap.route_names(), ["a"]);
}

#[test]
fn a_compiled_phase_the_definition_does_not_declare_is_rejected() {
    let p = problems(&one_route("      - {name: undeclared, version: 1.0.0}\n"));
    assert_eq!(p[0].path, "routes[0].policies[0]");
    assert!(p[0].message.starts_with("the compiled policy implements the response phase but its definition does not declare it"), "{}", p[0].message);
}

#[test]
fn conditions_on_path_names_whose_meaning_changed_get_a_warning() {
    let snap = policy_test_support::policies::snapshot(
        "version: v1\nroutes:\n  - route: a\n    policies:\n      - {name: order, version: 1.0.0, condition: 'request.path == \"/x\" || request.headers[\"x\"] == request.url_path', onConditionError: run, params: {label: a}}\n      - {name: order, version: 1.0.0, condition: 'request.method == \"GET\"', params: {label: b}}\n",
    );
    let warnings: Vec<String> = snap.warnings().iter().map(ToString::to_string).collect();
    assert_eq!(warnings.len(), 2, "{warnings:#?}");
    assert!(
        warnings[0].starts_with("routes[0].policies[0].condition")
            && warnings[0].contains("`request.path` now includes the query string"),
        "{warnings:#?}"
    );
    assert!(
        warnings[1].contains("`request.url_path` is now the path without the query string"),
        "{warnings:#?}"
    );
}
