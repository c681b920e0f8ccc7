//! The activity tables: audit events (written inside the change they
//! record, or alone for refusals) and their paged scan, and usage counts
//! with their upsert and paged scan, and each token's latest client
//! addresses.

use std::collections::HashMap;

use deadpool_postgres::GenericClient;

use crate::domain::{
    audit::{AuditEvent, AuditQuery},
    client_address::RecentAddresses,
    feed::{FeedCursor, FeedQuery, in_feed},
    ids::{EventId, TokenId},
    time::Timestamp,
    usage::{UsageQuery, UsageRecord, UsageUpkeep, roll_up},
};
use crate::store::{
    AuditPage, FeedPage, StoreError, UsagePage,
    keys::{
        audit_key, audit_scan_range, decode_usage_tail, prefix, sortable_i64, take_part, usage_keys,
    },
    records::{decode_audit, decode_client_addresses, encode_audit, encode_client_addresses},
};
use deadpool_postgres::Client;

/// Most audit rows one list call examines before returning a short page.
const MAX_SCAN_PER_PAGE: usize = 5_000;
/// Rows fetched per round trip while scanning the audit log.
const AUDIT_BATCH: i64 = 500;

/// Inserts `event` within a transaction.
pub(super) async fn insert_audit(
    client: &impl GenericClient,
    event: &AuditEvent,
) -> Result<(), StoreError> {
    let statement = client
        .prepare_cached("INSERT INTO audit (key, id, event) VALUES ($1, $2, $3)")
        .await?;
    client
        .execute(
            &statement,
            &[
                &audit_key(&event.org_id, event.id),
                &event.id.to_bytes().as_slice(),
                &encode_audit(event),
            ],
        )
        .await?;
    if in_feed(event.action) {
        insert_feed(client, event).await?;
    }
    Ok(())
}

/// Writes `event`'s feed entry, in the transaction that writes the event.
async fn insert_feed(client: &impl GenericClient, event: &AuditEvent) -> Result<(), StoreError> {
    let statement = client
        .prepare_cached("INSERT INTO feed (org_id, at_us, event) VALUES ($1, $2, $3)")
        .await?;
    client
        .execute(
            &statement,
            &[&event.org_id, &event.time.as_micros(), &encode_audit(event)],
        )
        .await?;
    Ok(())
}

const FEED_SELECT: &str = "SELECT xact, seq, event FROM feed \
     WHERE (xact, seq) > ($1, $2) \
     AND xact < pg_snapshot_xmin(pg_current_snapshot())::text::bigint";
const FEED_ORDER: &str = "ORDER BY xact, seq";

/// [`Store::read_feed`](crate::store::Store::read_feed): rows after `after`
/// written by transactions older than the oldest one still running (its
/// snapshot's xmin). Every transaction below it has ended, so the rows
/// served are final: none can appear later below them, whatever order the
/// writers committed in. The price: a transaction that stays open holds the
/// feed back until it ends (tokenauth's own are short).
pub(super) async fn read_feed(
    client: &impl GenericClient,
    query: &FeedQuery,
    after: FeedCursor,
    limit: usize,
) -> Result<FeedPage, StoreError> {
    let number = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    // Two statements, not one with an optional filter, so that each can
    // use its own index (an organization's rows, or all rows in order).
    let (after_major, after_minor) = (number(after.major), number(after.minor));
    let rows = match &query.org_id {
        Some(org) => {
            let statement = client
                .prepare_cached(&format!(
                    "{FEED_SELECT} AND org_id = $3 {FEED_ORDER} LIMIT $4"
                ))
                .await?;
            client
                .query(&statement, &[&after_major, &after_minor, org, &limit])
                .await?
        }
        None => {
            let statement = client
                .prepare_cached(&format!("{FEED_SELECT} {FEED_ORDER} LIMIT $3"))
                .await?;
            client
                .query(&statement, &[&after_major, &after_minor, &limit])
                .await?
        }
    };
    let mut page = FeedPage {
        events: Vec::new(),
        reached: after,
        examined: rows.len(),
    };
    let corrupt = || StoreError::Corrupt("feed position".into());
    for row in rows {
        let cursor = FeedCursor {
            major: u64::try_from(row.try_get::<_, i64>(0)?).map_err(|_| corrupt())?,
            minor: u64::try_from(row.try_get::<_, i64>(1)?).map_err(|_| corrupt())?,
        };
        page.reached = cursor;
        let event = decode_audit(row.try_get::<_, &[u8]>(2)?)?;
        if query.matches(&event) {
            page.events.push((cursor, event));
        }
    }
    Ok(page)
}

