//! The engine's metrics: lock-free counters and histograms on the request path, rendered in
//! the Prometheus text format. Every series is bounded: routes come from the configuration
//! (at most [`MAX_ROUTE_SERIES`] distinct names, the rest counted as `(other)`), policies from
//! the registry, statuses are HTTP codes.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub use crate::definition::Phase;
pub use histogram::Histogram;

mod histogram;
mod render;

/// Distinct route names tracked; later ones share the `(other)` series.
pub const MAX_ROUTE_SERIES: usize = 10_000;
/// The route label of requests for routes no chain serves (and before any configuration).
pub const UNKNOWN_ROUTE: &str = "(unknown)";
const OTHER_ROUTE: &str = "(other)";

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// How a phase ended for the client.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Verdict {
    /// Forwarded (with any changes).
    Continue,
    /// A policy answered the client itself (the status is the policy's).
    Immediate,
    /// The engine answered with an error (policy failure, not ready, unknown route, limits).
    Error,
}

impl Verdict {
    /// The `outcome` label.
    pub fn label(self) -> &'static str {
        match self {
            Verdict::Continue => "continue",
            Verdict::Immediate => "immediate",
            Verdict::Error => "error",
        }
    }
}

/// Why the engine answered a request itself, or saw a stream end too early.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Refusal {
    /// No configuration loaded yet (503).
    NotReady,
    /// No chain for the route (403).
    UnknownRoute,
    /// A policy failed with `onFailure: deny` (500).
    PolicyError,
    /// A body past the engine's limit (413 request, 502 response).
    BodyTooLarge,
    /// Only part of a body reached the engine (413 request, 502 response).
    PartialBody,
    /// Envoy's filter does not send a body the chain needs (500).
    BodyNotSent,
    /// A request the engine cannot represent (400).
    BadRequest,
    /// A chain broke its definitions' promises (500).
    Internal,
    /// The stream ended while the chain still needed a message (logged; nothing to answer).
    StreamIncomplete,
    /// A policy's condition could not be evaluated and its `onConditionError` is `deny`.
    ConditionError,
    /// The engine-wide budget of buffered body bytes was spent (503).
    BodyBudget,
}

impl Refusal {
    const ALL: [Refusal; 11] = [
        Refusal::NotReady,
        Refusal::UnknownRoute,
        Refusal::PolicyError,
        Refusal::BodyTooLarge,
        Refusal::PartialBody,
        Refusal::BodyNotSent,
        Refusal::BadRequest,
        Refusal::Internal,
        Refusal::StreamIncomplete,
        Refusal::ConditionError,
        Refusal::BodyBudget,
    ];

    /// The `reason` label.
    pub fn label(self) -> &'static str {
        match self {
            Refusal::NotReady => "not_ready",
            Refusal::UnknownRoute => "unknown_route",
            Refusal::PolicyError => "policy_error",
            Refusal::BodyTooLarge => "body_too_large",
            Refusal::PartialBody => "partial_body",
            Refusal::BodyNotSent => "body_not_sent",
            Refusal::BadRequest => "bad_request",
            Refusal::Internal => "internal",
            Refusal::StreamIncomplete => "stream_incomplete",
            Refusal::ConditionError => "condition_error",
            Refusal::BodyBudget => "body_budget",
        }
    }
}

/// Distinct `(phase, outcome, status)` series per route; further ones share the last slot.
const ANSWER_SLOTS: usize = 16;

/// Lock-free counters keyed by a small number: a fixed table claimed slot by slot.
#[derive(Debug, Default)]
struct Slots {
    keys: [AtomicU64; ANSWER_SLOTS],
    counts: [AtomicU64; ANSWER_SLOTS],
}

impl Slots {
    /// Adds one to `key` (never 0); past the table's size, to the last slot.
    fn add(&self, key: u64) {
        for (k, n) in self.keys.iter().zip(&self.counts) {
            let current = k.load(Relaxed);
            if current == key
                || (current == 0
                    && (k.compare_exchange(0, key, Relaxed, Relaxed).is_ok()
                        || k.load(Relaxed) == key))
            {
                n.fetch_add(1, Relaxed);
                return;
            }
        }
        self.counts[ANSWER_SLOTS - 1].fetch_add(1, Relaxed);
    }

