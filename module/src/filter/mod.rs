//! One HTTP stream inside Envoy: the same chains, failures and answers as the ext_proc engine,
//! driven by Envoy's filter hooks.
//!
//! Fail closed: a chain that needs a body holds the headers (`StopIteration`) until the body is
//! whole; a body past the limit is refused; a chain still running holds the stream until it
//! finishes (or its policy timeout ends it); a stream that ends before the chain saw what it
//! needs is logged and counted. No borrow of the stream's state is held while Envoy is called,
//! since Envoy may call back into the filter from inside a callback.

use crate::envoy::{Envoy, Side};
use crate::host::{EnvoyStats, Host};
use crate::runtime::{self, Run};
use crate::settings::RouteKey;
use policy_core::chain::{Chain, Decision, Step, Trace};
use policy_core::metrics::{Phase, Refusal, RouteMetrics, UNKNOWN_ROUTE, Verdict};
use policy_core::rescue::{Failure, rescue};
use policy_core::{Edit, HeaderEdit, headers};
use policy_sdk::{ImmediateResponse, Metadata, Request, RequestContext, Response, ResponseContext};
use std::cell::RefCell;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

/// The header that carries the explain trace on answers the engine or a policy gives.
const EXPLAIN_HEADER: &str = "x-policy-explain";

/// What a hook tells Envoy to do next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flow {
    /// Go on with the stream.
    Continue,
    /// Hold what arrived (and buffer body data) until the filter resumes the stream.
    Hold,
    /// The filter answered the client: nothing more goes on.
    Stop,
}

/// A chain run that finished (on the worker, or on the module's runtime).
enum Finished {
    Request {
        chain: Arc<Chain>,
        ctx: RequestContext,
        decision: Decision,
        trace: Option<Trace>,
        at_body: bool,
    },
    Response {
        chain: Arc<Chain>,
        ctx: ResponseContext,
        decision: Decision,
        trace: Option<Trace>,
        at_body: bool,
    },
}

/// Where a chain running on the runtime leaves its result for the worker.
type Slot = Arc<Mutex<Option<Finished>>>;

enum Stage {
    /// Waiting for the request headers.
    Start,
    /// The chain needs the request body; Envoy holds the headers and buffers the body.
    RequestBody { chain: Arc<Chain>, request: Request },
    /// A chain is running on the module's runtime; Envoy holds the stream.
    Running { slot: Slot },
    /// The chain has response-phase policies.
    ResponseHeaders {
        chain: Arc<Chain>,
        request: Request,
        metadata: Metadata,
    },
    /// The chain needs the response body; Envoy holds the response headers.
    ResponseBody {
        chain: Arc<Chain>,
        request: Request,
        metadata: Metadata,
        response: Response,
    },
    /// Nothing left to do.
    Done,
}

struct State {
    stage: Stage,
    /// The route's chain, once found (for its policies' counts).
    chain: Option<Arc<Chain>>,
    /// When the running chain phase started (for its duration stat).
    started: Option<std::time::Instant>,
    route: String,
    request_id: String,
    metrics: Arc<RouteMetrics>,
    phase: Phase,
    trace: Option<Trace>,
}

/// The filter of one stream; lives on the stream's worker thread.
pub struct Filter {
    host: Arc<Host>,
    state: RefCell<State>,
}

impl std::fmt::Debug for Filter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Filter").finish_non_exhaustive()
    }
}

impl Filter {
    /// A filter for a new stream of `host`'s configuration.
    pub fn new(host: Arc<Host>) -> Filter {
        Filter {
            state: RefCell::new(State {
                stage: Stage::Start,
                chain: None,
                started: None,
                route: String::new(),
                request_id: String::new(),
                metrics: Arc::clone(host.unknown_route()),
                phase: Phase::Request,
                trace: None,
            }),
            host,
        }
    }

    fn take_stage(&self) -> Stage {
        std::mem::replace(&mut self.state.borrow_mut().stage, Stage::Done)
    }

    fn put_stage(&self, stage: Stage) {
        self.state.borrow_mut().stage = stage;
    }

