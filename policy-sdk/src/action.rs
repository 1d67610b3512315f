//! What a policy decides: modifications to pass on, or an immediate response.

/// One header change.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum HeaderOp {
    /// Replace every value of the header with this one.
    Set(String, String),
    /// Add a value after the existing ones.
    Append(String, String),
    /// Remove every value of the header.
    Remove(String),
}

/// A body change.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum BodyOp {
    /// Replace the body with these bytes (the engine fixes `content-length`).
    Replace(Vec<u8>),
    /// Make the body empty.
    Clear,
}

/// Changes to the request before it goes upstream. Built with chained calls; an empty value
/// changes nothing and allocates nothing.
///
/// ```
/// use policy_sdk::{HeaderOp, UpstreamRequestMods};
///
/// let mods = UpstreamRequestMods::new()
///     .set_header("x-user", "alice")
///     .remove_header("authorization")
///     .set_path("/v2/users");
/// assert_eq!(mods.header_ops()[0], HeaderOp::Set("x-user".into(), "alice".into()));
/// assert_eq!(mods.path(), Some("/v2/users"));
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UpstreamRequestMods {
    headers: Vec<HeaderOp>,
    body: Option<BodyOp>,
    path: Option<String>,
    method: Option<String>,
}

impl UpstreamRequestMods {
    /// No change.
    pub fn new() -> Self {
        Self::default()
    }

    /// Replaces every value of header `name`.
    pub fn set_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push(HeaderOp::Set(name.into(), value.into()));
        self
    }

    /// Adds a value to header `name`.
    pub fn append_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers
            .push(HeaderOp::Append(name.into(), value.into()));
        self
    }

    /// Removes header `name`.
    pub fn remove_header(mut self, name: impl Into<String>) -> Self {
        self.headers.push(HeaderOp::Remove(name.into()));
        self
    }

    /// Replaces the body (the chain must declare `requiresRequestBody`).
    pub fn replace_body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = Some(BodyOp::Replace(body.into()));
        self
    }

    /// Empties the body.
    pub fn clear_body(mut self) -> Self {
        self.body = Some(BodyOp::Clear);
        self
    }

    /// Rewrites the path (query string included); Envoy re-evaluates routing.
    pub fn set_path(mut self, path: impl Into<String>) -> Self {
        self.path = Some(path.into());
        self
    }

    /// Rewrites the method.
    pub fn set_method(mut self, method: impl Into<String>) -> Self {
        self.method = Some(method.into());
        self
    }

    /// The header changes, in order.
    pub fn header_ops(&self) -> &[HeaderOp] {
        &self.headers
    }

    /// The body change, if any.
    pub fn body(&self) -> Option<&BodyOp> {
        self.body.as_ref()
    }

    /// The new path, if any.
    pub fn path(&self) -> Option<&str> {
        self.path.as_deref()
    }

    /// The new method, if any.
    pub fn method(&self) -> Option<&str> {
        self.method.as_deref()
    }

    /// Whether nothing changes.
    pub fn is_empty(&self) -> bool {
        self.headers.is_empty()
            && self.body.is_none()
            && self.path.is_none()
            && self.method.is_none()
    }

    pub(crate) fn into_parts(
        self,
    ) -> (
        Vec<HeaderOp>,
        Option<BodyOp>,
        Option<String>,
        Option<String>,
    ) {
        (self.headers, self.body, self.path, self.method)
    }
}

/// Changes to the upstream response before it goes to the client.
///
/// ```
/// use policy_sdk::UpstreamResponseMods;
///
/// let mods = UpstreamResponseMods::new().set_header("x-frame-options", "DENY").set_status(203);
/// assert_eq!(mods.status(), Some(203));
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UpstreamResponseMods {
    headers: Vec<HeaderOp>,
    body: Option<BodyOp>,
    status: Option<u16>,
}

impl UpstreamResponseMods {
    /// No change.
    pub fn new() -> Self {
        Self::default()
    }

