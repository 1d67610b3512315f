//! `cors` 1.0.0: answers preflights for allowed origins; adds CORS headers to actual responses.
//!
//! ```yaml
//! - name: cors
//!   version: 1.0.0
//!   params:
//!     allowOrigins: [https://app.example.com]
//!     allowMethods: [GET, POST, DELETE]
//!     allowHeaders: [authorization, content-type]
//!     allowCredentials: true
//! ```

use policy_sdk::{
    ImmediateResponse, Outcome, Policy, PolicyError, Request, RequestAction, RequestContext,
    RequestPolicy, ResponseAction, ResponseContext, ResponsePolicy, UpstreamResponseMods,
};
use serde::Deserialize;
use serde_json::json;
use std::collections::BTreeSet;

/// Route parameters.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Params {
    /// Allowed origins, or `*`.
    pub allow_origins: Vec<String>,
    /// Methods allowed in preflights.
    #[serde(default = "default_methods")]
    pub allow_methods: Vec<String>,
    /// Request headers allowed in preflights.
    #[serde(default)]
    pub allow_headers: Vec<String>,
    /// Response headers exposed to scripts.
    #[serde(default)]
    pub expose_headers: Vec<String>,
    /// `Access-Control-Allow-Credentials: true`.
    #[serde(default)]
    pub allow_credentials: bool,
    /// Preflight cache lifetime, seconds.
    #[serde(default = "default_max_age")]
    pub max_age: u32,
}

fn default_methods() -> Vec<String> {
    vec!["GET".into(), "HEAD".into(), "POST".into()]
}
fn default_max_age() -> u32 {
    600
}

/// The policy.
#[derive(Debug)]
pub struct Cors {
    any_origin: bool,
    origins: BTreeSet<String>,
    methods: BTreeSet<String>,
    headers: BTreeSet<String>,
    methods_value: String,
    headers_value: String,
    expose_value: String,
    credentials: bool,
    max_age: String,
}

impl Policy for Cors {
    type Params = Params;
    /// No state of its own: routes with equal parameters share one instance.
    const SHARED_ACROSS_ROUTES: bool = true;

    fn new(p: Params) -> Result<Self, PolicyError> {
        let any_origin = p.allow_origins.iter().any(|o| o == "*");
        if any_origin && p.allow_origins.len() > 1 {
            return Err(PolicyError::invalid_param(
                "allowOrigins",
                "\"*\" allows every origin; list it alone",
            ));
        }
        if any_origin && p.allow_credentials {
            return Err(PolicyError::invalid_param(
                "allowCredentials",
                "cannot be combined with allowOrigins [\"*\"] (browsers refuse it); list the origins",
            ));
        }
        let headers: BTreeSet<String> = p
            .allow_headers
            .iter()
            .map(|h| h.to_ascii_lowercase())
            .collect();
        Ok(Cors {
            any_origin,
            origins: p
                .allow_origins
                .iter()
                .map(|o| o.to_ascii_lowercase())
                .collect(),
            methods_value: p.allow_methods.join(", "),
            methods: p.allow_methods.into_iter().collect(),
            headers_value: headers.iter().cloned().collect::<Vec<_>>().join(", "),
            headers,
            expose_value: p.expose_headers.join(", "),
            credentials: p.allow_credentials,
            max_age: p.max_age.to_string(),
        })
    }
}

impl Cors {
    /// The `Access-Control-Allow-Origin` value for `request`, when its origin is allowed.
    fn allowed_origin<'r>(&self, request: &'r Request) -> Option<&'r str> {
        let origin = request.header("origin")?;
        (self.any_origin || self.origins.contains(&origin.to_ascii_lowercase())).then_some(origin)
    }

    fn allow_origin_value<'r>(&self, origin: &'r str) -> &'r str {
        if self.any_origin { "*" } else { origin }
    }

    fn preflight(&self, request: &Request, method: &str) -> ImmediateResponse {
        let forbidden = |reason: &str| {
            ImmediateResponse::json(
                403,
                &json!({"error": "cors_preflight_rejected", "message": reason}),
            )
            .with_header("vary", "Origin")
        };
        let Some(origin) = self.allowed_origin(request) else {
            return forbidden("origin not allowed");
        };
        if !self.methods.contains(method) {
            return forbidden("method not allowed");
        }
        let requested = request
            .header("access-control-request-headers")
            .unwrap_or_default();
        let all_allowed = requested
            .split(',')
            .map(|h| h.trim().to_ascii_lowercase())
            .filter(|h| !h.is_empty())
            .all(|h| self.headers.contains(&h));
        if !all_allowed {
            return forbidden("header not allowed");
        }
        let mut response = ImmediateResponse::new(204)
            .with_header(
                "access-control-allow-origin",
                self.allow_origin_value(origin),
            )
            .with_header("access-control-allow-methods", &self.methods_value)
            .with_header("access-control-max-age", &self.max_age)
            .with_header("vary", "Origin");
        if !self.headers_value.is_empty() {
            response = response.with_header("access-control-allow-headers", &self.headers_value);
        }
        if self.credentials {
            response = response.with_header("access-control-allow-credentials", "true");
        }
        response
    }
}

impl RequestPolicy for Cors {
    fn on_request<'a>(&'a self, ctx: &'a mut RequestContext) -> Outcome<'a, RequestAction> {
        let request = ctx.request();
        if request.method() == "OPTIONS"
            && request.header("origin").is_some()
            && let Some(method) = request.header("access-control-request-method")
        {
            return Outcome::ready(RequestAction::Respond(self.preflight(request, method)));
        }
        Outcome::ready(RequestAction::pass())
    }
}