    /// The request headers arrived (`end_of_stream`: no body follows).
    pub fn on_request_headers(&self, envoy: &impl Envoy, end_of_stream: bool) -> Flow {
        let stage = self.take_stage();
        if !matches!(stage, Stage::Start) {
            self.put_stage(stage);
            return Flow::Continue;
        }
        let block = envoy.headers(Side::Request);
        let request_id = headers::request_id(block.iter().map(|(k, v)| (k.as_str(), &v[..])))
            .unwrap_or_default();
        let request = headers::request(block);
        let route = match self.host.route_key() {
            RouteKey::RouteName => envoy.route_name(),
            RouteKey::Header(name) => request
                .as_ref()
                .ok()
                .and_then(|r| r.header(name))
                .map(str::to_owned),
        }
        .unwrap_or_default();
        {
            let mut state = self.state.borrow_mut();
            state.request_id = request_id;
            state.route = route.clone();
        }
        let snapshot = self.host.snapshot();
        let Some(chain) = snapshot.chain_for(&route).cloned() else {
            return self.fail(envoy, Failure::UnknownRoute(route));
        };
        {
            let mut state = self.state.borrow_mut();
            state.metrics = Arc::clone(chain.metrics());
            state.trace = chain.explain().then(Trace::default);
            state.chain = Some(Arc::clone(&chain));
        }
        let mut request = match request {
            Ok(r) => r,
            Err(e) => return self.fail(envoy, Failure::BadRequest(e.to_string())),
        };
        if let Some(addr) = envoy.source_address().as_deref().and_then(client_address) {
            request = request.with_client_address(addr);
        }
        let needs = chain.needs();
        if needs.request_body && !end_of_stream {
            self.put_stage(Stage::RequestBody { chain, request });
            return Flow::Hold;
        }
        let request = if needs.request_body {
            request.with_body(Vec::new())
        } else {
            request
        };
        self.run_request(envoy, chain, request, false)
    }

    /// A request body part arrived; Envoy buffers it while the filter holds.
    pub fn on_request_body(&self, envoy: &impl Envoy, end_of_stream: bool) -> Flow {
        match self.take_stage() {
            Stage::RequestBody { chain, request } => {
                if let Some(failure) = self.too_large(envoy, Side::Request) {
                    return self.fail(envoy, failure);
                }
                if !end_of_stream {
                    self.put_stage(Stage::RequestBody { chain, request });
                    return Flow::Hold;
                }
                let request = request.with_body(envoy.body(Side::Request));
                self.run_request(envoy, chain, request, true)
            }
            stage => self.pass(stage),
        }
    }

    /// The request trailers arrived: a body the chain waits for is whole.
    pub fn on_request_trailers(&self, envoy: &impl Envoy) -> Flow {
        match self.take_stage() {
            Stage::RequestBody { chain, request } => {
                let request = request.with_body(envoy.body(Side::Request));
                self.run_request(envoy, chain, request, true)
            }
            stage => self.pass(stage),
        }
    }

    /// The response headers arrived.
    pub fn on_response_headers(&self, envoy: &impl Envoy, end_of_stream: bool) -> Flow {
        match self.take_stage() {
            Stage::ResponseHeaders {
                chain,
                request,
                metadata,
            } => {
                self.state.borrow_mut().phase = Phase::Response;
                let response = match headers::response(envoy.headers(Side::Response)) {
                    Ok(r) => r,
                    Err(error) => {
                        tracing::warn!(route = %self.state.borrow().route, request_id = %self.state.borrow().request_id, %error, "unusable upstream response");
                        return self.fail(
                            envoy,
                            Failure::Internal("the upstream response could not be read"),
                        );
                    }
                };
                let needs = chain.needs();
                if needs.response_body && !end_of_stream {
                    self.put_stage(Stage::ResponseBody {
                        chain,
                        request,
                        metadata,
                        response,
                    });
                    return Flow::Hold;
                }
                let response = if needs.response_body {
                    response.with_body(Vec::new())
                } else {
                    response
                };
                self.run_response(envoy, chain, request, metadata, response, false)
            }
            stage => self.pass(stage),
        }
    }

    /// A response body part arrived.
    pub fn on_response_body(&self, envoy: &impl Envoy, end_of_stream: bool) -> Flow {
        match self.take_stage() {
            Stage::ResponseBody {
                chain,
                request,
                metadata,
                response,
            } => {
                if let Some(failure) = self.too_large(envoy, Side::Response) {
                    return self.fail(envoy, failure);
                }
                if !end_of_stream {
                    self.put_stage(Stage::ResponseBody {
                        chain,
                        request,
                        metadata,
                        response,
                    });
                    return Flow::Hold;
                }
                let response = response.with_body(envoy.body(Side::Response));
                self.run_response(envoy, chain, request, metadata, response, true)
            }
            stage => self.pass(stage),
        }
    }

