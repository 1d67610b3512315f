//! What a policy sees while it runs, and the record of what the chain changed.

use crate::action::{BodyOp, HeaderOp, UpstreamRequestMods, UpstreamResponseMods};
use crate::{HeaderMap, Metadata, Request, Response};

/// The request phase: the request (read-only: change it by returning
/// [`UpstreamRequestMods`]) and the request's shared [`Metadata`] (read-write).
///
/// ```
/// use policy_sdk::{Request, RequestContext, UpstreamRequestMods};
///
/// let mut ctx = RequestContext::new(Request::new("GET", "/").with_header("x-a", "1"));
/// ctx.apply(UpstreamRequestMods::new().set_header("x-b", "2").remove_header("x-a"));
/// assert_eq!(ctx.request().header("x-b"), Some("2"));
/// assert_eq!(ctx.changes().headers().count(), 2);
/// ```
#[derive(Clone, Debug)]
pub struct RequestContext {
    request: Request,
    metadata: Metadata,
    changes: Changes,
}

impl RequestContext {
    /// A context for `request` with empty metadata.
    pub fn new(request: Request) -> Self {
        RequestContext {
            request,
            metadata: Metadata::new(),
            changes: Changes::default(),
        }
    }

    /// The request, with every change applied so far.
    pub fn request(&self) -> &Request {
        &self.request
    }

    /// The request's shared metadata.
    pub fn metadata(&self) -> &Metadata {
        &self.metadata
    }

    /// The request's shared metadata, for writing.
    pub fn metadata_mut(&mut self) -> &mut Metadata {
        &mut self.metadata
    }

    /// Applies `mods` to the request and records them; the engine calls it with each policy's
    /// returned modifications, so later policies see them.
    pub fn apply(&mut self, mods: UpstreamRequestMods) {
        let (headers, body, path, method) = mods.into_parts();
        apply_headers(self.request.headers_mut(), &mut self.changes, headers);
        if let Some(body) = body {
            self.changes.body = true;
            self.request.set_body(Some(body_bytes(body)));
        }
        if let Some(path) = path {
            self.changes.path = true;
            self.request.set_path(path);
        }
        if let Some(method) = method {
            self.changes.method = true;
            self.request.set_method(method);
        }
    }

    /// What the chain changed so far, for the engine to send upstream.
    pub fn changes(&self) -> &Changes {
        &self.changes
    }

    /// The request and the metadata, for the response phase.
    pub fn into_parts(self) -> (Request, Metadata) {
        (self.request, self.metadata)
    }
}

/// The response phase: the request (read-only), the upstream response (read-only: change it by
/// returning [`UpstreamResponseMods`]) and the request's shared [`Metadata`].
#[derive(Clone, Debug)]
pub struct ResponseContext {
    request: Request,
    response: Response,
    metadata: Metadata,
    changes: Changes,
}

impl ResponseContext {
    /// A context for `response` to `request`, with the metadata of the request phase.
    pub fn new(request: Request, response: Response, metadata: Metadata) -> Self {
        ResponseContext {
            request,
            response,
            metadata,
            changes: Changes::default(),
        }
    }

    /// The request as it went upstream.
    pub fn request(&self) -> &Request {
        &self.request
    }

    /// The response, with every change applied so far.
    pub fn response(&self) -> &Response {
        &self.response
    }

    /// The request's shared metadata.
    pub fn metadata(&self) -> &Metadata {
        &self.metadata
    }

    /// The request's shared metadata, for writing.
    pub fn metadata_mut(&mut self) -> &mut Metadata {
        &mut self.metadata
    }

    /// Applies `mods` to the response and records them.
    pub fn apply(&mut self, mods: UpstreamResponseMods) {
        let (headers, body, status) = mods.into_parts();
        apply_headers(self.response.headers_mut(), &mut self.changes, headers);
        if let Some(body) = body {
            self.changes.body = true;
            self.response.set_body(Some(body_bytes(body)));
        }
        if let Some(status) = status {
            self.changes.status = true;
            self.response.set_status(status);
        }
    }

    /// What the chain changed so far, for the engine to send to the client.
    pub fn changes(&self) -> &Changes {
        &self.changes
    }
}

/// How one header differs from what arrived, after the chain ran.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum HeaderChange<'a> {
    /// Every value of the header was replaced: its final values are those now in the headers
    /// (none means removed).
    Replaced(&'a str),
    /// These values were appended to what arrived.
    Appended(&'a str, &'a [String]),
}

/// The net changes a chain made, recorded by `apply`.
#[derive(Clone, Debug, Default)]
pub struct Changes {
    headers: Vec<(String, Touch)>,
    body: bool,
    path: bool,
    method: bool,
    status: bool,
}

