//! Fixtures written once for the unit tests, the integration tests and the
//! fuzz targets.

/// Route rules like the ones the README shows, using every id source but
/// `value`, at both levels (workspace and organization), with an API-key
/// header: the ext_authz section most tests and the fuzz targets run with.
pub const ROUTE_POLICY: &str = r#"
[ext_authz]
api_key_header = "x-api-key"
org_id = { context_extension = "org_id" }

[[ext_authz.routes]]
methods = ["GET", "HEAD"]
path = "/v2/workspaces/{workspace_id}/transformations/**"
permission = "transformations:read"
workspace_id = { capture = "workspace_id" }

[[ext_authz.routes]]
methods = ["POST", "PUT", "DELETE"]
path = "/v2/workspaces/{workspace_id}/transformations/**"
permission = "transformations:write"
workspace_id = { capture = "workspace_id" }

[[ext_authz.routes]]
methods = ["POST"]
path = "/v2/test/run"
permission = "test_api:run"
workspace_id = { header = "x-workspace-id" }

[[ext_authz.routes]]
path = "/v2/catalog/**"
permission = "data_catalog:read"
workspace_id = { context_extension = "workspace_id" }

[[ext_authz.routes]]
path = "/v2/admin/**"
permission = "audit_logs:read"

[[ext_authz.routes]]
path = "/scim/v2/orgs/{org}/**"
permission = "scim:read"
org_id = { capture = "org" }
"#;

/// [`ROUTE_POLICY`] with `settings` (TOML lines of `[ext_authz]`, such as
/// `strip_credentials = true`) added to its section.
pub fn route_policy(settings: &str) -> String {
    ROUTE_POLICY.replacen("[ext_authz]\n", &format!("[ext_authz]\n{settings}\n"), 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{config::Config, domain::permissions::Catalogue};

    #[test]
    fn the_route_policy_compiles_with_settings_added() {
        let config = Config::from_toml(&route_policy("strip_credentials = true")).unwrap();
        assert!(config.ext_authz.strip_credentials);
        let policy = config.ext_authz.compile(&Catalogue::default()).unwrap();
        assert_eq!(policy.routes.routes().len(), 6);
        assert_eq!(policy.api_key_header.as_deref(), Some("x-api-key"));
    }
}
