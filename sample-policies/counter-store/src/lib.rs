//! Counters the sample policies keep in one place for every engine replica (and every Envoy
//! worker running the module): token buckets for `rate-limit` and fixed-window totals for
//! `llm-token-budget`, in Redis.
//!
//! A policy takes a [`StoreParams`] parameter (`memory`, its own in-process counters, or
//! `{redis: {url, ...}}`) and, for Redis, holds a [`RedisStore`]: one per distinct URL and
//! timeout in the process ([`policy_sdk::shared_resource`]), connected lazily on a thread of its
//! own, so the store behaves the same in every host and never blocks the caller's executor.
//!
//! ```
//! use counter_store::{OnError, StoreParams};
//!
//! let memory: StoreParams = serde_json::from_value(serde_json::json!("memory")).unwrap();
//! assert_eq!(memory, StoreParams::Memory);
//! let redis: StoreParams = serde_json::from_value(serde_json::json!(
//!     {"redis": {"url": "redis://127.0.0.1:6379/0", "onError": "allow"}}
//! )).unwrap();
//! let StoreParams::Redis(redis) = redis else { unreachable!() };
//! assert_eq!((redis.timeout_ms, redis.on_error), (50, OnError::Allow));
//! ```

mod key;
mod params;
mod redis_store;
mod window;

pub use key::{KeySource, MissingKey};
pub use params::{OnError, RedisParams, StoreParams};
pub use redis_store::{Bucket, RedisStore, StoreError};
pub use window::Window;

use sha2::{Digest, Sha256};

/// A counter name for a caller's key: a stable digest (the same on every replica, a bounded
/// length whatever the caller sent), so hostile keys cannot grow Redis keys or collide by
/// containing the separator.
pub fn key_digest(key: &str) -> String {
    let digest = Sha256::digest(key.as_bytes());
    digest[..16].iter().map(|b| format!("{b:02x}")).collect()
}
