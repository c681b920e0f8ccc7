//! The independent floor: a plain tonic server, `Server::builder()` with
//! its defaults and none of tokenauth's layers (no request id, no
//! concurrency limit, no timeout, no load shedding, no tracing, no metrics,
//! no connection tracking), serving the two Check shapes tokenauth serves,
//! built from the same generated code: `tokenauth.v1.CheckService/Check`
//! answering "allowed", and Envoy's `envoy.service.auth.v3.Authorization/Check`
//! answering OK. Whatever tokenauth spends per Check beyond this is its own.
//!
//! It runs in a process of its own (the bench binary started again with
//! [`FLAG`], see `benches/floor.rs`), so that its CPU can be read from /proc
//! exactly as tokenauth's is, and so that it shares no runtime with the client.
//! Given [`Settings`] after the flag, it adds some of tokenauth's transport
//! settings: that is no longer the independent floor, and is used only to
//! attribute cost (`floor_settings.rs`).

use envoy_types::{
    ext_authz::v3::pb::{
        Authorization, AuthorizationServer, CheckRequest as ExtAuthzRequest,
        CheckResponse as ExtAuthzResponse, OkHttpResponse,
    },
    pb::envoy::service::auth::v3::check_response::HttpResponse as ExtAuthzHttpResponse,
};
use tokenauth::proto::{
    CheckRequest, CheckResponse,
    check_service_server::{CheckService, CheckServiceServer},
};
use tonic::{Request, Response, Status, transport::server::TcpIncoming};

/// The argument that makes the bench binary the floor server.
pub const FLAG: &str = "--floor-server";

/// The line the floor prints on stdout once it listens, before its address.
pub const LISTENING: &str = "floor listening on ";

struct AlwaysAllowed;

#[tonic::async_trait]
impl CheckService for AlwaysAllowed {
    async fn check(&self, _: Request<CheckRequest>) -> Result<Response<CheckResponse>, Status> {
        Ok(Response::new(CheckResponse {
            allowed: true,
            ..CheckResponse::default()
        }))
    }
}

#[tonic::async_trait]
impl Authorization for AlwaysAllowed {
    async fn check(
        &self,
        _: Request<ExtAuthzRequest>,
    ) -> Result<Response<ExtAuthzResponse>, Status> {
        // The smallest allow Envoy accepts: an OK status, an empty OkHttpResponse.
        Ok(Response::new(ExtAuthzResponse {
            status: Some(envoy_types::pb::google::rpc::Status::default()),
            http_response: Some(ExtAuthzHttpResponse::OkResponse(OkHttpResponse::default())),
            ..ExtAuthzResponse::default()
        }))
    }
}

/// tokenauth's transport settings, each of which [`run`] can add to the
/// plain floor (`floor_settings.rs` measures what each one costs), with
/// tokenauth's default values.
#[derive(Clone, Copy, Default)]
pub struct Settings {
    /// HTTP/2 keepalive pings (interval and timeout).
    pub keepalive: bool,
    /// A deadline on every call.
    pub timeout: bool,
    /// The header list and message size limits and the streams per connection.
    pub limits: bool,
    /// Load shedding in front of a global concurrency limit.
    pub shed: bool,
}

impl Settings {
    /// The names [`Settings::parse`] takes, `all` being every one.
    pub const NAMES: [&str; 5] = ["keepalive", "timeout", "limits", "shed", "all"];

    /// `keepalive`, `timeout`, `limits`, `shed` or `all`, comma-separated;
    /// empty for the plain floor.
    pub fn parse(list: &str) -> Self {
        let mut settings = Self::default();
        for name in list.split(',').filter(|n| !n.is_empty()) {
            let all = name == "all";
            match name {
                "keepalive" | "timeout" | "limits" | "shed" | "all" => {}
                other => panic!("unknown floor setting {other:?}"),
            }
            settings.keepalive |= all || name == "keepalive";
            settings.timeout |= all || name == "timeout";
            settings.limits |= all || name == "limits";
            settings.shed |= all || name == "shed";
        }
        settings
    }
}

/// Serves until killed, on a loopback port it picks, on tokio's default
/// multi-threaded runtime (as `tokenauth serve` runs), with `settings`
/// added to the builder's defaults.
pub fn run(settings: Settings) {
    let limits = tokenauth::config::LimitsConfig::default();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        println!("{LISTENING}{}", listener.local_addr().unwrap());
        // `serve(addr)` would set TCP_NODELAY, the builder's default; an
        // incoming stream from a listener we bound ourselves must ask for it.
        let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
        let mut builder = tonic::transport::Server::builder();
        if settings.keepalive {
            builder = builder
                .http2_keepalive_interval(Some(limits.http2_keepalive_interval))
                .http2_keepalive_timeout(Some(limits.http2_keepalive_timeout));
        }
        if settings.timeout {
            builder = builder.timeout(limits.request_timeout);
        }
        let mut check = CheckServiceServer::new(AlwaysAllowed);
        let mut authorization = AuthorizationServer::new(AlwaysAllowed);
        if settings.limits {
            builder = builder
                .http2_max_header_list_size(limits.max_header_list_bytes)
                .max_concurrent_streams(Some(limits.max_concurrent_streams));
            check = check.max_decoding_message_size(limits.max_request_bytes);
            authorization = authorization.max_decoding_message_size(limits.max_request_bytes);
        }
        let served = if settings.shed {
            builder
                .load_shed(true)
                .layer(tower::limit::GlobalConcurrencyLimitLayer::new(
                    limits.max_concurrent_requests,
                ))
                .add_service(check)
                .add_service(authorization)
                .serve_with_incoming(incoming)
                .await
        } else {
            builder
                .add_service(check)
                .add_service(authorization)
                .serve_with_incoming(incoming)
                .await
        };
        served.unwrap();
    });
}
