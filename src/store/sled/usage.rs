//! Usage rows on sled: adding counts, listing, and upkeep (roll-up and
//! prune), each write one transaction over the usage trees, so that a
//! crash leaves every row's count either before or after it, in every tree.

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

    /// Adds each record's count to its row in the three trees.
    fn add(&self, records: &[UsageRecord]) -> Abortable<()> {
        for record in records {
            let keys = usage_keys(record);
            let trees = [self.by_time(record.resolution), self.by_org, self.by_token];
            for (tree, key) in trees.into_iter().zip(&keys) {
                let old = tree
                    .get(key)?
                    .and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
                    .map_or(0, u64::from_be_bytes);
                tree.insert(
                    key.as_slice(),
                    &old.saturating_add(record.count).to_be_bytes(),
                )?;
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
        let (key, value) = entry?;
        if records.len() == limit {
            return Ok(UsagePage {
                records,
                next: last_key,
            });
        }
        records.push(decode_usage_tail(
            &query.org_id,
            query.token_id,
            &key[prefix.len()..],
            &value,
        )?);
        last_key = Some(key.to_vec());
    }
    Ok(UsagePage {
        records,
        next: None,
    })
}
