//! The `store` parameter.

use serde::Deserialize;
use std::fmt;

/// Where a policy keeps its counters.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum StoreParams {
    /// In this process: per replica, lost on restart (the default).
    #[default]
    Memory,
    /// In Redis: one count for every replica.
    Redis(RedisParams),
}

/// `store: {redis: {...}}`.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RedisParams {
    /// `redis://[user:password@]host:port[/db]`, or `rediss://` for TLS.
    pub url: String,
    /// Prepended to every key this policy writes (default `policy:`).
    #[serde(default = "default_prefix")]
    pub key_prefix: String,
    /// How long one decision may wait for Redis, connecting included (default 50 ms).
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// What a request gets while Redis cannot answer (default `deny`).
    #[serde(default)]
    pub on_error: OnError,
}

fn default_prefix() -> String {
    "policy:".into()
}

fn default_timeout_ms() -> u64 {
    50
}

/// The URL may carry a password: it is never printed.
impl fmt::Debug for RedisParams {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisParams")
            .field("url", &"<redacted>")
            .field("key_prefix", &self.key_prefix)
            .field("timeout_ms", &self.timeout_ms)
            .field("on_error", &self.on_error)
            .finish()
    }
}

/// What a policy does when its Redis store fails or times out.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum OnError {
    /// Let the request through uncounted (availability first).
    Allow,
    /// Answer 503 (the default: a limit that cannot be checked is not granted).
    #[default]
    Deny,
}
