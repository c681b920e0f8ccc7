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

/// Serves until killed, on a loopback port it picks, on tokio's default
/// multi-threaded runtime (as `tokenauth serve` runs).
pub fn run() {
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
        tonic::transport::Server::builder()
            .add_service(CheckServiceServer::new(AlwaysAllowed))
            .add_service(AuthorizationServer::new(AlwaysAllowed))
            .serve_with_incoming(incoming)
            .await
            .unwrap();
    });
}
