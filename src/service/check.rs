//! Check: may this secret do this, here, now? A deny is a decision, not an
//! error; only a store failure on a cache miss is an error. Every decision
//! is counted; one on a token that was found is also noted for usage (a
//! malformed or unknown secret has no token to note it on); the use of a
//! secret retired by rotation is audited off the Check path.

use std::{net::IpAddr, sync::Arc};

use super::{
    authority::TokenAuthority, cache::CachedToken, error::Error, recorder::AddressNoted,
    refusals::append_refusal,
};
use crate::domain::{
    audit::{AuditEvent, AuditOutcome, Origin},
    caller::{ActorRef, Method},
    ids::{self, EventId},
    member::role_allows,
    refusals::Payer,
    secret,
    time::Timestamp,
    token::{CheckQuery, Reason, TokenRecord, evaluate, liveness},
};

/// A Check's outcome: the reason, and the token when one was found.
#[derive(Debug)]
pub struct Decision {
    pub reason: Reason,
    pub token: Option<Arc<CachedToken>>,
}

impl Decision {
    pub fn allowed(&self) -> bool {
        self.reason == Reason::Ok
    }

    fn without_token(reason: Reason) -> Self {
        Self {
            reason,
            token: None,
        }
    }
}

/// Where a Check came from, for the audit events a Check can cause.
#[derive(Clone, Copy, Debug, Default)]
pub struct CheckOrigin<'a> {
    /// The connection's address, and on the mesh path the client's address
    /// as Envoy reported it.
    pub origin: Origin,
    /// A request id that passed `ids::is_request_id`.
    pub request_id: Option<&'a str>,
    /// The client the Check was made for, kept among the token's recent
    /// client addresses: Envoy's source on the mesh path, the caller's
    /// `client_address` on the native one.
    pub client: Option<IpAddr>,
}
impl TokenAuthority {
    /// Why `presented` cannot be used for anything (malformed, unknown,
    /// revoked, expired), or `None` when it is live. For callers that must
    /// tell a bad credential from a bad request before they can form a query.
    pub async fn unusable(&self, presented: &str) -> Result<Option<Reason>, Error> {
        if secret::parse(presented).is_none() {
            return Ok(Some(Reason::Malformed));
        }
        let Some((token, digest)) = self.find_well_formed(presented).await? else {
            return Ok(Some(Reason::NotFound));
        };
        let Some(secret) = token.record.secret_matching(&digest) else {
            return Ok(Some(Reason::NotFound));
        };
        Ok(liveness(&token.record, secret, Timestamp::now()))
    }

    /// Decides whether `presented` may do `query`. A deny is a decision, not
    /// an error; only a store failure on a cache miss is an error.
    pub async fn check(
        &self,
        presented: &str,
        query: &CheckQuery<'_>,
        origin: &CheckOrigin<'_>,
    ) -> Result<Decision, Error> {
        // Every decision is counted; one in eight is timed, which keeps the
        // latency histogram honest at a fraction of its cost (two clock
        // reads and a histogram update are a fifth of a cache hit).
        let timed = self.metrics.sample_check_latency();
        let started = timed.then(std::time::Instant::now);
        let decision = self.decide(presented, query, origin).await?;
        self.metrics
            .record_check(decision.reason, started.map(|s| s.elapsed().as_secs_f64()));
        Ok(decision)
    }

    async fn decide(
        &self,
        presented: &str,
        query: &CheckQuery<'_>,
        origin: &CheckOrigin<'_>,
    ) -> Result<Decision, Error> {
        if secret::parse(presented).is_none() {
            return Ok(Decision::without_token(Reason::Malformed));
        }
        let Some((token, digest)) = self.find_well_formed(presented).await? else {
            return Ok(Decision::without_token(Reason::NotFound));
        };
        let Some(secret) = token.record.secret_matching(&digest) else {
            return Ok(Decision::without_token(Reason::NotFound));
        };
        // Read after any wait for the store, so expiry is judged at answer time.
        let now = Timestamp::now();
        let mut reason = evaluate(&token.record, secret, query, now);
        // What the token holds, narrowed by what its member's role allows now.
        if reason == Reason::Ok
            && !role_allows(
                token.member,
                query.permission,
                &self.policy.roles,
                self.policy.membership,
            )
        {
            reason = Reason::RoleInsufficient;
        }
        if reason == Reason::Revoked
            && token.record.revoked_at.is_none()
            && secret.retired_at.is_some_and(|at| at <= now)
        {
            self.report_retired_secret(&token.record, now, origin);
        }
        let noted =
            self.recorder
                .note_check(&token, query.permission_index, reason, now, origin.client);
        if noted == AddressNoted::Dropped {
            self.metrics.record_client_address_dropped();
        }
        Ok(Decision {
            reason,
            token: Some(token),
        })
    }

