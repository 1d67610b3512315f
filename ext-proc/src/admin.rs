//! The admin HTTP API, on its own port (loopback by default): probes, Prometheus metrics, the
//! active configuration (secrets redacted), the compiled-in policies and the build information.
//! Only GET (and HEAD) are served; other methods get 405 with `Allow`.

use crate::Registry;
use crate::state::EngineState;
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::UNIX_EPOCH;

/// What the admin API reads.
#[derive(Debug)]
pub struct Admin {
    state: Arc<EngineState>,
    registry: Arc<Registry>,
    build_info: Value,
    /// Renders running at once: each takes a thread, and scrapers may be many.
    renders: Arc<tokio::sync::Semaphore>,
}

/// The most `/metrics` or `/config` answers rendered at once; more wait their turn.
const MAX_CONCURRENT_RENDERS: usize = 2;

impl Admin {
    /// An admin API over the engine's state, registry and build information.
    pub fn new(state: Arc<EngineState>, registry: Arc<Registry>, build_info: Value) -> Self {
        Admin {
            state,
            registry,
            build_info,
            renders: Arc::new(tokio::sync::Semaphore::new(MAX_CONCURRENT_RENDERS)),
        }
    }

    /// The routes.
    pub fn router(self) -> Router {
        Router::new()
            .route("/health/live", get(live))
            .route("/health/ready", get(ready))
            .route("/metrics", get(metrics))
            .route("/config", get(config))
            .route("/policies", get(policies))
            .route("/build-info", get(build_info))
            .fallback(not_found)
            .with_state(Arc::new(self))
    }

    /// The routes safe to show a metrics scraper: `/metrics` and the health checks, never the
    /// configuration (`--metrics-listen`).
    pub fn metrics_router(self) -> Router {
        Router::new()
            .route("/health/live", get(live))
            .route("/health/ready", get(ready))
            .route("/metrics", get(metrics))
            .fallback(not_found)
            .with_state(Arc::new(self))
    }
}

type Shared = State<Arc<Admin>>;

async fn live() -> Response {
    json_response(StatusCode::OK, &json!({"status": "live"}))
}

async fn ready(State(admin): Shared) -> Response {
    match admin.state.current() {
        Some(snapshot) => json_response(
            StatusCode::OK,
            &json!({"status": "ready", "source": snapshot.source_kind(), "version": snapshot.version()}),
        ),
        None => json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            &json!({"status": "not_ready", "reason": "no valid configuration loaded yet"}),
        ),
    }
}

/// Runs `render` on a background thread: a large configuration or many routes' series take a
/// while to print, and the threads that serve requests must not wait for that.
async fn off_the_data_path<T: Send + 'static>(
    admin: &Admin,
    render: impl FnOnce() -> T + Send + 'static,
) -> Result<T, Response> {
    // The semaphore is never closed, so acquiring only waits.
    let _turn = admin.renders.acquire().await;
    crate::background::run("admin-render", render)
        .await
        .map_err(|error| {
            tracing::error!(%error, "rendering an admin answer failed");
            json_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                &json!({"error": "rendering failed; see the engine's log"}),
            )
        })
}

async fn metrics(State(admin): Shared) -> Response {
    let metrics = Arc::clone(admin.state.metrics());
    let text = match off_the_data_path(&admin, move || metrics.render()).await {
        Ok(text) => text,
        Err(failed) => return failed,
    };
    let mut response = text.into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}

async fn config(State(admin): Shared) -> Response {
    let Some(snapshot) = admin.state.current() else {
        return json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            &json!({"error": "no valid configuration loaded yet"}),
        );
    };
    let body = off_the_data_path(&admin, move || {
        let loaded_at = snapshot
            .loaded_at()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        json!({
            "source": snapshot.source_kind(),
            "sourceName": snapshot.source_name(),
            "version": snapshot.version(),
            "loadedAtUnixSeconds": loaded_at,
            "document": snapshot.document(),
        })
        .to_string()
    })
    .await;
    match body {
        Ok(body) => json_text(StatusCode::OK, body),
        Err(failed) => failed,
    }
}

async fn policies(State(admin): Shared) -> Response {
    json_response(StatusCode::OK, &policy_list(&admin.registry))
}

async fn build_info(State(admin): Shared) -> Response {
    json_response(StatusCode::OK, &admin.build_info)
}

async fn not_found() -> Response {
    json_response(
        StatusCode::NOT_FOUND,
        &json!({"error": "not found", "endpoints": ["/health/live", "/health/ready", "/metrics", "/config", "/policies", "/build-info"]}),
    )
}

/// The compiled-in policies' definitions (what `policy-engine policies` prints).
pub fn policy_list(registry: &Registry) -> Value {
    registry
        .iter()
        .map(|p| serde_json::to_value(p.definition()).unwrap_or_default())
        .collect()
}

fn json_response(status: StatusCode, body: &Value) -> Response {
    json_text(status, body.to_string())
}

fn json_text(status: StatusCode, body: String) -> Response {
    let mut response = (status, body).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}
