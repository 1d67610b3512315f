//! `libpolicy_dev_module.so`: the sample and end-to-end test policies as an Envoy module.

policy_envoy_module::export_module!(registry);

fn registry() -> policy_envoy_module::Registry {
    match policy_samples::registry(policy_test_support::policies::e2e_exports()) {
        Ok(registry) => registry,
        // The module's loader catches it and refuses to load, with the log line.
        Err(error) => panic!("the dev module's policies do not register: {error}"),
    }
}
