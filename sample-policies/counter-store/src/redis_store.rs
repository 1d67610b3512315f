//! Counters in Redis: one atomic server-side script per decision, on a connection of the
//! store's own (multiplexed, reconnecting), driven by a one-thread runtime the store owns.

use crate::RedisParams;
use policy_sdk::PolicyError;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, ConnectionAddr, Script};
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, LazyLock, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};
use tokio::runtime::Runtime;

/// Takes one token from a bucket, on the server's clock (replicas' clocks never matter).
/// KEYS[1] bucket; ARGV rate per second, burst. Returns {1, tokens left} or {0, ms to wait}.
static TAKE_TOKEN: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local b = redis.call('HMGET', KEYS[1], 't', 'v')
local last = tonumber(b[1])
local tokens = tonumber(b[2])
if tokens == nil or last == nil then
  tokens = burst
  last = now
end
tokens = math.min(burst, tokens + math.max(0, now - last) * rate)
local allowed = 0
if tokens >= 1 then
  tokens = tokens - 1
  allowed = 1
end
redis.call('HSET', KEYS[1], 't', tostring(now), 'v', tostring(tokens))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
if allowed == 1 then
  return {1, math.floor(tokens)}
end
return {0, math.ceil((1 - tokens) / rate * 1000)}
",
    )
});

/// Adds ARGV[1] to every key in KEYS, each expiring at ARGV[2] (Unix ms). Returns the totals.
static ADD_TO_WINDOWS: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local totals = {}
for i, key in ipairs(KEYS) do
  totals[i] = redis.call('INCRBY', key, ARGV[1])
  redis.call('PEXPIREAT', key, ARGV[2])
end
return totals
",
    )
});

/// What one token bucket said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bucket {
    /// Allowed; whole tokens left.
    Allowed {
        /// Tokens left after this request.
        remaining: u64,
    },
    /// Over the limit; when a token will be there.
    Limited {
        /// Time until the next token.
        retry_after: Duration,
    },
}

/// Why Redis did not answer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No answer within the store's timeout (connecting included).
    #[error("Redis did not answer within {0:?}")]
    Timeout(Duration),
    /// The connection or the command failed.
    #[error("Redis failed: {0}")]
    Redis(String),
    /// The store could not start its connection thread.
    #[error("the Redis store could not start: {0}")]
    Start(String),
    /// The store stopped while the command ran.
    #[error("the Redis store stopped")]
    Stopped,
}

/// A Redis server as a store: shared by every policy instance in the process that names the
/// same URL and timeout, connected on first use.
pub struct RedisStore {
    client: Client,
    /// `host:port` (never the URL: it may carry a password).
    target: String,
    timeout: Duration,
    connection: OnceLock<Result<Connection, String>>,
    failing: AtomicBool,
    last_warning: Mutex<Option<Instant>>,
    errors: AtomicU64,
}

/// The live connection and the runtime that drives it.
struct Connection {
    manager: ConnectionManager,
    runtime: Option<Runtime>,
}

