//! Refused calls: each is described once as a [`Refusal`] (who, what, where,
//! why), which gives both its audit event and the error the caller hears,
//! and is recorded by one function, [`TokenAuthority::refuse`], within the
//! budget of whoever pays for it (see `domain::refusals`).

use std::net::SocketAddr;

use super::{authority::TokenAuthority, error::Error};
use crate::{
    domain::{
        audit::{AuditEvent, AuditOutcome, Origin},
        authz::Verdict,
        caller::{ActorRef, Caller, Credentials, Method},
        ids::{EventId, TokenId},
        refusals::Payer,
        time::Timestamp,
        token::{TokenKind, TokenRecord},
    },
    store::Store,
};

/// One refused call, as the audit log and the caller will hear of it.
#[derive(Clone, Debug)]
pub(super) struct Refusal {
    pub time: Timestamp,
    pub method: Method,
    /// `Unauthenticated` or `PermissionDenied`.
    pub outcome: AuditOutcome,
    /// Whose audit log it belongs in.
    pub org_id: String,
    pub workspace_id: String,
    pub actor: ActorRef,
    pub targets: Vec<TokenId>,
    pub kind: Option<TokenKind>,
    /// Why; it reaches the caller and the audit log.
    pub detail: String,
    pub peer: Option<SocketAddr>,
    pub request_id: String,
    /// Whose refusal budget it is charged to.
    pub payer: Payer,
}

impl Refusal {
    /// A verified caller's call refused, in `org_id` (and `workspace_id`).
    pub(super) fn by(
        caller: &Caller,
        method: Method,
        org_id: &str,
        workspace_id: &str,
        detail: impl Into<String>,
    ) -> Self {
        Self {
            time: Timestamp::now(),
            method,
            outcome: AuditOutcome::PermissionDenied,
            org_id: org_id.to_owned(),
            workspace_id: workspace_id.to_owned(),
            actor: caller.actor_ref(),
            targets: Vec::new(),
            kind: None,
            detail: detail.into(),
            peer: caller.peer,
            request_id: caller.request_id.clone(),
            payer: Payer::of(&caller.principal),
        }
    }

    /// A verified caller's call about `token` refused, in the token's organization.
    pub(super) fn about(
        caller: &Caller,
        method: Method,
        token: &TokenRecord,
        detail: impl Into<String>,
    ) -> Self {
        Self {
            targets: vec![token.id],
            kind: Some(token.kind),
            ..Self::by(caller, method, &token.org_id, &token.workspace_id, detail)
        }
    }

    /// A call whose credentials did not verify, charged to the network it came from.
    pub(super) fn anonymous(
        credentials: &Credentials,
        method: Method,
        org_id: String,
        token_hint: Option<TokenId>,
        detail: String,
        time: Timestamp,
    ) -> Self {
        Self {
            time,
            method,
            outcome: AuditOutcome::Unauthenticated,
            org_id,
            workspace_id: String::new(),
            actor: ActorRef::default(),
            targets: token_hint.into_iter().collect(),
            kind: None,
            detail,
            peer: credentials.peer,
            request_id: credentials.request_id.clone(),
            payer: Payer::source(credentials.peer),
        }
    }

    /// Its audit event; `None` when no event id could be drawn (the OS
    /// random source failed), in which case the refusal still stands.
    pub(super) fn event(&self) -> Option<AuditEvent> {
        let id = EventId::generate(self.time).ok()?;
        let origin = Origin {
            connection: self.peer,
            reported: None,
        };
        Some(AuditEvent {
            org_id: self.org_id.clone(),
            workspace_id: self.workspace_id.clone(),
            actor: self.actor.clone(),
            target_token_ids: self.targets.clone(),
            kind: self.kind,
            ..AuditEvent::refusal(
                id,
                self.time,
                self.method,
                self.outcome,
                &self.detail,
                &origin,
                &self.request_id,
            )
        })
    }

    /// The error the caller hears.
    pub(super) fn error(&self) -> Error {
        if self.outcome == AuditOutcome::Unauthenticated {
            Error::unauthenticated(format!("unauthenticated: {}", self.detail))
        } else {
            Error::permission_denied(format!("permission denied: {}", self.detail))
        }
    }
}

/// Appends a refusal without waiting for it to be flushed: refusals must
/// never cost a disk flush each.
pub(super) async fn append_refusal(store: &dyn Store, event: &AuditEvent) {
    if let Err(error) = store.append_audit(event).await {
        tracing::error!(%error, "writing a refusal to the audit log failed");
    }
}

impl TokenAuthority {
    /// Records `refusal` if its payer's budget allows, and returns the error
    /// the caller hears. Every refused management call passes through here.
    pub(super) async fn refuse(&self, refusal: Refusal) -> Error {
        if let Some(mut event) = refusal.event()
            && self.recorder.admit_refusal(&mut event, &refusal.payer)
        {
            append_refusal(self.store.as_ref(), &event).await;
        }
        refusal.error()
    }

    /// Refuses a call whose credentials did not verify. `org_hint` and
    /// `token_hint` say whose audit log it belongs in.
    pub(super) async fn refuse_anonymous(
        &self,
        credentials: &Credentials,
        method: Method,
        org_hint: &str,
        token_hint: Option<TokenId>,
        detail: String,
    ) -> Error {
        let now = Timestamp::now();
        // The organization whose log the refusal belongs in decides its
        // budget, so it is looked up before the budget is asked; but not for
        // a caller whose budget is spent anyway: an unauthenticated flood
        // must not become a flood of store reads.
        let payer = Payer::source(credentials.peer);
        let mut org_id = org_hint.to_owned();
        if org_id.is_empty()
            && let Some(id) = token_hint
            && self.recorder.refusals().outsider_has_room(&payer, now)
            && let Ok(Some(record)) = self.store.token_by_id(id).await
        {
            org_id = record.org_id;
        }
        self.refuse(Refusal::anonymous(
            credentials,
            method,
            org_id,
            token_hint,
            detail,
            now,
        ))
        .await
    }

