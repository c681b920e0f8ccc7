//! `[ext_authz]`: the route rules of the Envoy ext_authz endpoint, as the TOML
//! file spells them, and their validation into the domain's
//! [`ExtAuthzPolicy`]. Kept apart from `config/mod.rs` because it is one feature's
//! settings; `Config` holds it as one field.
//!
//! ```toml
//! [ext_authz]
//! unmatched = "deny"
//! org_id = { header = "x-org-id" }
//!
//! [[ext_authz.routes]]
//! methods = ["GET"]
//! path = "/v2/workspaces/{workspace_id}/transformations/**"
//! permission = "transformations:read"
//! workspace_id = { capture = "workspace_id" }
//! ```

use serde::{Deserialize, Serialize};

use crate::domain::{
    ext_authz::{ExtAuthzPolicy, HeadLimits, RESERVED_HEADER_PREFIX, Unmatched},
    ids::require_id,
    permissions::{Catalogue, Level},
    routes::{DotSegments, IdSource, PathPattern, Route, RouteTable},
};

/// An invalid `[ext_authz]` setting, naming the field (with the route's index).
#[derive(Debug, thiserror::Error)]
#[error("config field `{field}`: {reason}")]
pub struct ExtAuthzConfigError {
    pub field: String,
    pub reason: String,
}

/// `[ext_authz]`: how `envoy.service.auth.v3.Authorization/Check` decides.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExtAuthzConfig {
    /// Most headers a request may carry (each copy of a repeated header
    /// counts); beyond it the request is denied with 431 `too_many_headers`.
    /// Envoy refuses more than 100 by default (`max_headers_count`) and adds
    /// a few of its own (`x-request-id`, `x-forwarded-*`), so the default
    /// leaves room for those. Raise it with Envoy's. Default 128.
    pub max_headers: usize,
    /// Most bytes of header names and values together (and the longest
    /// path); beyond it the request is denied with 431 `headers_too_large`.
    /// Envoy refuses request headers above 60 KiB by default
    /// (`max_request_headers_kb`); the default leaves 4 KiB for the headers
    /// Envoy adds. Raise it with Envoy's. Default 65536.
    pub max_header_bytes: usize,
    /// Largest CheckRequest message, in bytes. Envoy sends the path twice
    /// (`path` and `:path`), the headers, and the peers' addresses and
    /// certificates; a message over this limit fails as an RPC error
    /// (`OUT_OF_RANGE`) before any authentication, which Envoy turns into its
    /// `status_on_error` (or an allow, with `failure_mode_allow`: never set it
    /// in front of tokenauth). Must be at least twice `max_header_bytes`, so
    /// that a request within the header limits is answered. With Envoy's
    /// `with_request_body`, add its `max_request_bytes`. Default 262144
    /// (256 KiB).
    pub max_request_bytes: usize,
    /// Most bytes that ext_authz requests in flight may hold together, counted
    /// as each message arrives (its declared length, from its first bytes).
    /// A request that would go over it is refused at once with
    /// `RESOURCE_EXHAUSTED`. It bounds the memory of requests being received
    /// and decoded: about twice this (the message and its decoded form). At
    /// least `max_request_bytes`. Default 33554432 (32 MiB).
    pub max_in_flight_bytes: usize,
    /// A request no route matches: `"deny"` (403, code `no_route`) or
    /// `"allow"` (forwarded unchecked, without identity headers). Default `"deny"`.
    pub unmatched: UnmatchedConfig,
    /// `.` and `..` path segments: `"reject"` (400), or `"resolve"` them as RFC
    /// 3986 does (only if the upstream resolves them the same way). Default `"reject"`.
    pub dot_segments: DotSegmentsConfig,
    /// A header that may carry the token itself, e.g. `"x-api-key"`, besides
    /// `authorization: Bearer`. Default: none.
    pub api_key_header: Option<String>,
    /// Remove `authorization` and the API-key header from allowed requests, so
    /// that upstreams never see tokens. Default false.
    pub strip_credentials: bool,
    /// Where routes that name no `org_id` find it. Default: none (each route names it).
    pub org_id: Option<IdSourceConfig>,
    /// `[[ext_authz.routes]]`, tried in order: the first match wins. Default: none.
    pub routes: Vec<RouteConfig>,
}

