//! Raw configuration -> validated, instantiated [`Snapshot`].

use super::Problem;
use super::instances::{InstanceKey, Instances};
use super::raw::{RawConfig, RawPolicy, UnknownRoute};
use crate::chain::{Chain, Step};
use crate::condition::Condition;
use crate::config::OnConditionError;
use crate::definition::Phase;
use crate::metrics::UNKNOWN_ROUTE;
use crate::{Registry, Snapshot};
use policy_sdk::PolicyInstance;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

const SUPPORTED_VERSION: &str = "v1";
const MAX_ROUTES: usize = 10_000;
const MAX_POLICIES_PER_ROUTE: usize = 64;
const MAX_CONDITION_BYTES: usize = 4096;
const DEFAULT_TIMEOUT_MS: u64 = 1000;
const MAX_TIMEOUT_MS: u64 = 60_000;

/// Compiles `raw`, taking over the instances of `running` whose entries did not change; on
/// failure returns every problem found.
pub(super) fn compile(
    raw: RawConfig,
    source_name: &str,
    registry: &Registry,
    running: Option<&Snapshot>,
) -> Result<Snapshot, Vec<Problem>> {
    let mut instances = Instances::default();
    let running = running.map(|s| &s.instances);
    let mut warnings = Vec::new();
    let mut problems = Vec::new();
    let mut report = |path: String, context: Option<String>, message: String| {
        problems.push(Problem {
            path,
            context,
            message,
        });
    };

    if raw.version != SUPPORTED_VERSION {
        report(
            "version".into(),
            None,
            format!(
                "unsupported version {:?}; this engine reads version: {SUPPORTED_VERSION}",
                raw.version
            ),
        );
    }
    if raw.routes.len() > MAX_ROUTES {
        report(
            "routes".into(),
            None,
            format!("{} routes; the limit is {MAX_ROUTES}", raw.routes.len()),
        );
    }
    let default_timeout = match raw.defaults.policy_timeout_ms {
        None => Duration::from_millis(DEFAULT_TIMEOUT_MS),
        Some(ms) => checked_timeout(ms).unwrap_or_else(|message| {
            report("defaults.policyTimeoutMs".into(), None, message);
            Duration::from_millis(DEFAULT_TIMEOUT_MS)
        }),
    };

    let mut routes: HashMap<String, Arc<Chain>> = HashMap::with_capacity(raw.routes.len());
    for (r, route) in raw.routes.iter().enumerate() {
        let route_path = format!("routes[{r}]");
        if route.route.is_empty() {
            report(
                format!("{route_path}.route"),
                None,
                "the route name is empty".into(),
            );
        } else if routes.contains_key(&route.route) {
            report(
                format!("{route_path}.route"),
                None,
                format!("route {:?} is listed twice", route.route),
            );
        }
        if route.policies.len() > MAX_POLICIES_PER_ROUTE {
            report(
                format!("{route_path}.policies"),
                Some(format!("route {:?}", route.route)),
                format!(
                    "{} policies; the limit is {MAX_POLICIES_PER_ROUTE}",
                    route.policies.len()
                ),
            );
            continue;
        }
        let mut chain = Chain::empty(&route.route);
        chain.explain = route.explain;
        chain.metrics = registry.metrics().route(&route.route);
        let mut response_steps = Vec::new();
        let mut entries = Entries {
            route: &route.route,
            seen: HashMap::new(),
            instances: &mut instances,
            running,
        };
        for (p, policy) in route.policies.iter().enumerate() {
            let path = format!("{route_path}.policies[{p}]");
            let context = format!(
                "route {:?}, policy {}:{}",
                route.route, policy.name, policy.version
            );
            let mut fail = |at: &str, message: String| {
                report(format!("{path}{at}"), Some(context.clone()), message)
            };
            let Some(built) =
                build_policy(policy, registry, default_timeout, &mut entries, &mut fail)
            else {
                continue;
            };
            if policy.on_condition_error == OnConditionError::Skip
                && built
                    .condition
                    .as_ref()
                    .is_some_and(Condition::may_fail_on_missing_key)
            {
                warnings.push(Problem {
                    path: format!("{path}.condition"),
                    context: Some(context.clone()),
                    message: "the condition reads a header, query parameter or metadata key without has(): when it is missing the condition fails and the policy is skipped (onConditionError: skip). Guard it, e.g. has(request.headers[\"x-tenant\"]) && ..., or set onConditionError: run or deny".into(),
                });
            }
            for name in built
                .condition
                .as_ref()
                .map(Condition::reads_changed_names)
                .unwrap_or_default()
            {
                let now = if name == "request.path" {
                    "`request.path` now includes the query string, as Envoy's attribute does (before, it was the path alone); for the path without the query use `request.url_path`"
                } else {
                    "`request.url_path` is now the path without the query string, as Envoy's attribute is (before, it included the query); for path and query use `request.path`"
                };
                warnings.push(Problem {
                    path: format!("{path}.condition"),
                    context: Some(context.clone()),
                    message: format!(
                        "{now}. Check that the condition means what it says (docs/conditions.md)."
                    ),
                });
            }
            if !policy.enabled {
                continue;
            }
            let key = built.key;
            let definition = built.definition;
            let metrics = registry.metrics().policy(&key);
            let condition_errors = chain.metrics.condition_errors(&key);
            // A body is needed only by a policy that takes part in that direction: an instance
            // that opted out of a phase never makes Envoy buffer it.
            if let Some(hook) = built.instance.request() {
                chain.needs.request_body |= definition.requires_request_body;
                chain.request.push(Step {
                    key: Arc::clone(&key),
                    position: p,
                    condition: built.condition.clone(),
                    on_failure: policy.on_failure,
                    on_condition_error: policy.on_condition_error,
                    timeout: built.timeout,
                    policy: Arc::clone(hook),
                    metrics: Arc::clone(&metrics),
                    condition_errors: Arc::clone(&condition_errors),
                });
            }
            if let Some(hook) = built.instance.response() {
                chain.needs.response_headers = true;
                chain.needs.response_body |= definition.requires_response_body;
                chain.needs.request_body_in_response |= definition.requires_request_body;
                response_steps.push(Step {
                    key,
                    position: p,
                    condition: built.condition,
                    on_failure: policy.on_failure,
                    on_condition_error: policy.on_condition_error,
                    timeout: built.timeout,
                    policy: Arc::clone(hook),
                    metrics,
                    condition_errors,
                });
            }
        }
        response_steps.reverse();
        chain.response = response_steps;
        chain.needs.response_headers |= chain.needs.response_body;
        routes.insert(route.route.clone(), Arc::new(chain));
    }

    let fallback = match (&raw.defaults.default_route, raw.defaults.unknown_route) {
        (Some(name), _) => {
            let chain = routes.get(name).cloned();
            if chain.is_none() {
                report(
                    "defaults.defaultRoute".into(),
                    None,
                    format!(
                        "no route named {name:?} is configured; name one of the routes or remove defaultRoute"
                    ),
                );
            }
            chain
        }
        (None, UnknownRoute::Allow) => {
            let mut chain = Chain::empty(UNKNOWN_ROUTE);
            chain.metrics = registry.metrics().route(UNKNOWN_ROUTE);
            Some(Arc::new(chain))
        }
        (None, UnknownRoute::Deny) => None,
    };

    if problems.is_empty() {
        Ok(Snapshot {
            routes,
            fallback,
            source_name: source_name.to_owned(),
            source_kind: "file",
            version: String::new(),
            document: redacted(&raw, registry),
            loaded_at: std::time::SystemTime::now(),
            warnings,
            instances,
        })
    } else {
        Err(problems)
    }
}

