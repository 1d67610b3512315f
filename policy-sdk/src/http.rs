//! The HTTP request and response as policies see them.

use crate::HeaderMap;
use std::borrow::Cow;
use std::fmt;
use std::net::SocketAddr;

/// The downstream request: method, path, headers and, when the chain asked for it, the body.
///
/// Pseudo-headers (`:method`, `:path`, `:authority`, `:scheme`) are fields of their own and never
/// appear in [`Request::headers`].
///
/// ```
/// use policy_sdk::Request;
///
/// let req = Request::new("GET", "/search?q=rust%20lang&page=2").with_header("Accept", "text/html");
/// assert_eq!(req.path_without_query(), "/search");
/// assert_eq!(req.query_param("q").as_deref(), Some("rust lang"));
/// assert_eq!(req.header("accept"), Some("text/html"));
/// ```
#[derive(Clone, Default)]
pub struct Request {
    method: String,
    path: String,
    authority: String,
    scheme: String,
    headers: HeaderMap,
    body: Option<Vec<u8>>,
    request_id: String,
    client_address: Option<SocketAddr>,
}

impl Request {
    /// A request with `method` and `path` (the path may carry a query string).
    pub fn new(method: impl Into<String>, path: impl Into<String>) -> Self {
        Request {
            method: method.into(),
            path: path.into(),
            ..Request::default()
        }
    }

    /// Adds a header value (builder style).
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.append(name, value);
        self
    }

    /// Replaces all headers (builder style).
    pub fn with_headers(mut self, headers: HeaderMap) -> Self {
        self.headers = headers;
        self
    }

    /// Sets the body (builder style).
    pub fn with_body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = Some(body.into());
        self
    }

    /// The same request without its body (builder style).
    pub fn without_body(mut self) -> Self {
        self.body = None;
        self
    }

    /// Sets the `:authority` (host) (builder style).
    pub fn with_authority(mut self, authority: impl Into<String>) -> Self {
        self.authority = authority.into();
        self
    }

    /// Sets the `:scheme` (builder style).
    pub fn with_scheme(mut self, scheme: impl Into<String>) -> Self {
        self.scheme = scheme.into();
        self
    }

    /// Sets the request id, usually Envoy's `x-request-id` (builder style).
    pub fn with_request_id(mut self, id: impl Into<String>) -> Self {
        self.request_id = id.into();
        self
    }

    /// Sets the downstream client address (builder style).
    pub fn with_client_address(mut self, addr: SocketAddr) -> Self {
        self.client_address = Some(addr);
        self
    }

    /// The method, e.g. `GET`.
    pub fn method(&self) -> &str {
        &self.method
    }

    /// The path as sent, query string included.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The path without its query string.
    pub fn path_without_query(&self) -> &str {
        self.path.split_once('?').map_or(&self.path, |(p, _)| p)
    }

    /// The raw query string (after `?`), if any.
    pub fn query(&self) -> Option<&str> {
        self.path.split_once('?').map(|(_, q)| q)
    }

    /// The first value of query parameter `name`, percent-decoded (`+` is a space).
    pub fn query_param(&self, name: &str) -> Option<Cow<'_, str>> {
        query_param(self.query()?, name)
    }

    /// The `:authority` (host), empty when unknown.
    pub fn authority(&self) -> &str {
        &self.authority
    }

    /// The `:scheme`, empty when unknown.
    pub fn scheme(&self) -> &str {
        &self.scheme
    }

    /// The headers.
    pub fn headers(&self) -> &HeaderMap {
        &self.headers
    }

    /// The first value of header `name`.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name)
    }

    /// The body, when the chain runs at the body phase (`requiresRequestBody`).
    pub fn body(&self) -> Option<&[u8]> {
        self.body.as_deref()
    }

    /// The request id (Envoy's `x-request-id` when present), empty when unknown.
    pub fn request_id(&self) -> &str {
        &self.request_id
    }

    /// The downstream client address, where known.
    pub fn client_address(&self) -> Option<SocketAddr> {
        self.client_address
    }

    pub(crate) fn headers_mut(&mut self) -> &mut HeaderMap {
        &mut self.headers
    }

    pub(crate) fn set_body(&mut self, body: Option<Vec<u8>>) {
        self.body = body;
    }

    pub(crate) fn set_path(&mut self, path: String) {
        self.path = path;
    }

    pub(crate) fn set_method(&mut self, method: String) {
        self.method = method;
    }
}

