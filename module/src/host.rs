//! One filter configuration: its settings, the snapshot its streams run against (swapped whole
//! on reload), and the file watcher that reloads it.

use crate::envoy::DefineStats;
use crate::settings::{RouteKey, Settings, SettingsError, Source};
use arc_swap::ArcSwap;
use policy_core::metrics::{RouteMetrics, UNKNOWN_ROUTE};
use policy_core::{ConfigError, Registry, Snapshot, load_keeping, load_value};
use std::path::Path;
use std::sync::{Arc, Weak};
use std::time::Duration;

/// Why a filter configuration cannot be used; Envoy then refuses the filter (and keeps the
/// listener it had).
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// The settings are wrong.
    #[error(transparent)]
    Settings(#[from] SettingsError),
    /// The route configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The configuration file cannot be read.
    #[error("cannot read the route configuration {path}: {error}")]
    Read { path: String, error: String },
}

/// A filter configuration, shared by every worker thread.
#[derive(Debug)]
pub struct Host {
    registry: Arc<Registry>,
    snapshot: ArcSwap<Snapshot>,
    route_key: RouteKey,
    max_body_bytes: usize,
    unknown_route: Arc<RouteMetrics>,
    stats: EnvoyStats,
}

/// The ids of the Envoy stats the module records (see docs/envoy-module.md).
#[derive(Debug, Clone, Copy, Default)]
pub struct EnvoyStats {
    /// `policy_requests{route, phase, outcome, status}`: how each chain phase ended.
    pub requests: Option<usize>,
    /// `policy_refusals{route, reason}`: the module's own refusals.
    pub refusals: Option<usize>,
    /// `policy_chain_duration_us{route, phase}`: a chain phase's run time.
    pub duration: Option<usize>,
    /// `policy_runs{policy, result}`: each policy version's runs (`run`, `failed`, `panicked`,
    /// `skipped`), every route together.
    pub policies: Option<usize>,
    /// `policy_counter{name}`: the policies' own counters ([`policy_sdk::Counter`]).
    pub counters: Option<usize>,
    /// How often a policy's counts are added to `policies` (at most; with its next run).
    pub policy_interval: std::time::Duration,
}

impl EnvoyStats {
    fn define(stats: &dyn DefineStats, policy_interval: std::time::Duration) -> EnvoyStats {
        EnvoyStats {
            requests: stats.counter("policy_requests", &["route", "phase", "outcome", "status"]),
            refusals: stats.counter("policy_refusals", &["route", "reason"]),
            duration: stats.histogram("policy_chain_duration_us", &["route", "phase"]),
            policies: stats.counter("policy_runs", &["policy", "result"]),
            counters: stats.counter("policy_counter", &["name"]),
            policy_interval,
        }
    }
}

impl Host {
    /// Builds the configuration Envoy's `filter_config` describes, defining its Envoy stats
    /// through `stats`; with `configFile`, starts a thread that reloads it while the
    /// configuration lives.
    ///
    /// # Errors
    /// Wrong settings, or a route configuration the core rejects (every problem in one error).
    pub fn new(
        registry: Arc<Registry>,
        filter_config: &str,
        stats: &dyn DefineStats,
    ) -> Result<Arc<Host>, HostError> {
        let settings = Settings::parse(filter_config)?;
        let snapshot = match &settings.source {
            Source::Inline(document) => {
                load_value(document.clone(), "filter_config", &registry, None)?
            }
            Source::File { path, .. } => load_keeping(&read(path)?, &name(path), &registry, None)?,
        };
        snapshot.start_policies();
        log_loaded(&snapshot);
        let host = Arc::new(Host {
            unknown_route: registry.metrics().route(UNKNOWN_ROUTE),
            registry,
            snapshot: ArcSwap::from_pointee(snapshot),
            route_key: settings.route_key,
            max_body_bytes: settings.max_body_bytes,
            stats: if settings.envoy_stats {
                EnvoyStats::define(stats, settings.policy_stats_interval)
            } else {
                EnvoyStats::default()
            },
        });
        if let Source::File { path, interval } = settings.source {
            let weak = Arc::downgrade(&host);
            let text = read(&path).unwrap_or_default();
            std::thread::Builder::new()
                .name("policy-reload".to_owned())
                .spawn(move || watch(&weak, &path, interval, text))
                .map_err(|e| HostError::Read {
                    path: "(reload thread)".to_owned(),
                    error: e.to_string(),
                })?;
        }
        Ok(host)
    }

    /// The snapshot new streams run against.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// Where the route key comes from.
    pub fn route_key(&self) -> &RouteKey {
        &self.route_key
    }

    /// The largest body a chain accepts.
    pub fn max_body_bytes(&self) -> usize {
        self.max_body_bytes
    }

    /// The Envoy stats the filter records into.
    pub fn stats(&self) -> EnvoyStats {
        self.stats
    }

    /// The series of requests no configured route serves.
    pub fn unknown_route(&self) -> &Arc<RouteMetrics> {
        &self.unknown_route
    }

    /// Loads `text` (from `path`) over the running snapshot; an invalid document keeps it.
    fn reload(&self, path: &Path, text: &str) {
        let running = self.snapshot.load_full();
        match load_keeping(text, &name(path), &self.registry, Some(&running)) {
            Ok(snapshot) => {
                snapshot.start_policies();
                log_loaded(&snapshot);
                self.registry
                    .metrics()
                    .reload("file", Some(snapshot.version()));
                self.snapshot.store(Arc::new(snapshot));
            }
            Err(error) => {
                self.registry.metrics().reload("file", None);
                tracing::error!(%error, "configuration rejected: keeping the running one");
            }
        }
    }
}

fn log_loaded(snapshot: &Snapshot) {
    for warning in snapshot.warnings() {
        tracing::warn!(source = snapshot.source_name(), %warning, "configuration warning");
    }
    let counts = snapshot.instance_counts();
    tracing::info!(
        source = snapshot.source_name(),
        version = snapshot.version(),
        instances = counts.total,
        kept = counts.kept,
        "configuration loaded"
    );
}

fn name(path: &Path) -> String {
    path.display().to_string()
}

fn read(path: &Path) -> Result<String, HostError> {
    std::fs::read_to_string(path).map_err(|e| HostError::Read {
        path: name(path),
        error: e.to_string(),
    })
}

/// Polls `path` every `interval` while the host lives; a changed file is reloaded.
#[allow(
    clippy::disallowed_methods,
    reason = "the module's own reload thread, never one of Envoy's workers"
)]
fn watch(host: &Weak<Host>, path: &Path, interval: Duration, mut seen: String) {
    loop {
        std::thread::sleep(interval);
        let Some(host) = host.upgrade() else { return };
        match std::fs::read_to_string(path) {
            Ok(text) if text != seen => {
                host.reload(path, &text);
                seen = text;
            }
            Ok(_) => {}
            Err(error) => {
                tracing::warn!(path = %path.display(), %error, "cannot read the route configuration: keeping the running one");
            }
        }
    }
}
