//! The PostgreSQL store, shared by several replicas.
//!
//! Tables (see `MIGRATIONS`): `members` (an organization's members and
//! their roles, see `members.rs`), `tokens` (the record in the same encoding as
//! sled's, plus the columns that listing filters on), `digests` (digest ->
//! token), `audit` and `usage` (keyed by the same byte keys as sled's trees,
//! so that order and cursors are the same on both backends), `last_used`,
//! `client_addresses`,
//! `pepper_checks`, and the revocation log: `revocation_clock` (one row, a
//! counter) and `revocations` (seq -> the digests a change took out of
//! service).
//!
//! Each change runs in one transaction with its audit event (a large
//! RevokeAll in several, see [`Store::revoke_all`]). Changes that
//! take secrets out of service (revoke, revoke-all, rotate) also bump the
//! clock and append to the log in that transaction. Bumping the clock's one
//! row serialises them, so log entries become visible in sequence order with
//! no gaps, and a reader that has seen every entry up to `n` knows it missed
//! none. Replicas learn of entries by LISTEN/NOTIFY, and independently by
//! reading the log every `poll_interval`; a replica whose cache has not been
//! proven fresh for `max_staleness` stops trusting it (see [`Invalidation`]).
//!
//! Every transaction commits with PostgreSQL's default `synchronous_commit`,
//! so a returned write is durable and [`Store::durable`] has nothing to wait
//! for. Refusal events, which callers do not wait for, are written with
//! `synchronous_commit = off`, so a flood of refusals cannot cost a WAL flush
//! each.
//!
//! This file holds the store and its `Store` impl; `tokens.rs` the parts of
//! the token writes (advisory locks, quota counts, the revocation log append,
//! RevokeAll's session and steps, the listing filter), `activity.rs` the
//! audit and usage tables, `inventory.rs` the whole-table counts and walks.

mod activity;
mod connect;
mod feed;
mod inventory;
mod members;
mod rows;
pub(super) mod schema;
#[cfg(test)]
mod tests;
mod tokens;
mod webhooks;

pub use self::connect::{FeedTiming, PostgresSettings, Transport, transport};
pub use self::schema::schema_version;
use self::{
    activity::{
        add_usage, append_audit_once, feed_end, insert_audit, read_feed, scan_audit, scan_usage,
        upkeep_usage,
    },
    connect::connection_config,
    feed::{Pools, clock, follow_revocations, read_timeout},
    inventory::{count_tokens, scan_unrevoked},
    rows::{bytes16, digests_of, record_of},
    schema::migrate,
    tokens::{
        EXPIRY, Filter, LOCK_ORG_SHARED, OrgSession, TRY_LEASE_LOCK, log_revocation, quota_lock,
        quota_reached, revoke_all_step, update_record,
    },
};
use std::{collections::HashMap, path::Path, sync::Mutex};