    /// The response trailers arrived: a response body the chain waits for is whole.
    pub fn on_response_trailers(&self, envoy: &impl Envoy) -> Flow {
        match self.take_stage() {
            Stage::ResponseBody {
                chain,
                request,
                metadata,
                response,
            } => {
                let response = response.with_body(envoy.body(Side::Response));
                self.run_response(envoy, chain, request, metadata, response, true)
            }
            stage => self.pass(stage),
        }
    }

    /// A chain that ran on the runtime finished: applies it and resumes (or answers).
    pub fn on_scheduled(&self, envoy: &impl Envoy) {
        let finished = match self.take_stage() {
            Stage::Running { slot, .. } => slot.lock().ok().and_then(|mut s| s.take()),
            stage => {
                self.put_stage(stage);
                return;
            }
        };
        let Some(finished) = finished else {
            // Woken without a result: cannot happen; never let the stream through unjudged.
            self.fail(envoy, Failure::Internal("a chain ended without a decision"));
            return;
        };
        let side = match &finished {
            Finished::Request { .. } => Side::Request,
            Finished::Response { .. } => Side::Response,
        };
        if self.settle(envoy, finished) == Flow::Continue {
            envoy.resume(side);
        }
    }

    /// The stream is complete (or reset): a chain that still needed something is counted.
    pub fn on_stream_complete(&self) {
        let state = self.state.borrow();
        let expected = match &state.stage {
            Stage::Start | Stage::Done => return,
            Stage::RequestBody { .. } => "the request body",
            Stage::Running { .. } => "a running chain's decision",
            Stage::ResponseHeaders { .. } => "the response headers",
            Stage::ResponseBody { .. } => "the response body",
        };
        state.metrics.refused(Refusal::StreamIncomplete);
        tracing::warn!(route = %state.route, request_id = %state.request_id, expected, "the stream ended before the chain saw everything it needs (client gone, or the upstream reset)");
    }

    /// A hook for a stage with nothing to judge: holds while a chain runs, else goes on.
    fn pass(&self, stage: Stage) -> Flow {
        let flow = match stage {
            Stage::Running { .. } => Flow::Hold,
            _ => Flow::Continue,
        };
        self.put_stage(stage);
        flow
    }

    fn too_large(&self, envoy: &impl Envoy, side: Side) -> Option<Failure> {
        let limit = self.host.max_body_bytes();
        let size = envoy.body_len(side);
        (size > limit).then_some(Failure::BodyTooLarge {
            phase: phase(side),
            size: Some(size),
            limit,
        })
    }

    fn run_request(
        &self,
        envoy: &impl Envoy,
        chain: Arc<Chain>,
        request: Request,
        at_body: bool,
    ) -> Flow {
        let mut trace = self.state.borrow_mut().trace.take();
        let run: Run<Finished> = Box::pin(async move {
            let mut ctx = RequestContext::new(request);
            let decision = chain.run_request_traced(&mut ctx, trace.as_mut()).await;
            Finished::Request {
                chain,
                ctx,
                decision,
                trace,
                at_body,
            }
        });
        self.run(envoy, run)
    }

    fn run_response(
        &self,
        envoy: &impl Envoy,
        chain: Arc<Chain>,
        request: Request,
        metadata: Metadata,
        response: Response,
        at_body: bool,
    ) -> Flow {
        self.state.borrow_mut().phase = Phase::Response;
        let mut trace = self.state.borrow_mut().trace.take();
        let run: Run<Finished> = Box::pin(async move {
            let mut ctx = ResponseContext::new(request, response, metadata);
            let decision = chain.run_response_traced(&mut ctx, trace.as_mut()).await;
            Finished::Response {
                chain,
                ctx,
                decision,
                trace,
                at_body,
            }
        });
        self.run(envoy, run)
    }

    /// Runs a chain: at once when every policy is ready, else on the runtime while Envoy holds
    /// the stream.
    fn run(&self, envoy: &impl Envoy, run: Run<Finished>) -> Flow {
        self.state.borrow_mut().started = Some(std::time::Instant::now());
        match runtime::poll_once(run) {
            Ok(finished) => self.settle(envoy, finished),
            Err(run) => {
                let slot: Slot = Arc::default();
                let scheduler = envoy.scheduler();
                let result = Arc::clone(&slot);
                runtime::finish(run, move |finished| {
                    if let Ok(mut slot) = result.lock() {
                        *slot = Some(finished);
                    }
                    scheduler.commit(0);
                });
                self.put_stage(Stage::Running { slot });
                Flow::Hold
            }
        }
    }