/// [`Store::feed_end`](crate::store::Store::feed_end): the last row
/// [`read_feed`] serves now, found backwards on the primary key.
pub(super) async fn feed_end(client: &impl GenericClient) -> Result<FeedCursor, StoreError> {
    let statement = client
        .prepare_cached(
            "SELECT xact, seq FROM feed WHERE xact < \
             pg_snapshot_xmin(pg_current_snapshot())::text::bigint \
             ORDER BY xact DESC, seq DESC LIMIT 1",
        )
        .await?;
    let Some(row) = client.query_opt(&statement, &[]).await? else {
        return Ok(FeedCursor::START);
    };
    let corrupt = || StoreError::Corrupt("feed position".into());
    Ok(FeedCursor {
        major: u64::try_from(row.try_get::<_, i64>(0)?).map_err(|_| corrupt())?,
        minor: u64::try_from(row.try_get::<_, i64>(1)?).map_err(|_| corrupt())?,
    })
}

/// Inserts `event` within a transaction unless its id is already in the
/// log (see [`Store::append_audit`]: a warning may be made more than once),
/// with its feed entry if the feed admits it and it was not there: a
/// second write of it writes nothing. Returns whether it wrote the entry.
pub(super) async fn append_audit_once(
    client: &impl GenericClient,
    event: &AuditEvent,
) -> Result<bool, StoreError> {
    let statement = client
        .prepare_cached(
            "INSERT INTO audit (key, id, event) VALUES ($1, $2, $3) ON CONFLICT (key) DO NOTHING",
        )
        .await?;
    let inserted = client
        .execute(
            &statement,
            &[
                &audit_key(&event.org_id, event.id),
                &event.id.to_bytes().as_slice(),
                &encode_audit(event),
            ],
        )
        .await?;
    let fed = inserted == 1 && in_feed(event.action);
    if fed {
        insert_feed(client, event).await?;
    }
    Ok(fed)
}

/// [`Store::list_audit`].
pub(super) async fn scan_audit(
    client: &Client,
    query: &AuditQuery,
    after: Option<EventId>,
    limit: usize,
) -> Result<AuditPage, StoreError> {
    let (low, mut high) = audit_scan_range(query, after);
    let statement = client
        .prepare_cached(
            "SELECT key, event FROM audit WHERE key >= $1 AND key < $2 \
             ORDER BY key DESC LIMIT $3",
        )
        .await?;
    let mut events = Vec::new();
    let mut last_examined = None;
    let mut scanned = 0;
    loop {
        let rows = client
            .query(&statement, &[&low, &high, &AUDIT_BATCH])
            .await?;
        for row in &rows {
            if events.len() == limit || scanned == MAX_SCAN_PER_PAGE {
                return Ok(AuditPage {
                    events,
                    next: last_examined,
                });
            }
            let event = decode_audit(row.try_get::<_, &[u8]>("event")?)?;
            scanned += 1;
            last_examined = Some(event.id);
            if query.matches(&event) {
                events.push(event);
            }
        }
        match rows.last() {
            Some(row) if rows.len() as i64 == AUDIT_BATCH => {
                high = row.try_get::<_, Vec<u8>>("key")?;
            }
            _ => return Ok(AuditPage { events, next: None }),
        }
    }
}

