//! The mesh's authorization decision (Envoy ext_authz), as plain values: an
//! HTTP request in, a verdict out (allow with the headers the upstream gets,
//! or deny with an HTTP status, a code and a message). The decision itself is
//! `service::TokenAuthority::check`, asked by `service::mesh`, so usage
//! recording, exact expiry and the revocation guarantees apply unchanged; this
//! module only finds the credential, the route and the ids, and shapes the
//! answer.
//!
//! Identity headers: Envoy applies a response's header mutations before its
//! `headers_to_remove`, and an overwrite replaces only the *first* copy of a
//! header. So a header we set must never be in `headers_to_remove` (that
//! would remove ours), and a client copy of a header we set can only be made
//! harmless by refusing the request when it differs from ours; identity
//! headers we do not set are removed, every copy.

use std::collections::{HashMap, HashSet};

use super::{
    caller::parse_bearer,
    explain,
    routes::{IdProblem, PathError, RequestView, Route, RouteTable},
    token::{Reason, TokenKind, TokenRecord},
};

/// The identity headers the upstream receives, in a fixed order.
pub const IDENTITY_HEADERS: [&str; 5] = [
    "x-tokenauth-token-id",
    "x-tokenauth-kind",
    "x-tokenauth-owner",
    "x-tokenauth-org-id",
    "x-tokenauth-workspace-id",
];

/// The response header a denied client reads the permission it lacked from
/// (GitHub's `X-Accepted-GitHub-Permissions`, for one permission).
pub const REQUIRED_PERMISSION_HEADER: &str = "x-tokenauth-required-permission";

/// Every client header with this prefix is removed (or, for one we set,
/// checked): the prefix is ours, so future identity headers are covered too.
pub const RESERVED_HEADER_PREFIX: &str = "x-tokenauth-";

/// Whether a (lower-case) header name is ours, reading `_` as `-`.
fn is_reserved(name: &str) -> bool {
    name.len() >= RESERVED_HEADER_PREFIX.len()
        && name
            .bytes()
            .zip(RESERVED_HEADER_PREFIX.bytes())
            .all(|(a, b)| a == b || (a == b'_' && b == b'-'))
}

/// What happens to a request that no route matches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unmatched {
    /// Denied with 403 (`no_route`).
    Deny,
    /// Forwarded without a Check and without identity headers.
    Allow,
}

/// Bounds on the request head the mesh endpoint reads. A request over them
/// is refused (431) before any other work, so that what one request costs
/// is bounded whatever its author sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeadLimits {
    /// Most headers; each copy of a repeated header counts.
    pub max_headers: usize,
    /// Most bytes of header names and values together (as Envoy counts its
    /// own `max_request_headers_kb`); the path, when sent apart from
    /// `:path`, may not be longer either.
    pub max_header_bytes: usize,
}

impl HeadLimits {
    /// The request, or why it is too large to read.
    pub fn admit(&self, request: &HttpRequest) -> Result<(), Denial> {
        if request.headers.len() > self.max_headers {
            return Err(Denial::TooManyHeaders {
                limit: self.max_headers,
            });
        }
        let bytes = request.headers.iter().fold(0usize, |sum, (name, value)| {
            sum.saturating_add(name.len()).saturating_add(value.len())
        });
        if bytes > self.max_header_bytes || request.path.len() > self.max_header_bytes {
            return Err(Denial::HeadersTooLarge {
                limit: self.max_header_bytes,
            });
        }
        Ok(())
    }
}

/// The rules of the mesh endpoint, from configuration (validated).
#[derive(Clone, Debug)]
pub struct ExtAuthzPolicy {
    pub limits: HeadLimits,
    pub routes: RouteTable,
    pub unmatched: Unmatched,
    /// A lower-case header that may carry the token instead of `authorization: Bearer`.
    pub api_key_header: Option<String>,
    /// Remove `authorization` (and the API-key header) from allowed requests.
    pub strip_credentials: bool,
}

/// An HTTP request as the proxy describes it.
#[derive(Clone, Debug, Default)]
pub struct HttpRequest {
    /// Upper-case, as the proxy sends it.
    pub method: String,
    /// The request target: path and query string, not decoded.
    pub path: String,
    /// Names lower-case; a name may repeat.
    pub headers: Vec<(String, String)>,
    /// Envoy's per-route `context_extensions` (set by the operator, not the client).
    pub context_extensions: HashMap<String, String>,
    /// The downstream client's address, when Envoy reports it.
    pub source: Option<std::net::SocketAddr>,
}

