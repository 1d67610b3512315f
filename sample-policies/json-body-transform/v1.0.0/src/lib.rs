//! `json-body-transform` 1.0.0: removes and sets fields of JSON bodies by JSON pointer.
//!
//! ```yaml
//! - name: json-body-transform
//!   version: 1.0.0
//!   params:
//!     request: {remove: [/internal_id], set: {/source: gateway}}
//!     response: {remove: [/debug]}
//! ```

use policy_sdk::{
    ImmediateResponse, Outcome, Policy, PolicyError, RequestAction, RequestContext, RequestPolicy,
    ResponseAction, ResponseContext, ResponsePolicy, UpstreamRequestMods, UpstreamResponseMods,
};
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::BTreeMap;

/// Route parameters.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// Request body edits.
    #[serde(default)]
    pub request: Option<Edits>,
    /// Response body edits.
    #[serde(default)]
    pub response: Option<Edits>,
}

/// Edits for one direction.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Edits {
    /// Pointers to remove.
    #[serde(default)]
    pub remove: Vec<String>,
    /// Pointer to value.
    #[serde(default)]
    pub set: BTreeMap<String, Value>,
    /// Non-JSON bodies.
    #[serde(default)]
    pub non_json: NonJson,
}

/// What happens to a body that is not a JSON object or array.
#[derive(Debug, Default, Deserialize, PartialEq, Eq, Clone, Copy)]
#[serde(rename_all = "lowercase")]
pub enum NonJson {
    /// Leave it untouched.
    #[default]
    Pass,
    /// Reject the exchange.
    Reject,
}

/// The policy.
#[derive(Debug)]
pub struct JsonBodyTransform {
    request: Option<Edits>,
    response: Option<Edits>,
}

fn check(direction: &str, edits: &Edits) -> Result<(), PolicyError> {
    if edits.remove.is_empty() && edits.set.is_empty() {
        return Err(PolicyError::invalid_param(
            direction,
            "has no edits; give remove or set, or leave the direction out",
        ));
    }
    for pointer in edits.remove.iter().chain(edits.set.keys()) {
        if !pointer.starts_with('/') || pointer.contains("~2") || pointer.ends_with('~') {
            return Err(PolicyError::invalid_param(
                format!("{direction}.{pointer}"),
                "must be a JSON pointer such as /user/name",
            ));
        }
    }
    Ok(())
}

impl Policy for JsonBodyTransform {
    type Params = Params;
    /// No state of its own: routes with equal parameters share one instance.
    const SHARED_ACROSS_ROUTES: bool = true;

    fn new(p: Params) -> Result<Self, PolicyError> {
        if let Some(edits) = &p.request {
            check("request", edits)?;
        }
        if let Some(edits) = &p.response {
            check("response", edits)?;
        }
        if p.request.is_none() && p.response.is_none() {
            return Err(PolicyError::invalid_param(
                "params",
                "give request or response edits",
            ));
        }
        Ok(JsonBodyTransform {
            request: p.request,
            response: p.response,
        })
    }
}

/// Why a body was not edited.
#[derive(Debug, PartialEq)]
enum Skip {
    /// Empty, or not a JSON object/array.
    NotJson,
    /// Nothing changed.
    Unchanged,
}

/// The edited body, or why there is none.
fn transform(edits: &Edits, body: &[u8]) -> Result<Vec<u8>, Skip> {
    let mut doc: Value = serde_json::from_slice(body).map_err(|_| Skip::NotJson)?;
    if !(doc.is_object() || doc.is_array()) {
        return Err(Skip::NotJson);
    }
    let mut changed = false;
    for pointer in &edits.remove {
        changed |= remove(&mut doc, pointer);
    }
    for (pointer, value) in &edits.set {
        changed |= set(&mut doc, pointer, value.clone());
    }
    if !changed {
        return Err(Skip::Unchanged);
    }
    serde_json::to_vec(&doc).map_err(|_| Skip::NotJson)
}

fn unescape(token: &str) -> String {
    token.replace("~1", "/").replace("~0", "~")
}

