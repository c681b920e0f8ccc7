//! `envoy.service.auth.v3.Authorization`: Envoy's (and Istio's) ext_authz
//! Check, on the same port as the rest. Converts Envoy's attribute context
//! into a domain `HttpRequest`, asks `service::ExtAuthz`, and converts the
//! verdict back: an allow as an `OkHttpResponse` (identity headers set,
//! reserved and credential headers removed), a deny as a
//! `DeniedHttpResponse` (status, `WWW-Authenticate`, a JSON body). Both carry
//! the decision in `dynamic_metadata` for Envoy's access logs. Only an
//! internal fault is an RPC error, so that Envoy's `failure_mode_allow` and
//! `status_on_error` apply to faults and to nothing else.

use std::{collections::HashMap, sync::Arc};

use envoy_types::{
    ext_authz::v3::pb::{
        Authorization, CheckRequest, CheckResponse, DeniedHttpResponse, HeaderAppendAction,
        HeaderValueOption, HttpResponse, HttpStatus, OkHttpResponse,
    },
    pb::{
        envoy::config::core::v3::HeaderValue,
        google::{
            protobuf::{Struct, Value, value::Kind},
            rpc,
        },
    },
};
use tonic::{Code, Request, Response, Status};

use crate::{
    domain::ext_authz::{
        Allow, Denial, HttpRequest, Identity, MeshVerdict, REQUIRED_PERMISSION_HEADER,
    },
    metrics::Metrics,
    service::{CheckOrigin, ExtAuthz},
};

pub use crate::proto::EXT_AUTHZ_FILE_DESCRIPTOR_SET as FILE_DESCRIPTOR_SET;

/// The gRPC face of the mesh authorizer.
pub struct ExtAuthzApi {
    authz: ExtAuthz,
    metrics: Arc<Metrics>,
}

impl ExtAuthzApi {
    pub fn new(authz: ExtAuthz, metrics: Arc<Metrics>) -> Self {
        Self { authz, metrics }
    }
}

/// The HTTP request Envoy describes, if it describes one. Header names are
/// lower-cased (Envoy already does; a hand-written client may not), and taken
/// from `header_map` when Envoy sends raw headers (`encode_raw_headers`),
/// in the order sent. Takes the request by value: its strings move into the
/// domain request instead of being copied (this runs on every mesh request).
/// Linear in the request's size, which the server bounds
/// (`ext_authz.max_request_bytes`); the head limits are the domain's.
pub(crate) fn http_request(request: CheckRequest) -> Option<HttpRequest> {
    let attributes = request.attributes?;
    let source = source_address(&attributes);
    let http = attributes.request?.http?;
    let headers: Vec<(String, String)> = if http.headers.is_empty() {
        http.header_map
            .into_iter()
            .flat_map(|map| map.headers)
            .map(|header| {
                let value = if header.raw_value.is_empty() {
                    header.value
                } else {
                    String::from_utf8_lossy(&header.raw_value).into_owned()
                };
                (lowercase(header.key), value)
            })
            .collect()
    } else {
        http.headers
            .into_iter()
            .map(|(name, value)| (lowercase(name), value))
            .collect()
    };
    let pseudo = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    let method = if http.method.is_empty() {
        pseudo(":method")
    } else {
        http.method
    };
    let path = if http.path.is_empty() {
        pseudo(":path")
    } else {
        http.path
    };
    Some(HttpRequest {
        method,
        path,
        headers,
        context_extensions: attributes.context_extensions,
        source,
    })
}

fn lowercase(mut name: String) -> String {
    name.make_ascii_lowercase();
    name
}

