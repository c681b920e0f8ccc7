//! What Checks leave behind, kept without a disk write on the Check path:
//! each token's last use and latest client addresses, and usage counts per
//! (token, permission, decision, minute). And what refused calls leave behind beyond the events recorded
//! as they happen: the follow-up events that count alike refusals, by
//! minute, and refusals deferred to keep them off a reply's timing
//! (`domain::refusals`, whose budgets live here with them; the recorder
//! decides, logs and writes refusals).
//!
//! A Check adds to in-memory maps (sharded by token, so concurrent Checks
//! rarely meet on a lock; last use at most once per token per second, see
//! `CachedToken::touch`; a client address when it differs from the
//! previous Check's, or once a second, see `CachedToken::moved_to`). A background task writes what gathered every flush
//! interval, and once more at shutdown. So `last_used_at` and usage lag by up
//! to one interval, and a crash loses at most the last interval's records,
//! never a token or a revocation. A minute's follow-ups are written at the
//! first flush after it ends, and at shutdown.

use std::{collections::HashMap, hash::Hash, net::IpAddr, sync::Arc, sync::Mutex, time::Duration};

use super::{cache::CachedToken, fast_hash::BuildFoldHasher};
use crate::{
    domain::{
        audit::{AuditEvent, AuditOutcome},
        caller::ActorRef,
        client_address::{DEFAULT_MAX_PENDING_TOKENS, RecentAddresses},
        ids::TokenId,
        permissions::Catalogue,
        refusals::{Admission, Payer, RefusalLimits, RefusalLog},
        time::Timestamp,
        token::Reason,
        usage::{DEFAULT_MAX_PENDING_COUNTS, Resolution, UsageRecord, minute_of},
    },
    store::{Store, StoreError},
};

const SHARDS: usize = 16;

type FastMap<K, V> = HashMap<K, V, BuildFoldHasher>;

/// Usage records per store write: small enough that a write (a sled
/// transaction) holds other reads off for milliseconds, not seconds.
pub const USAGE_RECORDS_PER_WRITE: usize = 500;

/// A map split into independently locked shards, chosen by token id.
struct Sharded<K, V> {
    shards: Vec<Mutex<FastMap<K, V>>>,
}

impl<K: Eq + Hash, V> Sharded<K, V> {
    fn new() -> Self {
        Self {
            shards: (0..SHARDS)
                .map(|_| Mutex::new(FastMap::default()))
                .collect(),
        }
    }

