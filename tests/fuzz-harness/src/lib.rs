//! The fuzz targets' bodies (`fuzz/fuzz_targets/*` call these), kept in the main workspace so
//! the normal tests replay every input fuzzing found (`fuzz/regressions/<target>/`).
//!
//! Each function takes arbitrary bytes and must neither panic nor hang; where a property holds
//! for every input (a stream is answered or refused, never silently passed) it asserts it.

use envoy_types::pb::envoy::service::ext_proc::v3::ProcessingRequest;
use envoy_types::pb::envoy::service::ext_proc::v3::processing_response::Response as Out;
use policy_core::{Registry, definition::PolicyDefinition};
use policy_ext_proc::server::{EngineState, ExtProc, RouteKey, ServerOptions, replay};
use prost::Message;
use std::path::Path;
use std::sync::OnceLock;

/// Every sample policy (constructors do no I/O, so building one from any input is safe).
pub fn sample_registry() -> Registry {
    match policy_samples::registry(Vec::new()) {
        Ok(registry) => registry,
        Err(error) => panic!("the sample policies register: {error}"),
    }
}

fn registry() -> &'static Registry {
    static REGISTRY: OnceLock<Registry> = OnceLock::new();
    REGISTRY.get_or_init(sample_registry)
}

/// A route configuration document: parse and compile against the sample registry.
pub fn route_config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(snapshot) = policy_core::load(text, "fuzz", registry()) {
        for name in snapshot.route_names() {
            assert!(
                snapshot.route(name).is_some(),
                "route {name} listed but absent"
            );
        }
    }
}

/// A policy definition (`policy-definition.yaml`).
pub fn definition(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = PolicyDefinition::from_yaml(text);
    }
}

/// A builder manifest, as if read from a directory that does not exist.
pub fn manifest(data: &[u8]) {
    let _ = policy_builder::manifest::parse(
        data,
        Path::new("/nonexistent-fuzz-dir/policy-manifest.yaml"),
    );
}

/// The routes the stream target runs against (route key: the `x-route` header).
pub const STREAM_ROUTES: &str = r#"version: v1
routes:
  - route: headers
    policies:
      - {name: set-header, version: 1.0.0, params: {request: {set: {x-a: "1"}}, response: {set: {x-b: "2"}}}}
      - {name: security-headers, version: 1.0.0}
  - route: json
    policies:
      - {name: json-body-transform, version: 1.0.0, params: {request: {set: {"/added": 1}}, response: {remove: ["/secret"]}}}
  - route: llm
    policies:
      - {name: llm-guard, version: 1.0.0, params: {allowedModels: [m], maxTokens: {limit: 10, action: clamp}}}
  - route: cors
    policies:
      - {name: cors, version: 1.0.0, params: {allowOrigins: ["https://a.example"]}}
  - route: key
    policies:
      - name: api-key-validation
        version: 1.0.0
        params: {queryParam: api_key, keys: [{sha256: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08, consumer: acme}]}
      - {name: rate-limit, version: 1.0.0, params: {requestsPerSecond: 1000}}
      - name: respond
        version: 1.0.0
        condition: 'request.headers["x-tenant"] == "a"'
        onConditionError: deny
        params: {status: 204}
"#;

/// The most messages one input is cut into.
const MAX_MESSAGES: usize = 32;

fn stream_service() -> &'static ExtProc {
    static SERVICE: OnceLock<ExtProc> = OnceLock::new();
    SERVICE.get_or_init(|| {
        let state = EngineState::new();
        match policy_core::load(STREAM_ROUTES, "fuzz", registry()) {
            Ok(snapshot) => drop(state.install(snapshot)),
            Err(error) => panic!("the stream target's routes load: {error}"),
        }
        let options = ServerOptions {
            route_key: RouteKey::Header("x-route".into()),
            max_body_bytes: 4096,
            max_buffered_body_bytes: 16 * 1024,
        };
        ExtProc::new(state, options)
    })
}

