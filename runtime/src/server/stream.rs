//! One ext_proc stream = one HTTP exchange: a small state machine over Envoy's messages.

use super::Shared;
use super::rescue::{Failure, rescue};
use super::translate::{self, Extra};
use crate::chain::{Chain, Decision, Trace};
use crate::metrics::{Outcome, Phase, RouteMetrics};
use envoy_types::pb::envoy::service::ext_proc::v3::processing_request::Request as In;
use envoy_types::pb::envoy::service::ext_proc::v3::processing_response::Response as Out;
use envoy_types::pb::envoy::service::ext_proc::v3::{
    BodyResponse, HeadersResponse, ProcessingRequest, ProcessingResponse, TrailersResponse,
};
use policy_sdk::{ImmediateResponse, Metadata, Request, RequestContext, Response, ResponseContext};
use std::sync::Arc;

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

enum Stage {
    /// Waiting for the request headers.
    Start,
    /// The chain needs the request body; the headers wait here.
    RequestBody { chain: Arc<Chain>, request: Request },
    /// The chain has response-phase policies.
    ResponseHeaders {
        chain: Arc<Chain>,
        request: Request,
        metadata: Metadata,
    },
    /// The chain needs the response body; the response headers wait here.
    ResponseBody {
        chain: Arc<Chain>,
        request: Request,
        metadata: Metadata,
        response: Response,
    },
    /// Nothing left to do; later messages are acknowledged unchanged.
    Done,
}

/// The header that carries the explain trace on answers the engine or a policy gives.
pub(crate) const EXPLAIN_HEADER: &str = "x-policy-explain";

/// The state of one stream.
pub(crate) struct Exchange {
    shared: Arc<Shared>,
    stage: Stage,
    route: String,
    request_id: String,
    /// The route's counters (the unknown-route series until a chain is found).
    metrics: Arc<RouteMetrics>,
    phase: Phase,
    /// Present on routes with `explain: true`: the current phase's trace.
    trace: Option<Trace>,
}

