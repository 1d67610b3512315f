//! A reference xDS control plane for the policy engine: every `*.yaml`, `*.yml` or `*.json`
//! file in a directory is a [`policy_xds_types::PolicyChainConfig`] resource named after the
//! file, served over the Aggregated Discovery Service (state of the world). A resource's version
//! is a digest of its file, so it changes when the file does; every change is pushed to the
//! engines subscribed to it, and their ACKs and NACKs are printed as JSON lines on stdout.
//!
//! Small on purpose: a peer for trying xDS mode and for tests, and a model for a real control
//! plane. `docs/xds.md` describes the protocol.

mod ads;
mod events;
mod store;

pub use ads::Ads;
pub use events::{Event, EventSink, stdout_sink};
pub use store::{Catalog, Entry, Store};

use anyhow::Context;
use clap::Parser;
use std::future::Future;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};

/// Serves policy-engine route configurations from a directory over xDS (ADS).
#[derive(Debug, Parser)]
#[command(name = "policy-control-plane", version)]
pub struct Options {
    /// The directory of route configuration documents; each file is one resource named after
    /// it (`edge.yaml` is resource `edge`).
    #[arg(long, env = "CONTROL_PLANE_DIR")]
    pub dir: PathBuf,
    /// Where to serve ADS: HOST:PORT (port 0 picks a free one).
    #[arg(long, env = "CONTROL_PLANE_LISTEN", default_value = "127.0.0.1:18000")]
    pub listen: String,
    /// How often the directory is checked for changes, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    pub poll_interval_ms: u64,
    /// PEM certificate to serve TLS with (with --tls-key).
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// PEM CA certificates; when given, engines must present a client certificate it signed.
    #[arg(long, requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,
}

/// Runs the command line; returns the exit code.
pub fn main() -> ExitCode {
    let options = Options::parse();
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .try_init();
    let result = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
        .and_then(|runtime| {
            runtime.block_on(async {
                let listener = tokio::net::TcpListener::bind(&options.listen)
                    .await
                    .with_context(|| format!("binding {}", options.listen))?;
                serve(&options, listener, stdout_sink(), async {
                    let _ = tokio::signal::ctrl_c().await;
                })
                .await
            })
        });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("policy-control-plane: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Serves ADS on `listener` until `shutdown` completes.
///
/// # Errors
/// When the TLS files cannot be read or the server fails.
pub async fn serve(
    options: &Options,
    listener: tokio::net::TcpListener,
    events: EventSink,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let mut server = Server::builder();
    if let (Some(cert), Some(key)) = (&options.tls_cert, &options.tls_key) {
        let mut tls = ServerTlsConfig::new().identity(Identity::from_pem(
            std::fs::read(cert).with_context(|| format!("reading {}", cert.display()))?,
            std::fs::read(key).with_context(|| format!("reading {}", key.display()))?,
        ));
        if let Some(ca) = &options.tls_client_ca {
            tls = tls.client_ca_root(Certificate::from_pem(
                std::fs::read(ca).with_context(|| format!("reading {}", ca.display()))?,
            ));
        }
        server = server.tls_config(tls).context("TLS configuration")?;
    }
    let store = Store::new(&options.dir);
    store.rescan(&events);
    let ads = Ads::new(store.subscribe(), std::sync::Arc::clone(&events));
    let watcher = tokio::spawn(store.watch(
        Duration::from_millis(options.poll_interval_ms.max(10)),
        std::sync::Arc::clone(&events),
    ));
    let address = listener.local_addr().context("reading the bound address")?;
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    events(&Event::Listening {
        address: address.to_string(),
    });
    let result = server
        .add_service(ads.into_service())
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await;
    watcher.abort();
    result.context("serving ADS")
}
