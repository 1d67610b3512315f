//! `policy-engine serve`: the async runtime, the configuration source, the ext_proc, admin and
//! metrics listeners, health reporting and graceful shutdown.

use super::args::{LogFormat, ServeArgs};
use crate::admin::Admin;
use crate::reload::{FileSource, Reload};
use crate::server::{EngineState, ExtProc, ServerOptions};
use crate::{Registry, xds};
use anyhow::{Context, bail};
use envoy_types::pb::envoy::service::ext_proc::v3::external_processor_server::ExternalProcessorServer;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;
use tracing_subscriber::EnvFilter;

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

pub(super) fn serve(
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
