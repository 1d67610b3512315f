//! Per-request shared metadata.

use serde_json::Value;
use std::collections::BTreeMap;

/// Values policies share within one request: written during the request phase, readable by later
/// policies, by CEL conditions (`metadata["auth.subject"]`) and by response-phase policies.
///
/// Metadata lives per request, never per route. When two policies write the same key, the last
/// writer wins. Keys are free-form; dotted names (`auth.subject`) keep policies apart.
///
/// ```
/// use policy_sdk::Metadata;
///
/// let mut meta = Metadata::new();
/// meta.set("auth.subject", "alice");
/// meta.set("auth.admin", true);
/// assert_eq!(meta.get_str("auth.subject"), Some("alice"));
/// assert_eq!(meta.get("auth.admin").and_then(|v| v.as_bool()), Some(true));
/// ```
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Metadata {
    entries: BTreeMap<String, Value>,
}

impl Metadata {
    /// Empty metadata; allocates nothing until the first write.
    pub fn new() -> Self {
        Self::default()
    }

    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.entries.get(key)
    }

    /// The value of `key` when it is a string.
    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.get(key).and_then(Value::as_str)
    }

    /// Writes `key`, replacing any earlier value; returns the earlier value.
    pub fn set(&mut self, key: impl Into<String>, value: impl Into<Value>) -> Option<Value> {
        self.entries.insert(key.into(), value.into())
    }

    /// Removes `key`; returns its value.
    pub fn remove(&mut self, key: &str) -> Option<Value> {
        self.entries.remove(key)
    }

    /// Whether `key` is set.
    pub fn contains(&self, key: &str) -> bool {
        self.entries.contains_key(key)
    }

    /// Every entry, sorted by key.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.entries.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// The number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no key is set.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}