impl Default for ExtAuthzConfig {
    fn default() -> Self {
        Self {
            max_headers: 128,
            max_header_bytes: 64 * 1024,
            max_request_bytes: 256 * 1024,
            max_in_flight_bytes: 32 * 1024 * 1024,
            unmatched: UnmatchedConfig::default(),
            dot_segments: DotSegmentsConfig::default(),
            api_key_header: None,
            strip_credentials: false,
            org_id: None,
            routes: Vec::new(),
        }
    }
}

/// See [`ExtAuthzConfig::unmatched`].
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum UnmatchedConfig {
    #[default]
    Deny,
    Allow,
}

/// See [`ExtAuthzConfig::dot_segments`].
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum DotSegmentsConfig {
    #[default]
    Reject,
    Resolve,
}

/// One `[[ext_authz.routes]]` entry.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Upper-case HTTP methods, e.g. `["GET", "HEAD"]`. Default: any method.
    #[serde(default)]
    pub methods: Vec<String>,
    /// The path pattern: literal segments (decoded), `{name}` (one segment,
    /// captured), `*` (one segment), `**` (the rest, last only). Required.
    pub path: String,
    /// The exact catalogue permission the request needs. Required.
    pub permission: String,
    /// Where the organization id is. Default: `[ext_authz] org_id`.
    pub org_id: Option<IdSourceConfig>,
    /// Where the workspace id is: required for a workspace-level permission,
    /// refused for an organization-level one.
    pub workspace_id: Option<IdSourceConfig>,
}

/// An id's source: `{ capture = "workspace_id" }`, `{ header = "x-org-id" }`,
/// `{ context_extension = "org_id" }` or `{ value = "org-1" }`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum IdSourceConfig {
    Capture(String),
    Header(String),
    ContextExtension(String),
    Value(String),
}

fn error(field: impl Into<String>, reason: impl Into<String>) -> ExtAuthzConfigError {
    ExtAuthzConfigError {
        field: field.into(),
        reason: reason.into(),
    }
}

/// An HTTP field name as Envoy sends it: lower-case `tchar`s.
fn is_header_name(name: &str) -> bool {
    !name.is_empty()
        && name.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || b"!#$%&'*+-.^_`|~".contains(&b)
        })
}

fn is_method(method: &str) -> bool {
    !method.is_empty() && method.bytes().all(|b| b.is_ascii_uppercase() || b == b'-')
}

impl ExtAuthzConfig {
    /// Validates every rule against the permission catalogue and builds the policy.
    pub fn compile(&self, catalogue: &Catalogue) -> Result<ExtAuthzPolicy, ExtAuthzConfigError> {
        let limits = self.limits()?;
        let api_key_header = match &self.api_key_header {
            None => None,
            Some(name) => {
                if !is_header_name(name) {
                    return Err(error(
                        "ext_authz.api_key_header",
                        format!("{name:?} is not a lower-case header name"),
                    ));
                }
                if name == "authorization" || name.starts_with(RESERVED_HEADER_PREFIX) {
                    return Err(error(
                        "ext_authz.api_key_header",
                        format!("{name:?} is reserved"),
                    ));
                }
                Some(name.clone())
            }
        };
        let default_org = match &self.org_id {
            None => None,
            Some(source) => Some(self.source("ext_authz.org_id", source, None)?),
        };
        let mut routes: Vec<Route> = Vec::with_capacity(self.routes.len());
        for (index, config) in self.routes.iter().enumerate() {
            let route = self.route(index, config, catalogue, default_org.as_ref())?;
            if let Some(earlier) = routes.iter().position(|r| {
                r.pattern == route.pattern
                    && (r.methods.is_empty() || r.methods.iter().any(|m| route.methods.contains(m)))
            }) {
                return Err(error(
                    format!("ext_authz.routes[{index}].path"),
                    format!(
                        "{:?} can never match: ext_authz.routes[{earlier}] has the same path and takes its methods first",
                        route.pattern.as_str()
                    ),
                ));
            }
            routes.push(route);
        }
        Ok(ExtAuthzPolicy {
            limits,
            routes: RouteTable::new(
                routes,
                match self.dot_segments {
                    DotSegmentsConfig::Reject => DotSegments::Reject,
                    DotSegmentsConfig::Resolve => DotSegments::Resolve,
                },
            ),
            unmatched: match self.unmatched {
                UnmatchedConfig::Deny => Unmatched::Deny,
                UnmatchedConfig::Allow => Unmatched::Allow,
            },
            api_key_header,
            strip_credentials: self.strip_credentials,
        })
    }

