//! Members: the control plane tells the service who belongs to an
//! organization and with which role (SetMember, RemoveMember), and reads it
//! back (GetMember, ListMembers). Each change is authorized by
//! `domain::authz::members` and audited in the store's transaction.
//!
//! A change runs like a revocation ([`TokenAuthority::take_out_of_service`]):
//! once it returns, the cache has forgotten every token of the member (a
//! role change: so that the next Check reads the new role; a removal: the
//! tokens it revoked), under the same gate as a revocation, so that no
//! Check that was reading the store meanwhile can cache the old role.

use std::sync::Arc;

use super::{authority::TokenAuthority, error::Error};
use crate::domain::{
    self,
    audit::{AuditAction, AuditEvent},
    authz,
    caller::{Caller, Method, OrgRole, Principal},
    ids::EventId,
    member::{Member, MemberKey, MemberPage, MemberPageRequest},
    pagination,
    time::Timestamp,
    token::{TokenKind, TokenView},
};

/// What a RemoveMember did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Removal {
    /// Whether the service knew the member (a record was deleted).
    pub was_member: bool,
    /// How many of the member's personal tokens it revoked.
    pub revoked: u64,
}

impl TokenAuthority {
    /// May `caller` change the members of `org_id`? An ADMIN the control
    /// plane acts for counts with the role the service holds for them, when
    /// it holds one: a demoted ADMIN whose dashboard session still asserts
    /// ADMIN cannot promote themselves back, nor remove the others.
    async fn members_verdict(
        &self,
        caller: &Caller,
        org_id: &str,
    ) -> Result<authz::Verdict, Error> {
        self.verdict_as_stored(caller, |p| authz::members(p, org_id, None))
            .await
    }

    /// Refuses a new member an ADMIN would bring the organization beyond
    /// `[membership] max_members_per_org` to: what one tenant's ADMIN can
    /// write to disk is bounded. Counted before the write, so concurrent
    /// additions may pass the cap by as many as run at once. The control
    /// plane on its own behalf is not counted (see `MembershipConfig`).
    async fn within_member_cap(&self, caller: &Caller, key: &MemberKey) -> Result<(), Error> {
        let by_an_admin = matches!(
            caller.principal,
            Principal::ControlPlane { actor: Some(_), .. }
        );
        if !by_an_admin || self.store.member(key).await?.is_some() {
            return Ok(());
        }
        let cap = u64::from(self.policy.max_members_per_org);
        if self.store.count_members(&key.org_id, cap).await? >= cap {
            return Err(Error::resource_exhausted(format!(
                "organization {} has {cap} members, the most an ADMIN may add \
                 ([membership] max_members_per_org)",
                key.org_id
            )));
        }
        Ok(())
    }

    fn member_event(
        &self,
        caller: &Caller,
        now: Timestamp,
        method: Method,
        action: AuditAction,
        key: &MemberKey,
        detail: String,
    ) -> Result<AuditEvent, Error> {
        let id = EventId::generate(now).map_err(Error::internal("OS random source"))?;
        let mut event = AuditEvent::change(id, now, caller, method, action, None);
        event.org_id.clone_from(&key.org_id);
        event.detail = detail;
        Ok(event)
    }

    /// Creates the member, or sets their role. A role the member already
    /// has changes nothing (no write, no event). Once this returns, no Check
    /// on this replica allows what the new role forbids.
    pub async fn set_member(
        &self,
        caller: &Caller,
        key: MemberKey,
        role: OrgRole,
    ) -> Result<Member, Error> {
        let verdict = self.members_verdict(caller, &key.org_id).await?;
        self.authorize_org(caller, Method::SetMember, &key.org_id, "", verdict)
            .await?;
        self.within_member_cap(caller, &key).await?;
        let now = Timestamp::now();
        let member = Member {
            org_id: key.org_id.clone(),
            user_id: key.user_id.clone(),
            role,
            updated_at: now,
        };
        let event = self.member_event(
            caller,
            now,
            Method::SetMember,
            AuditAction::MemberSet,
            &key,
            format!("user {} has the role {}", key.user_id, role.name()),
        )?;
        let store = Arc::clone(&self.store);
        let written = member.clone();
        let change = self
            .take_out_of_service(&key.org_id, async move {
                let change = store.set_member(&written, &event).await;
                let digests = change
                    .as_ref()
                    .map(|c| c.digests.clone())
                    .unwrap_or_default();
                (change, digests)
            })
            .await?;
        // A token a concurrent revoke took out of the live set first is not
        // among this change's digests: wait until that revoke has forgotten
        // it, so no Check reads it with the old role after this returns.
        self.cache.settled(&key.org_id).await;
        let unchanged = change.previous.as_ref().is_some_and(|p| p.role == role);
        tracing::info!(
            org_id = %key.org_id, user_id = %key.user_id, role = role.name(),
            previous = change.previous.as_ref().map(|p| p.role.name()), unchanged,
            actor = %caller.actor_ref().label(), peer = caller.peer.map(tracing::field::display),
            request_id = %caller.request_id, "member set"
        );
        Ok(match change.previous {
            Some(previous) if unchanged => previous,
            _ => member,
        })
    }