impl ResponsePolicy for Cors {
    fn on_response<'a>(&'a self, ctx: &'a mut ResponseContext) -> Outcome<'a, ResponseAction> {
        let mut mods = UpstreamResponseMods::new();
        // The answer depends on the Origin header unless every origin gets `*`: a cache must
        // not serve one origin's response (with or without CORS headers) to another.
        if !self.any_origin {
            mods = mods.append_header("vary", "Origin");
        }
        if let Some(origin) = self.allowed_origin(ctx.request()) {
            mods = mods.set_header(
                "access-control-allow-origin",
                self.allow_origin_value(origin),
            );
            if self.credentials {
                mods = mods.set_header("access-control-allow-credentials", "true");
            }
            if !self.expose_value.is_empty() {
                mods = mods.set_header("access-control-expose-headers", &self.expose_value);
            }
        }
        Outcome::ready(ResponseAction::Continue(mods))
    }
}

policy_sdk::export_policy!(Cors, phases = [request, response]);

#[cfg(test)]
mod tests {
    use super::*;
    use policy_sdk::testkit::{self, expect_continue, expect_respond, expect_response_continue};
    use policy_sdk::{HeaderOp, Metadata, Response};

    fn cors(params: serde_json::Value) -> Cors {
        testkit::new_policy(params).expect("valid params")
    }

    fn strict() -> Cors {
        cors(json!({
            "allowOrigins": ["https://app.example.com"],
            "allowMethods": ["GET", "DELETE"],
            "allowHeaders": ["Authorization", "content-type"],
            "exposeHeaders": ["x-request-id"],
            "allowCredentials": true,
            "maxAge": 300,
        }))
    }

    fn preflight(origin: &str, method: &str, headers: &str) -> Request {
        Request::new("OPTIONS", "/items")
            .with_header("origin", origin)
            .with_header("access-control-request-method", method)
            .with_header("access-control-request-headers", headers)
    }

    #[test]
    fn preflights_from_allowed_origins_get_204_with_the_allow_headers() {
        let mut ctx = RequestContext::new(preflight(
            "https://app.example.com",
            "DELETE",
            "authorization, Content-Type",
        ));
        let r = expect_respond(testkit::run_request(&strict(), &mut ctx));
        assert_eq!(r.status(), 204);
        assert_eq!(
            r.header("access-control-allow-origin"),
            Some("https://app.example.com")
        );
        assert_eq!(
            r.header("access-control-allow-methods"),
            Some("GET, DELETE")
        );
        assert_eq!(
            r.header("access-control-allow-headers"),
            Some("authorization, content-type")
        );
        assert_eq!(r.header("access-control-allow-credentials"), Some("true"));
        assert_eq!(r.header("access-control-max-age"), Some("300"));
    }

    #[test]
    fn preflights_for_other_origins_methods_or_headers_get_403_without_allow_headers() {
        for request in [
            preflight("https://evil.example", "GET", ""),
            preflight("https://app.example.com", "PUT", ""),
            preflight("https://app.example.com", "GET", "x-secret"),
        ] {
            let mut ctx = RequestContext::new(request);
            let r = expect_respond(testkit::run_request(&strict(), &mut ctx));
            assert_eq!(r.status(), 403);
            assert_eq!(r.header("access-control-allow-origin"), None);
        }
    }

    #[test]
    fn plain_options_and_other_requests_pass() {
        for request in [
            Request::new("OPTIONS", "/").with_header("origin", "https://app.example.com"),
            Request::new("GET", "/").with_header("origin", "https://evil.example"),
            Request::new("GET", "/"),
        ] {
            let mut ctx = RequestContext::new(request);
            assert!(expect_continue(testkit::run_request(&strict(), &mut ctx)).is_empty());
        }
    }

    fn response_ops(policy: &Cors, origin: Option<&str>) -> Vec<HeaderOp> {
        let mut request = Request::new("GET", "/");
        if let Some(origin) = origin {
            request = request.with_header("origin", origin);
        }
        let mut ctx = ResponseContext::new(request, Response::new(200), Metadata::new());
        expect_response_continue(testkit::run_response(policy, &mut ctx))
            .header_ops()
            .to_vec()
    }

    #[test]
    fn actual_responses_get_cors_headers_only_for_allowed_origins() {
        let ops = response_ops(&strict(), Some("https://app.example.com"));
        assert_eq!(
            ops,
            [
                HeaderOp::Append("vary".into(), "Origin".into()),
                HeaderOp::Set(
                    "access-control-allow-origin".into(),
                    "https://app.example.com".into()
                ),
                HeaderOp::Set("access-control-allow-credentials".into(), "true".into()),
                HeaderOp::Set(
                    "access-control-expose-headers".into(),
                    "x-request-id".into()
                ),
            ]
        );
        let vary_only = [HeaderOp::Append("vary".into(), "Origin".into())];
        assert_eq!(
            response_ops(&strict(), Some("https://evil.example")),
            vary_only,
            "a refused origin's response still varies on Origin"
        );
        assert_eq!(response_ops(&strict(), None), vary_only);
        let any = cors(json!({"allowOrigins": ["*"]}));
        assert_eq!(
            response_ops(&any, Some("https://whoever.example")),
            [HeaderOp::Set(
                "access-control-allow-origin".into(),
                "*".into()
            )]
        );
    }

    #[test]
    fn wildcards_with_credentials_or_other_origins_are_rejected() {
        for (params, field) in [
            (
                json!({"allowOrigins": ["*"], "allowCredentials": true}),
                "allowCredentials",
            ),
            (
                json!({"allowOrigins": ["*", "https://a.example"]}),
                "allowOrigins",
            ),
        ] {
            let err = testkit::new_policy::<Cors>(params.clone()).expect_err(&params.to_string());
            assert!(err.to_string().contains(field), "{err}");
        }
    }
}
