//! The command line's arguments (clap).

use crate::server::RouteKey;
use clap::{Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

/// A policy engine for Envoy's external processing filter.
#[derive(Debug, Parser)]
#[command(name = "policy-engine", version)]
pub(super) struct Cli {
    #[command(subcommand)]
    pub(super) command: Option<Command>,
    #[command(flatten)]
    pub(super) serve: ServeArgs,
}

#[derive(Debug, Subcommand)]
pub(super) enum Command {
    /// Serve ext_proc (the default).
    Serve(Box<ServeArgs>),
    /// Check a route configuration file against the compiled-in policies and exit.
    Validate {
        /// The route configuration file.
        config: PathBuf,
    },
    /// Run decision test files: each case's request through its route's chain, in-process, and
    /// the result compared with what the case expects. Exit 0: every case passed (and coverage
    /// reached --fail-under); 1: some did not; 2: a file could not be used.
    Test {
        /// Decision test files (YAML; docs/decision-tests.md).
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// The route configuration, instead of each file's `config`.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Fail when fewer than this percentage of policy entries ran for some case.
        #[arg(long, value_name = "PERCENT")]
        fail_under: Option<f64>,
        /// `text` for people, `junit` for CI test reports.
        #[arg(long, value_enum, default_value_t = super::decisions::Format::Text)]
        format: super::decisions::Format,
    },
    /// Print the Envoy configuration a route configuration needs (JSON, which Envoy reads as
    /// YAML too): the ext_proc filter, each route's `typed_per_filter_config` (its chain's
    /// processing mode, or the filter disabled when the chain is empty) and the engine's cluster
    /// with circuit breakers for --concurrency. Regenerate it whenever the routes change.
    EnvoyConfig {
        /// The route configuration file.
        routes: PathBuf,
        /// The engine's ext_proc address as Envoy reaches it (HOST:PORT).
        #[arg(long, default_value = "127.0.0.1:9001")]
        engine: String,
        /// Requests expected in flight through the engine at once (circuit breaker thresholds
        /// get a quarter more, at least Envoy's default 1024).
        #[arg(long, default_value_t = 10_000)]
        concurrency: u32,
        /// Print a whole Envoy bootstrap to try it with (one listener, a route `/<name>` per
        /// configured route, one upstream) instead of the pieces.
        #[arg(long, requires_all = ["listen", "admin", "upstream"])]
        bootstrap: bool,
        /// With --bootstrap: Envoy's listener (HOST:PORT).
        #[arg(long, requires = "bootstrap")]
        listen: Option<String>,
        /// With --bootstrap: Envoy's admin address (HOST:PORT).
        #[arg(long, requires = "bootstrap")]
        admin: Option<String>,
        /// With --bootstrap: the upstream (HOST:PORT).
        #[arg(long, requires = "bootstrap")]
        upstream: Option<String>,
    },
    /// Print the compiled-in policies (name, version, phases, parameter schema) as JSON.
    Policies,
    /// Print the build information as JSON.
    BuildInfo,
    /// Exit 0 when the engine's admin API reports it ready, or, without an admin API, when it
    /// accepts connections at the listen address. It reads the addresses from the variables
    /// `serve` reads, so a container's HEALTHCHECK follows any override of them (and the image
    /// needs no shell or curl).
    Healthcheck {
        /// Ask the admin API at HOST:PORT for `/health/ready` instead of connecting to ext_proc
        /// (`off`: no admin API).
        #[arg(long, env = "POLICY_ENGINE_ADMIN_LISTEN")]
        admin: Option<String>,
        /// The engine's address: HOST:PORT (0.0.0.0 means this host) or unix:/PATH.
        #[arg(long, env = "POLICY_ENGINE_LISTEN", default_value = "127.0.0.1:9001")]
        listen: String,
        /// How long to wait for the connection, in milliseconds.
        #[arg(long, default_value_t = 2000)]
        timeout_ms: u64,
    },
}

#[derive(Debug, clap::Args)]
pub(super) struct ServeArgs {
    /// Where to serve ext_proc: HOST:PORT, or unix:/PATH for a Unix socket.
    #[arg(long, env = "POLICY_ENGINE_LISTEN", default_value = "127.0.0.1:9001")]
    pub(super) listen: String,
    /// File mode: the route configuration file (reloaded when it changes, and on SIGHUP).
    #[arg(long, env = "POLICY_ENGINE_CONFIG", conflicts_with = "xds_server")]
    pub(super) config: Option<PathBuf>,
    /// xDS mode: the control plane's ADS address, http://HOST:PORT or https://HOST:PORT.
    #[arg(long, env = "POLICY_ENGINE_XDS_SERVER")]
    pub(super) xds_server: Option<String>,
    /// xDS mode: the name of the policy-chain resource to subscribe to.
    #[arg(long, env = "POLICY_ENGINE_XDS_RESOURCE", default_value = "default")]
    pub(super) xds_resource: String,
    /// xDS mode: this engine's node id (default: the host name).
    #[arg(long, env = "POLICY_ENGINE_NODE_ID")]
    pub(super) node_id: Option<String>,
    /// xDS mode: this engine's node cluster.
    #[arg(
        long,
        env = "POLICY_ENGINE_NODE_CLUSTER",
        default_value = "policy-engine"
    )]
    pub(super) node_cluster: String,
    /// xDS mode: PEM CA certificates for an https:// control plane (default: the system roots).
    #[arg(long, env = "POLICY_ENGINE_XDS_CA")]
    pub(super) xds_ca: Option<PathBuf>,
    /// xDS mode: PEM client certificate for mutual TLS (with --xds-key).
    #[arg(long, env = "POLICY_ENGINE_XDS_CERT")]
    pub(super) xds_cert: Option<PathBuf>,
    /// xDS mode: PEM private key of --xds-cert.
    #[arg(long, env = "POLICY_ENGINE_XDS_KEY")]
    pub(super) xds_key: Option<PathBuf>,
    /// xDS mode: first delay before reconnecting, in milliseconds (doubles up to the maximum).
    #[arg(long, default_value_t = 250)]
    pub(super) xds_backoff_initial_ms: u64,
    /// xDS mode: longest delay before reconnecting, in milliseconds.
    #[arg(long, default_value_t = 30_000)]
    pub(super) xds_backoff_max_ms: u64,
    /// Log filter, e.g. `info` or `policy_ext_proc=debug`.
    #[arg(long, env = "POLICY_ENGINE_LOG", default_value = "info")]
    pub(super) log_level: String,
    /// Log format.
    #[arg(long, env = "POLICY_ENGINE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub(super) log_format: LogFormat,
    /// Where the route key comes from: attribute:<name> or header:<name>.
    #[arg(long, default_value = "attribute:xds.route_name")]
    pub(super) route_key: RouteKey,
    /// The largest request or response body a chain accepts, in bytes (413 past it).
    #[arg(long, default_value_t = 1024 * 1024)]
    pub(super) max_body_bytes: usize,
    /// The most body bytes all streams together may hold while their chains wait for a whole
    /// body (503 past it), so many large concurrent bodies cannot exhaust memory.
    #[arg(long, default_value_t = 256 * 1024 * 1024)]
    pub(super) max_buffered_body_bytes: usize,
    /// Most concurrent ext_proc streams per connection from Envoy.
    #[arg(long, default_value_t = 10_000)]
    pub(super) max_concurrent_streams: u32,
    /// Runtime worker threads; 0 runs everything on one thread.
    #[arg(long, env = "POLICY_ENGINE_WORKERS", default_value_t = 1)]
    pub(super) workers: usize,
    /// The admin API's address (health, metrics, config, policies, build info): HOST:PORT, or
    /// `off`. Keep it on loopback or a private network: it shows the configuration.
    #[arg(
        long,
        env = "POLICY_ENGINE_ADMIN_LISTEN",
        default_value = "127.0.0.1:9002"
    )]
    pub(super) admin_listen: String,
    /// A listener with only `/metrics` and the health checks (for a scraper that must not see
    /// `/config`): HOST:PORT, or `off` (the default).
    #[arg(long, env = "POLICY_ENGINE_METRICS_LISTEN", default_value = "off")]
    pub(super) metrics_listen: String,
    /// On SIGTERM, how long streams in flight may take to finish, in milliseconds.
    #[arg(
        long,
        env = "POLICY_ENGINE_SHUTDOWN_GRACE_MS",
        default_value_t = 15_000
    )]
    pub(super) shutdown_grace_ms: u64,
    /// How often the configuration file is checked for changes, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    pub(super) reload_interval_ms: u64,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub(super) enum LogFormat {
    Text,
    Json,
}
