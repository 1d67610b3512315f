//! The engine's command line: what a built `policy-engine` binary runs.
//!
//! The builder's generated `main` registers the manifest's policies and calls [`run`].

use crate::admin::{Admin, policy_list};
use crate::reload::{FileSource, Reload};
use crate::server::{EngineState, ExtProc, RouteKey, ServerOptions};
use crate::{Registry, load, xds};
use anyhow::{Context, bail};
use clap::{Parser, Subcommand, ValueEnum};
use envoy_types::pb::envoy::service::ext_proc::v3::external_processor_server::ExternalProcessorServer;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;
use tracing_subscriber::EnvFilter;

/// A policy engine for Envoy's external processing filter.
#[derive(Debug, Parser)]
#[command(name = "policy-engine", version)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve ext_proc (the default).
    Serve(Box<ServeArgs>),
    /// Check a route configuration file against the compiled-in policies and exit.
    Validate {
        /// The route configuration file.
        config: PathBuf,
    },
    /// Print the compiled-in policies (name, version, phases, parameter schema) as JSON.
    Policies,
    /// Print the build information as JSON.
    BuildInfo,
    /// Exit 0 when an engine accepts connections at the listen address, or with --admin when
    /// its admin API reports it ready (for container HEALTHCHECKs: the image needs no shell or
    /// curl).
    Healthcheck {
        /// Ask the admin API at HOST:PORT for `/health/ready` instead of connecting to ext_proc.
        #[arg(long)]
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
struct ServeArgs {
    /// Where to serve ext_proc: HOST:PORT, or unix:/PATH for a Unix socket.
    #[arg(long, env = "POLICY_ENGINE_LISTEN", default_value = "127.0.0.1:9001")]
    listen: String,
    /// File mode: the route configuration file (reloaded when it changes, and on SIGHUP).
    #[arg(long, env = "POLICY_ENGINE_CONFIG", conflicts_with = "xds_server")]
    config: Option<PathBuf>,
    /// xDS mode: the control plane's ADS address, http://HOST:PORT or https://HOST:PORT.
    #[arg(long, env = "POLICY_ENGINE_XDS_SERVER")]
    xds_server: Option<String>,
    /// xDS mode: the name of the policy-chain resource to subscribe to.
    #[arg(long, env = "POLICY_ENGINE_XDS_RESOURCE", default_value = "default")]
    xds_resource: String,
    /// xDS mode: this engine's node id (default: the host name).
    #[arg(long, env = "POLICY_ENGINE_NODE_ID")]
    node_id: Option<String>,
    /// xDS mode: this engine's node cluster.
    #[arg(
        long,
        env = "POLICY_ENGINE_NODE_CLUSTER",
        default_value = "policy-engine"
    )]
    node_cluster: String,
    /// xDS mode: PEM CA certificates for an https:// control plane (default: the system roots).
    #[arg(long, env = "POLICY_ENGINE_XDS_CA")]
    xds_ca: Option<PathBuf>,
    /// xDS mode: PEM client certificate for mutual TLS (with --xds-key).
    #[arg(long, env = "POLICY_ENGINE_XDS_CERT")]
    xds_cert: Option<PathBuf>,
    /// xDS mode: PEM private key of --xds-cert.
    #[arg(long, env = "POLICY_ENGINE_XDS_KEY")]
    xds_key: Option<PathBuf>,
    /// xDS mode: first delay before reconnecting, in milliseconds (doubles up to the maximum).
    #[arg(long, default_value_t = 250)]
    xds_backoff_initial_ms: u64,
    /// xDS mode: longest delay before reconnecting, in milliseconds.
    #[arg(long, default_value_t = 30_000)]
    xds_backoff_max_ms: u64,
    /// Log filter, e.g. `info` or `policy_ext_proc=debug`.
    #[arg(long, env = "POLICY_ENGINE_LOG", default_value = "info")]
    log_level: String,
    /// Log format.
    #[arg(long, env = "POLICY_ENGINE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Where the route key comes from: attribute:<name> or header:<name>.
    #[arg(long, default_value = "attribute:xds.route_name")]
    route_key: RouteKey,
    /// The largest request or response body a chain accepts, in bytes (413 past it).
    #[arg(long, default_value_t = 1024 * 1024)]
    max_body_bytes: usize,
    /// The most body bytes all streams together may hold while their chains wait for a whole
    /// body (503 past it), so many large concurrent bodies cannot exhaust memory.
    #[arg(long, default_value_t = 256 * 1024 * 1024)]
    max_buffered_body_bytes: usize,
    /// Most concurrent ext_proc streams per connection from Envoy.
    #[arg(long, default_value_t = 10_000)]
    max_concurrent_streams: u32,
    /// Runtime worker threads; 0 runs everything on one thread.
    #[arg(long, env = "POLICY_ENGINE_WORKERS", default_value_t = 1)]
    workers: usize,
    /// The admin API's address (health, metrics, config, policies, build info): HOST:PORT, or
    /// `off`. Keep it on loopback or a private network: it shows the configuration.
    #[arg(
        long,
        env = "POLICY_ENGINE_ADMIN_LISTEN",
        default_value = "127.0.0.1:9002"
    )]
    admin_listen: String,
    /// A listener with only `/metrics` and the health checks (for a scraper that must not see
    /// `/config`): HOST:PORT, or `off` (the default).
    #[arg(long, env = "POLICY_ENGINE_METRICS_LISTEN", default_value = "off")]
    metrics_listen: String,
    /// On SIGTERM, how long streams in flight may take to finish, in milliseconds.
    #[arg(
        long,
        env = "POLICY_ENGINE_SHUTDOWN_GRACE_MS",
        default_value_t = 15_000
    )]
    shutdown_grace_ms: u64,
    /// How often the configuration file is checked for changes, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    reload_interval_ms: u64,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// Runs the engine's command line with the compiled-in `registry`; `build_info` is what
