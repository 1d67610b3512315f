//! xDS mode: policy chains from a control plane over the Aggregated Discovery Service
//! (state of the world; delta xDS is not supported).
//!
//! The engine subscribes to one resource of type [`TYPE_URL`], a [`PolicyChainConfig`] holding
//! the same route configuration document as file mode. A valid update is applied whole and
//! ACKed; an invalid one is NACKed with the file-mode report in `error_detail` and the last good
//! configuration stays. `docs/xds.md` has the protocol and an example.

mod backoff;
mod client;
mod resource;
mod subscription;

pub use backoff::Backoff;
pub use client::{XdsError, XdsOptions, XdsTls, run};
pub use resource::{PolicyChainConfig, ResourceError, TYPE_URL};
pub use subscription::{NodeIdentity, Subscription, Update};