    /// Validates the size limits against each other.
    fn limits(&self) -> Result<HeadLimits, ExtAuthzConfigError> {
        if self.max_headers == 0 {
            return Err(error("ext_authz.max_headers", "must be at least 1"));
        }
        if self.max_header_bytes < 1024 {
            return Err(error("ext_authz.max_header_bytes", "must be at least 1024"));
        }
        if self.max_request_bytes / 2 < self.max_header_bytes {
            return Err(error(
                "ext_authz.max_request_bytes",
                format!(
                    "must be at least twice ext_authz.max_header_bytes ({}): Envoy sends the path twice, and a request within the header limits must be answered",
                    self.max_header_bytes
                ),
            ));
        }
        if self.max_in_flight_bytes < self.max_request_bytes {
            return Err(error(
                "ext_authz.max_in_flight_bytes",
                format!(
                    "must be at least ext_authz.max_request_bytes ({})",
                    self.max_request_bytes
                ),
            ));
        }
        Ok(HeadLimits {
            max_headers: self.max_headers,
            max_header_bytes: self.max_header_bytes,
        })
    }

    fn route(
        &self,
        index: usize,
        config: &RouteConfig,
        catalogue: &Catalogue,
        default_org: Option<&IdSource>,
    ) -> Result<Route, ExtAuthzConfigError> {
        let field = |name: &str| format!("ext_authz.routes[{index}].{name}");
        for method in &config.methods {
            if !is_method(method) {
                return Err(error(
                    field("methods"),
                    format!("{method:?} is not an upper-case HTTP method"),
                ));
            }
        }
        let pattern = PathPattern::parse(&config.path)
            .map_err(|why| error(field("path"), format!("{:?} {why}", config.path)))?;
        let (level, _) = catalogue.check_level(&config.permission).ok_or_else(|| {
            error(
                field("permission"),
                format!(
                    "{:?} is not an exact permission of the catalogue ({})",
                    config.permission,
                    catalogue.all().join(", ")
                ),
            )
        })?;
        let org_id = match &config.org_id {
            Some(source) => self.source(&field("org_id"), source, Some(&pattern))?,
            None => match default_org {
                // A capture named by the default must exist in this route's pattern.
                Some(IdSource::Capture(name)) if !pattern.has_capture(name) => {
                    return Err(error(
                        field("org_id"),
                        format!(
                            "ext_authz.org_id takes {{{name}}}, which {:?} does not capture; name a source here",
                            config.path
                        ),
                    ));
                }
                Some(source) => source.clone(),
                None => {
                    return Err(error(
                        field("org_id"),
                        "is required (or set ext_authz.org_id for every route)",
                    ));
                }
            },
        };
        let workspace_id = match (level, &config.workspace_id) {
            (Level::Workspace, Some(source)) => {
                Some(self.source(&field("workspace_id"), source, Some(&pattern))?)
            }
            (Level::Workspace, None) => {
                return Err(error(
                    field("workspace_id"),
                    format!(
                        "is required: {:?} is a workspace-level permission",
                        config.permission
                    ),
                ));
            }
            (Level::Organization, Some(_)) => {
                return Err(error(
                    field("workspace_id"),
                    format!(
                        "must be absent: {:?} is an organization-level permission",
                        config.permission
                    ),
                ));
            }
            (Level::Organization, None) => None,
        };
        Ok(Route {
            methods: config.methods.clone(),
            pattern,
            permission: config.permission.clone(),
            org_id,
            workspace_id,
        })
    }

