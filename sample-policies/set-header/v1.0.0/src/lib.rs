//! `set-header` 1.0.0: sets, appends and removes request and response headers.
//!
//! ```yaml
//! - name: set-header
//!   version: 1.0.0
//!   params:
//!     request:
//!       set: {x-gateway: policy-engine}
//!       remove: [x-internal-debug]
//!     response:
//!       append: {cache-control: no-store}
//! ```
//!
//! Removals apply first, then sets, then appends. A phase with no changes is left out of the
//! route's chain, so a request-only configuration costs Envoy no response-header round trip.

use policy_sdk::{
    Outcome, Policy, PolicyError, RequestAction, RequestContext, RequestPolicy, ResponseAction,
    ResponseContext, ResponsePolicy, UpstreamRequestMods, UpstreamResponseMods,
};
use serde::Deserialize;
use std::collections::BTreeMap;

/// Route parameters.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// Changes to the request.
    #[serde(default)]
    pub request: Edits,
    /// Changes to the response.
    #[serde(default)]
    pub response: Edits,
}

/// Header changes for one direction.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Edits {
    /// Headers to set, replacing existing values.
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    /// Headers to append.
    #[serde(default)]
    pub append: BTreeMap<String, String>,
    /// Headers to remove.
    #[serde(default)]
    pub remove: Vec<String>,
}

/// The policy: its changes, ready to hand out per request.
#[derive(Debug)]
pub struct SetHeader {
    request: UpstreamRequestMods,
    response: UpstreamResponseMods,
}

const PSEUDO_HEADER_HINT: &str = "must not be a pseudo-header (':path', ':method', ...); \
     use a policy that rewrites the path or method";

fn check_names(field: &str, edits: &Edits) -> Result<(), PolicyError> {
    let names = edits
        .set
        .keys()
        .chain(edits.append.keys())
        .chain(&edits.remove);
    for name in names {
        if name.starts_with(':') {
            return Err(PolicyError::invalid_param(
                format!("{field}.{name}"),
                PSEUDO_HEADER_HINT,
            ));
        }
        if name.eq_ignore_ascii_case("content-length") || name.eq_ignore_ascii_case("host") {
            return Err(PolicyError::invalid_param(
                format!("{field}.{name}"),
                "is managed by the engine and Envoy and cannot be edited",
            ));
        }
    }
    Ok(())
}

impl Policy for SetHeader {
    type Params = Params;
    /// No state of its own: routes with equal parameters share one instance.
    const SHARED_ACROSS_ROUTES: bool = true;

    fn new(params: Params) -> Result<Self, PolicyError> {
        check_names("request", &params.request)?;
        check_names("response", &params.response)?;
        let r = params.request;
        let mut request = UpstreamRequestMods::new();
        for name in r.remove {
            request = request.remove_header(name);
        }
        for (name, value) in r.set {
            request = request.set_header(name, value);
        }
        for (name, value) in r.append {
            request = request.append_header(name, value);
        }
        let r = params.response;
        let mut response = UpstreamResponseMods::new();
        for name in r.remove {
            response = response.remove_header(name);
        }
        for (name, value) in r.set {
            response = response.set_header(name, value);
        }
        for (name, value) in r.append {
            response = response.append_header(name, value);
        }
        Ok(SetHeader { request, response })
    }
}

impl RequestPolicy for SetHeader {
    fn on_request<'a>(&'a self, _: &'a mut RequestContext) -> Outcome<'a, RequestAction> {
        Outcome::ready(self.request.clone())
    }

    fn wants_requests(&self) -> bool {
        !self.request.is_empty()
    }
}

impl ResponsePolicy for SetHeader {
    fn on_response<'a>(&'a self, _: &'a mut ResponseContext) -> Outcome<'a, ResponseAction> {
        Outcome::ready(self.response.clone())
    }

    fn wants_responses(&self) -> bool {
        !self.response.is_empty()
    }
}

policy_sdk::export_policy!(SetHeader, phases = [request, response]);

#[cfg(test)]
mod tests {
    use super::*;
    use policy_sdk::testkit::{self, expect_continue, expect_response_continue};
    use policy_sdk::{HeaderOp, Request, Response, ResponseContext};
    use serde_json::json;

    fn policy(params: serde_json::Value) -> SetHeader {
        testkit::new_policy(params).expect("valid params")
    }

    #[test]
    fn request_edits_apply_removals_then_sets_then_appends() {
        let p = policy(json!({"request": {
            "set": {"x-gateway": "engine"},
            "append": {"via": "engine"},
            "remove": ["x-debug"],
        }}));
        let mut ctx = RequestContext::new(
            Request::new("GET", "/")
                .with_header("x-debug", "1")
                .with_header("via", "lb"),
        );
        let mods = expect_continue(testkit::run_request(&p, &mut ctx));
        assert_eq!(
            mods.header_ops(),
            [
                HeaderOp::Remove("x-debug".into()),
                HeaderOp::Set("x-gateway".into(), "engine".into()),
                HeaderOp::Append("via".into(), "engine".into()),
            ]
        );
        ctx.apply(mods);
        let headers = ctx.request().headers();
        assert_eq!(headers.get("x-gateway"), Some("engine"));
        assert_eq!(headers.get_all("via").collect::<Vec<_>>(), ["lb", "engine"]);
        assert!(!headers.contains("x-debug"));
    }

    #[test]
    fn response_edits_apply_to_the_response() {
        let p = policy(json!({"response": {"set": {"x-frame-options": "DENY"}}}));
        let (req, meta) = RequestContext::new(Request::new("GET", "/")).into_parts();
        let mut ctx = ResponseContext::new(req, Response::new(200), meta);
        let mods = expect_response_continue(testkit::run_response(&p, &mut ctx));
        ctx.apply(mods);
        assert_eq!(ctx.response().header("x-frame-options"), Some("DENY"));
    }

    #[test]
    fn a_direction_without_edits_is_left_out() {
        let p = policy(json!({"request": {"set": {"a": "b"}}}));
        assert!(p.wants_requests() && !p.wants_responses());
        let p = policy(json!({"response": {"remove": ["server"]}}));
        assert!(!p.wants_requests() && p.wants_responses());
    }

    #[test]
    fn pseudo_and_managed_headers_are_rejected_naming_the_field() {
        let err = testkit::new_policy::<SetHeader>(json!({"request": {"set": {":path": "/x"}}}))
            .expect_err("pseudo-header");
        assert_eq!(err.field(), Some("request.:path"));
        let err =
            testkit::new_policy::<SetHeader>(json!({"response": {"remove": ["Content-Length"]}}))
                .expect_err("managed header");
        assert_eq!(
            err.to_string(),
            "response.Content-Length is managed by the engine and Envoy and cannot be edited"
        );
    }

    #[test]
    fn unknown_parameters_are_rejected() {
        let err =
            testkit::new_policy::<SetHeader>(json!({"request": {"sett": {}}})).expect_err("typo");
        assert!(err.to_string().contains("sett"), "{err}");
    }

    #[test]
    fn the_export_embeds_the_definition_and_builds_both_hooks() {
        let export = policy_export();
        assert!(
            export
                .definition()
                .starts_with("name: set-header\nversion: 1.0.0\n")
        );
        let instance = (export.factory())(
            json!({"request": {"set": {"a": "b"}}, "response": {"set": {"c": "d"}}}),
        )
        .expect("builds");
        assert!(instance.request().is_some() && instance.response().is_some());
    }
}
