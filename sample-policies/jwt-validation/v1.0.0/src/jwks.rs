//! Signing keys: an inline JWKS, or one fetched from a URL and cached, refreshed when it expires
//! or a token names an unknown `kid` (at most once per `minRefreshInterval`), and kept for a grace
//! period while the endpoint is down.

use futures_channel::oneshot;
use jsonwebtoken::Algorithm;
use jsonwebtoken::DecodingKey;
use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet, PublicKeyUse};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// The largest JWKS document read.
const MAX_JWKS_BYTES: u64 = 512 * 1024;

/// Keys by `kid` (keys without one are stored under ""), each with the algorithm its JWK pins.
#[derive(Clone, Default)]
pub struct KeySet {
    keys: HashMap<String, (DecodingKey, Option<Algorithm>)>,
}

impl std::fmt::Debug for KeySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeySet")
            .field("kids", &self.keys.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl KeySet {
    /// The usable signing keys of `set`: encryption keys, symmetric (`oct`) keys (a published
    /// JWKS is public: a shared secret in it would let anyone sign) and keys whose `alg` is not a
    /// signing algorithm are left out.
    pub fn from_jwks(set: &JwkSet) -> KeySet {
        let keys = set
            .keys
            .iter()
            .filter(|jwk| !matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)))
            .filter(|jwk| !matches!(jwk.algorithm, AlgorithmParameters::OctetKey(_)))
            .filter_map(|jwk| {
                let alg = match jwk.common.key_algorithm {
                    Some(alg) => Some(Algorithm::try_from(alg).ok()?),
                    None => None,
                };
                let key = DecodingKey::from_jwk(jwk).ok()?;
                Some((jwk.common.key_id.clone().unwrap_or_default(), (key, alg)))
            })
            .collect();
        KeySet { keys }
    }

    /// The key for a token's `kid` and `alg`; a token without a `kid` may use the only key of a
    /// one-key set. A key whose JWK names an `alg` serves only tokens of that algorithm.
    pub fn get(&self, kid: Option<&str>, alg: Algorithm) -> Option<&DecodingKey> {
        let (key, pinned) = match kid {
            Some(kid) => self.keys.get(kid)?,
            None if self.keys.len() == 1 => self.keys.values().next()?,
            None => return None,
        };
        pinned.is_none_or(|p| p == alg).then_some(key)
    }

    /// How many keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// Cache timing.
#[derive(Debug, Clone, Copy)]
pub struct CacheSettings {
    /// How long fetched keys are fresh.
    pub ttl: Duration,
    /// The least time between two fetches.
    pub min_refresh_interval: Duration,
    /// How long past `ttl` keys are still used when the endpoint cannot be reached.
    pub stale_grace: Duration,
    /// The fetch timeout.
    pub timeout: Duration,
}

/// What a lookup found.
pub enum Lookup {
    /// The key.
    Key(DecodingKey),
    /// The keys are known and this `kid` is not among them.
    UnknownKid,
    /// There are no usable keys (never fetched, or stale past the grace period).
    Unavailable(String),
}

#[derive(Default)]
struct State {
    keys: Option<Arc<KeySet>>,
    fetched_at: Option<Instant>,
    last_attempt: Option<Instant>,
    last_error: Option<String>,
    /// Requests waiting for the fetch in flight; `None` when none is.
    waiters: Option<Vec<oneshot::Sender<()>>>,
}

impl std::fmt::Debug for Lookup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Lookup::Key(_) => f.write_str("Key"),
            Lookup::UnknownKid => f.write_str("UnknownKid"),
            Lookup::Unavailable(why) => write!(f, "Unavailable({why})"),
        }
    }
}

impl std::fmt::Debug for Jwks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Jwks")
            .field("url", &self.url)
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// Where keys come from.
pub struct Jwks {
    url: Option<String>,
    settings: CacheSettings,
    state: Mutex<State>,
}

impl Jwks {
    /// Keys given in the configuration; never fetched.
    pub fn inline(keys: KeySet) -> Arc<Jwks> {
        Arc::new(Jwks {
            url: None,
            settings: CacheSettings {
                ttl: Duration::MAX,
                min_refresh_interval: Duration::MAX,
                stale_grace: Duration::ZERO,
                timeout: Duration::ZERO,
            },
            state: Mutex::new(State {
                keys: Some(Arc::new(keys)),
                fetched_at: Some(Instant::now()),
                ..State::default()
            }),
        })
    }

    /// Keys fetched from `url`: the process-wide cache for this URL and these settings (see
    /// [`policy_sdk::shared_resource`]), so instances built for changed parameters keep the keys
    /// already fetched. Nothing is fetched here; [`Jwks::prefetch`] or the first lookup does.
    pub fn remote(url: String, settings: CacheSettings) -> Arc<Jwks> {
        let key = format!("{url} {settings:?}");
        policy_sdk::shared_resource(&key, || Jwks {
            url: Some(url),
            settings,
            state: Mutex::new(State::default()),
        })
    }

    /// Starts the first fetch in the background, unless one was made or is in flight (or the
    /// keys are inline).
    pub fn prefetch(self: &Arc<Self>) {
        if self.url.is_none() {
            return;
        }
        {
            let mut state = self.lock();
            if state.last_attempt.is_some() || state.waiters.is_some() {
                return;
            }
            state.last_attempt = Some(Instant::now());
            state.waiters = Some(Vec::new());
        }
        self.spawn_fetch();
    }