    /// Validates a source; `pattern` is the route's (none for the default).
    fn source(
        &self,
        field: &str,
        source: &IdSourceConfig,
        pattern: Option<&PathPattern>,
    ) -> Result<IdSource, ExtAuthzConfigError> {
        Ok(match source {
            IdSourceConfig::Capture(name) => {
                if let Some(pattern) = pattern
                    && !pattern.has_capture(name)
                {
                    return Err(error(
                        field,
                        format!("{:?} has no {{{name}}}", pattern.as_str()),
                    ));
                }
                IdSource::Capture(name.clone())
            }
            IdSourceConfig::Header(name) => {
                if !is_header_name(name) {
                    return Err(error(
                        field,
                        format!("{name:?} is not a lower-case header name"),
                    ));
                }
                // A credential header is no id, and identity headers are ours.
                if name == "authorization"
                    || self.api_key_header.as_deref() == Some(name.as_str())
                    || name.starts_with(RESERVED_HEADER_PREFIX)
                {
                    return Err(error(field, format!("header {name:?} is reserved")));
                }
                IdSource::Header(name.clone())
            }
            IdSourceConfig::ContextExtension(key) => {
                if key.is_empty() {
                    return Err(error(field, "the context extension key is empty"));
                }
                IdSource::ContextExtension(key.clone())
            }
            IdSourceConfig::Value(value) => {
                require_id("value", value).map_err(|e| error(field, e.to_string()))?;
                IdSource::Value(value.clone())
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn compile(toml: &str) -> Result<ExtAuthzPolicy, String> {
        let config = Config::from_toml(toml)?;
        config
            .ext_authz
            .compile(&Catalogue::default())
            .map_err(|e| e.to_string())
    }

    /// The shared route rules, with every setting of the section changed
    /// from its default, and a route with the one id source they lack.
    fn good() -> String {
        let settings =
            "unmatched = \"allow\"\ndot_segments = \"resolve\"\nstrip_credentials = true";
        format!(
            "{}{}",
            crate::testing::fixtures::route_policy(settings),
            r#"
[[ext_authz.routes]]
path = "/v2/test"
permission = "test_api:run"
org_id = { value = "org-1" }
workspace_id = { header = "x-workspace-id" }
"#
        )
    }

    #[test]
    fn a_full_section_compiles() {
        let policy = compile(&good()).unwrap();
        assert_eq!(policy.unmatched, Unmatched::Allow);
        assert_eq!(policy.api_key_header.as_deref(), Some("x-api-key"));
        assert!(policy.strip_credentials);
        let routes = policy.routes.routes();
        assert_eq!(routes.len(), 7);
        assert_eq!(
            routes[0].org_id,
            IdSource::ContextExtension("org_id".into())
        );
        assert_eq!(
            routes[0].workspace_id,
            Some(IdSource::Capture("workspace_id".into()))
        );
        assert_eq!(
            routes[2].workspace_id,
            Some(IdSource::Header("x-workspace-id".into()))
        );
        assert_eq!(
            routes[3].workspace_id,
            Some(IdSource::ContextExtension("workspace_id".into()))
        );
        assert_eq!(routes[5].org_id, IdSource::Capture("org".into()));
        assert_eq!(routes[5].workspace_id, None);
        assert_eq!(routes[6].org_id, IdSource::Value("org-1".into()));
        assert_eq!(
            routes[6].workspace_id,
            Some(IdSource::Header("x-workspace-id".into()))
        );
    }

    #[test]
    fn defaults_deny_everything() {
        let policy = compile("").unwrap();
        assert_eq!(policy.unmatched, Unmatched::Deny);
        assert!(policy.routes.routes().is_empty());
        assert!(!policy.strip_credentials);
        assert_eq!(policy.api_key_header, None);
        assert_eq!(
            policy.limits,
            HeadLimits {
                max_headers: 128,
                max_header_bytes: 65_536,
            }
        );
    }

    #[test]
    fn errors_name_the_field_and_route() {
        let route = |body: &str| {
            format!(
                "[ext_authz]\norg_id = {{ header = \"x-org-id\" }}\n[[ext_authz.routes]]\n{body}\n"
            )
        };
        let cases = [
            (route("path = \"v2\"\npermission = \"scim:read\""), "ext_authz.routes[0].path"),
            (route("path = \"/v2/{a\"\npermission = \"scim:read\""), "ext_authz.routes[0].path"),
            (route("path = \"/v2\"\npermission = \"scim:*\""), "ext_authz.routes[0].permission"),
            (route("path = \"/v2\"\npermission = \"nope:read\""), "ext_authz.routes[0].permission"),
            (route("path = \"/v2\"\npermission = \"scim:read\"\nmethods = [\"get\"]"), "ext_authz.routes[0].methods"),
            (
                route("path = \"/v2/{ws}\"\npermission = \"transformations:read\""),
                "ext_authz.routes[0].workspace_id",
            ),
            (
                route("path = \"/v2/{ws}\"\npermission = \"scim:read\"\nworkspace_id = { capture = \"ws\" }"),
                "ext_authz.routes[0].workspace_id",
            ),
            (
                route("path = \"/v2/{ws}\"\npermission = \"transformations:read\"\nworkspace_id = { capture = \"wrong\" }"),
                "ext_authz.routes[0].workspace_id",
            ),
            (
                route("path = \"/v2\"\npermission = \"scim:read\"\norg_id = { header = \"X-Org\" }"),
                "ext_authz.routes[0].org_id",
            ),
            (
                route("path = \"/v2\"\npermission = \"scim:read\"\norg_id = { header = \"x-tokenauth-org-id\" }"),
                "ext_authz.routes[0].org_id",
            ),
            (
                route("path = \"/v2\"\npermission = \"scim:read\"\norg_id = { header = \"authorization\" }"),
                "ext_authz.routes[0].org_id",
            ),
            (
                route("path = \"/v2\"\npermission = \"scim:read\"\norg_id = { value = \"org 1\" }"),
                "ext_authz.routes[0].org_id",
            ),
            (
                route("path = \"/v2\"\npermission = \"scim:read\"\norg_id = { context_extension = \"\" }"),
                "ext_authz.routes[0].org_id",
            ),
            (
                "[[ext_authz.routes]]\npath = \"/v2\"\npermission = \"scim:read\"\n".to_owned(),
                "ext_authz.routes[0].org_id",
            ),
            (
                "[ext_authz]\norg_id = { capture = \"org\" }\n[[ext_authz.routes]]\npath = \"/v2\"\npermission = \"scim:read\"\n".to_owned(),
                "ext_authz.routes[0].org_id",
            ),
            (
                format!(
                    "{}[[ext_authz.routes]]\npath = \"/v2\"\npermission = \"scim:write\"\nmethods = [\"POST\"]\n",
                    route("path = \"/v2\"\npermission = \"scim:read\"")
                ),
                "ext_authz.routes[1].path",
            ),
            ("[ext_authz]\napi_key_header = \"X-Api-Key\"\n".to_owned(), "ext_authz.api_key_header"),
            ("[ext_authz]\nmax_headers = 0\n".to_owned(), "ext_authz.max_headers"),
            ("[ext_authz]\nmax_header_bytes = 100\n".to_owned(), "ext_authz.max_header_bytes"),
            ("[ext_authz]\nmax_header_bytes = 131073\n".to_owned(), "ext_authz.max_request_bytes"),
            ("[ext_authz]\nmax_request_bytes = 40000000\n".to_owned(), "ext_authz.max_in_flight_bytes"),
            ("[ext_authz]\napi_key_header = \"authorization\"\n".to_owned(), "ext_authz.api_key_header"),
        ];
        for (toml, field) in cases {
            let error = compile(&toml).unwrap_err();
            assert!(error.contains(&format!("`{field}`")), "{toml}\n=> {error}");
        }
    }

    #[test]
    fn unknown_keys_and_values_are_refused_by_name() {
        for (toml, needle) in [
            ("[ext_authz]\nunmatched = \"maybe\"\n", "maybe"),
            ("[ext_authz]\ndot_segments = \"ignore\"\n", "ignore"),
            ("[ext_authz]\nroutez = []\n", "routez"),
            (
                "[[ext_authz.routes]]\npath = \"/\"\npermission = \"scim:read\"\npermision = \"x\"\n",
                "permision",
            ),
            (
                "[[ext_authz.routes]]\npath = \"/\"\npermission = \"scim:read\"\norg_id = { cookie = \"x\" }\n",
                "cookie",
            ),
            ("[[ext_authz.routes]]\npermission = \"scim:read\"\n", "path"),
        ] {
            let error = Config::from_toml(toml).unwrap_err();
            assert!(error.contains(needle), "{toml}\n=> {error}");
        }
    }
}