    /// Applies a finished chain: the answer, or the changes and what the stream waits for next.
    fn settle(&self, envoy: &impl Envoy, finished: Finished) -> Flow {
        match finished {
            Finished::Request {
                chain,
                ctx,
                decision,
                trace,
                at_body,
            } => {
                self.state.borrow_mut().trace = trace;
                if let Some(flow) = self.decided(envoy, decision) {
                    return flow;
                }
                let needs = chain.needs();
                if ctx.changes().body() && !at_body && !needs.request_body {
                    return self.fail(
                        envoy,
                        Failure::Internal(
                            "a policy replaced the request body without declaring requiresRequestBody",
                        ),
                    );
                }
                if !apply(envoy, Side::Request, Edit::of_request(&ctx)) {
                    return self.fail(
                        envoy,
                        Failure::Internal("Envoy did not take the request body a policy wrote"),
                    );
                }
                self.conclude(envoy, Verdict::Continue, 0);
                if needs.response_headers {
                    let (mut request, metadata) = ctx.into_parts();
                    if !needs.request_body_in_response {
                        request = request.without_body();
                    }
                    self.put_stage(Stage::ResponseHeaders {
                        chain,
                        request,
                        metadata,
                    });
                }
                Flow::Continue
            }
            Finished::Response {
                chain,
                ctx,
                decision,
                trace,
                at_body,
            } => {
                self.state.borrow_mut().trace = trace;
                if let Some(flow) = self.decided(envoy, decision) {
                    return flow;
                }
                if ctx.changes().body() && !at_body && !chain.needs().response_body {
                    return self.fail(
                        envoy,
                        Failure::Internal(
                            "a policy replaced the response body without declaring requiresResponseBody",
                        ),
                    );
                }
                if !apply(envoy, Side::Response, Edit::of_response(&ctx)) {
                    return self.fail(
                        envoy,
                        Failure::Internal("Envoy did not take the response body a policy wrote"),
                    );
                }
                self.conclude(envoy, Verdict::Continue, 0);
                Flow::Continue
            }
        }
    }

    /// The answer for a decision that ends the stream, given.
    fn decided(&self, envoy: &impl Envoy, decision: Decision) -> Option<Flow> {
        match decision {
            Decision::Respond(response) => Some(self.end_with(envoy, Verdict::Immediate, response)),
            Decision::Deny(denial) => Some(self.fail(envoy, Failure::Denied(denial))),
            Decision::Continue => None,
        }
    }

    /// Counts how the current phase ended (in the module's metrics and Envoy's stats); on an
    /// explained route logs the trace and returns it.
    fn conclude(&self, envoy: &impl Envoy, verdict: Verdict, status: u16) -> Option<String> {
        let mut state = self.state.borrow_mut();
        state.metrics.record(state.phase, verdict, status);
        let stats = self.host.stats();
        let phase = state.phase.as_str();
        let route = stat_route(&state);
        if let Some(id) = stats.requests {
            // Envoy's stat names cannot hold an empty label value: `none` when forwarded.
            let status = if status == 0 {
                "none".to_owned()
            } else {
                status.to_string()
            };
            envoy.increment(id, &[route, phase, verdict.label(), &status], 1);
        }
        if let (Some(id), Some(started)) = (stats.duration, state.started) {
            let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
            envoy.record(id, &[route, phase], micros);
        }
        if let (Some(id), Some(chain)) = (stats.policies, &state.chain) {
            match state.phase {
                Phase::Request => export_runs(envoy, id, chain.request_steps(), &stats),
                Phase::Response => export_runs(envoy, id, chain.response_steps(), &stats),
            }
        }
        if let Some(id) = stats.counters {
            export_counters(envoy, id, stats.policy_interval);
        }
        state.started = None;
        let trace = state.trace.as_mut().map(std::mem::take)?.render();
        tracing::info!(route = %state.route, request_id = %state.request_id, phase = state.phase.as_str(), outcome = ?verdict, status, trace = %trace, "explain");
        Some(trace)
    }