impl Exchange {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Exchange {
            metrics: Arc::clone(&shared.unknown_route),
            shared,
            stage: Stage::Start,
            route: String::new(),
            request_id: String::new(),
            phase: Phase::Request,
            trace: None,
        }
    }

    /// Counts how the current phase ended (`status` of the answer, 0 when forwarded); on an
    /// explained route logs the trace and returns it.
    fn conclude(&mut self, outcome: Outcome, status: u16) -> Option<String> {
        self.metrics.record(self.phase, outcome, status);
        let trace = self.trace.as_mut().map(std::mem::take)?.render();
        tracing::info!(route = %self.route, request_id = %self.request_id, phase = ?self.phase, outcome = ?outcome, status, trace = %trace, "explain");
        Some(trace)
    }

    /// Ends the exchange with `response` to the client, counted as `outcome`.
    fn end_with(&mut self, outcome: Outcome, response: ImmediateResponse) -> ProcessingResponse {
        self.stage = Stage::Done;
        let response = match self.conclude(outcome, response.status()) {
            Some(trace) => response.with_header(EXPLAIN_HEADER, trace),
            None => response,
        };
        immediate(&response)
    }

    /// Answers one message.
    pub(crate) async fn handle(
        &mut self,
        mut msg: ProcessingRequest,
    ) -> Result<ProcessingResponse, ProtocolError> {
        let input = msg.request.take().ok_or(ProtocolError::Empty)?;
        let stage = std::mem::replace(&mut self.stage, Stage::Done);
        match (input, stage) {
            (In::RequestHeaders(h), Stage::Start) => Ok(self
                .request_headers(&msg, h.headers.as_ref(), h.end_of_stream)
                .await),
            (In::RequestBody(b), Stage::RequestBody { chain, request }) => {
                if b.body.len() > self.shared.options.max_body_bytes {
                    return Ok(self.fail(Failure::BodyTooLarge {
                        size: b.body.len(),
                        limit: self.shared.options.max_body_bytes,
                    }));
                }
                Ok(self
                    .run_request(chain, request.with_body(b.body), true)
                    .await)
            }
            (
                In::ResponseHeaders(h),
                Stage::ResponseHeaders {
                    chain,
                    request,
                    metadata,
                },
            ) => {
                let response = match translate::response(h.headers.as_ref()) {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::warn!(route = %self.route, request_id = %self.request_id, error = %e, "unusable upstream response");
                        return Ok(
                            self.fail(Failure::Internal("the upstream response could not be read"))
                        );
                    }
                };
                if chain.needs().response_body && !h.end_of_stream {
                    self.stage = Stage::ResponseBody {
                        chain,
                        request,
                        metadata,
                        response,
                    };
                    return Ok(reply(Out::ResponseHeaders(HeadersResponse::default())));
                }
                let response = if chain.needs().response_body {
                    response.with_body(Vec::new())
                } else {
                    response
                };
                Ok(self
                    .run_response(chain, request, metadata, response, false)
                    .await)
            }
            (
                In::ResponseBody(b),
                Stage::ResponseBody {
                    chain,
                    request,
                    metadata,
                    response,
                },
            ) => {
                if b.body.len() > self.shared.options.max_body_bytes {
                    return Ok(self.fail(Failure::BodyTooLarge {
                        size: b.body.len(),
                        limit: self.shared.options.max_body_bytes,
                    }));
                }
                Ok(self
                    .run_response(chain, request, metadata, response.with_body(b.body), true)
                    .await)
            }
            (In::ResponseHeaders(_), Stage::RequestBody { .. }) => {
                // Envoy ignored the mode override: the request went upstream without its chain.
                // Fail closed on the way back and say how to fix the proxy.
                tracing::error!(route = %self.route, request_id = %self.request_id, "Envoy did not send the request body the route's chain needs; set allow_mode_override: true on the ext_proc filter");
                Ok(self.fail(Failure::Internal("request body never arrived")))
            }
            // Phases Envoy sends although this exchange needs nothing from them (its filter
            // configuration asks for more than the chain does): acknowledge them unchanged.
            (In::RequestBody(_), stage @ (Stage::ResponseHeaders { .. } | Stage::Done)) => {
                self.stage = stage;
                Ok(reply(Out::RequestBody(BodyResponse::default())))
            }
            (In::ResponseHeaders(_), Stage::Done) => {
                Ok(reply(Out::ResponseHeaders(HeadersResponse::default())))
            }
            (In::ResponseBody(_), Stage::Done) => {
                Ok(reply(Out::ResponseBody(BodyResponse::default())))
            }
            (In::RequestTrailers(_), stage) if !matches!(stage, Stage::Start) => {
                self.stage = stage;
                Ok(reply(Out::RequestTrailers(TrailersResponse::default())))
            }
            (In::ResponseTrailers(_), stage) if !matches!(stage, Stage::Start) => {
                self.stage = stage;
                Ok(reply(Out::ResponseTrailers(TrailersResponse::default())))
            }
            (input, _) => Err(ProtocolError::OutOfPhase { got: name(&input) }),
        }
    }

    async fn request_headers(
        &mut self,
        msg: &ProcessingRequest,
        headers: Option<&envoy_types::pb::envoy::config::core::v3::HeaderMap>,
        end_of_stream: bool,
    ) -> ProcessingResponse {
        let request = translate::request(msg, headers);
        if let Ok(req) = &request {
            self.request_id = req.request_id().to_owned();
        }
        self.route = self
            .shared
            .options
            .route_key
            .find(msg, request.as_ref().ok())
            .unwrap_or_default()
            .to_owned();
        let Some(snapshot) = self.shared.state.current() else {
            return self.fail(Failure::NotReady);
        };
        let Some(chain) = snapshot.chain_for(&self.route).cloned() else {
            return self.fail(Failure::UnknownRoute(self.route.clone()));
        };
        self.metrics = Arc::clone(&chain.metrics);
        if chain.explain() {
            self.trace = Some(Trace::default());
        }
        let request = match request {
            Ok(r) => r,
            Err(e) => return self.fail(Failure::BadRequest(e)),
        };
        let needs = chain.needs();
        if needs.request_body && !end_of_stream {
            self.stage = Stage::RequestBody { chain, request };
            let mut response = reply(Out::RequestHeaders(HeadersResponse::default()));
            response.mode_override = Some(translate::mode(needs));
            return response;
        }
        let request = if needs.request_body {
            request.with_body(Vec::new())
        } else {
            request
        };
        self.run_request(chain, request, false).await
    }

    /// Runs the request chain; `at_body`: Envoy holds headers and body (BUFFERED).
    async fn run_request(
        &mut self,
        chain: Arc<Chain>,
        request: Request,
        at_body: bool,
    ) -> ProcessingResponse {
        let mut ctx = RequestContext::new(request);
        match chain
            .run_request_traced(&mut ctx, self.trace.as_mut())
            .await
        {
            Decision::Respond(r) => return self.answer(r),
            Decision::Deny(d) => return self.fail(Failure::Denied(d)),
            Decision::Continue => {}
        }
        let changes = ctx.changes();
        if changes.body() && !at_body && !chain.needs().request_body {
            return self.fail(Failure::Internal(
                "a policy replaced the request body without declaring requiresRequestBody",
            ));
        }
        self.conclude(Outcome::Continue, 0);
        let req = ctx.request();
        let mut pseudo = Vec::new();
        if changes.path() {
            pseudo.push((":path", req.path().to_owned()));
        }
        if changes.method() {
            pseudo.push((":method", req.method().to_owned()));
        }
        let body = changes.body().then(|| req.body().unwrap_or_default());
        let extra = Extra {
            pseudo: &pseudo,
            content_length: body.map(<[u8]>::len),
        };
        let mutation = translate::header_mutation(changes, req.headers(), &extra);
        let common = translate::common(mutation, body, changes.path() || changes.method());
        let mut response = if at_body {
            reply(Out::RequestBody(BodyResponse { response: common }))
        } else {
            reply(Out::RequestHeaders(HeadersResponse { response: common }))
        };
        let needs = chain.needs();
        if !at_body && (needs.response_headers || needs.response_body) {
            response.mode_override = Some(translate::mode(needs));
        }
        if needs.response_headers {
            let (request, metadata) = ctx.into_parts();
            self.stage = Stage::ResponseHeaders {
                chain,
                request,
                metadata,
            };
        }
        response
    }

    async fn run_response(
        &mut self,
        chain: Arc<Chain>,
        request: Request,
        metadata: Metadata,
        response: Response,
        at_body: bool,
    ) -> ProcessingResponse {
        self.phase = Phase::Response;
        let mut ctx = ResponseContext::new(request, response, metadata);
        match chain
            .run_response_traced(&mut ctx, self.trace.as_mut())
            .await
        {
            Decision::Respond(r) => return self.answer(r),
            Decision::Deny(d) => return self.fail(Failure::Denied(d)),
            Decision::Continue => {}
        }
        let changes = ctx.changes();
        if changes.body() && !at_body && !chain.needs().response_body {
            return self.fail(Failure::Internal(
                "a policy replaced the response body without declaring requiresResponseBody",
            ));
        }
        self.conclude(Outcome::Continue, 0);
        let resp = ctx.response();
        let pseudo = if changes.status() {
            vec![(":status", resp.status().to_string())]
        } else {
            Vec::new()
        };
        let body = changes.body().then(|| resp.body().unwrap_or_default());
        let extra = Extra {
            pseudo: &pseudo,
            content_length: body.map(<[u8]>::len),
        };
        let mutation = translate::header_mutation(changes, resp.headers(), &extra);
        let common = translate::common(mutation, body, false);
        if at_body {
            reply(Out::ResponseBody(BodyResponse { response: common }))
        } else {
            reply(Out::ResponseHeaders(HeadersResponse { response: common }))
        }
    }

    /// A policy's own answer to the client.
    fn answer(&mut self, response: ImmediateResponse) -> ProcessingResponse {
        self.end_with(Outcome::Immediate, response)
    }

    /// The engine's answer to a failure.
    fn fail(&mut self, failure: Failure) -> ProcessingResponse {
        let response = rescue(failure, &self.route, &self.request_id);
        self.end_with(Outcome::Error, response)
    }
}

fn reply(response: Out) -> ProcessingResponse {
    ProcessingResponse {
        response: Some(response),
        ..Default::default()
    }
}

fn immediate(response: &ImmediateResponse) -> ProcessingResponse {
    reply(Out::ImmediateResponse(translate::immediate(response)))
}

fn name(input: &In) -> &'static str {
    match input {
        In::RequestHeaders(_) => "request headers",
        In::ResponseHeaders(_) => "response headers",
        In::RequestBody(_) => "a request body",
        In::ResponseBody(_) => "a response body",
        In::RequestTrailers(_) => "request trailers",
        In::ResponseTrailers(_) => "response trailers",
    }
}
