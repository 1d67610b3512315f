//! Small policies that exercise the engine's semantics, and a registry holding them.

use policy_core::{Registry, Snapshot};
use policy_sdk::{
    ImmediateResponse, Outcome, Policy, PolicyError, RequestAction, RequestContext, RequestPolicy,
    ResponseAction, ResponseContext, ResponsePolicy, UpstreamRequestMods, UpstreamResponseMods,
};
use serde::Deserialize;
use serde_json::json;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Appends its label to `x-order` (request and response) and records in metadata what `x-order`
/// held when it ran, so tests see order and visibility of earlier changes.
pub mod order {
    use super::*;

    #[derive(Deserialize)]
    pub struct Params {
        pub label: String,
    }

    pub struct Order(String);

    impl Policy for Order {
        type Params = Params;
        fn new(p: Params) -> Result<Self, PolicyError> {
            Ok(Order(p.label))
        }
    }

    impl RequestPolicy for Order {
        fn on_request<'a>(&'a self, ctx: &'a mut RequestContext) -> Outcome<'a, RequestAction> {
            let seen: Vec<&str> = ctx.request().headers().get_all("x-order").collect();
            let seen = seen.join(",");
            ctx.metadata_mut().set(format!("seen.{}", self.0), seen);
            Outcome::ready(UpstreamRequestMods::new().append_header("x-order", &self.0))
        }
    }

    impl ResponsePolicy for Order {
        fn on_response<'a>(&'a self, _: &'a mut ResponseContext) -> Outcome<'a, ResponseAction> {
            Outcome::ready(UpstreamResponseMods::new().append_header("x-order", &self.0))
        }
    }

    policy_sdk::export_policy!(
        Order,
        phases = [request, response],
        definition = "name: order\nversion: 1.0.0\ndescription: test\nphases: [request, response]\n\
                      parameters: {type: object, required: [label], properties: {label: {type: string}}}\n"
    );
}

/// Fails every request.
pub mod fail {
    use super::*;

    pub struct Fail;

    impl Policy for Fail {
        type Params = serde_json::Value;
        fn new(_: Self::Params) -> Result<Self, PolicyError> {
            Ok(Fail)
        }
    }

    impl RequestPolicy for Fail {
        fn on_request<'a>(&'a self, _: &'a mut RequestContext) -> Outcome<'a, RequestAction> {
            Outcome::fail(PolicyError::new("the test backend is unreachable"))
        }
    }

    policy_sdk::export_policy!(
        Fail,
        phases = [request],
        definition = "name: fail\nversion: 1.0.0\ndescription: test\nphases: [request]\n"
    );
}

/// Answers every request with a fixed status.
pub mod respond {
    use super::*;

    #[derive(Deserialize)]
    pub struct Params {
        pub status: u16,
    }

    pub struct Respond(u16);

    impl Policy for Respond {
        type Params = Params;
        fn new(p: Params) -> Result<Self, PolicyError> {
            Ok(Respond(p.status))
        }
    }

    impl RequestPolicy for Respond {
        fn on_request<'a>(&'a self, _: &'a mut RequestContext) -> Outcome<'a, RequestAction> {
            Outcome::ready(ImmediateResponse::json(
                self.0,
                &serde_json::json!({"error": "denied"}),
            ))
        }
    }

    policy_sdk::export_policy!(
        Respond,
        phases = [request],
        definition = "name: respond\nversion: 1.0.0\ndescription: test\nphases: [request]\n\
                      parameters: {type: object, required: [status], properties: {status: {type: integer, minimum: 200, maximum: 599}}}\n"
    );
}

/// Writes a metadata entry in the request phase; copies one into a response header.
pub mod meta {
    use super::*;

    #[derive(Deserialize)]
    pub struct Params {
        pub key: String,
        #[serde(default)]
        pub value: serde_json::Value,
        #[serde(default)]
        pub header: Option<String>,
    }

    pub struct Meta(Params);

    impl Policy for Meta {
        type Params = Params;
        fn new(p: Params) -> Result<Self, PolicyError> {
            Ok(Meta(p))
        }
    }

    impl RequestPolicy for Meta {
        fn on_request<'a>(&'a self, ctx: &'a mut RequestContext) -> Outcome<'a, RequestAction> {
            if !self.0.value.is_null() {
                ctx.metadata_mut().set(&self.0.key, self.0.value.clone());
            }
            Outcome::ready(RequestAction::pass())
        }
    }

