//! Usage rows on sled: adding counts, listing, and upkeep (roll-up and
//! prune), each write one transaction over the usage trees, so that a
//! crash leaves every row's count either before or after it.
//!
//! A row lives in one tree only: its resolution's by-time tree, keyed
//! `[bucket][org][token][permission][decision](resolution)`. New rows go
//! in at the newest bucket and roll-up takes them from the oldest, so a
//! flush or a roll-up rewrites a few pages at either end of the tree. Rows
//! used to be indexed by organization and by token as well; those indexes
//! took a row of every busy token into nearly every one of their pages each
//! minute, and sled's files and its bookkeeping of their pages grew with
//! that churn under a steady load (BENCHMARKS.md, "Memory under sustained
//! Check load"). A listing instead reads one organization's (or token's)
//! rows bucket by bucket: one seek for each bucket the tree holds in the
//! range asked, so its cost follows the buckets kept (`usage.*_rows_for`),
//! and the rows it returns, not how many rows other tenants have.

use std::ops::Bound;

use sled::{
    Transactional, Tree,
    transaction::{TransactionError, TransactionalTree},
};

use super::trees::{Abortable, Trees, abort};
use crate::domain::usage::{Resolution, UsageQuery, UsageRecord, UsageUpkeep, roll_up};
use crate::store::{
    StoreError, UsagePage,
    keys::{self, decode_usage_time_key, usage_keys},
};

/// The usage trees inside a transaction, by resolution: minute, hour, day.
struct UsageTx<'a>([&'a TransactionalTree; 3]);

impl UsageTx<'_> {
    fn by_time(&self, resolution: Resolution) -> &TransactionalTree {
        self.0[resolution as usize]
    }

    /// Adds each record's count to its row.
    fn add(&self, records: &[UsageRecord]) -> Abortable<()> {
        for record in records {
            let [by_time, ..] = usage_keys(record);
            let tree = self.by_time(record.resolution);
            let old = tree.get(&by_time)?;
            let count = old
                .as_ref()
                .and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
                .map_or(0, u64::from_be_bytes);
            tree.insert(by_time, &count.saturating_add(record.count).to_be_bytes())?;
        }
        Ok(())
    }

    /// Deletes the row under by-time key `key` of `resolution`; returns it,
    /// or nothing if it is gone already.
    fn take(&self, resolution: Resolution, key: &[u8]) -> Abortable<Option<UsageRecord>> {
        let Some(count) = self.by_time(resolution).remove(key)? else {
            return Ok(None);
        };
        decode_usage_time_key(key, &count).map(Some).map_err(abort)
    }
}