    /// Fetches on a thread of its own, which stores the result and wakes the waiters.
    fn spawn_fetch(self: &Arc<Self>) {
        let jwks = Arc::clone(self);
        std::thread::spawn(move || {
            let result = fetch_blocking(jwks.url(), jwks.settings.timeout);
            jwks.finish_fetch(result);
        });
    }

    fn url(&self) -> &str {
        self.url.as_deref().unwrap_or_default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The key for `kid` and `alg`, fetching (or waiting for a fetch in flight) when needed.
    ///
    /// Cancellation-safe: a fetch is owned by its own thread, which stores the result and wakes
    /// every waiter, so a lookup dropped mid-way (client gone, policy timeout) never leaves the
    /// cache waiting; the fetch still completes and serves the next lookup.
    pub async fn key(self: &Arc<Self>, kid: Option<&str>, alg: Algorithm) -> Lookup {
        // At most: one lookup, one wait for a fetch in flight or one fetch, one lookup.
        for round in 0..2 {
            enum Next {
                Done(Lookup),
                Wait(oneshot::Receiver<()>),
                Fetch(oneshot::Receiver<()>),
            }
            let next = {
                let mut state = self.lock();
                let now = Instant::now();
                let age = state.fetched_at.map(|t| now.saturating_duration_since(t));
                let fresh = age.is_some_and(|a| a < self.settings.ttl);
                let usable = age.is_some_and(|a| {
                    a < self.settings.ttl.saturating_add(self.settings.stale_grace)
                });
                let found = state
                    .keys
                    .as_ref()
                    .filter(|_| usable)
                    .and_then(|k| k.get(kid, alg).cloned());
                match (found, &mut state.waiters) {
                    (Some(key), _) if fresh || self.url.is_none() => Next::Done(Lookup::Key(key)),
                    (_, Some(waiters)) if round == 0 => {
                        let (tx, rx) = oneshot::channel();
                        waiters.push(tx);
                        Next::Wait(rx)
                    }
                    (found, _) => {
                        let may_fetch = self.url.is_some()
                            && round == 0
                            && state.last_attempt.is_none_or(|t| {
                                now.saturating_duration_since(t)
                                    >= self.settings.min_refresh_interval
                            });
                        if may_fetch {
                            state.last_attempt = Some(now);
                            let (tx, rx) = oneshot::channel();
                            state.waiters = Some(vec![tx]);
                            Next::Fetch(rx)
                        } else if let Some(key) = found {
                            Next::Done(Lookup::Key(key))
                        } else if usable {
                            Next::Done(Lookup::UnknownKid)
                        } else {
                            let why = state
                                .last_error
                                .clone()
                                .unwrap_or_else(|| "the JWKS has not been fetched yet".into());
                            Next::Done(Lookup::Unavailable(why))
                        }
                    }
                }
            };
            match next {
                Next::Done(lookup) => return lookup,
                Next::Wait(rx) => {
                    let _ = rx.await;
                }
                Next::Fetch(rx) => {
                    self.spawn_fetch();
                    let _ = rx.await;
                }
            }
        }
        // After a refresh: what we have now, without another fetch.
        let state = self.lock();
        let usable = state.fetched_at.is_some_and(|t| {
            t.elapsed() < self.settings.ttl.saturating_add(self.settings.stale_grace)
        });
        match state.keys.as_ref().filter(|_| usable) {
            Some(keys) => keys
                .get(kid, alg)
                .cloned()
                .map_or(Lookup::UnknownKid, Lookup::Key),
            None => Lookup::Unavailable(
                state
                    .last_error
                    .clone()
                    .unwrap_or_else(|| "the JWKS has not been fetched yet".into()),
            ),
        }
    }

    /// Stores a fetch's result (keeping the old keys when it failed) and wakes the waiters.
    fn finish_fetch(&self, result: Result<KeySet, String>) {
        let waiters = {
            let mut state = self.lock();
            match result {
                Ok(keys) => {
                    state.keys = Some(Arc::new(keys));
                    state.fetched_at = Some(Instant::now());
                    state.last_error = None;
                }
                Err(error) => state.last_error = Some(error),
            }
            state.waiters.take().unwrap_or_default()
        };
        for waiter in waiters {
            let _ = waiter.send(());
        }
    }
}

/// Fetches and parses a JWKS (blocking; run off the request path).
fn fetch_blocking(url: &str, timeout: Duration) -> Result<KeySet, String> {
    let agent = ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        .max_redirects(0)
        .build()
        .new_agent();
    let mut response = agent
        .get(url)
        .header("accept", "application/json")
        .call()
        .map_err(|e| format!("fetching the JWKS from {url}: {e}"))?;
    let text = response
        .body_mut()
        .with_config()
        .limit(MAX_JWKS_BYTES)
        .read_to_string()
        .map_err(|e| format!("reading the JWKS from {url}: {e}"))?;
    let set: JwkSet = serde_json::from_str(&text)
        .map_err(|e| format!("the JWKS from {url} is not a JWK set: {e}"))?;
    let keys = KeySet::from_jwks(&set);
    if keys.is_empty() {
        return Err(format!("the JWKS from {url} has no usable signing key"));
    }
    Ok(keys)
}