    impl ResponsePolicy for Meta {
        fn on_response<'a>(&'a self, ctx: &'a mut ResponseContext) -> Outcome<'a, ResponseAction> {
            let mut mods = UpstreamResponseMods::new();
            if let (Some(header), Some(value)) = (&self.0.header, ctx.metadata().get(&self.0.key)) {
                let text = value
                    .as_str()
                    .map_or_else(|| value.to_string(), str::to_owned);
                mods = mods.set_header(header, text);
            }
            Outcome::ready(mods)
        }

        fn wants_responses(&self) -> bool {
            self.0.header.is_some()
        }
    }

    policy_sdk::export_policy!(
        Meta,
        phases = [request, response],
        definition = "name: meta\nversion: 1.0.0\ndescription: test\nphases: [request, response]\n\
                      parameters: {type: object, required: [key], additionalProperties: false, properties: \
                      {key: {type: string}, value: {}, header: {type: string}}}\n"
    );
}

/// Waits `ms` milliseconds (an async policy), then tags the request.
pub mod slow {
    use super::*;

    #[derive(Deserialize)]
    pub struct Params {
        pub ms: u64,
    }

    pub struct Slow(Duration);

    impl Policy for Slow {
        type Params = Params;
        fn new(p: Params) -> Result<Self, PolicyError> {
            Ok(Slow(Duration::from_millis(p.ms)))
        }
    }

    impl RequestPolicy for Slow {
        fn on_request<'a>(&'a self, ctx: &'a mut RequestContext) -> Outcome<'a, RequestAction> {
            Outcome::pending(async move {
                tokio::time::sleep(self.0).await;
                ctx.metadata_mut().set("slow.done", true);
                Ok(UpstreamRequestMods::new()
                    .set_header("x-slow", "done")
                    .into())
            })
        }
    }

    policy_sdk::export_policy!(
        Slow,
        phases = [request],
        definition = "name: slow\nversion: 1.0.0\ndescription: test\nphases: [request]\n\
                      parameters: {type: object, required: [ms], properties: {ms: {type: integer, minimum: 0}}}\n"
    );
}

/// A policy with a demanding schema and a semantic check, for validation tests.
pub mod limits {
    use super::*;

    pub const DEFINITION_V1: &str = "name: limits\nversion: 1.0.0\ndescription: test\nphases: [request]\n\
        requiresRequestBody: true\n\
        parameters:\n  type: object\n  required: [requestsPerSecond]\n  additionalProperties: false\n  properties:\n    \
        requestsPerSecond: {type: number, exclusiveMinimum: 0}\n    burst: {type: integer, minimum: 1}\n    \
        keySource: {enum: [header, client]}\n    secret: {type: string, writeOnly: true, minLength: 8}\n";

    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub struct Params {
        pub requests_per_second: f64,
        #[serde(default)]
        pub burst: Option<u64>,
    }

    pub struct Limits;

    impl Policy for Limits {
        type Params = Params;
        fn new(p: Params) -> Result<Self, PolicyError> {
            if p.burst
                .is_some_and(|b| b as f64 > p.requests_per_second * 100.0)
            {
                return Err(PolicyError::invalid_param(
                    "burst",
                    "must be at most 100 times requestsPerSecond",
                ));
            }
            Ok(Limits)
        }
    }

    impl RequestPolicy for Limits {
        fn on_request<'a>(&'a self, _: &'a mut RequestContext) -> Outcome<'a, RequestAction> {
            Outcome::ready(RequestAction::pass())
        }
    }

    pub mod v1 {
        use super::*;
        policy_sdk::export_policy!(Limits, phases = [request], definition = DEFINITION_V1);
    }

    pub mod v2 {
        use super::*;
        policy_sdk::export_policy!(
            Limits,
            phases = [request],
            definition = "name: limits\nversion: 2.0.0\ndescription: test v2\nphases: [request]\n\
                          parameters: {type: object, properties: {requestsPerSecond: {type: number}}}\n"
        );
    }
}

/// Exports a response hook its definition does not declare (what the builder prevents).
pub mod undeclared {
    use super::*;

    pub struct Undeclared;

