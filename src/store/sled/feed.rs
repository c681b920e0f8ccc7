//! The change feed on sled: `feed` maps a sequence number (big-endian, so
//! that keys sort as numbers) to a change's event, written in the change's
//! transaction under the write lock, so that numbers follow commit order.
//! Cursors are `(0, sequence)`. `feed_by_org` indexes the entries by
//! organization, so that a watcher of one reads only its own.

use sled::Tree;

use crate::domain::{
    feed::{FeedCursor, FeedQuery},
    time::Timestamp,
};
use crate::store::{FeedPage, StoreError, keys, records::decode_audit};

fn seq_of(key: &[u8]) -> Result<u64, StoreError> {
    <[u8; 8]>::try_from(key)
        .map(u64::from_be_bytes)
        .map_err(|_| StoreError::Corrupt("feed key".into()))
}

/// The number the next entry gets: one past the last. Pruning always keeps
/// the last entry, so that numbers are never given twice.
pub(super) fn next_seq(feed: &Tree) -> Result<u64, StoreError> {
    // Sequence 0 is never given: cursor (0, 0) is the start of the feed.
    Ok(match feed.last()? {
        Some((key, _)) => seq_of(&key)? + 1,
        None => 1,
    })
}

/// The cursor of the last entry (pruning keeps it, see [`next_seq`]).
pub(super) fn end(feed: &Tree) -> Result<FeedCursor, StoreError> {
    Ok(FeedCursor {
        major: 0,
        minor: next_seq(feed)? - 1,
    })
}

/// The `feed_by_org` key of entry `seq` of `org`.
pub(super) fn org_key(org: &str, seq: u64) -> Vec<u8> {
    let mut key = keys::prefix(&[org]);
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

/// Up to `limit` entries after `after` (of `query`'s organization, if it
/// names one), those matching `query` decoded.
pub(super) fn read(
    feed: &Tree,
    by_org: &Tree,
    query: &FeedQuery,
    after: FeedCursor,
    limit: usize,
) -> Result<FeedPage, StoreError> {
    // A cursor of another store (a PostgreSQL one) is past every sled entry.
    if after.major > 0 {
        return Ok(FeedPage {
            events: Vec::new(),
            reached: after,
            examined: 0,
        });
    }
    let start = after.minor.saturating_add(1).to_be_bytes();
    let mut page = FeedPage {
        events: Vec::new(),
        reached: after,
        examined: 0,
    };
    let mut take = |seq: u64, value: Option<sled::IVec>| -> Result<(), StoreError> {
        let cursor = FeedCursor {
            major: 0,
            minor: seq,
        };
        page.reached = cursor;
        page.examined += 1;
        // An entry pruned between the index and the read is past retention.
        if let Some(value) = value {
            let event = decode_audit(&value)?;
            if query.matches(&event) {
                page.events.push((cursor, event));
            }
        }
        Ok(())
    };
    match &query.org_id {
        Some(org) => {
            let low = org_key(org, after.minor.saturating_add(1));
            let high = org_key(org, u64::MAX);
            for entry in by_org.range(low..=high).take(limit) {
                let (key, _) = entry?;
                let seq = seq_of(&key[key.len().saturating_sub(8)..])?;
                take(seq, feed.get(seq.to_be_bytes())?)?;
            }
        }
        None => {
            for entry in feed.range(start..).take(limit) {
                let (key, value) = entry?;
                take(seq_of(&key)?, Some(value))?;
            }
        }
    }
    Ok(page)
}

/// Deletes the entries of events older than `before`, oldest first, but
/// never the last one (see [`next_seq`]).
pub(super) fn prune(feed: &Tree, by_org: &Tree, before: Timestamp) -> Result<usize, StoreError> {
    let Some((last, _)) = feed.last()? else {
        return Ok(0);
    };
    let mut pruned = 0;
    for entry in feed.range(..last) {
        let (key, value) = entry?;
        let event = decode_audit(&value)?;
        if event.time >= before {
            break;
        }
        // The index entry first: one left behind by a crash would point
        // at nothing, which a read skips; the other way round it would
        // never be pruned.
        by_org.remove(org_key(&event.org_id, seq_of(&key)?))?;
        feed.remove(key)?;
        pruned += 1;
    }
    Ok(pruned)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{
        audit::{AuditAction, AuditEvent, AuditOutcome, PeerSource},
        caller::{ActorRef, Method},
        ids::EventId,
    };
    use crate::store::records::encode_audit;

    fn event_at(micros: i64) -> Vec<u8> {
        let time = Timestamp::from_micros(micros);
        encode_audit(&AuditEvent {
            id: EventId::first_at(time),
            time,
            org_id: "org-1".into(),
            workspace_id: String::new(),
            actor: ActorRef::default(),
            action: AuditAction::Issued,
            target_token_ids: Vec::new(),
            kind: None,
            outcome: AuditOutcome::Succeeded,
            method: Method::IssueToken,
            detail: String::new(),
            peer: String::new(),
            peer_source: PeerSource::Unknown,
            proxy_peer: String::new(),
            request_id: String::new(),
            count: 1,
            repeat_of: None,
            dropped_before: 0,
        })
    }

    #[test]
    fn pruning_keeps_the_last_entry_so_that_numbers_are_never_given_twice() {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let feed = db.open_tree("feed").unwrap();
        let by_org = db.open_tree("feed_by_org").unwrap();
        assert_eq!(next_seq(&feed).unwrap(), 1);
        for seq in 1..=3u64 {
            feed.insert(seq.to_be_bytes(), event_at(1_000 * seq as i64))
                .unwrap();
            by_org.insert(org_key("org-1", seq), &[]).unwrap();
        }
        assert_eq!(
            prune(&feed, &by_org, Timestamp::from_micros(2_500)).unwrap(),
            2
        );
        assert_eq!(
            prune(&feed, &by_org, Timestamp::from_micros(i64::MAX)).unwrap(),
            0
        );
        assert_eq!((feed.len(), by_org.len()), (1, 1));
        assert_eq!(next_seq(&feed).unwrap(), 4);
        for org_id in [None, Some("org-1".to_owned())] {
            let query = FeedQuery {
                org_id,
                actions: Vec::new(),
            };
            let page = read(&feed, &by_org, &query, FeedCursor::START, 10).unwrap();
            assert_eq!(page.reached, FeedCursor { major: 0, minor: 3 });
            assert_eq!(page.events.len(), 1);
        }
    }
}