/// [`Store::record_usage`].
pub(super) async fn add_usage(
    client: &impl GenericClient,
    records: &[UsageRecord],
) -> Result<(), StoreError> {
    // One upsert may not touch a row twice: merge repeats first.
    let mut merged: HashMap<Vec<u8>, (Vec<u8>, i64, i16, u64)> = HashMap::new();
    for record in records {
        let [_, by_org, by_token] = usage_keys(record);
        let entry = merged.entry(by_org).or_insert((
            by_token,
            record.minute.as_micros(),
            record.resolution as i16,
            0,
        ));
        entry.3 = entry.3.saturating_add(record.count);
    }
    let mut org_keys = Vec::with_capacity(merged.len());
    let mut token_keys = Vec::with_capacity(merged.len());
    let mut minutes = Vec::with_capacity(merged.len());
    let mut resolutions = Vec::with_capacity(merged.len());
    let mut counts = Vec::with_capacity(merged.len());
    for (org_key, (token_key, minute, resolution, count)) in merged {
        org_keys.push(org_key);
        token_keys.push(token_key);
        minutes.push(minute);
        resolutions.push(resolution);
        counts.push(i64::try_from(count).unwrap_or(i64::MAX));
    }
    client
        .execute(
            "INSERT INTO usage (org_key, token_key, minute_us, resolution, count) \
             SELECT * FROM unnest($1::bytea[], $2::bytea[], $3::int8[], $4::int2[], $5::int8[]) \
             ON CONFLICT (org_key) DO UPDATE SET count = CASE \
               WHEN usage.count > 9223372036854775807 - EXCLUDED.count \
               THEN 9223372036854775807 ELSE usage.count + EXCLUDED.count END",
            &[&org_keys, &token_keys, &minutes, &resolutions, &counts],
        )
        .await?;
    Ok(())
}

