//! The embedded sled store.
//!
//! Trees: `tokens` (id -> record), `digests` (digest -> id), three indexes
//! (by org; by org and workspace; by org and owner) so that listing and bulk
//! revocation read one prefix instead of the whole database, `last_used`
//! (id -> microseconds), and `meta`.
//!
//! Token writes take one process-wide write lock while they apply (they are
//! in-memory and take microseconds), so that RevokeAll's scan and its writes
//! are one atomic step with respect to every other write, and commit through a
//! multi-tree sled transaction so that a crash never leaves half a change.
//! The flush that makes them durable happens after the lock is released and is
//! shared between concurrent writers (see `durability`).

use std::{path::Path, sync::Arc};

use async_trait::async_trait;
use sled::{
    Transactional, Tree,
    transaction::{ConflictableTransactionError, TransactionError, TransactionalTree},
};

use super::{
    Page, PageRequest, Revocation, Store, StoreError, TokenQuery,
    durability::GroupCommit,
    keys::{self, index_key, prefix},
    records::{decode_token, encode_token},
};
use crate::domain::{ids::TokenId, secret::Digest, time::Timestamp, token::TokenRecord};

/// Most index entries one list call examines before returning a short page.
const MAX_SCAN_PER_PAGE: usize = 5_000;

struct Trees {
    db: sled::Db,
    tokens: Tree,
    digests: Tree,
    by_org: Tree,
    by_workspace: Tree,
    by_owner: Tree,
    last_used: Tree,
    meta: Tree,
    write_lock: std::sync::Mutex<()>,
}

/// A [`Store`] in an embedded sled database.
pub struct SledStore {
    trees: Arc<Trees>,
    commit: GroupCommit,
}

fn unavailable(error: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(error.to_string())
}

impl From<sled::Error> for StoreError {
    fn from(error: sled::Error) -> Self {
        match error {
            sled::Error::Corruption { .. } => StoreError::Corrupt(error.to_string()),
            other => StoreError::Unavailable(other.to_string()),
        }
    }
}

impl From<TransactionError<StoreError>> for StoreError {
    fn from(error: TransactionError<StoreError>) -> Self {
        match error {
            TransactionError::Abort(inner) => inner,
            TransactionError::Storage(inner) => inner.into(),
        }
    }
}

impl SledStore {
    /// Opens (or creates) the database in `dir`.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let db = sled::Config::new().path(dir).open()?;
        let open = |name: &str| db.open_tree(name);
        let trees = Arc::new(Trees {
            tokens: open(keys::TOKENS)?,
            digests: open(keys::DIGESTS)?,
            by_org: open(keys::BY_ORG)?,
            by_workspace: open(keys::BY_WORKSPACE)?,
            by_owner: open(keys::BY_OWNER)?,
            last_used: open(keys::LAST_USED)?,
            meta: open(keys::META)?,
            write_lock: std::sync::Mutex::new(()),
            db,
        });
        let flush_db = trees.db.clone();
        let commit =
            GroupCommit::start(move || flush_db.flush().map(drop).map_err(|e| e.to_string()))
                .map_err(unavailable)?;
        Ok(Self { trees, commit })
    }

    /// Runs `apply` under the write lock on a blocking thread, then waits for durability.
    async fn write<T, F>(&self, apply: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Trees) -> Result<T, StoreError> + Send + 'static,
    {
        let trees = Arc::clone(&self.trees);
        let value = tokio::task::spawn_blocking(move || {
            let _guard = trees.write_lock.lock().unwrap_or_else(|e| e.into_inner());
            apply(&trees)
        })
        .await
        .map_err(unavailable)??;
        self.commit.durable().await?;
        Ok(value)
    }
}

fn index_entries(record: &TokenRecord) -> [(usize, Vec<u8>); 3] {
    let mut entries = [
        (0, index_key(&[&record.org_id], record.id)),
        (
            1,
            index_key(&[&record.org_id, &record.workspace_id], record.id),
        ),
        (2, Vec::new()),
    ];
    if !record.owner_user_id.is_empty() {
        entries[2].1 = index_key(&[&record.org_id, &record.owner_user_id], record.id);
    }
    entries
}

type Abortable<T> = Result<T, ConflictableTransactionError<StoreError>>;

fn abort(error: StoreError) -> ConflictableTransactionError<StoreError> {
    ConflictableTransactionError::Abort(error)
}