    impl Policy for Undeclared {
        type Params = serde_json::Value;
        fn new(_: Self::Params) -> Result<Self, PolicyError> {
            Ok(Undeclared)
        }
    }

    impl RequestPolicy for Undeclared {
        fn on_request<'a>(&'a self, _: &'a mut RequestContext) -> Outcome<'a, RequestAction> {
            Outcome::ready(RequestAction::pass())
        }
    }

    impl ResponsePolicy for Undeclared {
        fn on_response<'a>(&'a self, _: &'a mut ResponseContext) -> Outcome<'a, ResponseAction> {
            Outcome::ready(ResponseAction::pass())
        }
    }

    policy_sdk::export_policy!(
        Undeclared,
        phases = [request, response],
        definition = "name: undeclared\nversion: 1.0.0\ndescription: test\nphases: [request]\n"
    );
}

/// Counts the requests it saw and how often it was started, in `x-count` / `x-started` request
/// headers: state that shows whether a reload kept the instance. `shared-counter` is the same
/// policy declared safe to share across routes.
pub mod counter {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    #[derive(Deserialize)]
    pub struct Params {
        #[allow(dead_code, reason = "only tells instances apart")]
        pub tag: String,
    }

    #[derive(Default)]
    pub struct Counter<const SHARED: bool> {
        seen: AtomicU64,
        started: AtomicU64,
    }

    impl<const SHARED: bool> Policy for Counter<SHARED> {
        type Params = Params;
        const SHARED_ACROSS_ROUTES: bool = SHARED;
        fn new(_: Params) -> Result<Self, PolicyError> {
            Ok(Counter::default())
        }
        fn start(&self) {
            self.started.fetch_add(1, Ordering::Relaxed);
        }
    }

    impl<const SHARED: bool> RequestPolicy for Counter<SHARED> {
        fn on_request<'a>(&'a self, _: &'a mut RequestContext) -> Outcome<'a, RequestAction> {
            let seen = self.seen.fetch_add(1, Ordering::Relaxed) + 1;
            let started = self.started.load(Ordering::Relaxed);
            Outcome::ready(
                UpstreamRequestMods::new()
                    .set_header("x-count", seen.to_string())
                    .set_header("x-started", started.to_string()),
            )
        }
    }

    pub mod own {
        use super::*;
        policy_sdk::export_policy!(
            Counter<false>,
            phases = [request],
            definition = "name: counter\nversion: 1.0.0\ndescription: test\nphases: [request]\n\
                          parameters: {type: object, required: [tag], properties: {tag: {type: string}}}\n"
        );
    }

    pub mod shared {
        use super::*;
        policy_sdk::export_policy!(
            Counter<true>,
            phases = [request],
            definition = "name: shared-counter\nversion: 1.0.0\ndescription: test\nphases: [request]\n\
                          parameters: {type: object, required: [tag], properties: {tag: {type: string}}}\n"
        );
    }
}

/// `require-header`: 401 without the header; otherwise its value becomes `auth.user`.
pub mod require_header {
    use super::*;

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Params {
        header: String,
    }

    /// The policy.
    pub struct RequireHeader(String);

    impl Policy for RequireHeader {
        type Params = Params;
        fn new(p: Params) -> Result<Self, PolicyError> {
            Ok(RequireHeader(p.header))
        }
    }

    impl RequestPolicy for RequireHeader {
        fn on_request<'a>(&'a self, ctx: &'a mut RequestContext) -> Outcome<'a, RequestAction> {
            let Some(user) = ctx.request().header(&self.0).map(str::to_owned) else {
                return Outcome::ready(
                    ImmediateResponse::json(401, &json!({"error": "unauthenticated"}))
                        .with_header("www-authenticate", "ApiKey"),
                );
            };
            ctx.metadata_mut().set("auth.user", user);
            Outcome::ready(RequestAction::pass())
        }
    }

    policy_sdk::export_policy!(
        RequireHeader,
        phases = [request],
        definition = "name: require-header\nversion: 1.0.0\ndescription: Requires a header.\nphases: [request]\n\
                      parameters: {type: object, required: [header], additionalProperties: false, properties: {header: {type: string}}}\n"
    );
}

/// `quota`: lets `limit` requests through per route instance, then answers 429.
pub mod quota {
    use super::*;

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Params {
        limit: u64,
    }

