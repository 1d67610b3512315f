//! Work that must not compete with serving requests: compiling a configuration, rendering a
//! large admin answer.

use thread_priority::{ThreadPriority, ThreadPriorityValue, set_current_thread_priority};

/// The priority of background threads, on the 0–99 cross-platform scale: nice 5 on Linux. On a
/// saturated machine such a thread gets about a third of what a request-serving thread gets, so
/// a large compile takes longer instead of slowing requests down as much, yet still finishes in
/// seconds.
const BACKGROUND_PRIORITY: u8 = 34;

/// Runs `work` on a new thread named `name`, at background priority, and waits for its result
/// without blocking the async runtime. A panic in `work` comes back as its message.
///
/// # Errors
/// The panic message, or why the thread could not be started.
pub async fn run<T: Send + 'static>(
    name: &str,
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, String> {
    let (done, result) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || {
            lower_priority();
            let _ = done.send(policy_core::chain::catch_panic(work));
        })
        .map_err(|e| format!("starting the {name} thread: {e}"))?;
    result
        .await
        .map_err(|_| format!("the {name} thread ended without an answer"))?
}

/// Lowers the calling thread's scheduling priority; where the system refuses, it stays as it is.
fn lower_priority() {
    let lowered = ThreadPriorityValue::try_from(BACKGROUND_PRIORITY)
        .map_err(|e| e.to_string())
        .and_then(|value| {
            set_current_thread_priority(ThreadPriority::Crossplatform(value))
                .map_err(|e| format!("{e:?}"))
        });
    if let Err(error) = lowered {
        tracing::debug!(%error, "cannot lower a background thread's priority");
    }
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn work_runs_at_a_lower_priority_and_panics_come_back_as_errors() {
        let nice = super::run("test", || {
            std::fs::read_to_string("/proc/thread-self/stat")
                .ok()
                .and_then(|stat| {
                    // Field 19 is the nice value; the command name (field 2) may hold spaces.
                    let rest = stat.rsplit_once(')')?.1;
                    rest.split_whitespace().nth(16)?.parse::<i32>().ok()
                })
        })
        .await
        .expect("ran");
        if cfg!(target_os = "linux") {
            assert_eq!(nice, Some(5), "nice 5");
        }
        let panicked = super::run("test", || -> u8 { panic!("boom") }).await;
        assert_eq!(panicked, Err("boom".to_owned()));
    }
}