    /// Removes the member and revokes every personal token of theirs, in
    /// one transaction; known to the service or not (a user who leaves an
    /// organization that never called SetMember loses their tokens too).
    pub async fn remove_member(&self, caller: &Caller, key: MemberKey) -> Result<Removal, Error> {
        let verdict = self.members_verdict(caller, &key.org_id).await?;
        self.authorize_org(caller, Method::RemoveMember, &key.org_id, "", verdict)
            .await?;
        let now = Timestamp::now();
        let event = self.member_event(
            caller,
            now,
            Method::RemoveMember,
            AuditAction::MemberRemoved,
            &key,
            format!("user {} removed", key.user_id),
        )?;
        let mut revoke_event = self.member_event(
            caller,
            now,
            Method::RemoveMember,
            AuditAction::RevokedAll,
            &key,
            String::new(),
        )?;
        revoke_event.kind = Some(TokenKind::Personal);
        let store = Arc::clone(&self.store);
        let removing = key.clone();
        let removal = self
            .take_out_of_service(&key.org_id, async move {
                let removal = store
                    .remove_member(&removing, now, &event, &revoke_event)
                    .await;
                let digests = removal
                    .as_ref()
                    .map(|r| r.revoked.digests.clone())
                    .unwrap_or_default();
                (removal, digests)
            })
            .await?;
        // Tokens a concurrent revoke took out first are that revoke's to
        // forget: wait until it has (as a RevokeAll does).
        self.cache.settled(&key.org_id).await;
        tracing::info!(
            org_id = %key.org_id, user_id = %key.user_id, was_member = removal.removed.is_some(),
            revoked = removal.revoked.count,
            actor = %caller.actor_ref().label(), peer = caller.peer.map(tracing::field::display),
            request_id = %caller.request_id, "member removed"
        );
        Ok(Removal {
            was_member: removal.removed.is_some(),
            revoked: removal.revoked.count,
        })
    }

    /// What RemoveMember would do, changing nothing: whether the service
    /// knows the member, how many personal tokens of theirs it would revoke
    /// and the first page of them. Authorized exactly as the removal.
    pub async fn preview_remove_member(
        &self,
        caller: &Caller,
        key: MemberKey,
    ) -> Result<(bool, u64, Vec<TokenView>), Error> {
        let verdict = self.members_verdict(caller, &key.org_id).await?;
        self.authorize_org(caller, Method::RemoveMember, &key.org_id, "", verdict)
            .await?;
        let known = self.store.member(&key).await?.is_some();
        let (count, views) = self.blast_radius(&key.tokens()).await?;
        tracing::info!(
            org_id = %key.org_id, user_id = %key.user_id, known, would_revoke = count,
            actor = %caller.actor_ref().label(), request_id = %caller.request_id,
            "RemoveMember dry run"
        );
        Ok((known, count, views))
    }

    pub async fn get_member(&self, caller: &Caller, key: MemberKey) -> Result<Member, Error> {
        let verdict = self
            .verdict_as_stored(caller, |p| {
                authz::members(p, &key.org_id, Some(&key.user_id))
            })
            .await?;
        self.authorize_org(caller, Method::GetMember, &key.org_id, "", verdict)
            .await?;
        let found = self.store.member(&key).await?;
        found.ok_or(Error::Domain(domain::Error::NoSuchMember {
            org_id: key.org_id,
            user_id: key.user_id,
        }))
    }

