//! `dev-engine`: the engine with the sample policies and the end-to-end test policies
//! (`policy_test_support::policies::e2e_exports`), for development and the end-to-end tests
//! (the builder produces the real `policy-engine`).

use policy_core::Registry;
use std::process::ExitCode;

fn main() -> ExitCode {
    let mut registry = Registry::new();
    for export in [
        api_key_validation::policy_export(),
        cors::policy_export(),
        json_body_transform::policy_export(),
        jwt_validation::policy_export(),
        jwt_validation_v2::policy_export(),
        llm_guard::policy_export(),
        rate_limit::policy_export(),
        respond::policy_export(),
        security_headers::policy_export(),
        set_header::policy_export(),
    ]
    .into_iter()
    .chain(policy_test_support::policies::e2e_exports())
    {
        if let Err(error) = registry.register(export) {
            eprintln!("dev-engine: {error}");
            return ExitCode::FAILURE;
        }
    }
    let build_info =
        serde_json::json!({"engine": "dev-engine", "version": env!("CARGO_PKG_VERSION")});
    policy_ext_proc::run(registry, build_info)
}
