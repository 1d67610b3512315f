//! What a case's chain did, and how it differs from what the case expects.

use super::file::Expect;
use policy_sdk::{ImmediateResponse, Metadata, RequestContext, Response};
use serde_json::Value;
use std::fmt;

/// A message as the decision test sees it: status (answers), path and method (upstream
/// requests), headers and body.
#[derive(Debug, Clone, Default)]
pub struct Message {
    /// The status of an answer or response.
    pub status: Option<u16>,
    /// The path of an upstream request.
    pub path: Option<String>,
    /// The method of an upstream request.
    pub method: Option<String>,
    /// Headers, names lower-case.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl Message {
    fn header(&self, name: &str) -> Option<String> {
        let values: Vec<&str> = self
            .headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect();
        (!values.is_empty()).then(|| values.join(", "))
    }
}

/// What happened to a case's request.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// `Some`: the chain answered the client with this; `None`: the request went upstream.
    pub answer: Option<Message>,
    /// The request as it went upstream (when it did).
    pub upstream: Option<Message>,
    /// What the client got after the response phase (when the case gave a response).
    pub response: Option<Message>,
    /// Metadata after the chain.
    pub metadata: Metadata,
}

impl Outcome {
    pub(super) fn answered(answer: &ImmediateResponse, metadata: &Metadata) -> Outcome {
        Outcome {
            answer: Some(Message {
                status: Some(answer.status()),
                headers: answer.headers().to_vec(),
                body: answer.body().to_vec(),
                ..Message::default()
            }),
            upstream: None,
            response: None,
            metadata: metadata.clone(),
        }
    }

    pub(super) fn forwarded(ctx: &RequestContext) -> Outcome {
        let request = ctx.request();
        Outcome {
            answer: None,
            upstream: Some(Message {
                status: None,
                path: Some(request.path().to_owned()),
                method: Some(request.method().to_owned()),
                headers: request
                    .headers()
                    .iter()
                    .map(|(n, v)| (n.to_owned(), v.to_owned()))
                    .collect(),
                body: request.body().unwrap_or_default().to_vec(),
            }),
            response: None,
            metadata: ctx.metadata().clone(),
        }
    }

    pub(super) fn response_of(response: &Response) -> Message {
        Message {
            status: Some(response.status()),
            headers: response
                .headers()
                .iter()
                .map(|(n, v)| (n.to_owned(), v.to_owned()))
                .collect(),
            body: response.body().unwrap_or_default().to_vec(),
            ..Message::default()
        }
    }
}

/// One difference: the field, what the case expects, what happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mismatch {
    /// E.g. `status`, `upstream.headers.x-team`, `metadata.auth.consumer`.
    pub field: String,
    /// What the case expects.
    pub expected: String,
    /// What happened.
    pub actual: String,
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: expected {}, got {}",
            self.field, self.expected, self.actual
        )
    }
}

/// Compares a case's expectation with what happened.
pub(super) fn compare(expect: &Expect, actual: &Outcome) -> Vec<Mismatch> {
    let mut out = Vec::new();
    let mut miss = |field: &str, expected: String, actual: String| {
        out.push(Mismatch {
            field: field.to_owned(),
            expected,
            actual,
        });
    };
    match (&expect.status, &actual.answer) {
        (Some(status), Some(answer)) => {
            let checks = Checks {
                status: Some(*status),
                headers: &expect.headers,
                body: expect.body.as_deref(),
                json: expect.json.as_ref(),
                body_contains: expect.body_contains.as_deref(),
                ..Checks::default()
            };
            checks.run("", answer, &mut miss);
        }
        (Some(status), None) => miss(
            "status",
            format!("answered {status}"),
            "forwarded upstream".into(),
        ),
        (None, Some(answer)) => miss(
            "status",
            "forwarded upstream".into(),
            format!(
                "answered {} {}",
                answer.status.unwrap_or_default(),
                String::from_utf8_lossy(&answer.body)
            ),
        ),
        (None, None) => {
            if let (Some(want), Some(upstream)) = (&expect.upstream, &actual.upstream) {
                let checks = Checks {
                    path: want.path.as_deref(),
                    method: want.method.as_deref(),
                    headers: &want.headers,
                    body: want.body.as_deref(),
                    json: want.json.as_ref(),
                    body_contains: want.body_contains.as_deref(),
                    ..Checks::default()
                };
                checks.run("upstream.", upstream, &mut miss);
            }
        }
    }
    if let Some(want) = &expect.response {
        match &actual.response {
            Some(response) => Checks {
                status: want.status,
                headers: &want.headers,
                body: want.body.as_deref(),
                json: want.json.as_ref(),
                body_contains: want.body_contains.as_deref(),
                ..Checks::default()
            }
            .run("response.", response, &mut miss),
            None => miss(
                "response",
                "a response phase".into(),
                "none (the request was answered, or the case gives no `response`)".into(),
            ),
        }
    }
    for (key, want) in &expect.metadata {
        let got = actual.metadata.get(key);
        if got != want.as_ref() {
            miss(&format!("metadata.{key}"), show(want.as_ref()), show(got));
        }
    }
    out
}