/// Sets `revoked_at` on the token `id` inside a transaction; `None` if absent.
fn revoke_in(
    tokens: &TransactionalTree,
    id: TokenId,
    at: Timestamp,
) -> Abortable<Option<Revocation>> {
    let Some(bytes) = tokens.get(id.to_bytes())? else {
        return Ok(None);
    };
    let mut record = decode_token(&bytes).map_err(abort)?;
    if record.revoked_at.is_some() {
        return Ok(Some(Revocation {
            record,
            newly_revoked: false,
        }));
    }
    record.revoked_at = Some(at);
    tokens.insert(&id.to_bytes(), encode_token(&record))?;
    Ok(Some(Revocation {
        record,
        newly_revoked: true,
    }))
}

impl Trees {
    fn record(&self, id: TokenId) -> Result<Option<TokenRecord>, StoreError> {
        self.tokens
            .get(id.to_bytes())?
            .map(|bytes| decode_token(&bytes))
            .transpose()
    }

    /// The index and key prefix that serve `query` with the narrowest scan.
    fn index_for(&self, query: &TokenQuery) -> (&Tree, Vec<u8>) {
        match (&query.owner_user_id, &query.workspace_id) {
            (Some(owner), _) => (&self.by_owner, prefix(&[&query.org_id, owner])),
            (None, Some(ws)) => (&self.by_workspace, prefix(&[&query.org_id, ws])),
            (None, None) => (&self.by_org, prefix(&[&query.org_id])),
        }
    }

    /// Matching records, newest first, starting after `page.after`.
    fn scan(
        &self,
        query: &TokenQuery,
        page: PageRequest,
        max_scan: usize,
    ) -> Result<Page, StoreError> {
        let (index, prefix) = self.index_for(query);
        let mut low = prefix.clone();
        low.extend_from_slice(&[0u8; 16]);
        let mut high = prefix;
        let range = match page.after {
            Some(after) => {
                high.extend_from_slice(&after.to_bytes());
                index.range(low..high)
            }
            None => {
                high.extend_from_slice(&[0xFFu8; 16]);
                index.range(low..=high)
            }
        };
        let mut tokens = Vec::new();
        let mut last_examined = None;
        for (scanned, entry) in range.rev().enumerate() {
            let (key, _) = entry?;
            let id = keys::id_of_index_key(&key)
                .ok_or_else(|| StoreError::Corrupt("short index key".into()))?;
            if tokens.len() == page.limit || scanned == max_scan {
                // There is at least one more entry: the next page starts after the last one seen.
                return Ok(Page {
                    tokens,
                    next: last_examined,
                });
            }
            last_examined = Some(id);
            // An index entry without its record would be a bug; skip rather than fail a listing.
            if let Some(record) = self.record(id)?
                && query.matches(&record)
            {
                tokens.push(record);
            }
        }
        Ok(Page { tokens, next: None })
    }
}

#[async_trait]
impl Store for SledStore {
    async fn insert_token(&self, record: &TokenRecord) -> Result<(), StoreError> {
        let record = record.clone();
        self.write(move |t| {
            let encoded = encode_token(&record);
            let indexes = index_entries(&record);
            (
                &t.tokens,
                &t.digests,
                &t.by_org,
                &t.by_workspace,
                &t.by_owner,
            )
                .transaction(|(tokens, digests, by_org, by_ws, by_owner)| {
                    tokens.insert(&record.id.to_bytes(), encoded.as_slice())?;
                    for secret in &record.secrets {
                        digests.insert(&secret.digest.0, &record.id.to_bytes())?;
                    }
                    for (which, key) in &indexes {
                        let tree = [by_org, by_ws, by_owner][*which];
                        if !key.is_empty() {
                            tree.insert(key.as_slice(), &[])?;
                        }
                    }
                    Ok(())
                })
                .map_err(StoreError::from)
        })
        .await
    }

    async fn token_by_digest(&self, digest: &Digest) -> Result<Option<TokenRecord>, StoreError> {
        // Inline rather than on a blocking thread: this is the Check cache-miss
        // path, and a sled point read is a few microseconds from its page cache.
        let Some(id) = self.trees.digests.get(digest.0)? else {
            return Ok(None);
        };
        let bytes: [u8; 16] = id
            .as_ref()
            .try_into()
            .map_err(|_| StoreError::Corrupt("digest index value".into()))?;
        self.trees.record(TokenId::from_bytes(bytes))
    }

