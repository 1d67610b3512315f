//! The Aggregated Discovery Service, state of the world: each stream gets the resources it
//! subscribed to whenever their versions change, and its ACKs and NACKs are reported.

use crate::events::{Event, EventSink};
use crate::store::Catalog;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use policy_xds_types::TYPE_URL;
use sha2::{Digest, Sha256};
use std::pin::Pin;
use std::sync::Arc;
use tokio::sync::{mpsc, watch};
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

/// The service over a catalog.
#[derive(Clone)]
pub struct Ads {
    catalog: watch::Receiver<Arc<Catalog>>,
    events: EventSink,
}

impl std::fmt::Debug for Ads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ads").finish_non_exhaustive()
    }
}

impl Ads {
    /// Serves `catalog`, reporting to `events`.
    pub fn new(catalog: watch::Receiver<Arc<Catalog>>, events: EventSink) -> Self {
        Ads { catalog, events }
    }

    /// The tonic service.
    pub fn into_service(self) -> AggregatedDiscoveryServiceServer<Self> {
        AggregatedDiscoveryServiceServer::new(self)
    }
}

type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl AggregatedDiscoveryService for Ads {
    type StreamAggregatedResourcesStream = ResponseStream<DiscoveryResponse>;
    type DeltaAggregatedResourcesStream = ResponseStream<DeltaDiscoveryResponse>;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        let (sender, receiver) = mpsc::channel(4);
        let session = Session {
            catalog: self.catalog.clone(),
            events: Arc::clone(&self.events),
            out: sender,
            node: String::new(),
            subscribed: None,
            sent: None,
            nonce: 0,
        };
        tokio::spawn(session.run(request.into_inner()));
        Ok(Response::new(Box::pin(ReceiverStream::new(receiver))))
    }

    async fn delta_aggregated_resources(
        &self,
        _request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        Err(Status::unimplemented(
            "delta xDS is not supported; use the state-of-the-world StreamAggregatedResources",
        ))
    }
}

/// One engine's stream.
struct Session {
    catalog: watch::Receiver<Arc<Catalog>>,
    events: EventSink,
    out: mpsc::Sender<Result<DiscoveryResponse, Status>>,
    node: String,
    /// The names asked for (empty: all); `None` until the first request of our type.
    subscribed: Option<Vec<String>>,
    /// The last response: its version, nonce and resource names.
    sent: Option<(String, String, Vec<String>)>,
    nonce: u64,
}

impl Session {
    async fn run(mut self, mut requests: Streaming<DiscoveryRequest>) {
        loop {
            tokio::select! {
                request = requests.message() => match request {
                    Ok(Some(request)) => self.on_request(request),
                    Ok(None) | Err(_) => break,
                },
                changed = self.catalog.changed() => {
                    if changed.is_err() {
                        break;
                    }
                }
            }
            if self.push().await.is_err() {
                break;
            }
        }
        (self.events)(&Event::Disconnected {
            node: std::mem::take(&mut self.node),
        });
    }

    fn on_request(&mut self, request: DiscoveryRequest) {
        if request.type_url != TYPE_URL {
            return;
        }
        if self.subscribed.is_none() {
            let (node, cluster) = request
                .node
                .as_ref()
                .map(|n| (n.id.clone(), n.cluster.clone()))
                .unwrap_or_default();
            self.node = node.clone();
            (self.events)(&Event::Connected {
                node,
                cluster,
                resources: request.resource_names.clone(),
                version: request.version_info.clone(),
            });
        }
        if let Some((version, nonce, _)) = &self.sent
            && *nonce == request.response_nonce
        {
            let event = match &request.error_detail {
                None => Event::Ack {
                    node: self.node.clone(),
                    version: request.version_info.clone(),
                    nonce: nonce.clone(),
                },
                Some(status) => Event::Nack {
                    node: self.node.clone(),
                    version: version.clone(),
                    kept: request.version_info.clone(),
                    nonce: nonce.clone(),
                    error: status.message.clone(),
                },
            };
            (self.events)(&event);
        }
        self.subscribed = Some(request.resource_names);
    }

    /// Sends the subscribed resources when their versions differ from the last response.
    async fn push(&mut self) -> Result<(), ()> {
        let Some(subscribed) = &self.subscribed else {
            return Ok(());
        };
        let catalog = self.catalog.borrow_and_update().clone();
        let chosen: Vec<(&String, &crate::store::Entry)> = catalog
            .iter()
            .filter(|(name, _)| subscribed.is_empty() || subscribed.contains(name))
            .collect();
        if chosen.is_empty() {
            // Nothing to say yet: in the state of the world an absent named resource is not a
            // deletion, and the engine keeps what it has.
            return Ok(());
        }
        let version = combined_version(&chosen);
        let names: Vec<String> = chosen.iter().map(|(n, _)| (*n).clone()).collect();
        if self
            .sent
            .as_ref()
            .is_some_and(|(v, _, n)| *v == version && *n == names)
        {
            return Ok(());
        }
        self.nonce += 1;
        let nonce = self.nonce.to_string();
        let response = DiscoveryResponse {
            version_info: version.clone(),
            resources: chosen.iter().map(|(_, e)| e.any.clone()).collect(),
            type_url: TYPE_URL.into(),
            nonce: nonce.clone(),
            ..DiscoveryResponse::default()
        };
        self.out.send(Ok(response)).await.map_err(|_| ())?;
        (self.events)(&Event::Sent {
            node: self.node.clone(),
            version: version.clone(),
            nonce: nonce.clone(),
            resources: names.clone(),
        });
        self.sent = Some((version, nonce, names));
        Ok(())
    }
}

/// One resource: its version. Several: a digest of every `name=version`.
fn combined_version(chosen: &[(&String, &crate::store::Entry)]) -> String {
    if let [(_, entry)] = chosen {
        return entry.version.clone();
    }
    let mut hash = Sha256::new();
    for (name, entry) in chosen {
        hash.update(format!("{name}={}\n", entry.version));
    }
    hash.finalize()[..6]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
