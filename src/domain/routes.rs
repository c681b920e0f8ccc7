//! Route rules for the mesh (Envoy ext_authz) endpoint: the path normalizer,
//! path patterns, and the table that maps a request (method + path) to the
//! permission it needs and to where its organization and workspace ids are.
//!
//! Everything here is pure: no tonic, no I/O. The normalizer is the security
//! boundary: a rule is chosen on the normalized path, so every way of spelling
//! a path that a proxy or an upstream could read differently is refused
//! rather than guessed at (encoded slashes and backslashes, NUL and control
//! bytes, double encoding, dot segments with parameters, climbing above the
//! root).

use std::{collections::HashMap, fmt};

/// What the normalizer does with `.` and `..` segments.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DotSegments {
    /// Refuse the path. A proxy that normalizes paths (Envoy's
    /// `normalize_path`) never sends dot segments, so seeing one means the
    /// upstream will see the raw path too, and may resolve it differently.
    Reject,
    /// Resolve them as RFC 3986 does (`..` removes the previous segment, even
    /// an empty one), refusing any that climbs above the root.
    Resolve,
}

/// Why a request path cannot be matched safely.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PathError {
    /// Empty, or not starting with `/` (an authority-form or `*` target).
    NotAbsolute,
    /// Carries a `#fragment`, which no client sends.
    Fragment,
    /// A byte that may not appear unencoded in a path (space, `\`, `"`,
    /// non-ASCII, control characters...).
    InvalidCharacter,
    /// `%` not followed by two hex digits.
    BadEscape,
    /// `%2F`: a slash inside a segment, which proxies and upstreams split differently.
    EncodedSlash,
    /// `%5C`: some servers treat a backslash as a slash.
    EncodedBackslash,
    /// `%00` or another encoded control character.
    EncodedControl,
    /// `%25`: a second decoding (by the upstream) would read something else.
    DoubleEncoding,
    /// The decoded segment is not UTF-8.
    NotUtf8,
    /// A `.` or `..` segment, with [`DotSegments::Reject`].
    DotSegment,
    /// `..;x`: some servers drop the parameter and then resolve the `..`.
    DotSegmentWithParameters,
    /// `..` above the root.
    AboveRoot,
}

impl PathError {
    /// A sentence for the client and the log.
    pub fn describe(self) -> &'static str {
        match self {
            PathError::NotAbsolute => "the path does not start with /",
            PathError::Fragment => "the path carries a #fragment",
            PathError::InvalidCharacter => "the path contains a character that must be encoded",
            PathError::BadEscape => "the path contains % not followed by two hex digits",
            PathError::EncodedSlash => "the path contains an encoded slash (%2F)",
            PathError::EncodedBackslash => "the path contains an encoded backslash (%5C)",
            PathError::EncodedControl => "the path contains an encoded control character",
            PathError::DoubleEncoding => "the path contains an encoded % (double encoding)",
            PathError::NotUtf8 => "the decoded path is not UTF-8",
            PathError::DotSegment => "the path contains a . or .. segment",
            PathError::DotSegmentWithParameters => "the path contains a dot segment with ;",
            PathError::AboveRoot => "the path climbs above the root with ..",
        }
    }
}

impl fmt::Display for PathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.describe())
    }
}

/// A request path after normalization: its decoded, non-empty segments.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NormalPath(Vec<String>);

impl NormalPath {
    pub fn segments(&self) -> &[String] {
        &self.0
    }
}

impl fmt::Display for NormalPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("/");
        }
        for segment in &self.0 {
            write!(f, "/{segment}")?;
        }
        Ok(())
    }
}

/// RFC 3986 `pchar` without `%` (handled as an escape): unreserved,
/// sub-delims, `:` and `@`.
fn is_path_char(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@".contains(&byte)
}

