//! Persistence behind one trait, so that the domain never knows which backend
//! it runs on. sled is the embedded default; a shared database for several
//! replicas implements the same trait.
//!
//! Contract every implementation keeps:
//! - a write method returns only once its change is durable (survives a crash);
//! - a change that spans several records or indexes is atomic;
//! - reads after a returned write observe it.

mod durability;
mod keys;
mod records;
pub mod sled;

use async_trait::async_trait;

use crate::domain::{
    ids::TokenId,
    secret::Digest,
    time::Timestamp,
    token::{TokenKind, TokenRecord},
};

pub use self::sled::SledStore;

/// A store failure. The cause is for logs; callers only learn the category.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store cannot serve now (I/O error, full or read-only disk); retrying later may work.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// Stored data could not be decoded: a bug or a damaged database.
    #[error("store data is corrupt: {0}")]
    Corrupt(String),
}

/// Which tokens a listing or a bulk revocation is about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenQuery {
    pub org_id: String,
    pub workspace_id: Option<String>,
    pub owner_user_id: Option<String>,
    pub kind: Option<TokenKind>,
    pub include_revoked: bool,
}

impl TokenQuery {
    /// Whether `record` is one of the tokens this query is about.
    pub fn matches(&self, record: &TokenRecord) -> bool {
        record.org_id == self.org_id
            && self
                .workspace_id
                .as_ref()
                .is_none_or(|ws| &record.workspace_id == ws)
            && self
                .owner_user_id
                .as_ref()
                .is_none_or(|owner| &record.owner_user_id == owner)
            && self.kind.is_none_or(|kind| record.kind == kind)
            && (self.include_revoked || record.revoked_at.is_none())
    }
}

/// Where a page starts and how long it may be.
#[derive(Clone, Copy, Debug)]
pub struct PageRequest {
    /// Start strictly after (older than) this id; `None` for the first page.
    pub after: Option<TokenId>,
    pub limit: usize,
}

/// One page of tokens, newest first.
#[derive(Clone, Debug)]
pub struct Page {
    pub tokens: Vec<TokenRecord>,
    /// Where the next page starts, if there may be one.
    pub next: Option<TokenId>,
}

/// The outcome of revoking one token.
#[derive(Clone, Debug)]
pub struct Revocation {
    /// The record after the call (with `revoked_at` set).
    pub record: TokenRecord,
    /// False if the token was already revoked (its `revoked_at` is unchanged).
    pub newly_revoked: bool,
}

/// A persistent token store.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Stores a new token with its digest and index entries. Durable on return.
    async fn insert_token(&self, record: &TokenRecord) -> Result<(), StoreError>;

    /// The token one of whose secrets has this digest.
    async fn token_by_digest(&self, digest: &Digest) -> Result<Option<TokenRecord>, StoreError>;

    async fn token_by_id(&self, id: TokenId) -> Result<Option<TokenRecord>, StoreError>;

    /// Tokens matching `query`, newest first. Implementations may return fewer
    /// than `page.limit` (with `next` set) to bound the work of one call.
    async fn list_tokens(&self, query: &TokenQuery, page: PageRequest) -> Result<Page, StoreError>;

    /// Revokes one token at `at`; `None` if there is no such token. Durable on return.
    async fn revoke_token(
        &self,
        id: TokenId,
        at: Timestamp,
    ) -> Result<Option<Revocation>, StoreError>;

    /// Revokes every live token matching `query`, atomically with respect to
    /// other writes, and returns the records it revoked. Durable on return.
    async fn revoke_all(
        &self,
        query: &TokenQuery,
        at: Timestamp,
    ) -> Result<Vec<TokenRecord>, StoreError>;

    /// The last recorded use of each token, in the order asked.
    async fn last_used(&self, ids: &[TokenId]) -> Result<Vec<Option<Timestamp>>, StoreError>;

    /// Records last-use times (keeping the latest). Not flushed on its own:
    /// it is coalesced data, and rides on the next flush.
    async fn record_last_used(&self, uses: &[(TokenId, Timestamp)]) -> Result<(), StoreError>;

    /// The check values of the pepper keys this database has digests under.
    async fn pepper_checks(&self) -> Result<Vec<(u32, [u8; 32])>, StoreError>;

    /// Remembers a pepper key's check value. Durable on return.
    async fn add_pepper_check(&self, key_id: u32, check: [u8; 32]) -> Result<(), StoreError>;

    /// Whether the store holds no tokens and no pepper checks (a new database).
    async fn is_empty(&self) -> Result<bool, StoreError>;

    /// Makes everything written so far durable (used at shutdown).
    async fn flush(&self) -> Result<(), StoreError>;
}