    /// The policy.
    pub struct Quota {
        limit: u64,
        used: AtomicU64,
    }

    impl Policy for Quota {
        type Params = Params;
        fn new(p: Params) -> Result<Self, PolicyError> {
            Ok(Quota {
                limit: p.limit,
                used: AtomicU64::new(0),
            })
        }
    }

    impl RequestPolicy for Quota {
        fn on_request<'a>(&'a self, _: &'a mut RequestContext) -> Outcome<'a, RequestAction> {
            let used = self.used.fetch_add(1, Ordering::Relaxed) + 1;
            if used > self.limit {
                return Outcome::ready(ImmediateResponse::json(
                    429,
                    &json!({"error": "quota exceeded"}),
                ));
            }
            Outcome::ready(UpstreamRequestMods::new().set_header("x-quota-used", used.to_string()))
        }
    }

    policy_sdk::export_policy!(
        Quota,
        phases = [request],
        definition = "name: quota\nversion: 1.0.0\ndescription: Fixed request quota.\nphases: [request]\n\
                      parameters: {type: object, required: [limit], additionalProperties: false, properties: {limit: {type: integer, minimum: 0}}}\n"
    );
}

/// `meta-header`: copies metadata `key` into a response header (a string as it is, other
/// values as JSON).
pub mod meta_header {
    use super::*;

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Params {
        key: String,
        #[serde(default)]
        set: Option<String>,
        header: String,
    }

    /// The policy.
    pub struct MetaHeader(Params);

    impl Policy for MetaHeader {
        type Params = Params;
        fn new(p: Params) -> Result<Self, PolicyError> {
            Ok(MetaHeader(p))
        }
    }

    impl RequestPolicy for MetaHeader {
        fn on_request<'a>(&'a self, ctx: &'a mut RequestContext) -> Outcome<'a, RequestAction> {
            if let Some(value) = &self.0.set {
                ctx.metadata_mut().set(&self.0.key, value.as_str());
            }
            Outcome::ready(RequestAction::pass())
        }
    }

    impl ResponsePolicy for MetaHeader {
        fn on_response<'a>(&'a self, ctx: &'a mut ResponseContext) -> Outcome<'a, ResponseAction> {
            let value = match ctx.metadata().get(&self.0.key) {
                Some(serde_json::Value::String(s)) => s.clone(),
                Some(other) => other.to_string(),
                None => "(unset)".to_owned(),
            };
            Outcome::ready(UpstreamResponseMods::new().set_header(&self.0.header, value))
        }
    }

    policy_sdk::export_policy!(
        MetaHeader,
        phases = [request, response],
        definition = "name: meta-header\nversion: 1.0.0\ndescription: Metadata to a response header.\nphases: [request, response]\n\
                      parameters: {type: object, required: [key, header], additionalProperties: false, properties: \
                      {key: {type: string}, set: {type: string}, header: {type: string}}}\n"
    );
}

/// `body-rewrite`: marks JSON request bodies and wraps response bodies, optionally changing
/// the status.
pub mod body_rewrite {
    use super::*;

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Params {
        #[serde(default)]
        status: Option<u16>,
    }

    /// The policy.
    pub struct BodyRewrite(Option<u16>);

    impl Policy for BodyRewrite {
        type Params = Params;
        fn new(p: Params) -> Result<Self, PolicyError> {
            Ok(BodyRewrite(p.status))
        }
    }

    impl RequestPolicy for BodyRewrite {
        fn on_request<'a>(&'a self, ctx: &'a mut RequestContext) -> Outcome<'a, RequestAction> {
            let body = ctx.request().body().unwrap_or_default();
            let Ok(serde_json::Value::Object(mut doc)) = serde_json::from_slice(body) else {
                return Outcome::ready(ImmediateResponse::json(
                    400,
                    &json!({"error": "expected a JSON object"}),
                ));
            };
            doc.remove("internal_id");
            doc.insert("rewritten".into(), json!(true));
            let text = serde_json::Value::Object(doc).to_string();
            Outcome::ready(UpstreamRequestMods::new().replace_body(text))
        }
    }