    /// `(key, count)` of the claimed slots, sorted by key.
    fn read(&self) -> Vec<(u64, u64)> {
        let mut out: Vec<(u64, u64)> = self
            .keys
            .iter()
            .zip(&self.counts)
            .map(|(k, n)| (k.load(Relaxed), n.load(Relaxed)))
            .filter(|(k, n)| *k != 0 && *n > 0)
            .collect();
        out.sort_unstable();
        out
    }
}

/// One route's counters.
#[derive(Debug, Default)]
pub struct RouteMetrics {
    request_continue: AtomicU64,
    response_continue: AtomicU64,
    answered: Slots,
    refusals: [AtomicU64; Refusal::ALL.len()],
    condition_errors: Mutex<BTreeMap<Arc<str>, Arc<AtomicU64>>>,
    request_duration: Histogram,
    response_duration: Histogram,
}

/// `(phase, outcome, status)` as one slot key (never 0).
fn answer_key(phase: Phase, outcome: Verdict, status: u16) -> u64 {
    let phase = match phase {
        Phase::Request => 1,
        Phase::Response => 2,
    };
    let outcome = match outcome {
        Verdict::Continue => 0,
        Verdict::Immediate => 1,
        Verdict::Error => 2,
    };
    (phase << 32) | (outcome << 16) | u64::from(status)
}

fn answer_parts(key: u64) -> (Phase, Verdict, u16) {
    let phase = if key >> 32 == 2 {
        Phase::Response
    } else {
        Phase::Request
    };
    let outcome = match (key >> 16) & 0xffff {
        0 => Verdict::Continue,
        1 => Verdict::Immediate,
        _ => Verdict::Error,
    };
    (phase, outcome, (key & 0xffff) as u16)
}

impl RouteMetrics {
    /// Counts how a phase ended; `status` is the client's status for immediate and error.
    pub fn record(&self, phase: Phase, outcome: Verdict, status: u16) {
        match (phase, outcome) {
            (Phase::Request, Verdict::Continue) => {
                self.request_continue.fetch_add(1, Relaxed);
            }
            (Phase::Response, Verdict::Continue) => {
                self.response_continue.fetch_add(1, Relaxed);
            }
            _ => self.answered.add(answer_key(phase, outcome, status)),
        }
    }

    /// Counts a refusal (the answer itself is counted by [`RouteMetrics::record`]).
    pub fn refused(&self, reason: Refusal) {
        self.refusals[reason as usize].fetch_add(1, Relaxed);
    }

    /// How many times `reason` was counted.
    pub fn refusals(&self, reason: Refusal) -> u64 {
        self.refusals[reason as usize].load(Relaxed)
    }

    /// The counter of condition errors of policy `key` on this route (made when a chain is
    /// compiled, so the request path takes no lock).
    pub fn condition_errors(&self, key: &Arc<str>) -> Arc<AtomicU64> {
        Arc::clone(
            lock(&self.condition_errors)
                .entry(Arc::clone(key))
                .or_default(),
        )
    }

    /// The chain's run time in `phase`.
    pub fn duration(&self, phase: Phase) -> &Histogram {
        match phase {
            Phase::Request => &self.request_duration,
            Phase::Response => &self.response_duration,
        }
    }
}

/// One policy version's counters (every route together).
#[derive(Debug, Default)]
pub struct PolicyMetrics {
    executions: AtomicU64,
    failures: AtomicU64,
    panics: AtomicU64,
    skipped: AtomicU64,
    duration: Histogram,
    /// What [`PolicyMetrics::unexported`] handed out so far, in the order of [`PolicyCounts`].
    exported: [AtomicU64; 4],
    /// When it last did, in milliseconds since the process's first call (0: never).
    exported_at: AtomicU64,
}

/// A policy's counts since a host last exported them elsewhere (Envoy's stats).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PolicyCounts {
    /// Runs.
    pub executions: u64,
    /// Failed runs.
    pub failures: u64,
    /// Panics (also failed runs).
    pub panics: u64,
    /// Runs skipped by the condition.
    pub skipped: u64,
}

/// Milliseconds since the first call in this process (at least 1).
fn clock_ms() -> u64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    let start = START.get_or_init(std::time::Instant::now);
    u64::try_from(start.elapsed().as_millis())
        .unwrap_or(u64::MAX)
        .max(1)
}

