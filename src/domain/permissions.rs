//! The permission catalogue: which `resource:action` strings exist, and at
//! which level (organization or workspace) each resource lives.
//!
//! A token holds exact permissions (`transformations:write`) or a wildcard over
//! one resource's actions (`transformations:*`). A Check always names an exact
//! permission. Unknown permissions are refused at issue time, so a typo never
//! silently grants nothing, or more than meant.

use std::collections::HashMap;

use super::Error;

/// Most permissions one token may hold.
pub const MAX_PERMISSIONS: usize = 64;
/// Longest permission string accepted, in bytes.
pub const MAX_PERMISSION_BYTES: usize = 64;

/// Where a permission applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    /// Organization-wide APIs (SCIM, the Audit Log API).
    Organization,
    /// One workspace's APIs (Transformations, Data Catalog, Test API).
    Workspace,
}

impl Level {
    fn describe(self) -> &'static str {
        match self {
            Level::Organization => "organization-level",
            Level::Workspace => "workspace-level",
        }
    }
}

/// The catalogue the service ships with, from the platform's documentation.
pub const DEFAULT_ORGANIZATION_PERMISSIONS: &[&str] = &[
    "audit_logs:read",
    "scim:read",
    "scim:write",
    "tokens:manage",
];
/// See [`DEFAULT_ORGANIZATION_PERMISSIONS`].
pub const DEFAULT_WORKSPACE_PERMISSIONS: &[&str] = &[
    "data_catalog:read",
    "data_catalog:write",
    "test_api:run",
    "tracking_plans:read",
    "tracking_plans:write",
    "transformations:read",
    "transformations:write",
];

/// Known permissions, by resource.
#[derive(Clone, Debug)]
pub struct Catalogue {
    /// resource -> (level, actions)
    resources: HashMap<String, (Level, Vec<String>)>,
    /// Every exact permission, sorted; a permission's index is its position.
    names: Vec<String>,
}

impl Default for Catalogue {
    fn default() -> Self {
        // The built-in lists are well-formed and disjoint, checked by a unit test.
        Self::new(
            DEFAULT_ORGANIZATION_PERMISSIONS,
            DEFAULT_WORKSPACE_PERMISSIONS,
        )
        .unwrap_or_else(|_| Self {
            resources: HashMap::new(),
            names: Vec::new(),
        })
    }
}

impl Catalogue {
    /// Builds a catalogue; every entry must be an exact `resource:action`, and a
    /// resource lives at one level only (so that `resource:*` has one level).
    pub fn new<S: AsRef<str>>(organization: &[S], workspace: &[S]) -> Result<Self, String> {
        let mut resources: HashMap<String, (Level, Vec<String>)> = HashMap::new();
        let entries = organization
            .iter()
            .map(|p| (p.as_ref(), Level::Organization))
            .chain(workspace.iter().map(|p| (p.as_ref(), Level::Workspace)));
        for (permission, level) in entries {
            let (resource, action) = split_exact(permission)
                .ok_or_else(|| format!("{permission:?} is not of the form resource:action"))?;
            let slot = resources
                .entry(resource.to_owned())
                .or_insert_with(|| (level, Vec::new()));
            if slot.0 != level {
                return Err(format!(
                    "resource {resource:?} appears at both organization and workspace level"
                ));
            }
            if !slot.1.iter().any(|a| a == action) {
                slot.1.push(action.to_owned());
            }
        }
        let mut names: Vec<String> = resources
            .iter()
            .flat_map(|(r, (_, actions))| actions.iter().map(move |a| format!("{r}:{a}")))
            .collect();
        names.sort();
        if names.len() > usize::from(u16::MAX) {
            return Err("the catalogue holds too many permissions".into());
        }
        Ok(Self { resources, names })
    }

    /// The level of a grantable permission (exact or `resource:*`), or an error naming it.
    pub fn grant_level(&self, permission: &str) -> Result<Level, Error> {
        let unknown =
            || Error::invalid("permissions", format!("unknown permission {permission:?}"));
        let (resource, action) = permission.split_once(':').ok_or_else(unknown)?;
        let (level, actions) = self.resources.get(resource).ok_or_else(unknown)?;
        if action == "*" || actions.iter().any(|a| a == action) {
            Ok(*level)
        } else {
            Err(unknown())
        }
    }

    /// The level and index of an exact permission a Check asks for; `None`
    /// if unknown or a wildcard.
    pub fn check_level(&self, permission: &str) -> Option<(Level, u16)> {
        let (resource, _) = split_exact(permission)?;
        let (level, _) = self.resources.get(resource)?;
        let index = self
            .names
            .binary_search_by(|name| name.as_str().cmp(permission))
            .ok()?;
        Some((*level, u16::try_from(index).ok()?))
    }

    /// The exact permission at `index` (see [`Catalogue::check_level`]).
    pub fn name(&self, index: u16) -> Option<&str> {
        self.names.get(usize::from(index)).map(String::as_str)
    }

