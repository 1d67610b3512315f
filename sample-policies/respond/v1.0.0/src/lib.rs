//! `respond` 1.0.0: answers with a fixed response; the request never reaches upstream.
//!
//! ```yaml
//! - name: respond
//!   version: 1.0.0
//!   condition: 'request.url_path == "/healthz"'
//!   params: {status: 200, json: {status: ok}}
//! ```

use policy_sdk::{
    ImmediateResponse, Outcome, Policy, PolicyError, RequestAction, RequestContext, RequestPolicy,
};
use serde::Deserialize;
use std::collections::BTreeMap;

/// Route parameters.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Params {
    /// Status code.
    pub status: u16,
    /// Response headers.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Text body.
    #[serde(default)]
    pub body: Option<String>,
    /// JSON body.
    #[serde(default)]
    pub json: Option<serde_json::Value>,
    /// Content type of `body`.
    #[serde(default)]
    pub content_type: Option<String>,
}

/// The policy: the response, built once.
#[derive(Debug)]
pub struct Respond(ImmediateResponse);

impl Policy for Respond {
    type Params = Params;
    /// No state of its own: routes with equal parameters share one instance.
    const SHARED_ACROSS_ROUTES: bool = true;

    fn new(p: Params) -> Result<Self, PolicyError> {
        if !(200..=599).contains(&p.status) {
            return Err(PolicyError::invalid_param(
                "status",
                "must be between 200 and 599",
            ));
        }
        let mut response = match (&p.body, &p.json) {
            (Some(_), Some(_)) => {
                return Err(PolicyError::invalid_param(
                    "json",
                    "use either body or json, not both",
                ));
            }
            (None, Some(json)) => {
                if p.content_type.is_some() {
                    return Err(PolicyError::invalid_param(
                        "contentType",
                        "applies to body; json is always application/json",
                    ));
                }
                ImmediateResponse::json(p.status, json)
            }
            (Some(body), None) => ImmediateResponse::new(p.status)
                .with_header(
                    "content-type",
                    p.content_type
                        .as_deref()
                        .unwrap_or("text/plain; charset=utf-8"),
                )
                .with_body(body.as_bytes()),
            (None, None) => ImmediateResponse::new(p.status),
        };
        for (name, value) in &p.headers {
            let lower = name.to_ascii_lowercase();
            if lower == "content-length" || lower.starts_with(':') {
                return Err(PolicyError::invalid_param(
                    format!("headers.{name}"),
                    "is set by the proxy",
                ));
            }
            response = response.with_header(lower, value);
        }
        Ok(Respond(response))
    }
}

impl RequestPolicy for Respond {
    fn on_request<'a>(&'a self, _: &'a mut RequestContext) -> Outcome<'a, RequestAction> {
        Outcome::ready(RequestAction::Respond(self.0.clone()))
    }
}

policy_sdk::export_policy!(Respond, phases = [request]);

#[cfg(test)]
mod tests {
    use super::*;
    use policy_sdk::Request;
    use policy_sdk::testkit::{self, expect_respond};
    use serde_json::json;

    fn respond(params: serde_json::Value) -> ImmediateResponse {
        let policy: Respond = testkit::new_policy(params).expect("valid params");
        let mut ctx = RequestContext::new(Request::new("GET", "/anything"));
        expect_respond(testkit::run_request(&policy, &mut ctx))
    }

    #[test]
    fn text_bodies_get_a_text_content_type_and_the_configured_headers() {
        let r = respond(
            json!({"status": 503, "body": "down for maintenance", "headers": {"Retry-After": "120"}}),
        );
        assert_eq!(r.status(), 503);
        assert_eq!(r.body(), b"down for maintenance");
        assert_eq!(r.header("content-type"), Some("text/plain; charset=utf-8"));
        assert_eq!(r.header("retry-after"), Some("120"));
    }

    #[test]
    fn json_bodies_are_serialised_with_their_content_type() {
        let r = respond(json!({"status": 200, "json": {"status": "ok", "n": 1}}));
        assert_eq!(r.header("content-type"), Some("application/json"));
        let body: serde_json::Value = serde_json::from_slice(r.body()).expect("json");
        assert_eq!(body, json!({"status": "ok", "n": 1}));
    }

    #[test]
    fn a_custom_content_type_and_an_empty_body() {
        let r = respond(json!({"status": 200, "body": "<ok/>", "contentType": "application/xml"}));
        assert_eq!(r.header("content-type"), Some("application/xml"));
        let r = respond(json!({"status": 204}));
        assert!(r.body().is_empty());
        assert_eq!(r.header("content-type"), None);
    }

    #[test]
    fn contradictions_and_managed_headers_are_rejected_by_field() {
        for (params, field) in [
            (json!({"status": 200, "body": "a", "json": {}}), "json"),
            (
                json!({"status": 200, "json": {}, "contentType": "text/html"}),
                "contentType",
            ),
            (
                json!({"status": 200, "headers": {"content-length": "3"}}),
                "headers.content-length",
            ),
            (json!({"status": 99}), "status"),
        ] {
            let err =
                testkit::new_policy::<Respond>(params.clone()).expect_err(&params.to_string());
            assert!(err.to_string().contains(field), "{err} for {params}");
        }
    }
}
