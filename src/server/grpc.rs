//! The gRPC port: the tonic server with our limits and layers, the accepted
//! connections, TLS from the configured files, reflection, and the services
//! it serves with their message-size limits.

use std::sync::Arc;

use envoy_types::ext_authz::v3::pb::AuthorizationServer;
use tokio::net::TcpListener;
use tonic::{server::NamedService, transport::server::Router};
use tonic_health::pb::health_server::{Health as HealthService, HealthServer};

use super::error::ServerError;
use crate::{
    api::{
        admin::AdminApi,
        audit::AuditApi,
        check::CheckApi,
        ext_authz::ExtAuthzApi,
        ext_authz_budget::{ByteBudget, InFlightBudget},
        request_context::RequestContextLayer,
        tokens::TokenApi,
    },
    config::{Config, LimitsConfig},
    connections::{CallTrackingLayer, Connections, GuardedStream},
    metrics::Metrics,
    proto::{
        admin_service_server::AdminServiceServer, audit_service_server::AuditServiceServer,
        check_service_server::CheckServiceServer, token_service_server::TokenServiceServer,
    },
    service::{ExtAuthz, TokenAuthority},
    store::StoreError,
};

/// The layers every gRPC server of ours runs: call tracking for the
/// connection limits (outermost), the request id, and the global
/// concurrency limit.
pub type Layers = tower::layer::util::Stack<
    tower::layer::util::Stack<
        tower::limit::GlobalConcurrencyLimitLayer,
        tower::layer::util::Stack<
            RequestContextLayer,
            tower::layer::util::Stack<CallTrackingLayer, tower::layer::util::Identity>,
        >,
    >,
    tower::layer::util::Identity,
>;

/// A tonic server with the settings of `limits`. The service is built with
/// it, and so is the benchmark's empty-RPC floor, so that both are served
/// the same way.
pub fn grpc_server(
    limits: &LimitsConfig,
    metrics: Arc<Metrics>,
    tls: Option<tonic::transport::ServerTlsConfig>,
) -> Result<tonic::transport::Server<Layers>, ServerError> {
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = tls {
        builder = builder.tls_config(tls)?;
    }
    Ok(builder
        .http2_max_header_list_size(limits.max_header_list_bytes)
        .max_concurrent_streams(Some(limits.max_concurrent_streams))
        .http2_keepalive_interval(Some(limits.http2_keepalive_interval))
        .http2_keepalive_timeout(Some(limits.http2_keepalive_timeout))
        .timeout(limits.request_timeout)
        // Over the limit, refuse at once (RESOURCE_EXHAUSTED) instead of
        // queueing without bound: the caller can retry elsewhere.
        .load_shed(true)
        .layer(
            tower::ServiceBuilder::new()
                .layer(CallTrackingLayer)
                .layer(RequestContextLayer::new(metrics))
                .layer(tower::limit::GlobalConcurrencyLimitLayer::new(
                    limits.max_concurrent_requests,
                ))
                .into_inner(),
        ))
}

/// Accepted connections as the server takes them, within `connections`'
/// limits: no Nagle delay, TCP keepalive.
pub fn incoming(
    listener: TcpListener,
    limits: &LimitsConfig,
    connections: Arc<Connections>,
) -> tokio_stream::wrappers::ReceiverStream<std::io::Result<GuardedStream>> {
    crate::connections::incoming(listener, connections, limits.http2_keepalive_interval)
}

/// The TLS settings of `config.tls`, read from their files; `None` for plaintext.
pub(super) fn tls_config(
    config: &Config,
) -> Result<Option<tonic::transport::ServerTlsConfig>, ServerError> {
    use tonic::transport::{Certificate, Identity, ServerTlsConfig};
    let read = |path: &std::path::Path| {
        std::fs::read(path).map_err(|source| ServerError::TlsFile {
            path: path.to_owned(),
            source,
        })
    };
    let (Some(cert), Some(key)) = (&config.tls.cert_file, &config.tls.key_file) else {
        return Ok(None);
    };
    let mut tls = ServerTlsConfig::new()
        .identity(Identity::from_pem(read(cert)?, read(key)?))
        .timeout(config.limits.handshake_timeout);
    if let Some(ca) = &config.tls.client_ca_file {
        // With a client CA, tonic requires a client certificate from it.
        tls = tls.client_ca_root(Certificate::from_pem(read(ca)?));
    }
    Ok(Some(tls))
}

/// Reflection over exactly what the port serves: our services, health and
/// Envoy's ext_authz. Both protocol versions are built from this one list.
fn reflection() -> tonic_reflection::server::Builder<'static> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(crate::api::ext_authz::FILE_DESCRIPTOR_SET)
}

/// The services that only read (Check, ext_authz): SERVING while the store
/// answers reads.
pub(super) fn reading_services() -> Vec<&'static str> {
    vec![
        <CheckServiceServer<CheckApi> as NamedService>::NAME,
        <AuthorizationServer<ExtAuthzApi> as NamedService>::NAME,
    ]
}

/// The services that write: SERVING only while the store takes writes.
pub(super) fn writing_services() -> Vec<&'static str> {
    vec![
        <TokenServiceServer<TokenApi> as NamedService>::NAME,
        <AuditServiceServer<AuditApi> as NamedService>::NAME,
        <AdminServiceServer<AdminApi> as NamedService>::NAME,
    ]
}

/// `server` with every service of the gRPC port added: health, reflection,
/// our four services and Envoy's ext_authz, each with its size limits.
pub(super) fn add_services<H: HealthService>(
    server: &mut tonic::transport::Server<Layers>,
    health: HealthServer<H>,
    config: &Config,
    service: &Arc<TokenAuthority>,
    ext_authz: ExtAuthz,
    metrics: &Arc<Metrics>,
) -> Result<Router<Layers>, ServerError> {
    let reflection_error = |e: tonic_reflection::server::Error| {
        ServerError::Store(StoreError::Unavailable(format!("reflection: {e}")))
    };
    let reflection_v1 = reflection().build_v1().map_err(reflection_error)?;
    let reflection_v1alpha = reflection().build_v1alpha().map_err(reflection_error)?;

    let max_request = config.limits.max_request_bytes;
    let tokens = TokenServiceServer::new(TokenApi::new(Arc::clone(service)))
        .max_decoding_message_size(max_request);
    let check = CheckServiceServer::new(CheckApi::new(Arc::clone(service)))
        .max_decoding_message_size(max_request);
    let audit = AuditServiceServer::new(AuditApi::new(Arc::clone(service)))
        .max_decoding_message_size(max_request);
    let admin_api =
        AdminServiceServer::new(AdminApi::new(Arc::clone(service), config.data_dir.clone()))
            .max_decoding_message_size(max_request);
    // Its own limits: Envoy's CheckRequest carries the client's whole
    // request head (a head within the header limits must be a deny, not an
    // RPC error), and what requests in flight hold together is bounded.
    let mesh_limits = &config.ext_authz;
    let mesh = InFlightBudget::new(
        AuthorizationServer::new(ExtAuthzApi::new(ext_authz, Arc::clone(metrics)))
            .max_decoding_message_size(mesh_limits.max_request_bytes),
        ByteBudget::new(mesh_limits.max_in_flight_bytes),
        mesh_limits.max_request_bytes,
        Arc::clone(metrics),
    );
    Ok(server
        .add_service(health)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(tokens)
        .add_service(check)
        .add_service(audit)
        .add_service(admin_api)
        .add_service(mesh))
}
