//! The corpus's seeds (valid encodings of every request message) and the
//! entry points' own checks.

use std::collections::HashMap;

use envoy_types::ext_authz::v3::pb::CheckRequest as EnvoyCheckRequest;

use envoy_types::pb::envoy::{
    config::core::v3::{Address, HeaderMap, HeaderValue, SocketAddress, address, socket_address},
    service::auth::v3::{AttributeContext, attribute_context},
};

use super::*;
use crate::domain::secret::Secret;

const ID: &str = "tok_01ARZ3NDEKTSV4RRFFQ69G5FAV";

fn actor(user: &str, role: proto::OrgRole) -> Option<proto::Actor> {
    Some(proto::Actor {
        user_id: user.into(),
        org_id: "org-1".into(),
        org_role: role as i32,
    })
}

fn admin() -> Option<proto::Actor> {
    actor("root", proto::OrgRole::Admin)
}

fn at(seconds: i64) -> Option<prost_types::Timestamp> {
    Some(prost_types::Timestamp { seconds, nanos: 0 })
}

fn input(message: &str, encoded: Vec<u8>) -> Vec<u8> {
    let selector = REQUEST_MESSAGES.iter().position(|m| *m == message).unwrap();
    let mut data = vec![u8::try_from(selector).unwrap()];
    data.extend(encoded);
    data
}

fn secret() -> String {
    Secret::generate(TokenKind::Service)
        .unwrap()
        .expose()
        .to_owned()
}

