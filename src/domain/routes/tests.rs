//! Unit tests of the path normalizer, patterns and route table.

use std::collections::HashMap;

use super::*;
use crate::domain::ext_authz::HttpRequest;

fn segments(path: &str, dots: DotSegments) -> Result<Vec<String>, PathError> {
    normalize_path(path, dots).map(|p| p.0)
}

#[test]
fn normal_paths_are_decoded_and_stripped_of_empty_segments_and_queries() {
    let cases: &[(&str, &[&str])] = &[
        ("/", &[]),
        ("/v2/workspaces/ws-1", &["v2", "workspaces", "ws-1"]),
        ("/v2/workspaces/ws-1/", &["v2", "workspaces", "ws-1"]),
        ("//v2///workspaces//ws-1", &["v2", "workspaces", "ws-1"]),
        ("/v2/workspaces?x=/../admin", &["v2", "workspaces"]),
        ("/v2/%77orkspaces", &["v2", "workspaces"]),
        ("/a%20b/caf%C3%A9", &["a b", "café"]),
        ("/a,b=c/@:!$&'()*+,=~", &["a,b=c", "@:!$&'()*+,=~"]),
        ("/a?b;c=d", &["a"]),
        ("/...", &["..."]),
        ("/.hidden/..x", &[".hidden", "..x"]),
        ("/?", &[]),
        ("/a?#b", &["a"]),
    ];
    for (path, expected) in cases {
        let expected: Vec<String> = expected.iter().map(|s| (*s).to_owned()).collect();
        for dots in [DotSegments::Reject, DotSegments::Resolve] {
            assert_eq!(
                segments(path, dots),
                Ok(expected.clone()),
                "{path} {dots:?}"
            );
        }
    }
}

#[test]
fn dot_segments_are_resolved_like_rfc_3986_or_rejected() {
    let cases: &[(&str, Result<&[&str], PathError>)] = &[
        ("/a/./b", Ok(&["a", "b"])),
        ("/a/b/..", Ok(&["a"])),
        ("/a/b/../c", Ok(&["a", "c"])),
        (
            "/v2/workspaces/ws-1/../ws-2/x",
            Ok(&["v2", "workspaces", "ws-2", "x"]),
        ),
        ("/v2/workspaces/ws-1/../../admin", Ok(&["v2", "admin"])),
        (
            "/v2/workspaces/ws-1/%2e%2e/%2E%2E/admin",
            Ok(&["v2", "admin"]),
        ),
        (
            "/v2/workspaces/ws-1/.%2e/ws-2",
            Ok(&["v2", "workspaces", "ws-2"]),
        ),
        // A `..` over an empty segment is read differently by proxies
        // that merge slashes first: refused.
        ("/a//../b", Err(PathError::DotSegment)),
        (
            "/v2/workspaces/ws-1/transformations///../../ws-2/x",
            Err(PathError::DotSegment),
        ),
        ("/..", Err(PathError::AboveRoot)),
        ("/a/../..", Err(PathError::AboveRoot)),
        ("/a/../../b", Err(PathError::AboveRoot)),
        ("/%2e%2e/etc/passwd", Err(PathError::AboveRoot)),
        ("/.", Ok(&[])),
    ];
    for (path, expected) in cases {
        let expected = expected.map(|e| e.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>());
        assert_eq!(segments(path, DotSegments::Resolve), expected, "{path}");
        assert_eq!(
            segments(path, DotSegments::Reject),
            Err(PathError::DotSegment),
            "{path}"
        );
    }
}

