//! Envoy ext_proc messages <-> domain values. The only place that knows both.

use envoy_types::pb::envoy::config::core::v3::header_value_option::HeaderAppendAction;
use envoy_types::pb::envoy::config::core::v3::{
    HeaderMap as PbHeaderMap, HeaderValue, HeaderValueOption,
};
use envoy_types::pb::envoy::extensions::filters::http::ext_proc::v3::ProcessingMode;
use envoy_types::pb::envoy::extensions::filters::http::ext_proc::v3::processing_mode::{
    BodySendMode, HeaderSendMode,
};
use envoy_types::pb::envoy::service::ext_proc::v3::processing_request::Request as In;
use envoy_types::pb::envoy::service::ext_proc::v3::processing_response::Response as Out;
use envoy_types::pb::envoy::service::ext_proc::v3::{
    BodyMutation, BodyResponse, CommonResponse, HeaderMutation, HeadersResponse, HttpBody,
    HttpHeaders, HttpTrailers, ImmediateResponse as PbImmediateResponse, ProcessingRequest,
    ProcessingResponse, ProtocolConfiguration, TrailersResponse, body_mutation,
};
use envoy_types::pb::envoy::r#type::v3::HttpStatus;
use envoy_types::pb::google::protobuf::Struct;
use envoy_types::pb::google::protobuf::value::Kind;
use policy_core::headers::{self, HeaderError};
use policy_core::{Edit, HeaderEdit};
use policy_sdk::{ImmediateResponse, Request};
use std::collections::HashMap;
use std::net::SocketAddr;

use super::RouteKey;
use super::message::{BodyMode, Incoming, Message, ProtocolError, Reply, Step};
use crate::chain::Needs;

/// The attribute namespace Envoy's ext_proc filter fills from `request_attributes`.
const ATTRIBUTES: &str = "envoy.filters.http.ext_proc";

/// A header block as `(name, value)` pairs, the value `raw_value` (or `value` when that is empty).
fn pairs(block: Option<&PbHeaderMap>) -> impl Iterator<Item = (&str, &[u8])> {
    block
        .map(|b| b.headers.as_slice())
        .unwrap_or_default()
        .iter()
        .map(|h| {
            let value = if h.raw_value.is_empty() {
                h.value.as_bytes()
            } else {
                &h.raw_value
            };
            (h.key.as_str(), value)
        })
}

/// The same pairs, owned.
fn owned(block: Option<&PbHeaderMap>) -> impl Iterator<Item = (String, Vec<u8>)> {
    pairs(block).map(|(k, v)| (k.to_owned(), v.to_vec()))
}

/// Envoy's message as the exchange sees it; the route key is looked up by `key`.
///
/// Every field is named, none skipped with `..`: a field a newer envoy-types adds is a compile
/// error here, to be judged for what it means to a chain before it is ignored.
pub(crate) fn incoming(msg: ProcessingRequest, key: &RouteKey) -> Result<Incoming, ProtocolError> {
    let ProcessingRequest {
        request,
        // Envoy's dynamic metadata: chains read their own metadata, not the proxy's.
        metadata_context: _,
        attributes,
        // In observability mode Envoy does not wait for answers, so no chain can hold a request
        // back; docs/envoy.md says never to enable it in front of this engine.
        observability_mode: _,
        protocol_config,
        // Flow control of FULL_DUPLEX_STREAMED, a mode body chains refuse.
        flow_control_init: _,
        client_window_update: _,
    } = msg;
    let modes = protocol_config.map(
        |ProtocolConfiguration {
             request_body_mode,
             response_body_mode,
             // Only changes when Envoy streams body parts the engine gathers anyway.
             send_body_without_waiting_for_header_response: _,
         }| {
            (
                BodyMode::from_wire(request_body_mode),
                BodyMode::from_wire(response_body_mode),
            )
        },
    );
    let message = match request.ok_or(ProtocolError::Empty)? {
        In::RequestHeaders(HttpHeaders {
            headers,
            // Per-message attributes are deprecated; Envoy sends them on the request.
            attributes: _,
            end_of_stream,
        }) => {
            let request = self::request(&attributes, headers.as_ref());
            let request_id = match &request {
                Ok(req) => req.request_id().to_owned(),
                Err(_) => headers::request_id(pairs(headers.as_ref())).unwrap_or_default(),
            };
            let route = match key {
                RouteKey::Attribute(name) => attribute(&attributes, name),
                RouteKey::Header(name) => request.as_ref().ok().and_then(|r| r.header(name)),
            }
            .map(str::to_owned);
            Message::RequestHeaders {
                request,
                request_id,
                route,
                end_of_stream,
            }
        }
        In::RequestBody(body) => {
            let (body, end_of_stream) = body_part(body);
            Message::RequestBody {
                body,
                end_of_stream,
            }
        }
        In::RequestTrailers(HttpTrailers { trailers: _ }) => Message::RequestTrailers,
        In::ResponseHeaders(HttpHeaders {
            headers,
            attributes: _,
            end_of_stream,
        }) => Message::ResponseHeaders {
            response: headers::response(owned(headers.as_ref())),
            end_of_stream,
        },
        In::ResponseBody(body) => {
            let (body, end_of_stream) = body_part(body);
            Message::ResponseBody {
                body,
                end_of_stream,
            }
        }
        In::ResponseTrailers(HttpTrailers { trailers: _ }) => Message::ResponseTrailers,
    };
    Ok(Incoming { message, modes })
}