    /// One page of the organization's members by user id, and the next
    /// page's token (empty after the last).
    pub async fn list_members(
        &self,
        caller: &Caller,
        org_id: &str,
        page_size: i32,
        page_token: &str,
    ) -> Result<(Vec<Member>, String), Error> {
        domain::ids::require_id("org_id", org_id)?;
        let limit = pagination::page_size(page_size)?;
        let verdict = self.members_verdict(caller, org_id).await?;
        self.authorize_org(caller, Method::ListMembers, org_id, "", verdict)
            .await?;
        let fingerprint = pagination::fingerprint(&[b"members", org_id.as_bytes()]);
        let after = pagination::decode(page_token, fingerprint)?
            .map(|cursor| {
                String::from_utf8(cursor)
                    .ok()
                    .filter(|user| domain::ids::require_id("page_token", user).is_ok())
                    .ok_or_else(|| {
                        Error::invalid("page_token", "is not a page token of this listing")
                    })
            })
            .transpose()?;
        let MemberPage { members, next } = self
            .store
            .list_members(org_id, &MemberPageRequest { after, limit })
            .await?;
        let next = next
            .map(|last| pagination::encode(fingerprint, last.as_bytes()))
            .unwrap_or_default();
        Ok((members, next))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        domain::{
            caller::{Actor, Principal},
            token::{NewToken, Reason, validate_check_query},
        },
        service::{CheckOrigin, fixture::fixture},
    };

    fn acting(org: &str, user: &str, role: OrgRole) -> Caller {
        Caller {
            principal: Principal::ControlPlane {
                credential: "cp".into(),
                actor: Some(Actor {
                    user_id: user.into(),
                    org_id: org.into(),
                    role,
                }),
            },
            peer: None,
            request_id: "req-1".into(),
        }
    }

    fn control_plane() -> Caller {
        Caller {
            principal: Principal::ControlPlane {
                credential: "cp".into(),
                actor: None,
            },
            peer: None,
            request_id: "req-1".into(),
        }
    }

    async fn issue_personal(
        authority: &TokenAuthority,
        user: &str,
        role: OrgRole,
        permissions: &[&str],
    ) -> String {
        let new = NewToken {
            kind: TokenKind::Personal,
            org_id: "org-1".into(),
            workspace_id: "ws-1".into(),
            name: "laptop".into(),
            permissions: permissions.iter().map(|p| (*p).to_owned()).collect(),
            expires_at: None,
            owner_user_id: user.into(),
        };
        let caller = acting("org-1", user, role);
        let (_, secret) = authority.issue(&caller, new).await.unwrap();
        secret.expose().to_owned()
    }

    async fn check(authority: &TokenAuthority, secret: &str, permission: &str) -> Reason {
        let query =
            validate_check_query(authority.catalogue(), permission, "org-1", "ws-1").unwrap();
        authority
            .check(secret, &query, &CheckOrigin::default())
            .await
            .unwrap()
            .reason
    }

    fn key(user: &str) -> MemberKey {
        MemberKey::new("org-1", user).unwrap()
    }

    #[tokio::test]
    async fn a_demotion_narrows_a_cached_token_at_once_and_a_promotion_never_widens_it() {
        let f = fixture();
        let a = &f.authority;
        let secret = issue_personal(
            a,
            "u",
            OrgRole::ReadWrite,
            &["transformations:write", "transformations:read"],
        )
        .await;
        // Unknown member: the permissions it was issued with (and now cached).
        assert_eq!(check(a, &secret, "transformations:write").await, Reason::Ok);
        a.set_member(&control_plane(), key("u"), OrgRole::ReadOnly)
            .await
            .unwrap();
        assert_eq!(
            check(a, &secret, "transformations:write").await,
            Reason::RoleInsufficient
        );
        assert_eq!(check(a, &secret, "transformations:read").await, Reason::Ok);
        a.set_member(&control_plane(), key("u"), OrgRole::Admin)
            .await
            .unwrap();
        assert_eq!(check(a, &secret, "transformations:write").await, Reason::Ok);
        // ADMIN allows test_api:run; the token was never issued it.
        assert_eq!(
            check(a, &secret, "test_api:run").await,
            Reason::InsufficientPermission
        );
        let events = f.audit("org-1").await;
        assert_eq!(
            events
                .iter()
                .filter(|e| e.action == AuditAction::MemberSet)
                .count(),
            2
        );
    }

