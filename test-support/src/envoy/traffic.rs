//! Requests sent back to back through Envoy from other threads, for tests that change the
//! configuration under load.

use super::Request;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long the waits below wait before they fail the test.
const PATIENCE: Duration = Duration::from_secs(60);

/// One reply: its status (0 when the request failed outright) and the `x-config` request header
/// the echo upstream saw (what a `set-header` entry stamped).
pub type Seen = (u16, Option<String>);

/// `threads` threads sending `GET path` to Envoy's `port` until stopped.
pub struct Traffic {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Vec<Seen>>>,
    threads: Vec<JoinHandle<()>>,
}

impl Traffic {
    pub fn start(port: u16, path: &'static str, threads: usize) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let threads = (0..threads)
            .map(|_| {
                let (stop, seen) = (Arc::clone(&stop), Arc::clone(&seen));
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        let one = match Request::get(path).send(port) {
                            Ok(reply) if reply.status == 200 => {
                                let echo = reply.json();
                                let config =
                                    echo["headers"]["x-config"].as_str().map(str::to_owned);
                                (reply.status, config)
                            }
                            Ok(reply) => (reply.status, None),
                            Err(_) => (0, None),
                        };
                        seen.lock().expect("seen").push(one);
                    }
                })
            })
            .collect();
        Traffic {
            stop,
            seen,
            threads,
        }
    }

    /// The replies so far.
    pub fn seen(&self) -> MutexGuard<'_, Vec<Seen>> {
        self.seen.lock().expect("seen")
    }

    /// Waits until `n` more replies came back.
    pub fn wait_for(&self, n: usize) {
        let until = self.seen().len() + n;
        self.wait_until(&format!("{n} more replies"), |seen| seen.len() >= until);
    }

    /// Waits until a reply carried `x-config: version`.
    pub fn wait_for_config(&self, version: &str) {
        self.wait_until(&format!("a reply from config {version}"), |seen| {
            seen.iter().any(|(_, v)| v.as_deref() == Some(version))
        });
    }

    fn wait_until(&self, what: &str, done: impl Fn(&[Seen]) -> bool) {
        let deadline = Instant::now() + PATIENCE;
        while !done(&self.seen()) {
            assert!(Instant::now() < deadline, "never got {what}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Stops the threads; every reply, in the order they came back.
    pub fn stop(self) -> Vec<Seen> {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads {
            thread.join().expect("a traffic thread panicked");
        }
        std::mem::take(&mut *self.seen.lock().expect("seen"))
    }
}