/// Valid encodings of every request message: the seeds of the corpus.
fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let cursor = TokenId::parse(ID).unwrap().to_bytes();
    let listing = proto::ListTokensRequest {
        org_id: "org-1".into(),
        workspace_id: "ws-1".into(),
        kind: proto::TokenKind::Service as i32,
        page_size: 10,
        actor: admin(),
        ..Default::default()
    };
    let fingerprint = list_fingerprint(&TokenQuery::try_from(listing.clone()).unwrap());
    let usage = proto::ListTokenUsageRequest {
        org_id: "org-1".into(),
        token_id: ID.into(),
        start_time: at(1_700_000_000),
        end_time: at(1_700_003_600),
        page_size: 100,
        actor: admin(),
        ..Default::default()
    };
    let usage_cursor =
        pagination::encode(usage_fingerprint(&(&usage).try_into().unwrap()), &[1, 2, 3]);
    let audit = proto::ListAuditEventsRequest {
        org_id: "org-1".into(),
        workspace_id: "ws-1".into(),
        actor: "alice".into(),
        action: proto::AuditAction::Revoked as i32,
        start_time: at(1_700_000_000),
        page_size: 20,
        caller_actor: admin(),
        ..Default::default()
    };
    let audit_cursor =
        pagination::encode(audit_fingerprint(&(&audit).try_into().unwrap()), &cursor);
    let envoy = |http: attribute_context::HttpRequest| {
        EnvoyCheckRequest {
            attributes: Some(AttributeContext {
                source: Some(attribute_context::Peer {
                    address: Some(Address {
                        address: Some(address::Address::SocketAddress(SocketAddress {
                            address: "203.0.113.7".into(),
                            port_specifier: Some(socket_address::PortSpecifier::PortValue(44321)),
                            ..SocketAddress::default()
                        })),
                    }),
                    ..attribute_context::Peer::default()
                }),
                request: Some(attribute_context::Request {
                    time: None,
                    http: Some(http),
                }),
                context_extensions: HashMap::from([("org_id".into(), "org-1".into())]),
                ..AttributeContext::default()
            }),
        }
        .encode_to_vec()
    };
    let raw = |key: &str, value: &str| HeaderValue {
        key: key.into(),
        value: String::new(),
        raw_value: value.as_bytes().to_vec(),
    };
    vec![
        (
            "tokenauth.v1.IssueTokenRequest",
            proto::IssueTokenRequest {
                kind: proto::TokenKind::Service as i32,
                org_id: "org-1".into(),
                name: "ci deploy".into(),
                permissions: vec!["scim:read".into()],
                actor: admin(),
                ..Default::default()
            }
            .encode_to_vec(),
        ),
        (
            "tokenauth.v1.IssueTokenRequest",
            proto::IssueTokenRequest {
                kind: proto::TokenKind::Personal as i32,
                org_id: "org-1".into(),
                workspace_id: "ws-1".into(),
                name: "laptop".into(),
                permissions: vec!["transformations:read".into()],
                owner_user_id: "alice".into(),
                actor: actor("alice", proto::OrgRole::ReadWrite),
                ..Default::default()
            }
            .encode_to_vec(),
        ),
        (
            "tokenauth.v1.GetTokenRequest",
            proto::GetTokenRequest {
                id: ID.into(),
                actor: admin(),
            }
            .encode_to_vec(),
        ),
        (
            "tokenauth.v1.ListTokensRequest",
            proto::ListTokensRequest {
                page_token: pagination::encode(fingerprint, &cursor),
                ..listing
            }
            .encode_to_vec(),
        ),
        (
            "tokenauth.v1.ListTokensRequest",
            proto::ListTokensRequest {
                org_id: "org-1".into(),
                include_revoked: true,
                actor: actor("alice", proto::OrgRole::ReadOnly),
                ..Default::default()
            }
            .encode_to_vec(),
        ),
        (
            "tokenauth.v1.RevokeTokenRequest",
            proto::RevokeTokenRequest {
                id: ID.to_ascii_lowercase(),
                actor: admin(),
            }
            .encode_to_vec(),
        ),
        (
            "tokenauth.v1.RevokeAllRequest",
            proto::RevokeAllRequest {
                org_id: "org-1".into(),
                workspace_id: "ws-1".into(),
                kind: proto::TokenKind::Service as i32,
                actor: admin(),
                ..Default::default()
            }
            .encode_to_vec(),
        ),
        (
            "tokenauth.v1.RevokeAllRequest",
            proto::RevokeAllRequest {
                org_id: "org-1".into(),
                owner_user_id: "alice".into(),
                ..Default::default()
            }
            .encode_to_vec(),
        ),
        (
            "tokenauth.v1.RotateTokenRequest",
            proto::RotateTokenRequest {
                id: ID.into(),
                grace_period: Some(prost_types::Duration {
                    seconds: 3600,
                    nanos: 500,
                }),
                actor: admin(),
            }
            .encode_to_vec(),
        ),
        (
            "tokenauth.v1.RotateTokenRequest",
            proto::RotateTokenRequest {
                id: ID.into(),
                grace_period: None,
                actor: actor("alice", proto::OrgRole::ReadWrite),
            }
            .encode_to_vec(),
        ),
        (
            "tokenauth.v1.ListTokenUsageRequest",
            proto::ListTokenUsageRequest {
                page_token: usage_cursor,
                ..usage
            }
            .encode_to_vec(),
        ),
        (
            "tokenauth.v1.ListAuditEventsRequest",
            proto::ListAuditEventsRequest {
                page_token: audit_cursor,
                ..audit
            }
            .encode_to_vec(),
        ),
        (
            "tokenauth.v1.CheckRequest",
            proto::CheckRequest {
                token: secret(),
                permission: "transformations:read".into(),
                org_id: "org-1".into(),
                workspace_id: "ws-1".into(),
                ..Default::default()
            }
            .encode_to_vec(),
        ),
        ("tokenauth.v1.BackupRequest", Vec::new()),
        (
            "envoy.service.auth.v3.CheckRequest",
            envoy(attribute_context::HttpRequest {
                method: "GET".into(),
                path: "/v2/workspaces/ws-1/transformations/x?y=1".into(),
                headers: HashMap::from([
                    ("authorization".into(), format!("Bearer {}", secret())),
                    ("x-org-id".into(), "org-1".into()),
                    ("X-Tokenauth-Org-Id".into(), "org-1".into()),
                    ("x_tokenauth_kind".into(), "PERSONAL".into()),
                ]),
                ..Default::default()
            }),
        ),
        (
            "envoy.service.auth.v3.CheckRequest",
            envoy(attribute_context::HttpRequest {
                header_map: Some(HeaderMap {
                    headers: vec![
                        raw(":method", "POST"),
                        raw(":path", "/v2/admin/x"),
                        raw("X-Api-Key", &secret()),
                        raw("x-org-id", "org-1"),
                        raw("x-tokenauth-workspace-id", "ws-2"),
                    ],
                }),
                ..Default::default()
            }),
        ),
        (
            "tokenauth.v1.ReportLeakedSecretsRequest",
            proto::ReportLeakedSecretsRequest {
                secrets: vec![secret(), secret(), "not-a-secret".into()],
                source: "github".into(),
                url: "https://github.com/acme/app/blob/main/ci.yml".into(),
                dry_run: true,
                actor: admin(),
            }
            .encode_to_vec(),
        ),
        (
            "tokenauth.v1.SetMemberRequest",
            proto::SetMemberRequest {
                org_id: "org-1".into(),
                user_id: "bob".into(),
                org_role: proto::OrgRole::ReadOnly as i32,
                actor: admin(),
            }
            .encode_to_vec(),
        ),
        (
            "tokenauth.v1.ReportUnusedPermissionsRequest",
            proto::ReportUnusedPermissionsRequest {
                org_id: "org-1".into(),
                workspace_id: "ws-1".into(),
                since: at(1_700_000_000),
                page_size: 100,
                actor: admin(),
                ..Default::default()
            }
            .encode_to_vec(),
        ),
        (
            "tokenauth.v1.WatchEventsRequest",
            proto::WatchEventsRequest {
                org_id: "org-1".into(),
                after: "fc1_00000000000000000000000000000007".into(),
                actions: vec![
                    proto::AuditAction::Issued as i32,
                    proto::AuditAction::Revoked as i32,
                ],
                caller_actor: admin(),
            }
            .encode_to_vec(),
        ),
        (
            "tokenauth.v1.RemoveMemberRequest",
            proto::RemoveMemberRequest {
                org_id: "org-1".into(),
                user_id: "bob".into(),
                dry_run: true,
                actor: None,
            }
            .encode_to_vec(),
        ),
    ]
}

