//! What a phase's changes do to the message a host holds: edits any host applies in order.
//!
//! The chain records *what* changed ([`policy_sdk::Changes`]); an [`Edit`] says what to write
//! into the proxy's copy of the message so it matches the context the chain left.

use policy_sdk::{Changes, HeaderChange, HeaderMap, RequestContext, ResponseContext};

/// One header edit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HeaderEdit {
    /// Replace every value of the header with this one (add it when absent).
    Set(String, String),
    /// Add this value after those present.
    Append(String, String),
    /// Remove every value of the header.
    Remove(String),
}

/// The changes to the message a phase lets go on.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Edit {
    /// Header edits, in the order to apply them (pseudo-headers such as `:path` included).
    pub headers: Vec<HeaderEdit>,
    /// The new body (empty: the body is cleared); `None` leaves it as it is.
    pub body: Option<Vec<u8>>,
    /// The path or method changed: the proxy must choose the route again.
    pub reroute: bool,
}

impl Edit {
    /// The edit that makes the request match what the request chain left in `ctx`.
    pub fn of_request(ctx: &RequestContext) -> Edit {
        let changes = ctx.changes();
        let req = ctx.request();
        let mut pseudo = Vec::new();
        if changes.path() {
            pseudo.push((":path", req.path().to_owned()));
        }
        if changes.method() {
            pseudo.push((":method", req.method().to_owned()));
        }
        let body = changes.body().then(|| req.body().unwrap_or_default());
        Edit {
            headers: header_edits(changes, req.headers(), pseudo, body.map(<[u8]>::len)),
            body: body.map(<[u8]>::to_vec),
            reroute: changes.path() || changes.method(),
        }
    }

    /// The edit that makes the response match what the response chain left in `ctx`.
    pub fn of_response(ctx: &ResponseContext) -> Edit {
        let changes = ctx.changes();
        let resp = ctx.response();
        let mut pseudo = Vec::new();
        if changes.status() {
            pseudo.push((":status", resp.status().to_string()));
        }
        let body = changes.body().then(|| resp.body().unwrap_or_default());
        Edit {
            headers: header_edits(changes, resp.headers(), pseudo, body.map(<[u8]>::len)),
            body: body.map(<[u8]>::to_vec),
            reroute: false,
        }
    }

    /// An edit that only clears the body.
    pub fn clear_body() -> Edit {
        Edit {
            body: Some(Vec::new()),
            ..Edit::default()
        }
    }

    /// Whether the edit changes nothing.
    pub fn is_empty(&self) -> bool {
        self.headers.is_empty() && self.body.is_none() && !self.reroute
    }
}

/// Header edits for `changes` against the final `headers`, then `pseudo`, then the framing
/// headers of a replaced body of `content_length` bytes.
fn header_edits(
    changes: &Changes,
    headers: &HeaderMap,
    pseudo: Vec<(&'static str, String)>,
    content_length: Option<usize>,
) -> Vec<HeaderEdit> {
    let mut edits = Vec::new();
    for change in changes.headers() {
        match change {
            HeaderChange::Replaced(name) => {
                // Set then append: the result does not depend on when a proxy applies removals.
                let mut values = headers.get_all(name);
                match values.next() {
                    None => edits.push(HeaderEdit::Remove(name.to_owned())),
                    Some(first) => {
                        edits.push(HeaderEdit::Set(name.to_owned(), first.to_owned()));
                        edits.extend(
                            values.map(|v| HeaderEdit::Append(name.to_owned(), v.to_owned())),
                        );
                    }
                }
            }
            HeaderChange::Appended(name, values) => {
                edits.extend(
                    values
                        .iter()
                        .map(|v| HeaderEdit::Append(name.to_owned(), v.clone())),
                );
            }
            _ => {}
        }
    }
    edits.extend(
        pseudo
            .into_iter()
            .map(|(name, value)| HeaderEdit::Set(name.to_owned(), value)),
    );
    if let Some(len) = content_length {
        edits.push(HeaderEdit::Set(
            "content-length".to_owned(),
            len.to_string(),
        ));
        edits.push(HeaderEdit::Remove("transfer-encoding".to_owned()));
    }
    edits
}

#[cfg(test)]
mod tests {
    use super::*;
    use policy_sdk::{Request, Response, UpstreamRequestMods, UpstreamResponseMods};

    #[test]
    fn replaced_headers_are_set_then_appended_and_removed_ones_removed() {
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
        let edit = Edit::of_request(&ctx);
        let set = |n: &str, v: &str| HeaderEdit::Set(n.into(), v.into());
        let append = |n: &str, v: &str| HeaderEdit::Append(n.into(), v.into());
        assert_eq!(
            edit.headers,
            [
                set("a", "1"),
                append("a", "2"),
                HeaderEdit::Remove("gone".into()),
                append("n", "v"),
            ]
        );
        assert_eq!((edit.body, edit.reroute), (None, false));
    }

    #[test]
    fn a_new_path_reroutes_and_a_new_body_sets_its_length() {
        let mut ctx = RequestContext::new(Request::new("POST", "/a").with_body(b"old".to_vec()));
        ctx.apply(
            UpstreamRequestMods::new()
                .set_path("/b")
                .replace_body(b"new body".to_vec()),
        );
        let edit = Edit::of_request(&ctx);
        assert!(edit.reroute);
        assert_eq!(edit.body.as_deref(), Some(&b"new body"[..]));
        assert_eq!(
            edit.headers,
            [
                HeaderEdit::Set(":path".into(), "/b".into()),
                HeaderEdit::Set("content-length".into(), "8".into()),
                HeaderEdit::Remove("transfer-encoding".into()),
            ]
        );
    }

    #[test]
    fn a_new_status_is_a_pseudo_header_and_no_change_is_empty() {
        let req = Request::new("GET", "/");
        let ctx = ResponseContext::new(req.clone(), Response::new(200), Default::default());
        assert!(Edit::of_response(&ctx).is_empty());
        let mut ctx = ResponseContext::new(req, Response::new(200), Default::default());
        ctx.apply(UpstreamResponseMods::new().set_status(418));
        assert_eq!(
            Edit::of_response(&ctx).headers,
            [HeaderEdit::Set(":status".into(), "418".into())]
        );
        assert!(!Edit::clear_body().is_empty());
    }
}
