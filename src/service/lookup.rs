//! Finding the token a presented secret belongs to: the cache first (under
//! every pepper key), then the store, under the cache's fill gate so that a
//! revocation cannot race a fill and leave a revoked token cached as live.
//! A secret unknown under every key is cached as unknown. A personal token
//! is read with its member's current role, which is cached with it.

use std::sync::Arc;

use super::{
    authority::TokenAuthority,
    cache::{CachedToken, Lookup},
    error::Error,
};
use crate::{
    domain::{
        member::{MemberKey, MemberRole},
        secret::{self, Digest},
        token::TokenKind,
    },
    metrics::CacheOutcome,
};

impl TokenAuthority {
    /// The cached token `presented` is a secret of, with the digest it
    /// matched; reads the store on a cache miss.
    pub(super) async fn find(
        &self,
        presented: &str,
    ) -> Result<Option<(Arc<CachedToken>, Digest)>, Error> {
        if secret::parse(presented).is_none() {
            return Ok(None);
        }
        self.find_well_formed(presented).await
    }

    /// [`Self::find`] for a secret already known to be well formed.
    pub(super) async fn find_well_formed(
        &self,
        presented: &str,
    ) -> Result<Option<(Arc<CachedToken>, Digest)>, Error> {
        let keys = self.keyring.keys();
        let current = keys[0].digest(presented);
        match self.cache.get(&current) {
            Lookup::Found(token) => {
                self.metrics.record_cache(CacheOutcome::Hit);
                return Ok(Some((token, current)));
            }
            // Negative entries are made under the current key only, after
            // every key was tried: the token is unknown under all of them.
            Lookup::Unknown => {
                self.metrics.record_cache(CacheOutcome::NegativeHit);
                return Ok(None);
            }
            Lookup::Miss => {}
        }
        // Tokens issued before a pepper rotation are cached under their own key's digest.
        let older: Vec<Digest> = keys[1..].iter().map(|k| k.digest(presented)).collect();
        for digest in &older {
            if let Lookup::Found(token) = self.cache.get(digest) {
                self.metrics.record_cache(CacheOutcome::Hit);
                return Ok(Some((token, *digest)));
            }
        }
        self.metrics.record_cache(CacheOutcome::Miss);
        let _fill = self.cache.fill_guard().await;
        for digest in std::iter::once(&current).chain(&older) {
            if let Some(record) = self.store.token_by_digest(digest).await? {
                // Under the same guard: a member change committed after this
                // read forgets what is filled here (see `members`).
                let member = match record.kind {
                    TokenKind::Service => None,
                    TokenKind::Personal => {
                        let key = MemberKey {
                            org_id: record.org_id.clone(),
                            user_id: record.owner_user_id.clone(),
                        };
                        self.store.member(&key).await?
                    }
                };
                let member = MemberRole::of(&record, member.as_ref());
                let token = Arc::new(CachedToken::with_member(record, member));
                self.cache.fill(*digest, Arc::clone(&token));
                return Ok(Some((token, *digest)));
            }
        }
        self.cache.fill_unknown(current);
        Ok(None)
    }
}
