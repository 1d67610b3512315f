//! Envoy ext_proc messages <-> domain values. The only place that knows both.

use envoy_types::pb::envoy::config::core::v3::header_value_option::HeaderAppendAction;
use envoy_types::pb::envoy::config::core::v3::{
    HeaderMap as PbHeaderMap, HeaderValue, HeaderValueOption,
};
use envoy_types::pb::envoy::extensions::filters::http::ext_proc::v3::ProcessingMode;
use envoy_types::pb::envoy::extensions::filters::http::ext_proc::v3::processing_mode::{
    BodySendMode, HeaderSendMode,
};
use envoy_types::pb::envoy::service::ext_proc::v3::{
    BodyMutation, CommonResponse, HeaderMutation, ImmediateResponse as PbImmediateResponse,
    ProcessingRequest, body_mutation,
};
use envoy_types::pb::envoy::r#type::v3::HttpStatus;
use envoy_types::pb::google::protobuf::value::Kind;
use policy_sdk::{Changes, HeaderChange, HeaderMap, ImmediateResponse, Request, Response};
use std::net::SocketAddr;

use crate::chain::Needs;

/// The attribute namespace Envoy's ext_proc filter fills from `request_attributes`.
const ATTRIBUTES: &str = "envoy.filters.http.ext_proc";

/// Why a message could not be turned into domain values.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TranslateError {
    /// A required pseudo-header is missing.
    #[error("the {0} pseudo-header is missing")]
    MissingPseudoHeader(&'static str),
    /// A pseudo-header value is not UTF-8 (regular headers may be anything).
    #[error("the value of header {0:?} is not valid UTF-8")]
    NotUtf8(String),
    /// `:status` is not a number from 100 to 599.
    #[error("the :status {0:?} is not a valid HTTP status")]
    BadStatus(String),
}

/// Pseudo-headers and regular headers of one header block.
struct Split {
    pseudo: [Option<String>; 5],
    headers: HeaderMap,
}

const PSEUDO: [&str; 5] = [":method", ":path", ":authority", ":scheme", ":status"];

fn split(block: Option<&PbHeaderMap>) -> Result<Split, TranslateError> {
    let mut out = Split {
        pseudo: Default::default(),
        headers: HeaderMap::new(),
    };
    for h in block.map(|b| b.headers.as_slice()).unwrap_or_default() {
        let raw = if h.raw_value.is_empty() {
            h.value.as_bytes().to_vec()
        } else {
            h.raw_value.clone()
        };
        match PSEUDO.iter().position(|p| *p == h.key) {
            Some(i) => {
                let value =
                    String::from_utf8(raw).map_err(|_| TranslateError::NotUtf8(h.key.clone()))?;
                out.pseudo[i] = Some(value);
            }
            None if h.key.starts_with(':') => {}
            // A value that is not UTF-8 stays out of the string view; Envoy keeps it unchanged.
            None => out.headers.append_bytes(h.key.clone(), raw),
        }
    }
    Ok(out)
}

/// The request of a `request_headers` message.
pub(crate) fn request(
    msg: &ProcessingRequest,
    headers: Option<&PbHeaderMap>,
) -> Result<Request, TranslateError> {
    let Split { pseudo, headers } = split(headers)?;
    let [method, path, authority, scheme, _] = pseudo;
    let method = method.ok_or(TranslateError::MissingPseudoHeader(":method"))?;
    let path = path.ok_or(TranslateError::MissingPseudoHeader(":path"))?;
    let request_id = headers.get("x-request-id").unwrap_or_default().to_owned();
    let mut request = Request::new(method, path)
        .with_authority(authority.unwrap_or_default())
        .with_scheme(scheme.unwrap_or_default())
        .with_request_id(request_id)
        .with_headers(headers);
    if let Some(addr) = attribute(msg, "source.address").and_then(|a| a.parse::<SocketAddr>().ok())
    {
        request = request.with_client_address(addr);
    }
    Ok(request)
}

/// The `x-request-id` of a header block, whatever else is wrong with it (for log lines).
pub(crate) fn request_id(headers: Option<&PbHeaderMap>) -> Option<String> {
    let h = headers?.headers.iter().find(|h| h.key == "x-request-id")?;
    let raw = if h.raw_value.is_empty() {
        h.value.as_bytes()
    } else {
        &h.raw_value
    };
    Some(String::from_utf8_lossy(raw).into_owned())
}