/// The bytes of a body part and whether the body ends with it.
fn body_part(part: HttpBody) -> (Vec<u8>, bool) {
    let HttpBody {
        body,
        end_of_stream,
        // FULL_DUPLEX_STREAMED's way to end a body with no bytes: the body ends all the same.
        end_of_stream_without_message,
        // gRPC framing flags of streamed gRPC bodies; the bytes are judged as they are.
        grpc_message_compressed: _,
        drain_complete: _,
    } = part;
    (body, end_of_stream || end_of_stream_without_message)
}

/// Envoy's message for `reply`.
pub(crate) fn outgoing(reply: Reply) -> ProcessingResponse {
    let mut mode_override = None;
    let response = match reply {
        Reply::Respond(response) => Out::ImmediateResponse(immediate(&response)),
        Reply::Acknowledge(step) => answer(step, None),
        Reply::Continue { step, edit, needs } => {
            mode_override = needs.map(mode);
            answer(step, common(edit))
        }
    };
    // Every field named (a new one is a compile error); the deprecated ones stay unset.
    #[allow(deprecated)]
    ProcessingResponse {
        response: Some(response),
        mode_override,
        dynamic_metadata: None,
        typed_dynamic_metadata: HashMap::new(),
        request_drain: false,
        request_drain_requests: false,
        request_drain_responses: false,
        override_message_timeout: None,
        server_window_update: None,
    }
}

/// The answer to the message of `step`.
fn answer(step: Step, response: Option<CommonResponse>) -> Out {
    match step {
        Step::RequestHeaders => Out::RequestHeaders(HeadersResponse { response }),
        Step::ResponseHeaders => Out::ResponseHeaders(HeadersResponse { response }),
        Step::RequestBody => Out::RequestBody(BodyResponse { response }),
        Step::ResponseBody => Out::ResponseBody(BodyResponse { response }),
        // Trailers are never changed.
        Step::RequestTrailers => Out::RequestTrailers(TrailersResponse {
            header_mutation: None,
        }),
        Step::ResponseTrailers => Out::ResponseTrailers(TrailersResponse {
            header_mutation: None,
        }),
    }
}

/// The request of a `request_headers` message.
fn request(
    attributes: &HashMap<String, Struct>,
    headers: Option<&PbHeaderMap>,
) -> Result<Request, HeaderError> {
    let mut request = headers::request(owned(headers))?;
    if let Some(addr) =
        attribute(attributes, "source.address").and_then(|a| a.parse::<SocketAddr>().ok())
    {
        request = request.with_client_address(addr);
    }
    Ok(request)
}

impl BodyMode {
    fn from_wire(mode: i32) -> BodyMode {
        match BodySendMode::try_from(mode) {
            Ok(BodySendMode::None) => BodyMode::None,
            Ok(BodySendMode::Streamed) => BodyMode::Streamed,
            Ok(BodySendMode::Buffered) => BodyMode::Buffered,
            Ok(BodySendMode::BufferedPartial) => BodyMode::BufferedPartial,
            // Anything newer sends parts the engine must gather.
            Ok(_) | Err(_) => BodyMode::FullDuplexStreamed,
        }
    }
}

/// A string attribute Envoy sent (from `request_attributes`), e.g. `xds.route_name`.
fn attribute<'m>(attributes: &'m HashMap<String, Struct>, name: &str) -> Option<&'m str> {
    match attributes
        .get(ATTRIBUTES)?
        .fields
        .get(name)?
        .kind
        .as_ref()?
    {
        Kind::StringValue(s) => Some(s),
        _ => None,
    }
}

fn set(key: &str, value: &str, action: HeaderAppendAction) -> HeaderValueOption {
    // `append` is deprecated in favour of `append_action`, and must stay unset beside it.
    #[allow(deprecated)]
    HeaderValueOption {
        header: Some(HeaderValue {
            key: key.to_owned(),
            value: String::new(),
            raw_value: value.as_bytes().to_vec(),
        }),
        append: None,
        append_action: action as i32,
        keep_empty_value: false,
    }
}

