//! A policy's result, ready now or later.

use crate::PolicyError;
use std::fmt;
use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::task::{Context, Poll};

/// A boxed future that yields a policy result.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The result of one policy hook: [`Outcome::Ready`] for a synchronous decision (no allocation,
/// no await), or [`Outcome::Pending`] for a policy that must wait on I/O (e.g. fetching a JWKS).
///
/// The engine applies the route's per-policy timeout to pending outcomes only.
///
/// ```
/// use policy_sdk::{Outcome, RequestAction};
///
/// // synchronous
/// let now: Outcome<'_, RequestAction> = Outcome::ready(RequestAction::pass());
/// // asynchronous
/// let later: Outcome<'_, RequestAction> = Outcome::pending(async { Ok(RequestAction::pass()) });
/// # let _ = (now, later);
/// ```
#[must_use = "an outcome does nothing unless returned to the engine"]
pub enum Outcome<'a, A> {
    /// Decided now.
    Ready(Result<A, PolicyError>),
    /// Decided when the future completes.
    Pending(BoxFuture<'a, Result<A, PolicyError>>),
}

impl<'a, A> Outcome<'a, A> {
    /// A decision made now.
    pub fn ready(action: impl Into<A>) -> Self {
        Outcome::Ready(Ok(action.into()))
    }

    /// A failure now; the route's `onFailure` decides what happens.
    pub fn fail(error: PolicyError) -> Self {
        Outcome::Ready(Err(error))
    }

    /// A decision that needs to wait; the future may borrow the policy and the context.
    pub fn pending(future: impl Future<Output = Result<A, PolicyError>> + Send + 'a) -> Self {
        Outcome::Pending(Box::pin(future))
    }
}

impl<A> From<Result<A, PolicyError>> for Outcome<'_, A> {
    fn from(result: Result<A, PolicyError>) -> Self {
        Outcome::Ready(result)
    }
}

impl<A> fmt::Debug for Outcome<'_, A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Outcome::Ready(Ok(_)) => "Outcome::Ready(Ok(..))",
            Outcome::Ready(Err(_)) => "Outcome::Ready(Err(..))",
            Outcome::Pending(_) => "Outcome::Pending(..)",
        })
    }
}

/// The future behind `outcome.await`.
pub struct OutcomeFuture<'a, A> {
    inner: Inner<'a, A>,
}

enum Inner<'a, A> {
    Ready(std::future::Ready<Result<A, PolicyError>>),
    Pending(BoxFuture<'a, Result<A, PolicyError>>),
}

impl<A> fmt::Debug for OutcomeFuture<'_, A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("OutcomeFuture")
    }
}

impl<A> Future for OutcomeFuture<'_, A> {
    type Output = Result<A, PolicyError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.inner {
            Inner::Ready(ready) => Pin::new(ready).poll(cx),
            Inner::Pending(future) => future.as_mut().poll(cx),
        }
    }
}

impl<'a, A> IntoFuture for Outcome<'a, A> {
    type Output = Result<A, PolicyError>;
    type IntoFuture = OutcomeFuture<'a, A>;

    fn into_future(self) -> Self::IntoFuture {
        let inner = match self {
            Outcome::Ready(result) => Inner::Ready(std::future::ready(result)),
            Outcome::Pending(future) => Inner::Pending(future),
        };
        OutcomeFuture { inner }
    }
}
