//! The module's own small runtime: chains whose policies return `Pending` (a JWKS fetch) finish
//! here, off Envoy's worker threads, and wake their stream through Envoy's scheduler.

use std::future::Future;
use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context, Poll, Waker};

/// A chain run that may not finish at once.
pub(crate) type Run<T> = Pin<Box<dyn Future<Output = T> + Send>>;

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        match tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("policy-module")
            .enable_time()
            .build()
        {
            Ok(runtime) => runtime,
            // Without threads the process cannot run the module at all.
            Err(error) => panic!("cannot start the policy module's runtime: {error}"),
        }
    })
}

/// Polls `run` once on the calling (worker) thread, inside the runtime's context so policy
/// timeouts can be set; returns it back when it is not done.
pub(crate) fn poll_once<T>(mut run: Run<T>) -> Result<T, Run<T>> {
    let _context = runtime().enter();
    let mut cx = Context::from_waker(Waker::noop());
    match run.as_mut().poll(&mut cx) {
        Poll::Ready(value) => Ok(value),
        Poll::Pending => Err(run),
    }
}

/// Finishes `run` on the runtime, then calls `done` there with its result.
pub(crate) fn finish<T: Send + 'static>(run: Run<T>, done: impl FnOnce(T) + Send + 'static) {
    runtime().spawn(async move { done(run.await) });
}