/// The header mutation for `edits` (`None` when there are none).
fn header_mutation(edits: Vec<HeaderEdit>) -> Option<HeaderMutation> {
    let mut m = HeaderMutation {
        set_headers: Vec::new(),
        remove_headers: Vec::new(),
    };
    for edit in edits {
        match edit {
            HeaderEdit::Set(name, value) => {
                m.set_headers.push(set(
                    &name,
                    &value,
                    HeaderAppendAction::OverwriteIfExistsOrAdd,
                ));
            }
            HeaderEdit::Append(name, value) => {
                m.set_headers
                    .push(set(&name, &value, HeaderAppendAction::AppendIfExistsOrAdd));
            }
            HeaderEdit::Remove(name) => m.remove_headers.push(name),
        }
    }
    (!m.set_headers.is_empty() || !m.remove_headers.is_empty()).then_some(m)
}

/// A `CommonResponse` carrying `edit` (`None` when it changes nothing).
fn common(edit: Edit) -> Option<CommonResponse> {
    if edit.is_empty() {
        return None;
    }
    let Edit {
        headers,
        body,
        reroute,
    } = edit;
    Some(CommonResponse {
        status: 0,
        header_mutation: header_mutation(headers),
        body_mutation: body.map(|b| BodyMutation {
            mutation: Some(if b.is_empty() {
                body_mutation::Mutation::ClearBody(true)
            } else {
                body_mutation::Mutation::Body(b)
            }),
        }),
        trailers: None,
        clear_route_cache: reroute,
    })
}

/// The processing mode a chain needs for the rest of the stream.
fn mode(needs: Needs) -> ProcessingMode {
    ProcessingMode {
        request_header_mode: HeaderSendMode::Send as i32,
        response_header_mode: if needs.response_headers {
            HeaderSendMode::Send
        } else {
            HeaderSendMode::Skip
        } as i32,
        request_body_mode: if needs.request_body {
            BodySendMode::Buffered
        } else {
            BodySendMode::None
        } as i32,
        response_body_mode: if needs.response_body {
            BodySendMode::Buffered
        } else {
            BodySendMode::None
        } as i32,
        request_trailer_mode: HeaderSendMode::Skip as i32,
        response_trailer_mode: HeaderSendMode::Skip as i32,
    }
}

