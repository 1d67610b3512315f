//! The decision test file format (YAML).

use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

/// A decision test file: the route configuration under test and its cases.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecisionFile {
    /// The route configuration, relative to the test file (a command-line flag may override).
    #[serde(default)]
    pub config: Option<String>,
    /// The cases, run in order.
    pub cases: Vec<Case>,
}

/// Why a test file cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct FileError(String);

impl DecisionFile {
    /// Parses a test file.
    ///
    /// # Errors
    /// Not YAML, or not this format (the message names the field).
    pub fn from_yaml(text: &str) -> Result<DecisionFile, FileError> {
        let file: DecisionFile =
            serde_saphyr::from_str(text).map_err(|e| FileError(e.to_string()))?;
        if file.cases.is_empty() {
            return Err(FileError("`cases` is empty: add at least one case".into()));
        }
        for (i, case) in file.cases.iter().enumerate() {
            let both = |a: bool, b: bool, what: &str| {
                if a && b {
                    Err(FileError(format!(
                        "case {} ({}): {what}: give `body` or `json`, not both",
                        i + 1,
                        case.name
                    )))
                } else {
                    Ok(())
                }
            };
            both(
                case.request.body.is_some(),
                case.request.json.is_some(),
                "request",
            )?;
            if let Some(response) = &case.response {
                both(response.body.is_some(), response.json.is_some(), "response")?;
            }
            if case.expect.status.is_some() && case.expect.upstream.is_some() {
                return Err(FileError(format!(
                    "case {} ({}): expect: `status` says the chain answers, `upstream` that it \
                     forwards: keep one",
                    i + 1,
                    case.name
                )));
            }
        }
        Ok(file)
    }
}

/// One case.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    /// What it checks, in words.
    pub name: String,
    /// The route it is sent to (Envoy's route name).
    pub route: String,
    /// The request.
    #[serde(default)]
    pub request: TestRequest,
    /// The upstream's answer, to run the response phase on (when the request is forwarded).
    #[serde(default)]
    pub response: Option<TestResponse>,
    /// What must happen.
    #[serde(default)]
    pub expect: Expect,
}

/// A request as Envoy would hand it over.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TestRequest {
    /// Default `GET`.
    #[serde(default = "default_method")]
    pub method: String,
    /// Path and query; default `/`.
    #[serde(default = "default_path")]
    pub path: String,
    /// `:authority`; default `example.com`.
    #[serde(default = "default_host")]
    pub host: String,
    /// `:scheme`; default `https`.
    #[serde(default = "default_scheme")]
    pub scheme: String,
    /// The request id (`x-request-id`); default `decision-test`.
    #[serde(default = "default_id")]
    pub id: String,
    /// Headers (names are case-insensitive).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// A text body.
    #[serde(default)]
    pub body: Option<String>,
    /// A JSON body.
    #[serde(default)]
    pub json: Option<Value>,
    /// The client's address (`IP` or `IP:PORT`).
    #[serde(default, deserialize_with = "client_address")]
    pub client: Option<SocketAddr>,
    /// Metadata already there (as Envoy or earlier filters would provide).
    #[serde(default)]
    pub metadata: BTreeMap<String, Value>,
}

impl Default for TestRequest {
    fn default() -> Self {
        TestRequest {
            method: default_method(),
            path: default_path(),
            host: default_host(),
            scheme: default_scheme(),
            id: default_id(),
            headers: BTreeMap::new(),
            body: None,
            json: None,
            client: None,
            metadata: BTreeMap::new(),
        }
    }
}

impl TestRequest {
    pub(super) fn body_bytes(&self) -> Option<Vec<u8>> {
        body_bytes(self.body.as_deref(), self.json.as_ref())
    }
}

/// The upstream's answer.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestResponse {
    /// Default 200.
    #[serde(default = "default_status")]
    pub status: u16,
    /// Headers.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// A text body.
    #[serde(default)]
    pub body: Option<String>,
    /// A JSON body.
    #[serde(default)]
    pub json: Option<Value>,
}

impl TestResponse {
    pub(super) fn body_bytes(&self) -> Option<Vec<u8>> {
        body_bytes(self.body.as_deref(), self.json.as_ref())
    }
}

fn body_bytes(body: Option<&str>, json: Option<&Value>) -> Option<Vec<u8>> {
    body.map(|b| b.as_bytes().to_vec())
        .or_else(|| json.map(|j| j.to_string().into_bytes()))
}

/// What must happen. With `status`, the chain answers the client itself; without it, the
/// request goes upstream (`upstream` says how).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Expect {
    /// The status of the chain's own answer.
    #[serde(default)]
    pub status: Option<u16>,
    /// Headers of that answer (`null`: absent).
    #[serde(default)]
    pub headers: BTreeMap<String, Option<String>>,
    /// Its exact body.
    #[serde(default)]
    pub body: Option<String>,
    /// Fields its JSON body must have (a subset).
    #[serde(default)]
    pub json: Option<Value>,
    /// Text its body must contain.
    #[serde(default)]
    pub body_contains: Option<String>,
    /// The request as it goes upstream.
    #[serde(default)]
    pub upstream: Option<ExpectUpstream>,
    /// Metadata after the chain (`null`: absent).
    #[serde(default)]
    pub metadata: BTreeMap<String, Option<Value>>,
    /// What the client gets after the response phase (needs the case's `response`).
    #[serde(default)]
    pub response: Option<ExpectResponse>,
}

/// The request as it goes upstream.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ExpectUpstream {
    /// Header values (`null`: absent).
    #[serde(default)]
    pub headers: BTreeMap<String, Option<String>>,
    /// Path and query.
    #[serde(default)]
    pub path: Option<String>,
    /// Method.
    #[serde(default)]
    pub method: Option<String>,
    /// Exact body.
    #[serde(default)]
    pub body: Option<String>,
    /// Fields its JSON body must have.
    #[serde(default)]
    pub json: Option<Value>,
    /// Text the body must contain.
    #[serde(default)]
    pub body_contains: Option<String>,
}

/// What the client gets after the response phase.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ExpectResponse {
    /// Status.
    #[serde(default)]
    pub status: Option<u16>,
    /// Header values (`null`: absent).
    #[serde(default)]
    pub headers: BTreeMap<String, Option<String>>,
    /// Exact body.
    #[serde(default)]
    pub body: Option<String>,
    /// Fields its JSON body must have.
    #[serde(default)]
    pub json: Option<Value>,
    /// Text the body must contain.
    #[serde(default)]
    pub body_contains: Option<String>,
}

fn default_method() -> String {
    "GET".into()
}

fn default_path() -> String {
    "/".into()
}

fn default_host() -> String {
    "example.com".into()
}

fn default_scheme() -> String {
    "https".into()
}

fn default_id() -> String {
    "decision-test".into()
}

fn default_status() -> u16 {
    200
}

fn client_address<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
    let Some(text) = Option::<String>::deserialize(d)? else {
        return Ok(None);
    };
    text.parse::<SocketAddr>()
        .or_else(|_| text.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, 0)))
        .map(Some)
        .map_err(|_| serde::de::Error::custom(format!("`{text}` is not an IP address or IP:PORT")))
}
