//! Quotas: how many live tokens (neither revoked nor expired) a member, an
//! organization and a workspace may hold at once. Without them one member
//! could issue tokens without end, and every bulk revocation, listing and
//! start-up check over that organization would pay for them.
//!
//! The store counts and inserts in one atomic step (see `Store::insert_token`),
//! so that two concurrent issues can never both take the last slot; this
//! module only says which quotas a new token counts against.

use super::token::{TokenKind, TokenRecord};

/// One quota, named as in the configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Quota {
    /// Live personal tokens of one member in one organization.
    PersonalPerMember,
    /// Live service tokens of one organization, at either level.
    ServicePerOrganization,
    /// Live service tokens of one workspace.
    ServicePerWorkspace,
}

impl Quota {
    /// The configuration setting that sets it.
    pub const fn setting(self) -> &'static str {
        match self {
            Self::PersonalPerMember => "tokens.quotas.personal_per_member",
            Self::ServicePerOrganization => "tokens.quotas.service_per_organization",
            Self::ServicePerWorkspace => "tokens.quotas.service_per_workspace",
        }
    }

    /// Whose tokens it counts, for people.
    pub const fn counts(self) -> &'static str {
        match self {
            Self::PersonalPerMember => "live personal tokens per member",
            Self::ServicePerOrganization => "live service tokens per organization",
            Self::ServicePerWorkspace => "live service tokens per workspace",
        }
    }
}

/// The limits, from configuration. `None` counts nothing: only for tools and
/// tests that write records directly (the server always has every limit).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quotas {
    pub personal_per_member: Option<u32>,
    pub service_per_organization: Option<u32>,
    pub service_per_workspace: Option<u32>,
}

impl Quotas {
    /// No limit at all.
    pub const NONE: Self = Self {
        personal_per_member: None,
        service_per_organization: None,
        service_per_workspace: None,
    };

    /// The quotas `record`, a new token, counts against, each with its limit.
    /// An organization-level service token counts against its organization's
    /// quota only.
    pub fn applying_to(&self, record: &TokenRecord) -> Vec<(Quota, u32)> {
        let candidates = match record.kind {
            TokenKind::Personal => [
                (Quota::PersonalPerMember, self.personal_per_member),
                (Quota::ServicePerWorkspace, None),
            ],
            TokenKind::Service => [
                (Quota::ServicePerOrganization, self.service_per_organization),
                (
                    Quota::ServicePerWorkspace,
                    self.service_per_workspace
                        .filter(|_| !record.workspace_id.is_empty()),
                ),
            ],
        };
        candidates
            .into_iter()
            .filter_map(|(quota, limit)| limit.map(|limit| (quota, limit)))
            .collect()
    }
}

/// An issue refused because `quota`, of `limit` tokens, is full.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QuotaReached {
    pub quota: Quota,
    pub limit: u32,
}

impl std::fmt::Display for QuotaReached {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "quota {} reached: at most {} {}; revoke one first, or wait for one to expire",
            self.quota.setting(),
            self.limit,
            self.quota.counts()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::token::test_record;

    const LIMITS: Quotas = Quotas {
        personal_per_member: Some(1),
        service_per_organization: Some(2),
        service_per_workspace: Some(3),
    };

    #[test]
    fn each_kind_and_level_counts_against_its_own_quotas() {
        let mut personal = test_record(1, "org");
        personal.kind = TokenKind::Personal;
        personal.owner_user_id = "alice".into();
        assert_eq!(
            LIMITS.applying_to(&personal),
            vec![(Quota::PersonalPerMember, 1)]
        );

        let workspace_level = test_record(2, "org");
        assert_eq!(
            LIMITS.applying_to(&workspace_level),
            vec![
                (Quota::ServicePerOrganization, 2),
                (Quota::ServicePerWorkspace, 3)
            ]
        );

        let mut org_level = test_record(3, "org");
        org_level.workspace_id.clear();
        assert_eq!(
            LIMITS.applying_to(&org_level),
            vec![(Quota::ServicePerOrganization, 2)]
        );
        assert!(Quotas::NONE.applying_to(&workspace_level).is_empty());
    }

    #[test]
    fn a_refusal_names_the_setting_and_its_limit() {
        let text = QuotaReached {
            quota: Quota::ServicePerWorkspace,
            limit: 3,
        }
        .to_string();
        assert!(
            text.contains("tokens.quotas.service_per_workspace") && text.contains("at most 3"),
            "{text}"
        );
    }
}
