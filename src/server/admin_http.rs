//! The admin HTTP port (`admin.listen`): `GET /metrics` in Prometheus' text
//! format, and nothing else.

use std::{future::Future, sync::Arc};

use tokio::net::TcpListener;

use crate::metrics::Metrics;

/// Serves `GET /metrics` (Prometheus text format) until `stop`.
pub(super) async fn serve_admin(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    stop: impl Future<Output = ()> + Send + 'static,
) {
    use axum::{http::StatusCode, response::IntoResponse, routing::get};
    let router = axum::Router::new().route(
        "/metrics",
        get(move || {
            let metrics = Arc::clone(&metrics);
            async move {
                match metrics.render_prometheus() {
                    Ok(text) => (
                        [("content-type", "text/plain; version=0.0.4; charset=utf-8")],
                        text,
                    )
                        .into_response(),
                    Err(error) => {
                        tracing::error!(%error, "rendering metrics failed");
                        StatusCode::INTERNAL_SERVER_ERROR.into_response()
                    }
                }
            }
        }),
    );
    if let Err(error) = axum::serve(listener, router)
        .with_graceful_shutdown(stop)
        .await
    {
        tracing::error!(%error, "the admin HTTP server failed");
    }
}