/// The document as JSON with every secret parameter replaced.
fn redacted(raw: &RawConfig, registry: &Registry) -> Value {
    let mut document = serde_json::to_value(raw).unwrap_or(Value::Null);
    let routes = document.get_mut("routes").and_then(Value::as_array_mut);
    for (route, raw_route) in routes.into_iter().flatten().zip(&raw.routes) {
        let policies = route.get_mut("policies").and_then(Value::as_array_mut);
        for (policy, raw_policy) in policies.into_iter().flatten().zip(&raw_route.policies) {
            let Some(registered) = registry.get(&raw_policy.name, &raw_policy.version) else {
                continue;
            };
            if let Some(params) = policy.get_mut("params") {
                redact(params, registered.params_schema().secret_fields());
            }
        }
    }
    document
}

fn redact(value: &mut Value, secrets: &std::collections::BTreeSet<String>) {
    match value {
        Value::Object(map) => {
            for (key, child) in map.iter_mut() {
                if secrets.contains(key) {
                    *child = Value::String("[redacted]".into());
                } else {
                    redact(child, secrets);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|v| redact(v, secrets)),
        _ => {}
    }
}

/// A policy entry validated and instantiated.
struct Built<'r> {
    /// `name:version`.
    key: Arc<str>,
    definition: &'r crate::definition::PolicyDefinition,
    instance: PolicyInstance,
    condition: Option<Condition>,
    timeout: Duration,
}

/// One route's entries on their way to instances.
struct Entries<'a> {
    route: &'a str,
    /// How many entries of this route had each key so far.
    seen: HashMap<InstanceKey, usize>,
    instances: &'a mut Instances,
    running: Option<&'a Instances>,
}