fn hex_value(byte: u8) -> Option<u8> {
    match byte {
        b'0'..=b'9' => Some(byte - b'0'),
        b'a'..=b'f' => Some(byte - b'a' + 10),
        b'A'..=b'F' => Some(byte - b'A' + 10),
        _ => None,
    }
}

/// Percent-decodes one raw segment, refusing every byte that could make the
/// segment mean something else to another reader.
fn decode_segment(raw: &str) -> Result<String, PathError> {
    let bytes = raw.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&byte) = bytes.get(i) {
        if byte == b'%' {
            let high = bytes.get(i + 1).copied().and_then(hex_value);
            let low = bytes.get(i + 2).copied().and_then(hex_value);
            let (Some(high), Some(low)) = (high, low) else {
                return Err(PathError::BadEscape);
            };
            let value = (high << 4) | low;
            match value {
                b'/' => return Err(PathError::EncodedSlash),
                b'\\' => return Err(PathError::EncodedBackslash),
                b'%' => return Err(PathError::DoubleEncoding),
                0x00..=0x1f | 0x7f => return Err(PathError::EncodedControl),
                _ => decoded.push(value),
            }
            i += 3;
        } else if is_path_char(byte) {
            decoded.push(byte);
            i += 1;
        } else {
            return Err(PathError::InvalidCharacter);
        }
    }
    String::from_utf8(decoded).map_err(|_| PathError::NotUtf8)
}

/// Normalizes a request target (`:path`, which carries the query string) for
/// matching: the query is dropped, each segment is percent-decoded, dot
/// segments are rejected or resolved, and empty segments (`//`, a trailing
/// `/`) are dropped.
pub fn normalize_path(target: &str, dots: DotSegments) -> Result<NormalPath, PathError> {
    let path = target.split_once('?').map_or(target, |(path, _)| path);
    if path.contains('#') {
        return Err(PathError::Fragment);
    }
    let Some(rest) = path.strip_prefix('/') else {
        return Err(PathError::NotAbsolute);
    };
    // Empty segments are kept until dot segments are resolved, so that a
    // `..` over one can be seen (and refused, below).
    let mut segments: Vec<String> = Vec::new();
    for raw in rest.split('/') {
        let segment = decode_segment(raw)?;
        let before_parameters = segment.split(';').next().unwrap_or_default();
        let is_dot = segment == "." || segment == "..";
        if !is_dot && (before_parameters == "." || before_parameters == "..") {
            return Err(PathError::DotSegmentWithParameters);
        }
        match (is_dot, dots) {
            (false, _) => segments.push(segment),
            (true, DotSegments::Reject) => return Err(PathError::DotSegment),
            (true, DotSegments::Resolve) if segment == "." => {}
            (true, DotSegments::Resolve) => match segments.pop() {
                None => return Err(PathError::AboveRoot),
                // A `..` over an empty segment means different things to
                // a proxy that merges slashes first and to one that does not
                // (`/a//../b` is `/a/b` or `/b`): refuse rather than guess
                // which the upstream does.
                Some(popped) if popped.is_empty() => return Err(PathError::DotSegment),
                Some(_) => {}
            },
        }
    }
    segments.retain(|segment| !segment.is_empty());
    Ok(NormalPath(segments))
}

/// One segment of a [`PathPattern`].
#[derive(Clone, Debug, PartialEq, Eq)]
enum Segment {
    /// Matches this decoded text exactly (case-sensitive).
    Literal(String),
    /// `{name}`: matches any one segment and remembers it.
    Capture(String),
    /// `*`: matches any one segment.
    Any,
    /// `**` (last only): matches whatever is left, including nothing.
    Rest,
}

/// A path pattern such as `/v2/workspaces/{workspace_id}/transformations/**`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PathPattern {
    text: String,
    segments: Vec<Segment>,
}

fn is_capture_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

