//! One stack per test: the real Envoy (`proxy.rs`) running the shipped
//! `deploy/envoy/envoy.yaml`, the real tokenauth serving TLS, as
//! deploy/kubernetes does, with a certificate for the Service's name and the
//! route rules of the shipped `deploy/kubernetes/tokenauth.toml`, and an
//! upstream in the test process that answers every request with what it
//! received.

use std::{net::SocketAddr, sync::Arc};

use serde_json::json;
use tempfile::TempDir;
use tokenauth::{
    config::{Config, ext_authz::ExtAuthzConfig},
    store::Store,
};
use tonic::transport::{Certificate, ClientTlsConfig};

use super::proxy::GUARD;
pub use super::proxy::{
    Deadline, Echoed, Envoy, PROTOCOLS, Protocol, Request, Response, SERVICE_NAME, repository, send,
};
use crate::{harness::TestServer, tls::Pki};

/// The challenge of a 401 (a credential is missing or bad).
pub const INVALID_TOKEN: &str = "Bearer error=\"invalid_token\"";
/// The challenge of a 403 on the token's scope or permissions.
pub const INSUFFICIENT_SCOPE: &str = "Bearer error=\"insufficient_scope\"";

/// The `[ext_authz]` section of the shipped `deploy/kubernetes/tokenauth.toml`.
pub fn shipped_rules() -> ExtAuthzConfig {
    let path = repository().join("deploy/kubernetes/tokenauth.toml");
    Config::load(Some(&path), Vec::new()).unwrap().ext_authz
}

/// Asserts that tokenauth refused `response` with `status` and `code` (and
/// the challenge `challenge`, or none), and that the upstream saw nothing.
pub fn assert_denied(
    response: &Response,
    status: u16,
    code: &str,
    challenge: Option<&str>,
    context: &str,
) {
    assert_eq!(response.status, status, "{context}: {response:?}");
    assert_eq!(
        response.deny_code().as_deref(),
        Some(code),
        "{context}: {response:?}"
    );
    assert_eq!(
        response.header("www-authenticate"),
        challenge,
        "{context}: {response:?}"
    );
    assert_eq!(
        response.header("content-type"),
        Some("application/json"),
        "{context}"
    );
    assert!(response.upstream().is_none(), "{context}: reached upstream");
}

/// Asserts that `response` is the upstream's 200, and returns what it received.
pub fn assert_allowed(response: &Response, context: &str) -> Echoed {
    assert_eq!(response.status, 200, "{context}: {response:?}");
    response
        .upstream()
        .unwrap_or_else(|| panic!("{context}: not the upstream's answer: {response:?}"))
}

/// The upstream: answers every request with a JSON account of it.
pub struct Echo {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Echo {
    pub async fn start() -> Self {
        async fn echo(request: axum::extract::Request) -> impl axum::response::IntoResponse {
            let headers: Vec<[String; 2]> = request
                .headers()
                .iter()
                .map(|(name, value)| {
                    [
                        name.as_str().to_owned(),
                        String::from_utf8_lossy(value.as_bytes()).into_owned(),
                    ]
                })
                .collect();
            let path = request.uri().path_and_query().map_or("", |p| p.as_str());
            let body = json!({"echoed": {
                "method": request.method().as_str(),
                "path": path,
                "headers": headers,
            }});
            ([("content-type", "application/json")], body.to_string())
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = axum::Router::new().fallback(echo);
        let task = tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self { addr, task }
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Envoy, tokenauth and the upstream, wired as deploy/ describes.
pub struct Stack {
    tokenauth: Option<TestServer>,
    tokenauth_addr: SocketAddr,
    /// Held so that the upstream runs as long as the stack.
    _upstream: Echo,
    pub envoy: Envoy,
    /// The route rules tokenauth runs with (the shipped ones).
    pub rules: ExtAuthzConfig,
    /// tokenauth's certificate and key, read when it starts.
    _certs: TempDir,
}

impl Stack {
    pub async fn start() -> Self {
        Self::start_wrapped(|store| store).await
    }

    /// A stack whose tokenauth runs on its real store wrapped by `wrap`.
    pub async fn start_wrapped(wrap: impl FnOnce(Arc<dyn Store>) -> Arc<dyn Store>) -> Self {
        let rules = shipped_rules();
        let section = rules.clone();
        // tokenauth serves TLS with a certificate for the Service's name, as
        // deploy/kubernetes has it; the test's own client verifies it too.
        let pki = Pki::new("tokenauth test CA");
        let (cert, key) = pki.issue(&[SERVICE_NAME]);
        let certs = tempfile::tempdir().unwrap();
        let (cert_file, key_file) = (certs.path().join("tls.crt"), certs.path().join("tls.key"));
        std::fs::write(&cert_file, cert).unwrap();
        std::fs::write(&key_file, key).unwrap();
        let client_tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&pki.ca_pem))
            .domain_name(SERVICE_NAME);
        let tokenauth = TestServer::start_wrapped_tls(
            move |config| {
                config.ext_authz = section;
                config.tls.cert_file = Some(cert_file);
                config.tls.key_file = Some(key_file);
            },
            wrap,
            Some(client_tls),
        )
        .await;
        let upstream = Echo::start().await;
        let envoy = Envoy::start(tokenauth.addr(), upstream.addr, &pki.ca_pem).await;
        Self {
            tokenauth_addr: tokenauth.addr(),
            tokenauth: Some(tokenauth),
            _upstream: upstream,
            envoy,
            rules,
            _certs: certs,
        }
    }

    pub fn tokenauth(&self) -> &TestServer {
        self.tokenauth.as_ref().expect("tokenauth was stopped")
    }

    /// Where Envoy's tokenauth cluster points.
    pub fn tokenauth_addr(&self) -> SocketAddr {
        self.tokenauth_addr
    }

    /// Stops tokenauth cleanly (its port then refuses connections).
    pub async fn stop_tokenauth(&mut self) {
        let server = self.tokenauth.take().expect("tokenauth was stopped");
        server.stop().await;
    }

    /// The header the shipped rules accept a token in besides `authorization`.
    pub fn api_key_header(&self) -> &str {
        self.rules.api_key_header.as_deref().unwrap()
    }

    /// Sends `request` through Envoy; panics if no HTTP response comes back.
    pub async fn send(&self, protocol: Protocol, request: &Request) -> Response {
        self.try_send(protocol, request)
            .await
            .unwrap_or_else(|e| panic!("{protocol} {request:?}: {e}"))
    }

    /// Sends `request` through Envoy (an error if the stream was reset).
    pub async fn try_send(
        &self,
        protocol: Protocol,
        request: &Request,
    ) -> Result<Response, hyper::Error> {
        tokio::time::timeout(GUARD, send(self.envoy.listener, protocol, request))
            .await
            .unwrap_or_else(|_| panic!("no answer through Envoy: {request:?}"))
    }
}
