//! Panics in policy code become errors: the chain goes on by the step's `onFailure`, the engine
//! keeps serving.

use std::any::Any;
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::task::{Context, Poll};

/// Runs `f`, turning a panic into its message (for hosts that run policy code, or any work
/// whose panic must not take the process down, outside the executor).
///
/// # Errors
/// The panic's message.
pub fn call<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    // The policy's state may be half-updated after a panic; the step fails, and whether the
    // rest of the chain runs is the route's `onFailure` decision.
    catch_unwind(AssertUnwindSafe(f)).map_err(message)
}

/// A future whose panics, at any poll, come out as `Err(message)`.
pub(crate) struct Guarded<F>(pub(crate) F);

impl<F: Future + Unpin> Future for Guarded<F> {
    type Output = Result<F::Output, String>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let inner = &mut self.0;
        match call(|| Pin::new(inner).poll(cx)) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(out)) => Poll::Ready(Ok(out)),
            Err(message) => Poll::Ready(Err(message)),
        }
    }
}

fn message(payload: Box<dyn Any + Send>) -> String {
    match payload.downcast::<String>() {
        Ok(s) => *s,
        Err(payload) => payload.downcast_ref::<&'static str>().map_or_else(
            || "a panic without a message".to_owned(),
            |s| (*s).to_owned(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn panics_become_their_message() {
        assert_eq!(call(|| 1), Ok(1));
        assert_eq!(
            call(|| -> u8 { panic!("boom {}", 7) }),
            Err("boom 7".to_owned())
        );
        assert_eq!(
            call(|| -> u8 { panic!("static") }),
            Err("static".to_owned())
        );
    }

    #[tokio::test]
    async fn a_panicking_future_ends_with_an_error() {
        let fut: Pin<Box<dyn Future<Output = u8> + Send>> = Box::pin(async {
            tokio::task::yield_now().await;
            panic!("later")
        });
        assert_eq!(Guarded(fut).await, Err("later".to_owned()));
    }
}