use async_trait::async_trait;
use deadpool_postgres::{GenericClient, Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio::{
    sync::mpsc::{UnboundedReceiver, unbounded_channel},
    task::JoinHandle,
    time::Instant,
};
use tokio_postgres::NoTls;

use super::{
    AuditPage, FeedBell, FeedPage, InsertOutcome, Invalidation, Lease, LeaseKey, MemberChange,
    MemberPrecondition, MemberRemoval, Page, PageRequest, Revocation, RevokedAll, RotateOutcome,
    Rotation, Store, StoreError, TokenCounts, TokenQuery, UsagePage,
    keyed_locks::KeyedLocks,
    records::{encode_token, kind_number},
};
use crate::domain::{
    audit::{AuditEvent, AuditQuery},
    changes::{RevokeAllProgress, revoke_record, rotate_record},
    client_address::RecentAddresses,
    feed::{FeedCursor, FeedQuery, in_feed},
    ids::{EventId, TokenId},
    member::{Member, MemberKey, MemberPage, MemberPageRequest},
    quota::Quotas,
    secret::Digest,
    time::Timestamp,
    token::TokenRecord,
    usage::{UsageQuery, UsageRecord, UsageUpkeep},
};

/// A [`Store`] in a PostgreSQL database shared by several replicas.
pub struct PostgresStore {
    pool: Pool,
    invalidations: Mutex<Option<UnboundedReceiver<Invalidation>>>,
    feed: JoinHandle<()>,
    /// Issues of one quota's tokens, and RevokeAlls of one organisation,
    /// wait for each other here, each holding a pooled connection only once
    /// it is its turn, rather than while it waits for the advisory lock: a
    /// member's flood of issues or RevokeAlls would otherwise take the whole
    /// pool, and with it every other organisation's calls.
    local_locks: KeyedLocks,
    /// Rung after this replica commits feed entries (others' are polled).
    bell: FeedBell,
}

impl Drop for PostgresStore {
    fn drop(&mut self) {
        self.feed.abort();
    }
}

impl PostgresStore {
    /// Connects, brings the schema up to date, and starts following the
    /// revocation log.
    pub async fn open(settings: &PostgresSettings) -> Result<Self, StoreError> {
        let (config, tls) = connection_config(settings)?;
        let new_pool = |size: usize, config: &tokio_postgres::Config| {
            let manager_config = ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            };
            let manager = match &tls {
                Some(tls) => Manager::from_config(config.clone(), tls.clone(), manager_config),
                None => Manager::from_config(config.clone(), NoTls, manager_config),
            };
            Pool::builder(manager)
                .max_size(size)
                .runtime(Runtime::Tokio1)
                .wait_timeout(Some(settings.connect_timeout))
                .create_timeout(Some(settings.connect_timeout))
                .recycle_timeout(Some(settings.connect_timeout))
                .build()
                .map_err(StoreError::unavailable)
        };
        let pool = new_pool(settings.pool_size, &config)?;
        // The revocation log is read over a connection of its own: requests
        // that hold every pooled connection (writes waiting on row locks, a
        // burst of cache misses) must not stop this replica from proving its
        // cache fresh, or every Check would then queue for the pool as well.
        // Its statements also end on the server's side, well after the
        // follower has given up on them (so that its own timeout, which
        // counts towards skipping ahead, always fires first).
        let mut feed_config = config.clone();
        let options = feed_config.get_options().unwrap_or_default().to_owned();
        let statement_timeout = 4 * read_timeout(&settings.feed);
        feed_config.options(
            format!(
                "{options} -c statement_timeout={}",
                statement_timeout.as_millis()
            )
            .trim_start(),
        );
        let feed_pool = new_pool(1, &feed_config)?;
        migrate(&pool).await?;
        // The first window of trust starts where the read that vouches for
        // it does: revocations committed after this instant are in the log
        // after `seen`, and the follower's first read applies them.
        let read_started = Instant::now();
        let seen = clock(&pool.get().await?).await?;
        let (sender, receiver) = unbounded_channel();
        let feed = tokio::spawn(follow_revocations(
            Pools {
                feed: feed_pool,
                prune: pool.clone(),
            },
            (config, tls),
            (seen, read_started),
            sender,
            settings.feed.clone(),
        ));
        Ok(Self {
            pool,
            invalidations: Mutex::new(Some(receiver)),
            feed,
            local_locks: KeyedLocks::default(),
            bell: FeedBell::default(),
        })
    }

    pub(super) async fn client(&self) -> Result<deadpool_postgres::Client, StoreError> {
        Ok(self.pool.get().await?)
    }

    /// Passes `outcome` on, ringing the bell if it is of a committed change.
    fn rung<T>(&self, outcome: Result<T, StoreError>) -> Result<T, StoreError> {
        if outcome.is_ok() {
            self.bell.ring();
        }
        outcome
    }
}

