//! The token service: issue, read, list, revoke and check, over a [`Store`]
//! with the Check cache in front. Handlers call these; they hold no logic of
//! their own.

use std::sync::Arc;

use super::{
    Error,
    caller::Caller,
    ids::TokenId,
    pagination,
    permissions::Catalogue,
    secret::{self, Digest, Keyring, Secret},
    time::Timestamp,
    token::{
        CheckQuery, LifetimePolicy, NewToken, Reason, StoredSecret, TokenKind, TokenRecord,
        TokenView, evaluate,
    },
};
use crate::{
    cache::{CachedToken, Lookup, TokenCache},
    last_used::LastUsedTracker,
    store::{PageRequest, Store, TokenQuery},
};

/// A Check's outcome: the reason, and the token when one was found.
#[derive(Debug)]
pub struct Decision {
    pub reason: Reason,
    pub token: Option<Arc<CachedToken>>,
}

impl Decision {
    pub fn allowed(&self) -> bool {
        self.reason == Reason::Ok
    }

    fn without_token(reason: Reason) -> Self {
        Self {
            reason,
            token: None,
        }
    }
}

/// Which tokens a RevokeAll is about.
#[derive(Clone, Debug)]
pub struct RevokeAllSelector {
    pub org_id: String,
    pub workspace_id: Option<String>,
    pub owner_user_id: Option<String>,
    pub kind: Option<TokenKind>,
}

/// Everything the token operations need.
pub struct TokenService {
    store: Arc<dyn Store>,
    cache: TokenCache,
    keyring: Keyring,
    catalogue: Catalogue,
    lifetime: LifetimePolicy,
    last_used: Arc<LastUsedTracker>,
}

impl TokenService {
    pub fn new(
        store: Arc<dyn Store>,
        cache: TokenCache,
        keyring: Keyring,
        catalogue: Catalogue,
        lifetime: LifetimePolicy,
        last_used: Arc<LastUsedTracker>,
    ) -> Self {
        Self {
            store,
            cache,
            keyring,
            catalogue,
            lifetime,
            last_used,
        }
    }

    pub fn catalogue(&self) -> &Catalogue {
        &self.catalogue
    }

    pub fn cache(&self) -> &TokenCache {
        &self.cache
    }

    /// Issues a token; the secret is returned here and never again.
    pub async fn issue(
        &self,
        caller: &Caller,
        new: NewToken,
    ) -> Result<(TokenView, Secret), Error> {
        let now = Timestamp::now();
        let valid = new.validate(&self.catalogue, &self.lifetime, now)?;
        let rng_failed = |e: getrandom::Error| Error::Internal(format!("OS random source: {e}"));
        let secret = Secret::generate(valid.kind).map_err(rng_failed)?;
        let key = self.keyring.current();
        let digest = key.digest(secret.expose());
        let record = TokenRecord {
            id: TokenId::generate(now).map_err(rng_failed)?,
            kind: valid.kind,
            org_id: valid.org_id,
            workspace_id: valid.workspace_id,
            name: valid.name,
            owner_user_id: valid.owner_user_id,
            created_by: caller.actor(),
            permissions: valid.permissions,
            created_at: now,
            expires_at: valid.expires_at,
            revoked_at: None,
            secrets: vec![StoredSecret {
                key_id: key.id(),
                digest,
                hint: secret.hint(),
                retired_at: None,
            }],
        };
        self.store.insert_token(&record).await?;
        // A negative entry for a digest nobody could have known is all but
        // impossible; dropping it costs nothing and removes the question.
        self.cache.forget_unknown(&digest);
        tracing::info!(
            token_id = %record.id, kind = ?record.kind, org_id = %record.org_id,
            workspace_id = %record.workspace_id, actor = %record.created_by,
            peer = ?caller.peer, "token issued"
        );
        Ok((
            TokenView {
                record,
                last_used_at: None,
            },
            secret,
        ))
    }

    pub async fn get(&self, caller: &Caller, id: TokenId) -> Result<TokenView, Error> {
        tracing::debug!(token_id = %id, peer = ?caller.peer, "get token");
        let record = self
            .store
            .token_by_id(id)
            .await?
            .ok_or_else(|| Error::NotFound(id.to_string()))?;
        let mut views = self.with_last_used(vec![record]).await?;
        views
            .pop()
            .ok_or_else(|| Error::Internal("lost a record".into()))
    }

    /// One page of tokens matching `query`, newest first, and the next page's token.
    pub async fn list(
        &self,
        caller: &Caller,
        query: TokenQuery,
        page_size: i32,
        page_token: &str,
    ) -> Result<(Vec<TokenView>, String), Error> {
        tracing::debug!(org_id = %query.org_id, peer = ?caller.peer, "list tokens");
        let limit = pagination::page_size(page_size)?;
        let fingerprint = list_fingerprint(&query);
        let after = pagination::decode(page_token, fingerprint)?;
        let page = self
            .store
            .list_tokens(&query, PageRequest { after, limit })
            .await?;
        let next = page
            .next
            .map(|last| pagination::encode(fingerprint, last))
            .unwrap_or_default();
        Ok((self.with_last_used(page.tokens).await?, next))
    }

