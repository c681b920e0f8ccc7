//! Bad input gets a clear error naming the field, changes nothing, and never
//! takes the server down.

use tokenauth::proto::{CheckRequest, GetTokenRequest, IssueTokenRequest, ListTokensRequest};
use tonic::{Code, Request, metadata::MetadataValue};

use crate::harness::{
    TestServer, admin, check, issue, personal_token, service_token, workspace_token,
};

fn timestamp_in(seconds: i64) -> prost_types::Timestamp {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    prost_types::Timestamp {
        seconds: now + seconds,
        nanos: 0,
    }
}

#[tokio::test]
async fn refused_issue_requests_name_the_field_and_create_nothing() {
    let server = TestServer::start().await;
    let base = service_token("org-1", &["scim:read"]);
    let too_many: Vec<String> = (0..65).map(|_| "scim:read".to_owned()).collect();
    let cases: Vec<(IssueTokenRequest, &str, &str)> = vec![
        (
            IssueTokenRequest {
                name: String::new(),
                ..base.clone()
            },
            "name",
            "required",
        ),
        (
            IssueTokenRequest {
                name: "   ".into(),
                ..base.clone()
            },
            "name",
            "required",
        ),
        (
            IssueTokenRequest {
                name: "x".repeat(129),
                ..base.clone()
            },
            "name",
            "longer",
        ),
        (
            IssueTokenRequest {
                name: "a\u{7}b".into(),
                ..base.clone()
            },
            "name",
            "control",
        ),
        (
            IssueTokenRequest {
                org_id: String::new(),
                ..base.clone()
            },
            "org_id",
            "required",
        ),
        (
            IssueTokenRequest {
                org_id: "o".repeat(129),
                ..base.clone()
            },
            "org_id",
            "longer",
        ),
        (
            IssueTokenRequest {
                org_id: "org 1".into(),
                ..base.clone()
            },
            "org_id",
            "printable",
        ),
        (
            IssueTokenRequest {
                workspace_id: "w\u{e9}".into(),
                ..base.clone()
            },
            "workspace_id",
            "printable",
        ),
        (
            IssueTokenRequest {
                permissions: vec![],
                ..base.clone()
            },
            "permissions",
            "at least one",
        ),
        (
            IssueTokenRequest {
                permissions: too_many,
                ..base.clone()
            },
            "permissions",
            "at most 64",
        ),
        (
            IssueTokenRequest {
                permissions: vec!["scim:delete".into()],
                ..base.clone()
            },
            "permissions",
            "scim:delete",
        ),
        (
            IssueTokenRequest {
                permissions: vec!["transformations:read".into()],
                ..base.clone()
            },
            "permissions",
            "workspace-level",
        ),
        (
            workspace_token("org-1", "ws-1", &["audit_logs:read"]),
            "permissions",
            "organization-level",
        ),
        (
            IssueTokenRequest {
                kind: 0,
                ..base.clone()
            },
            "kind",
            "required",
        ),
        (
            IssueTokenRequest {
                kind: 9,
                ..base.clone()
            },
            "kind",
            "not a token kind",
        ),
        (
            IssueTokenRequest {
                owner_user_id: "alice".into(),
                ..base.clone()
            },
            "owner_user_id",
            "service",
        ),
        (
            IssueTokenRequest {
                owner_user_id: String::new(),
                ..personal_token("org-1", "x", &["scim:read"])
            },
            "owner_user_id",
            "required",
        ),
        (
            IssueTokenRequest {
                expires_at: Some(timestamp_in(-60)),
                ..base.clone()
            },
            "expires_at",
            "past",
        ),
        (
            IssueTokenRequest {
                expires_at: Some(timestamp_in(400 * 86_400)),
                ..base.clone()
            },
            "expires_at",
            "maximum token lifetime",
        ),
        (
            IssueTokenRequest {
                expires_at: Some(prost_types::Timestamp {
                    seconds: 1,
                    nanos: -5,
                }),
                ..base.clone()
            },
            "expires_at",
            "not a valid timestamp",
        ),
    ];
    for (request, field, needle) in cases {
        let status = server
            .tokens()
            .issue_token(request.clone())
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{request:?}");
        assert!(
            status.message().starts_with(field),
            "{field}: {}",
            status.message()
        );
        assert!(
            status.message().contains(needle),
            "{needle}: {}",
            status.message()
        );
    }
    let listed = server
        .tokens()
        .list_tokens(ListTokensRequest {
            actor: admin("org-1"),
            org_id: "org-1".into(),
            include_revoked: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        listed.tokens.is_empty(),
        "a refused request must not create a token"
    );
    server.stop().await;
}

#[tokio::test]
async fn malformed_ids_are_invalid_argument() {
    let server = TestServer::start().await;
    for id in ["", "tok_short", "not-an-id", &"x".repeat(10_000)] {
        let status = server
            .tokens()
            .get_token(GetTokenRequest {
                actor: admin("org-1"),
                id: id.to_owned(),
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(status.message().starts_with("id"), "{}", status.message());
    }
    server.stop().await;
}

#[tokio::test]
async fn oversized_messages_and_metadata_are_refused_and_the_server_stays_up() {
    let server = TestServer::start().await;
    let issued = issue(&server, service_token("org-1", &["scim:read"])).await;

    let huge = CheckRequest {
        token: "x".repeat(200 * 1024),
        permission: "scim:read".into(),
        org_id: "org-1".into(),
        workspace_id: String::new(),
        ..Default::default()
    };
    let status = server.check().check(huge).await.unwrap_err();
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");

    let mut request = Request::new(CheckRequest {
        token: issued.secret.clone(),
        permission: "scim:read".into(),
        org_id: "org-1".into(),
        workspace_id: String::new(),
        ..Default::default()
    });
    let big_value = MetadataValue::try_from("v".repeat(64 * 1024)).unwrap();
    request.metadata_mut().insert("x-padding", big_value);
    assert!(server.check().check(request).await.is_err());

    // Binary and odd metadata are ignored by Check.
    let mut odd = Request::new(CheckRequest {
        token: issued.secret.clone(),
        permission: "scim:read".into(),
        org_id: "org-1".into(),
        workspace_id: String::new(),
        ..Default::default()
    });
    odd.metadata_mut()
        .insert_bin("x-junk-bin", MetadataValue::from_bytes(&[0xff, 0x00, 0xfe]));
    assert!(
        server
            .check()
            .check(odd)
            .await
            .unwrap()
            .into_inner()
            .allowed
    );

    // A fresh connection is served normally afterwards.
    let fresh = tonic::transport::Channel::from_shared(format!("http://{}", server.addr()))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let response = tokenauth::proto::check_service_client::CheckServiceClient::new(fresh)
        .check(CheckRequest {
            token: issued.secret.clone(),
            permission: "scim:read".into(),
            org_id: "org-1".into(),
            workspace_id: String::new(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(response.allowed);
    assert!(
        check(&server, &issued.secret, "scim:read", "org-1", "")
            .await
            .allowed
    );
    server.stop().await;
}

/// A CheckRequest as raw bytes on the wire: the same field numbers, but
/// `bytes` where the contract says `string`, to send invalid UTF-8.
#[derive(Clone, PartialEq, prost::Message)]
struct RawCheckRequest {
    #[prost(bytes = "vec", tag = "1")]
    token: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    permission: Vec<u8>,
    #[prost(bytes = "vec", tag = "3")]
    org_id: Vec<u8>,
}

#[tokio::test]
async fn invalid_utf8_in_a_string_field_is_refused_and_the_server_stays_up() {
    let server = TestServer::start().await;
    let issued = issue(&server, service_token("org-1", &["scim:read"])).await;
    let mut grpc = tonic::client::Grpc::new(server.channel.clone());
    grpc.ready().await.unwrap();
    let path =
        tonic::codegen::http::uri::PathAndQuery::from_static("/tokenauth.v1.CheckService/Check");
    let request = RawCheckRequest {
        token: vec![0x74, 0x6b, 0xff, 0xfe, 0x00],
        permission: b"scim:read".to_vec(),
        org_id: b"org-1".to_vec(),
    };
    let status = grpc
        .unary::<_, tokenauth::proto::CheckResponse, _>(
            Request::new(request),
            path,
            tonic_prost::ProstCodec::default(),
        )
        .await
        .unwrap_err();
    // gRPC's convention for an unparsable request message is INTERNAL; the
    // message says what was wrong.
    assert_eq!(status.code(), Code::Internal);
    assert!(status.message().contains("UTF-8"), "{}", status.message());
    assert!(
        check(&server, &issued.secret, "scim:read", "org-1", "")
            .await
            .allowed
    );
    server.stop().await;
}
