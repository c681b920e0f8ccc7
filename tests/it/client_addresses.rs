//! Where a token was used from (issue #18, forensics): the latest five
//! distinct client addresses of its Checks, from the native Check's
//! `client_address` and from Envoy's source address on the mesh path,
//! shown by GetToken and LookupSecret at once (before the recorder's
//! flush), kept across a restart, bounded under a flood, and a malformed
//! address refused without deciding anything. Runs on sled and, with
//! `TEST_STORE=postgres`, on PostgreSQL.

use std::time::Duration;

use envoy_types::pb::envoy::{
    config::core::v3::{Address, SocketAddress, address, socket_address},
    service::auth::v3::{
        AttributeContext, CheckRequest as EnvoyCheckRequest, attribute_context,
        authorization_client::AuthorizationClient, check_response::HttpResponse,
    },
};
use tokenauth::{
    config::Config,
    proto::{CheckRequest, GetTokenRequest, ListTokensRequest, LookupSecretRequest, Token},
    testing::fixtures::route_policy,
};
use tonic::Code;

use crate::harness::{TestServer, admin, id_of, issue, workspace_token};

/// A server whose recorder never flushes on its own: what GetToken shows
/// before a restart was merged from memory.
async fn start() -> TestServer {
    TestServer::start_with(|config| {
        config.usage.flush_interval = Duration::from_secs(3600);
        config.ext_authz = Config::from_toml(&route_policy("")).unwrap().ext_authz;
    })
    .await
}

fn check_from(secret: &str, client_address: &str) -> CheckRequest {
    CheckRequest {
        token: secret.to_owned(),
        permission: "test_api:run".into(),
        org_id: "org-1".into(),
        workspace_id: "ws-1".into(),
        client_address: client_address.to_owned(),
    }
}

async fn get(server: &TestServer, id: &str) -> Token {
    server
        .tokens()
        .get_token(GetTokenRequest {
            id: id.to_owned(),
            actor: admin("org-1"),
        })
        .await
        .unwrap()
        .into_inner()
        .token
        .unwrap()
}

fn addresses(token: &Token) -> Vec<String> {
    token
        .client_addresses
        .iter()
        .map(|a| {
            assert!(a.last_seen_at.is_some(), "{a:?}");
            a.address.clone()
        })
        .collect()
}