#[async_trait]
impl Store for PostgresStore {
    async fn insert_token(
        &self,
        record: &TokenRecord,
        quotas: &Quotas,
        member: &MemberPrecondition,
        event: &AuditEvent,
    ) -> Result<InsertOutcome, StoreError> {
        let quota_lock = quota_lock(record, quotas);
        let _in_process = match &quota_lock {
            Some((class, key)) => Some(self.local_locks.exclusive(&format!("{class} {key}")).await),
            None => None,
        };
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let lock = tx.prepare_cached(LOCK_ORG_SHARED).await?;
        tx.execute(&lock, &[&record.org_id]).await?;
        // Under the organization's lock, which a member change takes
        // exclusively: the record read here stays until this commits.
        if let Some(key) = member.key()
            && !member.holds(members::member(&tx, key).await?.as_ref())
        {
            return Ok(InsertOutcome::MemberChanged);
        }
        if let Some(lock) = quota_lock
            && let Some(reached) = quota_reached(&tx, record, quotas, lock).await?
        {
            // Dropping the transaction rolls it back.
            return Ok(InsertOutcome::QuotaReached(reached));
        }
        let insert = tx
            .prepare_cached(
                "INSERT INTO tokens (id, org_id, workspace_id, owner_user_id, kind, \
                 expires_at_us, revoked_at_us, record) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            )
            .await?;
        let id = record.id.to_bytes();
        tx.execute(
            &insert,
            &[
                &id.as_slice(),
                &record.org_id,
                &record.workspace_id,
                &record.owner_user_id,
                &(kind_number(record.kind) as i16),
                &record.expires_at.map(Timestamp::as_micros),
                &record.revoked_at.map(Timestamp::as_micros),
                &encode_token(record),
            ],
        )
        .await?;
        let digest = tx
            .prepare_cached("INSERT INTO digests (digest, token_id) VALUES ($1, $2)")
            .await?;
        for secret in &record.secrets {
            tx.execute(&digest, &[&secret.digest.0.as_slice(), &id.as_slice()])
                .await?;
        }
        insert_audit(&tx, event).await?;
        tx.commit().await?;
        self.bell.ring();
        Ok(InsertOutcome::Inserted)
    }

    async fn token_by_digest(&self, digest: &Digest) -> Result<Option<TokenRecord>, StoreError> {
        let client = self.client().await?;
        let statement = client
            .prepare_cached(
                "SELECT t.record FROM digests d JOIN tokens t ON t.id = d.token_id \
                 WHERE d.digest = $1",
            )
            .await?;
        client
            .query_opt(&statement, &[&digest.0.as_slice()])
            .await?
            .map(|row| record_of(&row))
            .transpose()
    }

    async fn token_by_id(&self, id: TokenId) -> Result<Option<TokenRecord>, StoreError> {
        let client = self.client().await?;
        let statement = client
            .prepare_cached("SELECT record FROM tokens WHERE id = $1")
            .await?;
        client
            .query_opt(&statement, &[&id.to_bytes().as_slice()])
            .await?
            .map(|row| record_of(&row))
            .transpose()
    }

    async fn list_tokens(&self, query: &TokenQuery, page: PageRequest) -> Result<Page, StoreError> {
        let client = self.client().await?;
        let mut filter = Filter::new(query);
        if let Some(after) = page.after {
            filter.push("id <", Box::new(after.to_bytes().to_vec()));
        }
        let limit = i64::try_from(page.limit).unwrap_or(i64::MAX - 1);
        filter.params.push(Box::new(limit + 1));
        let sql = format!(
            "SELECT record FROM tokens WHERE {} ORDER BY id DESC LIMIT ${}",
            filter.sql,
            filter.params.len()
        );
        let rows = client.query(&sql, &filter.params()).await?;
        let more = rows.len() > page.limit;
        let mut tokens = Vec::with_capacity(rows.len().min(page.limit));
        for row in rows.iter().take(page.limit) {
            let record = record_of(row)?;
            if query.matches(&record) {
                tokens.push(record);
            }
        }
        let next = if more {
            tokens.last().map(|r| r.id)
        } else {
            None
        };
        Ok(Page { tokens, next })
    }

    async fn revoke_token(
        &self,
        id: TokenId,
        at: Timestamp,
        event: &AuditEvent,
    ) -> Result<Option<Revocation>, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let Some(row) = tx
            .query_opt(
                "SELECT record FROM tokens WHERE id = $1 FOR UPDATE",
                &[&id.to_bytes().as_slice()],
            )
            .await?
        else {
            return Ok(None);
        };
        let revocation = revoke_record(record_of(&row)?, at);
        if !revocation.newly_revoked {
            return Ok(Some(revocation));
        }
        let record = revocation.record;
        update_record(&tx, &record).await?;
        insert_audit(&tx, event).await?;
        log_revocation(&tx, digests_of([&record])).await?;
        tx.commit().await?;
        self.bell.ring();
        Ok(Some(Revocation {
            record,
            newly_revoked: true,
        }))
    }

