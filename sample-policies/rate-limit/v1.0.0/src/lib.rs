//! `rate-limit` 1.0.0: a token bucket per key, in bounded memory.
//!
//! ```yaml
//! - name: rate-limit
//!   version: 1.0.0
//!   params: {requestsPerSecond: 10, burst: 20, key: {metadata: auth.consumer}}
//! ```
//!
//! Keys are hashed (with a per-process random seed) so a bucket costs the same whatever the key's
//! length; buckets live in shards behind their own locks, so concurrent requests rarely contend.
//!
//! With `store: {redis: {url: ...}}` the buckets live in Redis instead, one per key for every
//! replica: each decision is one atomic script on Redis's clock ([`counter_store::RedisStore`]).

pub use counter_store::{KeySource, MissingKey, StoreParams};
use counter_store::{OnError, RedisStore};
use policy_sdk::{
    ImmediateResponse, Outcome, Policy, PolicyError, RequestAction, RequestContext, RequestPolicy,
    UpstreamRequestMods,
};
use serde::Deserialize;
use serde_json::json;
use std::collections::HashMap;
use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const SHARDS: usize = 16;

/// Route parameters.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Params {
    /// Tokens per second.
    pub requests_per_second: f64,
    /// Bucket size.
    #[serde(default)]
    pub burst: Option<u64>,
    /// Key source.
    #[serde(default)]
    pub key: Option<KeySource>,
    /// Absent keys.
    #[serde(default)]
    pub missing_key: MissingKey,
    /// Most keys tracked.
    #[serde(default = "default_max_keys")]
    pub max_keys: usize,
    /// Where the buckets live.
    #[serde(default)]
    pub store: StoreParams,
}

fn default_max_keys() -> usize {
    100_000
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    last: Duration,
}

/// Buckets in Redis: the store, what to do when it fails, and the prefix of this limit's keys.
struct Shared {
    store: Arc<RedisStore>,
    on_error: OnError,
    prefix: String,
}

/// The policy: its buckets.
pub struct RateLimit {
    rate: f64,
    burst: f64,
    key: KeySource,
    missing: MissingKey,
    per_shard: usize,
    seed: RandomState,
    shards: Vec<Mutex<HashMap<u64, Bucket>>>,
    epoch: Instant,
    shared: Option<Shared>,
    /// How many times a shard was scanned to make room.
    #[cfg(test)]
    scans: std::sync::atomic::AtomicUsize,
}

impl std::fmt::Debug for RateLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimit")
            .field("rate", &self.rate)
            .field("burst", &self.burst)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl Policy for RateLimit {
    type Params = Params;

    fn new(p: Params) -> Result<Self, PolicyError> {
        if !(p.requests_per_second.is_finite() && p.requests_per_second > 0.0) {
            return Err(PolicyError::invalid_param(
                "requestsPerSecond",
                "must be positive",
            ));
        }
        let burst = p
            .burst
            .unwrap_or_else(|| p.requests_per_second.ceil().max(1.0) as u64);
        if burst == 0 {
            return Err(PolicyError::invalid_param("burst", "must be at least 1"));
        }
        let key = p.key.unwrap_or_default().checked("key")?;
        let shared = match p.store {
            StoreParams::Memory => None,
            StoreParams::Redis(redis) => Some(Shared {
                store: RedisStore::shared(&redis, "store.redis")?,
                on_error: redis.on_error,
                // Replicas with the same limit on the same key source share buckets.
                prefix: format!(
                    "{}rate-limit:{}:{burst}:",
                    redis.key_prefix, p.requests_per_second
                ),
            }),
        };
        Ok(RateLimit {
            rate: p.requests_per_second,
            burst: burst as f64,
            key,
            missing: p.missing_key,
            per_shard: p.max_keys.div_ceil(SHARDS).max(1),
            seed: RandomState::new(),
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            epoch: Instant::now(),
            shared,
            #[cfg(test)]
            scans: std::sync::atomic::AtomicUsize::new(0),
        })
    }

    fn start(&self) {
        if let Some(shared) = &self.shared {
            shared.store.connect();
        }
    }
}

/// What one request got.
#[derive(Debug, PartialEq)]
enum Verdict {
    Allowed { remaining: u64 },
    Limited { retry_after: u64 },
}

impl RateLimit {
    fn key_of(&self, ctx: &RequestContext) -> Option<String> {
        self.key.of(ctx)
    }