/// [`Store::upkeep_usage`]: the rows taken, deleted and (for a roll-up)
/// added to their coarser buckets in one transaction. Rows another
/// replica's upkeep holds are skipped, not waited for (it takes them).
pub(super) async fn upkeep_usage(
    client: &mut Client,
    step: UsageUpkeep,
    limit: usize,
) -> Result<usize, StoreError> {
    let (of, into) = match step {
        UsageUpkeep::RollUp { from, .. } => (from, from.coarser()),
        UsageUpkeep::Prune { of, .. } => (of, None),
    };
    let tx = client.transaction().await?;
    let rows = tx
        .query(
            "DELETE FROM usage WHERE org_key IN ( \
               SELECT org_key FROM usage WHERE resolution = $1 AND minute_us < $2 \
               ORDER BY resolution, minute_us LIMIT $3 FOR UPDATE SKIP LOCKED) \
             RETURNING org_key, count",
            &[
                &(of as i16),
                &step.before().as_micros(),
                &i64::try_from(limit).unwrap_or(i64::MAX),
            ],
        )
        .await?;
    if let Some(into) = into {
        let taken = rows
            .iter()
            .map(|row| {
                let key: &[u8] = row.try_get(0)?;
                let count: i64 = row.try_get(1)?;
                let corrupt = || StoreError::Corrupt("usage key".into());
                let (org, tail) = take_part(key).ok_or_else(corrupt)?;
                let count = u64::try_from(count).unwrap_or(0).to_be_bytes();
                decode_usage_tail(org, None, tail, &count)
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        add_usage(&tx, &roll_up(&taken, into)).await?;
    }
    tx.commit().await?;
    Ok(rows.len())
}

/// [`Store::list_usage`].
pub(super) async fn scan_usage(
    client: &Client,
    query: &UsageQuery,
    after: Option<&[u8]>,
    limit: usize,
) -> Result<UsagePage, StoreError> {
    let (column, prefix) = match query.token_id {
        Some(id) => ("token_key", id.to_bytes().to_vec()),
        None => ("org_key", prefix(&[&query.org_id])),
    };
    let bound = |at: Option<Timestamp>, default: i64| {
        let mut key = prefix.clone();
        key.extend_from_slice(&sortable_i64(at.map_or(default, Timestamp::as_micros)));
        key
    };
    let low = bound(query.start, i64::MIN);
    let high = bound(query.end, i64::MAX);
    let (start, start_op) = match after {
        Some(after) if after >= low.as_slice() && after < high.as_slice() => (after, ">"),
        _ => (low.as_slice(), ">="),
    };
    let sql = format!(
        "SELECT {column}, count FROM usage WHERE {column} {start_op} $1 AND {column} < $2 \
         ORDER BY {column} LIMIT $3"
    );
    let fetch = i64::try_from(limit).unwrap_or(i64::MAX - 1) + 1;
    let rows = client.query(&sql, &[&start, &high, &fetch]).await?;
    let mut records = Vec::with_capacity(rows.len().min(limit));
    let mut last_key = None;
    for row in rows.iter().take(limit) {
        let key: &[u8] = row.try_get(0)?;
        let count: i64 = row.try_get(1)?;
        let tail = key
            .get(prefix.len()..)
            .ok_or_else(|| StoreError::Corrupt("usage key".into()))?;
        let count = u64::try_from(count).unwrap_or(0).to_be_bytes();
        records.push(decode_usage_tail(
            &query.org_id,
            query.token_id,
            tail,
            &count,
        )?);
        last_key = Some(key.to_vec());
    }
    let next = if rows.len() > limit { last_key } else { None };
    Ok(UsagePage { records, next })
}

/// The client addresses recorded for token `id`.
pub(super) async fn client_addresses(
    client: &impl GenericClient,
    id: TokenId,
) -> Result<RecentAddresses, StoreError> {
    let statement = client
        .prepare_cached("SELECT entries FROM client_addresses WHERE token_id = $1")
        .await?;
    match client
        .query_opt(&statement, &[&id.to_bytes().as_slice()])
        .await?
    {
        Some(row) => decode_client_addresses(row.try_get(0)?),
        None => Ok(RecentAddresses::default()),
    }
}

/// Merges the addresses seen into each token's row. The rows are made
/// first (empty, if missing) and then locked in id order, so that replicas
/// flushing the same tokens at once take turns instead of overwriting
/// each other's addresses (and cannot deadlock).
pub(super) async fn record_client_addresses(
    client: &mut Client,
    seen: &[(TokenId, RecentAddresses)],
) -> Result<(), StoreError> {
    let mut merged: std::collections::BTreeMap<[u8; 16], RecentAddresses> = Default::default();
    for (id, addresses) in seen {
        merged.entry(id.to_bytes()).or_default().merge(addresses);
    }
    if merged.is_empty() {
        return Ok(());
    }
    let ids: Vec<Vec<u8>> = merged.keys().map(|id| id.to_vec()).collect();
    let empty = encode_client_addresses(&RecentAddresses::default());
    let tx = client.transaction().await?;
    tx.execute(
        "INSERT INTO client_addresses (token_id, entries) \
         SELECT id, $2 FROM unnest($1::bytea[]) AS id ORDER BY id \
         ON CONFLICT (token_id) DO NOTHING",
        &[&ids, &empty],
    )
    .await?;
    let rows = tx
        .query(
            "SELECT token_id, entries FROM client_addresses WHERE token_id = ANY($1) \
             ORDER BY token_id FOR UPDATE",
            &[&ids],
        )
        .await?;
    let mut values = Vec::with_capacity(rows.len());
    let mut keys = Vec::with_capacity(rows.len());
    for row in rows {
        let key: Vec<u8> = row.try_get(0)?;
        let id: [u8; 16] = key
            .as_slice()
            .try_into()
            .map_err(|_| StoreError::Corrupt("client_addresses token id".into()))?;
        // A row that does not decode is replaced by what was seen (as on sled).
        let mut addresses = decode_client_addresses(row.try_get(1)?).unwrap_or_default();
        if let Some(seen) = merged.get(&id) {
            addresses.merge(seen);
        }
        values.push(encode_client_addresses(&addresses));
        keys.push(key);
    }
    tx.execute(
        "UPDATE client_addresses SET entries = u.entries \
         FROM unnest($1::bytea[], $2::bytea[]) AS u (token_id, entries) \
         WHERE client_addresses.token_id = u.token_id",
        &[&keys, &values],
    )
    .await?;
    tx.commit().await?;
    Ok(())
}
