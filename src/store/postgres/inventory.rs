//! Reads over the whole token table, a bounded step at a time or in one
//! aggregate: the counts behind the token gauges, and the walk over
//! unrevoked tokens that the expiry and inactivity sweeps take.

use deadpool_postgres::GenericClient;

use super::rows::{bytes16, record_of};
use crate::domain::{ids::TokenId, time::Timestamp, token::TokenState};
use crate::store::{Page, StoreError, TokenCounts, records::kind_of};

/// See `Store::count_tokens`.
pub(super) async fn count_tokens(
    client: &impl GenericClient,
    now: Timestamp,
) -> Result<TokenCounts, StoreError> {
    let rows = client
        .query(
            "SELECT kind, CASE \
               WHEN revoked_at_us IS NOT NULL THEN 1 \
               WHEN expires_at_us IS NOT NULL AND expires_at_us <= $1 THEN 2 \
               ELSE 0 END AS state, count(*) \
             FROM tokens GROUP BY 1, 2",
            &[&now.as_micros()],
        )
        .await?;
    rows.iter()
        .map(|row| {
            let kind: i16 = row.try_get(0)?;
            let state: i32 = row.try_get(1)?;
            let count: i64 = row.try_get(2)?;
            let kind = u32::try_from(kind)
                .ok()
                .and_then(kind_of)
                .ok_or_else(|| StoreError::Corrupt(format!("token kind {kind}")))?;
            let state = match state {
                1 => TokenState::Revoked,
                2 => TokenState::Expired,
                _ => TokenState::Live,
            };
            Ok((kind, state, u64::try_from(count).unwrap_or(0)))
        })
        .collect()
}

/// See `Store::scan_unrevoked_tokens`.
pub(super) async fn scan_unrevoked(
    client: &impl GenericClient,
    after: Option<TokenId>,
    limit: usize,
) -> Result<Page, StoreError> {
    // By the primary key, revoked rows included: the work of one call is
    // `limit` rows whatever the history (`Store::scan_unrevoked_tokens`).
    let statement = client
        .prepare_cached(
            "SELECT id, revoked_at_us IS NULL AS live, record FROM tokens \
             WHERE id > $1 ORDER BY id LIMIT $2",
        )
        .await?;
    let after = after.map(|id| id.to_bytes().to_vec()).unwrap_or_default();
    let limit = limit.max(1);
    let rows = client
        .query(
            &statement,
            &[&after, &i64::try_from(limit).unwrap_or(i64::MAX)],
        )
        .await?;
    let next = match rows.last() {
        Some(row) if rows.len() == limit => Some(TokenId::from_bytes(bytes16(
            row.try_get::<_, &[u8]>("id")?,
            "token id",
        )?)),
        _ => None,
    };
    let mut tokens = Vec::new();
    for row in &rows {
        if row.try_get::<_, bool>("live")? {
            tokens.push(record_of(row)?);
        }
    }
    Ok(Page { tokens, next })
}
