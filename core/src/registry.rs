//! The policies compiled into this engine, keyed by `name:version`.

use crate::definition::{DefinitionError, ParamsSchema, PolicyDefinition};
use policy_sdk::{Factory, PolicyExport};
use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use crate::metrics::Metrics;

/// A registered policy version: its definition, compiled parameter schema and factory.
pub struct RegisteredPolicy {
    definition: PolicyDefinition,
    params: ParamsSchema,
    factory: Factory,
    shared_across_routes: bool,
}

impl RegisteredPolicy {
    /// The policy's definition.
    pub fn definition(&self) -> &PolicyDefinition {
        &self.definition
    }

    /// The compiled parameter schema.
    pub fn params_schema(&self) -> &ParamsSchema {
        &self.params
    }

    /// Builds an instance for one route.
    pub fn factory(&self) -> Factory {
        self.factory
    }

    /// Whether route entries with equal parameters share one instance, also across routes
    /// (`Policy::SHARED_ACROSS_ROUTES`).
    pub fn shared_across_routes(&self) -> bool {
        self.shared_across_routes
    }
}

impl fmt::Debug for RegisteredPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegisteredPolicy")
            .field("key", &self.definition.key())
            .finish_non_exhaustive()
    }
}

/// Why a policy could not be registered.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RegistryError {
    /// The embedded definition is invalid.
    #[error("invalid policy definition{}: {source}", name.as_deref().map(|n| format!(" of {n}")).unwrap_or_default())]
    Definition {
        /// The policy's name, when the definition got that far.
        name: Option<String>,
        /// What is wrong.
        #[source]
        source: DefinitionError,
    },
    /// The same `name:version` was registered twice.
    #[error("policy {0} is registered twice")]
    Duplicate(String),
}

/// Every policy version this engine can run. Several versions of one policy coexist.
#[derive(Debug, Default)]
pub struct Registry {
    policies: BTreeMap<String, BTreeMap<VersionKey, RegisteredPolicy>>,
    metrics: Arc<Metrics>,
}

impl Registry {
    /// An empty registry: the engine ships with no policy.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers an exported policy; returns its `name:version`.
    ///
    /// # Errors
    /// An invalid embedded definition or parameter schema, or a duplicate `name:version`.
    pub fn register(&mut self, export: PolicyExport) -> Result<String, RegistryError> {
        let definition = PolicyDefinition::from_yaml(export.definition())
            .map_err(|source| RegistryError::Definition { name: None, source })?;
        let params = definition
            .params_schema()
            .map_err(|source| RegistryError::Definition {
                name: Some(definition.key()),
                source,
            })?;
        let key = definition.key();
        let versions = self.policies.entry(definition.name.clone()).or_default();
        let version = VersionKey(definition.version.clone());
        if versions.contains_key(&version) {
            return Err(RegistryError::Duplicate(key));
        }
        versions.insert(
            version,
            RegisteredPolicy {
                definition,
                params,
                factory: export.factory(),
                shared_across_routes: export.is_shared_across_routes(),
            },
        );
        self.metrics.policy(&key);
        Ok(key)
    }

    /// The engine's metrics: policy series are created here, route series when a
    /// configuration is compiled, so counters survive reloads.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The policy `name` at `version`.
    pub fn get(&self, name: &str, version: &str) -> Option<&RegisteredPolicy> {
        self.policies
            .get(name)?
            .get(&VersionKey(version.to_owned()))
    }

    /// The registered versions of `name`, oldest first (empty when unknown).
    pub fn versions(&self, name: &str) -> Vec<&str> {
        self.policies
            .get(name)
            .map(|v| v.keys().map(|k| k.0.as_str()).collect())
            .unwrap_or_default()
    }

    /// The registered policy names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.policies.keys().map(String::as_str)
    }

    /// Every registered policy version, by name then version.
    pub fn iter(&self) -> impl Iterator<Item = &RegisteredPolicy> {
        self.policies.values().flat_map(BTreeMap::values)
    }

    /// The number of registered policy versions.
    pub fn len(&self) -> usize {
        self.policies.values().map(BTreeMap::len).sum()
    }

    /// Whether nothing is registered.
    pub fn is_empty(&self) -> bool {
        self.policies.is_empty()
    }
}

/// A version string ordered by its numeric semver parts (`1.10.0` after `1.9.0`).
#[derive(Clone, Debug, PartialEq, Eq)]
struct VersionKey(String);

impl VersionKey {
    fn parts(&self) -> (u64, u64, u64, &str) {
        let (core, pre) = self.0.split_once('-').unwrap_or((&self.0, ""));
        let mut nums = core.split('.').map(|n| n.parse::<u64>().unwrap_or(0));
        let mut next = || nums.next().unwrap_or(0);
        (next(), next(), next(), pre)
    }
}

impl Ord for VersionKey {
    fn cmp(&self, other: &Self) -> Ordering {
        let (a, b) = (self.parts(), other.parts());
        // A pre-release sorts before its release.
        (a.0, a.1, a.2)
            .cmp(&(b.0, b.1, b.2))
            .then_with(|| match (a.3.is_empty(), b.3.is_empty()) {
                (true, false) => Ordering::Greater,
                (false, true) => Ordering::Less,
                _ => a.3.cmp(b.3),
            })
            .then_with(|| self.0.cmp(&other.0))
    }
}

impl PartialOrd for VersionKey {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use policy_sdk::PolicyInstance;

    fn export(definition: &'static str) -> PolicyExport {
        PolicyExport::new(definition, |_| Ok(PolicyInstance::new()))
    }

    #[test]
    fn versions_coexist_and_sort_numerically() {
        let mut r = Registry::new();
        for def in [
            "name: p\nversion: 1.10.0\ndescription: d\nphases: [request]\n",
            "name: p\nversion: 1.9.0\ndescription: d\nphases: [request]\n",
            "name: p\nversion: 1.10.0-rc.1\ndescription: d\nphases: [request]\n",
        ] {
            r.register(export(def)).expect("registers");
        }
        assert_eq!(r.versions("p"), ["1.9.0", "1.10.0-rc.1", "1.10.0"]);
        assert_eq!(r.len(), 3);
        assert!(r.get("p", "1.9.0").is_some() && r.get("p", "2.0.0").is_none());
    }

    #[test]
    fn duplicates_and_bad_definitions_are_rejected() {
        let mut r = Registry::new();
        let def = "name: p\nversion: 1.0.0\ndescription: d\nphases: [request]\n";
        r.register(export(def)).expect("first registers");
        let dup = r.register(export(def)).expect_err("duplicate");
        assert_eq!(dup.to_string(), "policy p:1.0.0 is registered twice");
        let bad = r.register(export("name: p\n")).expect_err("invalid");
        assert!(
            bad.to_string().starts_with("invalid policy definition: "),
            "{bad}"
        );
    }
}
