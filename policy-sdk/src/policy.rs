//! The traits a policy implements.

use crate::{Outcome, PolicyError, RequestAction, RequestContext, ResponseAction, ResponseContext};
use serde::de::DeserializeOwned;

/// How a policy is created: once per route entry, from the entry's parameters, already validated
/// against the definition's JSON Schema and deserialized into [`Policy::Params`].
///
/// Check here what the schema cannot express, and name the field in the error with
/// [`PolicyError::invalid_param`]; the engine then rejects the whole configuration.
///
/// # Lifecycle
///
/// 1. **new**: the engine builds an instance when a configuration is compiled, also when it is
///    only checked (`policy-engine validate`) or later rejected. Validate and build here; do no
///    I/O, start no thread or task.
/// 2. **start**: once the configuration holding the instance is installed, the engine calls
///    [`Policy::start`] once. Begin background work here (a key prefetch, say); return at once.
/// 3. **use**: `on_request` / `on_response`, concurrently, for as long as a configuration holds
///    the instance. A reload that leaves the entry's `(name, version, params)` unchanged keeps the
///    same instance, with its state (buckets, caches, counters); a changed entry gets a new one.
/// 4. **drop**: when no installed configuration and no request in flight holds the instance.
///    Stop background work in `Drop` (or let it notice, through a `Weak`, that the instance is
///    gone).
///
/// State that should outlive one instance (a key cache several routes or a changed entry can
/// reuse) belongs in a [`shared_resource`](crate::shared_resource).
pub trait Policy: Sized + Send + Sync + 'static {
    /// The route-level parameters, deserialized from the route configuration.
    type Params: DeserializeOwned;

    /// Whether route entries with equal `(name, version, params)` may share one instance, also
    /// across routes. Default `false`: one instance per route entry, so state such as a rate
    /// limit's buckets is never pooled between routes. Say `true` only when sharing changes
    /// nothing a client can observe: the policy keeps no per-route state, or the state it keeps
    /// is meant to be common (a cache of public keys).
    const SHARED_ACROSS_ROUTES: bool = false;

    /// Builds the policy for one route entry. No I/O here: see the lifecycle above.
    fn new(params: Self::Params) -> Result<Self, PolicyError>;

    /// Starts background work, once, when the first configuration holding this instance is
    /// installed (never for `validate` or a rejected configuration). Must not block. Default:
    /// nothing.
    fn start(&self) {}
}

/// A policy that runs in the request phase, in the route's listed order.
///
/// The context shows the request with the changes of earlier policies applied. Return
/// [`RequestAction::Continue`] with modifications, or [`RequestAction::Respond`] to answer the
/// client at once.
#[diagnostic::on_unimplemented(
    message = "`{Self}` does not implement `RequestPolicy`",
    label = "exported with the `request` phase here",
    note = "implement `policy_sdk::RequestPolicy` for `{Self}`, or remove `request` from the \
            phases of `export_policy!` and from `phases` in policy-definition.yaml"
)]
pub trait RequestPolicy: Send + Sync + 'static {
    /// Runs the policy on one request.
    fn on_request<'a>(&'a self, ctx: &'a mut RequestContext) -> Outcome<'a, RequestAction>;

    /// Whether this instance has anything to do with requests (checked once per route).
    /// Returning `false` leaves the policy out of the route's request chain.
    fn wants_requests(&self) -> bool {
        true
    }
}

/// A policy that runs in the response phase, in the reverse of the route's listed order (as
/// Envoy runs encoder filters).
#[diagnostic::on_unimplemented(
    message = "`{Self}` does not implement `ResponsePolicy`",
    label = "exported with the `response` phase here",
    note = "implement `policy_sdk::ResponsePolicy` for `{Self}`, or remove `response` from the \
            phases of `export_policy!` and from `phases` in policy-definition.yaml"
)]
pub trait ResponsePolicy: Send + Sync + 'static {
    /// Runs the policy on one response.
    fn on_response<'a>(&'a self, ctx: &'a mut ResponseContext) -> Outcome<'a, ResponseAction>;

    /// Whether this instance has anything to do with responses (checked once per route).
    /// Returning `false` leaves the policy out of the route's response chain, so Envoy need not
    /// send response headers for a route that has nothing else to do with them.
    fn wants_responses(&self) -> bool {
        true
    }
}

/// Deserializes `params` and builds the policy: what the engine does for each route.
///
/// # Errors
/// [`PolicyError::invalid_param`]-style errors from deserialization or from [`Policy::new`].
pub fn instantiate<P: Policy>(params: serde_json::Value) -> Result<P, PolicyError> {
    let params: P::Params = serde_json::from_value(params).map_err(|e| {
        PolicyError::of_kind(crate::ErrorKind::InvalidParams, e.to_string()).with_source(e)
    })?;
    P::new(params)
}
