//! Process-wide counters a policy adds to, exported by every host.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Mutex, PoisonError};

/// A counter a policy declares as a `static` and adds to; the host exports every counter that
/// has been added to (the engine as `policy_engine_policy_counter_total{name}` on `/metrics`,
/// the Envoy module as the Envoy counter `policy_counter{name}`).
///
/// The name is fixed in code, so the series are bounded: count per model or per consumer in
/// metadata, never in a counter name. Names are `[a-z][a-z0-9_]*`; one with other characters
/// is not exported.
///
/// ```
/// static TOKENS: policy_sdk::Counter =
///     policy_sdk::Counter::new("example_tokens", "Tokens the example policy saw.");
///
/// TOKENS.add(42);
/// assert_eq!(TOKENS.get(), 42);
/// assert!(policy_sdk::counters().iter().any(|c| c.name == "example_tokens" && c.value == 42));
/// ```
#[derive(Debug)]
pub struct Counter {
    name: &'static str,
    help: &'static str,
    value: AtomicU64,
    registered: AtomicBool,
}

static REGISTERED: Mutex<Vec<&'static Counter>> = Mutex::new(Vec::new());

impl Counter {
    /// A counter at zero; it is exported from its first [`Counter::add`] on.
    pub const fn new(name: &'static str, help: &'static str) -> Counter {
        Counter {
            name,
            help,
            value: AtomicU64::new(0),
            registered: AtomicBool::new(false),
        }
    }

    /// Adds `n`.
    pub fn add(&'static self, n: u64) {
        if !self.registered.load(Relaxed) && !self.registered.swap(true, Relaxed) {
            let valid = self.name.starts_with(|c: char| c.is_ascii_lowercase())
                && self
                    .name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
            if valid {
                REGISTERED
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(self);
            }
        }
        self.value.fetch_add(n, Relaxed);
    }

    /// The total so far.
    pub fn get(&self) -> u64 {
        self.value.load(Relaxed)
    }
}

/// One exported counter's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CounterValue {
    /// Its name.
    pub name: &'static str,
    /// What it counts.
    pub help: &'static str,
    /// The total so far.
    pub value: u64,
}

/// Every counter added to so far, by name (for hosts); counters of one name (declared by two
/// policies) are summed.
pub fn counters() -> Vec<CounterValue> {
    let mut all: Vec<CounterValue> = Vec::new();
    let registered = REGISTERED.lock().unwrap_or_else(PoisonError::into_inner);
    for counter in registered.iter() {
        match all.iter_mut().find(|c| c.name == counter.name) {
            Some(same) => same.value = same.value.saturating_add(counter.get()),
            None => all.push(CounterValue {
                name: counter.name,
                help: counter.help,
                value: counter.get(),
            }),
        }
    }
    all.sort_by_key(|c| c.name);
    all
}