impl PolicyMetrics {
    /// Records one run.
    pub fn ran(&self, elapsed: Duration, failed: bool) {
        self.executions.fetch_add(1, Relaxed);
        if failed {
            self.failures.fetch_add(1, Relaxed);
        }
        self.duration.observe(elapsed);
    }

    /// Records a panic (also counted as a failed run by [`PolicyMetrics::ran`]).
    pub fn panicked(&self) {
        self.panics.fetch_add(1, Relaxed);
    }

    /// Records a run skipped by its condition.
    pub fn skipped(&self) {
        self.skipped.fetch_add(1, Relaxed);
    }

    /// The counts not handed out yet, at most once per `every` (`None` in between, or while
    /// another thread takes them): a host exporting them elsewhere adds each delta once, so the
    /// sum there equals the counts here.
    pub fn unexported(&self, every: Duration) -> Option<PolicyCounts> {
        let now = clock_ms();
        let last = self.exported_at.load(Relaxed);
        let every = u64::try_from(every.as_millis()).unwrap_or(u64::MAX);
        if last != 0 && now.saturating_sub(last) < every {
            return None;
        }
        self.exported_at
            .compare_exchange(last, now, Relaxed, Relaxed)
            .ok()?;
        let take = |count: &AtomicU64, exported: &AtomicU64| {
            let current = count.load(Relaxed);
            current.saturating_sub(exported.swap(current, Relaxed))
        };
        let [executions, failures, panics, skipped] = &self.exported;
        Some(PolicyCounts {
            executions: take(&self.executions, executions),
            failures: take(&self.failures, failures),
            panics: take(&self.panics, panics),
            skipped: take(&self.skipped, skipped),
        })
    }
}

/// Every metric of one engine.
#[derive(Debug, Default)]
pub struct Metrics {
    routes: Mutex<HashMap<String, Arc<RouteMetrics>>>,
    policies: Mutex<BTreeMap<String, Arc<PolicyMetrics>>>,
    reloads: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
    config: Mutex<Option<ConfigInfo>>,
    streams: AtomicI64,
    body_bytes: AtomicUsize,
}

#[derive(Debug)]
struct ConfigInfo {
    source: &'static str,
    version: String,
    loaded_at: SystemTime,
}

impl Metrics {
    /// The counters of route `name` (shared across configurations, so they survive reloads).
    pub fn route(&self, name: &str) -> Arc<RouteMetrics> {
        let mut routes = lock(&self.routes);
        if let Some(found) = routes.get(name) {
            return Arc::clone(found);
        }
        let key = if routes.len() < MAX_ROUTE_SERIES || name == UNKNOWN_ROUTE {
            name
        } else {
            OTHER_ROUTE
        };
        Arc::clone(routes.entry(key.to_owned()).or_default())
    }

    /// The counters of policy `key` (`name:version`).
    pub fn policy(&self, key: &str) -> Arc<PolicyMetrics> {
        Arc::clone(lock(&self.policies).entry(key.to_owned()).or_default())
    }

    /// Counts a configuration load from `source` (`file` or `xds`); on success records the
    /// active version.
    pub fn reload(&self, source: &'static str, applied: Option<&str>) {
        let result = if applied.is_some() {
            "applied"
        } else {
            "rejected"
        };
        *lock(&self.reloads).entry((source, result)).or_default() += 1;
        if let Some(version) = applied {
            *lock(&self.config) = Some(ConfigInfo {
                source,
                version: version.to_owned(),
                loaded_at: SystemTime::now(),
            });
        }
    }

    /// A stream opened; the guard closes it when dropped.
    pub fn stream_opened(self: &Arc<Self>) -> StreamGuard {
        self.streams.fetch_add(1, Relaxed);
        StreamGuard(Arc::clone(self))
    }

    /// Counts `bytes` more of buffered body unless that would pass `budget`; whether it did.
    pub fn reserve_body_bytes(&self, bytes: usize, budget: usize) -> bool {
        let before = self.body_bytes.fetch_add(bytes, Relaxed);
        if before.saturating_add(bytes) > budget {
            self.body_bytes.fetch_sub(bytes, Relaxed);
            return false;
        }
        true
    }

