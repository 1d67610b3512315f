//! The engine's state: the snapshot requests run against and readiness. The configuration
//! sources (file, xDS) write it, the hosts (the ext_proc server, the admin API) read it; neither
//! side knows the other.

use crate::Snapshot;
use crate::metrics::Metrics;
use arc_swap::ArcSwapOption;
use std::sync::Arc;

/// The configuration requests run against: none until the first valid document loads.
#[derive(Debug)]
pub struct EngineState {
    snapshot: ArcSwapOption<Snapshot>,
    metrics: Arc<Metrics>,
    ready: tokio::sync::watch::Sender<bool>,
}

impl Default for EngineState {
    fn default() -> Self {
        EngineState {
            snapshot: ArcSwapOption::empty(),
            metrics: Arc::default(),
            ready: tokio::sync::watch::Sender::new(false),
        }
    }
}

impl EngineState {
    /// A state with no configuration (every request gets 503 until one is installed) and
    /// metrics of its own.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// A state recording into `metrics` (the registry's, so policy and route series are
    /// shared).
    pub fn with_metrics(metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(EngineState {
            metrics,
            ..EngineState::default()
        })
    }

    /// The metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Starts the snapshot's new policy instances and swaps it in; streams already running keep
    /// the chain they started with. Returns the replaced snapshot, so a caller off the request
    /// path can be the one that drops it (an in-flight stream may still hold it a little).
    pub fn install(&self, snapshot: Snapshot) -> Option<Arc<Snapshot>> {
        for warning in snapshot.warnings() {
            tracing::warn!(source = snapshot.source_name(), %warning, "configuration warning");
        }
        snapshot.start_policies();
        self.metrics
            .reload(snapshot.source_kind(), Some(snapshot.version()));
        let replaced = self.snapshot.swap(Some(Arc::new(snapshot)));
        self.ready.send_replace(true);
        replaced
    }

    /// Readiness now and its changes (it turns true once, at the first installed snapshot).
    pub fn watch_ready(&self) -> tokio::sync::watch::Receiver<bool> {
        self.ready.subscribe()
    }

    /// Counts a rejected configuration from `source` (`file` or `xds`); the current one stays.
    pub fn rejected(&self, source: &'static str) {
        self.metrics.reload(source, None);
    }

    /// The current snapshot.
    pub fn current(&self) -> Option<Arc<Snapshot>> {
        self.snapshot.load_full()
    }

    /// Whether a valid configuration is loaded.
    pub fn is_ready(&self) -> bool {
        self.snapshot.load().is_some()
    }
}