/// Runs `apply` in one transaction over the usage trees.
fn transaction<T>(
    trees: &Trees,
    apply: impl Fn(&UsageTx<'_>) -> Abortable<T>,
) -> Result<T, StoreError> {
    let [minutes, hours, days] = &trees.usage_by_time;
    (minutes, hours, days)
        .transaction(|(minutes, hours, days)| apply(&UsageTx([minutes, hours, days])))
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

/// Most buckets one page of a listing seeks in each resolution's tree: a
/// page reads no more than this whatever range it is asked for and however
/// many buckets the retention windows keep, and may therefore come back
/// with fewer rows than asked (none even) and a page token to go on with.
pub(super) const BUCKETS_PER_PAGE: usize = 512;

/// [`crate::store::Store::list_usage`]: the rows of every resolution in the
/// order of the by-org (or, for one token, by-token) key every store lists
/// by, which is also the cursor: bucket, then token, permission, decision
/// and resolution.
pub(super) fn list(
    trees: &Trees,
    query: &UsageQuery,
    after: Option<Vec<u8>>,
    limit: usize,
) -> Result<UsagePage, StoreError> {
    let (_, prefix, start, high) = keys::usage_range(query, after);
    let (from, after) = match start {
        Bound::Included(key) => (key, None),
        Bound::Excluded(key) => (key.clone(), Some(key)),
        Bound::Unbounded => (prefix.clone(), None),
    };
    // A cursor cut short inside its bucket (a tampered page token) reads
    // from the earliest bucket it can stand for: every row after it lies
    // there or later.
    let bucket_at = |key: &[u8]| {
        let mut bucket = [0; 8];
        let given = key.get(prefix.len()..).unwrap_or_default();
        let n = given.len().min(8);
        bucket[..n].copy_from_slice(&given[..n]);
        bucket
    };
    let mut scope = keys::prefix(&[&query.org_id]);
    if let Some(id) = query.token_id {
        scope.extend_from_slice(&id.to_bytes());
    }
    let scan = Scope {
        scope: &scope,
        prefix: &prefix,
        end: bucket_at(&high),
        after: after.as_deref(),
    };
    let first = bucket_at(&from);
    let mut scans = trees
        .usage_by_time
        .each_ref()
        .map(|tree| BucketScan::new(tree, &scan, first));
    let mut heads = Vec::with_capacity(3);
    for scan in &mut scans {
        heads.push(scan.next_head()?);
    }
    let mut records = Vec::new();
    let mut last_key: Option<Vec<u8>> = None;
    loop {
        // The three trees' rows merge by their index key.
        let Some(i) = (0..heads.len())
            .filter(|&i| heads[i].is_some())
            .min_by(|&a, &b| {
                let key = |i: usize| heads[i].as_ref().map(Head::key);
                key(a).cmp(&key(b))
            })
        else {
            return Ok(UsagePage {
                records,
                next: None,
            });
        };
        if records.len() == limit {
            return Ok(UsagePage {
                records,
                next: last_key,
            });
        }
        let (key, record) = match heads[i].take() {
            Some(Head::Row(key, record)) => (key, record),
            // A tree read its budget of buckets: every row before that
            // bucket is listed, so the next page goes on from it.
            Some(Head::Paused(at)) => {
                return Ok(UsagePage {
                    records,
                    next: Some(at),
                });
            }
            None => return Err(StoreError::Corrupt("usage listing".into())),
        };
        heads[i] = scans[i].next_head()?;
        records.push(record);
        last_key = Some(key);
    }
}

/// What a listing reads in each by-time tree.
struct Scope<'a> {
    /// The by-time keys' part after the bucket: organization, and token.
    scope: &'a [u8],
    /// The index keys' part before the bucket. A by-time key in scope and
    /// its index key differ only in where the bucket stands: after the
    /// scope, or after this prefix.
    prefix: &'a [u8],
    /// The first bucket not to read.
    end: [u8; 8],
    /// The index key of the last row listed before (the page token).
    after: Option<&'a [u8]>,
}

/// The next thing one tree gives a listing.
enum Head {
    /// A row in scope, with its index key.
    Row(Vec<u8>, UsageRecord),
    /// The tree read [`BUCKETS_PER_PAGE`] buckets; its rows go on at this
    /// index key (the prefix and a bucket, before every row in that bucket).
    Paused(Vec<u8>),
}

impl Head {
    fn key(&self) -> &[u8] {
        match self {
            Self::Row(key, _) | Self::Paused(key) => key,
        }
    }
}

/// One by-time tree's rows in scope after the page token, from bucket
/// `first` on, skipping from bucket to bucket: each bucket costs one seek,
/// whatever other tenants keep in it.
struct BucketScan<'a> {
    tree: &'a Tree,
    scan: &'a Scope<'a>,
    /// The bucket sought next, or none once the range is done.
    seek: Option<[u8; 8]>,
    rows: Option<sled::Iter>,
    seeks: usize,
}

impl<'a> BucketScan<'a> {
    fn new(tree: &'a Tree, scan: &'a Scope<'a>, first: [u8; 8]) -> Self {
        Self {
            tree,
            scan,
            seek: Some(first),
            rows: None,
            seeks: 0,
        }
    }

