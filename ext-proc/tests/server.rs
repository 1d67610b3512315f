//! The ext_proc server over a real TCP socket, driven by the generated gRPC client: the parts of
//! the protocol a well-behaved Envoy never exercises (bad messages, swaps mid-stream).

use policy_test_support::policies as support;

use envoy_types::pb::envoy::config::core::v3::{HeaderMap, HeaderValue};
use envoy_types::pb::envoy::service::ext_proc::v3::external_processor_client::ExternalProcessorClient;
use envoy_types::pb::envoy::service::ext_proc::v3::processing_request::Request as In;
use envoy_types::pb::envoy::service::ext_proc::v3::processing_response::Response as Out;
use envoy_types::pb::envoy::service::ext_proc::v3::{
    HttpBody, HttpHeaders, ProcessingRequest, ProcessingResponse,
};
use policy_ext_proc::server::{EngineState, ExtProc, RouteKey, ServerOptions};
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

/// A server on a free port and a client connected to it.
async fn serve(state: Arc<EngineState>) -> ExternalProcessorClient<Channel> {
    let options = ServerOptions {
        route_key: RouteKey::Header("x-route".into()),
        ..ServerOptions::default()
    };
    let incoming = tonic::transport::server::TcpIncoming::bind(std::net::SocketAddr::from((
        [127, 0, 0, 1],
        0,
    )))
    .expect("bind");
    let addr = incoming.local_addr().expect("address");
    let service = ExtProc::new(state, options).into_service();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(incoming),
    );
    ExternalProcessorClient::connect(format!("http://{addr}"))
        .await
        .expect("connect")
}

/// One open stream: send messages, read answers.
struct Exchange {
    tx: mpsc::Sender<ProcessingRequest>,
    rx: tonic::Streaming<ProcessingResponse>,
}

impl Exchange {
    async fn open(client: &mut ExternalProcessorClient<Channel>) -> Exchange {
        let (tx, outbound) = mpsc::channel(4);
        let rx = client
            .process(ReceiverStream::new(outbound))
            .await
            .expect("open a stream")
            .into_inner();
        Exchange { tx, rx }
    }

    async fn send(&mut self, request: In) -> Result<Option<ProcessingResponse>, tonic::Status> {
        self.tx
            .send(ProcessingRequest {
                request: Some(request),
                ..Default::default()
            })
            .await
            .expect("the stream is open");
        self.rx.message().await
    }

    async fn answer(&mut self, request: In) -> Out {
        self.send(request)
            .await
            .expect("an answer, not an error")
            .and_then(|r| r.response)
            .expect("a response")
    }
}

fn headers(route: &str, end_of_stream: bool) -> In {
    let pairs = [(":method", "POST"), (":path", "/x"), ("x-route", route)];
    In::RequestHeaders(HttpHeaders {
        headers: Some(HeaderMap {
            headers: pairs
                .iter()
                .map(|(k, v)| HeaderValue {
                    key: (*k).into(),
                    raw_value: v.as_bytes().to_vec(),
                    ..Default::default()
                })
                .collect(),
        }),
        end_of_stream,
        ..Default::default()
    })
}

fn body(bytes: &[u8]) -> In {
    In::RequestBody(HttpBody {
        body: bytes.to_vec(),
        end_of_stream: true,
        ..Default::default()
    })
}

fn immediate_status(out: &Out) -> Option<i32> {
    match out {
        Out::ImmediateResponse(r) => r.status.as_ref().map(|s| s.code),
        _ => None,
    }
}

fn appended(out: &Out, name: &str) -> Vec<String> {
    let common = match out {
        Out::RequestHeaders(h) => h.response.as_ref(),
        Out::RequestBody(b) => b.response.as_ref(),
        _ => None,
    };
    common
        .and_then(|c| c.header_mutation.as_ref())
        .map(|m| {
            m.set_headers
                .iter()
                .filter_map(|o| o.header.as_ref())
                .filter(|h| h.key == name)
                .map(|h| String::from_utf8_lossy(&h.raw_value).into_owned())
                .collect()
        })
        .unwrap_or_default()
}

const CONFIG: &str = "version: v1\nroutes:\n  - route: body\n    policies:\n      - {name: limits, version: 1.0.0, params: {requestsPerSecond: 1}}\n      - {name: order, version: 1.0.0, params: {label: old}}\n  - route: plain\n    policies:\n      - {name: order, version: 1.0.0, params: {label: plain}}\n";

#[tokio::test]
async fn out_of_phase_and_empty_messages_end_the_stream_and_the_server_lives() {
    let state = EngineState::new();
    state.install(support::snapshot(CONFIG));
    let mut client = serve(state).await;

    let mut stream = Exchange::open(&mut client).await;
    let error = stream
        .send(body(b"{}"))
        .await
        .expect_err("a body before headers is a protocol error");
    assert_eq!(error.code(), tonic::Code::InvalidArgument);
    assert!(error.message().contains("out of phase"), "{error:?}");

    let mut stream = Exchange::open(&mut client).await;
    stream
        .tx
        .send(ProcessingRequest::default())
        .await
        .expect("send");
    let error = stream.rx.message().await.expect_err("an empty message");
    assert_eq!(error.code(), tonic::Code::InvalidArgument);

    let mut stream = Exchange::open(&mut client).await;
    let out = stream.answer(headers("plain", true)).await;
    assert_eq!(
        appended(&out, "x-order"),
        ["plain"],
        "the server still serves"
    );
}

#[tokio::test]
async fn a_configuration_swap_never_changes_a_request_in_flight() {
    let state = EngineState::new();
    state.install(support::snapshot(CONFIG));
    let mut client = serve(Arc::clone(&state)).await;

    let mut stream = Exchange::open(&mut client).await;
    let out = stream.answer(headers("body", false)).await;
    assert!(
        matches!(out, Out::RequestHeaders(_)),
        "the headers wait for the body: {out:?}"
    );

    state.install(support::snapshot(
        &CONFIG.replace("label: old", "label: new"),
    ));
    let out = stream.answer(body(b"{}")).await;
    assert_eq!(
        appended(&out, "x-order"),
        ["old"],
        "the chain the request started with"
    );

    let mut next = Exchange::open(&mut client).await;
    next.answer(headers("body", false)).await;
    let out = next.answer(body(b"{}")).await;
    assert_eq!(
        appended(&out, "x-order"),
        ["new"],
        "new requests use the new chain"
    );
}

#[tokio::test]
async fn without_configuration_every_request_gets_503() {
    let mut client = serve(EngineState::new()).await;
    let mut stream = Exchange::open(&mut client).await;
    let out = stream.answer(headers("plain", true)).await;
    assert_eq!(immediate_status(&out), Some(503));
}