/// The upstream response: status, headers and, when the chain asked for it, the body.
#[derive(Clone, Default)]
pub struct Response {
    status: u16,
    headers: HeaderMap,
    body: Option<Vec<u8>>,
}

impl Response {
    /// A response with `status`.
    pub fn new(status: u16) -> Self {
        Response {
            status,
            ..Response::default()
        }
    }

    /// Adds a header value (builder style).
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.append(name, value);
        self
    }

    /// Replaces all headers (builder style).
    pub fn with_headers(mut self, headers: HeaderMap) -> Self {
        self.headers = headers;
        self
    }

    /// Sets the body (builder style).
    pub fn with_body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = Some(body.into());
        self
    }

    /// The status code.
    pub fn status(&self) -> u16 {
        self.status
    }

    /// The headers.
    pub fn headers(&self) -> &HeaderMap {
        &self.headers
    }

    /// The first value of header `name`.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name)
    }

    /// The body, when the chain runs at the body phase (`requiresResponseBody`).
    pub fn body(&self) -> Option<&[u8]> {
        self.body.as_deref()
    }

    pub(crate) fn headers_mut(&mut self) -> &mut HeaderMap {
        &mut self.headers
    }

    pub(crate) fn set_body(&mut self, body: Option<Vec<u8>>) {
        self.body = body;
    }

    pub(crate) fn set_status(&mut self, status: u16) {
        self.status = status;
    }
}

// Debug output goes to logs: it shows header names, not values, never the query string (API keys
// travel there) and only the body's length.
impl fmt::Debug for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Request")
            .field("method", &self.method)
            .field("path", &self.path_without_query())
            .field("authority", &self.authority)
            .field("headers", &self.headers)
            .field("body_len", &self.body.as_ref().map(Vec::len))
            .field("request_id", &self.request_id)
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for Response {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Response")
            .field("status", &self.status)
            .field("headers", &self.headers)
            .field("body_len", &self.body.as_ref().map(Vec::len))
            .finish()
    }
}

/// The first value of `name` in a raw query string (without `?`), percent-decoded (`+` is a
/// space); malformed escapes are kept as written.
///
/// ```
/// assert_eq!(policy_sdk::query_param("a=1&b=x%20y", "b").as_deref(), Some("x y"));
/// ```
pub fn query_param<'q>(query: &'q str, name: &str) -> Option<Cow<'q, str>> {
    query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (decode(key) == name).then(|| decode(value))
    })
}

/// Percent-decodes a query component; malformed escapes are kept as written.
fn decode(s: &str) -> Cow<'_, str> {
    if !s.contains(['%', '+']) {
        return Cow::Borrowed(s);
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_params_are_decoded_and_first_value_wins() {
        let req = Request::new("GET", "/p?a=1&b=x+y%21&a=2&flag&bad=%zz%4");
        assert_eq!(req.query_param("a").as_deref(), Some("1"));
        assert_eq!(req.query_param("b").as_deref(), Some("x y!"));
        assert_eq!(req.query_param("flag").as_deref(), Some(""));
        assert_eq!(req.query_param("bad").as_deref(), Some("%zz%4"));
        assert_eq!(req.query_param("missing"), None);
        assert_eq!(Request::new("GET", "/p").query_param("a"), None);
    }

    #[test]
    fn debug_output_hides_query_header_values_and_body() {
        let req = Request::new("GET", "/p?api_key=s3cret")
            .with_header("authorization", "Bearer tok")
            .with_body("password=hunter2");
        let shown = format!("{req:?}");
        for secret in ["s3cret", "tok", "hunter2"] {
            assert!(!shown.contains(secret), "{shown}");
        }
        assert!(
            shown.contains("authorization") && shown.contains("body_len: Some(16)"),
            "{shown}"
        );
    }

    #[test]
    fn path_splits_at_the_first_question_mark() {
        let req = Request::new("GET", "/a?b=c?d");
        assert_eq!(req.path_without_query(), "/a");
        assert_eq!(req.query(), Some("b=c?d"));
    }
}
