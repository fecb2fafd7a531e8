//! The stats listener: health endpoints and the JSON export of the one snapshot.
//! (The dashboard, CSV and Prometheus exports build on this module.)

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Json};
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::state::Shared;

pub mod export;

/// Serves the stats endpoints until `stop` is cancelled.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>, stop: CancellationToken) {
    let app = router(shared);
    let r = axum::serve(listener, app)
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await;
    if let Err(e) = r {
        tracing::error!(error = %e, "stats listener failed");
    }
}

pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/ready", get(ready))
        .route("/stats.json", get(stats_json))
        .with_state(shared)
}

async fn ready(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    let snap = shared.current();
    match snap.primary {
        Some(i) => (
            StatusCode::OK,
            format!("primary {}\n", shared.server_name(i)),
        ),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            "no routable primary\n".to_string(),
        ),
    }
}

async fn stats_json(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    Json(export::view(&shared))
}
