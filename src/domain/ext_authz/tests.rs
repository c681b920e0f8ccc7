//! Unit tests of the ext_authz decision: where credentials come from, the
//! identity headers an answer sets and removes, what each denial maps to,
//! and the head limits.

use super::*;
use crate::domain::routes::{DotSegments, RouteTable};

fn policy(api_key: Option<&str>, strip: bool) -> ExtAuthzPolicy {
    ExtAuthzPolicy {
        limits: HeadLimits {
            max_headers: 128,
            max_header_bytes: 65_536,
        },
        routes: RouteTable::new(Vec::new(), DotSegments::Reject),
        unmatched: Unmatched::Deny,
        api_key_header: api_key.map(str::to_owned),
        strip_credentials: strip,
    }
}

fn request(headers: &[(&str, &str)]) -> HttpRequest {
    HttpRequest {
        method: "GET".into(),
        path: "/".into(),
        headers: headers
            .iter()
            .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
            .collect(),
        context_extensions: HashMap::new(),
        source: None,
    }
}

fn identity(workspace: &str, owner: &str) -> Identity {
    Identity {
        token_id: "tok_1".into(),
        kind: TokenKind::Service,
        owner_user_id: owner.into(),
        org_id: "org-1".into(),
        workspace_id: workspace.into(),
    }
}

type Headers<'a> = &'a [(&'a str, &'a str)];

#[test]
fn credentials_come_from_one_place_only() {
    let bearer = policy(None, false);
    let keyed = policy(Some("x-api-key"), false);
    let cases: &[(&ExtAuthzPolicy, Headers, Result<&str, &str>)] = &[
        (&bearer, &[], Err("missing_credential")),
        (&bearer, &[("authorization", "Bearer tok")], Ok("tok")),
        (&bearer, &[("authorization", "  bEaReR \t tok ")], Ok("tok")),
        (
            &bearer,
            &[("authorization", "Basic dXNlcjpwYXNz")],
            Err("malformed_token"),
        ),
        (
            &bearer,
            &[("authorization", "Bearer a, Bearer b")],
            Err("malformed_token"),
        ),
        (
            &bearer,
            &[("authorization", "Bearer a"), ("authorization", "Bearer b")],
            Err("invalid_request"),
        ),
        // Without an API-key header configured, x-api-key means nothing.
        (&bearer, &[("x-api-key", "tok")], Err("missing_credential")),
        (&keyed, &[("x-api-key", " tok ")], Ok("tok")),
        (&keyed, &[("x-api-key", "")], Err("missing_credential")),
        (
            &keyed,
            &[("x-api-key", "a"), ("authorization", "Bearer a")],
            Err("invalid_request"),
        ),
        (
            &keyed,
            &[("x-api-key", "a"), ("x-api-key", "b")],
            Err("invalid_request"),
        ),
    ];
    for (policy, headers, expected) in cases {
        let request = request(headers);
        let got = credential(policy, &request).map_err(|d| d.code());
        assert_eq!(got, *expected, "{headers:?}");
    }
}

#[test]
fn identity_headers_are_set_or_removed_never_both() {
    let policy = policy(None, false);
    let spoofed = request(&[
        ("x-tokenauth-workspace-id", "ws-evil"),
        ("x-tokenauth-owner", "mallory"),
        ("x-tokenauth-admin", "true"),
        ("x_tokenauth_owner", "mallory"),
        ("x-other", "kept"),
    ]);
    let allow = upstream_headers(&policy, &spoofed, Some(&identity("", ""))).unwrap();
    assert_eq!(
        allow.set,
        vec![
            ("x-tokenauth-token-id", "tok_1".to_owned()),
            ("x-tokenauth-kind", "SERVICE".to_owned()),
            ("x-tokenauth-org-id", "org-1".to_owned()),
        ]
    );
    assert_eq!(
        allow.remove,
        vec![
            "x-tokenauth-owner",
            "x-tokenauth-workspace-id",
            "x-tokenauth-admin",
            "x_tokenauth_owner"
        ]
    );
    for (name, _) in &allow.set {
        assert!(!allow.remove.iter().any(|r| r == name));
    }
}

#[test]
fn a_client_copy_of_a_header_we_set_must_equal_ours() {
    let policy = policy(None, false);
    let identity = identity("ws-1", "");
    let same = request(&[("x-tokenauth-org-id", "org-1")]);
    assert!(upstream_headers(&policy, &same, Some(&identity)).is_ok());
    for headers in [
        &[("x-tokenauth-org-id", "org-2")][..],
        &[("x-tokenauth-org-id", "org-1,org-2")][..],
        &[
            ("x-tokenauth-org-id", "org-1"),
            ("x-tokenauth-org-id", "org-1"),
        ][..],
        &[("x-tokenauth-workspace-id", "ws-2")][..],
    ] {
        let conflict = upstream_headers(&policy, &request(headers), Some(&identity));
        assert!(conflict.is_err(), "{headers:?}");
    }
}

#[test]
fn without_identity_every_identity_header_is_removed_and_credentials_optionally() {
    let stripping = policy(Some("x-api-key"), true);
    let allow = upstream_headers(&stripping, &request(&[]), None).unwrap();
    assert!(allow.set.is_empty());
    let mut expected: Vec<String> = IDENTITY_HEADERS.iter().map(|h| (*h).to_owned()).collect();
    expected.push("authorization".into());
    expected.push("x-api-key".into());
    assert_eq!(allow.remove, expected);
    let keeping = policy(Some("x-api-key"), false);
    let allow = upstream_headers(&keeping, &request(&[]), None).unwrap();
    assert!(!allow.remove.iter().any(|h| h == "authorization"));
}

