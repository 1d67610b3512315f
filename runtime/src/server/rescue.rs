//! The one place where failures become client responses. Bodies never carry internals; the
//! error id in the body is logged with the details.

use crate::chain::Denial;
use policy_sdk::ImmediateResponse;
use serde_json::json;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use super::translate::TranslateError;

/// Why the engine answers the client itself.
#[derive(Debug)]
pub(crate) enum Failure {
    /// No valid configuration has been loaded yet.
    NotReady,
    /// The route has no chain and unknown routes are denied.
    UnknownRoute(String),
    /// A policy failed with `onFailure: deny`.
    Denied(Denial),
    /// A body Envoy sent is larger than the engine accepts.
    BodyTooLarge { size: usize, limit: usize },
    /// The request cannot be represented faithfully (e.g. a header that is not UTF-8).
    BadRequest(TranslateError),
    /// A chain did something its definitions do not allow.
    Internal(&'static str),
}

/// Turns `failure` into the client's response, logging what the client is not told.
pub(crate) fn rescue(failure: Failure, route: &str, request_id: &str) -> ImmediateResponse {
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
            let id = error_id();
            tracing::error!(route, request_id, error_id = %id, policy = %denial.policy, error = %denial.error, "policy failed: request denied (onFailure: deny)");
            error(
                500,
                "policy_error",
                "the request could not be processed",
                Some(&id),
            )
        }
        Failure::BodyTooLarge { size, limit } => {
            tracing::warn!(
                route,
                request_id,
                size,
                limit,
                "body larger than the engine's limit: 413"
            );
            error(
                413,
                "payload_too_large",
                "the body is larger than this route accepts",
                None,
            )
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
            let id = error_id();
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

fn error(status: u16, code: &str, message: &str, id: Option<&str>) -> ImmediateResponse {
    let mut body = json!({"error": code, "message": message});
    if let Some(id) = id {
        body["errorId"] = json!(id);
    }
    ImmediateResponse::json(status, &body)
}

/// A short id, unique within this process's life, that ties a client's error to a log line.
fn error_id() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    static START: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let start = *START.get_or_init(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    });
    format!("{start:x}-{:x}", NEXT.fetch_add(1, Ordering::Relaxed))
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

    #[test]
    fn error_ids_differ() {
        assert_ne!(error_id(), error_id());
    }
}
