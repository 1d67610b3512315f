//! The route configuration document as written (file mode; xDS carries the same document).

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The whole document.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawConfig {
    /// Format version; must be `v1`.
    pub version: String,
    /// The routes and their chains.
    #[serde(default)]
    pub routes: Vec<RawRoute>,
    /// What applies to every route.
    #[serde(default)]
    pub defaults: RawDefaults,
}

/// One route and its policy chain.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawRoute {
    /// The route key (Envoy's `xds.route_name` by default).
    pub route: String,
    /// The chain, in request order.
    #[serde(default)]
    pub policies: Vec<RawPolicy>,
    /// Trace every request's chain: which policies ran, their conditions and outcomes (in the
    /// log, and in an `x-policy-explain` header on responses the engine or a policy gives).
    #[serde(default)]
    pub explain: bool,
}

/// One policy in a chain.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawPolicy {
    /// The policy's name.
    pub name: String,
    /// The policy's exact version.
    pub version: String,
    /// `false` keeps the entry (still validated) but never runs it.
    #[serde(default = "enabled_by_default")]
    pub enabled: bool,
    /// CEL; when false the policy is skipped.
    #[serde(default)]
    pub condition: Option<String>,
    /// What a policy error does.
    #[serde(default)]
    pub on_failure: OnFailure,
    /// What a condition that cannot be evaluated (a missing header or metadata key) does.
    #[serde(default)]
    pub on_condition_error: OnConditionError,
    /// Parameters, checked against the definition's schema.
    #[serde(default)]
    pub params: Option<Value>,
    /// Time limit for a policy that waits on I/O, in milliseconds.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
}

fn enabled_by_default() -> bool {
    true
}

/// What a policy error does to the rest of the chain.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OnFailure {
    /// Stop and answer the client with an error (fail closed).
    #[default]
    Deny,
    /// Log and run the next policy.
    Continue,
    /// Log and stop the chain, letting the request through with the changes so far.
    SkipRemaining,
}

/// What a condition that fails at run time does to its policy.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OnConditionError {
    /// Skip the policy, as if the condition were false (the specification's default). Guard
    /// conditions on security policies with `has()`, or use `run` or `deny`.
    #[default]
    Skip,
    /// Run the policy, as if the condition were true.
    Run,
    /// Refuse the request as a policy failure with `onFailure: deny` would (500).
    Deny,
}

/// Settings for every route.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawDefaults {
    /// What a request for a route with no chain gets, unless `defaultRoute` is set.
    #[serde(default)]
    pub unknown_route: UnknownRoute,
    /// A route whose chain serves requests for unknown routes.
    #[serde(default)]
    pub default_route: Option<String>,
    /// Time limit for waiting policies, in milliseconds (default 1000).
    #[serde(default)]
    pub policy_timeout_ms: Option<u64>,
}

/// The treatment of requests whose route has no chain.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum UnknownRoute {
    /// Reject them (fail closed).
    #[default]
    Deny,
    /// Let them through untouched.
    Allow,
}
