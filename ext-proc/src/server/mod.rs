//! The ext_proc gRPC server: Envoy's External Processing API over the policy core.
//!
//! `translate` owns every Envoy type and converts Envoy's messages from and to the domain ones of
//! `message`; `stream` runs one exchange per gRPC stream over those; `rescue` turns failures into
//! client responses.

mod message;
mod stream;
mod translate;

pub use crate::state::EngineState;

use crate::metrics::{RouteMetrics, UNKNOWN_ROUTE};
use envoy_types::pb::envoy::service::ext_proc::v3::external_processor_server::{
    ExternalProcessor, ExternalProcessorServer,
};
use envoy_types::pb::envoy::service::ext_proc::v3::{ProcessingRequest, ProcessingResponse};
use futures_util::{Stream, StreamExt};
use std::pin::Pin;
use std::str::FromStr;
use std::sync::Arc;
use stream::Exchange;
use tonic::{Status, Streaming};

/// Where the route key comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RouteKey {
    /// An Envoy attribute from `request_attributes`, by default `xds.route_name`.
    Attribute(String),
    /// A request header; use only one Envoy sets itself, since clients can send any header.
    Header(String),
}

impl Default for RouteKey {
    fn default() -> Self {
        RouteKey::Attribute("xds.route_name".to_owned())
    }
}

impl FromStr for RouteKey {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.split_once(':') {
            Some(("attribute", name)) if !name.is_empty() => {
                Ok(RouteKey::Attribute(name.to_owned()))
            }
            Some(("header", name)) if !name.is_empty() => {
                Ok(RouteKey::Header(name.to_ascii_lowercase()))
            }
            _ => Err(format!(
                "{s:?} is not a route key source; use attribute:<name> (e.g. attribute:xds.route_name) or header:<name>"
            )),
        }
    }
}

/// Server settings.
#[derive(Clone, Debug)]
pub struct ServerOptions {
    /// Where the route key comes from.
    pub route_key: RouteKey,
    /// The largest request or response body a chain accepts (413 past it).
    pub max_body_bytes: usize,
    /// The most body bytes every stream together may hold (503 past it).
    pub max_buffered_body_bytes: usize,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            route_key: RouteKey::default(),
            max_body_bytes: 1024 * 1024,
            max_buffered_body_bytes: 256 * 1024 * 1024,
        }
    }
}

struct Shared {
    state: Arc<EngineState>,
    options: ServerOptions,
    /// The series of requests no configured route serves.
    unknown_route: Arc<RouteMetrics>,
}

/// The ext_proc service.
#[derive(Clone)]
pub struct ExtProc {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for ExtProc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExtProc")
            .field("options", &self.shared.options)
            .finish_non_exhaustive()
    }
}

impl ExtProc {
    /// A service answering from `state`.
    pub fn new(state: Arc<EngineState>, options: ServerOptions) -> Self {
        ExtProc {
            shared: Arc::new(Shared {
                unknown_route: state.metrics().route(UNKNOWN_ROUTE),
                state,
                options,
            }),
        }
    }

    /// The tonic service, with the decode limit raised to fit the largest body plus headers.
    pub fn into_service(self) -> ExternalProcessorServer<Self> {
        let limit = self
            .shared
            .options
            .max_body_bytes
            .saturating_add(1024 * 1024);
        ExternalProcessorServer::new(self).max_decoding_message_size(limit)
    }
}

/// How one replayed stream ended: the answers in order, and the protocol error that closed
/// the stream, if one did.
pub type Replay = (Vec<ProcessingResponse>, Option<String>);

/// Runs `messages` through one exchange as a gRPC stream would, without a network: for fuzzing
/// and regression tests of the message handling.
#[doc(hidden)]
pub async fn replay(service: &ExtProc, messages: Vec<ProcessingRequest>) -> Replay {
    let mut exchange = Exchange::new(Arc::clone(&service.shared));
    let mut answers = Vec::new();
    for msg in messages {
        match service.handle(&mut exchange, msg).await {
            Ok(more) => answers.extend(more),
            Err(error) => return (answers, Some(error.to_string())),
        }
    }
    exchange.ended_early(false);
    (answers, None)
}

impl ExtProc {
    /// Envoy's answers to `msg`, through the domain's.
    async fn handle(
        &self,
        exchange: &mut Exchange,
        msg: ProcessingRequest,
    ) -> Result<Vec<ProcessingResponse>, message::ProtocolError> {
        let incoming = translate::incoming(msg, &self.shared.options.route_key)?;
        let replies = exchange.handle(incoming).await?;
        Ok(replies.into_iter().map(translate::outgoing).collect())
    }
}

type ResponseStream = Pin<Box<dyn Stream<Item = Result<ProcessingResponse, Status>> + Send>>;

#[tonic::async_trait]
impl ExternalProcessor for ExtProc {
    type ProcessStream = ResponseStream;

    async fn process(
        &self,
        request: tonic::Request<Streaming<ProcessingRequest>>,
    ) -> Result<tonic::Response<Self::ProcessStream>, Status> {
        let inbound = request.into_inner();
        let exchange = Exchange::new(Arc::clone(&self.shared));
        let open = self.shared.state.metrics().stream_opened();
        let service = self.clone();
        // The answers to each message, in order, on this task: no spawn, no channel.
        let responses = futures_util::stream::unfold(
            Some((inbound, exchange, open, service)),
            |state| async move {
                let (mut inbound, mut exchange, open, service) = state?;
                match inbound.message().await {
                    Ok(Some(msg)) => match service.handle(&mut exchange, msg).await {
                        Ok(answers) => Some((
                            answers.into_iter().map(Ok).collect::<Vec<_>>(),
                            Some((inbound, exchange, open, service)),
                        )),
                        Err(error) => {
                            tracing::warn!(%error, "ext_proc protocol error: closing the stream");
                            Some((vec![Err(Status::invalid_argument(error.to_string()))], None))
                        }
                    },
                    Ok(None) => {
                        exchange.ended_early(false);
                        None
                    }
                    Err(status) => {
                        tracing::debug!(%status, "ext_proc stream broke");
                        // A message past the decode limit must never end the stream cleanly:
                        // Envoy would carry on without the chain.
                        let oversized = status.code() == tonic::Code::OutOfRange;
                        let settled = exchange.settled();
                        match exchange.ended_early(oversized) {
                            Some(answer) => Some((vec![Ok(translate::outgoing(answer))], None)),
                            None if oversized && !settled => Some((
                                vec![Err(Status::resource_exhausted(
                                    "a message larger than the policy engine accepts",
                                ))],
                                None,
                            )),
                            None => None,
                        }
                    }
                }
            },
        )
        .flat_map(futures_util::stream::iter);
        Ok(tonic::Response::new(Box::pin(responses)))
    }
}
