//! How a policy crate hands itself to the engine.

use crate::{PolicyError, RequestPolicy, ResponsePolicy};
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// Builds a policy instance for one route from its (schema-validated) parameters.
pub type Factory = fn(serde_json::Value) -> Result<PolicyInstance, PolicyError>;

/// What a policy crate exports: its `policy-definition.yaml` text and its factory. Made by
/// [`export_policy!`](crate::export_policy); the engine's generated registry registers it.
#[derive(Clone, Copy)]
pub struct PolicyExport {
    definition: &'static str,
    factory: Factory,
    shared_across_routes: bool,
}

impl PolicyExport {
    /// An export from a definition document (YAML) and a factory; instances are not shared
    /// across routes.
    pub const fn new(definition: &'static str, factory: Factory) -> Self {
        PolicyExport {
            definition,
            factory,
            shared_across_routes: false,
        }
    }

    /// Sets whether route entries with equal parameters may share one instance
    /// ([`Policy::SHARED_ACROSS_ROUTES`](crate::Policy::SHARED_ACROSS_ROUTES)).
    #[must_use]
    pub const fn shared_across_routes(mut self, shared: bool) -> Self {
        self.shared_across_routes = shared;
        self
    }

    /// Whether route entries with equal parameters may share one instance.
    pub fn is_shared_across_routes(&self) -> bool {
        self.shared_across_routes
    }

    /// The `policy-definition.yaml` text, embedded at compile time.
    pub fn definition(&self) -> &'static str {
        self.definition
    }

    /// The factory.
    pub fn factory(&self) -> Factory {
        self.factory
    }
}

impl fmt::Debug for PolicyExport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PolicyExport").finish_non_exhaustive()
    }
}

/// Starts an instance's background work ([`Policy::start`](crate::Policy::start)).
type StartHook = Arc<dyn Fn() + Send + Sync>;

/// One policy built for one route: its request hook, its response hook, or both (sharing one
/// value), and its start hook. A hook may be missing for a phase the definition declares when
/// the instance has nothing to do there; a hook for an undeclared phase is a build error.
///
/// Clones are the same instance: they share the hooks and whether it was started.
#[derive(Clone, Default)]
pub struct PolicyInstance {
    request: Option<Arc<dyn RequestPolicy>>,
    response: Option<Arc<dyn ResponsePolicy>>,
    start: Option<StartHook>,
    started: Arc<AtomicBool>,
}

impl PolicyInstance {
    /// An instance with no phase yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds the request hook (builder style).
    pub fn with_request(mut self, policy: Arc<dyn RequestPolicy>) -> Self {
        self.request = Some(policy);
        self
    }

    /// Adds the response hook (builder style).
    pub fn with_response(mut self, policy: Arc<dyn ResponsePolicy>) -> Self {
        self.response = Some(policy);
        self
    }

    /// Sets what [`PolicyInstance::start`] runs (builder style).
    pub fn with_start(mut self, start: impl Fn() + Send + Sync + 'static) -> Self {
        self.start = Some(Arc::new(start));
        self
    }

    /// Runs the start hook, the first time only (for this instance and all its clones). The
    /// engine calls it when a configuration holding the instance is installed.
    pub fn start(&self) {
        if !self.started.swap(true, Ordering::AcqRel)
            && let Some(start) = &self.start
        {
            start();
        }
    }

    /// Whether [`PolicyInstance::start`] has run.
    pub fn is_started(&self) -> bool {
        self.started.load(Ordering::Acquire)
    }

    /// Whether `self` and `other` are the same instance (clones of one build).
    pub fn same_as(&self, other: &PolicyInstance) -> bool {
        Arc::ptr_eq(&self.started, &other.started)
    }

    /// The request hook, if the policy has one.
    pub fn request(&self) -> Option<&Arc<dyn RequestPolicy>> {
        self.request.as_ref()
    }

    /// The response hook, if the policy has one.
    pub fn response(&self) -> Option<&Arc<dyn ResponsePolicy>> {
        self.response.as_ref()
    }
}

impl fmt::Debug for PolicyInstance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PolicyInstance")
            .field("request", &self.request.is_some())
            .field("response", &self.response.is_some())
            .field("started", &self.is_started())
            .finish()
    }
}

/// Exports a policy type: defines `pub fn policy_export() -> policy_sdk::PolicyExport` in the
/// calling module, which the engine's generated registry calls.
///
/// List the phases the type implements (`request`, `response`); they must match `phases` in
/// `policy-definition.yaml`, which is embedded from the crate root unless `definition = ...`
/// gives the text.
///
/// ```
/// use policy_sdk::{export_policy, Outcome, Policy, PolicyError, RequestAction, RequestContext,
///     RequestPolicy};
///
/// struct Allow;
///
/// impl Policy for Allow {
///     type Params = serde_json::Value;
///     fn new(_: Self::Params) -> Result<Self, PolicyError> { Ok(Allow) }
/// }
///
/// impl RequestPolicy for Allow {
///     fn on_request<'a>(&'a self, _: &'a mut RequestContext) -> Outcome<'a, RequestAction> {
///         Outcome::ready(RequestAction::pass())
///     }
/// }
///
/// export_policy!(Allow, phases = [request], definition = "name: allow\nversion: 1.0.0\n");
///
/// let export = policy_export();
/// let instance = (export.factory())(serde_json::json!({})).unwrap();
/// assert!(instance.request().is_some() && instance.response().is_none());
/// ```
#[macro_export]
macro_rules! export_policy {
    ($ty:ty, phases = [$($phase:ident),+ $(,)?] $(,)?) => {
        $crate::export_policy!(
            $ty,
            phases = [$($phase),+],
            definition = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/policy-definition.yaml"))
        );
    };
    ($ty:ty, phases = [$($phase:ident),+ $(,)?], definition = $definition:expr $(,)?) => {
        /// This crate's policy, for the engine's registry (made by `policy_sdk::export_policy!`).
        pub fn policy_export() -> $crate::PolicyExport {
            fn factory(
                params: $crate::__private::Value,
            ) -> ::std::result::Result<$crate::PolicyInstance, $crate::PolicyError> {
                let policy = ::std::sync::Arc::new($crate::instantiate::<$ty>(params)?);
                let instance = $crate::PolicyInstance::new();
                $( let instance = $crate::__export_phase!($phase, instance, policy); )+
                let started = ::std::sync::Arc::clone(&policy);
                let instance = instance.with_start(move || $crate::Policy::start(&*started));
                ::std::result::Result::Ok(instance)
            }
            $crate::PolicyExport::new($definition, factory)
                .shared_across_routes(<$ty as $crate::Policy>::SHARED_ACROSS_ROUTES)
        }
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __export_phase {
    (request, $instance:ident, $policy:ident) => {
        if $crate::RequestPolicy::wants_requests(&*$policy) {
            $instance.with_request($policy.clone())
        } else {
            $instance
        }
    };
    (response, $instance:ident, $policy:ident) => {
        if $crate::ResponsePolicy::wants_responses(&*$policy) {
            $instance.with_response($policy.clone())
        } else {
            $instance
        }
    };
    ($other:ident, $instance:ident, $policy:ident) => {
        compile_error!(concat!(
            "unknown phase `",
            stringify!($other),
            "`: use `request` and/or `response`"
        ))
    };
}
