//! One ext_proc stream = one HTTP exchange: a small state machine over Envoy's messages.
//!
//! Fail closed on every path: a body is judged whole (parts are gathered up to the limit and the
//! chain runs at `end_of_stream`), a body past the limit is refused, and a message the chain still
//! needs that never comes is logged and counted ([`Exchange::expecting`]).

use super::Shared;
use super::message::{BodyMode, Incoming, Message, ProtocolError, Reply, Step};
use crate::chain::{Chain, Decision, Trace};
use crate::metrics::{Metrics, Phase, Refusal, RouteMetrics, Verdict};
use policy_core::Edit;
use policy_core::rescue::{Failure, rescue};
use policy_sdk::{ImmediateResponse, Metadata, Request, RequestContext, Response, ResponseContext};
use std::sync::Arc;

/// The answers to one message: usually one, none while body parts are gathered, several when the
/// last part releases the parts held before it.
pub(crate) type Answers = Vec<Reply>;

/// The most body parts one exchange holds unanswered (Envoy sends parts as they arrive, so a
/// body within the limit fits; an endless run of empty parts does not).
const MAX_HELD_PARTS: usize = 16 * 1024;

/// Body parts received so far (`end_of_stream: false`), not yet answered.
#[derive(Default)]
struct Gathered {
    bytes: Vec<u8>,
    /// Parts Envoy waits on an answer for.
    held: usize,
    /// Its share of the engine-wide body budget.
    reserved: Option<Reservation>,
}

/// Body bytes counted against the engine-wide budget until dropped.
struct Reservation {
    metrics: Arc<Metrics>,
    bytes: usize,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.metrics.release_body_bytes(self.bytes);
    }
}

