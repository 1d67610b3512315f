//! A route's compiled policy chain and its execution.

mod execute;
mod unwind;

pub use execute::{Decision, Denial, Trace};
pub use unwind::call as catch_panic;

use crate::condition::Condition;
use crate::config::{OnConditionError, OnFailure};
use crate::metrics::{PolicyMetrics, RouteMetrics};
use policy_sdk::{RequestPolicy, ResponsePolicy};
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

/// What a chain needs Envoy to send, computed once when the configuration is compiled.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Needs {
    /// Some policy needs the request body: the request chain runs at the body message.
    pub request_body: bool,
    /// Some policy runs in the response phase.
    pub response_headers: bool,
    /// Some policy needs the response body.
    pub response_body: bool,
    /// A response-phase policy needs the request body (otherwise it is dropped once the request
    /// phase is done, not kept through the upstream round trip).
    pub request_body_in_response: bool,
}

/// One policy of a chain, ready to run.
pub struct Step<P: ?Sized> {
    pub(crate) key: Arc<str>,
    pub(crate) position: usize,
    pub(crate) condition: Option<Condition>,
    pub(crate) on_failure: OnFailure,
    pub(crate) on_condition_error: OnConditionError,
    pub(crate) timeout: Duration,
    pub(crate) policy: Arc<P>,
    pub(crate) metrics: Arc<PolicyMetrics>,
    /// This route's count of this policy's condition errors.
    pub(crate) condition_errors: Arc<AtomicU64>,
}

impl<P: ?Sized> Step<P> {
    /// `name:version`.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The policy version's counters (shared by every route that runs it).
    pub fn metrics(&self) -> &Arc<PolicyMetrics> {
        &self.metrics
    }

    /// The position in the route's `policies` list.
    pub fn position(&self) -> usize {
        self.position
    }

    /// The condition, if any.
    pub fn condition(&self) -> Option<&Condition> {
        self.condition.as_ref()
    }

    /// What a failure does.
    pub fn on_failure(&self) -> OnFailure {
        self.on_failure
    }
}

impl<P: ?Sized> fmt::Debug for Step<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Step")
            .field("key", &self.key)
            .field("position", &self.position)
            .field("condition", &self.condition)
            .field("on_failure", &self.on_failure)
            .finish_non_exhaustive()
    }
}

/// A route's chain: request steps in listed order, response steps in reverse order.
#[derive(Debug)]
pub struct Chain {
    pub(crate) route: Arc<str>,
    pub(crate) request: Vec<Step<dyn RequestPolicy>>,
    pub(crate) response: Vec<Step<dyn ResponsePolicy>>,
    pub(crate) needs: Needs,
    pub(crate) explain: bool,
    pub(crate) metrics: Arc<RouteMetrics>,
}

impl Chain {
    /// A chain that runs nothing (what `unknownRoute: allow` gives).
    pub fn empty(route: &str) -> Self {
        Chain {
            route: route.into(),
            request: Vec::new(),
            response: Vec::new(),
            needs: Needs::default(),
            explain: false,
            metrics: Arc::default(),
        }
    }

    /// Whether requests on this route get an explain trace (`explain: true`).
    pub fn explain(&self) -> bool {
        self.explain
    }

    /// This route's counters (shared: a host may hold them past the chain).
    pub fn metrics(&self) -> &Arc<RouteMetrics> {
        &self.metrics
    }

    /// The route this chain serves.
    pub fn route(&self) -> &str {
        &self.route
    }

    /// The request-phase steps, in execution order.
    pub fn request_steps(&self) -> &[Step<dyn RequestPolicy>] {
        &self.request
    }

    /// The response-phase steps, in execution order (the reverse of the listed order).
    pub fn response_steps(&self) -> &[Step<dyn ResponsePolicy>] {
        &self.response
    }

    /// What Envoy must send for this chain.
    pub fn needs(&self) -> Needs {
        self.needs
    }
}