    /// Replaces every value of header `name`.
    pub fn set_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push(HeaderOp::Set(name.into(), value.into()));
        self
    }

    /// Adds a value to header `name`.
    pub fn append_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers
            .push(HeaderOp::Append(name.into(), value.into()));
        self
    }

    /// Removes header `name`.
    pub fn remove_header(mut self, name: impl Into<String>) -> Self {
        self.headers.push(HeaderOp::Remove(name.into()));
        self
    }

    /// Replaces the body (the chain must declare `requiresResponseBody`).
    pub fn replace_body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = Some(BodyOp::Replace(body.into()));
        self
    }

    /// Empties the body.
    pub fn clear_body(mut self) -> Self {
        self.body = Some(BodyOp::Clear);
        self
    }

    /// Changes the status code.
    pub fn set_status(mut self, status: u16) -> Self {
        self.status = Some(status);
        self
    }

    /// The header changes, in order.
    pub fn header_ops(&self) -> &[HeaderOp] {
        &self.headers
    }

    /// The body change, if any.
    pub fn body(&self) -> Option<&BodyOp> {
        self.body.as_ref()
    }

    /// The new status, if any.
    pub fn status(&self) -> Option<u16> {
        self.status
    }

    /// Whether nothing changes.
    pub fn is_empty(&self) -> bool {
        self.headers.is_empty() && self.body.is_none() && self.status.is_none()
    }

    pub(crate) fn into_parts(self) -> (Vec<HeaderOp>, Option<BodyOp>, Option<u16>) {
        (self.headers, self.body, self.status)
    }
}

/// A response the engine sends to the client at once; the request never reaches upstream and the
/// rest of the chain does not run.
///
/// ```
/// use policy_sdk::ImmediateResponse;
///
/// let deny = ImmediateResponse::json(401, &serde_json::json!({"error": "invalid_token"}))
///     .with_header("www-authenticate", "Bearer error=\"invalid_token\"");
/// assert_eq!(deny.status(), 401);
/// assert_eq!(deny.header("content-type"), Some("application/json"));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImmediateResponse {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl ImmediateResponse {
    /// An empty response with `status`.
    pub fn new(status: u16) -> Self {
        ImmediateResponse {
            status,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    /// A response with a JSON body and `content-type: application/json`.
    pub fn json(status: u16, body: &serde_json::Value) -> Self {
        Self::new(status)
            .with_header("content-type", "application/json")
            .with_body(body.to_string())
    }

    /// Adds a header (builder style).
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        let mut name = name.into();
        name.make_ascii_lowercase();
        self.headers.push((name, value.into()));
        self
    }

    /// Sets the body (builder style).
    pub fn with_body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }

    /// The status code.
    pub fn status(&self) -> u16 {
        self.status
    }

    /// The headers, in order; names are lower-case.
    pub fn headers(&self) -> &[(String, String)] {
        &self.headers
    }

    /// The first value of header `name`.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body.
    pub fn body(&self) -> &[u8] {
        &self.body
    }
}

/// A request-phase decision.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RequestAction {
    /// Go on with these modifications (possibly none).
    Continue(UpstreamRequestMods),
    /// Answer the client now; the rest of the chain and upstream are skipped.
    Respond(ImmediateResponse),
}

impl RequestAction {
    /// Go on without changes.
    pub fn pass() -> Self {
        RequestAction::Continue(UpstreamRequestMods::new())
    }
}

impl From<UpstreamRequestMods> for RequestAction {
    fn from(mods: UpstreamRequestMods) -> Self {
        RequestAction::Continue(mods)
    }
}

impl From<ImmediateResponse> for RequestAction {
    fn from(response: ImmediateResponse) -> Self {
        RequestAction::Respond(response)
    }
}

/// A response-phase decision.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ResponseAction {
    /// Go on with these modifications (possibly none).
    Continue(UpstreamResponseMods),
    /// Replace the upstream response with this one; the rest of the chain is skipped.
    Respond(ImmediateResponse),
}

impl ResponseAction {
    /// Go on without changes.
    pub fn pass() -> Self {
        ResponseAction::Continue(UpstreamResponseMods::new())
    }
}

impl From<UpstreamResponseMods> for ResponseAction {
    fn from(mods: UpstreamResponseMods) -> Self {
        ResponseAction::Continue(mods)
    }
}

impl From<ImmediateResponse> for ResponseAction {
    fn from(response: ImmediateResponse) -> Self {
        ResponseAction::Respond(response)
    }
}