    /// Turns an authorization verdict about `token` into a result, auditing refusals.
    pub(super) async fn authorize_token(
        &self,
        caller: &Caller,
        method: Method,
        token: &TokenRecord,
        verdict: Verdict,
    ) -> Result<(), Error> {
        match verdict {
            Verdict::Allow => Ok(()),
            Verdict::Deny(detail) => Err(self
                .refuse(Refusal::about(caller, method, token, detail))
                .await),
            Verdict::Hide => {
                // Recorded in the token's organization, whose admins should
                // know; but handed to the recorder's next flush, so that
                // neither this answer nor the calls after it take longer
                // than for an id that exists nowhere (its existence must
                // not show in the timing either).
                let refusal = Refusal::about(
                    caller,
                    method,
                    token,
                    "the token belongs to another organization",
                );
                if let Some(event) = refusal.event() {
                    self.recorder.refusals().defer(event, refusal.payer);
                }
                Err(Error::not_found(token.id.to_string()))
            }
        }
    }

    /// Turns an authorization verdict about an organization into a result, auditing refusals.
    pub(super) async fn authorize_org(
        &self,
        caller: &Caller,
        method: Method,
        org_id: &str,
        workspace_id: &str,
        verdict: Verdict,
    ) -> Result<(), Error> {
        let detail = match verdict {
            Verdict::Allow => return Ok(()),
            Verdict::Deny(detail) => detail,
            Verdict::Hide => "not visible to this caller".to_owned(),
        };
        Err(self
            .refuse(Refusal::by(caller, method, org_id, workspace_id, detail))
            .await)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        domain::{Error as Rule, token::test_record},
        service::fixture::{admin, credentials, fixture},
    };

    #[test]
    fn a_refusal_about_a_token_is_audited_in_its_organization() {
        let caller = admin("org-1");
        let token = test_record(7, "org-2");
        let refusal = Refusal::about(&caller, Method::RevokeToken, &token, "not yours");
        let event = refusal.event().unwrap();
        assert_eq!(event.org_id, "org-2");
        assert_eq!(event.workspace_id, "ws");
        assert_eq!(event.target_token_ids, vec![token.id]);
        assert_eq!(event.kind, Some(TokenKind::Service));
        assert_eq!(event.actor, caller.actor_ref());
        assert_eq!(event.outcome, AuditOutcome::PermissionDenied);
        assert_eq!(event.method, Method::RevokeToken);
        assert_eq!(event.detail, "not yours");
        assert_eq!(event.request_id, "req-1");
        assert_eq!(refusal.payer, Payer::Org("org-1".into()));
        assert!(matches!(
            refusal.error(),
            Error::Domain(Rule::PermissionDenied(why)) if why == "permission denied: not yours"
        ));
    }

    #[test]
    fn an_anonymous_refusal_is_charged_to_the_network_it_came_from() {
        let credentials = credentials(Some("nonsense"));
        let hint = TokenId::from_bytes([3; 16]);
        let refusal = Refusal::anonymous(
            &credentials,
            Method::GetToken,
            "org-1".into(),
            Some(hint),
            "unknown credential".into(),
            Timestamp::from_micros(1_000_000),
        );
        let event = refusal.event().unwrap();
        assert_eq!(event.org_id, "org-1");
        assert_eq!(event.workspace_id, "");
        assert_eq!(event.actor, ActorRef::default());
        assert_eq!(event.target_token_ids, vec![hint]);
        assert_eq!(event.outcome, AuditOutcome::Unauthenticated);
        assert_eq!(event.time, Timestamp::from_micros(1_000_000));
        assert_eq!(refusal.payer, Payer::source(credentials.peer));
        assert!(matches!(
            refusal.error(),
            Error::Domain(Rule::Unauthenticated(why)) if why == "unauthenticated: unknown credential"
        ));
    }

    #[tokio::test]
    async fn a_denied_organization_call_is_recorded_once_and_says_why() {
        let f = fixture();
        let caller = admin("org-1");
        let verdict = Verdict::Deny("members revoke their own tokens only".into());
        let result = f
            .authority
            .authorize_org(&caller, Method::RevokeAll, "org-1", "ws-1", verdict)
            .await;
        assert!(matches!(
            result,
            Err(Error::Domain(Rule::PermissionDenied(why)))
                if why == "permission denied: members revoke their own tokens only"
        ));
        let events = f.audit("org-1").await;
        assert_eq!(events.len(), 1, "{events:?}");
        assert_eq!(events[0].workspace_id, "ws-1");
        assert_eq!(events[0].method, Method::RevokeAll);
    }

    #[tokio::test]
    async fn a_hidden_token_is_not_found_to_the_caller() {
        let f = fixture();
        let token = test_record(9, "org-2");
        let result = f
            .authority
            .authorize_token(&admin("org-1"), Method::GetToken, &token, Verdict::Hide)
            .await;
        assert!(matches!(
            result,
            Err(Error::Domain(Rule::NotFound(id))) if id == token.id.to_string()
        ));
        assert!(
            f.authority
                .authorize_org(
                    &admin("org-1"),
                    Method::GetToken,
                    "org-1",
                    "",
                    Verdict::Allow
                )
                .await
                .is_ok()
        );
    }
}
