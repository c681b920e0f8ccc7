//! Usage rows on sled: adding counts, listing, and upkeep (roll-up and
//! prune), each write one transaction over the usage trees, so that a
//! crash leaves every row's count either before or after it, in every tree.
//!
//! A row's count lives in its by-time tree only; the by-org and by-token
//! trees hold its key with an empty value (rows written before this layout
//! hold a count there, which nothing reads). A busy row is added to at every
//! flush of its minute, and this way each flush after the first writes one
//! tree instead of three: it was the largest part of the usage flush, and
//! the flush the largest part of tokenauth's own CPU under a steady Check
//! load (BENCHMARKS.md, "Where the excess goes").

use std::ops::Bound;

use sled::{
    Transactional,
    transaction::{TransactionError, TransactionalTree},
};

use super::trees::{Abortable, Trees, abort};
use crate::domain::usage::{Resolution, UsageQuery, UsageRecord, UsageUpkeep, roll_up};
use crate::store::{
    StoreError, UsagePage,
    keys::{self, decode_usage_tail, decode_usage_time_key, usage_keys},
};

/// The usage trees inside a transaction.
struct UsageTx<'a> {
    /// By resolution: minute, hour, day.
    by_time: [&'a TransactionalTree; 3],
    by_org: &'a TransactionalTree,
    by_token: &'a TransactionalTree,
}

impl UsageTx<'_> {
    fn by_time(&self, resolution: Resolution) -> &TransactionalTree {
        self.by_time[resolution as usize]
    }

    /// Adds each record's count to its by-time row, and indexes a new row
    /// in the by-org and by-token trees.
    fn add(&self, records: &[UsageRecord]) -> Abortable<()> {
        for record in records {
            let [by_time, by_org, by_token] = usage_keys(record);
            let tree = self.by_time(record.resolution);
            let old = tree.get(&by_time)?;
            let count = old
                .as_ref()
                .and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
                .map_or(0, u64::from_be_bytes);
            tree.insert(by_time, &count.saturating_add(record.count).to_be_bytes())?;
            // The three trees change in one transaction, so a row in the
            // by-time tree is indexed already.
            if old.is_none() {
                self.by_org.insert(by_org, &[])?;
                self.by_token.insert(by_token, &[])?;
            }
        }
        Ok(())
    }

    /// Deletes the row under by-time key `key` of `resolution` from the three
    /// trees; returns it, or nothing if it is gone already.
    fn take(&self, resolution: Resolution, key: &[u8]) -> Abortable<Option<UsageRecord>> {
        let Some(count) = self.by_time(resolution).remove(key)? else {
            return Ok(None);
        };
        let record = decode_usage_time_key(key, &count).map_err(abort)?;
        let [_, by_org, by_token] = usage_keys(&record);
        self.by_org.remove(by_org)?;
        self.by_token.remove(by_token)?;
        Ok(Some(record))
    }
}