#[tokio::test]
async fn a_checks_client_address_shows_in_get_token_and_lookup_secret_at_once() {
    let server = start().await;
    let issued = issue(&server, workspace_token("org-1", "ws-1", &["test_api:run"])).await;
    let id = id_of(&issued);
    assert!(get(&server, &id).await.client_addresses.is_empty());
    // A check without an address records none.
    let mut check = server.check();
    let decided = check
        .check(check_from(&issued.secret, ""))
        .await
        .unwrap()
        .into_inner();
    assert!(decided.allowed);
    assert!(get(&server, &id).await.client_addresses.is_empty());

    for address in ["203.0.113.7", "::ffff:198.51.100.4", "2001:db8::42"] {
        let decided = check
            .check(check_from(&issued.secret, address))
            .await
            .unwrap()
            .into_inner();
        assert!(decided.allowed);
    }
    // A denied Check was still made from there.
    let mut denied = check_from(&issued.secret, "192.0.2.200");
    denied.workspace_id = "ws-2".into();
    assert!(!check.check(denied).await.unwrap().into_inner().allowed);

    // Newest first; the IPv4-mapped address is its IPv4 client.
    let expected = ["192.0.2.200", "2001:db8::42", "198.51.100.4", "203.0.113.7"];
    assert_eq!(addresses(&get(&server, &id).await), expected);
    let found = server
        .tokens()
        .lookup_secret(LookupSecretRequest {
            secret: issued.secret.clone(),
            actor: admin("org-1"),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(addresses(&found.token.unwrap()), expected);
    // Listings leave them out (a page would cost a read per token).
    let listed = server
        .tokens()
        .list_tokens(ListTokensRequest {
            org_id: "org-1".into(),
            actor: admin("org-1"),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.tokens.len(), 1);
    assert!(listed.tokens[0].client_addresses.is_empty());
}

/// A Check as Envoy sends it, from a client at `source`.
fn envoy_check(secret: &str, source: &str, port: u32) -> EnvoyCheckRequest {
    let headers = [
        (":method", "POST"),
        (":path", "/v2/test/run"),
        ("authorization", &format!("Bearer {secret}")),
        ("x-workspace-id", "ws-1"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    EnvoyCheckRequest {
        attributes: Some(AttributeContext {
            source: Some(attribute_context::Peer {
                address: Some(Address {
                    address: Some(address::Address::SocketAddress(SocketAddress {
                        address: source.to_owned(),
                        port_specifier: Some(socket_address::PortSpecifier::PortValue(port)),
                        ..SocketAddress::default()
                    })),
                }),
                ..attribute_context::Peer::default()
            }),
            request: Some(attribute_context::Request {
                time: None,
                http: Some(attribute_context::HttpRequest {
                    id: "req-1".into(),
                    method: "POST".into(),
                    headers,
                    path: "/v2/test/run".into(),
                    host: "api.example.com".into(),
                    scheme: "https".into(),
                    protocol: "HTTP/1.1".into(),
                    ..Default::default()
                }),
            }),
            context_extensions: [("org_id".to_owned(), "org-1".to_owned())].into(),
            ..AttributeContext::default()
        }),
    }
}

#[tokio::test]
async fn the_mesh_path_records_envoys_source_address() {
    let server = start().await;
    let issued = issue(&server, workspace_token("org-1", "ws-1", &["test_api:run"])).await;
    let mut envoy = AuthorizationClient::new(server.channel.clone());
    // Two requests from one client (its ports differ): one address.
    for port in [44321, 44322] {
        let response = envoy
            .check(envoy_check(&issued.secret, "198.51.100.23", port))
            .await
            .unwrap()
            .into_inner();
        assert!(
            matches!(response.http_response, Some(HttpResponse::OkResponse(_))),
            "{response:?}"
        );
    }
    let token = get(&server, &id_of(&issued)).await;
    assert_eq!(addresses(&token), ["198.51.100.23"]);
    assert!(token.last_used_at.is_some());
}

#[tokio::test]
async fn a_flood_of_addresses_keeps_the_latest_five_across_a_restart() {
    let server = start().await;
    let issued = issue(&server, workspace_token("org-1", "ws-1", &["test_api:run"])).await;
    let id = id_of(&issued);
    let mut check = server.check();
    for n in 0..100 {
        let address = format!("10.0.{}.{}", n / 10, n % 10);
        let decided = check
            .check(check_from(&issued.secret, &address))
            .await
            .unwrap()
            .into_inner();
        assert!(decided.allowed);
    }
    let latest = ["10.0.9.9", "10.0.9.8", "10.0.9.7", "10.0.9.6", "10.0.9.5"];
    assert_eq!(addresses(&get(&server, &id).await), latest);
    // Shutdown writes what the recorder holds; the store keeps it.
    let server = server.restart().await;
    assert_eq!(addresses(&get(&server, &id).await), latest);
    // And after a restart, a new address joins those stored.
    let decided = server
        .check()
        .check(check_from(&issued.secret, "203.0.113.99"))
        .await
        .unwrap()
        .into_inner();
    assert!(decided.allowed);
    assert_eq!(
        addresses(&get(&server, &id).await),
        [
            "203.0.113.99",
            "10.0.9.9",
            "10.0.9.8",
            "10.0.9.7",
            "10.0.9.6"
        ]
    );
}

#[tokio::test]
async fn a_malformed_client_address_is_refused_and_decides_nothing() {
    let server = start().await;
    let issued = issue(&server, workspace_token("org-1", "ws-1", &["test_api:run"])).await;
    // Within the request size limit, past the address bound.
    let long = "1".repeat(1_000);
    for (bad, message) in [
        (
            "203.0.113.7:443",
            "client_address: is not an IPv4 or IPv6 address",
        ),
        (
            "[2001:db8::1]",
            "client_address: is not an IPv4 or IPv6 address",
        ),
        (
            "fe80::1%eth0",
            "client_address: is not an IPv4 or IPv6 address",
        ),
        (
            "client.example.com",
            "client_address: is not an IPv4 or IPv6 address",
        ),
        (long.as_str(), "client_address: is longer than 45 bytes"),
    ] {
        let status = server
            .check()
            .check(check_from(&issued.secret, bad))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{bad:.40}");
        assert!(
            status.message().starts_with(message),
            "{bad:.40}: {status:?}"
        );
    }
    // No decision was made: no use, no address.
    let token = get(&server, &id_of(&issued)).await;
    assert!(token.last_used_at.is_none());
    assert!(token.client_addresses.is_empty());
}

/// Addresses wait in memory for a bounded number of tokens (here one per
/// shard of the recorder, sixteen in all): a Check of a token past the
/// bound is decided as ever, keeps no address, and is counted.
#[tokio::test]
async fn a_flood_of_tokens_keeps_addresses_within_the_bound_and_counts_the_rest() {
    let server = TestServer::start_with(|config| {
        config.usage.flush_interval = Duration::from_secs(3600);
        config.usage.max_pending_client_addresses = 1;
        config.admin.listen = Some("127.0.0.1:0".parse().unwrap());
    })
    .await;
    const TOKENS: usize = 40;
    let mut issued = Vec::new();
    for _ in 0..TOKENS {
        issued.push(issue(&server, workspace_token("org-1", "ws-1", &["test_api:run"])).await);
    }
    let mut check = server.check();
    for token in &issued {
        let decided = check
            .check(check_from(&token.secret, "198.51.100.77"))
            .await
            .unwrap()
            .into_inner();
        assert!(decided.allowed);
    }
    let mut kept = 0;
    for token in &issued {
        let shown = get(&server, &id_of(token)).await;
        assert!(shown.last_used_at.is_some(), "every Check was noted");
        kept += usize::from(!shown.client_addresses.is_empty());
    }
    assert!((1..=16).contains(&kept), "{kept}");
    let body = crate::operations::http_get(server.admin_addr().unwrap(), "/metrics").await;
    let expected = format!("tokenauth_client_addresses_dropped_total {}", TOKENS - kept);
    assert!(
        body.lines().any(|line| line == expected),
        "missing {expected}:\n{body}"
    );
}