#[test]
fn every_seed_passes_every_conversion_of_its_message() {
    let seeds = seeds();
    for message in REQUEST_MESSAGES {
        assert!(
            seeds.iter().any(|(m, _)| *m == message),
            "no seed for {message}"
        );
    }
    for (message, encoded) in seeds {
        assert_eq!(request(&input(message, encoded)), Some(message));
    }
}

#[test]
fn refusals_are_not_counted_as_accepted() {
    let bad_id = proto::GetTokenRequest {
        id: "tok_nope".into(),
        actor: admin(),
    };
    assert_eq!(
        request(&input(
            "tokenauth.v1.GetTokenRequest",
            bad_id.encode_to_vec()
        )),
        None
    );
    let empty_range = proto::ListTokenUsageRequest {
        org_id: "org-1".into(),
        start_time: at(5),
        end_time: at(5),
        ..Default::default()
    };
    assert_eq!(
        request(&input(
            "tokenauth.v1.ListTokenUsageRequest",
            empty_range.encode_to_vec()
        )),
        None
    );
    assert_eq!(request(&[10, 0xff]), None, "not an Envoy CheckRequest");
    // A url that carries a secret would keep it in the audit log.
    let leaky_url = proto::ReportLeakedSecretsRequest {
        secrets: vec![secret()],
        url: format!("https://ci.example/log?t={}", secret()),
        ..Default::default()
    };
    assert_eq!(
        request(&input(
            "tokenauth.v1.ReportLeakedSecretsRequest",
            leaky_url.encode_to_vec()
        )),
        None
    );
    let no_role = proto::SetMemberRequest {
        org_id: "org-1".into(),
        user_id: "bob".into(),
        ..Default::default()
    };
    assert_eq!(
        request(&input(
            "tokenauth.v1.SetMemberRequest",
            no_role.encode_to_vec()
        )),
        None
    );
}

#[test]
fn the_fuzzed_route_tables_hold_their_routes() {
    for policy in policies() {
        assert_eq!(policy.routes.routes().len(), 6);
        assert_eq!(policy.api_key_header.as_deref(), Some(API_KEY_HEADER));
    }
    let mut data = vec![0u8];
    data.extend_from_slice(b"/v2/workspaces/ws-1/transformations/x");
    route(&data);
    let path = policies()[0]
        .routes
        .normalize("/v2/workspaces/ws-1/transformations/x")
        .unwrap();
    assert!(policies()[0].routes.find("GET", &path).is_some());
}