    #[tokio::test]
    async fn removing_a_member_revokes_their_tokens_at_once() {
        let f = fixture();
        let a = &f.authority;
        let secret = issue_personal(a, "u", OrgRole::ReadWrite, &["transformations:read"]).await;
        let other = issue_personal(a, "v", OrgRole::ReadWrite, &["transformations:read"]).await;
        assert_eq!(check(a, &secret, "transformations:read").await, Reason::Ok);
        let removal = a.remove_member(&control_plane(), key("u")).await.unwrap();
        assert_eq!(
            removal,
            Removal {
                was_member: false,
                revoked: 1
            }
        );
        assert_eq!(
            check(a, &secret, "transformations:read").await,
            Reason::Revoked
        );
        assert_eq!(check(a, &other, "transformations:read").await, Reason::Ok);
        let events = f.audit("org-1").await;
        let revoked_all = events
            .iter()
            .find(|e| e.action == AuditAction::RevokedAll)
            .unwrap();
        assert_eq!(revoked_all.method, Method::RemoveMember);
        assert_eq!(revoked_all.target_token_ids.len(), 1);
        assert!(
            events
                .iter()
                .any(|e| e.action == AuditAction::MemberRemoved)
        );
    }

    #[tokio::test]
    async fn with_membership_required_an_unknown_members_token_is_denied() {
        let mut f = fixture();
        let secret = issue_personal(
            &f.authority,
            "u",
            OrgRole::ReadWrite,
            &["transformations:read"],
        )
        .await;
        let (_, service) = f.issue("org-1", "ws-1", &["transformations:read"]).await;
        f.authority.policy.membership.required = true;
        let a = &f.authority;
        assert_eq!(
            check(a, &secret, "transformations:read").await,
            Reason::RoleInsufficient
        );
        assert_eq!(check(a, &service, "transformations:read").await, Reason::Ok);
        a.set_member(&control_plane(), key("u"), OrgRole::ReadOnly)
            .await
            .unwrap();
        assert_eq!(check(a, &secret, "transformations:read").await, Reason::Ok);
    }

    #[tokio::test]
    async fn only_the_control_plane_and_admins_manage_members_and_refusals_are_audited() {
        let f = fixture();
        let a = &f.authority;
        let member = acting("org-1", "u", OrgRole::ReadWrite);
        assert!(
            a.set_member(&member, key("u"), OrgRole::Admin)
                .await
                .is_err()
        );
        assert!(a.remove_member(&member, key("v")).await.is_err());
        assert!(a.list_members(&member, "org-1", 0, "").await.is_err());
        // An ADMIN of another organization does not see this one's.
        let outsider = acting("org-2", "x", OrgRole::Admin);
        assert!(a.list_members(&outsider, "org-1", 0, "").await.is_err());
        let admin = acting("org-1", "boss", OrgRole::Admin);
        let set = a
            .set_member(&admin, key("u"), OrgRole::ReadOnly)
            .await
            .unwrap();
        assert_eq!(set.role, OrgRole::ReadOnly);
        // A member reads their own membership, and no one else's.
        assert_eq!(a.get_member(&member, key("u")).await.unwrap(), set);
        assert!(a.get_member(&member, key("w")).await.is_err());
        let refusals = f
            .audit("org-1")
            .await
            .into_iter()
            .filter(|e| e.action == AuditAction::Denied)
            .count();
        assert!(refusals >= 3, "{refusals} refusals audited");
    }

    #[tokio::test]
    async fn listing_pages_are_bounded_and_bound_to_their_organization() {
        let f = fixture();
        let a = &f.authority;
        for user in ["a", "b", "c"] {
            a.set_member(&control_plane(), key(user), OrgRole::ReadOnly)
                .await
                .unwrap();
        }
        let (first, next) = a
            .list_members(&control_plane(), "org-1", 2, "")
            .await
            .unwrap();
        assert_eq!(first.len(), 2);
        let (rest, last) = a
            .list_members(&control_plane(), "org-1", 2, &next)
            .await
            .unwrap();
        assert_eq!(
            rest.iter().map(|m| m.user_id.as_str()).collect::<Vec<_>>(),
            ["c"]
        );
        assert!(last.is_empty());
        // A page token of one organization's listing is refused for another's.
        assert!(
            a.list_members(&control_plane(), "org-2", 2, &next)
                .await
                .is_err()
        );
        assert!(
            a.list_members(&control_plane(), "org-1", -1, "")
                .await
                .is_err()
        );
        assert!(
            a.list_members(&control_plane(), &"o".repeat(200), 0, "")
                .await
                .is_err()
        );
    }

