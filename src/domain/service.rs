//! The token service: authenticate management callers, then issue, read,
//! list, rotate and revoke tokens under the rules of `authz`, with an audit
//! event for every change and every refusal; and Check, over the cache.
//! Handlers call these; they hold no logic of their own.

use std::{sync::Arc, time::Duration};

use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq;

use super::{
    Error,
    audit::{AuditAction, AuditEvent, AuditOutcome, AuditQuery, Origin},
    authz::{self, Roles, Verdict},
    caller::{ActorRef, Caller, Credentials, Method, Principal, validate_actor},
    ids::{EventId, TokenId, require_id},
    pagination,
    permissions::{Catalogue, grants},
    query::{TokenQuery, audit_fingerprint, list_fingerprint, usage_fingerprint},
    quota::Quotas,
    refusals::{Payer, RefusalLimits},
    secret::{self, Digest, Keyring, Secret},
    time::{DurationText, Timestamp},
    token::{
        CheckQuery, LifetimePolicy, NewToken, Reason, StoredSecret, TokenKind, TokenRecord,
        TokenView, evaluate, liveness,
    },
    usage::{UsageQuery, UsageRecord},
};
use crate::{
    cache::{CachedToken, Lookup, TokenCache},
    metrics::{CacheOutcome, Metrics},
    recorder::Recorder,
    store::{InsertOutcome, PageRequest, RevokedAll, RotateOutcome, Rotation, Store, StoreError},
};

/// How long a secret replaced by rotation is still recognised after its
/// grace period (so that its reuse is reported as such and audited).
const RETIRED_SECRET_MEMORY: Duration = Duration::from_secs(30 * 24 * 3600);

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
}

/// A control-plane credential as configured: a name, and the SHA-256 of the
/// credential (never the credential itself).
#[derive(Clone, Debug)]
pub struct ControlPlaneCredential {
    pub name: String,
    pub sha256: [u8; 32],
}

/// The rules the service enforces, from configuration.
#[derive(Clone, Debug)]
pub struct Policy {
    pub catalogue: Catalogue,
    pub roles: Roles,
    pub lifetime: LifetimePolicy,
    /// Longest grace period a rotation may give the old secret.
    pub max_rotation_grace: Duration,
    pub control_plane: Vec<ControlPlaneCredential>,
    /// How many refusal events are recorded (see `refusals`).
    pub refusal_limits: RefusalLimits,
    /// Most live tokens per member, organization and workspace.
    pub quotas: Quotas,
}

/// Everything the token operations need.
pub struct TokenService {
    store: Arc<dyn Store>,
    cache: Arc<TokenCache>,
    keyring: Keyring,
    policy: Policy,
    recorder: Arc<Recorder>,
    metrics: Arc<Metrics>,
}

fn store_error(error: StoreError) -> Error {
    Error::Store(error)
}

fn internal(what: &str) -> impl FnOnce(getrandom::Error) -> Error + '_ {
    move |e| Error::Internal(format!("{what}: {e}"))
}

/// Appends a refusal without waiting for it to be flushed: refusals must
/// never cost a disk flush each.
async fn append_refusal(store: &dyn Store, event: &AuditEvent) {
    if let Err(error) = store.append_audit(event).await {
        tracing::error!(%error, "writing a refusal to the audit log failed");
    }
}

/// Records a refusal if its budget allows.
async fn record_refusal(
    store: &dyn Store,
    recorder: &Recorder,
    mut event: AuditEvent,
    payer: &Payer,
) {
    if recorder.admit_refusal(&mut event, payer) {
        append_refusal(store, &event).await;
    }
}