/// An immediate response for Envoy to send to the client.
fn immediate(response: &ImmediateResponse) -> PbImmediateResponse {
    let status = match response.status() {
        s @ 200..=599 => s,
        _ => 500,
    };
    // The first value of a name replaces what Envoy would add; repeated ones (two set-cookie
    // values) are appended, so they stay separate headers.
    let mut seen: Vec<&str> = Vec::new();
    let headers = response
        .headers()
        .iter()
        .filter(|(name, _)| !name.starts_with(':'))
        .map(|(name, value)| {
            let name = name.as_str();
            let action = if seen.contains(&name) {
                HeaderAppendAction::AppendIfExistsOrAdd
            } else {
                seen.push(name);
                HeaderAppendAction::OverwriteIfExistsOrAdd
            };
            set(name, value, action)
        })
        .collect::<Vec<_>>();
    PbImmediateResponse {
        status: Some(HttpStatus {
            code: i32::from(status),
        }),
        headers: (!headers.is_empty()).then_some(HeaderMutation {
            set_headers: headers,
            remove_headers: Vec::new(),
        }),
        body: response.body().to_vec(),
        grpc_status: None,
        details: "policy_engine".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(pairs: &[(&str, &str)]) -> PbHeaderMap {
        PbHeaderMap {
            headers: pairs
                .iter()
                .map(|(k, v)| HeaderValue {
                    key: (*k).into(),
                    value: String::new(),
                    raw_value: v.as_bytes().to_vec(),
                })
                .collect(),
        }
    }

    /// `(name, raw value, append action)` of each header a mutation sets.
    fn sets(m: &HeaderMutation) -> Vec<(String, Vec<u8>, i32)> {
        m.set_headers
            .iter()
            .map(|o| {
                let h = o.header.as_ref().expect("header");
                (h.key.clone(), h.raw_value.clone(), o.append_action)
            })
            .collect()
    }

    #[test]
    fn request_headers_become_a_request_with_its_route_and_client() {
        use envoy_types::pb::google::protobuf::Value;
        let mut headers = block(&[(":method", "GET"), (":path", "/a"), ("x-request-id", "rid")]);
        // Older Envoys fill `value` instead of `raw_value`.
        headers.headers.push(HeaderValue {
            key: "x-old".into(),
            value: "v".into(),
            raw_value: Vec::new(),
        });
        let fields = [
            ("xds.route_name", "r1"),
            ("source.address", "10.0.0.1:4321"),
        ]
        .into_iter()
        .map(|(k, v)| {
            let kind = Some(Kind::StringValue(v.into()));
            (k.to_owned(), Value { kind })
        })
        .collect();
        let msg = ProcessingRequest {
            request: Some(In::RequestHeaders(HttpHeaders {
                headers: Some(headers),
                ..HttpHeaders::default()
            })),
            attributes: [(ATTRIBUTES.to_owned(), Struct { fields })].into(),
            ..ProcessingRequest::default()
        };
        let incoming = incoming(msg, &RouteKey::default()).expect("a message");
        let Message::RequestHeaders {
            request: Ok(request),
            request_id,
            route,
            end_of_stream: false,
        } = incoming.message
        else {
            panic!("request headers: {:?}", incoming.message);
        };
        assert_eq!((request_id.as_str(), route.as_deref()), ("rid", Some("r1")));
        assert_eq!(request.header("x-old"), Some("v"));
        assert_eq!(
            request.client_address().map(|a| a.to_string()).as_deref(),
            Some("10.0.0.1:4321")
        );
        assert_eq!(incoming.modes, None);
    }

    #[test]
    fn edits_become_one_mutation_in_order() {
        let edit = Edit {
            headers: vec![
                HeaderEdit::Set("a".into(), "1".into()),
                HeaderEdit::Append("a".into(), "2".into()),
                HeaderEdit::Remove("gone".into()),
            ],
            body: Some(Vec::new()),
            reroute: true,
        };
        let out = outgoing(Reply::Continue {
            step: Step::RequestBody,
            edit,
            needs: None,
        });
        let Some(Out::RequestBody(BodyResponse {
            response: Some(common),
        })) = out.response
        else {
            panic!("a request body answer with changes: {out:?}");
        };
        let m = common.header_mutation.expect("header changes");
        let overwrite = HeaderAppendAction::OverwriteIfExistsOrAdd as i32;
        let append = HeaderAppendAction::AppendIfExistsOrAdd as i32;
        assert_eq!(
            sets(&m),
            [
                ("a".into(), b"1".to_vec(), overwrite),
                ("a".into(), b"2".to_vec(), append),
            ]
        );
        assert_eq!(m.remove_headers, ["gone"]);
        assert!(
            m.set_headers
                .iter()
                .all(|o| o.header.as_ref().is_some_and(|h| h.value.is_empty())),
            "value and raw_value both set"
        );
        assert_eq!(common.body_mutation, clear());
        assert!(common.clear_route_cache);
        assert_eq!(out.mode_override, None);
    }

    #[test]
    fn an_acknowledgement_carries_nothing() {
        let out = outgoing(Reply::Acknowledge(Step::ResponseHeaders));
        assert_eq!(
            out.response,
            Some(Out::ResponseHeaders(HeadersResponse { response: None }))
        );
        let out = outgoing(Reply::Continue {
            step: Step::RequestHeaders,
            edit: Edit::default(),
            needs: Some(Needs::default()),
        });
        assert_eq!(
            out.response,
            Some(Out::RequestHeaders(HeadersResponse { response: None }))
        );
        assert!(out.mode_override.is_some());
    }

    fn clear() -> Option<BodyMutation> {
        Some(BodyMutation {
            mutation: Some(body_mutation::Mutation::ClearBody(true)),
        })
    }

    #[test]
    fn repeated_headers_of_an_immediate_response_stay_separate() {
        let r = ImmediateResponse::new(302)
            .with_header("set-cookie", "a=1")
            .with_header("set-cookie", "b=2")
            .with_header("location", "/x");
        let sets = sets(&immediate(&r).headers.expect("headers"));
        let overwrite = HeaderAppendAction::OverwriteIfExistsOrAdd as i32;
        let append = HeaderAppendAction::AppendIfExistsOrAdd as i32;
        assert_eq!(
            sets,
            [
                ("set-cookie".into(), b"a=1".to_vec(), overwrite),
                ("set-cookie".into(), b"b=2".to_vec(), append),
                ("location".into(), b"/x".to_vec(), overwrite),
            ]
        );
    }

    #[test]
    fn modes_follow_the_chain_needs() {
        let m = mode(Needs {
            request_body: true,
            response_headers: false,
            response_body: false,
            request_body_in_response: false,
        });
        assert_eq!(m.request_body_mode, BodySendMode::Buffered as i32);
        assert_eq!(m.response_header_mode, HeaderSendMode::Skip as i32);
    }
}
