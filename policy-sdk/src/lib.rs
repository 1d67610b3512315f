//! The contract between policy authors and the policy engine.
//!
//! A policy is an ordinary crate: a type that implements [`Policy`] (built once per route from
//! typed parameters) and [`RequestPolicy`] and/or [`ResponsePolicy`] (run per request), exported
//! with [`export_policy!`] next to a `policy-definition.yaml` that declares its name, version,
//! phases and parameter schema. The engine's builder links the crate in; routes then name it as
//! `name:version`.
//!
//! Policies never touch the wire protocol: they read a [`RequestContext`] or [`ResponseContext`]
//! and return an action ([`RequestAction`], [`ResponseAction`]). Synchronous decisions return
//! [`Outcome::Ready`] and cost no allocation; policies that wait on I/O return
//! [`Outcome::Pending`].
//!
//! ```
//! use policy_sdk::{ImmediateResponse, Outcome, Policy, PolicyError, Request, RequestAction,
//!     RequestContext, RequestPolicy, UpstreamRequestMods};
//! use serde::Deserialize;
//!
//! #[derive(Deserialize)]
//! #[serde(rename_all = "camelCase", deny_unknown_fields)]
//! struct Params { required_header: String }
//!
//! /// Rejects requests without a header; marks the others.
//! struct RequireHeader { name: String }
//!
//! impl Policy for RequireHeader {
//!     type Params = Params;
//!     fn new(p: Params) -> Result<Self, PolicyError> {
//!         if p.required_header.is_empty() {
//!             return Err(PolicyError::invalid_param("requiredHeader", "must not be empty"));
//!         }
//!         Ok(RequireHeader { name: p.required_header })
//!     }
//! }
//!
//! impl RequestPolicy for RequireHeader {
//!     fn on_request<'a>(&'a self, ctx: &'a mut RequestContext) -> Outcome<'a, RequestAction> {
//!         if ctx.request().header(&self.name).is_none() {
//!             return Outcome::ready(ImmediateResponse::new(400));
//!         }
//!         ctx.metadata_mut().set("checked", true);
//!         Outcome::ready(UpstreamRequestMods::new().set_header("x-checked", "yes"))
//!     }
//! }
//!
//! // policy_sdk::export_policy!(RequireHeader, phases = [request]);
//!
//! let policy: RequireHeader =
//!     policy_sdk::testkit::new_policy(serde_json::json!({"requiredHeader": "x-tenant"})).unwrap();
//! let mut ctx = RequestContext::new(Request::new("GET", "/"));
//! let denied = policy_sdk::testkit::run_request(&policy, &mut ctx);
//! assert_eq!(policy_sdk::testkit::expect_respond(denied).status(), 400);
//! ```
//!
//! # Rules the engine relies on
//!
//! - **Instances live across reloads**: `new` builds, `start` begins background work once the
//!   configuration is installed, requests use the instance, and it is dropped when no
//!   configuration holds it ([`Policy`] spells out the lifecycle). A reload keeps an instance
//!   whose entry did not change, so its state carries over; `new` does no I/O, since
//!   `policy-engine validate` and rejected configurations build instances too. State several
//!   instances should share lives in a [`shared_resource`].
//! - **Pending outcomes may be dropped at any await point**: the route's policy timeout, the
//!   client going away, or a reload cut them short. Never leave shared state waiting on work a
//!   future owns: work that others wait for (a key fetch, a refill) runs on its own task or
//!   thread and completes and wakes its waiters by itself, so a dropped future costs nothing
//!   (the `jwt-validation` sample's JWKS cache is the reference). Keep I/O timeouts below the
//!   policy timeout (default 1000 ms) so a slow backend fails as the policy's own error.
//! - **A panic is a failure, not a crash**: the engine catches it, logs it with an error id,
//!   counts it (`policy_engine_policy_panics_total`) and applies the entry's `onFailure`. State
//!   the panic left half-updated stays as it is, so return [`PolicyError`] instead of panicking.
//! - **Header values that are not UTF-8** are absent from the string view ([`HeaderMap::get`])
//!   and still counted by [`HeaderMap::contains`]; [`HeaderMap::get_all_bytes`] reads them. The
//!   proxy forwards them unchanged unless a policy sets or removes that header.
#![deny(missing_docs)]

mod action;
mod context;
mod counter;
mod error;
mod export;
mod headers;
mod http;
mod metadata;
mod outcome;
mod policy;
mod shared;
pub mod testkit;

pub use action::{
    BodyOp, HeaderOp, ImmediateResponse, RequestAction, ResponseAction, UpstreamRequestMods,
    UpstreamResponseMods,
};
pub use context::{Changes, HeaderChange, RequestContext, ResponseContext};
pub use counter::{Counter, CounterValue, counters};
pub use error::{ErrorKind, PolicyError};
pub use export::{Factory, PolicyExport, PolicyInstance};
pub use headers::HeaderMap;
pub use http::{Request, Response, query_param};
pub use metadata::Metadata;
pub use outcome::{BoxFuture, Outcome, OutcomeFuture};
pub use policy::{Policy, RequestPolicy, ResponsePolicy, instantiate};
pub use shared::shared_resource;

/// JSON values, as carried by [`Metadata`] and policy parameters.
pub use serde_json::Value;

#[doc(hidden)]
pub mod __private {
    pub use serde_json::Value;
}