#[test]
fn denials_map_to_statuses_challenges_and_codes() {
    let cases = [
        (
            Denial::MissingCredential,
            401,
            Some("Bearer error=\"invalid_token\""),
            "missing_credential",
        ),
        (
            Denial::MalformedCredential("x"),
            401,
            Some(INVALID_TOKEN),
            "malformed_token",
        ),
        (
            Denial::Token(Reason::Malformed),
            401,
            Some(INVALID_TOKEN),
            "malformed_token",
        ),
        (
            Denial::Token(Reason::NotFound),
            401,
            Some(INVALID_TOKEN),
            "unknown_token",
        ),
        (
            Denial::Token(Reason::Revoked),
            401,
            Some(INVALID_TOKEN),
            "revoked_token",
        ),
        (
            Denial::Token(Reason::Expired),
            401,
            Some(INVALID_TOKEN),
            "expired_token",
        ),
        (
            Denial::Token(Reason::WrongScope),
            403,
            Some(INSUFFICIENT_SCOPE),
            "wrong_scope",
        ),
        (
            Denial::Token(Reason::InsufficientPermission),
            403,
            Some(INSUFFICIENT_SCOPE),
            "insufficient_permission",
        ),
        (
            Denial::MultipleCredentials,
            400,
            Some(INVALID_REQUEST),
            "invalid_request",
        ),
        (
            Denial::InvalidPath(PathError::EncodedSlash),
            400,
            None,
            "invalid_path",
        ),
        (Denial::NoRoute, 403, None, "no_route"),
        (
            Denial::MissingId {
                field: "workspace_id",
                problem: IdProblem::Missing("path capture {workspace_id}".into()),
            },
            403,
            None,
            "missing_workspace_id",
        ),
        (
            Denial::InvalidId {
                field: "org_id",
                reason: "bad".into(),
            },
            403,
            None,
            "invalid_org_id",
        ),
        (
            Denial::IdentityHeaderConflict("x-tokenauth-org-id"),
            400,
            None,
            "identity_header_conflict",
        ),
        (Denial::NotHttp, 400, None, "invalid_request"),
        (
            Denial::TooManyHeaders { limit: 128 },
            431,
            None,
            "too_many_headers",
        ),
        (
            Denial::HeadersTooLarge { limit: 65_536 },
            431,
            None,
            "headers_too_large",
        ),
    ];
    for (denial, status, challenge, code) in cases {
        assert_eq!(denial.http_status(), status, "{denial:?}");
        assert_eq!(denial.www_authenticate(), challenge, "{denial:?}");
        assert_eq!(denial.code(), code, "{denial:?}");
        assert!(!denial.message(Some("test_api:run")).is_empty());
    }
}

#[test]
fn a_head_at_the_limits_is_read_and_one_past_them_is_refused() {
    let limits = HeadLimits {
        max_headers: 4,
        max_header_bytes: 40,
    };
    // 4 headers of 10 bytes each: exactly at both limits.
    let at = request(&[
        ("x-a", "1234567"),
        ("x-b", "1234567"),
        ("x-c", "1234567"),
        ("x-d", "1234567"),
    ]);
    assert_eq!(limits.admit(&at), Ok(()));
    let mut one_more = at.clone();
    one_more.headers.push(("x-e".into(), String::new()));
    assert_eq!(
        limits.admit(&one_more),
        Err(Denial::TooManyHeaders { limit: 4 })
    );
    let mut one_byte_more = at.clone();
    one_byte_more.headers[3].1.push('8');
    assert_eq!(
        limits.admit(&one_byte_more),
        Err(Denial::HeadersTooLarge { limit: 40 })
    );
    let mut long_path = at;
    long_path.path = format!("/{}", "p".repeat(40));
    assert_eq!(
        limits.admit(&long_path),
        Err(Denial::HeadersTooLarge { limit: 40 })
    );
}

#[test]
fn many_reserved_headers_are_each_removed_once() {
    let policy = policy(Some("x-api-key"), true);
    let mut headers: Vec<(String, String)> = Vec::new();
    for i in 0..5_000 {
        headers.push((format!("x-tokenauth-h{i}"), String::new()));
        // Repeated copies, and the identity headers, are listed once.
        headers.push((format!("x-tokenauth-h{i}"), String::new()));
        headers.push(("x-tokenauth-owner".into(), String::new()));
    }
    headers.push(("authorization".into(), "Bearer x".into()));
    let request = HttpRequest {
        headers,
        ..request(&[])
    };
    let allow = upstream_headers(&policy, &request, Some(&identity("ws-1", ""))).unwrap();
    let set: Vec<&str> = allow.set.iter().map(|(n, _)| *n).collect();
    assert_eq!(
        set,
        [
            "x-tokenauth-token-id",
            "x-tokenauth-kind",
            "x-tokenauth-org-id",
            "x-tokenauth-workspace-id"
        ]
    );
    let mut expected = vec!["x-tokenauth-owner".to_owned()];
    expected.extend((0..5_000).map(|i| format!("x-tokenauth-h{i}")));
    expected.extend(["authorization".to_owned(), "x-api-key".to_owned()]);
    assert_eq!(allow.remove, expected);
}