    fn shard(&self, token: TokenId) -> std::sync::MutexGuard<'_, FastMap<K, V>> {
        // Token ids end in 80 random bits; their last byte spreads evenly.
        let index = usize::from(token.to_bytes()[15]) % SHARDS;
        self.shards[index].lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Empties every shard, returning what they held.
    fn take(&self) -> Vec<(K, V)> {
        self.shards
            .iter()
            .flat_map(|shard| {
                let mut shard = shard.lock().unwrap_or_else(|e| e.into_inner());
                std::mem::take(&mut *shard).into_iter()
            })
            .collect()
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct UsageKey {
    token: TokenId,
    permission: u16,
    decision: Reason,
    minute: Timestamp,
}

struct UsageCount {
    count: u64,
    /// The token, for its organization when the count is written.
    token: Arc<CachedToken>,
}

/// The in-memory records of Checks, and their writer.
pub struct Recorder {
    catalogue: Catalogue,
    last_used: Sharded<TokenId, Timestamp>,
    usage: Sharded<UsageKey, UsageCount>,
    /// Most counts one usage shard holds: while the store takes no writes,
    /// the counts wait in memory, and this keeps them from growing without
    /// bound (a count's key is ~40 bytes, its entry ~100 with the map's).
    max_pending_per_shard: usize,
    /// Check decisions not counted since the last flush because the maps
    /// were full.
    uncounted: std::sync::atomic::AtomicU64,
    /// Client addresses seen since the last flush, per token.
    addresses: Sharded<TokenId, RecentAddresses>,
    /// Most tokens one address shard holds (each with at most
    /// `client_address::KEPT` addresses, ~250 bytes with the map's).
    max_pending_addresses_per_shard: usize,
    /// Client addresses not kept since the last flush because their map
    /// was full.
    addresses_dropped: std::sync::atomic::AtomicU64,
    refusals: RefusalLog,
}

/// Whether [`Recorder::note_check`] kept the Check's client address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use]
pub enum AddressNoted {
    /// Kept, not needed (no address, or the same as a moment ago), or
    /// already known.
    Kept,
    /// Not kept: the addresses waiting to be written filled their map.
    Dropped,
}

impl Recorder {
    pub fn new(catalogue: Catalogue, refusal_limits: RefusalLimits) -> Self {
        Self {
            catalogue,
            last_used: Sharded::new(),
            usage: Sharded::new(),
            max_pending_per_shard: DEFAULT_MAX_PENDING_COUNTS.div_ceil(SHARDS),
            uncounted: std::sync::atomic::AtomicU64::new(0),
            addresses: Sharded::new(),
            max_pending_addresses_per_shard: DEFAULT_MAX_PENDING_TOKENS.div_ceil(SHARDS),
            addresses_dropped: std::sync::atomic::AtomicU64::new(0),
            refusals: RefusalLog::new(refusal_limits),
        }
    }

    /// Holds client addresses for at most `tokens` tokens in memory between
    /// two writes (at least one per shard); an address of another token is
    /// dropped, and counted.
    pub fn with_max_pending_address_tokens(mut self, tokens: usize) -> Self {
        self.max_pending_addresses_per_shard = tokens.div_ceil(SHARDS).max(1);
        self
    }

    /// Holds at most `counts` usage counts in memory between two writes
    /// (at least one per shard); a decision that would need another is
    /// not counted, and the next flush logs how many were not.
    pub fn with_max_pending_counts(mut self, counts: usize) -> Self {
        self.max_pending_per_shard = counts.div_ceil(SHARDS).max(1);
        self
    }

    /// The refusal budgets: which refusals are recorded, and when.
    pub fn refusals(&self) -> &RefusalLog {
        &self.refusals
    }

    /// Whether a refusal's budget lets it be recorded; if so, counts in the
    /// drops before it and logs it. A refusal that is not recorded is
    /// counted, and not logged either: the log takes what the audit log
    /// takes, so that neither grows with a flood.
    pub fn admit_refusal(&self, event: &mut AuditEvent, payer: &Payer) -> bool {
        let Admission::Record { dropped } = self.refusals.admit(event, payer) else {
            return false;
        };
        event.dropped_before = dropped;
        let message = match event.outcome {
            AuditOutcome::Unauthenticated => "management call unauthenticated",
            AuditOutcome::RetiredSecretPresented => {
                "a secret replaced by rotation was presented after its grace period"
            }
            AuditOutcome::PermissionDenied | AuditOutcome::Succeeded => "management call refused",
        };
        // Plain values only, and a field that does not apply is left out.
        let actor = (event.actor != ActorRef::default()).then(|| event.actor.label());
        let targets = (!event.target_token_ids.is_empty()).then(|| {
            event
                .target_token_ids
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(",")
        });
        tracing::warn!(
            method = event.method.name(), org_id = non_empty(&event.org_id),
            actor = actor.as_deref(), target_token_ids = targets.as_deref(),
            peer = non_empty(&event.peer), peer_source = event.peer_source.name(),
            request_id = non_empty(&event.request_id), detail = %event.detail,
            dropped_before = event.dropped_before, "{message}"
        );
        true
    }

    /// Notes one Check decision on a found token, made for a client at
    /// `client` when the caller said.
    pub fn note_check(
        &self,
        token: &Arc<CachedToken>,
        permission: u16,
        decision: Reason,
        now: Timestamp,
        client: Option<IpAddr>,
    ) -> AddressNoted {
        let id = token.record.id;
        let touched = token.touch(now.as_secs());
        if touched {
            let mut shard = self.last_used.shard(id);
            let slot = shard.entry(id).or_insert(now);
            *slot = (*slot).max(now);
        }
        let noted = match client {
            // `moved_to` first, so that the tag follows the address even
            // in a second that was touched already.
            Some(address) if token.moved_to(address) || touched => {
                self.note_address(id, address, now)
            }
            _ => AddressNoted::Kept,
        };
        let key = UsageKey {
            token: id,
            permission,
            decision,
            minute: minute_of(now),
        };
        let mut shard = self.usage.shard(id);
        if let Some(counted) = shard.get_mut(&key) {
            counted.count += 1;
        } else if shard.len() < self.max_pending_per_shard {
            shard.insert(
                key,
                UsageCount {
                    count: 1,
                    token: Arc::clone(token),
                },
            );
        } else {
            self.uncounted
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        noted
    }

    fn note_address(&self, id: TokenId, address: IpAddr, now: Timestamp) -> AddressNoted {
        let mut shard = self.addresses.shard(id);
        if let Some(recent) = shard.get_mut(&id) {
            recent.touch(address, now);
        } else if shard.len() < self.max_pending_addresses_per_shard {
            shard.entry(id).or_default().touch(address, now);
        } else {
            self.addresses_dropped
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return AddressNoted::Dropped;
        }
        AddressNoted::Kept
    }

    /// A use noted but not yet written, if any.
    pub fn pending_last_used(&self, id: TokenId) -> Option<Timestamp> {
        self.last_used.shard(id).get(&id).copied()
    }

    /// Client addresses noted but not yet written (empty if none).
    pub fn pending_addresses(&self, id: TokenId) -> RecentAddresses {
        self.addresses
            .shard(id)
            .get(&id)
            .cloned()
            .unwrap_or_default()
    }

    /// Writes everything noted so far; on failure keeps it for the next try.
    pub async fn flush(&self, store: &dyn Store) -> Result<(), StoreError> {
        let refusals = self.flush_follow_ups(store).await;
        let addresses = self.flush_addresses(store).await;
        let wrote_addresses = matches!(addresses, Ok(true));
        let usage = self.flush_usage(store, wrote_addresses).await;
        refusals.and(addresses).and(usage)
    }

    /// Records the refusals deferred since the last flush, then appends the
    /// follow-ups of ended minutes (like every refusal, without a flush of
    /// its own).
    async fn flush_follow_ups(&self, store: &dyn Store) -> Result<(), StoreError> {
        self.record_deferred(store).await;
        let untracked = self.refusals.take_untracked_drops();
        if untracked > 0 {
            tracing::warn!(
                dropped = untracked,
                "refusals were neither recorded nor counted in an organization's audit log \
                 (too many organizations with unreported drops)"
            );
        }
        let mut due = self.refusals.take_follow_ups(Timestamp::now()).into_iter();
        while let Some(event) = due.next() {
            if let Err(error) = store.append_audit(&event).await {
                self.refusals
                    .requeue(std::iter::once(event).chain(due).collect());
                return Err(error);
            }
            let repeat_of = event.repeat_of.map(|id| id.to_string());
            tracing::warn!(
                org_id = non_empty(&event.org_id), method = event.method.name(),
                outcome = event.outcome.name(), detail = %event.detail,
                peer = non_empty(&event.peer), repeats = event.count,
                repeat_of = repeat_of.as_deref(), dropped_before = event.dropped_before,
                "refusals repeated"
            );
        }
        Ok(())
    }

    /// Decides on, logs and appends the refusals deferred so far.
    async fn record_deferred(&self, store: &dyn Store) {
        for (mut event, payer) in self.refusals.take_deferred() {
            if self.admit_refusal(&mut event, &payer)
                && let Err(error) = store.append_audit(&event).await
            {
                tracing::error!(%error, "writing a refusal to the audit log failed");
            }
        }
    }

    /// `wrote_before`: this flush wrote something already, which the
    /// flush of the store at the end must make durable.
    async fn flush_usage(&self, store: &dyn Store, wrote_before: bool) -> Result<(), StoreError> {
        let uncounted = self.uncounted.swap(0, std::sync::atomic::Ordering::Relaxed);
        if uncounted > 0 {
            tracing::warn!(
                uncounted,
                "Check decisions were not counted in usage: the counts waiting to be written \
                 reached usage.max_pending_counts"
            );
        }
        let uses = self.last_used.take();
        let wrote_uses = wrote_before || !uses.is_empty();
        if wrote_uses && let Err(error) = store.record_last_used(&uses).await {
            for (id, at) in uses {
                let mut shard = self.last_used.shard(id);
                let slot = shard.entry(id).or_insert(at);
                *slot = (*slot).max(at);
            }
            return Err(error);
        }
        let counts = self.usage.take();
        if counts.is_empty() {
            return if wrote_uses {
                store.durable().await
            } else {
                Ok(())
            };
        }
        let records: Vec<UsageRecord> = counts
            .iter()
            .map(|(key, value)| UsageRecord {
                org_id: value.token.record.org_id.clone(),
                token_id: key.token,
                permission: self
                    .catalogue
                    .name(key.permission)
                    .unwrap_or("unknown")
                    .to_owned(),
                decision: key.decision,
                minute: key.minute,
                resolution: Resolution::Minute,
                count: value.count,
            })
            .collect();
        // In chunks, each written all or nothing: a sled transaction holds
        // off every other read of the database while it commits, and one of
        // the ~200,000 records a busy interval gathers held Check's store
        // reads for seconds.
        for (chunk, start) in records
            .chunks(USAGE_RECORDS_PER_WRITE)
            .zip((0..).step_by(USAGE_RECORDS_PER_WRITE))
        {
            if let Err(error) = store.record_usage(chunk).await {
                // This chunk and the rest were not applied: keep their counts
                // for the next try.
                for (key, value) in counts.into_iter().skip(start) {
                    self.usage
                        .shard(key.token)
                        .entry(key)
                        .or_insert_with(|| UsageCount {
                            count: 0,
                            token: Arc::clone(&value.token),
                        })
                        .count += value.count;
                }
                return Err(error);
            }
        }
        // Applied; if this flush fails the next one carries them to disk.
        store.durable().await
    }

    /// Writes the client addresses noted so far (made durable with the
    /// usage that follows); on failure keeps them for the next try. True
    /// when it wrote some.
    async fn flush_addresses(&self, store: &dyn Store) -> Result<bool, StoreError> {
        let dropped = self
            .addresses_dropped
            .swap(0, std::sync::atomic::Ordering::Relaxed);
        if dropped > 0 {
            tracing::warn!(
                dropped,
                "client addresses of Checks were not kept: the tokens with addresses waiting \
                 to be written reached usage.max_pending_client_addresses"
            );
        }
        let seen = self.addresses.take();
        if seen.is_empty() {
            return Ok(false);
        }
        if let Err(error) = store.record_client_addresses(&seen).await {
            for (id, recent) in seen {
                self.addresses
                    .shard(id)
                    .entry(id)
                    .or_default()
                    .merge(&recent);
            }
            return Err(error);
        }
        Ok(true)
    }

    /// Flushes every `interval` until `stop` completes. A flush under way
    /// is never cut short (its records are out of the maps while it runs),
    /// so the caller awaits this and then flushes once more: stopping records
    /// the deferred refusals and ends the refusals' current minute, so that
    /// flush writes its follow-ups.
    pub async fn run(
        self: Arc<Self>,
        store: Arc<dyn Store>,
        interval: Duration,
        stop: impl std::future::Future<Output = ()>,
    ) {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(stop);
        loop {
            let stopping = tokio::select! {
                _ = ticker.tick() => false,
                () = &mut stop => true,
            };
            if stopping {
                // Deferred refusals first, so that their repeats too are in
                // the minute closed here.
                self.record_deferred(store.as_ref()).await;
                self.refusals.close_minute(Timestamp::now());
                return;
            }
            if let Err(error) = self.flush(store.as_ref()).await {
                tracing::warn!(%error, "writing usage and last-used records failed; will retry");
            }
        }
    }
}

/// `text`, or nothing when it is empty: a log field that does not apply is
/// left out rather than printed empty.
fn non_empty(text: &str) -> Option<&str> {
    (!text.is_empty()).then_some(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        config::Config,
        domain::{client_address::KEPT, token::test_record, usage::UsageQuery},
        store::sled::SledStore,
    };

    /// A flush larger than one write, whose second write fails: the retry
    /// writes what was not written, and nothing twice.
    #[tokio::test]
    async fn a_failed_flush_keeps_what_it_did_not_write_and_writes_nothing_twice() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        let catalogue = Config::default().policy().unwrap().catalogue;
        let (_, permission) = catalogue.check_level("test_api:run").unwrap();
        let token = Arc::new(CachedToken::new(test_record(1, "org")));
        let recorder = Recorder::new(
            catalogue,
            RefusalLimits {
                per_caller: 1,
                outside: 1,
            },
        );
        // One Check in each of more minutes than two writes hold: a key each.
        let minutes = 2 * USAGE_RECORDS_PER_WRITE + 7;
        for minute in 0..minutes {
            let at = Timestamp::from_micros(i64::try_from(minute).unwrap() * 60_000_000);
            let _ = recorder.note_check(&token, permission, Reason::Ok, at, None);
        }
        store.fail_usage_write_after(1);
        assert!(recorder.flush(&store).await.is_err());
        recorder.flush(&store).await.unwrap();

        let query = UsageQuery {
            org_id: "org".into(),
            token_id: Some(token.record.id),
            start: None,
            end: None,
        };
        let mut counts = Vec::new();
        let mut after = None;
        loop {
            let page = store
                .list_usage(&query, after.as_deref(), 500)
                .await
                .unwrap();
            counts.extend(page.records.iter().map(|r| r.count));
            match page.next {
                Some(next) => after = Some(next),
                None => break,
            }
        }
        assert_eq!(counts.len(), minutes, "every minute's count, once");
        assert!(counts.iter().all(|&c| c == 1), "none counted twice");
    }

    /// While writes fail, counts wait in memory, and no more of them than
    /// the bound: Checks of a new key beyond it are not counted; Checks of
    /// a key already waiting still are.
    #[tokio::test]
    async fn counts_waiting_for_the_store_stay_within_their_bound() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        let catalogue = Config::default().policy().unwrap().catalogue;
        let (_, permission) = catalogue.check_level("test_api:run").unwrap();
        let token = Arc::new(CachedToken::new(test_record(1, "org")));
        let limits = RefusalLimits {
            per_caller: 1,
            outside: 1,
        };
        // One token: every count lands in one shard, which holds 2.
        let recorder = Recorder::new(catalogue, limits).with_max_pending_counts(2 * SHARDS);
        let minute = |m: i64| Timestamp::from_micros(m * 60_000_000);
        for m in 0..1_000 {
            let _ = recorder.note_check(&token, permission, Reason::Ok, minute(m), None);
        }
        let _ = recorder.note_check(&token, permission, Reason::Ok, minute(1), None);
        let query = UsageQuery {
            org_id: "org".into(),
            token_id: None,
            start: None,
            end: None,
        };
        store.fail_usage_write_after(0);
        assert!(recorder.flush(&store).await.is_err());
        recorder.flush(&store).await.unwrap();
        let page = store.list_usage(&query, None, 500).await.unwrap();
        let counts: Vec<(i64, u64)> = page
            .records
            .iter()
            .map(|r| (r.minute.as_micros() / 60_000_000, r.count))
            .collect();
        assert_eq!(counts, vec![(0, 1), (1, 2)]);
    }

    /// A flood of addresses for one token keeps its latest few; a flood of
    /// tokens fills the map up to its bound and no further, and what does
    /// not fit is dropped (and said so), never waited for. What was kept
    /// is written by the flush.
    #[tokio::test]
    async fn client_addresses_wait_within_their_bound_and_are_written() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        let catalogue = Config::default().policy().unwrap().catalogue;
        let (_, permission) = catalogue.check_level("test_api:run").unwrap();
        let limits = RefusalLimits {
            per_caller: 1,
            outside: 1,
        };
        // One token per shard.
        let recorder = Recorder::new(catalogue, limits).with_max_pending_address_tokens(SHARDS);
        let at = |s: i64| Timestamp::from_micros(s * 1_000_000);
        let address = |n: u32| IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + n));
        // Tokens 1..=48: three per shard (by the id's last byte).
        let tokens: Vec<_> = (1..=48u8)
            .map(|n| Arc::new(CachedToken::new(test_record(n, "org"))))
            .collect();
        let first = &tokens[0];
        // Many addresses within one second: each differs from the last.
        for n in 0..1_000 {
            let noted = recorder.note_check(first, permission, Reason::Ok, at(1), Some(address(n)));
            assert_eq!(noted, AddressNoted::Kept);
        }
        let pending = recorder.pending_addresses(first.record.id);
        let kept: Vec<_> = pending.entries().iter().map(|e| e.address).collect();
        assert_eq!(kept.len(), KEPT);
        assert!(kept.contains(&address(999)), "the latest is kept");
        let mut dropped = 0;
        for token in &tokens[1..] {
            let noted = recorder.note_check(token, permission, Reason::Ok, at(2), Some(address(7)));
            dropped += usize::from(noted == AddressNoted::Dropped);
        }
        assert_eq!(dropped, tokens.len() - SHARDS, "one token per shard kept");

        recorder.flush(&store).await.unwrap();
        let mut written = 0;
        for token in &tokens {
            written += usize::from(
                !store
                    .client_addresses(token.record.id)
                    .await
                    .unwrap()
                    .is_empty(),
            );
        }
        assert_eq!(written, SHARDS);
        assert_eq!(
            store.client_addresses(first.record.id).await.unwrap(),
            pending
        );
        assert!(recorder.pending_addresses(first.record.id).is_empty());
        // Once written, the map has room again.
        let late = &tokens[47];
        let noted = recorder.note_check(late, permission, Reason::Ok, at(3), Some(address(8)));
        assert_eq!(noted, AddressNoted::Kept);
    }
}
