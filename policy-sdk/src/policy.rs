//! The traits a policy implements.

use crate::{Outcome, PolicyError, RequestAction, RequestContext, ResponseAction, ResponseContext};
use serde::de::DeserializeOwned;

/// How a policy is created: once per route, from the route's parameters, already validated
/// against the definition's JSON Schema and deserialized into [`Policy::Params`].
///
/// Check here what the schema cannot express, and name the field in the error with
/// [`PolicyError::invalid_param`]; the engine then rejects the whole configuration.
pub trait Policy: Sized + Send + Sync + 'static {
    /// The route-level parameters, deserialized from the route configuration.
    type Params: DeserializeOwned;

    /// Builds the policy for one route.
    fn new(params: Self::Params) -> Result<Self, PolicyError>;
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
