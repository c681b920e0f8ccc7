//! Explained denials: what a denied Check lacked, told in the terms the
//! request itself named (the permission it asked for, the organization and
//! workspace it acts in), so that a person reading a 403 knows what to ask
//! for, as GitHub's `X-Accepted-GitHub-Permissions` does.
//!
//! What the explanation may say is fixed here, once, for every face (native
//! Check, the mesh's header and JSON body): the permission the request asked
//! for and did not get, and the scope the request asked for. Never the
//! token's other permissions or its own scope beyond what the response's
//! identity fields already carry: whoever holds a secret can ask Check about
//! any permission, and must learn nothing more than yes or no for each.
//!
//! Allowed Checks pay nothing: both functions answer `None` without
//! allocating for [`Reason::Ok`].

use super::token::{CheckQuery, Reason};

/// The permission a denied Check asked for and the token does not hold;
/// `None` for any other outcome (the permission is not what was missing).
/// `asked` is the permission the request asked for.
pub fn required_permission(reason: Reason, asked: &str) -> Option<&str> {
    match reason {
        Reason::InsufficientPermission | Reason::RoleInsufficient => Some(asked),
        Reason::Ok
        | Reason::Malformed
        | Reason::NotFound
        | Reason::Revoked
        | Reason::Expired
        | Reason::WrongScope => None,
    }
}

/// A sentence for the caller saying what was missing, built only on a deny.
/// Names only what `query` named; never the secret.
pub fn denial_detail(reason: Reason, query: &CheckQuery<'_>) -> Option<String> {
    let detail = match reason {
        Reason::Ok => return None,
        Reason::Malformed => {
            "the token is not one of ours: wrong prefix, length, alphabet or checksum".to_owned()
        }
        Reason::NotFound => "no such token".to_owned(),
        Reason::Revoked => {
            "the token (or this secret of it, replaced by rotation) is revoked".to_owned()
        }
        Reason::Expired => "the token has expired".to_owned(),
        Reason::WrongScope if query.workspace_id.is_empty() => {
            format!("the token is not valid in organization {:?}", query.org_id)
        }
        Reason::WrongScope => format!(
            "the token is not valid in workspace {:?} of organization {:?}",
            query.workspace_id, query.org_id
        ),
        Reason::InsufficientPermission => {
            format!("the token does not hold {:?}", query.permission)
        }
        // Said the same way whether the member's role is too low or, with
        // `[membership] required`, the member is unknown: the holder learns
        // that the role is what is missing, nothing more about the member.
        Reason::RoleInsufficient => format!(
            "the token's member's current role does not allow {:?}",
            query.permission
        ),
    };
    Some(detail)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::permissions::Level;

    fn query<'a>(permission: &'a str, workspace: &'a str) -> CheckQuery<'a> {
        CheckQuery {
            permission,
            permission_index: 0,
            level: Level::Workspace,
            org_id: "org-1",
            workspace_id: workspace,
        }
    }

    #[test]
    fn an_allowed_check_has_nothing_to_explain() {
        let q = query("test_api:run", "ws-1");
        assert_eq!(required_permission(Reason::Ok, q.permission), None);
        assert_eq!(denial_detail(Reason::Ok, &q), None);
    }

    #[test]
    fn only_a_missing_permission_is_named_as_required() {
        let q = query("test_api:run", "ws-1");
        for reason in [Reason::InsufficientPermission, Reason::RoleInsufficient] {
            assert_eq!(
                required_permission(reason, q.permission),
                Some("test_api:run"),
                "{reason:?}"
            );
        }
        for reason in [
            Reason::Malformed,
            Reason::NotFound,
            Reason::Revoked,
            Reason::Expired,
            Reason::WrongScope,
        ] {
            assert_eq!(
                required_permission(reason, q.permission),
                None,
                "{reason:?}"
            );
            assert!(denial_detail(reason, &q).is_some(), "{reason:?}");
        }
    }

    #[test]
    fn details_name_only_what_the_request_named() {
        assert_eq!(
            denial_detail(
                Reason::InsufficientPermission,
                &query("test_api:run", "ws-1")
            ),
            Some("the token does not hold \"test_api:run\"".to_owned())
        );
        assert_eq!(
            denial_detail(Reason::WrongScope, &query("test_api:run", "ws-2")),
            Some("the token is not valid in workspace \"ws-2\" of organization \"org-1\"".into())
        );
        assert_eq!(
            denial_detail(Reason::WrongScope, &query("scim:read", "")),
            Some("the token is not valid in organization \"org-1\"".into())
        );
        assert_eq!(
            denial_detail(Reason::RoleInsufficient, &query("test_api:run", "ws-1")),
            Some("the token's member's current role does not allow \"test_api:run\"".into())
        );
    }
}