    fn take(&self, key: &str, now: Duration) -> Verdict {
        let hash = self.seed.hash_one(key);
        let shard = &self.shards[(hash as usize) % SHARDS];
        let mut buckets = shard
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !buckets.contains_key(&hash) && buckets.len() >= self.per_shard {
            self.make_room(&mut buckets, now);
        }
        let bucket = buckets.entry(hash).or_insert(Bucket {
            tokens: self.burst,
            last: now,
        });
        let elapsed = now.saturating_sub(bucket.last).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.rate).min(self.burst);
        bucket.last = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Verdict::Allowed {
                remaining: bucket.tokens.floor() as u64,
            }
        } else {
            Verdict::Limited {
                retry_after: ((1.0 - bucket.tokens) / self.rate).ceil().max(1.0) as u64,
            }
        }
    }

    /// Drops buckets that have refilled (they equal a fresh one); if that frees nothing, the
    /// least recently used eighth of the shard at once, so the next new keys find room without
    /// another scan (one scan per `per_shard / 8` new keys, not one per key).
    fn make_room(&self, buckets: &mut HashMap<u64, Bucket>, now: Duration) {
        #[cfg(test)]
        self.scans
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let full_after = Duration::from_secs_f64(self.burst / self.rate);
        buckets.retain(|_, b| now.saturating_sub(b.last) < full_after);
        if buckets.len() < self.per_shard {
            return;
        }
        let mut lasts: Vec<Duration> = buckets.values().map(|b| b.last).collect();
        let evict = (lasts.len() / 8).max(1);
        let (_, cutoff, _) = lasts.select_nth_unstable(evict - 1);
        let cutoff = *cutoff;
        let mut left = evict;
        buckets.retain(|_, b| {
            if left > 0 && b.last <= cutoff {
                left -= 1;
                false
            } else {
                true
            }
        });
    }

    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().map_or(0, |m| m.len()))
            .sum()
    }

    /// The request is within the limit.
    fn allowed(ctx: &mut RequestContext, remaining: u64) -> RequestAction {
        ctx.metadata_mut().set("ratelimit.remaining", remaining);
        RequestAction::Continue(UpstreamRequestMods::new())
    }

    /// Takes a token from the key's bucket in Redis; a failure follows `onError`.
    async fn take_shared(
        &self,
        shared: &Shared,
        ctx: &mut RequestContext,
        key: String,
    ) -> RequestAction {
        let name = format!("{}{}", shared.prefix, self.key.digest(&key));
        match shared.store.take_token(name, self.rate, self.burst as u64).await {
            Ok(counter_store::Bucket::Allowed { remaining }) => Self::allowed(ctx, remaining),
            Ok(counter_store::Bucket::Limited { retry_after }) => {
                self.limited(retry_after.as_secs_f64().ceil().max(1.0) as u64)
            }
            Err(_) if shared.on_error == OnError::Allow => {
                ctx.metadata_mut().set("ratelimit.store", "unavailable");
                RequestAction::Continue(UpstreamRequestMods::new())
            }
            Err(_) => RequestAction::Respond(
                ImmediateResponse::json(
                    503,
                    &json!({"error": "rate_limit_unavailable", "message": "the rate limit cannot be checked"}),
                )
                .with_header("retry-after", "1"),
            ),
        }
    }

    fn limited(&self, retry_after: u64) -> RequestAction {
        RequestAction::Respond(
            ImmediateResponse::json(
                429,
                &json!({"error": "rate_limited", "message": "too many requests"}),
            )
            .with_header("retry-after", retry_after.to_string())
            .with_header("x-ratelimit-limit", (self.burst as u64).to_string())
            .with_header("x-ratelimit-remaining", "0"),
        )
    }
}

impl RequestPolicy for RateLimit {
    fn on_request<'a>(&'a self, ctx: &'a mut RequestContext) -> Outcome<'a, RequestAction> {
        let key = match self.key_of(ctx) {
            Some(key) => key,
            None if self.missing == MissingKey::Reject => {
                return Outcome::ready(self.limited(1));
            }
            None => String::new(),
        };
        if let Some(shared) = &self.shared {
            return Outcome::pending(async move { Ok(self.take_shared(shared, ctx, key).await) });
        }
        let now = self.epoch.elapsed();
        match self.take(&key, now) {
            Verdict::Allowed { remaining } => Outcome::ready(Self::allowed(ctx, remaining)),
            Verdict::Limited { retry_after } => Outcome::ready(self.limited(retry_after)),
        }
    }
}

policy_sdk::export_policy!(RateLimit, phases = [request]);

#[cfg(test)]
mod tests {
    use super::*;
    use policy_sdk::Request;
    use policy_sdk::testkit::{self, expect_continue, expect_respond};

    fn limiter(params: serde_json::Value) -> RateLimit {
        testkit::new_policy(params).expect("valid params")
    }

    fn at(seconds: f64) -> Duration {
        Duration::from_secs_f64(seconds)
    }

    #[test]
    fn a_bucket_allows_its_burst_then_refills_at_the_rate() {
        let p = limiter(json!({"requestsPerSecond": 2, "burst": 3}));
        for remaining in [2, 1, 0] {
            assert_eq!(p.take("a", at(0.0)), Verdict::Allowed { remaining });
        }
        assert_eq!(p.take("a", at(0.0)), Verdict::Limited { retry_after: 1 });
        assert_eq!(
            p.take("b", at(0.0)),
            Verdict::Allowed { remaining: 2 },
            "keys are separate"
        );
        assert_eq!(
            p.take("a", at(0.5)),
            Verdict::Allowed { remaining: 0 },
            "one token after 0.5 s"
        );
        assert_eq!(
            p.take("a", at(10.0)),
            Verdict::Allowed { remaining: 2 },
            "refills to the burst only"
        );
    }