fn show(value: Option<&Value>) -> String {
    value.map_or_else(|| "(absent)".into(), Value::to_string)
}

/// The checks of one message.
struct Checks<'a> {
    status: Option<u16>,
    path: Option<&'a str>,
    method: Option<&'a str>,
    headers: &'a std::collections::BTreeMap<String, Option<String>>,
    body: Option<&'a str>,
    json: Option<&'a Value>,
    body_contains: Option<&'a str>,
}

static NO_HEADERS: std::collections::BTreeMap<String, Option<String>> =
    std::collections::BTreeMap::new();

impl Default for Checks<'_> {
    fn default() -> Self {
        Checks {
            status: None,
            path: None,
            method: None,
            headers: &NO_HEADERS,
            body: None,
            json: None,
            body_contains: None,
        }
    }
}

impl Checks<'_> {
    fn run(&self, prefix: &str, message: &Message, miss: &mut impl FnMut(&str, String, String)) {
        if let Some(status) = self.status
            && message.status != Some(status)
        {
            let got = message.status.map_or_else(String::new, |s| s.to_string());
            miss(&format!("{prefix}status"), status.to_string(), got);
        }
        for (field, want, got) in [
            ("path", self.path, message.path.as_deref()),
            ("method", self.method, message.method.as_deref()),
        ] {
            if let Some(want) = want
                && Some(want) != got
            {
                miss(
                    &format!("{prefix}{field}"),
                    want.to_owned(),
                    got.unwrap_or("(none)").to_owned(),
                );
            }
        }
        for (name, want) in self.headers {
            let got = message.header(name);
            if got.as_deref() != want.as_deref() {
                let show =
                    |v: Option<&str>| v.map_or_else(|| "(absent)".into(), |v| format!("{v:?}"));
                miss(
                    &format!("{prefix}headers.{}", name.to_ascii_lowercase()),
                    show(want.as_deref()),
                    show(got.as_deref()),
                );
            }
        }
        let text = String::from_utf8_lossy(&message.body);
        if let Some(want) = self.body
            && text != want
        {
            miss(
                &format!("{prefix}body"),
                format!("{want:?}"),
                format!("{text:?}"),
            );
        }
        if let Some(want) = self.body_contains
            && !text.contains(want)
        {
            miss(
                &format!("{prefix}body"),
                format!("containing {want:?}"),
                format!("{text:?}"),
            );
        }
        if let Some(want) = self.json {
            match serde_json::from_slice::<Value>(&message.body) {
                Ok(got) => {
                    let mut path = format!("{prefix}json");
                    subset(want, &got, &mut path, miss);
                }
                Err(_) => miss(
                    &format!("{prefix}json"),
                    want.to_string(),
                    format!("not JSON: {text:?}"),
                ),
            }
        }
    }
}

/// Reports where `want` is not contained in `got` (objects: every field of `want`, recursively;
/// anything else: equal).
fn subset(
    want: &Value,
    got: &Value,
    path: &mut String,
    miss: &mut impl FnMut(&str, String, String),
) {
    match (want, got) {
        (Value::Object(want), Value::Object(got)) => {
            for (key, value) in want {
                let len = path.len();
                path.push('.');
                path.push_str(key);
                match got.get(key) {
                    Some(found) => subset(value, found, path, miss),
                    None => miss(path, value.to_string(), "(absent)".into()),
                }
                path.truncate(len);
            }
        }
        _ if want != got => miss(path, want.to_string(), got.to_string()),
        _ => {}
    }
}
