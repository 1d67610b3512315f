//! `llm-token-budget` 1.0.0: model-token budgets per consumer and fixed window.
//!
//! ```yaml
//! - name: llm-token-budget
//!   version: 1.0.0
//!   params:
//!     tokens: 1000000
//!     window: month
//!     models: {gpt-4o: 200000}
//!     consumer: {metadata: auth.consumer}
//!     store: {redis: {url: "redis://redis:6379/0"}}
//! ```
//!
//! The request phase checks the consumer's counts for the current window (overall, and for the
//! request's model when it has a budget) and answers 429 once one is spent; the response phase
//! adds the tokens the model reported. A check and the count of the tokens it admitted are two
//! steps: requests admitted at the same time may together pass the budget by their own usage.

pub use counter_store::{KeySource, MissingKey, StoreParams, Window};
use counter_store::{OnError, RedisStore};
use policy_sdk::{
    ImmediateResponse, Outcome, Policy, PolicyError, RequestAction, RequestContext, RequestPolicy,
    ResponseAction, ResponseContext, ResponsePolicy, UpstreamRequestMods, UpstreamResponseMods,
};
use serde::Deserialize;
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

mod memory;
mod usage;

pub use usage::Usage;

/// Metadata: the consumer's counter digest (never the raw key: it may be a credential).
const META_KEY: &str = "llm.budget.key";
/// Metadata: the start of the window the request was admitted in (Unix seconds).
const META_WINDOW: &str = "llm.budget.window";
/// Metadata: the request's model, when it has a budget of its own.
const META_MODEL: &str = "llm.budget.model";

/// Tokens responses reported, every route together.
static TOKENS: policy_sdk::Counter = policy_sdk::Counter::new(
    "llm_tokens",
    "Model tokens responses reported (llm-token-budget).",
);
/// Requests refused because a budget was spent.
static EXCEEDED: policy_sdk::Counter = policy_sdk::Counter::new(
    "llm_token_budget_exceeded",
    "Requests llm-token-budget refused with 429 (a budget spent, or no consumer to count).",
);

/// Route parameters.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Params {
    /// Tokens per consumer and window, all models together.
    pub tokens: u64,
    /// The counting window.
    pub window: Window,
    /// Tokens per consumer, window and model.
    #[serde(default)]
    pub models: BTreeMap<String, u64>,
    /// Who is counted.
    #[serde(default)]
    pub consumer: Option<KeySource>,
    /// Requests without a consumer.
    #[serde(default)]
    pub missing_consumer: MissingKey,
    /// Most counters in memory.
    #[serde(default = "default_max_keys")]
    pub max_keys: usize,
    /// Where the counts live.
    #[serde(default)]
    pub store: StoreParams,
}

fn default_max_keys() -> usize {
    100_000
}

/// Where the counts live.
#[derive(Debug)]
enum Counts {
    Memory(memory::Memory),
    Redis {
        store: Arc<RedisStore>,
        on_error: OnError,
        prefix: String,
    },
}

/// The policy.
#[derive(Debug)]
pub struct TokenBudget {
    tokens: u64,
    window: Window,
    models: BTreeMap<String, u64>,
    consumer: KeySource,
    missing: MissingKey,
    counts: Counts,
}

impl Policy for TokenBudget {
    type Params = Params;

    fn new(p: Params) -> Result<Self, PolicyError> {
        if let Some((model, _)) = p.models.iter().find(|(_, budget)| **budget == 0) {
            return Err(PolicyError::invalid_param(
                format!("models.{model}"),
                "must be at least 1",
            ));
        }
        let counts = match p.store {
            StoreParams::Memory => Counts::Memory(memory::Memory::new(p.max_keys)),
            StoreParams::Redis(redis) => Counts::Redis {
                store: RedisStore::shared(&redis, "store.redis")?,
                on_error: redis.on_error,
                prefix: format!("{}llm-token-budget:{:?}:", redis.key_prefix, p.window),
            },
        };
        Ok(TokenBudget {
            tokens: p.tokens,
            window: p.window,
            models: p.models,
            consumer: p.consumer.unwrap_or_default().checked("consumer")?,
            missing: p.missing_consumer,
            counts,
        })
    }