impl PathPattern {
    /// Parses a pattern; the error says what is wrong with it.
    pub fn parse(text: &str) -> Result<Self, String> {
        let Some(rest) = text.strip_prefix('/') else {
            return Err("must start with /".into());
        };
        let mut segments = Vec::new();
        if !rest.is_empty() {
            let parts: Vec<&str> = rest.split('/').collect();
            let last = parts.len().saturating_sub(1);
            for (index, part) in parts.into_iter().enumerate() {
                segments.push(Self::parse_segment(part, index == last)?);
            }
        }
        let mut names: Vec<&str> = Vec::new();
        for segment in &segments {
            if let Segment::Capture(name) = segment {
                if names.contains(&name.as_str()) {
                    return Err(format!("captures {{{name}}} twice"));
                }
                names.push(name);
            }
        }
        Ok(Self {
            text: text.to_owned(),
            segments,
        })
    }

    fn parse_segment(part: &str, last: bool) -> Result<Segment, String> {
        match part {
            "" => Err(
                "has an empty segment (`//` or a trailing /): paths are matched without them"
                    .into(),
            ),
            "*" => Ok(Segment::Any),
            "**" if last => Ok(Segment::Rest),
            "**" => Err("may use ** only as its last segment".into()),
            "." | ".." => Err("may not contain . or .. segments".into()),
            _ => {
                if let Some(name) = part.strip_prefix('{').and_then(|p| p.strip_suffix('}')) {
                    return if is_capture_name(name) {
                        Ok(Segment::Capture(name.to_owned()))
                    } else {
                        Err(format!(
                            "{{{name}}}: a capture name is lower-case letters, digits and _"
                        ))
                    };
                }
                // Literals are compared with decoded segments, so they are
                // written decoded, and may not hold what a decoded segment never can.
                if part.contains(['{', '}', '*', '%', '\\', '?', '#'])
                    || part.chars().any(|c| c.is_control() || c.is_whitespace())
                {
                    return Err(format!(
                        "{part:?}: a segment is literal text (decoded, without {{}}*%\\?# or spaces), {{name}}, * or **"
                    ));
                }
                Ok(Segment::Literal(part.to_owned()))
            }
        }
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether the pattern captures `name`.
    pub fn has_capture(&self, name: &str) -> bool {
        self.segments
            .iter()
            .any(|s| matches!(s, Segment::Capture(n) if n == name))
    }

    /// The captured segments if `path` matches, else `None`.
    pub fn matches<'p>(&self, path: &'p NormalPath) -> Option<Vec<(&str, &'p str)>> {
        let mut captures = Vec::new();
        let mut remaining = path.segments().iter();
        for segment in &self.segments {
            if *segment == Segment::Rest {
                return Some(captures);
            }
            let actual = remaining.next()?;
            match segment {
                Segment::Literal(text) if text != actual => return None,
                Segment::Capture(name) => captures.push((name.as_str(), actual.as_str())),
                _ => {}
            }
        }
        remaining.next().is_none().then_some(captures)
    }
}

/// Where a route finds an organization or workspace id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IdSource {
    /// A `{name}` capture of the route's path pattern.
    Capture(String),
    /// A request header (lower-case name). The client sets it, which is fine:
    /// it says which resource is asked for, and the token must cover it.
    Header(String),
    /// A key of Envoy's per-route `context_extensions` (set by the operator).
    ContextExtension(String),
    /// A fixed id.
    Value(String),
}

impl IdSource {
    /// Describes the source for messages: `header x-org-id`.
    pub fn describe(&self) -> String {
        match self {
            IdSource::Capture(name) => format!("path capture {{{name}}}"),
            IdSource::Header(name) => format!("header {name}"),
            IdSource::ContextExtension(key) => format!("context extension {key}"),
            IdSource::Value(value) => format!("fixed value {value:?}"),
        }
    }
}

/// What a request offers a route: its headers (names lower-case) and
/// Envoy's context extensions.
pub trait RequestView {
    /// Every value of a header, in order.
    fn header_values(&self, name: &str) -> Vec<&str>;
    fn context_extension(&self, key: &str) -> Option<&str>;
}