impl RequestView for HttpRequest {
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

/// Who a found token is, for the upstream and the proxy's logs. Never the secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub token_id: String,
    pub kind: TokenKind,
    pub owner_user_id: String,
    pub org_id: String,
    /// Empty for an organization-level token.
    pub workspace_id: String,
}

impl Identity {
    pub fn of(record: &TokenRecord) -> Self {
        Self {
            token_id: record.id.to_string(),
            kind: record.kind,
            owner_user_id: record.owner_user_id.clone(),
            org_id: record.org_id.clone(),
            workspace_id: record.workspace_id.clone(),
        }
    }

    /// `PERSONAL` or `SERVICE`, as the gRPC API spells the kinds.
    pub fn kind_name(&self) -> &'static str {
        self.kind.name()
    }

    /// The identity headers with their values (empty: not applicable).
    pub fn headers(&self) -> [(&'static str, &str); 5] {
        let [token_id, kind, owner, org_id, workspace_id] = IDENTITY_HEADERS;
        [
            (token_id, self.token_id.as_str()),
            (kind, self.kind_name()),
            (owner, self.owner_user_id.as_str()),
            (org_id, self.org_id.as_str()),
            (workspace_id, self.workspace_id.as_str()),
        ]
    }
}

/// Why a request is refused. Each has an HTTP status, a stable code for the
/// JSON body and logs, and a message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Denial {
    /// The check request describes no HTTP request (e.g. a network filter).
    NotHttp,
    /// More headers than [`HeadLimits::max_headers`].
    TooManyHeaders {
        limit: usize,
    },
    /// Headers (or the path) larger than [`HeadLimits::max_header_bytes`].
    HeadersTooLarge {
        limit: usize,
    },
    InvalidPath(PathError),
    /// No route matches, and unmatched routes are denied.
    NoRoute,
    MissingCredential,
    /// Both `authorization` and the API-key header, or either one twice.
    MultipleCredentials,
    /// `authorization` is not `Bearer <token>`.
    MalformedCredential(&'static str),
    /// The route's org or workspace id is not in the request.
    MissingId {
        field: &'static str,
        problem: IdProblem,
    },
    /// The id found is not a valid id.
    InvalidId {
        field: &'static str,
        reason: String,
    },
    /// The token's own decision.
    Token(Reason),
    /// A client copy of an identity header we set disagrees with ours.
    IdentityHeaderConflict(&'static str),
}

/// The `WWW-Authenticate` challenges (RFC 6750).
const INVALID_TOKEN: &str = "Bearer error=\"invalid_token\"";
const INSUFFICIENT_SCOPE: &str = "Bearer error=\"insufficient_scope\"";
const INVALID_REQUEST: &str = "Bearer error=\"invalid_request\"";

impl Denial {
    /// The HTTP status the client receives.
    pub fn http_status(&self) -> u16 {
        match self {
            Denial::NotHttp
            | Denial::InvalidPath(_)
            | Denial::MultipleCredentials
            | Denial::IdentityHeaderConflict(_) => 400,
            // RFC 6585: "Request Header Fields Too Large", what Envoy itself
            // answers beyond its own header limits.
            Denial::TooManyHeaders { .. } | Denial::HeadersTooLarge { .. } => 431,
            Denial::MissingCredential | Denial::MalformedCredential(_) => 401,
            Denial::Token(
                Reason::Malformed | Reason::NotFound | Reason::Revoked | Reason::Expired,
            ) => 401,
            Denial::NoRoute
            | Denial::MissingId { .. }
            | Denial::InvalidId { .. }
            | Denial::Token(
                Reason::WrongScope
                | Reason::InsufficientPermission
                | Reason::RoleInsufficient
                | Reason::Ok,
            ) => 403,
        }
    }

    /// The `WWW-Authenticate` value, for credential problems only.
    pub fn www_authenticate(&self) -> Option<&'static str> {
        match self {
            // The contract names invalid_token for a missing credential too
            // (RFC 6750 would send a bare challenge), so that every 401 reads
            // the same to a client.
            Denial::MissingCredential => Some(INVALID_TOKEN),
            Denial::MultipleCredentials => Some(INVALID_REQUEST),
            Denial::MalformedCredential(_) => Some(INVALID_TOKEN),
            Denial::Token(
                Reason::Malformed | Reason::NotFound | Reason::Revoked | Reason::Expired,
            ) => Some(INVALID_TOKEN),
            Denial::Token(
                Reason::WrongScope | Reason::InsufficientPermission | Reason::RoleInsufficient,
            ) => Some(INSUFFICIENT_SCOPE),
            _ => None,
        }
    }

    /// A stable, machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            Denial::NotHttp | Denial::MultipleCredentials => "invalid_request",
            Denial::TooManyHeaders { .. } => "too_many_headers",
            Denial::HeadersTooLarge { .. } => "headers_too_large",
            Denial::InvalidPath(_) => "invalid_path",
            Denial::NoRoute => "no_route",
            Denial::MissingCredential => "missing_credential",
            Denial::MalformedCredential(_) | Denial::Token(Reason::Malformed) => "malformed_token",
            Denial::Token(Reason::NotFound) => "unknown_token",
            Denial::Token(Reason::Revoked) => "revoked_token",
            Denial::Token(Reason::Expired) => "expired_token",
            Denial::Token(Reason::WrongScope) => "wrong_scope",
            Denial::Token(Reason::InsufficientPermission | Reason::Ok) => "insufficient_permission",
            Denial::Token(Reason::RoleInsufficient) => "role_insufficient",
            Denial::MissingId {
                field: "org_id", ..
            } => "missing_org_id",
            Denial::MissingId { .. } => "missing_workspace_id",
            Denial::InvalidId {
                field: "org_id", ..
            } => "invalid_org_id",
            Denial::InvalidId { .. } => "invalid_workspace_id",
            Denial::IdentityHeaderConflict(_) => "identity_header_conflict",
        }
    }

    /// The route's permission when it is what the token lacked (and nothing
    /// else: see `domain::explain`); `permission` is the route's.
    pub fn required_permission<'p>(&self, permission: Option<&'p str>) -> Option<&'p str> {
        match self {
            Denial::Token(reason) => explain::required_permission(*reason, permission?),
            _ => None,
        }
    }

    /// A sentence for the client. Never the token.
    pub fn message(&self, permission: Option<&str>) -> String {
        let needed = permission.unwrap_or("the route's permission");
        match self {
            Denial::NotHttp => "the check request describes no HTTP request".into(),
            Denial::TooManyHeaders { limit } => {
                format!("the request carries more than {limit} headers")
            }
            Denial::HeadersTooLarge { limit } => {
                format!("the request's headers (or its path) exceed {limit} bytes")
            }
            Denial::InvalidPath(why) => format!("{why}"),
            Denial::NoRoute => "no route rule matches this method and path".into(),
            Denial::MissingCredential => {
                "a credential is required (authorization: Bearer <token>)".into()
            }
            Denial::MultipleCredentials => "present exactly one credential".into(),
            Denial::MalformedCredential(why) => (*why).to_owned(),
            Denial::Token(Reason::Malformed) => "the token is malformed".into(),
            Denial::Token(Reason::NotFound) => "the token is not known".into(),
            Denial::Token(Reason::Revoked) => "the token has been revoked".into(),
            Denial::Token(Reason::Expired) => "the token has expired".into(),
            Denial::Token(Reason::WrongScope) => {
                "the token belongs to another organization or workspace".into()
            }
            Denial::Token(Reason::InsufficientPermission | Reason::Ok) => {
                format!("the token does not hold {needed}")
            }
            Denial::Token(Reason::RoleInsufficient) => {
                format!("the token's member's current role does not allow {needed}")
            }
            Denial::MissingId { field, problem } => match problem {
                IdProblem::Missing(source) => format!("no {field} in the request ({source})"),
                IdProblem::Ambiguous(source) => {
                    format!("{field}: {source} appears more than once")
                }
            },
            Denial::InvalidId { field, reason } => format!("{field}: {reason}"),
            Denial::IdentityHeaderConflict(name) => format!(
                "the request carries its own {name} header, which tokenauth sets: remove it"
            ),
        }
    }
}