/// The downstream client's address, as Envoy reports it, for audit events
/// (recorded as reported by the proxy, beside the proxy's own address: a
/// caller of ext_authz can put anything here).
fn source_address(
    attributes: &envoy_types::pb::envoy::service::auth::v3::AttributeContext,
) -> Option<std::net::SocketAddr> {
    use envoy_types::pb::envoy::config::core::v3::{address, socket_address};
    let address::Address::SocketAddress(socket) = attributes
        .source
        .as_ref()?
        .address
        .as_ref()?
        .address
        .as_ref()?
    else {
        return None;
    };
    let Some(socket_address::PortSpecifier::PortValue(port)) = socket.port_specifier else {
        return None;
    };
    let ip: std::net::IpAddr = socket.address.parse().ok()?;
    Some(std::net::SocketAddr::new(ip, u16::try_from(port).ok()?))
}

fn header(name: &str, value: &str) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue {
            key: name.to_owned(),
            value: value.to_owned(),
            raw_value: Vec::new(),
        }),
        // With the deprecated `append` unset, OVERWRITE_IF_EXISTS_OR_ADD is
        // honoured by every Envoy since v3: the header is set, not appended.
        append_action: HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
        ..HeaderValueOption::default()
    }
}

fn string(value: &str) -> Value {
    Value {
        kind: Some(Kind::StringValue(value.to_owned())),
    }
}

/// What Envoy stores under `envoy.filters.http.ext_authz` for its access logs.
fn metadata(
    decision: &str,
    identity: Option<&Identity>,
    permission: Option<&str>,
    route: Option<&str>,
) -> Struct {
    // Sized for every field at once: growing the map twice was a tenth of
    // the handler's instructions.
    let mut fields = HashMap::with_capacity(8);
    fields.insert("decision".to_owned(), string(decision));
    for (key, value) in [("permission", permission), ("route", route)] {
        if let Some(value) = value {
            fields.insert(key.to_owned(), string(value));
        }
    }
    if let Some(identity) = identity {
        for (key, value) in [
            ("token_id", identity.token_id.as_str()),
            ("kind", identity.kind_name()),
            ("owner_user_id", identity.owner_user_id.as_str()),
            ("org_id", identity.org_id.as_str()),
            ("workspace_id", identity.workspace_id.as_str()),
        ] {
            if !value.is_empty() {
                fields.insert(key.to_owned(), string(value));
            }
        }
    }
    Struct { fields }
}

fn allowed(allow: &Allow, permission: Option<&str>, route: Option<&str>) -> CheckResponse {
    CheckResponse {
        status: Some(rpc::Status {
            code: Code::Ok as i32,
            message: String::new(),
            details: Vec::new(),
        }),
        dynamic_metadata: Some(metadata(
            "allow",
            allow.identity.as_ref(),
            permission,
            route,
        )),
        http_response: Some(HttpResponse::OkResponse(OkHttpResponse {
            headers: allow
                .set
                .iter()
                .map(|(name, value)| header(name, value))
                .collect(),
            headers_to_remove: allow.remove.clone(),
            ..OkHttpResponse::default()
        })),
    }
}

fn denied(
    denial: &Denial,
    identity: Option<&Identity>,
    permission: Option<&str>,
    route: Option<&str>,
) -> CheckResponse {
    let code = match denial.http_status() {
        401 => Code::Unauthenticated,
        400 | 431 => Code::InvalidArgument,
        _ => Code::PermissionDenied,
    };
    let required = denial.required_permission(permission);
    let mut body = serde_json::json!({
        "code": denial.code(),
        "message": denial.message(permission),
    });
    let mut headers = vec![header("content-type", "application/json")];
    if let Some(challenge) = denial.www_authenticate() {
        headers.push(header("www-authenticate", challenge));
    }
    if let Some(required) = required {
        body["required_permission"] = required.into();
        headers.push(header(REQUIRED_PERMISSION_HEADER, required));
    }
    let body = body.to_string();
    CheckResponse {
        status: Some(rpc::Status {
            code: code as i32,
            message: denial.code().to_owned(),
            details: Vec::new(),
        }),
        dynamic_metadata: Some(metadata(denial.code(), identity, permission, route)),
        http_response: Some(HttpResponse::DeniedResponse(DeniedHttpResponse {
            status: Some(HttpStatus {
                code: i32::from(denial.http_status()),
            }),
            headers,
            body,
        })),
    }
}