    /// Audits (and logs) the use of a secret whose rotation grace period
    /// has ended, off the Check path, within the budget of the token's
    /// organization for retired secrets: alike uses in a minute are one
    /// event (and one log line) plus one follow-up with their count.
    fn report_retired_secret(
        &self,
        record: &TokenRecord,
        now: Timestamp,
        origin: &CheckOrigin<'_>,
    ) {
        let Ok(id) = EventId::generate(now) else {
            return;
        };
        let mut event = AuditEvent {
            org_id: record.org_id.clone(),
            workspace_id: record.workspace_id.clone(),
            actor: ActorRef {
                token_id: record.id.to_string(),
                ..ActorRef::default()
            },
            target_token_ids: vec![record.id],
            kind: Some(record.kind),
            ..AuditEvent::refusal(
                id,
                now,
                Method::Check,
                AuditOutcome::RetiredSecretPresented,
                "a secret replaced by rotation was presented after its grace period",
                &origin.origin,
                // Check is not given an id on its path; its audit events are.
                &origin
                    .request_id
                    .map_or_else(ids::new_request_id, str::to_owned),
            )
        };
        if self
            .recorder
            .admit_refusal(&mut event, &Payer::RetiredSecrets)
        {
            let store = Arc::clone(&self.store);
            tokio::spawn(async move { append_refusal(store.as_ref(), &event).await });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        domain::{
            secret::Secret,
            token::{TokenKind, validate_check_query},
        },
        service::fixture::{admin, fixture},
    };

    async fn reason(
        authority: &TokenAuthority,
        presented: &str,
        permission: &str,
        workspace: &str,
    ) -> Reason {
        let query =
            validate_check_query(authority.catalogue(), permission, "org-1", workspace).unwrap();
        let origin = CheckOrigin::default();
        authority
            .check(presented, &query, &origin)
            .await
            .unwrap()
            .reason
    }

    #[tokio::test]
    async fn check_decides_each_reason() {
        let f = fixture();
        let a = &f.authority;
        let (id, secret) = f.issue("org-1", "ws-1", &["test_api:run"]).await;
        assert_eq!(reason(a, &secret, "test_api:run", "ws-1").await, Reason::Ok);
        assert_eq!(
            reason(a, &secret, "test_api:run", "ws-2").await,
            Reason::WrongScope
        );
        assert_eq!(
            reason(a, &secret, "data_catalog:read", "ws-1").await,
            Reason::InsufficientPermission
        );
        assert_eq!(
            reason(a, "not a token", "test_api:run", "ws-1").await,
            Reason::Malformed
        );
        let stranger = Secret::generate(TokenKind::Service).unwrap();
        assert_eq!(
            reason(a, stranger.expose(), "test_api:run", "ws-1").await,
            Reason::NotFound
        );
        // Revocation is seen at once, although the token was cached as live.
        a.revoke(&admin("org-1"), id).await.unwrap();
        assert_eq!(
            reason(a, &secret, "test_api:run", "ws-1").await,
            Reason::Revoked
        );
    }

    #[tokio::test]
    async fn an_allowed_check_names_the_token_and_a_denied_one_does_not_hide_it() {
        let f = fixture();
        let (id, secret) = f.issue("org-1", "ws-1", &["test_api:run"]).await;
        let query =
            validate_check_query(f.authority.catalogue(), "test_api:run", "org-1", "ws-2").unwrap();
        let decision = f
            .authority
            .check(&secret, &query, &CheckOrigin::default())
            .await
            .unwrap();
        assert!(!decision.allowed());
        assert_eq!(decision.token.map(|t| t.record.id), Some(id));
    }

    #[tokio::test]
    async fn unusable_tells_a_bad_credential_from_a_live_one() {
        let f = fixture();
        let (id, secret) = f.issue("org-1", "ws-1", &["test_api:run"]).await;
        assert_eq!(f.authority.unusable(&secret).await.unwrap(), None);
        assert_eq!(
            f.authority.unusable("garbage").await.unwrap(),
            Some(Reason::Malformed)
        );
        let stranger = Secret::generate(TokenKind::Service).unwrap();
        assert_eq!(
            f.authority.unusable(stranger.expose()).await.unwrap(),
            Some(Reason::NotFound)
        );
        f.authority.revoke(&admin("org-1"), id).await.unwrap();
        assert_eq!(
            f.authority.unusable(&secret).await.unwrap(),
            Some(Reason::Revoked)
        );
    }
}
