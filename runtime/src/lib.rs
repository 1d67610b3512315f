//! The zero-policy engine core: a [`Registry`] of compiled-in policies, route configuration
//! compiled into an immutable [`Snapshot`], CEL conditions, and the chain executor.
pub mod condition;
pub mod definition;
pub mod registry;

pub use registry::{Registry, RegisteredPolicy, RegistryError};
