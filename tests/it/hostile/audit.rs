//! What untrusted callers can write into the audit log and the logs: request
//! ids and addresses from every path, refusal floods by one organization or
//! one address against another's audit trail, and the retired-secret flood.
//! Every refusal a flood causes is accounted for (an event's `count`, or a
//! later event's `dropped_before`), while what is stored stays bounded.

use std::{collections::HashMap, net::IpAddr, time::Duration};

use envoy_types::pb::envoy::{
    config::core::v3::{Address, SocketAddress, address, socket_address},
    service::auth::v3::{
        AttributeContext, CheckRequest as EnvoyCheck, attribute_context,
        authorization_client::AuthorizationClient,
    },
};
use prost::Message;
use tokenauth::{
    config::Config,
    proto::{
        AuditEvent, AuditOutcome, CheckRequest, GetTokenRequest, IssueTokenResponse,
        ListAuditEventsRequest, OrgRole, PeerSource, RevokeTokenRequest, RotateTokenRequest,
        token_service_client::TokenServiceClient,
    },
};
use tonic::{Request, transport::Channel};

use crate::{
    child::ChildSetup,
    harness::{
        Authed, TestServer, admin, bearer_of, id_of, issue, member, service_token, workspace_token,
    },
};

/// Route rules for the mesh tests: `/scim/**` needs `scim:read` in the
/// organization Envoy names in the route's context extensions.
const ROUTES: &str = r#"
[ext_authz]
org_id = { context_extension = "org_id" }
# The 1 MiB request id below must reach the handler, whatever the default.
max_request_bytes = 4194304

[[ext_authz.routes]]
path = "/scim/**"
permission = "scim:read"
"#;

/// Every event of `org`, oldest first.
async fn events_of(server: &TestServer, org: &str) -> Vec<AuditEvent> {
    let mut all = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = server
            .audit()
            .list_audit_events(ListAuditEventsRequest {
                org_id: org.to_owned(),
                page_token,
                page_size: 500,
                caller_actor: admin(org),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        all.extend(page.events);
        if page.next_page_token.is_empty() {
            all.reverse();
            return all;
        }
        page_token = page.next_page_token;
    }
}

/// Refused calls an event accounts for: itself (or the repeats it counts),
/// plus the unrecorded refusals it reports.
fn accounted(events: &[AuditEvent]) -> u64 {
    events
        .iter()
        .map(|e| e.count.max(1) + e.dropped_before)
        .sum()
}

/// The rule every request id that is stored must pass.
fn plain_request_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:/+=".contains(&b))
}

/// A token client calling from `local` (any 127/8 address is loopback), so
/// that the server sees another source address.
async fn tokens_from(server: &TestServer, local: &str) -> TokenServiceClient<Authed> {
    let channel = Channel::from_shared(format!("http://{}", server.addr()))
        .unwrap()
        .local_address(Some(local.parse::<IpAddr>().unwrap()))
        .connect()
        .await
        .unwrap();
    TokenServiceClient::with_interceptor(channel, bearer_of(None))
}

/// A request to `/scim/users` in `org` as Envoy describes it, with the
/// client address Envoy reports and the given headers.
fn envoy_check(org: &str, source: &str, headers: &[(&str, &str)]) -> EnvoyCheck {
    EnvoyCheck {
        attributes: Some(AttributeContext {
            source: Some(attribute_context::Peer {
                address: Some(Address {
                    address: Some(address::Address::SocketAddress(SocketAddress {
                        address: source.to_owned(),
                        port_specifier: Some(socket_address::PortSpecifier::PortValue(40000)),
                        ..SocketAddress::default()
                    })),
                }),
                ..attribute_context::Peer::default()
            }),
            request: Some(attribute_context::Request {
                time: None,
                http: Some(attribute_context::HttpRequest {
                    method: "GET".into(),
                    path: "/scim/users".into(),
                    headers: headers
                        .iter()
                        .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
                        .collect(),
                    ..Default::default()
                }),
            }),
            context_extensions: HashMap::from([("org_id".to_owned(), org.to_owned())]),
            ..AttributeContext::default()
        }),
    }
}

/// A service token of `org`, rotated with no grace: its first secret is
/// retired, and presenting it is audited.
async fn rotated_away(server: &TestServer, org: &str) -> IssueTokenResponse {
    let issued = issue(server, service_token(org, &["scim:read"])).await;
    server
        .tokens()
        .rotate_token(RotateTokenRequest {
            id: id_of(&issued),
            grace_period: None,
            actor: admin(org),
        })
        .await
        .unwrap();
    issued
}

