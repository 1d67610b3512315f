//! The ADS stream to the control plane: connect (optionally over TLS), subscribe, answer every
//! response, and reconnect with backoff when the stream ends. The last good configuration keeps
//! serving throughout.

use super::backoff::Backoff;
use super::subscription::{Subscription, Update};
use crate::config::MAX_DOCUMENT_BYTES;
use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use std::path::PathBuf;
use std::time::Duration;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

/// How to reach the control plane.
#[derive(Clone, Debug)]
pub struct XdsOptions {
    /// `http://HOST:PORT`, or `https://HOST:PORT` for TLS.
    pub server: String,
    /// TLS settings; used with an `https://` server only.
    pub tls: XdsTls,
    /// First delay before reconnecting.
    pub backoff_initial: Duration,
    /// Longest delay before reconnecting.
    pub backoff_max: Duration,
    /// Time limit for establishing a connection.
    pub connect_timeout: Duration,
}

/// TLS to the control plane. Without `ca`, the system's roots verify the server.
#[derive(Clone, Debug, Default)]
pub struct XdsTls {
    /// PEM file with the CA certificates that sign the control plane's certificate.
    pub ca: Option<PathBuf>,
    /// PEM client certificate for mutual TLS (with `key`).
    pub cert: Option<PathBuf>,
    /// PEM private key of `cert`.
    pub key: Option<PathBuf>,
}

/// Why the xDS client cannot start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum XdsError {
    /// The server address is not a valid URI.
    #[error("--xds-server {0:?} is not http://HOST:PORT or https://HOST:PORT")]
    Address(String),
    /// TLS files given for a plaintext server, or a certificate without its key.
    #[error("{0}")]
    TlsSettings(&'static str),
    /// A TLS file cannot be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// tonic refused the TLS configuration.
    #[error("TLS configuration: {0}")]
    Tls(#[source] tonic::transport::Error),
}

impl XdsOptions {
    /// The endpoint to connect to, with TLS configured and every file read now, so mistakes
    /// show at start-up rather than on the first connection.
    ///
    /// # Errors
    /// [`XdsError`] naming the flag or file at fault.
    pub fn endpoint(&self) -> Result<Endpoint, XdsError> {
        let https = self.server.starts_with("https://");
        if !https && !self.server.starts_with("http://") {
            return Err(XdsError::Address(self.server.clone()));
        }
        let mut endpoint = Endpoint::from_shared(self.server.clone())
            .map_err(|_| XdsError::Address(self.server.clone()))?
            .connect_timeout(self.connect_timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(10))
            .keep_alive_while_idle(true);
        let tls = &self.tls;
        if tls.cert.is_some() != tls.key.is_some() {
            return Err(XdsError::TlsSettings(
                "--xds-cert and --xds-key go together (mutual TLS needs both)",
            ));
        }
        if !https {
            if tls.ca.is_some() || tls.cert.is_some() {
                return Err(XdsError::TlsSettings(
                    "--xds-ca, --xds-cert and --xds-key need an https:// --xds-server",
                ));
            }
            return Ok(endpoint);
        }
        let mut config = ClientTlsConfig::new();
        config = match &tls.ca {
            Some(ca) => config.ca_certificate(Certificate::from_pem(read(ca)?)),
            None => config.with_native_roots(),
        };
        if let (Some(cert), Some(key)) = (&tls.cert, &tls.key) {
            config = config.identity(Identity::from_pem(read(cert)?, read(key)?));
        }
        endpoint = endpoint.tls_config(config).map_err(XdsError::Tls)?;
        Ok(endpoint)
    }
}

fn read(path: &PathBuf) -> Result<Vec<u8>, XdsError> {
    std::fs::read(path).map_err(|source| XdsError::Read {
        path: path.clone(),
        source,
    })
}

/// Keeps `subscription` connected to `endpoint` until the returned future is dropped:
/// reconnects with `backoff` after every failure or closed stream, and resets the backoff once
/// a stream has delivered a response.
pub async fn run(endpoint: Endpoint, mut subscription: Subscription, mut backoff: Backoff) {
    let server = endpoint.uri().to_string();
    loop {
        match session(&endpoint, &mut subscription).await {
            Ok(true) => {
                backoff.reset();
                tracing::warn!(server, "xDS stream closed by the control plane");
            }
            Ok(false) => tracing::warn!(server, "xDS stream closed before any response"),
            Err(error) => tracing::warn!(server, %error, "xDS stream failed"),
        }
        let delay = backoff.next_delay();
        tracing::info!(
            server,
            delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
            version = subscription.applied_version(),
            "reconnecting to the control plane; serving the last good configuration meanwhile"
        );
        tokio::time::sleep(delay).await;
    }
}

/// One stream. Returns whether any response arrived.
async fn session(
    endpoint: &Endpoint,
    subscription: &mut Subscription,
) -> Result<bool, tonic::Status> {
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| tonic::Status::unavailable(format!("connecting: {e}")))?;
    let mut client = AggregatedDiscoveryServiceClient::new(channel)
        .max_decoding_message_size(MAX_DOCUMENT_BYTES + 1024 * 1024);
    let (outbound, requests) = tokio::sync::mpsc::channel::<DiscoveryRequest>(4);
    outbound
        .send(subscription.initial_request())
        .await
        .map_err(|_| tonic::Status::internal("request channel closed"))?;
    let mut responses = client
        .stream_aggregated_resources(ReceiverStream::new(requests))
        .await?
        .into_inner();
    tracing::info!(server = %endpoint.uri(), "xDS stream open");
    let mut answered = false;
    while let Some(response) = responses.message().await? {
        answered = true;
        let nonce = response.nonce.clone();
        let (reply, update) = subscription.handle(response).await;
        match &update {
            Update::Applied { version } => {
                tracing::info!(version, nonce, "xDS configuration applied (ACK)");
            }
            Update::Unchanged { version } => {
                tracing::debug!(version, nonce, "xDS configuration unchanged (ACK)");
            }
            Update::Rejected { version, report } => tracing::error!(
                version,
                nonce,
                kept = subscription.applied_version(),
                "xDS configuration rejected (NACK); keeping the last good configuration:\n{report}"
            ),
            Update::Ignored { type_url } => {
                tracing::warn!(type_url, "ignoring a response for a type never asked for");
            }
        }
        if let Some(reply) = reply
            && outbound.send(reply).await.is_err()
        {
            break;
        }
    }
    Ok(answered)
}
