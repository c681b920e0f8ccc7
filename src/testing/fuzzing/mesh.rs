//! The `request` target's Envoy half: a CheckRequest converted as the
//! ext_authz handler converts it, then the domain's credential, route and
//! header rules on it.

use envoy_types::ext_authz::v3::pb::CheckRequest as EnvoyCheckRequest;
use prost::Message;

use super::{API_KEY_HEADER, policies, service_policy};
use crate::{
    api::ext_authz::http_request,
    domain::ext_authz::{
        ExtAuthzPolicy, HttpRequest, IDENTITY_HEADERS, Identity, RESERVED_HEADER_PREFIX,
        credential, route_ids, upstream_headers,
    },
    domain::token::{TokenKind, validate_check_query},
};

/// Envoy's ext_authz Check: `http_request` (as the handler calls it), then
/// the domain's credential, route and header rules.
pub(super) fn ext_authz_check(bytes: &[u8]) -> Option<()> {
    // Not through `decode`: a google.protobuf.Struct may hold a NaN, which
    // compares unequal to itself after any round trip.
    let message = EnvoyCheckRequest::decode(bytes).ok()?;
    let described = message
        .attributes
        .as_ref()
        .and_then(|a| a.request.as_ref())
        .and_then(|r| r.http.clone());
    let extensions = message
        .attributes
        .as_ref()
        .map(|a| a.context_extensions.clone());
    let request = http_request(message);
    assert_eq!(request.is_some(), described.is_some());
    let (request, http) = (request?, described?);
    assert_eq!(Some(&request.context_extensions), extensions.as_ref());

    // Every header is kept (a dropped copy could hide a second credential),
    // its name lower-cased, with the value Envoy sent, in the order sent.
    let sent: Vec<(String, Vec<String>)> = if http.headers.is_empty() {
        http.header_map
            .iter()
            .flat_map(|map| &map.headers)
            .map(|h| {
                let raw = String::from_utf8_lossy(&h.raw_value).into_owned();
                (h.key.to_ascii_lowercase(), vec![h.value.clone(), raw])
            })
            .collect()
    } else {
        http.headers
            .iter()
            .map(|(name, value)| (name.to_ascii_lowercase(), vec![value.clone()]))
            .collect()
    };
    assert_eq!(request.headers.len(), sent.len());
    if http.headers.is_empty() {
        for ((name, value), (sent_name, values)) in request.headers.iter().zip(&sent) {
            assert!(name == sent_name && values.contains(value), "out of order");
        }
    }
    for (name, value) in &request.headers {
        assert!(!name.bytes().any(|b| b.is_ascii_uppercase()));
        assert!(
            sent.iter()
                .any(|(n, values)| n == name && values.contains(value)),
            "a header Envoy did not send"
        );
    }
    let pseudo = |name: &str| {
        request
            .headers
            .iter()
            .find(|(n, _)| n == name)
            .map_or("", |(_, v)| v.as_str())
    };
    let method = if http.method.is_empty() {
        pseudo(":method")
    } else {
        &http.method
    };
    let path = if http.path.is_empty() {
        pseudo(":path")
    } else {
        &http.path
    };
    assert_eq!(
        (request.method.as_str(), request.path.as_str()),
        (method, path)
    );

    for policy in policies() {
        ext_authz_rules(policy, &request);
    }
    Some(())
}

/// The synchronous half of `ExtAuthz::authorize` on a converted request.
fn ext_authz_rules(policy: &ExtAuthzPolicy, request: &HttpRequest) {
    let credential_headers = request
        .headers
        .iter()
        .filter(|(n, _)| n == "authorization" || n == API_KEY_HEADER)
        .count();
    if let Ok(presented) = credential(policy, request) {
        // Exactly one credential, as it appears in its header, never blank.
        assert_eq!(credential_headers, 1, "a credential picked among several");
        assert!(!presented.is_empty());
        assert_eq!(presented, presented.trim_matches([' ', '\t']));
        assert!(request.headers.iter().any(|(_, v)| v.contains(presented)));
    }
    if let Ok(path) = policy.routes.normalize(&request.path)
        && let Some(matched) = policy.routes.find(&request.method, &path)
        && let Ok((org_id, workspace_id)) = route_ids(matched.route, &matched.captures, request)
    {
        assert!(!org_id.is_empty());
        assert_eq!(
            workspace_id.is_empty(),
            matched.route.workspace_id.is_none()
        );
        // `authorize` answers any other refusal with an internal error: only
        // the ids taken from the request may be what is wrong.
        if let Err(error) = validate_check_query(
            &service_policy().catalogue,
            &matched.route.permission,
            &org_id,
            &workspace_id,
        ) {
            assert!(
                matches!(
                    error,
                    crate::domain::Error::InvalidArgument {
                        field: "org_id" | "workspace_id",
                        ..
                    }
                ),
                "{error}"
            );
        }
    }
    let identity = Identity {
        token_id: "tok_01ARZ3NDEKTSV4RRFFQ69G5FAV".into(),
        kind: TokenKind::Service,
        owner_user_id: String::new(),
        org_id: "org-1".into(),
        workspace_id: "ws-1".into(),
    };
    for identity in [None, Some(&identity)] {
        match upstream_headers(policy, request, identity) {
            Ok(allow) => {
                // Envoy removes after it sets: a header we set is never removed.
                for (name, _) in &allow.set {
                    assert!(!allow.remove.iter().any(|r| r == name));
                }
                let handled = |name: &str| {
                    allow.set.iter().any(|(n, _)| *n == name)
                        || allow.remove.iter().any(|r| r == name)
                };
                for name in IDENTITY_HEADERS {
                    assert!(handled(name), "{name} reaches the upstream unchecked");
                }
                for (name, _) in &request.headers {
                    let ours = name.len() >= RESERVED_HEADER_PREFIX.len()
                        && name.as_bytes()[..RESERVED_HEADER_PREFIX.len()]
                            .iter()
                            .map(|&b| if b == b'_' { b'-' } else { b })
                            .eq(RESERVED_HEADER_PREFIX.bytes());
                    if ours {
                        assert!(handled(name), "{name} reaches the upstream unchecked");
                    }
                }
                if policy.strip_credentials {
                    assert!(handled("authorization") && handled(API_KEY_HEADER));
                }
            }
            Err(name) => {
                // Refused only over a client copy of a header we set that is not ours.
                let ours = identity
                    .map(|i| i.headers())
                    .into_iter()
                    .flatten()
                    .find(|(n, _)| *n == name)
                    .map(|(_, v)| v);
                assert!(ours.is_some_and(|ours| !ours.is_empty()));
                let theirs: Vec<&str> = request
                    .headers
                    .iter()
                    .filter(|(n, _)| n == name)
                    .map(|(_, v)| v.as_str())
                    .collect();
                assert!(!theirs.is_empty() && ours.is_some_and(|ours| theirs != [ours]));
            }
        }
    }
}