    impl ResponsePolicy for BodyRewrite {
        fn on_response<'a>(&'a self, ctx: &'a mut ResponseContext) -> Outcome<'a, ResponseAction> {
            let original =
                String::from_utf8_lossy(ctx.response().body().unwrap_or_default()).into_owned();
            let mut mods =
                UpstreamResponseMods::new().replace_body(json!({"wrapped": original}).to_string());
            if let Some(status) = self.0 {
                mods = mods.set_status(status);
            }
            Outcome::ready(mods)
        }
    }

    policy_sdk::export_policy!(
        BodyRewrite,
        phases = [request, response],
        definition = "name: body-rewrite\nversion: 1.0.0\ndescription: Rewrites bodies.\nphases: [request, response]\n\
                      requiresRequestBody: true\nrequiresResponseBody: true\n\
                      parameters: {type: object, additionalProperties: false, properties: {status: {type: integer, minimum: 200, maximum: 599}}}\n"
    );
}

/// `reroute`: changes the request's path and/or method.
pub mod reroute {
    use super::*;

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Params {
        #[serde(default)]
        path: Option<String>,
        #[serde(default)]
        method: Option<String>,
    }

    /// The policy.
    pub struct Reroute(Params);

    impl Policy for Reroute {
        type Params = Params;
        fn new(p: Params) -> Result<Self, PolicyError> {
            Ok(Reroute(p))
        }
    }

    impl RequestPolicy for Reroute {
        fn on_request<'a>(&'a self, _: &'a mut RequestContext) -> Outcome<'a, RequestAction> {
            let mut mods = UpstreamRequestMods::new();
            if let Some(path) = &self.0.path {
                mods = mods.set_path(path);
            }
            if let Some(method) = &self.0.method {
                mods = mods.set_method(method);
            }
            Outcome::ready(mods)
        }
    }

    policy_sdk::export_policy!(
        Reroute,
        phases = [request],
        definition = "name: reroute\nversion: 1.0.0\ndescription: Changes path and method.\nphases: [request]\n\
                      parameters: {type: object, additionalProperties: false, properties: {path: {type: string}, method: {type: string}}}\n"
    );
}

/// `panic`: panics, at once or (`pending: true`) inside its future.
pub mod panic {
    use super::*;

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Params {
        #[serde(default)]
        pending: bool,
    }

    /// The policy.
    pub struct Panic(bool);

    impl Policy for Panic {
        type Params = Params;
        fn new(p: Params) -> Result<Self, PolicyError> {
            Ok(Panic(p.pending))
        }
    }

    impl RequestPolicy for Panic {
        #[allow(clippy::panic)]
        fn on_request<'a>(&'a self, _: &'a mut RequestContext) -> Outcome<'a, RequestAction> {
            if self.0 {
                return Outcome::pending(async {
                    tokio::task::yield_now().await;
                    panic!("the test policy panicked in its future")
                });
            }
            panic!("the test policy panicked")
        }
    }

    policy_sdk::export_policy!(
        Panic,
        phases = [request],
        definition = "name: panic\nversion: 1.0.0\ndescription: Panics.\nphases: [request]\n\
                      parameters: {type: object, additionalProperties: false, properties: {pending: {type: boolean}}}\n"
    );
}

/// What `dev-engine` adds to the sample policies for the end-to-end tests.
pub fn e2e_exports() -> [policy_sdk::PolicyExport; 8] {
    [
        require_header::policy_export(),
        quota::policy_export(),
        meta_header::policy_export(),
        body_rewrite::policy_export(),
        fail::policy_export(),
        reroute::policy_export(),
        slow::policy_export(),
        panic::policy_export(),
    ]
}

/// A registry with every test policy.
pub fn registry() -> Registry {
    let mut registry = Registry::new();
    for export in [
        order::policy_export(),
        fail::policy_export(),
        respond::policy_export(),
        meta::policy_export(),
        slow::policy_export(),
        limits::v1::policy_export(),
        limits::v2::policy_export(),
        undeclared::policy_export(),
        counter::own::policy_export(),
        counter::shared::policy_export(),
    ] {
        registry.register(export).expect("test policies register");
    }
    registry
}

/// Compiles a configuration document against the test registry, panicking with the report.
pub fn snapshot(yaml: &str) -> Snapshot {
    policy_core::load(yaml, "test.yaml", &registry()).unwrap_or_else(|e| panic!("{e}"))
}