/// An allowed request: what the proxy changes before forwarding it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Allow {
    /// Headers to set, overwriting.
    pub set: Vec<(&'static str, String)>,
    /// Headers to remove, every copy. Never one of `set`.
    pub remove: Vec<String>,
    pub identity: Option<Identity>,
}

/// The answer, with what the proxy may log about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MeshVerdict {
    Allow {
        allow: Allow,
        /// The permission checked and the route pattern (none when unmatched).
        permission: Option<String>,
        route: Option<String>,
    },
    Deny {
        denial: Denial,
        identity: Option<Identity>,
        permission: Option<String>,
        route: Option<String>,
    },
}

impl MeshVerdict {
    /// A deny before any route matched.
    pub fn deny(denial: Denial) -> Self {
        MeshVerdict::Deny {
            denial,
            identity: None,
            permission: None,
            route: None,
        }
    }

    /// A deny on `route`, naming the token's identity when one was found.
    pub fn deny_on(denial: Denial, route: &Route, identity: Option<Identity>) -> Self {
        MeshVerdict::Deny {
            denial,
            identity,
            permission: Some(route.permission.clone()),
            route: Some(route.pattern.as_str().to_owned()),
        }
    }
}

/// The token the request presents, from `authorization: Bearer` or the API-key header.
pub(crate) fn credential<'r>(
    policy: &ExtAuthzPolicy,
    request: &'r HttpRequest,
) -> Result<&'r str, Denial> {
    let bearer = request.header_values("authorization");
    let api_key = policy
        .api_key_header
        .as_deref()
        .map(|name| request.header_values(name))
        .unwrap_or_default();
    match (bearer.as_slice(), api_key.as_slice()) {
        ([], []) => Err(Denial::MissingCredential),
        ([header], []) => parse_bearer(header).map_err(Denial::MalformedCredential),
        ([], [key]) => match key.trim_matches([' ', '\t']) {
            "" => Err(Denial::MissingCredential),
            key => Ok(key),
        },
        _ => Err(Denial::MultipleCredentials),
    }
}

