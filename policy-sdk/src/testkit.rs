//! Unit-test a policy without Envoy: build a context, run the policy, assert on its action.
//!
//! ```
//! use policy_sdk::testkit;
//! use policy_sdk::{Outcome, Policy, PolicyError, Request, RequestAction, RequestContext,
//!     RequestPolicy, UpstreamRequestMods};
//! use serde::Deserialize;
//!
//! #[derive(Deserialize)]
//! struct Params { header: String }
//!
//! struct Tag(Params);
//!
//! impl Policy for Tag {
//!     type Params = Params;
//!     fn new(p: Params) -> Result<Self, PolicyError> { Ok(Tag(p)) }
//! }
//!
//! impl RequestPolicy for Tag {
//!     fn on_request<'a>(&'a self, _: &'a mut RequestContext) -> Outcome<'a, RequestAction> {
//!         Outcome::ready(UpstreamRequestMods::new().set_header(&self.0.header, "1"))
//!     }
//! }
//!
//! let policy: Tag = testkit::new_policy(serde_json::json!({"header": "x-tagged"})).unwrap();
//! let mut ctx = RequestContext::new(Request::new("GET", "/"));
//! let mods = testkit::expect_continue(testkit::run_request(&policy, &mut ctx));
//! assert_eq!(mods, UpstreamRequestMods::new().set_header("x-tagged", "1"));
//! ```
//!
//! [`run_request`] drives pending outcomes with a minimal executor: enough for policies whose
//! futures need no particular async runtime. For one that needs tokio (timers, sockets), use
//! `#[tokio::test]` and `policy.on_request(&mut ctx).await` instead.

use crate::{
    ImmediateResponse, Policy, PolicyError, RequestAction, RequestContext, RequestPolicy,
    ResponseAction, ResponseContext, ResponsePolicy, UpstreamRequestMods, UpstreamResponseMods,
};
use std::future::{Future, IntoFuture};
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::thread::Thread;

/// Builds a policy from JSON parameters, as the engine does for a route (without the schema check).
///
/// # Errors
/// Deserialization errors and the errors of [`Policy::new`].
pub fn new_policy<P: Policy>(params: serde_json::Value) -> Result<P, PolicyError> {
    crate::instantiate(params)
}

/// Runs a request policy once, waiting for a pending outcome.
///
/// # Errors
/// The policy's error.
pub fn run_request<P: RequestPolicy + ?Sized>(
    policy: &P,
    ctx: &mut RequestContext,
) -> Result<RequestAction, PolicyError> {
    block_on(policy.on_request(ctx).into_future())
}

/// Runs a response policy once, waiting for a pending outcome.
///
/// # Errors
/// The policy's error.
pub fn run_response<P: ResponsePolicy + ?Sized>(
    policy: &P,
    ctx: &mut ResponseContext,
) -> Result<ResponseAction, PolicyError> {
    block_on(policy.on_response(ctx).into_future())
}

/// Runs request policies in order as the engine does: each one's modifications are applied
/// before the next runs; an immediate response stops the chain and is returned.
///
/// # Errors
/// The first policy error (the engine would apply the route's `onFailure`).
pub fn run_request_chain(
    policies: &[&dyn RequestPolicy],
    ctx: &mut RequestContext,
) -> Result<Option<ImmediateResponse>, PolicyError> {
    for policy in policies {
        match run_request(*policy, ctx)? {
            RequestAction::Continue(mods) => ctx.apply(mods),
            RequestAction::Respond(response) => return Ok(Some(response)),
        }
    }
    Ok(None)
}

/// The modifications of a `Continue` result.
///
/// # Panics
/// On an error or an immediate response, with what it was.
#[track_caller]
pub fn expect_continue(result: Result<RequestAction, PolicyError>) -> UpstreamRequestMods {
    match result {
        Ok(RequestAction::Continue(mods)) => mods,
        other => panic!("expected the request to continue, got {other:?}"),
    }
}

/// The response of a `Respond` result.
///
/// # Panics
/// On an error or a `Continue`, with what it was.
#[track_caller]
pub fn expect_respond(result: Result<RequestAction, PolicyError>) -> ImmediateResponse {
    match result {
        Ok(RequestAction::Respond(response)) => response,
        other => panic!("expected an immediate response, got {other:?}"),
    }
}

/// The modifications of a response-phase `Continue` result.
///
/// # Panics
/// On an error or an immediate response, with what it was.
#[track_caller]
pub fn expect_response_continue(
    result: Result<ResponseAction, PolicyError>,
) -> UpstreamResponseMods {
    match result {
        Ok(ResponseAction::Continue(mods)) => mods,
        other => panic!("expected the response to continue, got {other:?}"),
    }
}

/// Runs a future to completion on the current thread.
pub fn block_on<F: Future>(future: F) -> F::Output {
    struct ThreadWaker(Thread);
    impl Wake for ThreadWaker {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(ThreadWaker(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut future = pin!(future);
    loop {
        if let Poll::Ready(out) = future.as_mut().poll(&mut cx) {
            return out;
        }
        std::thread::park();
    }
}
