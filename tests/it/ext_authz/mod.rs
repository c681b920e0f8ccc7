//! The Envoy ext_authz endpoint (`envoy.service.auth.v3.Authorization/Check`),
//! called with envoy-types' generated client the way Envoy calls it: an
//! attribute context with the HTTP method, path, headers and the route's
//! context extensions. Covers allows and their headers, every deny, the id
//! sources, path tricks, unmatched routes, credential stripping, faults,
//! reflection and health.
//!
//! This file holds the client side the tests share (a request as Envoy
//! describes it, and what Envoy would do with the answer); the tests live
//! in the submodules, one job each.

mod credentials;
mod routes;
mod service;

use std::collections::HashMap;

use envoy_types::pb::envoy::service::auth::v3::{
    AttributeContext, CheckRequest, CheckResponse, attribute_context,
    authorization_client::AuthorizationClient, check_response::HttpResponse,
};
use tokenauth::{
    config::Config,
    testing::fixtures::{ROUTE_POLICY, route_policy},
};
use tonic::Code;

use crate::harness::TestServer;

/// The route rules most tests run with: every id source, both levels.
const ROUTES: &str = ROUTE_POLICY;

/// Starts a server with [`ROUTES`], adjusted by `adjust` (TOML appended to `[ext_authz]`).
async fn start(adjust: &str) -> TestServer {
    let section = Config::from_toml(&route_policy(adjust)).unwrap().ext_authz;
    TestServer::start_with(move |config| config.ext_authz = section).await
}

/// A request as Envoy describes it.
struct Http {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    context: Vec<(String, String)>,
}

impl Http {
    /// `method path`, with the org in the route's context extensions as Envoy would send it.
    fn new(method: &str, path: &str) -> Self {
        Self {
            method: method.to_owned(),
            path: path.to_owned(),
            headers: Vec::new(),
            context: vec![("org_id".to_owned(), "org-1".to_owned())],
        }
    }

    fn bearer(self, token: &str) -> Self {
        self.header("authorization", &format!("Bearer {token}"))
    }

    fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    fn context(mut self, key: &str, value: &str) -> Self {
        self.context.retain(|(k, _)| k != key);
        self.context.push((key.to_owned(), value.to_owned()));
        self
    }

    fn without_context(mut self) -> Self {
        self.context.clear();
        self
    }

    fn to_proto(&self) -> CheckRequest {
        // Envoy merges repeated headers into one, comma-separated.
        let mut headers: HashMap<String, String> = HashMap::new();
        for (name, value) in &self.headers {
            headers
                .entry(name.clone())
                .and_modify(|v| {
                    v.push(',');
                    v.push_str(value);
                })
                .or_insert_with(|| value.clone());
        }
        headers.insert(":method".into(), self.method.clone());
        headers.insert(":path".into(), self.path.clone());
        CheckRequest {
            attributes: Some(AttributeContext {
                request: Some(attribute_context::Request {
                    time: None,
                    http: Some(attribute_context::HttpRequest {
                        id: "req-1".into(),
                        method: self.method.clone(),
                        headers,
                        path: self.path.clone(),
                        host: "api.example.com".into(),
                        scheme: "https".into(),
                        protocol: "HTTP/1.1".into(),
                        ..Default::default()
                    }),
                }),
                context_extensions: self.context.iter().cloned().collect(),
                ..AttributeContext::default()
            }),
        }
    }
}

/// What Envoy would do with a response.
#[derive(Debug)]
enum Outcome {
    Allow {
        set: HashMap<String, String>,
        remove: Vec<String>,
        metadata: HashMap<String, String>,
    },
    Deny {
        status: i32,
        www_authenticate: Option<String>,
        code: String,
        message: String,
        /// From the `x-tokenauth-required-permission` header, which the
        /// body's `required_permission` always agrees with.
        required_permission: Option<String>,
        metadata: HashMap<String, String>,
    },
}

fn metadata_of(response: &CheckResponse) -> HashMap<String, String> {
    use envoy_types::pb::google::protobuf::value::Kind;
    response
        .dynamic_metadata
        .iter()
        .flat_map(|s| &s.fields)
        .filter_map(|(k, v)| match &v.kind {
            Some(Kind::StringValue(s)) => Some((k.clone(), s.clone())),
            _ => None,
        })
        .collect()
}

fn outcome(response: CheckResponse) -> Outcome {
    let metadata = metadata_of(&response);
    let grpc = response.status.as_ref().map_or(0, |s| s.code);
    match response.http_response {
        Some(HttpResponse::OkResponse(ok)) => {
            assert_eq!(grpc, Code::Ok as i32);
            let set = ok
                .headers
                .into_iter()
                .map(|h| {
                    // Overwrite, never append: a client copy must not survive beside ours.
                    assert_eq!(h.append_action, 2, "OVERWRITE_IF_EXISTS_OR_ADD");
                    let h = h.header.unwrap();
                    (h.key, h.value)
                })
                .collect();
            Outcome::Allow {
                set,
                remove: ok.headers_to_remove,
                metadata,
            }
        }
        Some(HttpResponse::DeniedResponse(denied)) => {
            assert_ne!(grpc, Code::Ok as i32, "a deny must not carry an OK status");
            let headers: HashMap<String, String> = denied
                .headers
                .into_iter()
                .map(|h| {
                    let h = h.header.unwrap();
                    (h.key, h.value)
                })
                .collect();
            assert_eq!(headers["content-type"], "application/json");
            let body: serde_json::Value = serde_json::from_str(&denied.body).unwrap();
            let required_permission = headers.get("x-tokenauth-required-permission").cloned();
            assert_eq!(
                body.get("required_permission").and_then(|v| v.as_str()),
                required_permission.as_deref(),
                "the header and the body name the same permission"
            );
            Outcome::Deny {
                required_permission,
                status: denied.status.unwrap().code,
                www_authenticate: headers.get("www-authenticate").cloned(),
                code: body["code"].as_str().unwrap().to_owned(),
                message: body["message"].as_str().unwrap().to_owned(),
                metadata,
            }
        }
        other => panic!("unexpected http_response {other:?}"),
    }
}

async fn authorize(server: &TestServer, request: &Http) -> Outcome {
    let response = AuthorizationClient::new(server.channel.clone())
        .check(request.to_proto())
        .await
        .unwrap()
        .into_inner();
    outcome(response)
}

/// Asserts a deny's HTTP status, challenge and code; returns its message.
#[track_caller]
fn assert_denied(outcome: &Outcome, status: i32, challenge: Option<&str>, code: &str) -> String {
    let Outcome::Deny {
        status: got,
        www_authenticate,
        code: got_code,
        message,
        ..
    } = outcome
    else {
        panic!("expected a deny ({code}), got {outcome:?}");
    };
    assert_eq!(
        (*got, www_authenticate.as_deref(), got_code.as_str()),
        (status, challenge, code),
        "{message}"
    );
    message.clone()
}

const INVALID_TOKEN: Option<&str> = Some("Bearer error=\"invalid_token\"");

const INSUFFICIENT_SCOPE: Option<&str> = Some("Bearer error=\"insufficient_scope\"");
