//! Running a chain: order, conditions, timeouts, `onFailure`, short-circuit.

use super::{Chain, Step, unwind};
use crate::condition::{Condition, EvalError};
use crate::config::{OnConditionError, OnFailure};
use crate::definition::Phase;
use crate::error_id;
use policy_sdk::{
    ImmediateResponse, Outcome, PolicyError, RequestAction, RequestContext, RequestPolicy,
    ResponseAction, ResponseContext, ResponsePolicy,
};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

/// How a phase of a chain ended.
#[derive(Debug)]
#[must_use]
pub enum Decision {
    /// Go on; the context holds the changes to forward.
    Continue,
    /// A policy answered; send this response to the client.
    Respond(ImmediateResponse),
    /// A policy failed with `onFailure: deny`.
    Deny(Denial),
}

/// The failure that denied a request.
#[derive(Debug)]
pub struct Denial {
    /// The failing policy's `name:version`.
    pub policy: Arc<str>,
    /// Its error (for logs only: it may be specific, never for clients).
    pub error: PolicyError,
}

impl Chain {
    /// Runs the request-phase steps against `ctx`, applying each one's modifications so later
    /// policies see them.
    pub async fn run_request(&self, ctx: &mut RequestContext) -> Decision {
        self.run_request_traced(ctx, None).await
    }

    /// [`Chain::run_request`], recording each policy's fate in `trace` when given, and the
    /// chain's run time in the route's metrics.
    pub async fn run_request_traced(
        &self,
        ctx: &mut RequestContext,
        trace: Option<&mut Trace>,
    ) -> Decision {
        let started = Instant::now();
        let decision = run::<RequestHook>(&self.route, &self.request, ctx, trace).await;
        self.metrics
            .duration(Phase::Request)
            .observe(started.elapsed());
        decision
    }

    /// Runs the response-phase steps (reverse listed order) against `ctx`.
    pub async fn run_response(&self, ctx: &mut ResponseContext) -> Decision {
        self.run_response_traced(ctx, None).await
    }

    /// [`Chain::run_response`] with an optional trace, like [`Chain::run_request_traced`].
    pub async fn run_response_traced(
        &self,
        ctx: &mut ResponseContext,
        trace: Option<&mut Trace>,
    ) -> Decision {
        let started = Instant::now();
        let decision = run::<ResponseHook>(&self.route, &self.response, ctx, trace).await;
        self.metrics
            .duration(Phase::Response)
            .observe(started.elapsed());
        decision
    }
}

/// How a phase calls its policies: what differs between the request and the response chain.
trait Hook {
    type Policy: ?Sized + Send + Sync;
    type Ctx;
    type Action;
    const NAME: &'static str;
    fn eval(condition: &Condition, ctx: &Self::Ctx) -> Result<bool, EvalError>;
    fn invoke<'a>(policy: &'a Self::Policy, ctx: &'a mut Self::Ctx) -> Outcome<'a, Self::Action>;
    /// Applies a `Continue` action and returns `None`, or returns the immediate response.
    fn settle(
        ctx: &mut Self::Ctx,
        action: Self::Action,
    ) -> Result<Option<ImmediateResponse>, PolicyError>;
    fn request_id(ctx: &Self::Ctx) -> &str;
}

struct RequestHook;
struct ResponseHook;

impl Hook for RequestHook {
    type Policy = dyn RequestPolicy;
    type Ctx = RequestContext;
    type Action = RequestAction;
    const NAME: &'static str = "request";

    fn eval(condition: &Condition, ctx: &RequestContext) -> Result<bool, EvalError> {
        condition.eval_request(ctx)
    }

    fn invoke<'a>(
        policy: &'a Self::Policy,
        ctx: &'a mut RequestContext,
    ) -> Outcome<'a, RequestAction> {
        policy.on_request(ctx)
    }

    fn settle(
        ctx: &mut RequestContext,
        action: RequestAction,
    ) -> Result<Option<ImmediateResponse>, PolicyError> {
        match action {
            RequestAction::Continue(mods) => {
                ctx.apply(mods);
                Ok(None)
            }
            RequestAction::Respond(response) => Ok(Some(response)),
            _ => Err(PolicyError::new(
                "returned an action this engine does not support",
            )),
        }
    }

    fn request_id(ctx: &RequestContext) -> &str {
        ctx.request().request_id()
    }
}

impl Hook for ResponseHook {
    type Policy = dyn ResponsePolicy;
    type Ctx = ResponseContext;
    type Action = ResponseAction;
    const NAME: &'static str = "response";

    fn eval(condition: &Condition, ctx: &ResponseContext) -> Result<bool, EvalError> {
        condition.eval_response(ctx)
    }

    fn invoke<'a>(
        policy: &'a Self::Policy,
        ctx: &'a mut ResponseContext,
    ) -> Outcome<'a, ResponseAction> {
        policy.on_response(ctx)
    }

    fn settle(
        ctx: &mut ResponseContext,
        action: ResponseAction,
    ) -> Result<Option<ImmediateResponse>, PolicyError> {
        match action {
            ResponseAction::Continue(mods) => {
                ctx.apply(mods);
                Ok(None)
            }
            ResponseAction::Respond(response) => Ok(Some(response)),
            _ => Err(PolicyError::new(
                "returned an action this engine does not support",
            )),
        }
    }

    fn request_id(ctx: &ResponseContext) -> &str {
        ctx.request().request_id()
    }
}