    async fn preview_revoke_all(
        &self,
        query: &TokenQuery,
        at: Timestamp,
        keep: usize,
    ) -> Result<(u64, Vec<TokenRecord>), StoreError> {
        if query.owner_user_id.is_none() && query.kind.is_none() {
            return Err(StoreError::Unsupported(
                "a RevokeAll names an owner or a kind",
            ));
        }
        let query = TokenQuery {
            include_revoked: false,
            ..query.clone()
        };
        // The rows `revoke_all_step` selects (live, in scope, not expired
        // beyond the margin), counted and the newest read: through the
        // same indexes, never the revoked ones.
        let mut filter = Filter::new(&query);
        filter.push(
            &format!("{EXPIRY} >="),
            Box::new(
                at.saturating_sub(super::REVOKE_ALL_EXPIRED_MARGIN)
                    .as_micros(),
            ),
        );
        let client = self.client().await?;
        let count: i64 = client
            .query_one(
                &format!("SELECT count(*) FROM tokens WHERE {}", filter.sql),
                &filter.params(),
            )
            .await?
            .try_get(0)?;
        filter
            .params
            .push(Box::new(i64::try_from(keep).unwrap_or(i64::MAX)));
        let rows = client
            .query(
                &format!(
                    "SELECT record FROM tokens WHERE {} ORDER BY id DESC LIMIT ${}",
                    filter.sql,
                    filter.params.len()
                ),
                &filter.params(),
            )
            .await?;
        let newest = rows.iter().map(record_of).collect::<Result<Vec<_>, _>>()?;
        Ok((u64::try_from(count).unwrap_or(0), newest))
    }

    async fn revoke_all(
        &self,
        query: &TokenQuery,
        at: Timestamp,
        event: &AuditEvent,
        revoked: &mut RevokedAll,
    ) -> Result<(), StoreError> {
        if query.owner_user_id.is_none() && query.kind.is_none() {
            return Err(StoreError::Unsupported(
                "a RevokeAll names an owner or a kind",
            ));
        }
        let query = TokenQuery {
            include_revoked: false,
            ..query.clone()
        };
        let _in_process = self
            .local_locks
            .exclusive(&format!("7411 {}", query.org_id))
            .await;
        let mut session = OrgSession::lock(self.client().await?, &query.org_id).await?;
        let mut progress = RevokeAllProgress::default();
        loop {
            let step = revoke_all_step(session.client()?, &query, at, event, progress).await?;
            revoked.digests.extend(step.digests);
            revoked.count = step.progress.revoked;
            progress = step.progress;
            if step.last {
                break;
            }
        }
        // Each step committed its own entries: ring for them even if the
        // release fails.
        self.bell.ring();
        session.release(&query.org_id).await
    }

