//! An endless run of empty body parts is refused, not held forever.

use envoy_types::pb::envoy::config::core::v3::{HeaderMap, HeaderValue};
use envoy_types::pb::envoy::service::ext_proc::v3::processing_request::Request as In;
use envoy_types::pb::envoy::service::ext_proc::v3::processing_response::Response as Out;
use envoy_types::pb::envoy::service::ext_proc::v3::{HttpBody, HttpHeaders, ProcessingRequest};
use policy_ext_proc::server::{EngineState, ExtProc, RouteKey, ServerOptions, replay};

fn message(request: In) -> ProcessingRequest {
    ProcessingRequest {
        request: Some(request),
        ..ProcessingRequest::default()
    }
}

#[tokio::test]
async fn empty_parts_past_the_cap_are_refused_with_413() {
    let state = EngineState::new();
    let registry = policy_fuzz_harness::sample_registry();
    let snapshot = policy_core::load(policy_fuzz_harness::STREAM_ROUTES, "test", &registry)
        .expect("the routes load");
    state.install(snapshot);
    let service = ExtProc::new(
        state,
        ServerOptions {
            route_key: RouteKey::Header("x-route".into()),
            ..ServerOptions::default()
        },
    );
    let headers = [(":method", "POST"), (":path", "/"), ("x-route", "json")]
        .iter()
        .map(|(k, v)| HeaderValue {
            key: (*k).into(),
            value: String::new(),
            raw_value: v.as_bytes().to_vec(),
        })
        .collect();
    let mut messages = vec![message(In::RequestHeaders(HttpHeaders {
        headers: Some(HeaderMap { headers }),
        end_of_stream: false,
        ..HttpHeaders::default()
    }))];
    messages.extend((0..20_000).map(|_| {
        message(In::RequestBody(HttpBody {
            body: Vec::new(),
            end_of_stream: false,
            ..HttpBody::default()
        }))
    }));
    let (answers, closed) = replay(&service, messages).await;
    assert_eq!(closed, None);
    let refusal = answers
        .iter()
        .find_map(|a| match &a.response {
            Some(Out::ImmediateResponse(r)) => r.status.as_ref().map(|s| s.code),
            _ => None,
        })
        .expect("the engine refused the body");
    assert_eq!(refusal, 413);
    assert!(answers.len() < 20_000, "{} answers", answers.len());
}
