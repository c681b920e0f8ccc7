//! Route rules for the mesh (Envoy ext_authz) endpoint: the path normalizer,
//! path patterns, and the table that maps a request (method + path) to the
//! permission it needs and to where its organization and workspace ids are.
//!
//! Everything here is pure: no tonic, no I/O. The normalizer is the security
//! boundary: a rule is chosen on the normalized path, so every way of spelling
//! a path that a proxy or an upstream could read differently is refused
//! rather than guessed at (encoded slashes and backslashes, NUL and control
//! bytes, double encoding, path parameters (`;`), climbing above the root).

use std::fmt;

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
    /// `;` (raw or `%3B`): a path parameter. Tomcat and Spring drop
    /// `;params` from each segment before routing, most other servers keep
    /// them as part of the segment, and Spring decodes `%3B` after
    /// dropping. A rule chosen on either reading could differ from the
    /// upstream's (`/transformations;x/t1` is `/transformations/t1` to one
    /// and an unknown segment to the other), so the path is refused.
    PathParameters,
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
            PathError::PathParameters => "the path contains ; (path parameters are refused)",
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
                b';' => return Err(PathError::PathParameters),
                0x00..=0x1f | 0x7f => return Err(PathError::EncodedControl),
                _ => decoded.push(value),
            }
            i += 3;
        } else if byte == b';' {
            return Err(PathError::PathParameters);
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
        let is_dot = segment == "." || segment == "..";
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
                if part.contains(['{', '}', '*', '%', '\\', '?', '#', ';'])
                    || part.chars().any(|c| c.is_control() || c.is_whitespace())
                {
                    return Err(format!(
                        "{part:?}: a segment is literal text (decoded, without {{}}*%\\?#; or spaces), {{name}}, * or **"
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
/// Envoy's context extensions. `ext_authz::HttpRequest` is the one request;
/// the trait lets the route table read it without importing `ext_authz`,
/// which imports the route table.
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

#[cfg(test)]
mod tests;
