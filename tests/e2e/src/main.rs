//! `dev-engine`: the engine with the sample policies and the end-to-end test policies
//! (`policy_test_support::policies::e2e_exports`), for development and the end-to-end tests
//! (the builder produces the real `policy-engine`).

use std::process::ExitCode;

fn main() -> ExitCode {
    let registry = match policy_samples::registry(policy_test_support::policies::e2e_exports()) {
        Ok(registry) => registry,
        Err(error) => {
            eprintln!("dev-engine: {error}");
            return ExitCode::FAILURE;
        }
    };
    let build_info =
        serde_json::json!({"engine": "dev-engine", "version": env!("CARGO_PKG_VERSION")});
    policy_ext_proc::run(registry, build_info)
}