/// Any sequence of `ProcessingRequest`s (length-delimited protobuf) into one stream. Every
/// stream that is not closed by a protocol error either answers every message or ends with
/// the engine's own answer to the client.
pub fn ext_proc_stream(data: &[u8]) {
    let mut buf = data;
    let mut messages = Vec::new();
    while !buf.is_empty() && messages.len() < MAX_MESSAGES {
        match ProcessingRequest::decode_length_delimited(&mut buf) {
            Ok(msg) => messages.push(msg),
            Err(_) => break,
        }
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => panic!("a runtime: {error}"),
    };
    let sent = messages.len();
    let (answers, closed) = runtime.block_on(replay(stream_service(), messages));
    let immediate = answers
        .iter()
        .any(|a| matches!(a.response, Some(Out::ImmediateResponse(_))));
    assert!(
        answers.len() <= sent || immediate || closed.is_some(),
        "{} answers to {sent} messages",
        answers.len()
    );
    assert!(
        answers.iter().all(|a| a.response.is_some()),
        "an answer without a response"
    );
}

/// Example streams for the stream target's corpus: what Envoy sends for a few routes, whole
/// bodies and bodies in parts. `(name, length-delimited messages)`.
pub fn seed_streams() -> Vec<(&'static str, Vec<u8>)> {
    use envoy_types::pb::envoy::config::core::v3::{HeaderMap, HeaderValue};
    use envoy_types::pb::envoy::service::ext_proc::v3::processing_request::Request as In;
    use envoy_types::pb::envoy::service::ext_proc::v3::{HttpBody, HttpHeaders};

    let headers = |pairs: &[(&str, &str)], end_of_stream: bool| HttpHeaders {
        headers: Some(HeaderMap {
            headers: pairs
                .iter()
                .map(|(k, v)| HeaderValue {
                    key: (*k).into(),
                    value: String::new(),
                    raw_value: v.as_bytes().to_vec(),
                })
                .collect(),
        }),
        end_of_stream,
        ..HttpHeaders::default()
    };
    let body = |bytes: &[u8], end_of_stream: bool| HttpBody {
        body: bytes.to_vec(),
        end_of_stream,
        ..HttpBody::default()
    };
    let request = |route: &str, eos: bool| {
        In::RequestHeaders(headers(
            &[
                (":method", "POST"),
                (":path", "/v1/chat?api_key=test"),
                (":authority", "a"),
                ("x-route", route),
                ("origin", "https://a.example"),
                ("x-tenant", "a"),
            ],
            eos,
        ))
    };
    let response = In::ResponseHeaders(headers(&[(":status", "200")], false));
    let chat = br#"{"model":"m","max_tokens":99,"messages":[{"role":"user","content":"hi"}]}"#;
    let streams: Vec<(&'static str, Vec<In>)> = vec![
        (
            "headers-only",
            vec![
                request("headers", true),
                In::ResponseHeaders(headers(&[(":status", "200")], true)),
            ],
        ),
        (
            "json-whole",
            vec![
                request("json", false),
                In::RequestBody(body(br#"{"a":1}"#, true)),
                response.clone(),
                In::ResponseBody(body(br#"{"secret":1,"b":2}"#, true)),
            ],
        ),
        (
            "llm-in-parts",
            vec![
                request("llm", false),
                In::RequestBody(body(&chat[..20], false)),
                In::RequestBody(body(&chat[20..], true)),
            ],
        ),
        ("cors", vec![request("cors", true), response.clone()]),
        ("key", vec![request("key", true)]),
    ];
    streams
        .into_iter()
        .map(|(name, messages)| {
            let mut out = Vec::new();
            for request in messages {
                let msg = ProcessingRequest {
                    request: Some(request),
                    ..ProcessingRequest::default()
                };
                if let Err(error) = msg.encode_length_delimited(&mut out) {
                    panic!("encoding a seed: {error}");
                }
            }
            (name, out)
        })
        .collect()
}
