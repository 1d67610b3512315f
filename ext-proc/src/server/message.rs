//! The exchange's vocabulary: what Envoy sends and what the engine answers, in domain terms.
//! `translate` converts them from and to Envoy's messages; `stream` never sees a proto.

use crate::chain::Needs;
use policy_core::Edit;
use policy_core::headers::HeaderError;
use policy_sdk::{ImmediateResponse, Request, Response};

/// One message from Envoy.
#[derive(Debug)]
pub(crate) enum Message {
    /// The request headers; the request, or why it cannot be represented.
    RequestHeaders {
        request: Result<Request, HeaderError>,
        /// The request's `x-request-id`, for log lines even when the request is unusable.
        request_id: String,
        /// The route key, when the message carries one.
        route: Option<String>,
        end_of_stream: bool,
    },
    /// A request body part (the whole body in BUFFERED mode).
    RequestBody { body: Vec<u8>, end_of_stream: bool },
    /// The request trailers (the engine reads none).
    RequestTrailers,
    /// The response headers; the response, or why it cannot be represented.
    ResponseHeaders {
        response: Result<Response, HeaderError>,
        end_of_stream: bool,
    },
    /// A response body part.
    ResponseBody { body: Vec<u8>, end_of_stream: bool },
    /// The response trailers (the engine reads none).
    ResponseTrailers,
}

impl Message {
    /// What it is, for error messages.
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Message::RequestHeaders { .. } => "request headers",
            Message::ResponseHeaders { .. } => "response headers",
            Message::RequestBody { .. } => "a request body",
            Message::ResponseBody { .. } => "a response body",
            Message::RequestTrailers => "request trailers",
            Message::ResponseTrailers => "response trailers",
        }
    }
}

/// A message from Envoy with what the stream's first message says about the filter.
#[derive(Debug)]
pub(crate) struct Incoming {
    pub message: Message,
    /// The filter's request and response body modes (first message only, newer Envoys only).
    pub modes: Option<(BodyMode, BodyMode)>,
}

/// How Envoy's filter sends a body, as it says in the stream's first message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BodyMode {
    /// Not sent.
    None,
    /// In parts as they arrive.
    Streamed,
    /// Whole, in one message.
    Buffered,
    /// Up to Envoy's buffer limit; the rest passes unseen.
    BufferedPartial,
    /// In parts, with the headers answered first (not supported for body chains).
    FullDuplexStreamed,
}

/// The message an answer goes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Step {
    RequestHeaders,
    RequestBody,
    RequestTrailers,
    ResponseHeaders,
    ResponseBody,
    ResponseTrailers,
}

/// The engine's answer to one message.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Reply {
    /// The message goes on, changed by `edit`; with `needs`, Envoy stops sending for the rest
    /// of the stream what the chain does not need.
    Continue {
        step: Step,
        edit: Edit,
        needs: Option<Needs>,
    },
    /// The message goes on unchanged.
    Acknowledge(Step),
    /// Envoy answers the client with this; nothing goes on.
    Respond(ImmediateResponse),
}

/// A message that breaks the protocol; the stream ends with an error, the server lives on.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum ProtocolError {
    /// The message carries nothing.
    #[error("a processing request without a message")]
    Empty,
    /// A message arrived where the exchange cannot take it.
    #[error("{got} arrived out of phase")]
    OutOfPhase {
        /// What arrived.
        got: &'static str,
    },
}
