//! The ext_proc host of the policy core: Envoy's External Processing API served over gRPC
//! ([`server`]), configuration from a file ([`reload`]) or a control plane ([`xds`]) into the
//! [`state`] the server reads, the [`admin`] API and the engine's command line ([`run`]).
//!
//! The policy semantics live in [`policy_core`]; only [`server`]'s translation layer knows
//! Envoy's messages.

pub mod admin;
pub mod background;
pub mod cli;
pub mod reload;
pub mod server;
pub mod state;
pub mod xds;

pub use cli::run;

// The core's items under the paths this crate's modules use.
use policy_core::{Registry, Snapshot, chain, config, load, load_keeping, load_value, metrics};