fn split(pointer: &str) -> Option<(&str, String)> {
    let (parent, last) = pointer.rsplit_once('/')?;
    Some((parent, unescape(last)))
}

fn remove(doc: &mut Value, pointer: &str) -> bool {
    let Some((parent, last)) = split(pointer) else {
        return false;
    };
    match doc.pointer_mut(parent) {
        Some(Value::Object(map)) => map.remove(&last).is_some(),
        Some(Value::Array(items)) => match last.parse::<usize>() {
            Ok(i) if i < items.len() => {
                items.remove(i);
                true
            }
            _ => false,
        },
        _ => false,
    }
}

fn set(doc: &mut Value, pointer: &str, value: Value) -> bool {
    let mut current = doc;
    let tokens: Vec<String> = pointer.split('/').skip(1).map(unescape).collect();
    let Some((last, parents)) = tokens.split_last() else {
        return false;
    };
    for token in parents {
        current = match current {
            Value::Object(map) => map
                .entry(token.clone())
                .or_insert_with(|| Value::Object(Default::default())),
            Value::Array(items) => match token.parse::<usize>().ok().and_then(|i| items.get_mut(i))
            {
                Some(item) => item,
                None => return false,
            },
            _ => return false,
        };
    }
    match current {
        Value::Object(map) => map.insert(last.clone(), value.clone()) != Some(value),
        Value::Array(items) => match last.parse::<usize>() {
            Ok(i) if i < items.len() => {
                let changed = items[i] != value;
                items[i] = value;
                changed
            }
            _ if last == "-" => {
                items.push(value);
                true
            }
            _ => false,
        },
        _ => false,
    }
}

impl RequestPolicy for JsonBodyTransform {
    fn on_request<'a>(&'a self, ctx: &'a mut RequestContext) -> Outcome<'a, RequestAction> {
        let Some(edits) = &self.request else {
            return Outcome::ready(RequestAction::pass());
        };
        let body = ctx.request().body().unwrap_or_default();
        Outcome::ready(match transform(edits, body) {
            Ok(new) => RequestAction::Continue(UpstreamRequestMods::new().replace_body(new)),
            Err(Skip::NotJson) if edits.non_json == NonJson::Reject => {
                RequestAction::Respond(ImmediateResponse::json(
                    400,
                    &json!({"error": "invalid_json", "message": "the request body must be a JSON object or array"}),
                ))
            }
            Err(_) => RequestAction::pass(),
        })
    }

    fn wants_requests(&self) -> bool {
        self.request.is_some()
    }
}

impl ResponsePolicy for JsonBodyTransform {
    fn on_response<'a>(&'a self, ctx: &'a mut ResponseContext) -> Outcome<'a, ResponseAction> {
        let Some(edits) = &self.response else {
            return Outcome::ready(ResponseAction::pass());
        };
        let body = ctx.response().body().unwrap_or_default();
        Outcome::ready(match transform(edits, body) {
            Ok(new) => ResponseAction::Continue(UpstreamResponseMods::new().replace_body(new)),
            Err(Skip::NotJson) if edits.non_json == NonJson::Reject => {
                ResponseAction::Respond(ImmediateResponse::json(
                    502,
                    &json!({"error": "bad_upstream_response", "message": "the upstream did not answer with JSON"}),
                ))
            }
            Err(_) => ResponseAction::pass(),
        })
    }

    fn wants_responses(&self) -> bool {
        self.response.is_some()
    }
}

policy_sdk::export_policy!(JsonBodyTransform, phases = [request, response]);

#[cfg(test)]
mod tests {
    use super::*;
    use policy_sdk::testkit::{self, expect_continue, expect_response_continue};
    use policy_sdk::{BodyOp, Metadata, Request, Response};

    fn policy(params: Value) -> JsonBodyTransform {
        testkit::new_policy(params).expect("valid params")
    }