impl TokenService {
    pub fn new(
        store: Arc<dyn Store>,
        cache: TokenCache,
        keyring: Keyring,
        policy: Policy,
        recorder: Arc<Recorder>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            store,
            cache: Arc::new(cache),
            keyring,
            policy,
            recorder,
            metrics,
        }
    }

    pub fn catalogue(&self) -> &Catalogue {
        &self.policy.catalogue
    }

    pub fn cache(&self) -> &Arc<TokenCache> {
        &self.cache
    }

    // ----- authentication and refusals -----

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
            self.refuse_anonymous(credentials, method, org_hint, token_hint, &detail)
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
                Err(self
                    .refuse(
                        &caller,
                        method,
                        org,
                        "",
                        token_hint.into_iter().collect(),
                        None,
                        &detail,
                    )
                    .await)
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

    /// The refusal event of a verified caller's call, and who pays for it.
    #[allow(clippy::too_many_arguments)]
    fn refusal_of(
        &self,
        caller: &Caller,
        method: Method,
        org_id: &str,
        workspace_id: &str,
        targets: Vec<TokenId>,
        kind: Option<TokenKind>,
        detail: &str,
    ) -> Option<(AuditEvent, Payer)> {
        let now = Timestamp::now();
        let id = EventId::generate(now).ok()?;
        let origin = Origin {
            connection: caller.peer,
            reported: None,
        };
        let event = AuditEvent {
            org_id: org_id.to_owned(),
            workspace_id: workspace_id.to_owned(),
            actor: caller.actor_ref(),
            target_token_ids: targets,
            kind,
            ..AuditEvent::refusal(
                id,
                now,
                method,
                AuditOutcome::PermissionDenied,
                detail,
                &origin,
                &caller.request_id,
            )
        };
        Some((event, Payer::of(&caller.principal)))
    }

    /// Audits and logs a refused call by a verified caller; returns its error.
    #[allow(clippy::too_many_arguments)]
    async fn refuse(
        &self,
        caller: &Caller,
        method: Method,
        org_id: &str,
        workspace_id: &str,
        targets: Vec<TokenId>,
        kind: Option<TokenKind>,
        detail: &str,
    ) -> Error {
        if let Some((event, payer)) =
            self.refusal_of(caller, method, org_id, workspace_id, targets, kind, detail)
        {
            record_refusal(self.store.as_ref(), &self.recorder, event, &payer).await;
        }
        Error::PermissionDenied(format!("permission denied: {detail}"))
    }

    /// Audits and logs a call whose credentials did not verify.
    async fn refuse_anonymous(
        &self,
        credentials: &Credentials,
        method: Method,
        org_hint: &str,
        token_hint: Option<TokenId>,
        detail: &str,
    ) -> Error {
        let now = Timestamp::now();
        if let Ok(id) = EventId::generate(now) {
            // The organization whose log the refusal belongs in decides its
            // budget, so it is looked up before the budget is asked; but
            // not for a caller whose budget is spent anyway: an
            // unauthenticated flood must not become a flood of store reads.
            let payer = Payer::source(credentials.peer);
            let mut org_id = org_hint.to_owned();
            if org_id.is_empty()
                && let Some(id) = token_hint
                && self.recorder.refusals().outsider_has_room(&payer, now)
                && let Ok(Some(record)) = self.store.token_by_id(id).await
            {
                org_id = record.org_id;
            }
            let origin = Origin {
                connection: credentials.peer,
                reported: None,
            };
            let event = AuditEvent {
                org_id,
                target_token_ids: token_hint.into_iter().collect(),
                ..AuditEvent::refusal(
                    id,
                    now,
                    method,
                    AuditOutcome::Unauthenticated,
                    detail,
                    &origin,
                    &credentials.request_id,
                )
            };
            record_refusal(self.store.as_ref(), &self.recorder, event, &payer).await;
        }
        Error::Unauthenticated(format!("unauthenticated: {detail}"))
    }

    /// Turns an authorization verdict about `token` into a result, auditing refusals.
    async fn authorize_token(
        &self,
        caller: &Caller,
        method: Method,
        token: &TokenRecord,
        verdict: Verdict,
    ) -> Result<(), Error> {
        match verdict {
            Verdict::Allow => Ok(()),
            Verdict::Deny(detail) => Err(self
                .refuse(
                    caller,
                    method,
                    &token.org_id,
                    &token.workspace_id,
                    vec![token.id],
                    Some(token.kind),
                    &detail,
                )
                .await),
            Verdict::Hide => {
                // Recorded in the token's organization, whose admins should
                // know; but handed to the recorder's next flush, so that
                // neither this answer nor the calls after it take longer
                // than for an id that exists nowhere (its existence must
                // not show in the timing either).
                if let Some((event, payer)) = self.refusal_of(
                    caller,
                    method,
                    &token.org_id,
                    &token.workspace_id,
                    vec![token.id],
                    Some(token.kind),
                    "the token belongs to another organization",
                ) {
                    self.recorder.refusals().defer(event, payer);
                }
                Err(Error::NotFound(token.id.to_string()))
            }
        }
    }

    /// Turns an authorization verdict about an organization into a result, auditing refusals.
    async fn authorize_org(
        &self,
        caller: &Caller,
        method: Method,
        org_id: &str,
        workspace_id: &str,
        verdict: Verdict,
    ) -> Result<(), Error> {
        match verdict {
            Verdict::Allow => Ok(()),
            Verdict::Deny(detail) => Err(self
                .refuse(
                    caller,
                    method,
                    org_id,
                    workspace_id,
                    Vec::new(),
                    None,
                    &detail,
                )
                .await),
            Verdict::Hide => Err(self
                .refuse(
                    caller,
                    method,
                    org_id,
                    workspace_id,
                    Vec::new(),
                    None,
                    "not visible to this caller",
                )
                .await),
        }
    }

    async fn existing(&self, id: TokenId) -> Result<TokenRecord, Error> {
        self.store
            .token_by_id(id)
            .await?
            .ok_or_else(|| Error::NotFound(id.to_string()))
    }

    /// Runs a change to `org`'s tokens that takes secrets out of service so
    /// that it cannot be cut short: it runs in its own task (a cancelled RPC
    /// does not stop it), forgets the affected digests as soon as the change
    /// is applied (before the flush, so a failed flush cannot leave them
    /// cached as live), and returns once the change is durable. It is
    /// registered with the cache meanwhile (see `TokenCache::settled`).
    /// `change` gives the digests it took out of service even when it fails
    /// (a RevokeAll may fail after some of its transactions).
    async fn take_out_of_service<T: Send + 'static>(
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
        .map_err(store_error)
    }

    // ----- management -----

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
        let verdict = authz::issue(&caller.principal, &valid, &self.policy.roles);
        self.authorize_org(
            caller,
            Method::IssueToken,
            &valid.org_id,
            &valid.workspace_id,
            verdict,
        )
        .await?;
        let secret = Secret::generate(valid.kind).map_err(internal("OS random source"))?;
        let key = self.keyring.current();
        let digest = key.digest(secret.expose());
        let record = TokenRecord {
            id: TokenId::generate(now).map_err(internal("OS random source"))?,
            kind: valid.kind,
            org_id: valid.org_id,
            workspace_id: valid.workspace_id,
            name: valid.name,
            owner_user_id: valid.owner_user_id,
            created_by: caller.actor_ref().label(),
            permissions: valid.permissions,
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
        let event_id = EventId::generate(now).map_err(internal("OS random source"))?;
        let event = AuditEvent::change(
            event_id,
            now,
            caller,
            Method::IssueToken,
            AuditAction::Issued,
            Some(&record),
        );
        let outcome = self
            .store
            .insert_token(&record, &self.policy.quotas, &event)
            .await?;
        if let InsertOutcome::QuotaReached(reached) = outcome {
            return Err(Error::ResourceExhausted(reached.to_string()));
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
        Ok((
            TokenView {
                record,
                last_used_at: None,
            },
            secret,
        ))
    }

    pub async fn get(&self, caller: &Caller, id: TokenId) -> Result<TokenView, Error> {
        let record = self.existing(id).await?;
        self.authorize_token(
            caller,
            Method::GetToken,
            &record,
            authz::manage(&caller.principal, &record),
        )
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
        let verdict = authz::list(&caller.principal, &mut query);
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
        self.authorize_token(
            caller,
            Method::RevokeToken,
            &record,
            authz::manage(&caller.principal, &record),
        )
        .await?;
        let now = Timestamp::now();
        let event_id = EventId::generate(now).map_err(internal("OS random source"))?;
        let event = AuditEvent::change(
            event_id,
            now,
            caller,
            Method::RevokeToken,
            AuditAction::Revoked,
            Some(&record),
        );
        let store = Arc::clone(&self.store);
        let outcome = self
            .take_out_of_service(&record.org_id, async move {
                let outcome = store.revoke_token(id, now, &event).await;
                let digests = outcome
                    .iter()
                    .flatten()
                    .flat_map(|o| o.record.secrets.iter().map(|s| s.digest))
                    .collect();
                (outcome, digests)
            })
            .await?
            .ok_or_else(|| Error::NotFound(id.to_string()))?;
        tracing::info!(
            token_id = %id, newly_revoked = outcome.newly_revoked, actor = %caller.actor_ref().label(),
            peer = caller.peer.map(tracing::field::display), request_id = %caller.request_id, "token revoked"
        );
        self.view(outcome.record).await
    }

    /// Revokes every live token the selector names; returns how many.
    pub async fn revoke_all(&self, caller: &Caller, mut query: TokenQuery) -> Result<u64, Error> {
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
        let verdict = authz::revoke_all(&caller.principal, &query);
        self.authorize_org(
            caller,
            Method::RevokeAll,
            &query.org_id,
            &workspace,
            verdict,
        )
        .await?;
        let now = Timestamp::now();
        let event_id = EventId::generate(now).map_err(internal("OS random source"))?;
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
        self.authorize_token(
            caller,
            Method::RotateToken,
            &record,
            authz::rotate(&caller.principal, &record),
        )
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
            return Err(Error::FailedPrecondition("the token is revoked".into()));
        }
        if record.expires_at.is_some_and(|at| at <= now) {
            return Err(Error::FailedPrecondition("the token has expired".into()));
        }
        let secret = Secret::generate(record.kind).map_err(internal("OS random source"))?;
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
        let event_id = EventId::generate(now).map_err(internal("OS random source"))?;
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
            RotateOutcome::NotFound => return Err(Error::NotFound(id.to_string())),
            RotateOutcome::Revoked => {
                return Err(Error::FailedPrecondition("the token is revoked".into()));
            }
            RotateOutcome::TooManySecrets => {
                return Err(Error::FailedPrecondition(
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

    /// Check decisions counted per token, permission, decision and minute.
    pub async fn list_usage(
        &self,
        caller: &Caller,
        query: UsageQuery,
        page_size: i32,
        page_token: &str,
    ) -> Result<(Vec<UsageRecord>, String), Error> {
        let limit = pagination::page_size(page_size)?;
        match query.token_id {
            Some(id) => {
                let record = self.existing(id).await?;
                let verdict = if record.org_id == query.org_id {
                    authz::manage(&caller.principal, &record)
                } else {
                    Verdict::Hide
                };
                self.authorize_token(caller, Method::ListTokenUsage, &record, verdict)
                    .await?;
            }
            None => {
                let verdict = authz::read_org_usage(&caller.principal, &query.org_id);
                self.authorize_org(caller, Method::ListTokenUsage, &query.org_id, "", verdict)
                    .await?;
            }
        }
        let fingerprint = usage_fingerprint(&query);
        let after = pagination::decode(page_token, fingerprint)?;
        let page = self
            .store
            .list_usage(&query, after.as_deref(), limit)
            .await?;
        let next = page
            .next
            .map(|cursor| pagination::encode(fingerprint, &cursor))
            .unwrap_or_default();
        Ok((page.records, next))
    }

    /// Audit events of an organization, newest first.
    pub async fn list_audit(
        &self,
        caller: &Caller,
        query: AuditQuery,
        page_size: i32,
        page_token: &str,
    ) -> Result<(Vec<AuditEvent>, String), Error> {
        let limit = pagination::page_size(page_size)?;
        let verdict = authz::read_org(&caller.principal, &query.org_id);
        self.authorize_org(caller, Method::ListAuditEvents, &query.org_id, "", verdict)
            .await?;
        let fingerprint = audit_fingerprint(&query);
        let after = pagination::decode(page_token, fingerprint)?
            .map(|bytes| {
                <[u8; 16]>::try_from(bytes.as_slice())
                    .map(EventId::from_bytes)
                    .map_err(|_| {
                        Error::invalid("page_token", "is not a page token of this listing")
                    })
            })
            .transpose()?;
        let page = self.store.list_audit(&query, after, limit).await?;
        let next = page
            .next
            .map(|last| pagination::encode(fingerprint, &last.to_bytes()))
            .unwrap_or_default();
        Ok((page.events, next))
    }

    /// Writes a consistent snapshot of the store to `path` (see `Store::backup`).
    pub async fn backup(&self, caller: &Caller, path: &std::path::Path) -> Result<u64, Error> {
        self.authorize_org(
            caller,
            Method::Backup,
            "",
            "",
            authz::backup(&caller.principal),
        )
        .await?;
        let entries = self.store.backup(path).await?;
        tracing::info!(
            entries, actor = %caller.actor_ref().label(), peer = caller.peer.map(tracing::field::display),
            request_id = %caller.request_id, "backup taken"
        );
        Ok(entries)
    }

    // ----- Check -----

    /// The cached token `presented` is a secret of, with the digest it
    /// matched; reads the store on a cache miss.
    async fn find(&self, presented: &str) -> Result<Option<(Arc<CachedToken>, Digest)>, Error> {
        if secret::parse(presented).is_none() {
            return Ok(None);
        }
        self.find_well_formed(presented).await
    }

    /// [`Self::find`] for a secret already known to be well formed.
    async fn find_well_formed(
        &self,
        presented: &str,
    ) -> Result<Option<(Arc<CachedToken>, Digest)>, Error> {
        let keys = self.keyring.keys();
        let current = keys[0].digest(presented);
        match self.cache.get(&current) {
            Lookup::Found(token) => {
                self.metrics.record_cache(CacheOutcome::Hit);
                return Ok(Some((token, current)));
            }
            // Negative entries are made under the current key only, after
            // every key was tried: the token is unknown under all of them.
            Lookup::Unknown => {
                self.metrics.record_cache(CacheOutcome::NegativeHit);
                return Ok(None);
            }
            Lookup::Miss => {}
        }
        // Tokens issued before a pepper rotation are cached under their own key's digest.
        let older: Vec<Digest> = keys[1..].iter().map(|k| k.digest(presented)).collect();
        for digest in &older {
            if let Lookup::Found(token) = self.cache.get(digest) {
                self.metrics.record_cache(CacheOutcome::Hit);
                return Ok(Some((token, *digest)));
            }
        }
        self.metrics.record_cache(CacheOutcome::Miss);
        let _fill = self.cache.fill_guard().await;
        for digest in std::iter::once(&current).chain(&older) {
            if let Some(record) = self.store.token_by_digest(digest).await? {
                let token = Arc::new(CachedToken::new(record));
                self.cache.fill(*digest, Arc::clone(&token));
                return Ok(Some((token, *digest)));
            }
        }
        self.cache.fill_unknown(current);
        Ok(None)
    }

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
        let reason = evaluate(&token.record, secret, query, now);
        if reason == Reason::Revoked
            && token.record.revoked_at.is_none()
            && secret.retired_at.is_some_and(|at| at <= now)
        {
            self.report_retired_secret(&token.record, now, origin);
        }
        self.recorder
            .note_check(&token, query.permission_index, reason, now);
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
                origin.request_id.unwrap_or_default(),
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

    async fn view(&self, record: TokenRecord) -> Result<TokenView, Error> {
        let stored = self.store.last_used(&[record.id]).await?.pop().flatten();
        Ok(self.merge_last_used(record, stored))
    }

    fn merge_last_used(&self, record: TokenRecord, stored: Option<Timestamp>) -> TokenView {
        let pending = self.recorder.pending_last_used(record.id);
        TokenView {
            last_used_at: stored.max(pending),
            record,
        }
    }
}