impl Drop for Connection {
    fn drop(&mut self) {
        // Dropping a runtime may happen on an async worker (the last instance dropped by a
        // reload): shut it down without waiting.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("target", &self.target)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// Commands that failed or timed out, every store of the process together.
static REDIS_ERRORS: policy_sdk::Counter = policy_sdk::Counter::new(
    "counter_store_redis_errors",
    "Redis store commands (rate-limit, llm-token-budget) that failed or timed out.",
);

/// How often a store that keeps failing logs it again.
const WARN_EVERY: Duration = Duration::from_secs(10);

impl RedisStore {
    /// The process's store for these parameters (no I/O, no thread: those start on first use or
    /// [`RedisStore::connect`]). Errors name the field: a URL Redis cannot parse, `insecure` TLS.
    pub fn shared(params: &RedisParams, field: &str) -> Result<Arc<RedisStore>, PolicyError> {
        if !(1..=10_000).contains(&params.timeout_ms) {
            return Err(PolicyError::invalid_param(
                format!("{field}.timeoutMs"),
                "must be between 1 and 10000",
            ));
        }
        let client = Client::open(params.url.as_str()).map_err(|e| {
            PolicyError::invalid_param(
                format!("{field}.url"),
                format!(
                    "is not a Redis URL ({:?}): use redis://[user:password@]host:port[/db] or rediss://",
                    e.kind()
                ),
            )
        })?;
        let target = match client.get_connection_info().addr() {
            ConnectionAddr::TcpTls { insecure: true, .. } => {
                return Err(PolicyError::invalid_param(
                    format!("{field}.url"),
                    "asks for TLS without certificate checks (#insecure): remove it",
                ));
            }
            addr => addr.to_string(),
        };
        let timeout = Duration::from_millis(params.timeout_ms);
        let key = format!("{}\n{}", params.url, params.timeout_ms);
        Ok(policy_sdk::shared_resource(&key, || RedisStore {
            client,
            target,
            timeout,
            connection: OnceLock::new(),
            failing: AtomicBool::new(false),
            last_warning: Mutex::new(None),
            errors: AtomicU64::new(0),
        }))
    }

    /// Starts the connection thread (connecting happens on the first command). Called from a
    /// policy's `start`, so the first request does not pay for it.
    pub fn connect(&self) {
        let _ = self.connection();
    }

    /// `host:port` of the server.
    pub fn target(&self) -> &str {
        &self.target
    }

    /// Commands that failed or timed out since the process started.
    pub fn errors(&self) -> u64 {
        self.errors.load(Relaxed)
    }

    fn connection(&self) -> Result<&Connection, StoreError> {
        self.connection
            .get_or_init(|| {
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(1)
                    .thread_name("policy-redis")
                    .enable_all()
                    .build()
                    .map_err(|e| e.to_string())?;
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(self.timeout))
                    .set_response_timeout(Some(self.timeout))
                    .set_number_of_retries(1)
                    .set_max_delay(Duration::from_millis(500));
                let manager = {
                    let _context = runtime.enter();
                    ConnectionManager::new_lazy_with_config(self.client.clone(), config)
                        .map_err(|e| e.to_string())?
                };
                Ok(Connection {
                    manager,
                    runtime: Some(runtime),
                })
            })
            .as_ref()
            .map_err(|e| StoreError::Start(e.clone()))
    }

    /// Runs `command` on the store's runtime, within the timeout. Cancellation-safe: the
    /// command is owned by the runtime; a caller that goes away only drops the answer.
    async fn run<T, F, Fut>(&self, command: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(ConnectionManager) -> Fut + Send + 'static,
        Fut: Future<Output = redis::RedisResult<T>> + Send + 'static,
    {
        let result = self.run_unobserved(command).await;
        self.observe(&result);
        result
    }

    async fn run_unobserved<T, F, Fut>(&self, command: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(ConnectionManager) -> Fut + Send + 'static,
        Fut: Future<Output = redis::RedisResult<T>> + Send + 'static,
    {
        let connection = self.connection()?;
        let Some(runtime) = &connection.runtime else {
            return Err(StoreError::Stopped);
        };
        let manager = connection.manager.clone();
        let timeout = self.timeout;
        let (tx, rx) = tokio::sync::oneshot::channel();
        runtime.spawn(async move {
            let result = match tokio::time::timeout(timeout, command(manager)).await {
                Ok(Ok(value)) => Ok(value),
                Ok(Err(e)) => Err(StoreError::Redis(e.to_string())),
                Err(_) => Err(StoreError::Timeout(timeout)),
            };
            let _ = tx.send(result);
        });
        rx.await.unwrap_or(Err(StoreError::Stopped))
    }

    /// Logs the first failure and then at most one every [`WARN_EVERY`], and the recovery.
    fn observe<T>(&self, result: &Result<T, StoreError>) {
        match result {
            Ok(_) => {
                if self.failing.swap(false, Relaxed) {
                    tracing::info!(store = %self.target, "the Redis store answers again");
                }
            }
            Err(error) => {
                REDIS_ERRORS.add(1);
                let failed = self.errors.fetch_add(1, Relaxed) + 1;
                let first = !self.failing.swap(true, Relaxed);
                let mut last = self
                    .last_warning
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                if first || last.is_none_or(|t| t.elapsed() >= WARN_EVERY) {
                    *last = Some(Instant::now());
                    tracing::warn!(
                        store = %self.target,
                        errors = failed,
                        "the Redis store is unavailable, requests follow its onError: {error}"
                    );
                }
            }
        }
    }

    /// Takes a token from the bucket `key` (`rate` per second, at most `burst`).
    pub async fn take_token(
        &self,
        key: String,
        rate: f64,
        burst: u64,
    ) -> Result<Bucket, StoreError> {
        let (allowed, value): (i64, i64) = self
            .run(move |mut connection| async move {
                TAKE_TOKEN
                    .key(key)
                    .arg(rate)
                    .arg(burst)
                    .invoke_async(&mut connection)
                    .await
            })
            .await?;
        let value = u64::try_from(value).unwrap_or(0);
        Ok(if allowed == 1 {
            Bucket::Allowed { remaining: value }
        } else {
            Bucket::Limited {
                retry_after: Duration::from_millis(value),
            }
        })
    }

    /// The current totals of `keys` (0 for a key not there).
    pub async fn totals(&self, keys: Vec<String>) -> Result<Vec<u64>, StoreError> {
        let values: Vec<Option<u64>> = self
            .run(move |mut connection| async move {
                redis::cmd("MGET")
                    .arg(keys)
                    .query_async(&mut connection)
                    .await
            })
            .await?;
        Ok(values.into_iter().map(Option::unwrap_or_default).collect())
    }

    /// Adds `amount` to each of `keys`, which expire at `expire_at_ms` (Unix milliseconds); the
    /// new totals.
    pub async fn add(
        &self,
        keys: Vec<String>,
        amount: u64,
        expire_at_ms: u64,
    ) -> Result<Vec<u64>, StoreError> {
        self.run(move |mut connection| async move {
            let mut invocation = ADD_TO_WINDOWS.prepare_invoke();
            for key in keys {
                invocation.key(key);
            }
            invocation
                .arg(amount)
                .arg(expire_at_ms)
                .invoke_async(&mut connection)
                .await
        })
        .await
    }
}
