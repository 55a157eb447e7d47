//! The routes, and what wraps every one: body limit, JSON 404/405, logging.

mod enroll;

use std::net::SocketAddr;

use axum::Router;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;
use tokio::time::Instant;

use crate::error::{ApiError, ErrorCode};
use crate::state::{AppState, WebMetrics};

/// Every route of the web part, with its middleware.
pub fn router(state: AppState) -> Router {
    let body_limit = state.config().max_body_bytes;
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(crate::metrics::readyz))
        .route("/metrics", get(crate::metrics::metrics_https))
        .route("/api/v1/enroll", post(enroll::enroll))
        .fallback(|| async { ApiError::not_found() })
        .method_not_allowed_fallback(|| async { ApiError::method_not_allowed() })
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(middleware::from_fn_with_state(state.clone(), log_request))
        .with_state(state)
}

/// `GET /healthz`: the server answers; nothing else is promised.
async fn healthz() -> impl IntoResponse {
    axum::Json(json!({ "status": "ok" }))
}

/// One structured line per request: who, what, the outcome, how long.
/// Never the query string or headers, which may carry secrets.
async fn log_request(
    State(state): State<AppState>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    request: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let response = next.run(request).await;
    WebMetrics::inc(&state.metrics().requests);
    state.metrics().count_response(response.status().as_u16());
    let status = response.status().as_u16();
    let code = response.extensions().get::<ErrorCode>().map_or("", |c| c.0);
    let elapsed_ms = started.elapsed().as_secs_f64() * 1000.0;
    if response.status().is_server_error() {
        tracing::warn!(client_addr = %client, %method, path, status, code, elapsed_ms, "request");
    } else {
        tracing::info!(client_addr = %client, %method, path, status, code, elapsed_ms, "request");
    }
    response
}
