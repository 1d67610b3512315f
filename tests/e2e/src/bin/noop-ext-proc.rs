//! `noop-ext-proc`: the baseline for `scripts/load.sh`. An ext_proc server that answers every
//! message with "continue, no changes", on the same tonic stack as the engine, so the load
//! numbers separate the cost of the ext_proc hop from the cost of the engine.
//!
//! Usage: `noop-ext-proc [HOST:PORT]` (default `127.0.0.1:0`); prints the bound address.

use envoy_types::pb::envoy::service::ext_proc::v3::external_processor_server::{
    ExternalProcessor, ExternalProcessorServer,
};
use envoy_types::pb::envoy::service::ext_proc::v3::processing_request::Request as In;
use envoy_types::pb::envoy::service::ext_proc::v3::processing_response::Response as Out;
use envoy_types::pb::envoy::service::ext_proc::v3::{
    BodyResponse, HeadersResponse, ProcessingRequest, ProcessingResponse, TrailersResponse,
};
use futures_util::Stream;
use std::pin::Pin;
use tonic::{Request, Response, Status, Streaming};

struct Noop;

type Answers = Pin<Box<dyn Stream<Item = Result<ProcessingResponse, Status>> + Send>>;

#[tonic::async_trait]
impl ExternalProcessor for Noop {
    type ProcessStream = Answers;

    async fn process(
        &self,
        request: Request<Streaming<ProcessingRequest>>,
    ) -> Result<Response<Answers>, Status> {
        let answers = futures_util::stream::unfold(request.into_inner(), |mut inbound| async {
            let message = inbound.message().await.ok()??;
            let response = match message.request? {
                In::RequestHeaders(_) => Out::RequestHeaders(HeadersResponse::default()),
                In::ResponseHeaders(_) => Out::ResponseHeaders(HeadersResponse::default()),
                In::RequestBody(_) => Out::RequestBody(BodyResponse::default()),
                In::ResponseBody(_) => Out::ResponseBody(BodyResponse::default()),
                In::RequestTrailers(_) => Out::RequestTrailers(TrailersResponse::default()),
                In::ResponseTrailers(_) => Out::ResponseTrailers(TrailersResponse::default()),
            };
            let answer = ProcessingResponse {
                response: Some(response),
                ..Default::default()
            };
            Some((Ok(answer), inbound))
        });
        Ok(Response::new(Box::pin(answers)))
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let address = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:0".to_owned())
        .parse()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let incoming =
            tonic::transport::server::TcpIncoming::bind(address)?.with_nodelay(Some(true));
        println!("policy-engine listening on {}", incoming.local_addr()?);
        tonic::transport::Server::builder()
            .add_service(ExternalProcessorServer::new(Noop))
            .serve_with_incoming(incoming)
            .await?;
        Ok(())
    })
}
