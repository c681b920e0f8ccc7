//! The HTTP ports: the admin port (`admin.listen`), `GET /metrics` in
//! Prometheus' text format and nothing else; and the secret-scanning port
//! (`secret_scanning.listen`), GitHub's partner endpoint
//! (`api::secret_scanning`). Both are served by [`serve_http`].

use std::{future::Future, net::SocketAddr, sync::Arc};

use tokio::net::TcpListener;

use crate::{
    api::secret_scanning::SecretScanning,
    config::{Config, ConfigError},
    domain::secret_scanning::PartnerKeys,
    metrics::Metrics,
    service::TokenAuthority,
};

/// The admin port's routes: `GET /metrics` (Prometheus text format).
pub(super) fn admin_router(metrics: Arc<Metrics>) -> axum::Router {
    use axum::{http::StatusCode, response::IntoResponse, routing::get};
    axum::Router::new().route(
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
    )
}

/// GitHub's secret-scanning keys, read from `secret_scanning.keys_file`
/// when the endpoint is on; a bad file is named as the field at fault.
pub(super) fn partner_keys(config: &Config) -> Result<Option<PartnerKeys>, ConfigError> {
    let (Some(_), Some(keys_file)) = (
        config.secret_scanning.listen,
        &config.secret_scanning.keys_file,
    ) else {
        return Ok(None);
    };
    let invalid = |reason: String| ConfigError::Invalid {
        field: "secret_scanning.keys_file",
        reason: format!("{}: {reason}", keys_file.display()),
    };
    let text = std::fs::read_to_string(keys_file).map_err(|e| invalid(e.to_string()))?;
    let keys = PartnerKeys::from_json(&text).map_err(invalid)?;
    Ok(Some(keys))
}

/// The secret-scanning port's routes.
pub(super) fn secret_scanning_router(
    keys: PartnerKeys,
    service: Arc<TokenAuthority>,
    metrics: Arc<Metrics>,
) -> axum::Router {
    tracing::info!(keys = keys.len(), "GitHub secret-scanning keys loaded");
    Arc::new(SecretScanning::new(service, keys, metrics)).router()
}

/// Serves `router` on `listener` until `stop`; `port` names it in logs.
pub(super) async fn serve_http(
    listener: TcpListener,
    router: axum::Router,
    port: &'static str,
    stop: impl Future<Output = ()> + Send + 'static,
) {
    let service = router.into_make_service_with_connect_info::<SocketAddr>();
    if let Err(error) = axum::serve(listener, service)
        .with_graceful_shutdown(stop)
        .await
    {
        tracing::error!(%error, port, "an HTTP server failed");
    }
}