    fn next_head(&mut self) -> Result<Option<Head>, StoreError> {
        let Scope {
            scope,
            prefix,
            end,
            after,
        } = *self.scan;
        loop {
            if self.rows.is_none() {
                let Some(bucket) = self.seek.filter(|bucket| *bucket < end) else {
                    return Ok(None);
                };
                if self.seeks == BUCKETS_PER_PAGE {
                    self.seek = None;
                    return Ok(Some(Head::Paused([prefix, &bucket].concat())));
                }
                let mut from = [&bucket, scope].concat();
                // The first seek goes straight to the page token's row: its
                // by-time key is the bucket, the scope and the token's tail.
                if self.seeks == 0
                    && let Some(after) = after
                {
                    from.extend_from_slice(after.get(prefix.len() + 8..).unwrap_or_default());
                }
                self.seeks += 1;
                self.rows = Some(self.tree.range(from..));
            }
            let Some(entry) = self.rows.as_mut().and_then(Iterator::next) else {
                self.rows = None;
                self.seek = None;
                continue;
            };
            let (key, count) = entry?;
            let bucket: [u8; 8] = key
                .get(..8)
                .and_then(|b| b.try_into().ok())
                .ok_or_else(|| StoreError::Corrupt("usage time key".into()))?;
            if bucket >= end {
                self.rows = None;
                self.seek = None;
                continue;
            }
            let rest = &key[8..];
            if let Some(tail) = rest.strip_prefix(scope) {
                let index_key = [prefix, &bucket, tail].concat();
                if after.is_some_and(|after| index_key.as_slice() <= after) {
                    continue;
                }
                let record = decode_usage_time_key(&key, &count)?;
                return Ok(Some(Head::Row(index_key, record)));
            }
            // Past the scope's rows of this bucket (or short of them, in a
            // later bucket): seek the scope's rows in the next bucket.
            self.rows = None;
            self.seek = if rest < scope {
                Some(bucket)
            } else {
                u64::from_be_bytes(bucket)
                    .checked_add(1)
                    .map(u64::to_be_bytes)
            };
        }
    }
}