fn verdict_to_proto(verdict: &MeshVerdict) -> CheckResponse {
    match verdict {
        MeshVerdict::Allow {
            allow,
            permission,
            route,
        } => allowed(allow, permission.as_deref(), route.as_deref()),
        MeshVerdict::Deny {
            denial,
            identity,
            permission,
            route,
        } => {
            tracing::debug!(
                code = denial.code(),
                permission = permission.as_deref(),
                route = route.as_deref(),
                token_id = identity.as_ref().map(|i| i.token_id.as_str()),
                "ext_authz denied"
            );
            denied(
                denial,
                identity.as_ref(),
                permission.as_deref(),
                route.as_deref(),
            )
        }
    }
}

#[tonic::async_trait]
impl Authorization for ExtAuthzApi {
    async fn check(
        &self,
        request: Request<CheckRequest>,
    ) -> Result<Response<CheckResponse>, Status> {
        // Who called us (Envoy) and its call's request id, read before the
        // message is taken apart.
        let CheckOrigin {
            origin, request_id, ..
        } = super::request_context::check_origin(&request);
        let request_id = request_id.map(str::to_owned);
        let http = http_request(request.into_inner());
        let connection = CheckOrigin {
            origin,
            request_id: request_id.as_deref(),
            // The client is the one Envoy reports in the message.
            client: None,
        };
        let verdict = self.authz.authorize(http.as_ref(), &connection).await?;
        if let MeshVerdict::Deny { denial, .. } = &verdict {
            self.metrics.record_ext_authz_denial(denial.code());
        }
        Ok(Response::new(verdict_to_proto(&verdict)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::{
        config::core::v3::HeaderMap,
        service::auth::v3::{AttributeContext, attribute_context},
    };

    fn check_request(http: attribute_context::HttpRequest) -> CheckRequest {
        CheckRequest {
            attributes: Some(AttributeContext {
                request: Some(attribute_context::Request {
                    time: None,
                    http: Some(http),
                }),
                context_extensions: HashMap::from([("org_id".to_owned(), "org-1".to_owned())]),
                ..AttributeContext::default()
            }),
        }
    }

    #[test]
    fn the_client_address_is_read_from_the_source_peer() {
        use envoy_types::pb::envoy::config::core::v3::{
            Address, SocketAddress, address, socket_address,
        };
        let mut request = check_request(attribute_context::HttpRequest::default());
        assert_eq!(http_request(request.clone()).unwrap().source, None);
        request.attributes.as_mut().unwrap().source = Some(attribute_context::Peer {
            address: Some(Address {
                address: Some(address::Address::SocketAddress(SocketAddress {
                    address: "203.0.113.7".into(),
                    port_specifier: Some(socket_address::PortSpecifier::PortValue(44321)),
                    ..SocketAddress::default()
                })),
            }),
            ..attribute_context::Peer::default()
        });
        assert_eq!(
            http_request(request.clone()).unwrap().source,
            Some("203.0.113.7:44321".parse().unwrap())
        );
    }

    #[test]
    fn requests_are_read_from_headers_or_raw_header_maps() {
        let from_map = check_request(attribute_context::HttpRequest {
            method: "GET".into(),
            path: "/v2?x=1".into(),
            headers: HashMap::from([("Authorization".to_owned(), "Bearer t".to_owned())]),
            ..Default::default()
        });
        let request = http_request(from_map).unwrap();
        assert_eq!(request.method, "GET");
        assert_eq!(request.path, "/v2?x=1");
        assert_eq!(
            request.headers,
            vec![("authorization".into(), "Bearer t".into())]
        );
        assert_eq!(request.context_extensions["org_id"], "org-1");

        let raw = check_request(attribute_context::HttpRequest {
            header_map: Some(HeaderMap {
                headers: vec![
                    HeaderValue {
                        key: ":method".into(),
                        value: String::new(),
                        raw_value: b"POST".to_vec(),
                    },
                    HeaderValue {
                        key: ":path".into(),
                        value: String::new(),
                        raw_value: b"/v2".to_vec(),
                    },
                    HeaderValue {
                        key: "x-tokenauth-org-id".into(),
                        value: String::new(),
                        raw_value: b"a".to_vec(),
                    },
                    HeaderValue {
                        key: "x-tokenauth-org-id".into(),
                        value: String::new(),
                        raw_value: b"b".to_vec(),
                    },
                ],
            }),
            ..Default::default()
        });
        let request = http_request(raw).unwrap();
        assert_eq!(
            (request.method.as_str(), request.path.as_str()),
            ("POST", "/v2")
        );
        assert_eq!(
            request
                .headers
                .iter()
                .filter(|(n, _)| n == "x-tokenauth-org-id")
                .count(),
            2,
            "repeated raw headers stay separate"
        );
        assert!(http_request(CheckRequest::default()).is_none());
    }

    #[test]
    fn denials_carry_status_challenge_and_json_body() {
        let response = denied(
            &Denial::MissingCredential,
            None,
            Some("test_api:run"),
            Some("/v2/test"),
        );
        assert_eq!(response.status.unwrap().code, Code::Unauthenticated as i32);
        let Some(HttpResponse::DeniedResponse(denied)) = response.http_response else {
            panic!("not a denial");
        };
        assert_eq!(denied.status.unwrap().code, 401);
        let body: serde_json::Value = serde_json::from_str(&denied.body).unwrap();
        assert_eq!(body["code"], "missing_credential");
        let headers: Vec<(String, String)> = denied
            .headers
            .into_iter()
            .map(|h| {
                let h = h.header.unwrap();
                (h.key, h.value)
            })
            .collect();
        assert!(headers.contains(&("content-type".into(), "application/json".into())));
        assert!(headers.contains(&(
            "www-authenticate".into(),
            "Bearer error=\"invalid_token\"".into()
        )));
    }

    fn denied_parts(response: CheckResponse) -> (Vec<(String, String)>, serde_json::Value) {
        let Some(HttpResponse::DeniedResponse(denied)) = response.http_response else {
            panic!("not a denial");
        };
        let headers = denied
            .headers
            .into_iter()
            .map(|h| {
                let h = h.header.unwrap();
                (h.key, h.value)
            })
            .collect();
        (headers, serde_json::from_str(&denied.body).unwrap())
    }

    #[test]
    fn a_missing_permission_is_named_in_a_header_and_the_body_and_nothing_else_is() {
        use crate::domain::token::Reason;
        let (headers, body) = denied_parts(denied(
            &Denial::Token(Reason::InsufficientPermission),
            None,
            Some("test_api:run"),
            Some("/v2/test"),
        ));
        assert!(headers.contains(&(
            "x-tokenauth-required-permission".into(),
            "test_api:run".into()
        )));
        assert_eq!(body["required_permission"], "test_api:run");
        assert_eq!(body["code"], "insufficient_permission");
        // A member's role that no longer allows it names it the same way.
        let (headers, body) = denied_parts(denied(
            &Denial::Token(Reason::RoleInsufficient),
            None,
            Some("test_api:run"),
            Some("/v2/test"),
        ));
        assert!(headers.contains(&(
            "x-tokenauth-required-permission".into(),
            "test_api:run".into()
        )));
        assert_eq!(body["required_permission"], "test_api:run");
        assert_eq!(body["code"], "role_insufficient");
        // Other denials name no permission: it is not what was missing.
        for denial in [
            Denial::Token(Reason::WrongScope),
            Denial::Token(Reason::Revoked),
            Denial::MissingCredential,
        ] {
            let (headers, body) = denied_parts(denied(&denial, None, Some("test_api:run"), None));
            assert!(
                !headers.iter().any(|(k, _)| k == REQUIRED_PERMISSION_HEADER),
                "{denial:?}"
            );
            assert!(body.get("required_permission").is_none(), "{denial:?}");
        }
    }
}