/// The organization and workspace ids a matched route names.
pub(crate) fn route_ids(
    route: &Route,
    captures: &[(&str, &str)],
    request: &HttpRequest,
) -> Result<(String, String), Denial> {
    let org_id = Route::resolve_id(&route.org_id, captures, request).map_err(|problem| {
        Denial::MissingId {
            field: "org_id",
            problem,
        }
    })?;
    let workspace_id = match &route.workspace_id {
        None => String::new(),
        Some(source) => {
            Route::resolve_id(source, captures, request).map_err(|problem| Denial::MissingId {
                field: "workspace_id",
                problem,
            })?
        }
    };
    Ok((org_id, workspace_id))
}

/// The header changes of an allowed request, or the identity header a client
/// copy of conflicts with ours.
pub fn upstream_headers(
    policy: &ExtAuthzPolicy,
    request: &HttpRequest,
    identity: Option<&Identity>,
) -> Result<Allow, &'static str> {
    let mut set: Vec<(&'static str, String)> = Vec::new();
    if let Some(identity) = identity {
        for (name, value) in identity.headers() {
            if value.is_empty() {
                continue;
            }
            // An overwrite replaces only the first copy: any copy that is not
            // exactly ours could reach the upstream beside it.
            let theirs = request.header_values(name);
            if !theirs.is_empty() && theirs != [value] {
                return Err(name);
            }
            set.push((name, value.to_owned()));
        }
    }
    // Each name once, found in a set: the work is linear in the number of
    // headers (a scan of the list per header was quadratic, and a request
    // carrying many `x-tokenauth-*` headers could hold a worker for seconds).
    // Identity headers come first, in their fixed order; then the client's
    // reserved headers, in the order Envoy sent them.
    let mut listed: HashSet<&str> = set.iter().map(|(name, _)| *name).collect();
    let mut remove: Vec<String> = Vec::new();
    for name in IDENTITY_HEADERS {
        remove_once(&mut listed, &mut remove, name);
    }
    for (name, _) in &request.headers {
        // Also `x_tokenauth_*`: CGI-style servers read `_` and `-` alike
        // (both become HTTP_X_TOKENAUTH_...), so those spell our headers too.
        if is_reserved(name) {
            remove_once(&mut listed, &mut remove, name);
        }
    }
    if policy.strip_credentials {
        remove_once(&mut listed, &mut remove, "authorization");
        if let Some(name) = &policy.api_key_header {
            remove_once(&mut listed, &mut remove, name);
        }
    }
    Ok(Allow {
        set,
        remove,
        identity: identity.cloned(),
    })
}

/// Adds `name` to the headers to remove unless it is listed (set or removed) already.
fn remove_once<'a>(listed: &mut HashSet<&'a str>, remove: &mut Vec<String>, name: &'a str) {
    if listed.insert(name) {
        remove.push(name.to_owned());
    }
}

#[cfg(test)]
mod tests;
