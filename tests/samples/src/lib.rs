//! Every sample policy under `sample-policies/`, for hosts built inside this workspace (the
//! builder generates the same list for a manifest).

use policy_core::{Registry, RegistryError};
use policy_sdk::PolicyExport;

/// The exports of every sample policy, in name and version order.
pub fn exports() -> Vec<PolicyExport> {
    vec![
        api_key_validation::policy_export(),
        cors::policy_export(),
        json_body_transform::policy_export(),
        jwt_validation::policy_export(),
        jwt_validation_v2::policy_export(),
        llm_guard::policy_export(),
        llm_token_budget::policy_export(),
        rate_limit::policy_export(),
        respond::policy_export(),
        security_headers::policy_export(),
        set_header::policy_export(),
    ]
}

/// A registry of every sample policy and `extra` ones (the end-to-end test policies).
///
/// # Errors
/// A policy whose definition the registry refuses, or one registered twice.
pub fn registry(extra: impl IntoIterator<Item = PolicyExport>) -> Result<Registry, RegistryError> {
    let mut registry = Registry::new();
    for export in exports().into_iter().chain(extra) {
        registry.register(export)?;
    }
    Ok(registry)
}