    /// Revokes one token. Once this returns, no Check allows it.
    pub async fn revoke(&self, caller: &Caller, id: TokenId) -> Result<TokenView, Error> {
        let outcome = self
            .store
            .revoke_token(id, Timestamp::now())
            .await?
            .ok_or_else(|| Error::NotFound(id.to_string()))?;
        let digests: Vec<Digest> = outcome.record.secrets.iter().map(|s| s.digest).collect();
        self.cache.invalidate(&digests).await;
        tracing::info!(
            token_id = %id, newly_revoked = outcome.newly_revoked, actor = %caller.actor(),
            peer = ?caller.peer, "token revoked"
        );
        let mut views = self.with_last_used(vec![outcome.record]).await?;
        views
            .pop()
            .ok_or_else(|| Error::Internal("lost a record".into()))
    }

    /// Revokes every live token the selector names; returns how many.
    pub async fn revoke_all(
        &self,
        caller: &Caller,
        selector: RevokeAllSelector,
    ) -> Result<u64, Error> {
        if selector.owner_user_id.is_none() && selector.kind.is_none() {
            return Err(Error::invalid(
                "kind",
                "name owner_user_id (a user's tokens) or a kind (e.g. SERVICE for an organization's or workspace's service tokens)",
            ));
        }
        if selector.owner_user_id.is_some() && selector.kind == Some(TokenKind::Service) {
            return Err(Error::invalid(
                "owner_user_id",
                "service tokens have no owner; leave owner_user_id empty to revoke service tokens",
            ));
        }
        let query = TokenQuery {
            org_id: selector.org_id,
            workspace_id: selector.workspace_id,
            owner_user_id: selector.owner_user_id,
            kind: selector.kind,
            include_revoked: false,
        };
        let revoked = self.store.revoke_all(&query, Timestamp::now()).await?;
        let digests: Vec<Digest> = revoked
            .iter()
            .flat_map(|r| r.secrets.iter().map(|s| s.digest))
            .collect();
        self.cache.invalidate(&digests).await;
        tracing::info!(
            org_id = %query.org_id, workspace_id = ?query.workspace_id,
            owner_user_id = ?query.owner_user_id, kind = ?query.kind, revoked = revoked.len(),
            actor = %caller.actor(), peer = ?caller.peer, "tokens revoked in bulk"
        );
        Ok(revoked.len() as u64)
    }

    /// Decides whether `presented` may do `query`. A deny is a decision, not
    /// an error; only a store failure on a cache miss is an error.
    pub async fn check(&self, presented: &str, query: &CheckQuery<'_>) -> Result<Decision, Error> {
        if secret::parse(presented).is_none() {
            return Ok(Decision::without_token(Reason::Malformed));
        }
        let now = Timestamp::now();
        let keys = self.keyring.keys();
        let current = keys[0].digest(presented);
        match self.cache.get(&current) {
            Lookup::Found(token) => return Ok(self.decide(token, &current, query, now)),
            // Negative entries are made under the current key only, after
            // every key was tried: the token is unknown under all of them.
            Lookup::Unknown => return Ok(Decision::without_token(Reason::NotFound)),
            Lookup::Miss => {}
        }
        // Tokens issued before a pepper rotation are cached under their own key's digest.
        let older: Vec<Digest> = keys[1..].iter().map(|k| k.digest(presented)).collect();
        for digest in &older {
            if let Lookup::Found(token) = self.cache.get(digest) {
                return Ok(self.decide(token, digest, query, now));
            }
        }
        let _fill = self.cache.fill_guard().await;
        for digest in std::iter::once(&current).chain(&older) {
            if let Some(record) = self.store.token_by_digest(digest).await? {
                let token = Arc::new(CachedToken::new(record));
                self.cache.fill(*digest, Arc::clone(&token));
                return Ok(self.decide(token, digest, query, now));
            }
        }
        self.cache.fill_unknown(current);
        Ok(Decision::without_token(Reason::NotFound))
    }

    fn decide(
        &self,
        token: Arc<CachedToken>,
        digest: &Digest,
        query: &CheckQuery<'_>,
        now: Timestamp,
    ) -> Decision {
        let Some(secret) = token.record.secret_matching(digest) else {
            return Decision::without_token(Reason::NotFound);
        };
        let reason = evaluate(&token.record, secret, query, now);
        if token.touch(now.as_secs()) {
            self.last_used.note(token.record.id, now);
        }
        Decision {
            reason,
            token: Some(token),
        }
    }

    async fn with_last_used(&self, records: Vec<TokenRecord>) -> Result<Vec<TokenView>, Error> {
        let ids: Vec<TokenId> = records.iter().map(|r| r.id).collect();
        let stored = self.store.last_used(&ids).await?;
        Ok(records
            .into_iter()
            .zip(stored)
            .map(|(record, stored)| {
                let pending = self.last_used.pending(record.id);
                TokenView {
                    last_used_at: stored.max(pending),
                    record,
                }
            })
            .collect())
    }
}

fn list_fingerprint(query: &TokenQuery) -> [u8; 8] {
    fn opt(value: &Option<String>) -> &[u8] {
        // Ids are printable ASCII, so "\0none" cannot be one.
        value.as_deref().map_or(b"\0none".as_slice(), str::as_bytes)
    }
    let kind: &[u8] = match query.kind {
        None => b"any",
        Some(TokenKind::Personal) => b"personal",
        Some(TokenKind::Service) => b"service",
    };
    let revoked: &[u8] = if query.include_revoked {
        b"all"
    } else {
        b"live"
    };
    pagination::fingerprint(&[
        query.org_id.as_bytes(),
        opt(&query.workspace_id),
        opt(&query.owner_user_id),
        kind,
        revoked,
    ])
}