#[test]
fn ambiguous_paths_are_refused() {
    let cases = [
        ("", PathError::NotAbsolute),
        ("v2/workspaces", PathError::NotAbsolute),
        ("*", PathError::NotAbsolute),
        ("http://evil/v2", PathError::NotAbsolute),
        ("?/v2", PathError::NotAbsolute),
        ("/a#frag", PathError::Fragment),
        (
            "/v2/workspaces/ws-1%2F..%2F..%2Fadmin",
            PathError::EncodedSlash,
        ),
        ("/v2/workspaces%2fws-1", PathError::EncodedSlash),
        ("/v2\\workspaces", PathError::InvalidCharacter),
        ("/v2/%5C../admin", PathError::EncodedBackslash),
        ("/v2/%5c", PathError::EncodedBackslash),
        ("/v2/ws%00", PathError::EncodedControl),
        ("/v2/ws%0a", PathError::EncodedControl),
        ("/v2/ws%7F", PathError::EncodedControl),
        ("/v2/ws\0", PathError::InvalidCharacter),
        ("/v2/ws 1", PathError::InvalidCharacter),
        ("/v2/ws\t1", PathError::InvalidCharacter),
        ("/v2/\"x\"", PathError::InvalidCharacter),
        ("/v2/{x}", PathError::InvalidCharacter),
        ("/v2/café", PathError::InvalidCharacter),
        ("/v2/%", PathError::BadEscape),
        ("/v2/%2", PathError::BadEscape),
        ("/v2/%zz", PathError::BadEscape),
        ("/v2/%%32%65", PathError::BadEscape),
        ("/v2/%252e%252e/admin", PathError::DoubleEncoding),
        ("/v2/%252F", PathError::DoubleEncoding),
        ("/v2/%ff%fe", PathError::NotUtf8),
        ("/v2/..;/admin", PathError::PathParameters),
        ("/v2/.;x/admin", PathError::PathParameters),
        ("/v2/%2e%2e;jsessionid=1/admin", PathError::PathParameters),
        ("/v2/a%3Bb", PathError::PathParameters),
        ("/v2/a%3bb", PathError::PathParameters),
    ];
    for (path, expected) in cases {
        for dots in [DotSegments::Reject, DotSegments::Resolve] {
            assert_eq!(segments(path, dots), Err(expected), "{path:?} {dots:?}");
        }
    }
}

#[test]
fn the_normalizer_never_panics_on_arbitrary_bytes() {
    // A deterministic walk over short strings of the characters that matter.
    let alphabet = [
        "/", ".", "%", "2", "e", "F", "f", "5", "c", "0", ";", "?", "a", "é", "\\", "\0",
    ];
    let mut inputs = vec![String::new()];
    for _ in 0..4 {
        let mut next = Vec::new();
        for prefix in &inputs {
            for piece in alphabet {
                next.push(format!("{prefix}{piece}"));
            }
        }
        inputs.extend(next);
    }
    for input in &inputs {
        for dots in [DotSegments::Reject, DotSegments::Resolve] {
            if let Ok(path) = normalize_path(input, dots) {
                // Whatever is accepted is stable: normalizing again changes nothing.
                let again = normalize_path(&reencode(&path), DotSegments::Reject);
                assert_eq!(again.as_ref(), Ok(&path), "{input:?}");
                assert!(path.segments().iter().all(|s| !s.is_empty()
                    && s != "."
                    && s != ".."
                    && !s.contains(['/', '\\', '\0', '%'])));
            }
        }
    }
}

fn reencode(path: &NormalPath) -> String {
    let mut out = String::new();
    for segment in path.segments() {
        out.push('/');
        for byte in segment.bytes() {
            if is_path_char(byte) {
                out.push(char::from(byte));
            } else {
                out.push_str(&format!("%{byte:02X}"));
            }
        }
    }
    if out.is_empty() {
        out.push('/');
    }
    out
}

#[test]
fn normal_paths_print_as_paths() {
    let path = normalize_path("/a//b%20c/", DotSegments::Reject).unwrap();
    assert_eq!(path.to_string(), "/a/b c");
    assert_eq!(
        normalize_path("/", DotSegments::Reject)
            .unwrap()
            .to_string(),
        "/"
    );
}

fn path(text: &str) -> NormalPath {
    normalize_path(text, DotSegments::Resolve).unwrap()
}

type Captures<'a> = &'a [(&'a str, &'a str)];