/// How Envoy's filter sends a body, as it says in the stream's first message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BodyMode {
    /// Not sent.
    None,
    /// In parts as they arrive.
    Streamed,
    /// Whole, in one message.
    Buffered,
    /// Up to Envoy's buffer limit; the rest passes unseen.
    BufferedPartial,
    /// In parts, with the headers answered first (not supported for body chains).
    FullDuplexStreamed,
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

/// The request and response body modes of Envoy's filter, from `protocol_config` (present only
/// in a stream's first message, and only from Envoy versions that send it).
pub(crate) fn body_modes(msg: &ProcessingRequest) -> Option<(BodyMode, BodyMode)> {
    let config = msg.protocol_config.as_ref()?;
    Some((
        BodyMode::from_wire(config.request_body_mode),
        BodyMode::from_wire(config.response_body_mode),
    ))
}

/// A body mutation that empties the body part it answers.
pub(crate) fn clear_body() -> Option<BodyMutation> {
    Some(BodyMutation {
        mutation: Some(body_mutation::Mutation::ClearBody(true)),
    })
}

/// The response of a `response_headers` message.
pub(crate) fn response(headers: Option<&PbHeaderMap>) -> Result<Response, TranslateError> {
    let Split { pseudo, headers } = split(headers)?;
    let status = pseudo[4]
        .clone()
        .ok_or(TranslateError::MissingPseudoHeader(":status"))?;
    let code = status
        .parse::<u16>()
        .ok()
        .filter(|c| (100..=599).contains(c))
        .ok_or(TranslateError::BadStatus(status))?;
    Ok(Response::new(code).with_headers(headers))
}

/// A string attribute Envoy sent (from `request_attributes`), e.g. `xds.route_name`.
pub(crate) fn attribute<'m>(msg: &'m ProcessingRequest, name: &str) -> Option<&'m str> {
    match msg
        .attributes
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
    HeaderValueOption {
        header: Some(HeaderValue {
            key: key.to_owned(),
            value: String::new(),
            raw_value: value.as_bytes().to_vec(),
        }),
        append_action: action as i32,
        ..Default::default()
    }
}

/// What the translation of a phase's changes needs besides the changes themselves.
pub(crate) struct Extra<'a> {
    /// `:path`/`:method` (request) or `:status` (response) to overwrite.
    pub pseudo: &'a [(&'static str, String)],
    /// The new body length when the body was replaced while Envoy holds the headers.
    pub content_length: Option<usize>,
}

/// The header mutation for `changes` against the final `headers`.
pub(crate) fn header_mutation(
    changes: &Changes,
    headers: &HeaderMap,
    extra: &Extra<'_>,
) -> Option<HeaderMutation> {
    let mut m = HeaderMutation::default();
    for change in changes.headers() {
        match change {
            HeaderChange::Replaced(name) => {
                // Overwrite then append: independent of the order Envoy applies removals in.
                let mut values = headers.get_all(name);
                match values.next() {
                    None => m.remove_headers.push(name.to_owned()),
                    Some(first) => {
                        m.set_headers.push(set(
                            name,
                            first,
                            HeaderAppendAction::OverwriteIfExistsOrAdd,
                        ));
                        for v in values {
                            m.set_headers.push(set(
                                name,
                                v,
                                HeaderAppendAction::AppendIfExistsOrAdd,
                            ));
                        }
                    }
                }
            }
            HeaderChange::Appended(name, values) => {
                for v in values {
                    m.set_headers
                        .push(set(name, v, HeaderAppendAction::AppendIfExistsOrAdd));
                }
            }
            _ => {}
        }
    }
    for (name, value) in extra.pseudo {
        m.set_headers
            .push(set(name, value, HeaderAppendAction::OverwriteIfExistsOrAdd));
    }
    if let Some(len) = extra.content_length {
        m.set_headers.push(set(
            "content-length",
            &len.to_string(),
            HeaderAppendAction::OverwriteIfExistsOrAdd,
        ));
        m.remove_headers.push("transfer-encoding".to_owned());
    }
    (!m.set_headers.is_empty() || !m.remove_headers.is_empty()).then_some(m)
}