    #[tokio::test]
    async fn a_demoted_admins_stale_session_manages_nothing_an_admin_may() {
        let f = fixture();
        let a = &f.authority;
        let (service, secret) = f.issue("org-1", "ws-1", &["test_api:run"]).await;
        let stale = acting("org-1", "boss", OrgRole::Admin);
        // While the service knows no role for them, the asserted ADMIN counts.
        a.get(&stale, service).await.unwrap();
        a.set_member(&control_plane(), key("boss"), OrgRole::ReadWrite)
            .await
            .unwrap();
        let denied = |result: Result<(), Error>| match result {
            Err(Error::Domain(domain::Error::PermissionDenied(_))) => {}
            other => panic!("expected PermissionDenied, got {other:?}"),
        };
        denied(a.get(&stale, service).await.map(drop));
        denied(a.revoke(&stale, service).await.map(drop));
        denied(
            a.rotate(&stale, service, std::time::Duration::ZERO)
                .await
                .map(drop),
        );
        denied(a.lookup_secret(&stale, &secret).await.map(drop));
        denied(
            a.preview_leak_report(&stale, std::slice::from_ref(&secret))
                .await
                .map(drop),
        );
        denied(a.list_members(&stale, "org-1", 0, "").await.map(drop));
        let service_token = NewToken {
            kind: TokenKind::Service,
            org_id: "org-1".into(),
            workspace_id: "ws-1".into(),
            name: "ci".into(),
            permissions: vec!["test_api:run".into()],
            expires_at: None,
            owner_user_id: String::new(),
        };
        denied(a.issue(&stale, service_token).await.map(drop));
        // Listing narrows to their own personal tokens: the service token is not among them.
        let (listed, _) = a
            .list(
                &stale,
                crate::domain::query::TokenQuery {
                    org_id: "org-1".into(),
                    workspace_id: None,
                    owner_user_id: None,
                    kind: None,
                    include_revoked: false,
                },
                0,
                "",
            )
            .await
            .unwrap();
        assert!(listed.iter().all(|v| v.record.kind == TokenKind::Personal));
        // The token was never touched.
        assert_eq!(check(a, &secret, "test_api:run").await, Reason::Ok);
    }

    /// Commits `change` on the inner store right before the next
    /// InsertToken reaches it: a member change acknowledged between an
    /// issue's judgement and its insert.
    #[derive(Clone)]
    struct ChangeBeforeInsert {
        inner: Arc<dyn crate::store::Store>,
        change: Arc<parking_lot::Mutex<Option<Member>>>,
        remove: Arc<std::sync::atomic::AtomicBool>,
    }

    impl crate::store::layered::Hook for ChangeBeforeInsert {
        async fn before(
            &self,
            operation: crate::store::layered::Operation,
        ) -> Result<(), crate::store::StoreError> {
            if operation != crate::store::layered::Operation::InsertToken {
                return Ok(());
            }
            let now = Timestamp::now();
            let event = |action| {
                AuditEvent::change(
                    EventId::generate(now).unwrap(),
                    now,
                    &control_plane(),
                    Method::SetMember,
                    action,
                    None,
                )
            };
            let change = self.change.lock().take();
            if let Some(member) = change {
                self.inner
                    .set_member(&member, &event(AuditAction::MemberSet))
                    .await?;
            }
            if self.remove.swap(false, std::sync::atomic::Ordering::SeqCst) {
                self.inner
                    .remove_member(
                        &key("u"),
                        now,
                        &event(AuditAction::MemberRemoved),
                        &event(AuditAction::RevokedAll),
                    )
                    .await?;
            }
            Ok(())
        }
    }