    fn start(&self) {
        if let Counts::Redis { store, .. } = &self.counts {
            store.connect();
        }
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The budgets a request is counted against: (counter name, budget).
fn counters(digest: &str, tokens: u64, model: Option<(&str, u64)>) -> (Vec<String>, Vec<u64>) {
    let mut names = vec![digest.to_owned()];
    let mut budgets = vec![tokens];
    if let Some((model, budget)) = model {
        names.push(format!(
            "{digest}:model:{}",
            counter_store::key_digest(model)
        ));
        budgets.push(budget);
    }
    (names, budgets)
}

/// The `model` a JSON request body names.
fn model_of(body: Option<&[u8]>) -> Option<String> {
    #[derive(Deserialize)]
    struct Request {
        model: Option<String>,
    }
    serde_json::from_slice::<Request>(body?).ok()?.model
}

impl TokenBudget {
    /// The model's own budget, if the request names a model that has one.
    fn model_budget<'m>(&'m self, model: Option<&'m str>) -> Option<(&'m str, u64)> {
        let model = model?;
        self.models.get(model).map(|&budget| (model, budget))
    }

    /// Full counter keys in Redis, or the names themselves in memory.
    fn keys(&self, names: &[String], start: u64) -> Vec<String> {
        match &self.counts {
            Counts::Redis { prefix, .. } => names
                .iter()
                .map(|n| format!("{prefix}{n}:{start}"))
                .collect(),
            Counts::Memory(_) => names.to_vec(),
        }
    }

    /// Admits the request or answers 429 until the window's end.
    fn decide(
        &self,
        ctx: &mut RequestContext,
        used: &[u64],
        budgets: &[u64],
        now: u64,
    ) -> RequestAction {
        let (_, end) = self.window.bounds(now);
        if let Some((_, &budget)) = used.iter().zip(budgets).find(|(u, b)| *u >= *b) {
            EXCEEDED.add(1);
            return RequestAction::Respond(
                ImmediateResponse::json(
                    429,
                    &json!({
                        "error": "token_budget_exceeded",
                        "message": "the token budget for this window is spent",
                        "budget": budget,
                        "resetsAt": end,
                    }),
                )
                .with_header("retry-after", end.saturating_sub(now).max(1).to_string())
                .with_header("x-ratelimit-limit-tokens", budget.to_string())
                .with_header("x-ratelimit-remaining-tokens", "0"),
            );
        }
        let remaining = used
            .iter()
            .zip(budgets)
            .map(|(u, b)| b - u)
            .min()
            .unwrap_or(0);
        ctx.metadata_mut().set("llm.budget.remaining", remaining);
        RequestAction::Continue(UpstreamRequestMods::new())
    }
}

impl RequestPolicy for TokenBudget {
    fn on_request<'a>(&'a self, ctx: &'a mut RequestContext) -> Outcome<'a, RequestAction> {
        let consumer = match self.consumer.of(ctx) {
            Some(consumer) => consumer,
            None if self.missing == MissingKey::Reject => {
                EXCEEDED.add(1);
                return Outcome::ready(RequestAction::Respond(ImmediateResponse::json(
                    429,
                    &json!({"error": "token_budget_exceeded", "message": "no consumer to count"}),
                )));
            }
            None => String::new(),
        };
        let now = unix_now();
        let (start, _) = self.window.bounds(now);
        let model = model_of(ctx.request().body());
        let model = self.model_budget(model.as_deref());
        let digest = self.consumer.digest(&consumer);
        let (names, budgets) = counters(&digest, self.tokens, model);
        let metadata = ctx.metadata_mut();
        metadata.set(META_KEY, digest);
        metadata.set(META_WINDOW, start);
        if let Some((model, _)) = model {
            metadata.set(META_MODEL, model);
        }
        let keys = self.keys(&names, start);
        match &self.counts {
            Counts::Memory(memory) => {
                let used = memory.totals(&keys, start);
                Outcome::ready(self.decide(ctx, &used, &budgets, now))
            }
            Counts::Redis {
                store, on_error, ..
            } => Outcome::pending(async move {
                Ok(match store.totals(keys).await {
                    Ok(used) => self.decide(ctx, &used, &budgets, now),
                    Err(_) if *on_error == OnError::Allow => {
                        ctx.metadata_mut().set("llm.budget.store", "unavailable");
                        RequestAction::Continue(UpstreamRequestMods::new())
                    }
                    Err(_) => RequestAction::Respond(
                        ImmediateResponse::json(
                            503,
                            &json!({"error": "token_budget_unavailable", "message": "the token budget cannot be checked"}),
                        )
                        .with_header("retry-after", "1"),
                    ),
                })
            }),
        }
    }
}

impl ResponsePolicy for TokenBudget {
    fn on_response<'a>(&'a self, ctx: &'a mut ResponseContext) -> Outcome<'a, ResponseAction> {
        let pass = || ResponseAction::Continue(UpstreamResponseMods::new());
        let response = ctx.response();
        let Some(usage) = usage::from_body(
            response.header("content-type"),
            response.body().unwrap_or_default(),
        ) else {
            return Outcome::ready(pass());
        };
        TOKENS.add(usage.total);
        let metadata = ctx.metadata_mut();
        metadata.set("llm.tokens.used", usage.total);
        if let Some(prompt) = usage.prompt {
            metadata.set("llm.tokens.prompt", prompt);
        }
        if let Some(completion) = usage.completion {
            metadata.set("llm.tokens.completion", completion);
        }
        let metadata = ctx.metadata();
        let (Some(digest), Some(start)) = (
            metadata.get_str(META_KEY).map(str::to_owned),
            metadata.get(META_WINDOW).and_then(|v| v.as_u64()),
        ) else {
            // The request phase did not admit this request (another policy answered it).
            return Outcome::ready(pass());
        };
        let model = metadata.get_str(META_MODEL);
        let model = self.model_budget(model);
        let (names, _) = counters(&digest, self.tokens, model);
        let keys = self.keys(&names, start);
        match &self.counts {
            Counts::Memory(memory) => {
                let totals = memory.add(&keys, start, usage.total);
                if let Some(&total) = totals.first() {
                    ctx.metadata_mut().set("llm.budget.used", total);
                }
                Outcome::ready(pass())
            }
            Counts::Redis { store, .. } => Outcome::pending(async move {
                let (_, end) = self.window.bounds(start);
                // Kept a minute past the window, for replicas whose clocks lag.
                let expire_at_ms = end.saturating_add(60).saturating_mul(1000);
                // A count that cannot be written is logged by the store; the answer passes:
                // the tokens are spent already.
                if let Ok(totals) = store.add(keys, usage.total, expire_at_ms).await
                    && let Some(&total) = totals.first()
                {
                    ctx.metadata_mut().set("llm.budget.used", total);
                }
                Ok(pass())
            }),
        }
    }
}

policy_sdk::export_policy!(TokenBudget, phases = [request, response]);

#[cfg(test)]
mod tests;