enum Stage {
    /// Waiting for the request headers.
    Start,
    /// The chain needs the request body; the headers wait here.
    RequestBody {
        chain: Arc<Chain>,
        request: Request,
        gathered: Gathered,
    },
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
        gathered: Gathered,
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
    /// The body modes of Envoy's filter, when Envoy says (`protocol_config`, first message).
    modes: Option<(BodyMode, BodyMode)>,
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
            modes: None,
        }
    }

    /// What the exchange still waits for (`None` once the chain has nothing left to see).
    pub(crate) fn expecting(&self) -> Option<&'static str> {
        match self.stage {
            Stage::Start | Stage::Done => None,
            Stage::RequestBody { .. } => Some("the request body"),
            Stage::ResponseHeaders { .. } => Some("the response headers"),
            Stage::ResponseBody { .. } => Some("the response body"),
        }
    }

    /// Whether the chain has seen all it needs (later messages change nothing).
    pub(crate) fn settled(&self) -> bool {
        matches!(self.stage, Stage::Done)
    }

    /// The stream ended (Envoy closed it, or it broke) before the chain saw all it needs: logs
    /// and counts it. `oversized`: the stream broke on a message above the decode limit, which
    /// the engine answers as a body past the limit.
    pub(crate) fn ended_early(&mut self, oversized: bool) -> Option<Reply> {
        let expected = self.expecting()?;
        let limit = self.shared.options.max_body_bytes;
        match (&self.stage, oversized) {
            (Stage::RequestBody { .. }, true) => {
                return Some(self.fail(Failure::BodyTooLarge {
                    phase: Phase::Request,
                    size: None,
                    limit,
                }));
            }
            (Stage::ResponseBody { .. }, true) => {
                return Some(self.fail(Failure::BodyTooLarge {
                    phase: Phase::Response,
                    size: None,
                    limit,
                }));
            }
            _ => {}
        }
        self.metrics.refused(Refusal::StreamIncomplete);
        tracing::warn!(route = %self.route, request_id = %self.request_id, expected, "the ext_proc stream ended before the chain saw everything it needs (client gone, or Envoy configured not to send it: see docs/envoy.md)");
        self.stage = Stage::Done;
        None
    }

    /// Counts how the current phase ended (`status` of the answer, 0 when forwarded); on an
    /// explained route logs the trace and returns it.
    fn conclude(&mut self, verdict: Verdict, status: u16) -> Option<String> {
        self.metrics.record(self.phase, verdict, status);
        let trace = self.trace.as_mut().map(std::mem::take)?.render();
        tracing::info!(route = %self.route, request_id = %self.request_id, phase = ?self.phase, outcome = ?verdict, status, trace = %trace, "explain");
        Some(trace)
    }

    /// Ends the exchange with `response` to the client, counted as `verdict`.
    fn end_with(&mut self, verdict: Verdict, response: ImmediateResponse) -> Reply {
        self.stage = Stage::Done;
        Reply::Respond(match self.conclude(verdict, response.status()) {
            Some(trace) => response.with_header(EXPLAIN_HEADER, trace),
            None => response,
        })
    }

    /// Answers one message.
    pub(crate) async fn handle(&mut self, incoming: Incoming) -> Result<Answers, ProtocolError> {
        let Incoming { message, modes } = incoming;
        if modes.is_some() {
            self.modes = modes;
        }
        let stage = std::mem::replace(&mut self.stage, Stage::Done);
        match (message, stage) {
            (
                Message::RequestHeaders {
                    request,
                    request_id,
                    route,
                    end_of_stream,
                },
                Stage::Start,
            ) => one(self
                .request_headers(request, request_id, route, end_of_stream)
                .await),
            (
                Message::RequestBody {
                    body,
                    end_of_stream,
                },
                Stage::RequestBody {
                    chain,
                    request,
                    mut gathered,
                },
            ) => {
                let mode = self.modes.map(|m| m.0);
                if let Err(failure) = self.gather(&mut gathered, body, end_of_stream, mode) {
                    return one(self.fail(failure));
                }
                if !self.complete(end_of_stream, mode) {
                    self.stage = Stage::RequestBody {
                        chain,
                        request,
                        gathered,
                    };
                    return Ok(Vec::new());
                }
                let held = gathered.held;
                // The budget share is held until the chain is done with the body.
                let _reserved = gathered.reserved.take();
                let request = request.with_body(gathered.bytes);
                let last = self.run_request(chain, request, true).await;
                Ok(release(held, last, Step::RequestBody))
            }
            (
                Message::ResponseHeaders {
                    response,
                    end_of_stream,
                },
                Stage::ResponseHeaders {
                    chain,
                    request,
                    metadata,
                },
            ) => {
                let response = match response {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::warn!(route = %self.route, request_id = %self.request_id, error = %e, "unusable upstream response");
                        return one(
                            self.fail(Failure::Internal("the upstream response could not be read"))
                        );
                    }
                };
                if chain.needs().response_body && !end_of_stream {
                    self.stage = Stage::ResponseBody {
                        chain,
                        request,
                        metadata,
                        response,
                        gathered: Gathered::default(),
                    };
                    return one(Reply::Acknowledge(Step::ResponseHeaders));
                }
                let response = if chain.needs().response_body {
                    response.with_body(Vec::new())
                } else {
                    response
                };
                one(self
                    .run_response(chain, request, metadata, response, false)
                    .await)
            }
            (
                Message::ResponseBody {
                    body,
                    end_of_stream,
                },
                Stage::ResponseBody {
                    chain,
                    request,
                    metadata,
                    response,
                    mut gathered,
                },
            ) => {
                self.phase = Phase::Response;
                let mode = self.modes.map(|m| m.1);
                if let Err(failure) = self.gather(&mut gathered, body, end_of_stream, mode) {
                    return one(self.fail(failure));
                }
                if !self.complete(end_of_stream, mode) {
                    self.stage = Stage::ResponseBody {
                        chain,
                        request,
                        metadata,
                        response,
                        gathered,
                    };
                    return Ok(Vec::new());
                }
                let held = gathered.held;
                let _reserved = gathered.reserved.take();
                let response = response.with_body(gathered.bytes);
                let last = self
                    .run_response(chain, request, metadata, response, true)
                    .await;
                Ok(release(held, last, Step::ResponseBody))
            }
            (Message::ResponseHeaders { .. }, Stage::RequestBody { .. }) => {
                // Envoy ignored the mode override: the request went upstream without its chain.
                // Fail closed on the way back and say how to fix the proxy.
                tracing::error!(route = %self.route, request_id = %self.request_id, "Envoy did not send the request body the route's chain needs; set request_body_mode: BUFFERED on the ext_proc filter (docs/envoy.md)");
                one(self.fail(Failure::BodyNotSent {
                    phase: Phase::Request,
                }))
            }
            // Phases Envoy sends although this exchange needs nothing from them (its filter
            // configuration asks for more than the chain does, and the override that turns them
            // off was not honoured): acknowledge them unchanged.
            (
                Message::RequestBody { .. },
                stage @ (Stage::ResponseHeaders { .. } | Stage::Done),
            ) => {
                self.stage = stage;
                one(Reply::Acknowledge(Step::RequestBody))
            }
            (Message::ResponseHeaders { .. }, Stage::Done) => {
                one(Reply::Acknowledge(Step::ResponseHeaders))
            }
            (Message::ResponseBody { .. }, Stage::Done) => {
                one(Reply::Acknowledge(Step::ResponseBody))
            }
            (Message::RequestTrailers, stage @ (Stage::ResponseHeaders { .. } | Stage::Done)) => {
                self.stage = stage;
                one(Reply::Acknowledge(Step::RequestTrailers))
            }
            (Message::ResponseTrailers, Stage::Done) => {
                one(Reply::Acknowledge(Step::ResponseTrailers))
            }
            // Trailers while a body is awaited: the body ended without `end_of_stream`, and the
            // chain never saw it whole. Refuse rather than judge a part.
            (Message::RequestTrailers, Stage::RequestBody { .. }) => {
                one(self.fail(Failure::PartialBody {
                    phase: Phase::Request,
                }))
            }
            (Message::ResponseTrailers, Stage::ResponseBody { .. }) => {
                self.phase = Phase::Response;
                one(self.fail(Failure::PartialBody {
                    phase: Phase::Response,
                }))
            }
            (message, _) => Err(ProtocolError::OutOfPhase {
                got: message.name(),
            }),
        }
    }

    /// Adds one body part, refusing past the limit or a part that can never be completed.
    fn gather(
        &self,
        gathered: &mut Gathered,
        part: Vec<u8>,
        end_of_stream: bool,
        mode: Option<BodyMode>,
    ) -> Result<(), Failure> {
        let limit = self.shared.options.max_body_bytes;
        let size = gathered.bytes.len().saturating_add(part.len());
        // Each held part is an answer owed later: empty parts must not grow that list forever.
        if size > limit || gathered.held >= MAX_HELD_PARTS {
            return Err(Failure::BodyTooLarge {
                phase: self.phase,
                size: Some(size),
                limit,
            });
        }
        // BUFFERED_PARTIAL sends what fit in Envoy's buffer and lets the rest through unseen.
        if !end_of_stream && mode == Some(BodyMode::BufferedPartial) {
            return Err(Failure::PartialBody { phase: self.phase });
        }
        let budget = self.shared.options.max_buffered_body_bytes;
        let metrics = self.shared.state.metrics();
        if !metrics.reserve_body_bytes(part.len(), budget) {
            return Err(Failure::BodyBudget {
                phase: self.phase,
                budget,
            });
        }
        match &mut gathered.reserved {
            Some(reserved) => reserved.bytes += part.len(),
            None => {
                gathered.reserved = Some(Reservation {
                    metrics: Arc::clone(metrics),
                    bytes: part.len(),
                });
            }
        }
        if gathered.bytes.is_empty() {
            gathered.bytes = part;
        } else {
            gathered.bytes.extend_from_slice(&part);
        }
        gathered.held += 1;
        Ok(())
    }

    /// Whether the body is whole: at `end_of_stream`, or in BUFFERED mode (where Envoy sends the
    /// whole body in one message, without `end_of_stream` when trailers follow).
    fn complete(&self, end_of_stream: bool, mode: Option<BodyMode>) -> bool {
        end_of_stream || mode == Some(BodyMode::Buffered)
    }

    async fn request_headers(
        &mut self,
        request: Result<Request, policy_core::headers::HeaderError>,
        request_id: String,
        route: Option<String>,
        end_of_stream: bool,
    ) -> Reply {
        self.request_id = request_id;
        self.route = route.unwrap_or_default();
        let Some(snapshot) = self.shared.state.current() else {
            return self.fail(Failure::NotReady);
        };
        let Some(chain) = snapshot.chain_for(&self.route).cloned() else {
            return self.fail(Failure::UnknownRoute(self.route.clone()));
        };
        self.metrics = Arc::clone(chain.metrics());
        if chain.explain() {
            self.trace = Some(Trace::default());
        }
        let request = match request {
            Ok(r) => r,
            Err(e) => return self.fail(Failure::BadRequest(e.to_string())),
        };
        let needs = chain.needs();
        // Envoy says it will not send a body the chain needs: refuse now rather than let the
        // request (or its response) through unjudged.
        // FULL_DUPLEX_STREAMED wants answers the engine does not give: refused the same way.
        let unusable = |mode| matches!(mode, BodyMode::None | BodyMode::FullDuplexStreamed);
        if let Some((request_mode, response_mode)) = self.modes {
            if needs.request_body && !end_of_stream && unusable(request_mode) {
                return self.fail(Failure::BodyNotSent {
                    phase: Phase::Request,
                });
            }
            if needs.response_body && unusable(response_mode) {
                return self.fail(Failure::BodyNotSent {
                    phase: Phase::Response,
                });
            }
        }
        if needs.request_body && !end_of_stream {
            self.stage = Stage::RequestBody {
                chain,
                request,
                gathered: Gathered::default(),
            };
            return Reply::Continue {
                step: Step::RequestHeaders,
                edit: Edit::default(),
                needs: Some(needs),
            };
        }
        let request = if needs.request_body {
            request.with_body(Vec::new())
        } else {
            request
        };
        self.run_request(chain, request, false).await
    }

    /// Runs the request chain; `at_body`: Envoy holds headers and body (BUFFERED).
    async fn run_request(&mut self, chain: Arc<Chain>, request: Request, at_body: bool) -> Reply {
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
        self.conclude(Verdict::Continue, 0);
        let needs = chain.needs();
        let reply = Reply::Continue {
            step: if at_body {
                Step::RequestBody
            } else {
                Step::RequestHeaders
            },
            edit: Edit::of_request(&ctx),
            // Turns off what Envoy's filter sends and this chain does not need (the filter is
            // configured to send what the most demanding chain could need: docs/envoy.md).
            needs: (!at_body).then_some(needs),
        };
        if needs.response_headers {
            let (mut request, metadata) = ctx.into_parts();
            if !needs.request_body_in_response {
                // Nothing in the response phase reads it: free it for the upstream round trip.
                request = request.without_body();
            }
            self.stage = Stage::ResponseHeaders {
                chain,
                request,
                metadata,
            };
        }
        reply
    }

    async fn run_response(
        &mut self,
        chain: Arc<Chain>,
        request: Request,
        metadata: Metadata,
        response: Response,
        at_body: bool,
    ) -> Reply {
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
        self.conclude(Verdict::Continue, 0);
        Reply::Continue {
            step: if at_body {
                Step::ResponseBody
            } else {
                Step::ResponseHeaders
            },
            edit: Edit::of_response(&ctx),
            needs: None,
        }
    }

    /// A policy's own answer to the client.
    fn answer(&mut self, response: ImmediateResponse) -> Reply {
        self.end_with(Verdict::Immediate, response)
    }

    /// The engine's answer to a failure.
    fn fail(&mut self, failure: Failure) -> Reply {
        self.metrics.refused(failure.refusal());
        let response = rescue(failure, &self.route, &self.request_id);
        self.end_with(Verdict::Error, response)
    }
}

impl Drop for Exchange {
    /// A stream dropped mid-exchange (Envoy reset it, or tonic stopped polling) is an early end.
    fn drop(&mut self) {
        self.ended_early(false);
    }
}

/// The answers that end a body gathered over `held` parts: the parts before the last go on as
/// they were, or emptied when the chain replaced the body (the last part then carries all of it).
/// An immediate answer goes alone: none of the held parts is let through.
fn release(held: usize, last: Reply, step: Step) -> Answers {
    let replaced = match &last {
        Reply::Respond(_) => return vec![last],
        Reply::Continue { edit, .. } => edit.body.is_some(),
        Reply::Acknowledge(_) => false,
    };
    let mut answers = Vec::with_capacity(held.max(1));
    for _ in 1..held {
        answers.push(if replaced {
            Reply::Continue {
                step,
                edit: Edit::clear_body(),
                needs: None,
            }
        } else {
            Reply::Acknowledge(step)
        });
    }
    answers.push(last);
    answers
}

/// The single answer to a message.
fn one(reply: Reply) -> Result<Answers, ProtocolError> {
    Ok(vec![reply])
}