/// A `CommonResponse` carrying the mutations (or `None` when nothing changed).
pub(crate) fn common(
    mutation: Option<HeaderMutation>,
    body: Option<&[u8]>,
    clear_route_cache: bool,
) -> Option<CommonResponse> {
    if mutation.is_none() && body.is_none() && !clear_route_cache {
        return None;
    }
    Some(CommonResponse {
        header_mutation: mutation,
        body_mutation: body.map(|b| BodyMutation {
            mutation: Some(if b.is_empty() {
                body_mutation::Mutation::ClearBody(true)
            } else {
                body_mutation::Mutation::Body(b.to_vec())
            }),
        }),
        clear_route_cache,
        ..Default::default()
    })
}

/// The processing mode a chain needs for the rest of the stream.
pub(crate) fn mode(needs: Needs) -> ProcessingMode {
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
pub(crate) fn immediate(response: &ImmediateResponse) -> PbImmediateResponse {
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
        details: "policy_engine".to_owned(),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use policy_sdk::{RequestContext, UpstreamRequestMods};

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
    fn request_headers_split_into_pseudo_fields_and_headers() {
        let msg = ProcessingRequest::default();
        let req = request(
            &msg,
            Some(&block(&[
                (":method", "POST"),
                (":path", "/a?b=1"),
                (":authority", "h"),
                ("x-request-id", "rid"),
                ("x-a", "1"),
            ])),
        )
        .expect("valid");
        assert_eq!(
            (req.method(), req.path(), req.authority(), req.request_id()),
            ("POST", "/a?b=1", "h", "rid")
        );
        assert_eq!(req.headers().len(), 2);
        assert!(!req.headers().contains(":method"));
    }

    #[test]
    fn malformed_headers_are_errors_not_defaults() {
        let msg = ProcessingRequest::default();
        assert_eq!(
            request(&msg, Some(&block(&[(":path", "/")]))).err(),
            Some(TranslateError::MissingPseudoHeader(":method"))
        );
        let mut bad = block(&[(":method", "GET"), (":path", "/")]);
        bad.headers.push(HeaderValue {
            key: "x".into(),
            value: String::new(),
            raw_value: vec![0xff],
        });
        let req = request(&msg, Some(&bad)).expect("a regular header may be any bytes");
        assert_eq!(req.header("x"), None);
        assert!(req.headers().contains("x"));
        let mut bad_path = block(&[(":method", "GET")]);
        bad_path.headers.push(HeaderValue {
            key: ":path".into(),
            value: String::new(),
            raw_value: vec![b'/', 0xff],
        });
        assert_eq!(
            request(&msg, Some(&bad_path)).err(),
            Some(TranslateError::NotUtf8(":path".into()))
        );
        assert_eq!(
            response(Some(&block(&[(":status", "99")]))).err(),
            Some(TranslateError::BadStatus("99".into()))
        );
    }

    #[test]
    fn replaced_headers_overwrite_then_append_and_removed_ones_are_removed() {
        let mut ctx = RequestContext::new(
            Request::new("GET", "/")
                .with_header("a", "0")
                .with_header("gone", "x"),
        );
        ctx.apply(
            UpstreamRequestMods::new()
                .set_header("a", "1")
                .append_header("a", "2")
                .remove_header("gone")
                .append_header("n", "v"),
        );
        let m = header_mutation(
            ctx.changes(),
            ctx.request().headers(),
            &Extra {
                pseudo: &[],
                content_length: None,
            },
        )
        .expect("changes");
        assert_eq!(
            sets(&m),
            [
                (
                    "a".into(),
                    b"1".to_vec(),
                    HeaderAppendAction::OverwriteIfExistsOrAdd as i32
                ),
                (
                    "a".into(),
                    b"2".to_vec(),
                    HeaderAppendAction::AppendIfExistsOrAdd as i32
                ),
                (
                    "n".into(),
                    b"v".to_vec(),
                    HeaderAppendAction::AppendIfExistsOrAdd as i32
                ),
            ]
        );
        assert_eq!(m.remove_headers, ["gone"]);
        assert!(
            m.set_headers
                .iter()
                .all(|o| o.header.as_ref().is_some_and(|h| h.value.is_empty())),
            "value and raw_value both set"
        );
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