/// `build-info` prints. Returns the process exit code.
pub fn run(registry: Registry, build_info: serde_json::Value) -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        None => serve(cli.serve, registry, &build_info),
        Some(Command::Serve(args)) => serve(*args, registry, &build_info),
        Some(Command::Validate { config }) => validate(&config, &registry),
        Some(Command::Policies) => print_json(&policy_list(&registry)),
        Some(Command::BuildInfo) => print_json(&build_info),
        Some(Command::Healthcheck {
            admin: Some(admin),
            timeout_ms,
            ..
        }) => ready_check(&admin, Duration::from_millis(timeout_ms)),
        Some(Command::Healthcheck {
            listen, timeout_ms, ..
        }) => healthcheck(&listen, Duration::from_millis(timeout_ms)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("policy-engine: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// `GET /health/ready` on the admin API; succeeds on 200.
fn ready_check(admin: &str, timeout: Duration) -> anyhow::Result<()> {
    use std::io::{Read, Write};
    let addr = loopback_if_unspecified(
        admin
            .parse()
            .with_context(|| format!("--admin {admin:?} is not HOST:PORT"))?,
    );
    let mut stream = std::net::TcpStream::connect_timeout(&addr, timeout)
        .with_context(|| format!("connecting to {addr}"))?;
    stream.set_read_timeout(Some(timeout))?;
    stream.write_all(
        format!("GET /health/ready HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )?;
    let mut head = [0u8; 12];
    stream
        .read_exact(&mut head)
        .with_context(|| format!("reading the answer of {addr}"))?;
    match &head[9..12] {
        b"200" => Ok(()),
        status => bail!(
            "{addr}/health/ready answered {}: not ready",
            String::from_utf8_lossy(status)
        ),
    }
}

fn loopback_if_unspecified(mut addr: SocketAddr) -> SocketAddr {
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr {
            SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    addr
}

fn healthcheck(listen: &str, timeout: Duration) -> anyhow::Result<()> {
    if let Some(path) = listen.strip_prefix("unix:") {
        std::os::unix::net::UnixStream::connect(path)
            .with_context(|| format!("connecting to {listen}"))?;
        return Ok(());
    }
    let addr = loopback_if_unspecified(
        listen
            .parse()
            .with_context(|| format!("{listen:?} is not HOST:PORT or unix:/PATH"))?,
    );
    std::net::TcpStream::connect_timeout(&addr, timeout)
        .with_context(|| format!("connecting to {addr}"))?;
    Ok(())
}

fn print_json(value: &serde_json::Value) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

fn validate(config: &PathBuf, registry: &Registry) -> anyhow::Result<()> {
    let text =
        std::fs::read_to_string(config).with_context(|| format!("reading {}", config.display()))?;
    let snapshot = load(&text, &config.display().to_string(), registry)?;
    for warning in snapshot.warnings() {
        eprintln!("warning: {}: {warning}", config.display());
    }
    println!(
        "{}: valid ({} routes)",
        config.display(),
        snapshot.route_names().len()
    );
    Ok(())
}

/// Serves `router` on `address` (`off`: not at all), announcing the bound address on stdout as
/// `policy-engine NAME on HOST:PORT`.
async fn serve_http(
    name: &'static str,
    address: &str,
    router: axum::Router,
) -> anyhow::Result<Option<tokio::task::JoinHandle<()>>> {
    if address == "off" {
        return Ok(None);
    }
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .with_context(|| format!("--{name}-listen {address}: binding"))?;
    let bound = listener
        .local_addr()
        .with_context(|| format!("reading the {name} address"))?;
    tracing::info!(address = %bound, "serving the {name} API");
    println!("policy-engine {name} on {bound}");
    Ok(Some(tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, router).await {
            tracing::error!(%error, "the {name} API stopped");
        }
    })))
}

fn serve(
    args: ServeArgs,
    registry: Registry,
    build_info: &serde_json::Value,
) -> anyhow::Result<()> {
    init_logging(&args)?;
    let mut runtime = if args.workers == 0 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(args.workers);
        b
    };
    let runtime = runtime
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(serve_async(args, registry, build_info))
}

fn init_logging(args: &ServeArgs) -> anyhow::Result<()> {
    let filter = EnvFilter::try_new(&args.log_level)
        .with_context(|| format!("--log-level {:?}", args.log_level))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = match args.log_format {
        LogFormat::Text => builder.with_ansi(false).try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    result.map_err(|e| anyhow::anyhow!("initialising logs: {e}"))
}

async fn serve_async(
    args: ServeArgs,
    registry: Registry,
    build_info: &serde_json::Value,
) -> anyhow::Result<()> {
    tracing::info!(policies = registry.len(), build = %build_info, "policy engine starting");
    // Installed first, so a SIGTERM right after start-up is a graceful stop, never a kill.
    let mut terminate = Terminate::install()?;
    let registry = Arc::new(registry);
    let state = EngineState::with_metrics(Arc::clone(registry.metrics()));
    let watcher =
        tokio::spawn(config_source(&args, Arc::clone(&registry), Arc::clone(&state)).await?);
    let admin_api = || {
        Admin::new(
            Arc::clone(&state),
            Arc::clone(&registry),
            build_info.clone(),
        )
    };
    let admin = serve_http("admin", &args.admin_listen, admin_api().router()).await?;
    let metrics_only = serve_http(
        "metrics",
        &args.metrics_listen,
        admin_api().metrics_router(),
    )
    .await?;

    let (health, health_service) = tonic_health::server::health_reporter();
    let health_task = tokio::spawn(report_health(health.clone(), state.watch_ready()));
    let options = ServerOptions {
        route_key: args.route_key.clone(),
        max_body_bytes: args.max_body_bytes,
        max_buffered_body_bytes: args.max_buffered_body_bytes,
    };
    let service = ExtProc::new(Arc::clone(&state), options).into_service();
    let server = tonic::transport::Server::builder()
        .max_concurrent_streams(args.max_concurrent_streams)
        .add_service(health_service)
        .add_service(service);

    let (stop, stopped) = tokio::sync::watch::channel(false);
    let stop_accepting = async move {
        let mut stopped = stopped;
        let _ = stopped.wait_for(|s| *s).await;
    };
    let serving: std::pin::Pin<Box<dyn std::future::Future<Output = _> + Send>> =
        if let Some(path) = args.listen.strip_prefix("unix:") {
            remove_stale_socket(path)?;
            let listener =
                tokio::net::UnixListener::bind(path).with_context(|| format!("binding {path}"))?;
            announce(&args.listen);
            let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
            Box::pin(server.serve_with_incoming_shutdown(incoming, stop_accepting))
        } else {
            let addr: SocketAddr = args.listen.parse().with_context(|| {
                format!("--listen {:?} is not HOST:PORT or unix:/PATH", args.listen)
            })?;
            let incoming = tonic::transport::server::TcpIncoming::bind(addr)
                .with_context(|| format!("binding {addr}"))?
                .with_nodelay(Some(true));
            let bound = incoming.local_addr().context("reading the bound address")?;
            announce(&bound.to_string());
            Box::pin(server.serve_with_incoming_shutdown(incoming, stop_accepting))
        };
    let mut serving = serving;
    let result = tokio::select! {
        result = &mut serving => result,
        () = terminate.recv() => {
            let grace = Duration::from_millis(args.shutdown_grace_ms);
            let metrics = state.metrics();
            tracing::info!(in_flight = metrics.streams_in_flight(), grace_ms = args.shutdown_grace_ms, "shutting down: no new streams; finishing the ones in flight");
            health.set_service_status("", ServingStatus::NotServing).await;
            let _ = stop.send(true);
            match tokio::time::timeout(grace, &mut serving).await {
                Ok(result) => result,
                Err(_) => {
                    tracing::warn!(cut = metrics.streams_in_flight(), "the grace period ended; closing the streams left");
                    Ok(())
                }
            }
        }
    };
    watcher.abort();
    health_task.abort();
    for task in [admin, metrics_only].into_iter().flatten() {
        task.abort();
    }
    tracing::info!("stopped");
    result.context("serving ext_proc")
}

/// Keeps the gRPC health service in step with readiness: NOT_SERVING until the first
/// configuration, SERVING after (for the whole server and for the ext_proc service).
async fn report_health(health: HealthReporter, mut ready: tokio::sync::watch::Receiver<bool>) {
    let service = <ExternalProcessorServer<ExtProc> as tonic::server::NamedService>::NAME;
    loop {
        let status = if *ready.borrow_and_update() {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        health.set_service_status("", status).await;
        health.set_service_status(service, status).await;
        if ready.changed().await.is_err() {
            return;
        }
    }
}

/// SIGTERM or Ctrl-C, with the handler installed when created.
struct Terminate {
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
}

impl Terminate {
    fn install() -> anyhow::Result<Self> {
        Ok(Terminate {
            #[cfg(unix)]
            term: tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .context("installing the SIGTERM handler")?,
        })
    }

    async fn recv(&mut self) {
        #[cfg(unix)]
        tokio::select! {
            _ = self.term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// The configuration source the flags choose, file or xDS (exactly one), as a future that
/// keeps the state current. File mode loads the file once before returning.
async fn config_source(
    args: &ServeArgs,
    registry: Arc<Registry>,
    state: Arc<EngineState>,
) -> anyhow::Result<std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>> {
    match (&args.config, &args.xds_server) {
        (Some(config), None) => {
            let mut source = FileSource::new(config, registry, state);
            if source.reload(true).await != Reload::Applied {
                tracing::warn!(file = %source.path().display(), "no valid configuration yet: answering 503 until one loads");
            }
            Ok(Box::pin(source.watch(Duration::from_millis(
                args.reload_interval_ms.max(50),
            ))))
        }
        (None, Some(server)) => {
            let options = xds::XdsOptions {
                server: server.clone(),
                tls: xds::XdsTls {
                    ca: args.xds_ca.clone(),
                    cert: args.xds_cert.clone(),
                    key: args.xds_key.clone(),
                },
                backoff_initial: Duration::from_millis(args.xds_backoff_initial_ms),
                backoff_max: Duration::from_millis(args.xds_backoff_max_ms),
                connect_timeout: Duration::from_secs(5),
            };
            let endpoint = options.endpoint()?;
            let node = xds::NodeIdentity {
                id: args.node_id.clone().unwrap_or_else(host_name),
                cluster: args.node_cluster.clone(),
            };
            tracing::info!(
                server,
                resource = args.xds_resource,
                node = node.id,
                "xDS mode: answering 503 until the first configuration arrives"
            );
            let subscription = xds::Subscription::new(&args.xds_resource, node, registry, state);
            let backoff = xds::Backoff::new(options.backoff_initial, options.backoff_max);
            Ok(Box::pin(xds::run(endpoint, subscription, backoff)))
        }
        (Some(_), Some(_)) => {
            bail!(
                "choose one configuration source: --config FILE (file mode) or --xds-server URL (xDS mode)"
            )
        }
        (None, None) => bail!(
            "no route configuration source: pass --config FILE (file mode) or --xds-server URL (xDS mode)"
        ),
    }
}

/// The host name (the default node id), from `$HOSTNAME` or the kernel.
fn host_name() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "policy-engine".to_owned())
}

/// Removes a socket left by an earlier run; refuses to touch anything that is not a socket.
fn remove_stale_socket(path: &str) -> anyhow::Result<()> {
    use std::os::unix::fs::FileTypeExt;
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            std::fs::remove_file(path).with_context(|| format!("removing the stale socket {path}"))
        }
        Ok(_) => {
            bail!("--listen unix:{path}: the path exists and is not a socket; not replacing it")
        }
        Err(_) => Ok(()),
    }
}

/// Prints the address on stdout, the machine-readable signal that the engine accepts streams.
fn announce(address: &str) {
    tracing::info!(address, "serving ext_proc");
    println!("policy-engine listening on {address}");
}
