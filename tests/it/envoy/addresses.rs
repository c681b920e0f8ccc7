//! The client address the mesh path records for forensics is the
//! connection's, as Envoy reports it in `source.address`: a client's own
//! `X-Forwarded-For` must not choose it, or a thief could hide where a
//! stolen token is used from.

use tokenauth::proto::GetTokenRequest;

use super::stack::{PROTOCOLS, Request, Stack, assert_allowed};
use crate::harness::{admin, id_of, issue, workspace_token};

#[tokio::test]
async fn a_client_cannot_choose_the_address_recorded_for_its_token() {
    let stack = Stack::start().await;
    let issued = issue(
        stack.tokenauth(),
        workspace_token("org-1", "ws-1", &["transformations:read"]),
    )
    .await;
    for protocol in PROTOCOLS {
        let request = Request::get("/v2/workspaces/ws-1/transformations/t1")
            .org("org-1")
            .bearer(&issued.secret)
            .header("x-forwarded-for", "203.0.113.66");
        let response = stack.send(protocol, &request).await;
        assert_allowed(&response, &protocol.to_string());
    }
    let token = stack
        .tokenauth()
        .tokens()
        .get_token(GetTokenRequest {
            id: id_of(&issued),
            actor: admin("org-1"),
        })
        .await
        .unwrap()
        .into_inner()
        .token
        .unwrap();
    let recorded: Vec<&str> = token
        .client_addresses
        .iter()
        .map(|a| a.address.as_str())
        .collect();
    assert!(!recorded.is_empty(), "the mesh path recorded no address");
    assert!(
        !recorded.contains(&"203.0.113.66"),
        "the client's own X-Forwarded-For was recorded: {recorded:?}"
    );
}
