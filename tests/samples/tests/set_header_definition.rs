//! The shipped definition registers, and its schema guards route parameters.

use policy_core::{Registry, load};

fn registry() -> Registry {
    let mut registry = Registry::new();
    registry
        .register(set_header::policy_export())
        .expect("the definition is valid");
    registry
}

fn route(params: &str) -> String {
    format!(
        "version: v1\nroutes:\n  - route: r\n    policies:\n      - name: set-header\n        version: 1.0.0\n        params: {params}\n"
    )
}

#[test]
fn valid_params_load() {
    let snap = load(&route("{request: {set: {x-a: b}}}"), "r.yaml", &registry())
        .unwrap_or_else(|e| panic!("{e}"));
    let chain = snap.route("r").expect("route");
    assert_eq!(chain.request_steps().len(), 1);
    assert!(chain.response_steps().is_empty());
}

#[test]
fn the_schema_rejects_bad_names_values_and_empty_params() {
    for (params, at) in [
        ("{request: {set: {\"bad name\": x}}}", "params.request.set"),
        (
            "{request: {set: {x-a: \"a\\r\\nb\"}}}",
            "params.request.set.x-a",
        ),
        ("{}", "params"),
        ("{request: {}}", "params.request"),
        ("{sideways: {}}", "params"),
    ] {
        let err = load(&route(params), "r.yaml", &registry()).expect_err(params);
        let text = err.to_string();
        assert!(
            text.contains(&format!("routes[0].policies[0].{at} ")),
            "{params}: {text}"
        );
    }
}