#[test]
fn patterns_match_whole_segments() {
    let cases: &[(&str, &str, Option<Captures>)] = &[
        ("/", "/", Some(&[])),
        ("/", "/a", None),
        (
            "/v2/workspaces/{workspace_id}",
            "/v2/workspaces/ws-1",
            Some(&[("workspace_id", "ws-1")]),
        ),
        (
            "/v2/workspaces/{workspace_id}",
            "/v2/workspaces/ws-1/x",
            None,
        ),
        ("/v2/workspaces/{workspace_id}", "/v2/workspaces", None),
        ("/v2/workspaces/{workspace_id}", "/v2/Workspaces/ws-1", None),
        (
            "/v2/workspaces/{workspace_id}",
            "/v2/workspaces/ws-1/",
            Some(&[("workspace_id", "ws-1")]),
        ),
        ("/v2/*/x", "/v2/anything/x", Some(&[])),
        ("/v2/*/x", "/v2/x", None),
        ("/v2/**", "/v2", Some(&[])),
        ("/v2/**", "/v2/a/b/c", Some(&[])),
        ("/v2/**", "/v3/a", None),
        ("/**", "/", Some(&[])),
        (
            "/v2/orgs/{org_id}/workspaces/{workspace_id}/**",
            "/v2/orgs/o/workspaces/w/t/1",
            Some(&[("org_id", "o"), ("workspace_id", "w")]),
        ),
        ("/café/{x}", "/caf%C3%A9/1", Some(&[("x", "1")])),
    ];
    for (pattern, target, expected) in cases {
        let parsed = PathPattern::parse(pattern).unwrap();
        let target = path(target);
        assert_eq!(
            parsed.matches(&target).as_deref(),
            *expected,
            "{pattern} {target}"
        );
    }
}

#[test]
fn bad_patterns_say_why() {
    for (pattern, needle) in [
        ("v2/x", "start with /"),
        ("/v2//x", "empty segment"),
        ("/v2/x/", "empty segment"),
        ("/v2/**/x", "last segment"),
        ("/v2/{Workspace}", "capture name"),
        ("/v2/{}", "capture name"),
        ("/v2/{a}/{a}", "twice"),
        ("/v2/x{a}", "literal text"),
        ("/v2/a*", "literal text"),
        ("/v2/%2F", "literal text"),
        ("/v2/../x", ". or .."),
        ("/v2/a b", "literal text"),
        ("/v2/a;b", "literal text"),
    ] {
        let error = PathPattern::parse(pattern).unwrap_err();
        assert!(error.contains(needle), "{pattern}: {error}");
    }
}

fn route(methods: &[&str], pattern: &str, permission: &str) -> Route {
    Route {
        methods: methods.iter().map(|m| (*m).to_owned()).collect(),
        pattern: PathPattern::parse(pattern).unwrap(),
        permission: permission.to_owned(),
        org_id: IdSource::Header("x-org-id".into()),
        workspace_id: Some(IdSource::Capture("workspace_id".into())),
    }
}

#[test]
fn the_first_matching_route_wins_and_methods_filter() {
    let table = RouteTable::new(
        vec![
            route(
                &["POST"],
                "/v2/workspaces/{workspace_id}/transformations/{id}/publish",
                "transformations:write",
            ),
            route(
                &["GET", "HEAD"],
                "/v2/workspaces/{workspace_id}/transformations/**",
                "transformations:read",
            ),
            route(
                &[],
                "/v2/workspaces/{workspace_id}/transformations/**",
                "transformations:write",
            ),
        ],
        DotSegments::Reject,
    );
    let find = |method: &str, target: &str| {
        let target = table.normalize(target).unwrap();
        table
            .find(method, &target)
            .map(|m| m.route.permission.clone())
    };
    let publish = "/v2/workspaces/ws-1/transformations/t-1/publish";
    assert_eq!(
        find("POST", publish).as_deref(),
        Some("transformations:write")
    );
    assert_eq!(
        find("GET", publish).as_deref(),
        Some("transformations:read")
    );
    assert_eq!(
        find("DELETE", publish).as_deref(),
        Some("transformations:write")
    );
    assert_eq!(find("GET", "/v2/workspaces/ws-1/other"), None);
    assert_eq!(
        find("get", "/v2/workspaces/ws-1/transformations").as_deref(),
        Some("transformations:write")
    );
}