/// Validates one policy entry and finds or builds its instance; reports problems through
/// `fail(at, msg)` where `at` is appended to the entry's path.
fn build_policy<'r>(
    policy: &RawPolicy,
    registry: &'r Registry,
    default_timeout: Duration,
    entries: &mut Entries<'_>,
    fail: &mut dyn FnMut(&str, String),
) -> Option<Built<'r>> {
    let condition = match &policy.condition {
        None => None,
        Some(source) if source.len() > MAX_CONDITION_BYTES => {
            fail(
                ".condition",
                format!("{} bytes; the limit is {MAX_CONDITION_BYTES}", source.len()),
            );
            None
        }
        Some(source) => Condition::compile(source)
            .map_err(|e| fail(".condition", e.to_string()))
            .ok(),
    };
    let condition_ok = policy.condition.is_none() || condition.is_some();
    let timeout = match policy.timeout_ms.map(checked_timeout) {
        None => Some(default_timeout),
        Some(Ok(t)) => Some(t),
        Some(Err(message)) => {
            fail(".timeoutMs", message);
            None
        }
    };

    let Some(registered) = registry.get(&policy.name, &policy.version) else {
        let versions = registry.versions(&policy.name);
        if versions.is_empty() {
            let names: Vec<&str> = registry.names().collect();
            fail(
                ".name",
                format!(
                    "no policy named {:?} is compiled into this engine; available: {}",
                    policy.name,
                    if names.is_empty() {
                        "none".to_owned()
                    } else {
                        names.join(", ")
                    }
                ),
            );
        } else {
            fail(
                ".version",
                format!(
                    "policy {} has no version {:?}; available versions: {}",
                    policy.name,
                    policy.version,
                    versions.join(", ")
                ),
            );
        }
        return None;
    };

    let params = policy
        .params
        .clone()
        .unwrap_or_else(|| Value::Object(Default::default()));
    let definition = registered.definition();
    let build = |fail: &mut dyn FnMut(&str, String)| instantiate(registered, params.clone(), fail);
    let policy_key: Arc<str> = definition.key().into();
    let instance = if policy.enabled {
        let key = InstanceKey::new(
            entries.route,
            registered.shared_across_routes(),
            &policy_key,
            &params,
        );
        let nth = entries.seen.entry(key.clone()).or_default();
        let key = key.nth(*nth);
        *nth += 1;
        entries
            .instances
            .get_or_build(key, entries.running, || build(fail))?
    } else {
        // Validated like any entry, never kept: it does not run.
        build(fail)?
    };
    // An instance may leave out a declared phase it has nothing to do in; it may never add one.
    for (phase, present) in [
        (Phase::Request, instance.request().is_some()),
        (Phase::Response, instance.response().is_some()),
    ] {
        if present && !definition.has_phase(phase) {
            fail(
                "",
                format!(
                    "the compiled policy implements the {phase} phase but its definition does not declare it; rebuild the engine with policy-builder, which checks both agree"
                ),
            );
            return None;
        }
    }
    Some(Built {
        key: policy_key,
        definition,
        instance,
        condition: condition.filter(|_| condition_ok),
        timeout: timeout?,
    })
    .filter(|_| condition_ok)
}

/// Checks `params` against the schema and builds a new instance.
fn instantiate(
    registered: &crate::RegisteredPolicy,
    params: Value,
    fail: &mut dyn FnMut(&str, String),
) -> Option<PolicyInstance> {
    let violations = registered.params_schema().check(&params);
    if !violations.is_empty() {
        for v in violations {
            let at = if v.path.is_empty() {
                ".params".to_owned()
            } else {
                format!(".params.{}", v.path)
            };
            fail(&at, v.message);
        }
        return None;
    }
    match (registered.factory())(params) {
        Ok(instance) => Some(instance),
        Err(error) => {
            let at = error
                .field()
                .map_or_else(|| ".params".to_owned(), |f| format!(".params.{f}"));
            fail(&at, error.to_string());
            None
        }
    }
}

fn checked_timeout(ms: u64) -> Result<Duration, String> {
    if (1..=MAX_TIMEOUT_MS).contains(&ms) {
        Ok(Duration::from_millis(ms))
    } else {
        Err(format!(
            "{ms} is out of range; use 1 to {MAX_TIMEOUT_MS} milliseconds"
        ))
    }
}