    #[test]
    fn slow_rates_ask_for_longer_retries() {
        let p = limiter(json!({"requestsPerSecond": 0.1, "burst": 1}));
        assert!(matches!(p.take("a", at(0.0)), Verdict::Allowed { .. }));
        assert_eq!(p.take("a", at(0.0)), Verdict::Limited { retry_after: 10 });
    }

    #[test]
    fn limited_requests_get_429_with_rate_headers() {
        let p = limiter(json!({"requestsPerSecond": 1, "burst": 1, "key": {"header": "X-User"}}));
        let request = || Request::new("GET", "/").with_header("x-user", "alice");
        let mut ctx = RequestContext::new(request());
        expect_continue(testkit::run_request(&p, &mut ctx));
        assert_eq!(ctx.metadata().get("ratelimit.remaining"), Some(&json!(0)));
        let mut ctx = RequestContext::new(request());
        let r = expect_respond(testkit::run_request(&p, &mut ctx));
        assert_eq!(r.status(), 429);
        assert_eq!(r.header("retry-after"), Some("1"));
        assert_eq!(r.header("x-ratelimit-limit"), Some("1"));
        assert_eq!(r.header("x-ratelimit-remaining"), Some("0"));
    }

    #[test]
    fn keys_come_from_metadata_header_or_client_and_missing_ones_share_or_reject() {
        let p = limiter(
            json!({"requestsPerSecond": 1, "burst": 1, "key": {"metadata": "auth.consumer"}}),
        );
        let mut ctx = RequestContext::new(Request::new("GET", "/"));
        ctx.metadata_mut().set("auth.consumer", "acme");
        assert_eq!(p.key_of(&ctx).as_deref(), Some("acme"));
        let anonymous = RequestContext::new(Request::new("GET", "/"));
        assert_eq!(p.key_of(&anonymous), None);

        let p = limiter(json!({"requestsPerSecond": 1}));
        let ctx = RequestContext::new(
            Request::new("GET", "/").with_client_address("10.1.2.3:5555".parse().expect("addr")),
        );
        assert_eq!(
            p.key_of(&ctx).as_deref(),
            Some("10.1.2.3"),
            "the port is not part of the key"
        );

        let p = limiter(
            json!({"requestsPerSecond": 1, "key": {"header": "x-user"}, "missingKey": "reject"}),
        );
        let mut ctx = RequestContext::new(Request::new("GET", "/"));
        assert_eq!(
            expect_respond(testkit::run_request(&p, &mut ctx)).status(),
            429
        );
    }

    #[test]
    fn memory_is_bounded_under_many_distinct_keys() {
        let p = limiter(json!({"requestsPerSecond": 1, "burst": 5, "maxKeys": 64}));
        for i in 0..10_000 {
            p.take(&format!("client-{i}"), at(0.0));
        }
        assert!(p.tracked() <= 64, "{} buckets", p.tracked());
        // A busy key used a moment ago survives the churn of new ones.
        for _ in 0..5 {
            p.take("busy", at(1.0));
        }
        for i in 0..10 {
            p.take(&format!("late-{i}"), at(0.5));
        }
        assert_eq!(p.take("busy", at(1.0)), Verdict::Limited { retry_after: 1 });
    }

    #[test]
    fn a_flood_of_new_keys_does_not_scan_a_shard_per_key() {
        let p = limiter(json!({"requestsPerSecond": 1, "burst": 5, "maxKeys": 1600}));
        for i in 0..20_000 {
            p.take(&format!("client-{i}"), at(0.0));
        }
        assert!(p.tracked() <= 1600, "{} buckets", p.tracked());
        let scans = p.scans.load(std::sync::atomic::Ordering::Relaxed);
        // 18,400 keys had to make room; a scan frees an eighth of a 100-bucket shard.
        assert!(scans < 20_000 / 10, "{scans} scans");
    }

    #[test]
    fn bad_settings_name_their_field() {
        for (params, field) in [
            (json!({"requestsPerSecond": 0}), "requestsPerSecond"),
            (json!({"requestsPerSecond": 1, "burst": 0}), "burst"),
            (
                json!({"requestsPerSecond": 1, "key": {"client": "port"}}),
                "key.client",
            ),
            (
                json!({"requestsPerSecond": 1, "store": {"redis": {"url": "mysql://x"}}}),
                "store.redis.url",
            ),
        ] {
            let err =
                testkit::new_policy::<RateLimit>(params.clone()).expect_err(&params.to_string());
            assert!(err.to_string().contains(field), "{err}");
        }
    }
}
