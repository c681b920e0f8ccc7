//! The `members` table: SetMember, RemoveMember (with the revocation of the
//! member's tokens in the same transaction), and reading members back.
//! Rows are keyed by `keys::member_key`, as sled's tree is, so that listing
//! order and cursors are the same on both backends.

use deadpool_postgres::GenericClient;

use super::{
    activity::insert_audit,
    rows::{digests_of, record_of},
    tokens::{EXPIRY, LOCK_ORG_EXCLUSIVE, log_revocation, write_revoked_all},
};
use crate::domain::{
    audit::AuditEvent,
    member::{
        Member, MemberKey, MemberPage, MemberPageRequest, changes, member_page,
        revoke_members_tokens,
    },
    time::Timestamp,
};
use crate::store::{
    MemberChange, MemberRemoval, REVOKE_ALL_EXPIRED_MARGIN, RevokedAll, StoreError, keys,
    records::{decode_member, encode_member},
};

/// The member's live personal tokens, locked for update (as a RevokeAll
/// reads them: those expired long before `at` are left alone).
async fn member_tokens(
    tx: &impl GenericClient,
    key: &MemberKey,
    at: Timestamp,
) -> Result<Vec<crate::domain::token::TokenRecord>, StoreError> {
    let select = format!(
        "SELECT record FROM tokens WHERE org_id = $1 AND owner_user_id = $2 AND kind = 1 \
         AND revoked_at_us IS NULL AND {EXPIRY} >= $3 ORDER BY id FOR UPDATE"
    );
    let floor = at.saturating_sub(REVOKE_ALL_EXPIRED_MARGIN).as_micros();
    tx.query(&select, &[&key.org_id, &key.user_id, &floor])
        .await?
        .iter()
        .map(record_of)
        .collect()
}

async fn locked_member(
    tx: &impl GenericClient,
    key: &MemberKey,
) -> Result<Option<Member>, StoreError> {
    let row = tx
        .query_opt(
            "SELECT member FROM members WHERE key = $1 FOR UPDATE",
            &[&keys::member_key(&key.org_id, &key.user_id)],
        )
        .await?;
    row.map(|row| decode_member(row.try_get::<_, &[u8]>(0)?))
        .transpose()
}

pub(super) async fn set_member(
    client: &mut deadpool_postgres::Object,
    member: &Member,
    event: &AuditEvent,
) -> Result<MemberChange, StoreError> {
    let tx = client.transaction().await?;
    tx.execute(LOCK_ORG_EXCLUSIVE, &[&member.org_id]).await?;
    let key = member.key();
    let previous = locked_member(&tx, &key).await?;
    if !changes(previous.as_ref(), member) {
        return Ok(MemberChange {
            previous,
            digests: Vec::new(),
        });
    }
    tx.execute(
        "INSERT INTO members (key, org_id, user_id, member) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (key) DO UPDATE SET member = EXCLUDED.member",
        &[
            &keys::member_key(&member.org_id, &member.user_id),
            &member.org_id,
            &member.user_id,
            &encode_member(member),
        ],
    )
    .await?;
    insert_audit(&tx, event).await?;
    let tokens = member_tokens(&tx, &key, member.updated_at).await?;
    // Other replicas' caches hold these tokens with the old role: the
    // revocation log tells them to read them again.
    log_revocation(&tx, digests_of(&tokens)).await?;
    tx.commit().await?;
    Ok(MemberChange {
        previous,
        digests: tokens
            .iter()
            .flat_map(|r| r.secrets.iter().map(|s| s.digest))
            .collect(),
    })
}

pub(super) async fn remove_member(
    client: &mut deadpool_postgres::Object,
    key: &MemberKey,
    at: Timestamp,
    event: &AuditEvent,
    revoke_event: &AuditEvent,
) -> Result<MemberRemoval, StoreError> {
    let tx = client.transaction().await?;
    tx.execute(LOCK_ORG_EXCLUSIVE, &[&key.org_id]).await?;
    let removed = locked_member(&tx, key).await?;
    tx.execute(
        "DELETE FROM members WHERE key = $1",
        &[&keys::member_key(&key.org_id, &key.user_id)],
    )
    .await?;
    let candidates = member_tokens(&tx, key, at).await?;
    let batch = revoke_members_tokens(candidates, key, at, revoke_event);
    insert_audit(&tx, event).await?;
    write_revoked_all(&tx, &batch, at).await?;
    tx.commit().await?;
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

pub(super) async fn member(
    client: &impl GenericClient,
    key: &MemberKey,
) -> Result<Option<Member>, StoreError> {
    let statement = client
        .prepare_cached("SELECT member FROM members WHERE key = $1")
        .await?;
    client
        .query_opt(&statement, &[&keys::member_key(&key.org_id, &key.user_id)])
        .await?
        .map(|row| decode_member(row.try_get::<_, &[u8]>(0)?))
        .transpose()
}

pub(super) async fn count_members(
    client: &impl GenericClient,
    org_id: &str,
    limit: u64,
) -> Result<u64, StoreError> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let row = client
        .query_one(
            "SELECT count(*) FROM (SELECT 1 FROM members WHERE org_id = $1 LIMIT $2) AS counted",
            &[&org_id, &limit],
        )
        .await?;
    Ok(u64::try_from(row.try_get::<_, i64>(0)?).unwrap_or(0))
}

pub(super) async fn list_members(
    client: &impl GenericClient,
    org_id: &str,
    page: &MemberPageRequest,
) -> Result<MemberPage, StoreError> {
    let after = match &page.after {
        Some(after) => keys::member_key(org_id, after),
        None => Vec::new(),
    };
    let limit = i64::try_from(page.limit).unwrap_or(i64::MAX - 1) + 1;
    let rows = client
        .query(
            "SELECT member FROM members WHERE org_id = $1 AND key > $2 ORDER BY key LIMIT $3",
            &[&org_id, &after, &limit],
        )
        .await?;
    let mut members = rows
        .iter()
        .map(|row| decode_member(row.try_get::<_, &[u8]>(0)?))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(member_page(&mut members, page.limit))
}
