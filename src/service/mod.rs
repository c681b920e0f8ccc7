//! The use cases: authenticate management callers, then issue, read, list,
//! rotate and revoke tokens under the rules of `domain::authz`, with an
//! audit event for every change and every refusal; report usage and audit;
//! and answer Check and the mesh over the cache. The API handlers call
//! these and hold no logic of their own; the rules themselves live in the
//! pure `domain`, the persistence behind `store::Store`.
//!
//! One file per job: `authenticate`, `refusals`, `manage`, `reports`,
//! `check`, `lookup` (cache first, then the store under the fill gate),
//! `mesh` (Envoy's ext_authz over Check).

mod authenticate;
pub mod cache;
mod check;
mod error;
mod lookup;
mod manage;
mod mesh;
pub mod recorder;
mod refusals;
mod reports;

#[cfg(test)]
mod fixture;

use std::{sync::Arc, time::Duration};

use self::{cache::TokenCache, recorder::Recorder};
pub use self::{
    check::{CheckOrigin, Decision},
    error::Error,
    mesh::ExtAuthz,
};
use crate::{
    domain::{
        authz::Roles,
        ids::TokenId,
        permissions::Catalogue,
        quota::Quotas,
        refusals::RefusalLimits,
        secret::Keyring,
        time::Timestamp,
        token::{LifetimePolicy, TokenRecord, TokenView},
    },
    metrics::Metrics,
    store::Store,
};

/// A control-plane credential as configured: a name, and the SHA-256 of the
/// credential (never the credential itself).
#[derive(Clone, Debug)]
pub struct ControlPlaneCredential {
    pub name: String,
    pub sha256: [u8; 32],
}

/// The rules the service enforces, from configuration.
#[derive(Clone, Debug)]
pub struct Policy {
    pub catalogue: Catalogue,
    pub roles: Roles,
    pub lifetime: LifetimePolicy,
    /// Longest grace period a rotation may give the old secret.
    pub max_rotation_grace: Duration,
    pub control_plane: Vec<ControlPlaneCredential>,
    /// How many refusal events are recorded (see `refusals`).
    pub refusal_limits: RefusalLimits,
    /// Most live tokens per member, organization and workspace.
    pub quotas: Quotas,
}

/// The token authority: everything the use cases need. (Not `TokenService`,
/// the name of the generated gRPC trait that `api::tokens` implements.)
pub struct TokenAuthority {
    store: Arc<dyn Store>,
    cache: Arc<TokenCache>,
    keyring: Keyring,
    policy: Policy,
    recorder: Arc<Recorder>,
    metrics: Arc<Metrics>,
}

impl TokenAuthority {
    pub fn new(
        store: Arc<dyn Store>,
        cache: TokenCache,
        keyring: Keyring,
        policy: Policy,
        recorder: Arc<Recorder>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            store,
            cache: Arc::new(cache),
            keyring,
            policy,
            recorder,
            metrics,
        }
    }

    pub fn catalogue(&self) -> &Catalogue {
        &self.policy.catalogue
    }

    pub fn cache(&self) -> &Arc<TokenCache> {
        &self.cache
    }

    async fn existing(&self, id: TokenId) -> Result<TokenRecord, Error> {
        self.store
            .token_by_id(id)
            .await?
            .ok_or_else(|| Error::not_found(id.to_string()))
    }

    async fn view(&self, record: TokenRecord) -> Result<TokenView, Error> {
        let stored = self.store.last_used(&[record.id]).await?.pop().flatten();
        Ok(self.merge_last_used(record, stored))
    }

    fn merge_last_used(&self, record: TokenRecord, stored: Option<Timestamp>) -> TokenView {
        let pending = self.recorder.pending_last_used(record.id);
        TokenView {
            last_used_at: stored.max(pending),
            record,
        }
    }
}