    async fn rotate_token(
        &self,
        id: TokenId,
        rotation: &Rotation,
        event: &AuditEvent,
    ) -> Result<RotateOutcome, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let key = id.to_bytes();
        let Some(row) = tx
            .query_opt(
                "SELECT record FROM tokens WHERE id = $1 FOR UPDATE",
                &[&key.as_slice()],
            )
            .await?
        else {
            return Ok(RotateOutcome::NotFound);
        };
        let before = record_of(&row)?;
        let replaced = digests_of([&before]);
        let outcome = rotate_record(before, rotation);
        if let RotateOutcome::Rotated { record, forgotten } = &outcome {
            let forgotten: Vec<Vec<u8>> = forgotten.iter().map(|d| d.0.to_vec()).collect();
            tx.execute("DELETE FROM digests WHERE digest = ANY($1)", &[&forgotten])
                .await?;
            tx.execute(
                "INSERT INTO digests (digest, token_id) VALUES ($1, $2)",
                &[&rotation.new_secret.digest.0.as_slice(), &key.as_slice()],
            )
            .await?;
            update_record(&tx, record).await?;
            insert_audit(&tx, event).await?;
            // Replicas holding the record must read it again: its old secrets
            // now have an end (or are gone).
            log_revocation(&tx, replaced).await?;
            tx.commit().await?;
            self.bell.ring();
        }
        Ok(outcome)
    }

    async fn set_member(
        &self,
        member: &Member,
        event: &AuditEvent,
    ) -> Result<MemberChange, StoreError> {
        let outcome = members::set_member(&mut self.client().await?, member, event).await;
        self.rung(outcome)
    }

    async fn remove_member(
        &self,
        key: &MemberKey,
        at: Timestamp,
        event: &AuditEvent,
        revoke_event: &AuditEvent,
    ) -> Result<MemberRemoval, StoreError> {
        let outcome =
            members::remove_member(&mut self.client().await?, key, at, event, revoke_event).await;
        self.rung(outcome)
    }

    async fn member(&self, key: &MemberKey) -> Result<Option<Member>, StoreError> {
        members::member(&self.client().await?, key).await
    }

    async fn list_members(
        &self,
        org_id: &str,
        page: &MemberPageRequest,
    ) -> Result<MemberPage, StoreError> {
        members::list_members(&self.client().await?, org_id, page).await
    }

    async fn count_members(&self, org_id: &str, limit: u64) -> Result<u64, StoreError> {
        members::count_members(&self.client().await?, org_id, limit).await
    }

    async fn append_audit(&self, event: &AuditEvent) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        // A refusal need not wait for the disk (see `Store::append_audit`);
        // a fed event is a change to followers, committed as one.
        if !in_feed(event.action) {
            tx.batch_execute("SET LOCAL synchronous_commit TO OFF")
                .await?;
        }
        let fed = append_audit_once(&tx, event).await?;
        tx.commit().await?;
        if fed {
            self.bell.ring();
        }
        Ok(())
    }

    async fn list_audit(
        &self,
        query: &AuditQuery,
        after: Option<EventId>,
        limit: usize,
    ) -> Result<AuditPage, StoreError> {
        scan_audit(&self.client().await?, query, after, limit).await
    }

    async fn read_feed(
        &self,
        query: &FeedQuery,
        after: FeedCursor,
        limit: usize,
    ) -> Result<FeedPage, StoreError> {
        read_feed(&self.client().await?, query, after, limit).await
    }

    async fn feed_end(&self) -> Result<FeedCursor, StoreError> {
        feed_end(&self.client().await?).await
    }

    async fn prune_audit(&self, before: Timestamp) -> Result<usize, StoreError> {
        let client = self.client().await?;
        client
            .execute("DELETE FROM feed WHERE at_us < $1", &[&before.as_micros()])
            .await?;
        let end = EventId::first_at(before).to_bytes();
        let pruned = client
            .execute("DELETE FROM audit WHERE id < $1", &[&end.as_slice()])
            .await?;
        Ok(usize::try_from(pruned).unwrap_or(usize::MAX))
    }

    async fn record_usage(&self, records: &[UsageRecord]) -> Result<(), StoreError> {
        add_usage(&self.client().await?, records).await
    }

    async fn list_usage(
        &self,
        query: &UsageQuery,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<UsagePage, StoreError> {
        scan_usage(&self.client().await?, query, after, limit).await
    }

    async fn upkeep_usage(&self, step: UsageUpkeep, limit: usize) -> Result<usize, StoreError> {
        upkeep_usage(&mut self.client().await?, step, limit).await
    }

    async fn last_used(&self, ids: &[TokenId]) -> Result<Vec<Option<Timestamp>>, StoreError> {
        let keys: Vec<Vec<u8>> = ids.iter().map(|id| id.to_bytes().to_vec()).collect();
        let client = self.client().await?;
        let statement = client
            .prepare_cached("SELECT token_id, at_us FROM last_used WHERE token_id = ANY($1)")
            .await?;
        let mut found = HashMap::new();
        for row in client.query(&statement, &[&keys]).await? {
            let id = bytes16(row.try_get(0)?, "last_used token id")?;
            let at: i64 = row.try_get(1)?;
            found.insert(id, Timestamp::from_micros(at));
        }
        Ok(ids
            .iter()
            .map(|id| found.get(&id.to_bytes()).copied())
            .collect())
    }

    async fn record_last_used(&self, uses: &[(TokenId, Timestamp)]) -> Result<(), StoreError> {
        let mut latest: HashMap<[u8; 16], i64> = HashMap::new();
        for (id, at) in uses {
            let entry = latest.entry(id.to_bytes()).or_insert(i64::MIN);
            *entry = (*entry).max(at.as_micros());
        }
        let (ids, times): (Vec<Vec<u8>>, Vec<i64>) =
            latest.into_iter().map(|(id, at)| (id.to_vec(), at)).unzip();
        let client = self.client().await?;
        client
            .execute(
                "INSERT INTO last_used (token_id, at_us) \
                 SELECT * FROM unnest($1::bytea[], $2::int8[]) \
                 ON CONFLICT (token_id) DO UPDATE \
                 SET at_us = GREATEST(last_used.at_us, EXCLUDED.at_us)",
                &[&ids, &times],
            )
            .await?;
        Ok(())
    }

    async fn client_addresses(&self, id: TokenId) -> Result<RecentAddresses, StoreError> {
        activity::client_addresses(&self.client().await?, id).await
    }

    async fn record_client_addresses(
        &self,
        seen: &[(TokenId, RecentAddresses)],
    ) -> Result<(), StoreError> {
        activity::record_client_addresses(&mut self.client().await?, seen).await
    }

    async fn pepper_checks(&self) -> Result<Vec<(u32, [u8; 32])>, StoreError> {
        let client = self.client().await?;
        client
            .query("SELECT key_id, check_value FROM pepper_checks", &[])
            .await?
            .iter()
            .map(|row| {
                let corrupt = || StoreError::Corrupt("pepper check row".into());
                let id: i64 = row.try_get(0)?;
                let check: &[u8] = row.try_get(1)?;
                Ok((
                    u32::try_from(id).map_err(|_| corrupt())?,
                    check.try_into().map_err(|_| corrupt())?,
                ))
            })
            .collect()
    }

    async fn add_pepper_check(&self, key_id: u32, check: [u8; 32]) -> Result<(), StoreError> {
        // Another replica may add the same key id at the same moment; the
        // caller reads the checks back and compares.
        let client = self.client().await?;
        client
            .execute(
                "INSERT INTO pepper_checks (key_id, check_value) VALUES ($1, $2) \
                 ON CONFLICT (key_id) DO NOTHING",
                &[&i64::from(key_id), &check.as_slice()],
            )
            .await?;
        Ok(())
    }

    async fn is_empty(&self) -> Result<bool, StoreError> {
        let client = self.client().await?;
        Ok(client
            .query_one(
                "SELECT NOT EXISTS (SELECT 1 FROM tokens) \
                 AND NOT EXISTS (SELECT 1 FROM pepper_checks)",
                &[],
            )
            .await?
            .try_get(0)?)
    }

    async fn backup(&self, _path: &Path) -> Result<u64, StoreError> {
        Err(StoreError::Unsupported(
            "this server keeps its tokens in PostgreSQL: back it up with PostgreSQL's own tools \
             (pg_dump, or base backups with WAL archiving), and keep the pepper file with it",
        ))
    }

    async fn count_tokens(&self, now: Timestamp) -> Result<TokenCounts, StoreError> {
        count_tokens(&self.client().await?, now).await
    }

    async fn scan_unrevoked_tokens(
        &self,
        after: Option<TokenId>,
        limit: usize,
    ) -> Result<Page, StoreError> {
        scan_unrevoked(&self.client().await?, after, limit).await
    }

    async fn try_lease(&self, key: LeaseKey<'_>) -> Result<Option<Lease>, StoreError> {
        let (class, number): (i32, i32) = match key {
            LeaseKey::TokenSweep => (7414, 0),
            LeaseKey::Webhook(name) => (7415, crate::domain::webhook::lease_key(name)),
        };
        let client = self.client().await?;
        let held: bool = client
            .query_one(TRY_LEASE_LOCK, &[&class, &number])
            .await?
            .try_get(0)?;
        // The lock is the session's: it lasts as long as the connection,
        // which the lease takes out of the pool and closes when dropped (the
        // server then releases the lock, as it does when this process dies).
        // Back in the pool, the connection would hold it for good.
        Ok(held.then(|| {
            let connection = std::sync::Arc::new(deadpool_postgres::Client::take(client));
            let probe = std::sync::Arc::clone(&connection);
            Lease::holding(connection, move || !probe.is_closed())
        }))
    }

    async fn probe_write(&self) -> Result<(), StoreError> {
        let client = self.client().await?;
        client
            .execute(
                "INSERT INTO health_probe (at) VALUES (now()) \
                 ON CONFLICT (only_row) DO UPDATE SET at = now()",
                &[],
            )
            .await?;
        Ok(())
    }

    async fn durable(&self) -> Result<(), StoreError> {
        // Every write committed synchronously before it returned.
        Ok(())
    }

    fn feed_bell(&self) -> Option<FeedBell> {
        Some(self.bell.clone())
    }

    fn take_invalidations(&self) -> Option<UnboundedReceiver<Invalidation>> {
        self.invalidations
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }
}
