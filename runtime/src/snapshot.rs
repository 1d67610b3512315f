//! The compiled, immutable route configuration that requests run against.

use crate::chain::Chain;
use std::collections::HashMap;
use std::sync::Arc;

/// Every route's chain, compiled and validated. Immutable: a new configuration produces a new
/// snapshot, swapped in whole; requests in flight keep the one they started with.
#[derive(Debug)]
pub struct Snapshot {
    pub(crate) routes: HashMap<String, Arc<Chain>>,
    pub(crate) fallback: Option<Arc<Chain>>,
    pub(crate) source_name: String,
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
}