async fn run<P: Hook>(
    route: &str,
    steps: &[Step<P::Policy>],
    ctx: &mut P::Ctx,
    mut trace: Option<&mut Trace>,
) -> Decision {
    let mut note = |step: &Step<P::Policy>, what: &str| {
        if let Some(trace) = trace.as_deref_mut() {
            trace.push(&step.key, what);
        }
    };
    for (i, step) in steps.iter().enumerate() {
        if let Some(condition) = &step.condition {
            match P::eval(condition, ctx) {
                Ok(true) => {}
                Ok(false) => {
                    tracing::debug!(route, policy = %step.key, phase = P::NAME, request_id = P::request_id(ctx), "condition false: skipped");
                    step.metrics.skipped();
                    note(step, "skipped (condition false)");
                    continue;
                }
                Err(error) => {
                    step.condition_errors.fetch_add(1, Relaxed);
                    match step.on_condition_error {
                        OnConditionError::Skip => {
                            tracing::warn!(route, policy = %step.key, phase = P::NAME, request_id = P::request_id(ctx), %error, "condition could not be evaluated: skipped (onConditionError: skip)");
                            step.metrics.skipped();
                            note(step, "skipped (condition error)");
                            continue;
                        }
                        OnConditionError::Run => {
                            tracing::warn!(route, policy = %step.key, phase = P::NAME, request_id = P::request_id(ctx), %error, "condition could not be evaluated: running the policy (onConditionError: run)");
                        }
                        OnConditionError::Deny => {
                            note(step, "condition error (deny)");
                            not_run(&steps[i + 1..], trace);
                            return Decision::Deny(Denial {
                                policy: Arc::clone(&step.key),
                                error: PolicyError::new(format!(
                                    "its condition could not be evaluated (onConditionError: deny): {error}"
                                )),
                            });
                        }
                    }
                }
            }
        }
        let started = Instant::now();
        let run = match unwind::call(|| P::invoke(&step.policy, ctx)) {
            Ok(Outcome::Ready(result)) => Ok(result),
            Ok(Outcome::Pending(future)) => {
                match tokio::time::timeout(step.timeout, unwind::Guarded(future)).await {
                    Ok(finished) => finished,
                    Err(_) => Ok(Err(PolicyError::timeout(step.timeout))),
                }
            }
            Err(panic) => Err(panic),
        };
        let result =
            run.unwrap_or_else(|panic| Err(panicked(route, step, P::request_id(ctx), &panic)));
        let settled = result.and_then(|action| P::settle(ctx, action));
        step.metrics.ran(started.elapsed(), settled.is_err());
        let error = match settled {
            Ok(None) => {
                tracing::debug!(route, policy = %step.key, phase = P::NAME, request_id = P::request_id(ctx), "continue");
                note(step, "continue");
                continue;
            }
            Ok(Some(response)) => {
                tracing::debug!(route, policy = %step.key, phase = P::NAME, request_id = P::request_id(ctx), status = response.status(), "immediate response");
                note(step, &format!("respond {}", response.status()));
                not_run(&steps[i + 1..], trace);
                return Decision::Respond(response);
            }
            Err(error) => error,
        };
        match step.on_failure {
            OnFailure::Deny => {
                note(step, "failed (deny)");
                not_run(&steps[i + 1..], trace);
                return Decision::Deny(Denial {
                    policy: Arc::clone(&step.key),
                    error,
                });
            }
            OnFailure::Continue => {
                tracing::warn!(route, policy = %step.key, phase = P::NAME, request_id = P::request_id(ctx), %error, "policy failed: continuing (onFailure: continue)");
                note(step, "failed (continue)");
            }
            OnFailure::SkipRemaining => {
                tracing::warn!(route, policy = %step.key, phase = P::NAME, request_id = P::request_id(ctx), %error, "policy failed: skipping the rest of the chain (onFailure: skip_remaining)");
                note(step, "failed (skip_remaining)");
                not_run(&steps[i + 1..], trace);
                return Decision::Continue;
            }
        }
    }
    Decision::Continue
}

/// Logs and counts a policy's panic; the error it becomes (no panic text: it may hold data).
fn panicked<P: ?Sized>(route: &str, step: &Step<P>, request_id: &str, panic: &str) -> PolicyError {
    let id = error_id::next();
    step.metrics.panicked();
    tracing::error!(route, policy = %step.key, request_id, error_id = %id, panic, "policy panicked: handled as a failure (onFailure applies)");
    PolicyError::new(format!("panicked (error id {id})"))
}

fn not_run<P: ?Sized>(rest: &[Step<P>], trace: Option<&mut Trace>) {
    if let Some(trace) = trace {
        for step in rest {
            trace.push(&step.key, "not run");
        }
    }
}

/// The "why" of one request: each policy of a phase with what happened to it, in order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Trace {
    entries: Vec<(Arc<str>, String)>,
}

impl Trace {
    fn push(&mut self, key: &Arc<str>, what: &str) {
        self.entries.push((Arc::clone(key), what.to_owned()));
    }

    /// `(name:version, what happened)` in execution order.
    pub fn entries(&self) -> &[(Arc<str>, String)] {
        &self.entries
    }

    /// One line: `jwt-validation:1.0.0=respond 401; rate-limit:1.0.0=not run`.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for (i, (key, what)) in self.entries.iter().enumerate() {
            if i > 0 {
                out.push_str("; ");
            }
            out.push_str(key);
            out.push('=');
            out.push_str(what);
        }
        out
    }
}