    /// Gives back `bytes` of [`Metrics::reserve_body_bytes`].
    pub fn release_body_bytes(&self, bytes: usize) {
        self.body_bytes.fetch_sub(bytes, Relaxed);
    }

    /// Body bytes held by streams now.
    pub fn body_bytes(&self) -> usize {
        self.body_bytes.load(Relaxed)
    }

    /// ext_proc streams in flight.
    pub fn streams_in_flight(&self) -> i64 {
        self.streams.load(Relaxed)
    }
}

/// Marks a stream in flight until dropped.
#[derive(Debug)]
pub struct StreamGuard(Arc<Metrics>);

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.0.streams.fetch_sub(1, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unexported_counts_are_handed_out_once_and_not_more_often_than_asked() {
        let policy = PolicyMetrics::default();
        policy.ran(Duration::from_millis(1), false);
        policy.ran(Duration::from_millis(1), true);
        policy.skipped();
        let first = policy.unexported(Duration::ZERO).expect("the first export");
        assert_eq!(
            first,
            PolicyCounts {
                executions: 2,
                failures: 1,
                panics: 0,
                skipped: 1
            }
        );
        policy.ran(Duration::from_millis(1), false);
        assert_eq!(
            policy.unexported(Duration::from_secs(3600)),
            None,
            "too soon"
        );
        let next = policy.unexported(Duration::ZERO).expect("due");
        assert_eq!((next.executions, next.failures, next.skipped), (1, 0, 0));
    }

    #[test]
    fn counters_and_histograms_render_as_prometheus_text() {
        let metrics = Arc::new(Metrics::default());
        let route = metrics.route("api");
        route.record(Phase::Request, Verdict::Continue, 0);
        route.record(Phase::Request, Verdict::Continue, 0);
        route.record(Phase::Request, Verdict::Immediate, 401);
        route
            .duration(Phase::Request)
            .observe(Duration::from_micros(3));
        route
            .duration(Phase::Request)
            .observe(Duration::from_millis(2));
        metrics
            .policy("jwt:1.0.0")
            .ran(Duration::from_micros(40), true);
        metrics.reload("file", Some("abc\"1"));
        metrics.reload("file", None);
        let open = metrics.stream_opened();
        let text = metrics.render();
        for line in [
            "policy_engine_requests_total{route=\"api\",phase=\"request\",outcome=\"continue\",status=\"\"} 2",
            "policy_engine_requests_total{route=\"api\",phase=\"request\",outcome=\"immediate\",status=\"401\"} 1",
            "policy_engine_chain_duration_seconds_bucket{route=\"api\",phase=\"request\",le=\"0.000005\"} 1",
            "policy_engine_chain_duration_seconds_bucket{route=\"api\",phase=\"request\",le=\"0.001\"} 1",
            "policy_engine_chain_duration_seconds_bucket{route=\"api\",phase=\"request\",le=\"0.0025\"} 2",
            "policy_engine_chain_duration_seconds_count{route=\"api\",phase=\"request\"} 2",
            "policy_engine_policy_executions_total{policy=\"jwt:1.0.0\"} 1",
            "policy_engine_policy_failures_total{policy=\"jwt:1.0.0\"} 1",
            "policy_engine_config_reloads_total{source=\"file\",result=\"applied\"} 1",
            "policy_engine_config_reloads_total{source=\"file\",result=\"rejected\"} 1",
            "policy_engine_config_info{source=\"file\",version=\"abc\\\"1\"} 1",
            "policy_engine_streams_in_flight 1",
            "# TYPE policy_engine_policy_duration_seconds histogram",
        ] {
            assert!(text.contains(line), "{line}\nin\n{text}");
        }
        drop(open);
        assert!(
            metrics
                .render()
                .contains("policy_engine_streams_in_flight 0")
        );
    }

    #[test]
    fn route_series_are_bounded() {
        let metrics = Metrics::default();
        for i in 0..MAX_ROUTE_SERIES + 5 {
            metrics
                .route(&format!("r{i}"))
                .record(Phase::Request, Verdict::Continue, 0);
        }
        assert_eq!(lock(&metrics.routes).len(), MAX_ROUTE_SERIES + 1);
        assert!(
            metrics.render().contains(
                "route=\"(other)\",phase=\"request\",outcome=\"continue\",status=\"\"} 5"
            )
        );
    }
}