/// Every usage row with its by-org key and its count (8 bytes, big-endian),
/// as `tokenauth migrate` copies them: minute rows, then hour rows, then day
/// rows, each by bucket and then by-org key (`schema::READ_BACK_USAGE`
/// reads the copy back in the same order).
pub(super) fn rows_for_migration(
    trees: &Trees,
) -> impl Iterator<Item = Result<(Vec<u8>, Vec<u8>), StoreError>> + '_ {
    trees.usage_by_time.iter().flat_map(|tree| {
        tree.iter().map(|entry| {
            let (key, count) = entry?;
            let record = decode_usage_time_key(&key, &count)?;
            let [_, by_org, _] = usage_keys(&record);
            Ok((by_org, count.to_vec()))
        })
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

    /// A store written while rows were indexed by org and by token too
    /// opens without those indexes, and its rows list, add up and copy as
    /// before.
    #[tokio::test]
    async fn rows_of_the_indexed_layout_list_and_add_up() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = SledStore::open(dir.path()).unwrap();
            store.record_usage(&[row(1, 5)]).await.unwrap();
            let [_, by_org, by_token] = usage_keys(&row(1, 5));
            let [org_index, token_index] = keys::RETIRED_USAGE_INDEXES;
            let db = &store.trees.db;
            db.open_tree(org_index)
                .unwrap()
                .insert(by_org, &[])
                .unwrap();
            db.open_tree(token_index)
                .unwrap()
                .insert(by_token, &[])
                .unwrap();
            store.durable().await.unwrap();
        }
        crate::store::sled::wait_until_closed(dir.path());
        let store = SledStore::open(dir.path()).unwrap();
        let names = store.trees.db.tree_names();
        for retired in keys::RETIRED_USAGE_INDEXES {
            assert!(
                !names.iter().any(|name| name.as_ref() == retired.as_bytes()),
                "{retired} is dropped"
            );
        }

        store.record_usage(&[row(1, 2), row(2, 3)]).await.unwrap();
        let expected = vec![row(1, 7), row(2, 3)];
        for token_id in [None, Some(row(1, 0).token_id)] {
            let query = UsageQuery {
                org_id: "a".into(),
                token_id,
                start: None,
                end: None,
            };
            let page = store.list_usage(&query, None, 10).await.unwrap();
            assert_eq!(page.records, expected, "listed by token: {token_id:?}");
        }
        let copied: Vec<_> = rows_for_migration(&store.trees)
            .map(|row| u64::from_be_bytes(row.unwrap().1.try_into().unwrap()))
            .collect();
        assert_eq!(copied, [7, 3], "what migrate copies");
    }

    /// Listings read bucket by bucket from the by-time trees give the rows,
    /// the order and the page tokens the memory store gives from its
    /// indexes: for each organization and token, over ranges and page
    /// sizes, among other tenants' rows in the same buckets, at every
    /// resolution.
    #[tokio::test]
    async fn listings_match_the_indexed_order_and_cursors() {
        use crate::store::conformance::{every_usage_listing, usage_of_many_tenants};
        let dir = tempfile::tempdir().unwrap();
        let sled = SledStore::open(dir.path()).unwrap();
        let memory = crate::store::memory::MemoryStore::new();
        let rows = usage_of_many_tenants();
        for store in [&sled as &dyn Store, &memory] {
            store.record_usage(&rows).await.unwrap();
        }
        let listings = every_usage_listing(&sled).await;
        let listed: usize = listings
            .iter()
            .flat_map(|(_, _, pages)| pages)
            .map(|page| page.records.len())
            .sum();
        assert!(
            listed > 3 * rows.len(),
            "the listings found the rows: {listed}"
        );
        assert_eq!(listings, every_usage_listing(&memory).await);
    }

    /// A listing over more buckets than a page reads comes in pages of at
    /// most the rows asked, some fewer, each with a page token, and
    /// together they hold every row, in order, once: by organization and
    /// by token, at every resolution, among another organization's rows.
    #[tokio::test]
    async fn a_page_reads_a_bounded_number_of_buckets() {
        const HOUR: i64 = 60;
        let dir = tempfile::tempdir().unwrap();
        let sled = SledStore::open(dir.path()).unwrap();
        let memory = crate::store::memory::MemoryStore::new();
        let minutes = 3 * BUCKETS_PER_PAGE as i64;
        let other = |record: UsageRecord| UsageRecord {
            org_id: "b".into(),
            token_id: TokenId::from_bytes([2; 16]),
            ..record
        };
        let at = |resolution, minute, count| UsageRecord {
            resolution,
            ..row(minute, count)
        };
        // The organization's rows every other minute, another's in
        // between; hour and day rows alike, each bucket holding one.
        let rows: Vec<UsageRecord> = (0..minutes)
            .flat_map(|m| {
                let of = |record| if m % 2 == 0 { record } else { other(record) };
                [
                    of(at(Resolution::Minute, m, 1)),
                    of(at(Resolution::Hour, m * HOUR, 2)),
                    of(at(Resolution::Day, m * 24 * HOUR, 3)),
                ]
            })
            .collect();
        for store in [&sled as &dyn Store, &memory] {
            store.record_usage(&rows).await.unwrap();
        }
        for token_id in [None, Some(row(0, 0).token_id)] {
            let query = UsageQuery {
                org_id: "a".into(),
                token_id,
                start: None,
                end: None,
            };
            let whole = memory.list_usage(&query, None, 100_000).await.unwrap();
            assert_eq!(whole.records.len(), 3 * minutes as usize / 2);
            for limit in [7, 100_000] {
                let (mut listed, mut pages) = (Vec::new(), 0);
                let mut after: Option<Vec<u8>> = None;
                loop {
                    let page = sled
                        .list_usage(&query, after.as_deref(), limit)
                        .await
                        .unwrap();
                    // Each row has a bucket of its own in its tree.
                    assert!(page.records.len() <= limit.min(3 * BUCKETS_PER_PAGE));
                    pages += 1;
                    listed.extend(page.records);
                    match page.next {
                        Some(next) => after = Some(next),
                        None => break,
                    }
                }
                assert_eq!(listed, whole.records, "{token_id:?} by {limit}");
                assert!(pages > 1, "{pages} pages");
            }
        }
    }

    /// A page token cut short, as a tampered one may be, even inside its
    /// bucket, lists what the memory store lists after it: never an error.
    #[tokio::test]
    async fn a_page_token_cut_short_lists_as_every_store_does() {
        let dir = tempfile::tempdir().unwrap();
        let sled = SledStore::open(dir.path()).unwrap();
        let memory = crate::store::memory::MemoryStore::new();
        for store in [&sled as &dyn Store, &memory] {
            store
                .record_usage(&[row(1, 1), row(2, 1), row(3, 1)])
                .await
                .unwrap();
        }
        for token_id in [None, Some(row(0, 0).token_id)] {
            let query = UsageQuery {
                org_id: "a".into(),
                token_id,
                start: None,
                end: None,
            };
            let second = sled.list_usage(&query, None, 2).await.unwrap();
            let cursor = second.next.unwrap();
            for cut in 1..=cursor.len() {
                let after = Some(&cursor[..cut]);
                let page = sled.list_usage(&query, after, 10).await.unwrap();
                let expected = memory.list_usage(&query, after, 10).await.unwrap();
                assert_eq!(page, expected, "{token_id:?}, cut at {cut}");
            }
        }
    }
}
