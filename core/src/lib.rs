//! The zero-policy engine core: a [`Registry`] of compiled-in policies, route configuration
//! compiled into an immutable [`Snapshot`], CEL conditions, and the chain executor.
pub mod chain;
pub mod condition;
pub mod config;
pub mod decisions;
/// Policy definitions (the `policy-definition` crate).
pub use policy_definition as definition;
pub mod edit;
pub mod error_id;
pub mod headers;
pub mod metrics;
pub mod registry;
pub mod rescue;
pub mod snapshot;

pub use chain::{Chain, Decision, Denial, Needs, Trace};
pub use config::{ConfigError, InstanceCounts, Problem, load, load_keeping, load_value};
pub use edit::{Edit, HeaderEdit};
pub use registry::{RegisteredPolicy, Registry, RegistryError};
pub use snapshot::Snapshot;
