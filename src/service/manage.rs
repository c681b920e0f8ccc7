//! Managing tokens: issue, read, list, revoke, revoke in bulk and rotate,
//! each authorized by `domain::authz` and audited. A change that takes
//! secrets out of service runs through [`TokenAuthority::take_out_of_service`],
//! so that it completes, is forgotten by the cache, and is durable before
//! the caller hears of it.

use std::{sync::Arc, time::Duration};

use super::{authority::TokenAuthority, error::Error};
use crate::{
    domain::{
        audit::{AuditAction, AuditEvent},
        authz,
        caller::{Caller, Method, Principal},
        changes::revoke_all_takes,
        ids::{EventId, TokenId},
        member::{MemberKey, actor_as_stored},
        pagination,
        query::{TokenQuery, list_fingerprint},
        secret::{Digest, Secret},
        time::{DurationText, Timestamp},
        token::{NewToken, StoredSecret, TokenKind, TokenRecord, TokenView},
    },
    store::{
        InsertOutcome, MemberPrecondition, PageRequest, REVOKE_ALL_EXPIRED_MARGIN, Revocation,
        RevokedAll, RotateOutcome, Rotation, StoreError,
    },
};

/// How long a secret replaced by rotation is still recognised after its
/// grace period (so that its reuse is reported as such and audited).
const RETIRED_SECRET_MEMORY: Duration = Duration::from_secs(30 * 24 * 3600);

/// How many times an issue is judged again when its acting member's record
/// changed between the judgement and the insert, before it gives up
/// (ABORTED): each retry needs another member change of that same user.
const MEMBER_RACE_ATTEMPTS: u32 = 3;