#[derive(Clone, Debug)]
enum Touch {
    Replaced,
    Appended(Vec<String>),
}

impl Changes {
    /// Each changed header once, in the order first changed; names are lower-case.
    pub fn headers(&self) -> impl Iterator<Item = HeaderChange<'_>> {
        self.headers.iter().map(|(name, touch)| match touch {
            Touch::Replaced => HeaderChange::Replaced(name),
            Touch::Appended(values) => HeaderChange::Appended(name, values),
        })
    }

    /// Whether the body was replaced or cleared.
    pub fn body(&self) -> bool {
        self.body
    }

    /// Whether the path was rewritten (request phase).
    pub fn path(&self) -> bool {
        self.path
    }

    /// Whether the method was rewritten (request phase).
    pub fn method(&self) -> bool {
        self.method
    }

    /// Whether the status was changed (response phase).
    pub fn status(&self) -> bool {
        self.status
    }

    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        self.headers.is_empty() && !self.body && !self.path && !self.method && !self.status
    }

    fn record(&mut self, op: &HeaderOp) {
        let name = match op {
            HeaderOp::Set(n, _) | HeaderOp::Append(n, _) | HeaderOp::Remove(n) => n,
        };
        let slot = self
            .headers
            .iter_mut()
            .find(|(n, _)| n.eq_ignore_ascii_case(name));
        match (op, slot) {
            (HeaderOp::Append(_, value), Some((_, Touch::Appended(values)))) => {
                values.push(value.clone());
            }
            (HeaderOp::Append(..), Some((_, Touch::Replaced))) => {}
            (HeaderOp::Append(_, value), None) => {
                self.headers.push((
                    name.to_ascii_lowercase(),
                    Touch::Appended(vec![value.clone()]),
                ));
            }
            (_, Some((_, touch))) => *touch = Touch::Replaced,
            (_, None) => self
                .headers
                .push((name.to_ascii_lowercase(), Touch::Replaced)),
        }
    }
}

fn apply_headers(headers: &mut HeaderMap, changes: &mut Changes, ops: Vec<HeaderOp>) {
    for op in ops {
        changes.record(&op);
        match op {
            HeaderOp::Set(name, value) => headers.set(name, value),
            HeaderOp::Append(name, value) => headers.append(name, value),
            HeaderOp::Remove(name) => {
                headers.remove(&name);
            }
        }
    }
}

fn body_bytes(op: BodyOp) -> Vec<u8> {
    match op {
        BodyOp::Replace(bytes) => bytes,
        BodyOp::Clear => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn changes(ctx: &RequestContext) -> Vec<HeaderChange<'_>> {
        ctx.changes().headers().collect()
    }

    #[test]
    fn appends_accumulate_until_a_set_or_remove_replaces_them() {
        let mut ctx = RequestContext::new(Request::new("GET", "/").with_header("x-a", "0"));
        ctx.apply(
            UpstreamRequestMods::new()
                .append_header("X-A", "1")
                .append_header("x-a", "2"),
        );
        let appended = ["1".to_string(), "2".to_string()];
        assert_eq!(changes(&ctx), [HeaderChange::Appended("x-a", &appended)]);
        ctx.apply(
            UpstreamRequestMods::new()
                .remove_header("x-a")
                .append_header("x-a", "3"),
        );
        assert_eq!(changes(&ctx), [HeaderChange::Replaced("x-a")]);
        assert_eq!(
            ctx.request().headers().get_all("x-a").collect::<Vec<_>>(),
            ["3"]
        );
    }

    #[test]
    fn body_path_and_method_changes_are_recorded() {
        let mut ctx = RequestContext::new(Request::new("GET", "/old").with_body("abc"));
        assert!(ctx.changes().is_empty());
        ctx.apply(
            UpstreamRequestMods::new()
                .clear_body()
                .set_path("/new")
                .set_method("POST"),
        );
        assert_eq!(ctx.request().body(), Some(&b""[..]));
        assert_eq!(
            (ctx.request().path(), ctx.request().method()),
            ("/new", "POST")
        );
        let c = ctx.changes();
        assert!(c.body() && c.path() && c.method() && !c.status());
    }

    #[test]
    fn response_changes_cover_status_and_body() {
        let (req, meta) = RequestContext::new(Request::new("GET", "/")).into_parts();
        let mut ctx = ResponseContext::new(req, Response::new(200), meta);
        ctx.apply(
            UpstreamResponseMods::new()
                .set_status(404)
                .replace_body("gone"),
        );
        assert_eq!(ctx.response().status(), 404);
        assert_eq!(ctx.response().body(), Some(&b"gone"[..]));
        assert!(ctx.changes().status() && ctx.changes().body());
    }
}