    fn request_body(p: &JsonBodyTransform, body: &str) -> Result<Option<Value>, u16> {
        let mut ctx = RequestContext::new(Request::new("POST", "/").with_body(body.as_bytes()));
        match testkit::run_request(p, &mut ctx) {
            Ok(RequestAction::Continue(mods)) => Ok(match mods.body() {
                Some(BodyOp::Replace(bytes)) => Some(serde_json::from_slice(bytes).expect("json")),
                _ => None,
            }),
            Ok(RequestAction::Respond(r)) => Err(r.status()),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn request_fields_are_removed_and_set_with_parents_created() {
        let p = policy(json!({"request": {
            "remove": ["/internal_id", "/user/ssn", "/absent"],
            "set": {"/source": "gateway", "/meta/trace/on": true, "/a~1b": 1},
        }}));
        let out = request_body(
            &p,
            r#"{"internal_id":7,"user":{"name":"ann","ssn":"x"},"n":[1]}"#,
        );
        assert_eq!(
            out,
            Ok(Some(
                json!({"user": {"name": "ann"}, "n": [1], "source": "gateway", "meta": {"trace": {"on": true}}, "a/b": 1})
            ))
        );
    }

    #[test]
    fn arrays_are_addressed_by_index_and_appended_with_dash() {
        let p = policy(json!({"request": {"remove": ["/items/0"], "set": {"/items/-": "z"}}}));
        assert_eq!(
            request_body(&p, r#"{"items":["a","b"]}"#),
            Ok(Some(json!({"items": ["b", "z"]})))
        );
    }

    #[test]
    fn unchanged_and_non_json_bodies_pass_unless_rejected() {
        let p = policy(json!({"request": {"remove": ["/x"]}}));
        assert_eq!(
            request_body(&p, r#"{"y":1}"#),
            Ok(None),
            "nothing to change: no new body"
        );
        assert_eq!(request_body(&p, "plain text"), Ok(None));
        assert_eq!(request_body(&p, "\"a string\""), Ok(None));
        let strict = policy(json!({"request": {"remove": ["/x"], "nonJson": "reject"}}));
        assert_eq!(request_body(&strict, "plain text"), Err(400));
        assert_eq!(request_body(&strict, ""), Err(400));
    }

    #[test]
    fn responses_are_edited_and_non_json_ones_rejected_with_502_when_asked() {
        let p = policy(json!({"response": {"remove": ["/debug"], "nonJson": "reject"}}));
        let run = |body: &str| {
            let mut ctx = ResponseContext::new(
                Request::new("GET", "/"),
                Response::new(200).with_body(body.as_bytes()),
                Metadata::new(),
            );
            testkit::run_response(&p, &mut ctx)
        };
        let mods = expect_response_continue(run(r#"{"ok":true,"debug":{"sql":"..."}}"#));
        assert_eq!(
            mods.body(),
            Some(&BodyOp::Replace(br#"{"ok":true}"#.to_vec()))
        );
        match run("<html>") {
            Ok(ResponseAction::Respond(r)) => assert_eq!(r.status(), 502),
            other => panic!("expected 502, got {other:?}"),
        }
    }

    #[test]
    fn only_edited_directions_are_in_the_chain() {
        let p = policy(json!({"request": {"remove": ["/x"]}}));
        assert!(p.wants_requests() && !p.wants_responses());
        let mut ctx = ResponseContext::new(
            Request::new("GET", "/"),
            Response::new(200),
            Metadata::new(),
        );
        assert!(expect_response_continue(testkit::run_response(&p, &mut ctx)).is_empty());
        let p = policy(json!({"response": {"set": {"/v": 2}}}));
        assert!(!p.wants_requests() && p.wants_responses());
        let mut ctx = RequestContext::new(Request::new("POST", "/").with_body("{}"));
        assert!(expect_continue(testkit::run_request(&p, &mut ctx)).is_empty());
    }

    #[test]
    fn empty_edits_are_rejected_by_field() {
        for (params, field) in [
            (json!({"request": {"nonJson": "reject"}}), "request"),
            (json!({}), "params"),
            (json!({"response": {"remove": ["x"]}}), "response.x"),
        ] {
            let err = testkit::new_policy::<JsonBodyTransform>(params.clone())
                .expect_err(&params.to_string());
            assert!(err.to_string().contains(field), "{err}");
        }
    }
}
