//! Authentication of management calls: credentials in, a verified
//! [`Caller`] out, or a refusal that is audited. A control-plane credential
//! is recognised by its SHA-256, compared in constant time; anything else
//! must be a live organization-level service token holding the method's
//! permission.

use std::sync::Arc;

use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq;

use super::{authority::TokenAuthority, error::Error, refusals::Refusal};
use crate::domain::{
    caller::{Caller, Credentials, Method, Principal, validate_actor},
    ids::{TokenId, require_id},
    permissions::grants,
    time::Timestamp,
    token::{Reason, TokenKind, liveness},
};

impl TokenAuthority {
    /// Verifies a management call's credentials. A refusal is audited.
    /// `org_hint` and `token_hint` say whose audit log a refusal belongs in.
    pub async fn authenticate(
        &self,
        credentials: Credentials,
        method: Method,
        org_hint: &str,
        token_hint: Option<TokenId>,
    ) -> Result<Caller, Error> {
        // The hint comes straight from the request, before any validation:
        // only a well-formed id may reach the audit log or the logs.
        let org_hint = if require_id("org_id", org_hint).is_ok() {
            org_hint
        } else {
            ""
        };
        let credentials = &credentials;
        let refuse = |detail: String| async move {
            self.refuse_anonymous(credentials, method, org_hint, token_hint, detail)
                .await
        };
        let bearer = match &credentials.bearer {
            None => return Err(refuse("no credential".into()).await),
            Some(Err(why)) => return Err(refuse(why.clone()).await),
            Some(Ok(bearer)) => bearer.as_str(),
        };
        let caller = |principal| Caller {
            principal,
            peer: credentials.peer,
            request_id: credentials.request_id.clone(),
        };
        if let Some(name) = self.control_plane_credential(bearer) {
            let actor = match &credentials.actor {
                None => None,
                Some(claim) => Some(validate_actor(claim)?),
            };
            return Ok(caller(Principal::ControlPlane {
                credential: name.to_owned(),
                actor,
            }));
        }
        let now = Timestamp::now();
        let Some((token, digest)) = self.find(bearer).await? else {
            return Err(refuse("unknown credential".into()).await);
        };
        let Some(secret) = token.record.secret_matching(&digest) else {
            return Err(refuse("unknown credential".into()).await);
        };
        match liveness(&token.record, secret, now) {
            Some(Reason::Revoked) => return Err(refuse("the token is revoked".into()).await),
            Some(_) => return Err(refuse("the token has expired".into()).await),
            None => {}
        }
        let principal = Principal::ServiceToken(Arc::new(token.record.clone()));
        let needed = method.service_token_permission();
        let record = &token.record;
        let refusal = if credentials.actor.is_some() {
            Some("only the control plane may assert an actor".to_owned())
        } else if record.kind != TokenKind::Service
            || !record.workspace_id.is_empty()
            || !grants(&record.permissions, needed)
        {
            Some(format!(
                "{} needs an organization-level service token holding {needed}",
                method.name()
            ))
        } else {
            None
        };
        let caller = caller(principal);
        match refusal {
            Some(detail) => {
                let org = if org_hint.is_empty() {
                    record.org_id.as_str()
                } else {
                    org_hint
                };
                let refusal = Refusal {
                    targets: token_hint.into_iter().collect(),
                    ..Refusal::by(&caller, method, org, "", detail)
                };
                Err(self.refuse(refusal).await)
            }
            None => Ok(caller),
        }
    }

