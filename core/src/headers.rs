//! A proxy's header block -> the SDK's [`Request`] / [`Response`], for every host: pseudo-headers
//! become fields, the rest the header map.

use policy_sdk::{HeaderMap, Request, Response};

/// Why a header block cannot be represented faithfully.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HeaderError {
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

const PSEUDO: [&str; 5] = [":method", ":path", ":authority", ":scheme", ":status"];

/// Pseudo-headers and regular headers of one header block.
struct Split {
    pseudo: [Option<String>; 5],
    headers: HeaderMap,
}

fn split(block: impl IntoIterator<Item = (String, Vec<u8>)>) -> Result<Split, HeaderError> {
    let mut out = Split {
        pseudo: Default::default(),
        headers: HeaderMap::new(),
    };
    for (name, value) in block {
        match PSEUDO.iter().position(|p| *p == name) {
            Some(i) => {
                let value = String::from_utf8(value).map_err(|_| HeaderError::NotUtf8(name))?;
                out.pseudo[i] = Some(value);
            }
            None if name.starts_with(':') => {}
            // A value that is not UTF-8 stays out of the string view; the proxy keeps it.
            None => out.headers.append_bytes(name, value),
        }
    }
    Ok(out)
}

/// The request of a request header block (`(name, value)` pairs, pseudo-headers included).
///
/// # Errors
/// A missing `:method` or `:path`, or a pseudo-header that is not UTF-8.
pub fn request(block: impl IntoIterator<Item = (String, Vec<u8>)>) -> Result<Request, HeaderError> {
    let Split { pseudo, headers } = split(block)?;
    let [method, path, authority, scheme, _] = pseudo;
    let method = method.ok_or(HeaderError::MissingPseudoHeader(":method"))?;
    let path = path.ok_or(HeaderError::MissingPseudoHeader(":path"))?;
    let request_id = headers.get("x-request-id").unwrap_or_default().to_owned();
    Ok(Request::new(method, path)
        .with_authority(authority.unwrap_or_default())
        .with_scheme(scheme.unwrap_or_default())
        .with_request_id(request_id)
        .with_headers(headers))
}

/// The response of a response header block.
///
/// # Errors
/// A missing or invalid `:status`, or a pseudo-header that is not UTF-8.
pub fn response(
    block: impl IntoIterator<Item = (String, Vec<u8>)>,
) -> Result<Response, HeaderError> {
    let Split { pseudo, headers } = split(block)?;
    let [_, _, _, _, status] = pseudo;
    let status = status.ok_or(HeaderError::MissingPseudoHeader(":status"))?;
    let code = status
        .parse::<u16>()
        .ok()
        .filter(|c| (100..=599).contains(c))
        .ok_or(HeaderError::BadStatus(status))?;
    Ok(Response::new(code).with_headers(headers))
}

/// The `x-request-id` of a header block, whatever else is wrong with it (for log lines).
pub fn request_id<'a>(block: impl IntoIterator<Item = (&'a str, &'a [u8])>) -> Option<String> {
    block
        .into_iter()
        .find(|(name, _)| *name == "x-request-id")
        .map(|(_, value)| String::from_utf8_lossy(value).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(pairs: &[(&str, &[u8])]) -> Vec<(String, Vec<u8>)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.to_vec()))
            .collect()
    }

    #[test]
    fn pseudo_headers_become_fields() {
        let req = request(block(&[
            (":method", b"POST"),
            (":path", b"/a?b=1"),
            (":authority", b"h"),
            ("x-request-id", b"rid"),
            ("x-a", b"1"),
        ]))
        .expect("valid");
        assert_eq!(
            (req.method(), req.path(), req.authority(), req.request_id()),
            ("POST", "/a?b=1", "h", "rid")
        );
        assert_eq!(req.headers().len(), 2);
        assert!(!req.headers().contains(":method"));
    }

    #[test]
    fn malformed_blocks_are_errors_not_defaults() {
        assert_eq!(
            request(block(&[(":path", b"/")])).err(),
            Some(HeaderError::MissingPseudoHeader(":method"))
        );
        let req = request(block(&[
            (":method", b"GET"),
            (":path", b"/"),
            ("x", b"\xff"),
        ]))
        .expect("a regular header may be any bytes");
        assert_eq!(req.header("x"), None);
        assert!(req.headers().contains("x"));
        assert_eq!(
            request(block(&[(":method", b"GET"), (":path", b"/\xff")])).err(),
            Some(HeaderError::NotUtf8(":path".into()))
        );
        assert_eq!(
            response(block(&[(":status", b"99")])).err(),
            Some(HeaderError::BadStatus("99".into()))
        );
        assert_eq!(
            request_id([("x-request-id", &b"r\xff"[..])]).as_deref(),
            Some("r\u{fffd}")
        );
    }
}
