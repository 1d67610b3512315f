//! Small policies for end-to-end scenarios the sample policies do not cover yet.

use policy_sdk::{
    ImmediateResponse, Outcome, Policy, PolicyError, RequestAction, RequestContext, RequestPolicy,
    ResponseAction, ResponseContext, ResponsePolicy, UpstreamRequestMods, UpstreamResponseMods,
};
use serde::Deserialize;
use serde_json::json;
use std::sync::atomic::{AtomicU64, Ordering};

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

/// `meta-header`: copies metadata `key` into a response header.
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
            let value = ctx
                .metadata()
                .get_str(&self.0.key)
                .unwrap_or("(unset)")
                .to_owned();
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

/// `fail`: always fails (for `onFailure`).
pub mod fail {
    use super::*;

    /// The policy.
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
        definition = "name: fail\nversion: 1.0.0\ndescription: Always fails.\nphases: [request]\n"
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

/// `slow`: waits `ms` milliseconds, then lets the request through (graceful shutdown tests).
pub mod slow {
    use super::*;

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Params {
        ms: u64,
    }

    /// The policy.
    pub struct Slow(std::time::Duration);

    impl Policy for Slow {
        type Params = Params;
        fn new(p: Params) -> Result<Self, PolicyError> {
            Ok(Slow(std::time::Duration::from_millis(p.ms)))
        }
    }

    impl RequestPolicy for Slow {
        fn on_request<'a>(&'a self, _: &'a mut RequestContext) -> Outcome<'a, RequestAction> {
            Outcome::pending(async move {
                tokio::time::sleep(self.0).await;
                Ok(UpstreamRequestMods::new()
                    .set_header("x-slow", "done")
                    .into())
            })
        }
    }

    policy_sdk::export_policy!(
        Slow,
        phases = [request],
        definition = "name: slow\nversion: 1.0.0\ndescription: Waits, then continues.\nphases: [request]\n\
                      parameters: {type: object, required: [ms], additionalProperties: false, properties: {ms: {type: integer, minimum: 1, maximum: 10000}}}\n"
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