async fn start_with_routes() -> TestServer {
    let section = Config::from_toml(ROUTES).unwrap().ext_authz;
    TestServer::start_with(move |config| config.ext_authz = section).await
}

#[tokio::test]
async fn request_ids_that_are_not_plain_are_never_stored_and_every_event_is_bounded() {
    let server = start_with_routes().await;
    let retired = rotated_away(&server, "org-1").await;
    let bearer = format!("Bearer {}", retired.secret);
    let megabyte = "A".repeat(1 << 20);
    let hostile = [
        ("203.0.113.1", "req\r\nX-Injected: yes"),
        ("203.0.113.2", "\u{1b}[31mred\u{1b}[0m"),
        ("203.0.113.3", "\"},{\"org_id\":\"org-2\""),
        ("203.0.113.4", megabyte.as_str()),
    ];
    let mut mesh = AuthorizationClient::new(server.channel.clone());
    for (source, request_id) in hostile {
        // Distinct reported addresses: four distinct refusals, each recorded.
        let check = envoy_check(
            "org-1",
            source,
            &[("authorization", &bearer), ("x-request-id", request_id)],
        );
        // A proxy limit may refuse the megabyte before any Check: fine too.
        let _ = mesh.check(check).await;
    }
    let plain = envoy_check(
        "org-1",
        "203.0.113.5",
        &[("authorization", &bearer), ("x-request-id", "envoy-req-5")],
    );
    mesh.check(plain).await.unwrap();

    // The gRPC path, under the same rule: a JSON fragment, and an id longer
    // than the rule allows, on a refused management call.
    let mut tokens = server.tokens_with(None);
    let json = "{\"org_id\":\"org-2\"}";
    let mut request = Request::new(GetTokenRequest {
        id: id_of(&retired),
        actor: None,
    });
    request
        .metadata_mut()
        .insert("x-request-id", json.parse().unwrap());
    tokens.get_token(request).await.unwrap_err();
    let long = "b".repeat(100);
    let mut request = Request::new(RevokeTokenRequest {
        id: id_of(&retired),
        actor: None,
    });
    request
        .metadata_mut()
        .insert("x-request-id", long.parse().unwrap());
    tokens.revoke_token(request).await.unwrap_err();

    let mut events = Vec::new();
    for _ in 0..200 {
        // Refusals on the Check path are written off the Check path.
        events = events_of(&server, "org-1").await;
        if events
            .iter()
            .filter(|e| e.outcome == AuditOutcome::RetiredSecretPresented as i32)
            .count()
            >= 4
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let retired_events: Vec<&AuditEvent> = events
        .iter()
        .filter(|e| e.outcome == AuditOutcome::RetiredSecretPresented as i32)
        .collect();
    assert!(retired_events.len() >= 4, "{events:#?}");
    for event in &events {
        assert!(
            plain_request_id(&event.request_id),
            "stored request id {:?}",
            event.request_id.chars().take(80).collect::<String>()
        );
        assert!(
            event.encoded_len() < 1536,
            "an event of {} bytes",
            event.encoded_len()
        );
    }
    for hostile_id in hostile.iter().map(|(_, id)| *id).chain([json, &long]) {
        assert!(events.iter().all(|e| e.request_id != hostile_id));
    }
    // A plain id is kept; the reported address is recorded as reported, by
    // whom; a management call's address is the connection's.
    let by_source = |source: &str| {
        retired_events
            .iter()
            .find(|e| e.peer.starts_with(&format!("{source}:")))
            .copied()
    };
    let plain = by_source("203.0.113.5").expect("the plain request's event");
    assert_eq!(plain.request_id, "envoy-req-5");
    for event in &retired_events {
        assert_eq!(event.peer_source, PeerSource::Proxy as i32);
        assert!(event.proxy_peer.starts_with("127.0.0.1:"), "{event:?}");
    }
    let unauthenticated: Vec<&AuditEvent> = events
        .iter()
        .filter(|e| e.outcome == AuditOutcome::Unauthenticated as i32)
        .collect();
    assert_eq!(unauthenticated.len(), 2, "{events:#?}");
    for event in unauthenticated {
        assert_eq!(event.peer_source, PeerSource::Connection as i32);
        assert!(event.peer.starts_with("127.0.0.1:"));
        assert!(event.proxy_peer.is_empty());
    }
    server.stop().await;
}

#[tokio::test]
async fn another_organizations_token_is_not_found_and_the_attempt_is_audited_in_its_own() {
    let server = TestServer::start().await;
    let theirs = issue(&server, service_token("org-2", &["scim:read"])).await;
    let status = server
        .tokens()
        .get_token(GetTokenRequest {
            id: id_of(&theirs),
            actor: admin("org-1"),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::NotFound);
    // Written by the recorder's flush, off the reply's path: a restart
    // flushes it.
    let server = server.restart().await;
    let refused: Vec<AuditEvent> = events_of(&server, "org-2")
        .await
        .into_iter()
        .filter(|e| e.outcome == AuditOutcome::PermissionDenied as i32)
        .collect();
    assert_eq!(refused.len(), 1, "{refused:#?}");
    assert_eq!(refused[0].target_token_ids, vec![id_of(&theirs)]);
    assert_eq!(refused[0].actor.as_ref().unwrap().user_id, "admin");
    assert!(events_of(&server, "org-1").await.is_empty());
    server.stop().await;
}

#[tokio::test]
async fn one_organizations_flood_leaves_anothers_refusals_in_its_audit_log() {
    let server = TestServer::start().await;
    // A READ_ONLY member of org-a asks for service tokens in ever new
    // workspaces (each refusal distinct, so none is a repeat of another),
    // eight calls at a time, for as long as org-b's member makes 20 refused
    // attempts of their own.
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sent = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let mut flood = Vec::new();
    for _ in 0..8 {
        let mut tokens = server.tokens();
        let (done, sent) = (done.clone(), sent.clone());
        flood.push(tokio::spawn(async move {
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                let n = sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let request = workspace_token("org-a", &format!("ws-{n}"), &["test_api:run"]);
                let refused = tokens
                    .issue_token(tokenauth::proto::IssueTokenRequest {
                        actor: member("reader", "org-a", OrgRole::ReadOnly),
                        ..request
                    })
                    .await;
                assert_eq!(refused.unwrap_err().code(), tonic::Code::PermissionDenied);
            }
        }));
    }
    // Let the flood run first.
    while sent.load(std::sync::atomic::Ordering::Relaxed) < 300 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut tokens = server.tokens();
    for _ in 0..20 {
        let refused = tokens
            .issue_token(tokenauth::proto::IssueTokenRequest {
                actor: member("bob", "org-b", OrgRole::ReadOnly),
                ..service_token("org-b", &["scim:read"])
            })
            .await;
        assert_eq!(refused.unwrap_err().code(), tonic::Code::PermissionDenied);
    }
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    for task in flood {
        task.await.unwrap();
    }

    // A restart writes the follow-ups of the minute under way.
    let server = server.restart().await;
    let org_b = events_of(&server, "org-b").await;
    assert_eq!(accounted(&org_b), 20, "{org_b:#?}");
    assert!(
        org_b
            .iter()
            .all(|e| e.actor.as_ref().unwrap().user_id == "bob")
    );
    server.stop().await;
}

#[tokio::test]
async fn an_unauthenticated_flood_is_bounded_per_organization_and_every_refusal_is_accounted_for() {
    let server = TestServer::start().await;
    // Ids of org-b's tokens are all an unauthenticated client needs to make
    // refusals that land in org-b and differ from each other.
    let mut ids = Vec::new();
    for _ in 0..40 {
        ids.push(id_of(
            &issue(&server, service_token("org-b", &["scim:read"])).await,
        ));
    }
    let rounds = 10;
    let mut flooder = tokens_from(&server, "127.0.0.2").await;
    for _ in 0..rounds {
        for id in &ids {
            let refused = flooder
                .revoke_token(RevokeTokenRequest {
                    id: id.clone(),
                    actor: None,
                })
                .await
                .unwrap_err();
            assert_eq!(refused.code(), tonic::Code::Unauthenticated);
        }
    }
    let flood_calls = rounds * ids.len() as u64;

    // Then (most likely the same minute) a refused call by org-b's own
    // member, and an unauthenticated call from another address, are
    // recorded: the flood spent its own budget, not theirs. The member's is
    // the first event after the drops, so it reports them.
    server
        .tokens()
        .issue_token(tokenauth::proto::IssueTokenRequest {
            actor: member("bob", "org-b", OrgRole::ReadOnly),
            ..service_token("org-b", &["scim:read"])
        })
        .await
        .unwrap_err();
    let mut other = tokens_from(&server, "127.0.0.3").await;
    other
        .get_token(GetTokenRequest {
            id: ids[0].clone(),
            actor: None,
        })
        .await
        .unwrap_err();
    let events = events_of(&server, "org-b").await;
    let refusals: Vec<&AuditEvent> = events
        .iter()
        .filter(|e| e.outcome != AuditOutcome::Succeeded as i32)
        .collect();
    let from_flooder = refusals
        .iter()
        .filter(|e| e.peer.starts_with("127.0.0.2:"))
        .count();
    // At most one minute's budget (10 distinct events), twice if the flood
    // straddled a minute.
    assert!(from_flooder <= 20, "{from_flooder} events from the flooder");
    assert!(
        refusals.iter().any(|e| e.peer.starts_with("127.0.0.3:")),
        "the other address's refusal is recorded"
    );
    let own = refusals
        .iter()
        .find(|e| e.actor.as_ref().is_some_and(|a| a.user_id == "bob"))
        .expect("the member's refusal is recorded");
    assert!(
        own.dropped_before > 0,
        "the next event after drops reports them: {own:?}"
    );

    // After a restart (which writes the minute's follow-ups), every refused
    // call is accounted for: the flood's, the other address's, the member's.
    let server = server.restart().await;
    let refusals: Vec<AuditEvent> = events_of(&server, "org-b")
        .await
        .into_iter()
        .filter(|e| e.outcome != AuditOutcome::Succeeded as i32)
        .collect();
    assert_eq!(accounted(&refusals), flood_calls + 2, "{refusals:#?}");
    server.stop().await;
}

#[tokio::test]
async fn a_retired_secret_flood_writes_a_bounded_number_of_events_and_counts_every_use() {
    let server = start_with_routes().await;
    let retired = rotated_away(&server, "org-1").await;
    let bearer = format!("Bearer {}", retired.secret);
    let big_id = "C".repeat(16 * 1024);
    let uses = 1500;
    let mut mesh = AuthorizationClient::new(server.channel.clone());
    let mut checks = server.check();
    for i in 0..uses {
        if i % 2 == 0 {
            // Through Envoy, with a request id as large as Envoy lets through.
            let check = envoy_check(
                "org-1",
                "198.51.100.7",
                &[("authorization", &bearer), ("x-request-id", &big_id)],
            );
            mesh.check(check).await.unwrap();
        } else {
            let reason = checks
                .check(CheckRequest {
                    token: retired.secret.clone(),
                    permission: "scim:read".into(),
                    org_id: "org-1".into(),
                    workspace_id: String::new(),
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner()
                .reason;
            assert_eq!(reason, tokenauth::proto::Reason::Revoked as i32);
        }
    }
    let server = server.restart().await;
    let events: Vec<AuditEvent> = events_of(&server, "org-1")
        .await
        .into_iter()
        .filter(|e| e.outcome == AuditOutcome::RetiredSecretPresented as i32)
        .collect();
    // Two callers (Envoy's reported client, the Check client), each one
    // event and one follow-up a minute: at most 8 if the flood straddled a
    // minute.
    assert!(events.len() <= 8, "{} events", events.len());
    let bytes: usize = events.iter().map(Message::encoded_len).sum();
    assert!(bytes < 8 * 1536, "{bytes} bytes");
    assert_eq!(accounted(&events), uses, "{events:#?}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checks_with_a_retired_secret_log_a_bounded_number_of_lines() {
    let setup = ChildSetup::new("");
    let server = setup.start("info").await;
    let mut tokens = server.tokens(&setup.control_plane);
    let issued = tokens
        .issue_token(service_token("org-1", &["scim:read"]))
        .await
        .unwrap()
        .into_inner();
    tokens
        .rotate_token(RotateTokenRequest {
            id: id_of(&issued),
            grace_period: None,
            actor: admin("org-1"),
        })
        .await
        .unwrap();
    let mut checks = server.check();
    for _ in 0..5000 {
        checks
            .check(CheckRequest {
                token: issued.secret.clone(),
                permission: "scim:read".into(),
                org_id: "org-1".into(),
                workspace_id: String::new(),
                ..Default::default()
            })
            .await
            .unwrap();
    }
    // One more refusal afterwards, logged like any other: once it is in the
    // log, the Checks' lines (logged before it) are all there too.
    let marker = "after-the-checks";
    let mut request = Request::new(GetTokenRequest {
        id: id_of(&issued),
        actor: None,
    });
    request
        .metadata_mut()
        .insert("x-request-id", marker.parse().unwrap());
    TokenServiceClient::new(server.channel.clone())
        .get_token(request)
        .await
        .unwrap_err();
    let mut lines = Vec::new();
    for _ in 0..400 {
        lines = server.logs.lock().unwrap().clone();
        if lines.iter().any(|l| l.contains(marker)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(
        lines.iter().any(|l| l.contains(marker)),
        "the marker was logged"
    );
    let retired_lines = lines
        .iter()
        .filter(|l| l.contains("replaced by rotation was presented"))
        .count();
    // The first use, and at most a follow-up and a first use per minute.
    assert!(
        (1..=4).contains(&retired_lines),
        "{retired_lines} lines for 5,000 Checks"
    );
}