    async fn token_by_id(&self, id: TokenId) -> Result<Option<TokenRecord>, StoreError> {
        self.trees.record(id)
    }

    async fn list_tokens(&self, query: &TokenQuery, page: PageRequest) -> Result<Page, StoreError> {
        let trees = Arc::clone(&self.trees);
        let query = query.clone();
        tokio::task::spawn_blocking(move || trees.scan(&query, page, MAX_SCAN_PER_PAGE))
            .await
            .map_err(unavailable)?
    }

    async fn revoke_token(
        &self,
        id: TokenId,
        at: Timestamp,
    ) -> Result<Option<Revocation>, StoreError> {
        self.write(move |t| {
            t.tokens
                .transaction(|tokens| revoke_in(tokens, id, at))
                .map_err(StoreError::from)
        })
        .await
    }

    async fn revoke_all(
        &self,
        query: &TokenQuery,
        at: Timestamp,
    ) -> Result<Vec<TokenRecord>, StoreError> {
        let query = TokenQuery {
            include_revoked: false,
            ..query.clone()
        };
        self.write(move |t| {
            // Under the write lock no token can be issued or revoked between
            // this scan and the transaction below.
            let everything = PageRequest {
                after: None,
                limit: usize::MAX,
            };
            let ids: Vec<TokenId> = t
                .scan(&query, everything, usize::MAX)?
                .tokens
                .iter()
                .map(|r| r.id)
                .collect();
            t.tokens
                .transaction(|tokens| {
                    let mut revoked = Vec::with_capacity(ids.len());
                    for &id in &ids {
                        if let Some(outcome) = revoke_in(tokens, id, at)?
                            && outcome.newly_revoked
                        {
                            revoked.push(outcome.record);
                        }
                    }
                    Ok(revoked)
                })
                .map_err(StoreError::from)
        })
        .await
    }

    async fn last_used(&self, ids: &[TokenId]) -> Result<Vec<Option<Timestamp>>, StoreError> {
        ids.iter()
            .map(|id| {
                Ok(self
                    .trees
                    .last_used
                    .get(id.to_bytes())?
                    .and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
                    .map(|b| Timestamp::from_micros(i64::from_be_bytes(b))))
            })
            .collect()
    }

    async fn record_last_used(&self, uses: &[(TokenId, Timestamp)]) -> Result<(), StoreError> {
        let trees = Arc::clone(&self.trees);
        let uses = uses.to_vec();
        tokio::task::spawn_blocking(move || {
            for (id, at) in uses {
                // Keep the latest: a slow flush must not move last-use backwards.
                trees.last_used.fetch_and_update(id.to_bytes(), |old| {
                    let old = old
                        .and_then(|v| <[u8; 8]>::try_from(v).ok())
                        .map_or(i64::MIN, i64::from_be_bytes);
                    Some(old.max(at.as_micros()).to_be_bytes().to_vec())
                })?;
            }
            Ok(())
        })
        .await
        .map_err(unavailable)?
    }

    async fn pepper_checks(&self) -> Result<Vec<(u32, [u8; 32])>, StoreError> {
        self.trees
            .meta
            .scan_prefix(keys::PEPPER_CHECK_PREFIX)
            .map(|entry| {
                let (key, value) = entry?;
                let corrupt = || StoreError::Corrupt("pepper check entry".into());
                let id_bytes: [u8; 4] = key[keys::PEPPER_CHECK_PREFIX.len()..]
                    .try_into()
                    .map_err(|_| corrupt())?;
                let check: [u8; 32] = value.as_ref().try_into().map_err(|_| corrupt())?;
                Ok((u32::from_be_bytes(id_bytes), check))
            })
            .collect()
    }

    async fn add_pepper_check(&self, key_id: u32, check: [u8; 32]) -> Result<(), StoreError> {
        self.write(move |t| {
            t.meta.insert(keys::pepper_check_key(key_id), &check)?;
            Ok(())
        })
        .await
    }

    async fn is_empty(&self) -> Result<bool, StoreError> {
        Ok(self.trees.tokens.is_empty()
            && self
                .trees
                .meta
                .scan_prefix(keys::PEPPER_CHECK_PREFIX)
                .next()
                .is_none())
    }

    async fn flush(&self) -> Result<(), StoreError> {
        self.commit.durable().await
    }
}