/// Why an id could not be found for a matched route.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IdProblem {
    /// The source is absent (or empty) in this request.
    Missing(String),
    /// The header appears more than once, so which one the upstream reads is unknown.
    Ambiguous(String),
}

/// One route rule, validated.
#[derive(Clone, Debug)]
pub struct Route {
    /// Upper-case method names; empty matches any method.
    pub methods: Vec<String>,
    pub pattern: PathPattern,
    /// An exact permission of the catalogue.
    pub permission: String,
    pub org_id: IdSource,
    /// `Some` exactly when the permission is workspace-level.
    pub workspace_id: Option<IdSource>,
}

impl Route {
    fn method_matches(&self, method: &str) -> bool {
        self.methods.is_empty() || self.methods.iter().any(|m| m == method)
    }

    /// Reads an id from its source. An empty value is as good as absent.
    pub fn resolve_id(
        source: &IdSource,
        captures: &[(&str, &str)],
        request: &dyn RequestView,
    ) -> Result<String, IdProblem> {
        let missing = || IdProblem::Missing(source.describe());
        let value = match source {
            IdSource::Capture(name) => captures
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| (*v).to_owned()),
            IdSource::Header(name) => match request.header_values(name).as_slice() {
                [] => None,
                [one] => Some((*one).to_owned()),
                _ => return Err(IdProblem::Ambiguous(source.describe())),
            },
            IdSource::ContextExtension(key) => request.context_extension(key).map(str::to_owned),
            IdSource::Value(value) => Some(value.clone()),
        };
        value.filter(|v| !v.is_empty()).ok_or_else(missing)
    }
}

/// A route chosen for a request, with what its pattern captured.
#[derive(Debug)]
pub struct Matched<'r, 'p> {
    pub route: &'r Route,
    pub captures: Vec<(&'r str, &'p str)>,
}

/// The route rules in their configured order: the first match wins.
#[derive(Clone, Debug)]
pub struct RouteTable {
    routes: Vec<Route>,
    dots: DotSegments,
}

impl RouteTable {
    pub fn new(routes: Vec<Route>, dots: DotSegments) -> Self {
        Self { routes, dots }
    }

    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    pub fn normalize(&self, target: &str) -> Result<NormalPath, PathError> {
        normalize_path(target, self.dots)
    }

    /// The first route whose method and pattern match, if any.
    pub fn find<'r, 'p>(&'r self, method: &str, path: &'p NormalPath) -> Option<Matched<'r, 'p>> {
        self.routes.iter().find_map(|route| {
            if !route.method_matches(method) {
                return None;
            }
            route
                .pattern
                .matches(path)
                .map(|captures| Matched { route, captures })
        })
    }
}

/// A [`RequestView`] over plain maps, for tests and simple callers.
#[derive(Clone, Debug, Default)]
pub struct SimpleRequest {
    pub headers: Vec<(String, String)>,
    pub context_extensions: HashMap<String, String>,
}

impl RequestView for SimpleRequest {
    fn header_values(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    fn context_extension(&self, key: &str) -> Option<&str> {
        self.context_extensions.get(key).map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
            ("/a;b=c/@:!$&'()*+,=~", &["a;b=c", "@:!$&'()*+,=~"]),
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
            ("/v2/..;/admin", PathError::DotSegmentWithParameters),
            ("/v2/.;x/admin", PathError::DotSegmentWithParameters),
            (
                "/v2/%2e%2e;jsessionid=1/admin",
                PathError::DotSegmentWithParameters,
            ),
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
    fn ids_come_from_their_sources() {
        let request = SimpleRequest {
            headers: vec![
                ("x-org-id".into(), "org-1".into()),
                ("x-dup".into(), "a".into()),
                ("x-dup".into(), "b".into()),
                ("x-empty".into(), String::new()),
            ],
            context_extensions: HashMap::from([("org".to_owned(), "org-2".to_owned())]),
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
}