/// Runs `apply` in one transaction over the usage trees.
fn transaction<T>(
    trees: &Trees,
    apply: impl Fn(&UsageTx<'_>) -> Abortable<T>,
) -> Result<T, StoreError> {
    let [minutes, hours, days] = &trees.usage_by_time;
    (
        minutes,
        hours,
        days,
        &trees.usage_by_org,
        &trees.usage_by_token,
    )
        .transaction(|(minutes, hours, days, by_org, by_token)| {
            apply(&UsageTx {
                by_time: [minutes, hours, days],
                by_org,
                by_token,
            })
        })
        .map_err(|e: TransactionError<StoreError>| e.into())
}

/// [`crate::store::Store::record_usage`].
pub(super) fn add(trees: &Trees, records: &[UsageRecord]) -> Result<(), StoreError> {
    transaction(trees, |tx| tx.add(records))
}

/// [`crate::store::Store::upkeep_usage`].
pub(super) fn upkeep(trees: &Trees, step: UsageUpkeep, limit: usize) -> Result<usize, StoreError> {
    let (of, into) = match step {
        UsageUpkeep::RollUp { from, .. } => (from, from.coarser()),
        UsageUpkeep::Prune { of, .. } => (of, None),
    };
    let end = keys::sortable_i64(step.before().as_micros());
    // Chosen outside the transaction (a sled transaction cannot scan), and
    // read again inside it: a row another pass took meanwhile is skipped.
    let taken = trees.usage_by_time[of as usize]
        .range(..end.to_vec())
        .keys()
        .take(limit)
        .collect::<Result<Vec<_>, _>>()?;
    if taken.is_empty() {
        return Ok(0);
    }
    transaction(trees, |tx| {
        let mut rows = Vec::with_capacity(taken.len());
        for key in &taken {
            rows.extend(tx.take(of, key)?);
        }
        #[cfg(test)]
        if trees
            .fail_usage_upkeep
            .swap(false, std::sync::atomic::Ordering::SeqCst)
        {
            return Err(abort(StoreError::Unavailable(
                "injected failure in the middle of a usage roll-up".into(),
            )));
        }
        if let Some(into) = into {
            tx.add(&roll_up(&rows, into))?;
        }
        Ok(())
    })?;
    Ok(taken.len())
}

/// [`crate::store::Store::list_usage`].
pub(super) fn list(
    trees: &Trees,
    query: &UsageQuery,
    after: Option<Vec<u8>>,
    limit: usize,
) -> Result<UsagePage, StoreError> {
    let (index, prefix, start, high) = keys::usage_range(query, after);
    let tree = match index {
        keys::UsageIndex::ByToken => &trees.usage_by_token,
        keys::UsageIndex::ByOrg => &trees.usage_by_org,
    };
    let mut records = Vec::new();
    let mut last_key = None;
    for entry in tree.range((start, Bound::Excluded(high))) {
        let (key, _) = entry?;
        if records.len() == limit {
            return Ok(UsagePage {
                records,
                next: last_key,
            });
        }
        let tail = &key[prefix.len()..];
        // Read outside a transaction: a row rolled up or pruned since its
        // index entry was read is gone, and skipped.
        if let Some(record) = with_count(trees, &query.org_id, query.token_id, tail)? {
            records.push(record);
        }
        last_key = Some(key.to_vec());
    }
    Ok(UsagePage {
        records,
        next: None,
    })
}

/// The row a by-org or by-token key's tail names, with its count from the
/// by-time tree, or nothing if that row is gone.
fn with_count(
    trees: &Trees,
    org_id: &str,
    token: Option<crate::domain::ids::TokenId>,
    tail: &[u8],
) -> Result<Option<UsageRecord>, StoreError> {
    let mut record = decode_usage_tail(org_id, token, tail, &[0; 8])?;
    let [by_time, ..] = usage_keys(&record);
    let Some(count) = trees.usage_by_time[record.resolution as usize].get(by_time)? else {
        return Ok(None);
    };
    record.count = u64::from_be_bytes(
        count
            .as_ref()
            .try_into()
            .map_err(|_| StoreError::Corrupt("usage count".into()))?,
    );
    Ok(Some(record))
}

/// Every usage row in by-org key order, each as its by-org key and its
/// count (8 bytes, big-endian), as `tokenauth migrate` copies them.
pub(super) fn rows_by_org(
    trees: &Trees,
) -> impl Iterator<Item = Result<(Vec<u8>, Vec<u8>), StoreError>> + '_ {
    trees.usage_by_org.iter().filter_map(move |entry| {
        let row = || {
            let (key, _) = entry?;
            let (org, tail) =
                keys::take_part(&key).ok_or_else(|| StoreError::Corrupt("usage key".into()))?;
            Ok(with_count(trees, org, None, tail)?
                .map(|record| (key.to_vec(), record.count.to_be_bytes().to_vec())))
        };
        row().transpose()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{ids::TokenId, time::Timestamp, token::Reason};
    use crate::store::{Store, sled::SledStore};

    fn row(minute: i64, count: u64) -> UsageRecord {
        UsageRecord {
            org_id: "a".into(),
            token_id: TokenId::from_bytes([1; 16]),
            permission: "p:x".into(),
            decision: Reason::Ok,
            minute: Timestamp::from_micros(minute * 60_000_000),
            resolution: Resolution::Minute,
            count,
        }
    }

    /// A store written before counts lived in the by-time tree only keeps
    /// its rows: they list with their counts and add up from there.
    #[tokio::test]
    async fn rows_of_the_earlier_layout_list_and_add_up() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        let old = row(1, 5);
        let [by_time, by_org, by_token] = usage_keys(&old);
        let count = 5u64.to_be_bytes();
        store.trees.usage_by_time[0]
            .insert(by_time, &count)
            .unwrap();
        store.trees.usage_by_org.insert(by_org, &count).unwrap();
        store.trees.usage_by_token.insert(by_token, &count).unwrap();

        store.record_usage(&[row(1, 2), row(2, 3)]).await.unwrap();
        let expected = vec![row(1, 7), row(2, 3)];
        for token_id in [None, Some(old.token_id)] {
            let query = UsageQuery {
                org_id: "a".into(),
                token_id,
                start: None,
                end: None,
            };
            let page = store.list_usage(&query, None, 10).await.unwrap();
            assert_eq!(page.records, expected, "listed by token: {token_id:?}");
        }
        let copied: Vec<_> = rows_by_org(&store.trees)
            .map(|row| u64::from_be_bytes(row.unwrap().1.try_into().unwrap()))
            .collect();
        assert_eq!(copied, [7, 3], "what migrate copies");
    }
}