    /// The name of the control-plane credential `bearer` is, compared in
    /// constant time against every configured hash.
    fn control_plane_credential(&self, bearer: &str) -> Option<&str> {
        let presented: [u8; 32] = Sha256::digest(bearer.as_bytes()).into();
        let mut found = None;
        for credential in &self.policy.control_plane {
            if bool::from(credential.sha256.ct_eq(&presented)) {
                found = Some(credential.name.as_str());
            }
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        domain::{Error as Rule, audit::AuditOutcome},
        service::fixture::{CONTROL_PLANE, credentials, fixture},
    };

    fn unauthenticated(result: Result<Caller, Error>) -> String {
        match result {
            Err(Error::Domain(Rule::Unauthenticated(why))) => why,
            other => panic!("expected Unauthenticated, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_call_without_a_credential_is_refused_and_audited_in_the_named_org() {
        let f = fixture();
        let result = f
            .authority
            .authenticate(credentials(None), Method::ListTokens, "org-1", None)
            .await;
        assert_eq!(unauthenticated(result), "unauthenticated: no credential");
        let events = f.audit("org-1").await;
        assert_eq!(events.len(), 1, "{events:?}");
        assert_eq!(events[0].outcome, AuditOutcome::Unauthenticated);
        assert_eq!(events[0].method, Method::ListTokens);
        assert_eq!(events[0].request_id, "req-1");
    }

    #[tokio::test]
    async fn a_malformed_org_hint_does_not_reach_the_audit_log() {
        let f = fixture();
        let result = f
            .authority
            .authenticate(credentials(None), Method::ListTokens, "org 1\n", None)
            .await;
        unauthenticated(result);
        assert!(f.audit("org 1\n").await.is_empty());
    }

    #[tokio::test]
    async fn the_control_plane_is_recognised_by_its_credential_only() {
        let f = fixture();
        let caller = f
            .authority
            .authenticate(
                credentials(Some(CONTROL_PLANE)),
                Method::RevokeAll,
                "",
                None,
            )
            .await
            .unwrap();
        assert!(matches!(
            caller.principal,
            Principal::ControlPlane { ref credential, actor: None } if credential == "cp"
        ));
        let almost = format!("{CONTROL_PLANE}.");
        let result = f
            .authority
            .authenticate(credentials(Some(&almost)), Method::RevokeAll, "", None)
            .await;
        assert_eq!(
            unauthenticated(result),
            "unauthenticated: unknown credential"
        );
    }

    #[tokio::test]
    async fn an_org_level_service_token_with_the_permission_is_a_caller() {
        let f = fixture();
        let (id, secret) = f.issue("org-1", "", &["tokens:manage"]).await;
        let caller = f
            .authority
            .authenticate(
                credentials(Some(&secret)),
                Method::ListTokens,
                "org-1",
                None,
            )
            .await
            .unwrap();
        match caller.principal {
            Principal::ServiceToken(record) => assert_eq!(record.id, id),
            other => panic!("expected a service token, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_workspace_token_may_not_manage_and_the_refusal_is_audited() {
        let f = fixture();
        let (_, secret) = f.issue("org-1", "ws-1", &["test_api:run"]).await;
        let before = f.audit("org-1").await.len();
        let result = f
            .authority
            .authenticate(credentials(Some(&secret)), Method::ListTokens, "", None)
            .await;
        match result {
            Err(Error::Domain(Rule::PermissionDenied(why))) => assert!(
                why.contains("needs an organization-level service token holding tokens:manage"),
                "{why}"
            ),
            other => panic!("expected PermissionDenied, got {other:?}"),
        }
        let events = f.audit("org-1").await;
        assert_eq!(events.len(), before + 1);
        // Not events[0]: the issue and the refusal may share a millisecond,
        // and event ids order only by time.
        let refusals: Vec<_> = events
            .iter()
            .filter(|e| e.outcome == AuditOutcome::PermissionDenied)
            .collect();
        assert_eq!(refusals.len(), 1, "{events:?}");
        assert_eq!(refusals[0].method, Method::ListTokens);
    }

    #[tokio::test]
    async fn a_revoked_token_is_refused_as_revoked() {
        let f = fixture();
        let (id, secret) = f.issue("org-1", "", &["tokens:manage"]).await;
        f.authority
            .revoke(&crate::service::fixture::admin("org-1"), id)
            .await
            .unwrap();
        let result = f
            .authority
            .authenticate(
                credentials(Some(&secret)),
                Method::ListTokens,
                "org-1",
                None,
            )
            .await;
        assert_eq!(
            unauthenticated(result),
            "unauthenticated: the token is revoked"
        );
    }
}