    #[tokio::test]
    async fn an_issue_raced_by_a_demotion_or_a_removal_is_judged_again() {
        let inner: Arc<dyn crate::store::Store> =
            Arc::new(crate::store::memory::MemoryStore::new());
        let hook = ChangeBeforeInsert {
            inner: Arc::clone(&inner),
            change: Arc::default(),
            remove: Arc::default(),
        };
        let mut f =
            crate::service::fixture::fixture_over(Arc::new(crate::store::layered::Layered::<
                ChangeBeforeInsert,
            >::new(
                Arc::clone(&inner), hook.clone()
            )));
        f.authority.policy.membership.required = true;
        let a = &f.authority;
        a.set_member(&control_plane(), key("u"), OrgRole::ReadWrite)
            .await
            .unwrap();
        let new = NewToken {
            kind: TokenKind::Personal,
            org_id: "org-1".into(),
            workspace_id: "ws-1".into(),
            name: "laptop".into(),
            permissions: vec!["transformations:write".into()],
            expires_at: None,
            owner_user_id: "u".into(),
        };
        let session = acting("org-1", "u", OrgRole::ReadWrite);
        // Demoted to READ_ONLY after the issue read READ_WRITE: judged again,
        // refused, nothing written.
        *hook.change.lock() = Some(Member {
            org_id: "org-1".into(),
            user_id: "u".into(),
            role: OrgRole::ReadOnly,
            updated_at: Timestamp::now(),
        });
        let refused = a.issue(&session, new.clone()).await.unwrap_err();
        assert!(refused.to_string().contains("READ_ONLY"), "{refused}");
        // Promoted back, then removed after the issue read the role: judged
        // again as unknown, which required membership refuses.
        a.set_member(&control_plane(), key("u"), OrgRole::ReadWrite)
            .await
            .unwrap();
        hook.remove.store(true, std::sync::atomic::Ordering::SeqCst);
        let refused = a.issue(&session, new.clone()).await.unwrap_err();
        assert!(refused.to_string().contains("SetMember"), "{refused}");
        // Neither raced issue wrote a token or an event.
        let issued = f
            .audit("org-1")
            .await
            .into_iter()
            .filter(|e| e.action == AuditAction::Issued)
            .count();
        assert_eq!(issued, 0);
        // Unraced, it is issued.
        a.set_member(&control_plane(), key("u"), OrgRole::ReadWrite)
            .await
            .unwrap();
        a.issue(&session, new).await.unwrap();
    }

    #[tokio::test]
    async fn an_admin_adds_members_up_to_the_cap_and_another_organization_is_untouched() {
        let mut f = fixture();
        f.authority.policy.max_members_per_org = 2;
        let a = &f.authority;
        let admin = acting("org-1", "boss", OrgRole::Admin);
        for user in ["a", "b"] {
            a.set_member(&admin, key(user), OrgRole::ReadOnly)
                .await
                .unwrap();
        }
        let refused = a
            .set_member(&admin, key("c"), OrgRole::ReadOnly)
            .await
            .unwrap_err();
        assert!(
            matches!(
                &refused,
                Error::Domain(domain::Error::ResourceExhausted(why)) if why.contains("max_members_per_org")
            ),
            "{refused:?}"
        );
        assert!(a.get_member(&control_plane(), key("c")).await.is_err());
        // A member already there may still change role.
        a.set_member(&admin, key("a"), OrgRole::ReadWrite)
            .await
            .unwrap();
        // The control plane on its own behalf relays the identity provider.
        a.set_member(&control_plane(), key("c"), OrgRole::ReadOnly)
            .await
            .unwrap();
        // Another organization's ADMIN is not crowded out.
        let other = MemberKey::new("org-2", "z").unwrap();
        a.set_member(
            &acting("org-2", "boss", OrgRole::Admin),
            other,
            OrgRole::ReadOnly,
        )
        .await
        .unwrap();
    }

    #[tokio::test]
    async fn a_member_creates_personal_tokens_within_their_stored_role() {
        let mut f = fixture();
        f.authority
            .set_member(&control_plane(), key("u"), OrgRole::ReadOnly)
            .await
            .unwrap();
        let new = |permission: &str| NewToken {
            kind: TokenKind::Personal,
            org_id: "org-1".into(),
            workspace_id: "ws-1".into(),
            name: "laptop".into(),
            permissions: vec![permission.into()],
            expires_at: None,
            owner_user_id: "u".into(),
        };
        // The control plane still asserts ADMIN; the service knows better.
        let stale = acting("org-1", "u", OrgRole::Admin);
        let refused = f
            .authority
            .issue(&stale, new("transformations:write"))
            .await
            .unwrap_err();
        assert!(refused.to_string().contains("READ_ONLY"), "{refused}");
        // A READ_ONLY member creates no personal token at all.
        assert!(
            f.authority
                .issue(&stale, new("transformations:read"))
                .await
                .is_err()
        );
        f.authority
            .set_member(&control_plane(), key("u"), OrgRole::ReadWrite)
            .await
            .unwrap();
        f.authority
            .issue(&stale, new("transformations:write"))
            .await
            .unwrap();
        // With membership required, an unknown member creates none.
        f.authority.policy.membership.required = true;
        let stranger = acting("org-1", "nobody", OrgRole::Admin);
        let new_for_stranger = NewToken {
            owner_user_id: "nobody".into(),
            ..new("transformations:read")
        };
        let refused = f
            .authority
            .issue(&stranger, new_for_stranger)
            .await
            .unwrap_err();
        assert!(refused.to_string().contains("SetMember"), "{refused}");
    }
}