#[test]
fn a_path_parameter_is_refused_whatever_rule_it_would_reach() {
    // Issue 12: `/transformations;x/t1` fell through to a broader rule.
    // Each case: the path, and the rule its parameter-free spelling
    // reaches (none for dot segments, which Reject refuses anyway).
    let table = |dots| {
        RouteTable::new(
            vec![
                route(
                    &[],
                    "/v2/workspaces/{workspace_id}/transformations/t1",
                    "literal",
                ),
                route(&[], "/v2/*/x", "any"),
                route(
                    &[],
                    "/v2/workspaces/{workspace_id}/transformations/**",
                    "rest",
                ),
                route(&[], "/**", "broad"),
            ],
            dots,
        )
    };
    let t = "/v2/workspaces/ws-1/transformations";
    let cases: &[(String, Option<(&str, &str)>)] = &[
        (format!("{t};x/t1"), Some((&format!("{t}/t1"), "literal"))),
        (
            format!("{t}/t1;jsessionid=1"),
            Some((&format!("{t}/t1"), "literal")),
        ),
        (format!("{t}/t1;"), Some((&format!("{t}/t1"), "literal"))),
        (format!("{t}/t1/;x"), Some((&format!("{t}/t1/"), "literal"))),
        (format!("{t}%3Bx/t1"), Some((&format!("{t}/t1"), "literal"))),
        (format!("{t}%3bx/t1"), Some((&format!("{t}/t1"), "literal"))),
        (
            "/v2/workspaces/ws-1;x/transformations/t1".into(),
            Some((&format!("{t}/t1"), "literal")),
        ),
        ("/v2/y;x/x".into(), Some(("/v2/y/x", "any"))),
        (format!("{t}/a/b;x"), Some((&format!("{t}/a/b"), "rest"))),
        ("/;".into(), Some(("/", "broad"))),
        (format!("{t}/..;/t1"), None),
        (format!("{t}/.;x/t1"), None),
    ];
    for dots in [DotSegments::Reject, DotSegments::Resolve] {
        let table = table(dots);
        let find = |target: &str| {
            let target = table.normalize(target).unwrap();
            table
                .find("GET", &target)
                .map(|m| m.route.permission.clone())
        };
        for (target, without) in cases {
            assert_eq!(
                table.normalize(target),
                Err(PathError::PathParameters),
                "{target} {dots:?}"
            );
            if let Some((plain, permission)) = without {
                assert_eq!(find(plain).as_deref(), Some(*permission), "{plain}");
            }
        }
        // In the query, `;` is no path parameter.
        assert_eq!(find(&format!("{t}/t1?a;b")).as_deref(), Some("literal"));
    }
}

#[test]
fn ids_come_from_their_sources() {
    let request = HttpRequest {
        headers: vec![
            ("x-org-id".into(), "org-1".into()),
            ("x-dup".into(), "a".into()),
            ("x-dup".into(), "b".into()),
            ("x-empty".into(), String::new()),
        ],
        context_extensions: HashMap::from([("org".to_owned(), "org-2".to_owned())]),
        ..HttpRequest::default()
    };
    let captures = [("workspace_id", "ws-1")];
    let resolve = |source: IdSource| Route::resolve_id(&source, &captures, &request);
    assert_eq!(
        resolve(IdSource::Capture("workspace_id".into())),
        Ok("ws-1".into())
    );
    assert_eq!(
        resolve(IdSource::Header("x-org-id".into())),
        Ok("org-1".into())
    );
    assert_eq!(
        resolve(IdSource::ContextExtension("org".into())),
        Ok("org-2".into())
    );
    assert_eq!(resolve(IdSource::Value("org-3".into())), Ok("org-3".into()));
    assert!(matches!(
        resolve(IdSource::Header("x-absent".into())),
        Err(IdProblem::Missing(_))
    ));
    assert!(matches!(
        resolve(IdSource::Header("x-empty".into())),
        Err(IdProblem::Missing(_))
    ));
    assert!(matches!(
        resolve(IdSource::Header("x-dup".into())),
        Err(IdProblem::Ambiguous(_))
    ));
    assert!(matches!(
        resolve(IdSource::ContextExtension("nope".into())),
        Err(IdProblem::Missing(_))
    ));
    assert!(matches!(
        resolve(IdSource::Capture("other".into())),
        Err(IdProblem::Missing(_))
    ));
}