impl TokenAuthority {
    /// Runs a change to `org`'s tokens that takes secrets out of service so
    /// that it cannot be cut short: it runs in its own task (a cancelled RPC
    /// does not stop it), forgets the affected digests as soon as the change
    /// is applied (before the flush, so a failed flush cannot leave them
    /// cached as live), and returns once the change is durable. It is
    /// registered with the cache meanwhile (see `TokenCache::settled`).
    /// `change` gives the digests it took out of service even when it fails
    /// (a RevokeAll may fail after some of its transactions).
    pub(super) async fn take_out_of_service<T: Send + 'static>(
        &self,
        org: &str,
        change: impl Future<Output = (Result<T, StoreError>, Vec<Digest>)> + Send + 'static,
    ) -> Result<T, Error> {
        let cache = Arc::clone(&self.cache);
        let store = Arc::clone(&self.store);
        let pending = cache.begin_change(org);
        tokio::spawn(async move {
            let (value, digests) = change.await;
            cache.invalidate(&digests).await;
            drop(pending);
            let value = value?;
            store.durable().await?;
            Ok(value)
        })
        .await
        .map_err(|e| Error::Internal(format!("revocation task: {e}")))?
        .map_err(Error::Store)
    }
    /// Issues a token; the secret is returned here and never again.
    pub async fn issue(
        &self,
        caller: &Caller,
        mut new: NewToken,
    ) -> Result<(TokenView, Secret), Error> {
        let now = Timestamp::now();
        // A token minted by a service token lives no longer than it, by default too.
        if let Principal::ServiceToken(minter) = &caller.principal
            && new.expires_at.is_none()
        {
            new.expires_at = minter.expires_at;
        }
        let valid = new.validate(&self.policy.catalogue, &self.policy.lifetime, now)?;
        let secret = Secret::generate(valid.kind).map_err(Error::internal("OS random source"))?;
        let key = self.keyring.current();
        let digest = key.digest(secret.expose());
        let record = TokenRecord {
            id: TokenId::generate(now).map_err(Error::internal("OS random source"))?,
            kind: valid.kind,
            org_id: valid.org_id.clone(),
            workspace_id: valid.workspace_id.clone(),
            name: valid.name.clone(),
            owner_user_id: valid.owner_user_id.clone(),
            created_by: caller.actor_ref().label(),
            permissions: valid.permissions.clone(),
            created_at: now,
            expires_at: valid.expires_at,
            revoked_at: None,
            secrets: vec![StoredSecret {
                key_id: key.id(),
                digest,
                hint: secret.hint(),
                retired_at: None,
            }],
        };
        let event_id = EventId::generate(now).map_err(Error::internal("OS random source"))?;
        let event = AuditEvent::change(
            event_id,
            now,
            caller,
            Method::IssueToken,
            AuditAction::Issued,
            Some(&record),
        );
        // Authorized against the acting member's stored record, inserted
        // only if that record is unchanged when the insert commits: a
        // demotion or removal acknowledged meanwhile makes it judge again.
        let mut attempts = 0;
        loop {
            let (as_stored, member) = self.acting_member_with_record(caller).await?;
            let verdict = match as_stored {
                Ok(principal) => authz::issue(&principal, &valid, &self.policy.roles),
                Err(why) => authz::Verdict::Deny(why),
            };
            self.authorize_org(
                caller,
                Method::IssueToken,
                &valid.org_id,
                &valid.workspace_id,
                verdict,
            )
            .await?;
            match self
                .store
                .insert_token(&record, &self.policy.quotas, &member, &event)
                .await?
            {
                InsertOutcome::Inserted => break,
                InsertOutcome::QuotaReached(reached) => {
                    return Err(Error::resource_exhausted(reached.to_string()));
                }
                InsertOutcome::MemberChanged if attempts < MEMBER_RACE_ATTEMPTS => attempts += 1,
                InsertOutcome::MemberChanged => {
                    return Err(Error::Domain(crate::domain::Error::Aborted(
                        "the acting member's role kept changing while the token was issued; \
                         nothing was issued, try again"
                            .into(),
                    )));
                }
            }
        }
        self.store.durable().await?;
        // A negative entry for a digest nobody could have known is all but
        // impossible; dropping it costs nothing and removes the question.
        self.cache.forget_unknown(&digest);
        tracing::info!(
            token_id = %record.id, kind = record.kind.name(), org_id = %record.org_id,
            workspace_id = %record.workspace_id, actor = %record.created_by,
            peer = caller.peer.map(tracing::field::display), request_id = %caller.request_id, "token issued"
        );
        Ok((self.merge_last_used(record, None), secret))
    }

    /// The caller, with the role of the member the control plane acts for
    /// narrowed to the one the service holds (`actor_as_stored`); the
    /// caller as it is when it names no member.
    pub(super) async fn acting_member_as_stored(
        &self,
        caller: &Caller,
    ) -> Result<Result<Principal, String>, Error> {
        Ok(self.acting_member_with_record(caller).await?.0)
    }

    /// [`Self::acting_member_as_stored`], and the member record it was
    /// judged by, as a condition for a write that depends on it.
    async fn acting_member_with_record(
        &self,
        caller: &Caller,
    ) -> Result<(Result<Principal, String>, MemberPrecondition), Error> {
        let Principal::ControlPlane {
            credential,
            actor: Some(actor),
        } = &caller.principal
        else {
            return Ok((Ok(caller.principal.clone()), MemberPrecondition::None));
        };
        // The actor's ids were validated with the credentials.
        let key = MemberKey::new(&actor.org_id, &actor.user_id)?;
        let stored = self.store.member(&key).await?;
        let principal =
            actor_as_stored(actor, stored.as_ref(), self.policy.membership).map(|actor| {
                Principal::ControlPlane {
                    credential: credential.clone(),
                    actor: Some(actor),
                }
            });
        Ok((
            principal,
            MemberPrecondition::Unchanged {
                key,
                as_read: stored,
            },
        ))
    }

    /// `rule`'s verdict on the caller as the service knows them
    /// (`acting_member_as_stored`): a demoted ADMIN whose dashboard session
    /// still asserts ADMIN is judged as what they are now, by every
    /// management call, not only by those that create tokens.
    pub(super) async fn verdict_as_stored(
        &self,
        caller: &Caller,
        rule: impl FnOnce(&Principal) -> authz::Verdict,
    ) -> Result<authz::Verdict, Error> {
        Ok(match self.acting_member_as_stored(caller).await? {
            Ok(principal) => rule(&principal),
            Err(why) => authz::Verdict::Deny(why),
        })
    }

    pub async fn get(&self, caller: &Caller, id: TokenId) -> Result<TokenView, Error> {
        let record = self.existing(id).await?;
        let verdict = self
            .verdict_as_stored(caller, |p| authz::manage(p, &record))
            .await?;
        self.authorize_token(caller, Method::GetToken, &record, verdict)
            .await?;
        self.view(record).await
    }

    /// One page of tokens matching `query`, newest first, and the next page's token.
    pub async fn list(
        &self,
        caller: &Caller,
        mut query: TokenQuery,
        page_size: i32,
        page_token: &str,
    ) -> Result<(Vec<TokenView>, String), Error> {
        let limit = pagination::page_size(page_size)?;
        let verdict = self
            .verdict_as_stored(caller, |p| authz::list(p, &mut query))
            .await?;
        let workspace = query.workspace_id.clone().unwrap_or_default();
        self.authorize_org(
            caller,
            Method::ListTokens,
            &query.org_id,
            &workspace,
            verdict,
        )
        .await?;
        // Fingerprinted after authorization narrowed the query, so a page
        // token only ever continues the listing this caller was allowed.
        let fingerprint = list_fingerprint(&query);
        let after = pagination::decode_id(page_token, fingerprint)?;
        let page = self
            .store
            .list_tokens(&query, PageRequest { after, limit })
            .await?;
        let next = page
            .next
            .map(|last| pagination::encode(fingerprint, &last.to_bytes()))
            .unwrap_or_default();
        let mut views = Vec::with_capacity(page.tokens.len());
        let last_used = self
            .store
            .last_used(&page.tokens.iter().map(|r| r.id).collect::<Vec<_>>())
            .await?;
        for (record, stored) in page.tokens.into_iter().zip(last_used) {
            views.push(self.merge_last_used(record, stored));
        }
        Ok((views, next))
    }

    /// Revokes one token. Once this returns, no Check allows it.
    pub async fn revoke(&self, caller: &Caller, id: TokenId) -> Result<TokenView, Error> {
        let record = self.existing(id).await?;
        let verdict = self
            .verdict_as_stored(caller, |p| authz::manage(p, &record))
            .await?;
        self.authorize_token(caller, Method::RevokeToken, &record, verdict)
            .await?;
        let now = Timestamp::now();
        let event_id = EventId::generate(now).map_err(Error::internal("OS random source"))?;
        let event = AuditEvent::change(
            event_id,
            now,
            caller,
            Method::RevokeToken,
            AuditAction::Revoked,
            Some(&record),
        );
        let outcome = self.revoke_record(&record, now, event).await?;
        tracing::info!(
            token_id = %id, newly_revoked = outcome.newly_revoked, actor = %caller.actor_ref().label(),
            peer = caller.peer.map(tracing::field::display), request_id = %caller.request_id, "token revoked"
        );
        self.view(outcome.record).await
    }

    /// Revokes `record`'s token at `now` with `event`: the one way a single
    /// token is revoked (RevokeToken, a leak report, RevokeSelf), so that
    /// each is immediate (the cache forgets every secret of it before this
    /// returns), durable, and seen by other replicas through the store.
    pub(super) async fn revoke_record(
        &self,
        record: &TokenRecord,
        now: Timestamp,
        event: AuditEvent,
    ) -> Result<Revocation, Error> {
        let id = record.id;
        let store = Arc::clone(&self.store);
        self.take_out_of_service(&record.org_id, async move {
            let outcome = store.revoke_token(id, now, &event).await;
            let digests = outcome
                .iter()
                .flatten()
                .flat_map(|o| o.record.secrets.iter().map(|s| s.digest))
                .collect();
            (outcome, digests)
        })
        .await?
        .ok_or_else(|| Error::not_found(id.to_string()))
    }

    /// What a RevokeAll of `query` would revoke, changing nothing: how many
    /// tokens, and the first page of them (newest first). Validated and
    /// authorized exactly as the RevokeAll itself.
    pub async fn preview_revoke_all(
        &self,
        caller: &Caller,
        mut query: TokenQuery,
    ) -> Result<(u64, Vec<TokenView>), Error> {
        self.authorize_revoke_all(caller, &mut query).await?;
        let (count, views) = self.blast_radius(&query).await?;
        tracing::info!(
            org_id = %query.org_id, workspace_id = query.workspace_id.as_deref(),
            owner_user_id = query.owner_user_id.as_deref(), kind = query.kind.map(TokenKind::name),
            would_revoke = count, actor = %caller.actor_ref().label(),
            request_id = %caller.request_id, "RevokeAll dry run"
        );
        Ok((count, views))
    }

    /// The tokens a revoke-all of `query` would take (the one rule,
    /// `revoke_all_takes`, that the store applies to the real call): how many,
    /// and the first page of them with their last use. Shared by every dry
    /// run of a mass change, so a preview never disagrees with the change.
    pub(super) async fn blast_radius(
        &self,
        query: &TokenQuery,
    ) -> Result<(u64, Vec<TokenView>), Error> {
        let now = Timestamp::now();
        let (mut count, mut first) = (0u64, Vec::new());
        let mut after = None;
        loop {
            let page = self
                .store
                .list_tokens(
                    query,
                    PageRequest {
                        after,
                        limit: pagination::MAX_PAGE_SIZE,
                    },
                )
                .await?;
            for record in page.tokens {
                if revoke_all_takes(&record, now, REVOKE_ALL_EXPIRED_MARGIN) {
                    count += 1;
                    if first.len() < pagination::DEFAULT_PAGE_SIZE {
                        first.push(record);
                    }
                }
            }
            match page.next {
                Some(next) => after = Some(next),
                None => break,
            }
        }
        let last_used = self
            .store
            .last_used(&first.iter().map(|r| r.id).collect::<Vec<_>>())
            .await?;
        let views = first
            .into_iter()
            .zip(last_used)
            .map(|(record, stored)| self.merge_last_used(record, stored))
            .collect();
        Ok((count, views))
    }

    /// RevokeAll's rules on its query, and its authorization: the same for
    /// the call and its dry run.
    async fn authorize_revoke_all(
        &self,
        caller: &Caller,
        query: &mut TokenQuery,
    ) -> Result<(), Error> {
        // A RevokeAll is about live tokens, whoever built the query.
        query.include_revoked = false;
        if query.owner_user_id.is_none() && query.kind.is_none() {
            return Err(Error::invalid(
                "kind",
                "name owner_user_id (a user's tokens) or a kind (e.g. SERVICE for an organization's or workspace's service tokens)",
            ));
        }
        if query.owner_user_id.is_some() && query.kind == Some(TokenKind::Service) {
            return Err(Error::invalid(
                "owner_user_id",
                "service tokens have no owner; leave owner_user_id empty to revoke service tokens",
            ));
        }
        let workspace = query.workspace_id.clone().unwrap_or_default();
        let verdict = self
            .verdict_as_stored(caller, |p| authz::revoke_all(p, query))
            .await?;
        self.authorize_org(
            caller,
            Method::RevokeAll,
            &query.org_id,
            &workspace,
            verdict,
        )
        .await
    }

    /// Revokes every live token the selector names; returns how many.
    pub async fn revoke_all(&self, caller: &Caller, mut query: TokenQuery) -> Result<u64, Error> {
        self.authorize_revoke_all(caller, &mut query).await?;
        let workspace = query.workspace_id.clone().unwrap_or_default();
        let now = Timestamp::now();
        let event_id = EventId::generate(now).map_err(Error::internal("OS random source"))?;
        let mut event = AuditEvent::change(
            event_id,
            now,
            caller,
            Method::RevokeAll,
            AuditAction::RevokedAll,
            None,
        );
        event.org_id.clone_from(&query.org_id);
        event.workspace_id = workspace;
        event.kind = query.kind;
        let store = Arc::clone(&self.store);
        let bulk = query.clone();
        let revoked = self
            .take_out_of_service(&query.org_id, async move {
                let mut revoked = RevokedAll::default();
                let outcome = store.revoke_all(&bulk, now, &event, &mut revoked).await;
                (outcome.map(|()| revoked.count), revoked.digests)
            })
            .await?;
        // Tokens of the scope that a concurrent revoke took out before this
        // one read them are that revoke's to forget: wait until it has.
        self.cache.settled(&query.org_id).await;
        tracing::info!(
            org_id = %query.org_id, workspace_id = query.workspace_id.as_deref(),
            owner_user_id = query.owner_user_id.as_deref(), kind = query.kind.map(TokenKind::name),
            revoked,
            actor = %caller.actor_ref().label(), peer = caller.peer.map(tracing::field::display),
            request_id = %caller.request_id, "tokens revoked in bulk"
        );
        Ok(revoked)
    }

    /// Gives the token a new secret; the old one keeps working for `grace`.
    /// Returns the token, the new secret, and when the old one stops working.
    pub async fn rotate(
        &self,
        caller: &Caller,
        id: TokenId,
        grace: Duration,
    ) -> Result<(TokenView, Secret, Timestamp), Error> {
        let record = self.existing(id).await?;
        let verdict = self
            .verdict_as_stored(caller, |p| authz::rotate(p, &record))
            .await?;
        self.authorize_token(caller, Method::RotateToken, &record, verdict)
            .await?;
        if grace > self.policy.max_rotation_grace {
            return Err(Error::invalid(
                "grace_period",
                format!(
                    "is longer than the maximum of {}",
                    DurationText(self.policy.max_rotation_grace)
                ),
            ));
        }
        let now = Timestamp::now();
        if record.revoked_at.is_some() {
            return Err(Error::failed_precondition("the token is revoked".into()));
        }
        if record.expires_at.is_some_and(|at| at <= now) {
            return Err(Error::failed_precondition("the token has expired".into()));
        }
        let secret = Secret::generate(record.kind).map_err(Error::internal("OS random source"))?;
        let key = self.keyring.current();
        let old_expires_at = now.saturating_add(grace);
        let rotation = Rotation {
            now,
            new_secret: StoredSecret {
                key_id: key.id(),
                digest: key.digest(secret.expose()),
                hint: secret.hint(),
                retired_at: None,
            },
            old_retired_at: old_expires_at,
            forget_retired_before: Timestamp::from_micros(
                now.as_micros()
                    .saturating_sub(RETIRED_SECRET_MEMORY.as_micros() as i64),
            ),
        };
        let event_id = EventId::generate(now).map_err(Error::internal("OS random source"))?;
        let mut event = AuditEvent::change(
            event_id,
            now,
            caller,
            Method::RotateToken,
            AuditAction::Rotated,
            Some(&record),
        );
        event.detail = format!("grace period {}", DurationText(grace));
        let store = Arc::clone(&self.store);
        let outcome = self
            .take_out_of_service(&record.org_id, async move {
                let outcome = store.rotate_token(id, &rotation, &event).await;
                let digests = match &outcome {
                    Ok(RotateOutcome::Rotated { record, forgotten }) => record
                        .secrets
                        .iter()
                        .map(|s| s.digest)
                        .chain(forgotten.iter().copied())
                        .collect(),
                    _ => Vec::new(),
                };
                (outcome, digests)
            })
            .await?;
        let record = match outcome {
            RotateOutcome::Rotated { record, .. } => *record,
            RotateOutcome::NotFound => return Err(Error::not_found(id.to_string())),
            RotateOutcome::Revoked => {
                return Err(Error::failed_precondition("the token is revoked".into()));
            }
            RotateOutcome::TooManySecrets => {
                return Err(Error::failed_precondition(
                    "too many replaced secrets are still in their grace periods; \
                     rotate with a zero grace period, or wait"
                        .into(),
                ));
            }
        };
        tracing::info!(
            token_id = %id, grace = %DurationText(grace),
            actor = %caller.actor_ref().label(), peer = caller.peer.map(tracing::field::display),
            request_id = %caller.request_id, "token rotated"
        );
        Ok((self.view(record).await?, secret, old_expires_at))
    }
}
