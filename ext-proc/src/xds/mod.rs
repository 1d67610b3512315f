//! xDS mode: policy chains from a control plane over the Aggregated Discovery Service
//! (state of the world; delta xDS is not supported).
//!
//! The engine subscribes to one resource of type [`TYPE_URL`], a [`PolicyChainConfig`] holding
//! the same route configuration document as file mode. A valid update is applied whole and
//! ACKed; an invalid one is NACKed with the file-mode report in `error_detail` and the last good
//! configuration stays. `docs/xds.md` has the protocol and an example.

mod backoff;
mod client;
mod subscription;

pub use backoff::Backoff;
pub use client::{XdsError, XdsOptions, XdsTls, run};
pub use policy_xds_types::{PolicyChainConfig, ResourceError, TYPE_URL};

// What a control plane is told it may serve is what the engine accepts.
const _: () = assert!(policy_xds_types::MAX_DOCUMENT_BYTES == crate::config::MAX_DOCUMENT_BYTES);
pub use subscription::{NodeIdentity, Subscription, Update};
