//! The one place where the engine's own failures become client responses, for every host. Bodies
//! never carry internals; the error id in the body is logged with the details.

use crate::chain::Denial;
use crate::error_id;
use crate::metrics::{Phase, Refusal};
use policy_sdk::ImmediateResponse;
use serde_json::json;

/// Why the engine answers the client itself.
#[derive(Debug)]
pub enum Failure {
    /// No valid configuration has been loaded yet.
    NotReady,
    /// The route has no chain and unknown routes are denied.
    UnknownRoute(String),
    /// A policy failed with `onFailure: deny`.
    Denied(Denial),
    /// A body Envoy sent is larger than the engine accepts (`size` unknown when the message
    /// broke the gRPC decode limit).
    BodyTooLarge {
        phase: Phase,
        size: Option<usize>,
        limit: usize,
    },
    /// Envoy sent part of a body and no way to see the rest (BUFFERED_PARTIAL past its buffer,
    /// trailers before `end_of_stream`).
    PartialBody { phase: Phase },
    /// The chain needs a body Envoy's filter is configured not to send.
    BodyNotSent { phase: Phase },
    /// Holding this body would pass the engine-wide budget of buffered body bytes.
    BodyBudget { phase: Phase, budget: usize },
    /// The request cannot be represented faithfully (e.g. a pseudo-header that is not UTF-8);
    /// the cause, for the log.
    BadRequest(String),
    /// A chain did something its definitions do not allow.
    Internal(&'static str),
}

impl Failure {
    /// The reason it is counted under.
    pub fn refusal(&self) -> Refusal {
        match self {
            Failure::NotReady => Refusal::NotReady,
            Failure::UnknownRoute(_) => Refusal::UnknownRoute,
            Failure::Denied(_) => Refusal::PolicyError,
            Failure::BodyTooLarge { .. } => Refusal::BodyTooLarge,
            Failure::PartialBody { .. } => Refusal::PartialBody,
            Failure::BodyNotSent { .. } => Refusal::BodyNotSent,
            Failure::BodyBudget { .. } => Refusal::BodyBudget,
            Failure::BadRequest(_) => Refusal::BadRequest,
            Failure::Internal(_) => Refusal::Internal,
        }
    }
}

/// Turns `failure` into the client's response, logging what the client is not told.
pub fn rescue(failure: Failure, route: &str, request_id: &str) -> ImmediateResponse {
    match failure {
        Failure::NotReady => {
            tracing::warn!(
                route,
                request_id,
                "no valid configuration loaded yet: answering 503"
            );
            error(
                503,
                "not_ready",
                "the policy engine has no configuration yet",
                None,
            )
        }
        Failure::UnknownRoute(key) => {
            tracing::warn!(route = %key, request_id, "no policy chain for this route: denied");
            error(
                403,
                "route_not_configured",
                "no policy chain is configured for this route",
                None,
            )
        }
        Failure::Denied(denial) => {
            let id = error_id::next();
            tracing::error!(route, request_id, error_id = %id, policy = %denial.policy, error = %denial.error, "policy failed: request denied (onFailure: deny)");
            error(
                500,
                "policy_error",
                "the request could not be processed",
                Some(&id),
            )
        }
        Failure::BodyTooLarge { phase, size, limit } => {
            let id = error_id::next();
            tracing::warn!(route, request_id, error_id = %id, phase = phase.as_str(), size, limit, "body larger than the engine's limit: refused");
            too_large(phase, &id)
        }
        Failure::PartialBody { phase } => {
            let id = error_id::next();
            tracing::warn!(route, request_id, error_id = %id, phase = phase.as_str(), "only part of the body reached the engine (Envoy's buffer is smaller than the body, or trailers came first): refused");
            too_large(phase, &id)
        }
        Failure::BodyNotSent { phase } => {
            let id = error_id::next();
            tracing::error!(route, request_id, error_id = %id, phase = phase.as_str(), "the route's chain needs the {} body but Envoy's ext_proc filter does not send it: refused; set {}_body_mode: BUFFERED (docs/envoy.md)", phase.as_str(), phase.as_str());
            error(
                500,
                "internal_error",
                "the request could not be processed",
                Some(&id),
            )
        }
        Failure::BodyBudget { phase, budget } => {
            tracing::warn!(
                route,
                request_id,
                phase = phase.as_str(),
                budget,
                "the engine holds its whole budget of buffered body bytes (--max-buffered-body-bytes): 503"
            );
            error(503, "overloaded", "the service is busy; retry later", None)
        }
        Failure::BadRequest(cause) => {
            tracing::warn!(route, request_id, %cause, "request rejected");
            error(
                400,
                "bad_request",
                "the request could not be processed",
                None,
            )
        }
        Failure::Internal(what) => {
            let id = error_id::next();
            tracing::error!(route, request_id, error_id = %id, what, "internal error: request denied");
            error(
                500,
                "internal_error",
                "the request could not be processed",
                Some(&id),
            )
        }
    }
}

/// 413 for a request body; for a response body 502, never the unjudged response.
fn too_large(phase: Phase, id: &str) -> ImmediateResponse {
    match phase {
        Phase::Request => error(
            413,
            "payload_too_large",
            "the body is larger than this route accepts",
            Some(id),
        ),
        Phase::Response => error(
            502,
            "upstream_response_refused",
            "the upstream response could not be processed",
            Some(id),
        ),
    }
}

fn error(status: u16, code: &str, message: &str, id: Option<&str>) -> ImmediateResponse {
    let mut body = json!({"error": code, "message": message});
    if let Some(id) = id {
        body["errorId"] = json!(id);
    }
    ImmediateResponse::json(status, &body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use policy_sdk::PolicyError;

    #[test]
    fn denials_get_a_500_with_an_error_id_and_no_internals() {
        let denial = Denial {
            policy: "jwt:1.0.0".into(),
            error: PolicyError::new("jwks fetch failed: secret detail"),
        };
        let r = rescue(Failure::Denied(denial), "api", "rid");
        assert_eq!(r.status(), 500);
        let body: serde_json::Value = serde_json::from_slice(r.body()).expect("json");
        assert_eq!(body["error"], "policy_error");
        assert!(body["errorId"].as_str().is_some_and(|id| !id.is_empty()));
        assert!(!String::from_utf8_lossy(r.body()).contains("secret"));
    }
}