    /// Every exact permission, sorted: for documentation and errors.
    pub fn all(&self) -> &[String] {
        &self.names
    }
}

fn split_exact(permission: &str) -> Option<(&str, &str)> {
    let (resource, action) = permission.split_once(':')?;
    let word = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    };
    (word(resource) && word(action)).then_some((resource, action))
}

/// Validates the permissions asked for a new token, each of which must be at
/// `required_level` when one is given, and returns them sorted and without
/// duplicates.
pub fn validate_grants(
    catalogue: &Catalogue,
    requested: &[String],
    required_level: Option<Level>,
) -> Result<Vec<String>, Error> {
    if requested.is_empty() {
        return Err(Error::invalid(
            "permissions",
            "at least one permission is required",
        ));
    }
    if requested.len() > MAX_PERMISSIONS {
        return Err(Error::invalid(
            "permissions",
            format!("at most {MAX_PERMISSIONS} permissions are allowed"),
        ));
    }
    let mut granted = Vec::with_capacity(requested.len());
    for permission in requested {
        if permission.len() > MAX_PERMISSION_BYTES {
            return Err(Error::invalid(
                "permissions",
                format!("a permission is longer than {MAX_PERMISSION_BYTES} bytes"),
            ));
        }
        let level = catalogue.grant_level(permission)?;
        if let Some(required) = required_level
            && level != required
        {
            return Err(Error::invalid(
                "permissions",
                format!(
                    "{permission:?} is {} and cannot be granted to a {} token",
                    level.describe(),
                    required.describe()
                ),
            ));
        }
        granted.push(permission.clone());
    }
    granted.sort();
    granted.dedup();
    Ok(granted)
}

/// Whether `held` (exact permissions or `resource:*`) grants the exact `wanted`.
/// Allocation-free: runs on every Check.
pub fn grants(held: &[String], wanted: &str) -> bool {
    held.iter().any(|p| {
        p == wanted
            || p.strip_suffix('*').is_some_and(|resource_colon| {
                resource_colon.ends_with(':') && wanted.starts_with(resource_colon)
            })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn default_catalogue_is_well_formed() {
        let catalogue = Catalogue::new(
            DEFAULT_ORGANIZATION_PERMISSIONS,
            DEFAULT_WORKSPACE_PERMISSIONS,
        )
        .unwrap();
        assert_eq!(
            catalogue.all().len(),
            DEFAULT_ORGANIZATION_PERMISSIONS.len() + DEFAULT_WORKSPACE_PERMISSIONS.len()
        );
        assert_eq!(Catalogue::default().all(), catalogue.all());
    }

    #[test]
    fn a_resource_lives_at_one_level() {
        assert!(Catalogue::new(&["a:read"], &["a:write"]).is_err());
        assert!(Catalogue::new(&["A:read"], &[] as &[&str]).is_err());
        assert!(Catalogue::new(&["a:*"], &[] as &[&str]).is_err());
    }

    #[test]
    fn wildcards_grant_every_action_of_one_resource_only() {
        let held = strings(&["transformations:*", "scim:read"]);
        assert!(grants(&held, "transformations:write"));
        assert!(grants(&held, "scim:read"));
        assert!(!grants(&held, "scim:write"));
        assert!(!grants(&held, "transformations_extra:read"));
        assert!(!grants(&strings(&["*"]), "scim:read"));
    }

    #[test]
    fn grants_are_validated_against_catalogue_and_level() {
        let catalogue = Catalogue::default();
        let ok = validate_grants(
            &catalogue,
            &strings(&[
                "transformations:write",
                "data_catalog:*",
                "transformations:write",
            ]),
            Some(Level::Workspace),
        )
        .unwrap();
        assert_eq!(ok, strings(&["data_catalog:*", "transformations:write"]));

        let unknown = validate_grants(&catalogue, &strings(&["transformations:delete"]), None);
        assert!(
            unknown
                .unwrap_err()
                .to_string()
                .contains("transformations:delete")
        );

        let wrong_level = validate_grants(
            &catalogue,
            &strings(&["scim:write"]),
            Some(Level::Workspace),
        );
        assert!(
            wrong_level
                .unwrap_err()
                .to_string()
                .contains("organization-level")
        );

        assert!(validate_grants(&catalogue, &[], None).is_err());
        let too_many: Vec<String> = (0..=MAX_PERMISSIONS)
            .map(|_| "scim:read".to_owned())
            .collect();
        assert!(validate_grants(&catalogue, &too_many, None).is_err());
    }

    #[test]
    fn check_levels_know_only_exact_permissions() {
        let catalogue = Catalogue::default();
        let (level, index) = catalogue.check_level("scim:read").unwrap();
        assert_eq!(level, Level::Organization);
        assert_eq!(catalogue.name(index), Some("scim:read"));
        assert_eq!(
            catalogue.check_level("test_api:run").unwrap().0,
            Level::Workspace
        );
        assert_eq!(catalogue.check_level("test_api:*"), None);
        assert_eq!(catalogue.check_level("nope:read"), None);
    }
}
