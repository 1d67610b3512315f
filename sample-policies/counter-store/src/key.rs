//! Who a counter belongs to: a metadata value, a request header or the client address.

use policy_sdk::{PolicyError, RequestContext};
use serde::Deserialize;

/// Where a request's counting key comes from (`{metadata: auth.consumer}`, `{header: x-user}`,
/// `{client: address}`).
///
/// ```
/// use counter_store::KeySource;
/// use policy_sdk::{Request, RequestContext};
///
/// let source: KeySource = serde_json::from_value(serde_json::json!({"header": "X-User"})).unwrap();
/// let source = source.checked("key").unwrap();
/// let ctx = RequestContext::new(Request::new("GET", "/").with_header("x-user", "alice"));
/// assert_eq!(source.of(&ctx).as_deref(), Some("alice"));
/// ```
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub enum KeySource {
    /// A metadata value an earlier policy wrote.
    Metadata(String),
    /// A request header.
    Header(String),
    /// The client address (the value must be `address`).
    Client(String),
}

impl Default for KeySource {
    fn default() -> Self {
        KeySource::Client("address".into())
    }
}

impl KeySource {
    /// Checks what the schema cannot (`client` must be `address`) and lower-cases a header
    /// name; errors name `field`.
    pub fn checked(self, field: &str) -> Result<KeySource, PolicyError> {
        match self {
            KeySource::Client(what) if what != "address" => Err(PolicyError::invalid_param(
                format!("{field}.client"),
                "must be `address`",
            )),
            KeySource::Header(name) => Ok(KeySource::Header(name.to_ascii_lowercase())),
            other => Ok(other),
        }
    }

    /// The request's key, if it has one (the client's IP without the port).
    pub fn of(&self, ctx: &RequestContext) -> Option<String> {
        match self {
            KeySource::Metadata(key) => ctx.metadata().get(key).map(|v| match v.as_str() {
                Some(s) => s.to_owned(),
                None => v.to_string(),
            }),
            KeySource::Header(name) => ctx.request().header(name).map(str::to_owned),
            KeySource::Client(_) => ctx.request().client_address().map(|a| a.ip().to_string()),
        }
    }

    /// The digest of `key` from this source (see [`key_digest`](crate::key_digest)): the same
    /// value from two sources never shares a counter.
    pub fn digest(&self, key: &str) -> String {
        crate::key_digest(&format!("{self:?}\n{key}"))
    }
}

/// What a policy does with a request that has no key (`missingKey` / `missingConsumer`).
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum MissingKey {
    /// All such requests are counted together (the default).
    #[default]
    Shared,
    /// Such requests get 429 at once.
    Reject,
}
