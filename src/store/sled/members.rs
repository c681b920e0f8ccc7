//! The members tree: SetMember, RemoveMember (with the revocation of the
//! member's tokens in the same transaction), and reading members back.
//! Every write runs under the write lock (see `SledStore::write`), which
//! every token write takes too: the member's tokens read for a change are
//! all there are until the change has committed.

use std::ops::Bound;

use super::trees::{Abortable, Trees, Tx, abort};
use crate::domain::{
    audit::AuditEvent,
    member::{
        Member, MemberKey, MemberPage, MemberPageRequest, changes, member_page,
        revoke_members_tokens,
    },
    time::Timestamp,
    token::TokenRecord,
};
use crate::store::{
    MemberChange, MemberRemoval, RevokedAll, StoreError, keys,
    records::{decode_member, encode_member},
};

impl<'a> Tx<'a> {
    /// The members tree of a `Trees::member_transaction`.
    fn members(&self) -> Abortable<&'a sled::transaction::TransactionalTree> {
        self.members.ok_or_else(|| {
            abort(StoreError::Unavailable(
                "a member change outside a member transaction".into(),
            ))
        })
    }
}

impl Trees {
    /// The member's live personal tokens (a RevokeAll's range of them), as
    /// committed. Call with the write lock held, so that none changes
    /// before the transaction that uses them commits.
    fn member_tokens(
        &self,
        key: &MemberKey,
        at: Timestamp,
    ) -> Result<Vec<TokenRecord>, StoreError> {
        let (low, high) = keys::revoke_all_range(&key.tokens(), at)?;
        let mut records = Vec::new();
        for entry in self.live.range(low..=high) {
            let id = keys::id_of_live_key(&entry?.0)
                .ok_or_else(|| StoreError::Corrupt("short live key".into()))?;
            records.extend(self.record(id)?);
        }
        Ok(records)
    }

    /// See `Store::set_member`. Call with the write lock held.
    pub(super) fn set_member(
        &self,
        member: &Member,
        event: &AuditEvent,
    ) -> Result<MemberChange, StoreError> {
        let key = keys::member_key(&member.org_id, &member.user_id);
        let previous = self.member(&member.key())?;
        if !changes(previous.as_ref(), member) {
            return Ok(MemberChange {
                previous,
                digests: Vec::new(),
            });
        }
        // Read before the write (the write lock keeps them as they are until
        // it commits): a read failing after the commit would leave the cache
        // holding the old role, and a retry finds the role unchanged and
        // names nothing to forget.
        let digests = self
            .member_tokens(&member.key(), member.updated_at)?
            .iter()
            .flat_map(|r| r.secrets.iter().map(|s| s.digest))
            .collect();
        self.member_transaction(|tx| {
            tx.members()?
                .insert(key.as_slice(), encode_member(member))?;
            tx.append_audit(event)
        })?;
        Ok(MemberChange { previous, digests })
    }

    /// See `Store::remove_member`. Call with the write lock held.
    pub(super) fn remove_member(
        &self,
        key: &MemberKey,
        at: Timestamp,
        event: &AuditEvent,
        revoke_event: &AuditEvent,
    ) -> Result<MemberRemoval, StoreError> {
        let candidates = self.member_tokens(key, at)?;
        let member_key = keys::member_key(&key.org_id, &key.user_id);
        let (removed, batch) = self.member_transaction(|tx| {
            let removed = tx
                .members()?
                .remove(member_key.as_slice())?
                .map(|v| decode_member(&v).map_err(abort))
                .transpose()?;
            let batch = revoke_members_tokens(candidates.clone(), key, at, revoke_event);
            for record in &batch.revoked {
                tx.put_revoked(record)?;
            }
            tx.append_audit(event)?;
            for event in &batch.events {
                tx.append_audit(event)?;
            }
            Ok((removed, batch))
        })?;
        Ok(MemberRemoval {
            removed,
            revoked: RevokedAll {
                count: batch.progress.revoked,
                digests: batch
                    .revoked
                    .iter()
                    .flat_map(|r| r.secrets.iter().map(|s| s.digest))
                    .collect(),
            },
        })
    }

    pub(super) fn member(&self, key: &MemberKey) -> Result<Option<Member>, StoreError> {
        self.members
            .get(keys::member_key(&key.org_id, &key.user_id))?
            .map(|v| decode_member(&v))
            .transpose()
    }

    pub(super) fn count_members(&self, org_id: &str, limit: u64) -> Result<u64, StoreError> {
        let mut count = 0;
        for entry in self
            .members
            .scan_prefix(keys::prefix(&[org_id]))
            .take(usize::try_from(limit).unwrap_or(usize::MAX))
        {
            entry?;
            count += 1;
        }
        Ok(count)
    }

    pub(super) fn list_members(
        &self,
        org_id: &str,
        page: &MemberPageRequest,
    ) -> Result<MemberPage, StoreError> {
        let prefix = keys::prefix(&[org_id]);
        let low = match &page.after {
            Some(after) => Bound::Excluded(keys::member_key(org_id, after)),
            None => Bound::Included(prefix.clone()),
        };
        let mut members = Vec::new();
        for entry in self.members.range((low, Bound::Unbounded)) {
            let (key, value) = entry?;
            if !key.starts_with(&prefix) || members.len() > page.limit {
                break;
            }
            members.push(decode_member(&value)?);
        }
        Ok(member_page(&mut members, page.limit))
    }
}
