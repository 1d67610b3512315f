//! The error a policy reports.

use std::error::Error as StdError;
use std::fmt;
use std::time::Duration;

/// What kind of failure a [`PolicyError`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The route's parameters are unusable (reported when the configuration is loaded).
    InvalidParams,
    /// The policy could not reach a decision (e.g. an internal error).
    Failed,
    /// A dependency the policy needs (e.g. a JWKS endpoint) is unavailable.
    Unavailable,
    /// The policy did not finish within its time limit.
    Timeout,
}

/// A policy's failure. What the engine does with it is the route's `onFailure` setting
/// (`deny`, `continue`, `skip_remaining`); the message goes to logs, never to clients, so it may
/// be specific, but it must never contain secrets such as tokens or keys.
///
/// ```
/// use policy_sdk::{ErrorKind, PolicyError};
///
/// let err = PolicyError::invalid_param("jwksUrl", "must be HTTPS");
/// assert_eq!(err.to_string(), "jwksUrl must be HTTPS");
/// assert_eq!(err.kind(), ErrorKind::InvalidParams);
/// assert_eq!(err.field(), Some("jwksUrl"));
/// ```
#[derive(Debug)]
pub struct PolicyError {
    kind: ErrorKind,
    field: Option<String>,
    message: String,
    source: Option<Box<dyn StdError + Send + Sync>>,
}

impl PolicyError {
    /// A failure with `message` ([`ErrorKind::Failed`]).
    pub fn new(message: impl Into<String>) -> Self {
        Self::of_kind(ErrorKind::Failed, message)
    }

    /// A failure of `kind` with `message`.
    pub fn of_kind(kind: ErrorKind, message: impl Into<String>) -> Self {
        PolicyError {
            kind,
            field: None,
            message: message.into(),
            source: None,
        }
    }

    /// A parameter problem the schema could not express: shown as `"{field} {problem}"`.
    pub fn invalid_param(field: impl Into<String>, problem: impl fmt::Display) -> Self {
        let field = field.into();
        PolicyError {
            kind: ErrorKind::InvalidParams,
            message: format!("{field} {problem}"),
            field: Some(field),
            source: None,
        }
    }

    /// The policy ran longer than `limit`.
    pub fn timeout(limit: Duration) -> Self {
        Self::of_kind(
            ErrorKind::Timeout,
            format!("timed out after {} ms", limit.as_millis()),
        )
    }

    /// Keeps `source` as the cause (builder style).
    pub fn with_source(mut self, source: impl StdError + Send + Sync + 'static) -> Self {
        self.source = Some(Box::new(source));
        self
    }

    /// The kind of failure.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The parameter at fault, for [`ErrorKind::InvalidParams`].
    pub fn field(&self) -> Option<&str> {
        self.field.as_deref()
    }

    /// The message, without the cause.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl StdError for PolicyError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn StdError + 'static))
    }
}
