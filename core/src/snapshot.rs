//! The compiled, immutable route configuration that requests run against.

use crate::chain::Chain;
use crate::config::{InstanceCounts, Instances, Problem};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

/// Every route's chain, compiled and validated. Immutable: a new configuration produces a new
/// snapshot, swapped in whole; requests in flight keep the one they started with.
#[derive(Debug)]
pub struct Snapshot {
    pub(crate) routes: HashMap<String, Arc<Chain>>,
    pub(crate) fallback: Option<Arc<Chain>>,
    pub(crate) source_name: String,
    pub(crate) source_kind: &'static str,
    pub(crate) version: String,
    pub(crate) document: serde_json::Value,
    pub(crate) loaded_at: SystemTime,
    pub(crate) warnings: Vec<Problem>,
    pub(crate) instances: Instances,
}

impl Snapshot {
    /// The chain for `route`, the fallback chain for an unknown route, or `None` when unknown
    /// routes are denied.
    pub fn chain_for(&self, route: &str) -> Option<&Arc<Chain>> {
        self.routes.get(route).or(self.fallback.as_ref())
    }

    /// The chain configured for exactly `route`.
    pub fn route(&self, route: &str) -> Option<&Arc<Chain>> {
        self.routes.get(route)
    }

    /// The configured route names, sorted.
    pub fn route_names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.routes.keys().map(String::as_str).collect();
        names.sort_unstable();
        names
    }

    /// Where the configuration came from (a file path or a stream name).
    pub fn source_name(&self) -> &str {
        &self.source_name
    }

    /// `file` or `xds`.
    pub fn source_kind(&self) -> &'static str {
        self.source_kind
    }

    /// The configuration's version: a digest of the file, or the xDS `version_info`.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// Sets where the snapshot came from and its version (the xDS client's `version_info`).
    #[must_use]
    pub fn with_origin(mut self, kind: &'static str, version: impl Into<String>) -> Self {
        self.source_kind = kind;
        self.version = version.into();
        self
    }

    /// The document as loaded, with every secret parameter (`writeOnly` in its policy's
    /// schema) replaced by `"[redacted]"`: safe to show on the admin API.
    pub fn document(&self) -> &serde_json::Value {
        &self.document
    }

    /// What is valid but likely not meant (e.g. a condition that skips a policy whenever a
    /// header is missing): logged at load, printed by `validate`.
    pub fn warnings(&self) -> &[Problem] {
        &self.warnings
    }

    /// Runs the start hook of every policy instance not started yet: what a host does when it
    /// installs the snapshot (never for one it only validated). Instances kept from the running
    /// snapshot were started already and are left alone.
    pub fn start_policies(&self) {
        self.instances.start();
    }

    /// How many policy instances the snapshot holds, and how many it kept from the one it
    /// replaces.
    pub fn instance_counts(&self) -> InstanceCounts {
        self.instances.counts()
    }

    /// When it was compiled.
    pub fn loaded_at(&self) -> SystemTime {
        self.loaded_at
    }
}