    /// The engine's answer to a failure.
    fn fail(&self, envoy: &impl Envoy, failure: Failure) -> Flow {
        let response = {
            let state = self.state.borrow();
            state.metrics.refused(failure.refusal());
            if let Some(id) = self.host.stats().refusals {
                envoy.increment(id, &[stat_route(&state), failure.refusal().label()], 1);
            }
            rescue(failure, &state.route, &state.request_id)
        };
        self.end_with(envoy, Verdict::Error, response)
    }

    /// Ends the stream with `response` to the client, counted as `verdict`.
    fn end_with(&self, envoy: &impl Envoy, verdict: Verdict, response: ImmediateResponse) -> Flow {
        self.put_stage(Stage::Done);
        let response = match self.conclude(envoy, verdict, response.status()) {
            Some(trace) => response.with_header(EXPLAIN_HEADER, trace),
            None => response,
        };
        let status = match response.status() {
            s @ 200..=599 => s,
            _ => 500,
        };
        let headers: Vec<(&str, &str)> = response
            .headers()
            .iter()
            .filter(|(name, _)| !name.starts_with(':'))
            .map(|(name, value)| (name.as_str(), value.as_str()))
            .collect();
        envoy.send_response(status, &headers, response.body());
        Flow::Stop
    }
}

/// The route label of Envoy stats: the chain's own route name, bounded by the configuration
/// (never the key the request brought, which a header route key lets clients choose).
fn stat_route(state: &State) -> &str {
    state
        .chain
        .as_ref()
        .map_or(UNKNOWN_ROUTE, |chain| chain.route())
}

/// Adds the policies' runs since they were last exported to Envoy's `policy_runs`.
fn export_runs<P: ?Sized>(envoy: &impl Envoy, id: usize, steps: &[Step<P>], stats: &EnvoyStats) {
    for step in steps {
        let Some(counts) = step.metrics().unexported(stats.policy_interval) else {
            continue;
        };
        for (result, n) in [
            ("run", counts.executions),
            ("failed", counts.failures),
            ("panicked", counts.panics),
            ("skipped", counts.skipped),
        ] {
            if n > 0 {
                envoy.increment(id, &[step.key(), result], n);
            }
        }
    }
}

/// Adds what the policies' own counters ([`policy_sdk::Counter`]) gained since they were last
/// exported to Envoy's `policy_counter`, at most every `interval`, from whichever worker gets
/// there first.
fn export_counters(envoy: &impl Envoy, id: usize, interval: std::time::Duration) {
    type Exported = (Option<std::time::Instant>, Vec<(&'static str, u64)>);
    static EXPORTED: Mutex<Exported> = Mutex::new((None, Vec::new()));
    let Ok(mut exported) = EXPORTED.try_lock() else {
        return;
    };
    let (last, values) = &mut *exported;
    if last.is_some_and(|t| t.elapsed() < interval) {
        return;
    }
    *last = Some(std::time::Instant::now());
    for counter in policy_sdk::counters() {
        let before = match values.iter_mut().find(|(name, _)| *name == counter.name) {
            Some((_, value)) => std::mem::replace(value, counter.value),
            None => {
                values.push((counter.name, counter.value));
                0
            }
        };
        if counter.value > before {
            envoy.increment(id, &[counter.name], counter.value - before);
        }
    }
}

/// Writes `edit` into Envoy's copy of the message; false when Envoy would not take the new body.
#[must_use]
fn apply(envoy: &impl Envoy, side: Side, edit: Edit) -> bool {
    let Edit {
        headers,
        body,
        reroute,
    } = edit;
    for edit in headers {
        match edit {
            HeaderEdit::Set(name, value) => envoy.set_header(side, &name, value.as_bytes()),
            HeaderEdit::Append(name, value) => envoy.add_header(side, &name, value.as_bytes()),
            HeaderEdit::Remove(name) => envoy.remove_header(side, &name),
        }
    }
    if reroute {
        envoy.clear_route_cache();
    }
    body.is_none_or(|body| envoy.replace_body(side, &body))
}

fn phase(side: Side) -> Phase {
    match side {
        Side::Request => Phase::Request,
        Side::Response => Phase::Response,
    }
}

/// Envoy's `source.address`: `ip:port`, or the bare IP.
fn client_address(text: &str) -> Option<SocketAddr> {
    text.parse::<SocketAddr>()
        .ok()
        .or_else(|| text.parse::<IpAddr>().ok().map(|ip| SocketAddr::new(ip, 0)))
}

#[cfg(test)]
mod tests;
