//! The token authority and the policy it enforces: the one value every use
//! case in this wing is a method of. Its own file, so that the job files
//! import a sibling rather than their parent.

use std::{sync::Arc, time::Duration};

use super::{cache::TokenCache, error::Error, recorder::Recorder};
use crate::{
    domain::{
        authz::Roles,
        client_address::RecentAddresses,
        ids::TokenId,
        inactivity::{InactivityPolicy, WrittenWarnings},
        leaks::{IntakeBudget, IntakeLimits},
        member::MembershipPolicy,
        permissions::Catalogue,
        quota::Quotas,
        refusals::RefusalLimits,
        secret::Keyring,
        time::Timestamp,
        token::{LifetimePolicy, TokenRecord, TokenView},
        usage::UsageRetention,
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
    /// How long usage is kept at each resolution.
    pub usage_retention: UsageRetention,
    /// How many secrets ReportLeakedSecrets looks up per minute.
    pub leak_intake: IntakeLimits,
    /// How many matches GitHub's signed secret-scanning reports look up per
    /// minute, in a budget of their own.
    pub signed_intake: u32,
    /// How Check treats personal tokens of members it does not know.
    pub membership: MembershipPolicy,
    /// Most members an ADMIN may bring an organization to (SetMember).
    pub max_members_per_org: u32,
    /// Which unused tokens are revoked, and when (off by default).
    pub inactivity: InactivityPolicy,
    /// Which expiry events are written.
    pub expiry: crate::domain::expiry::ExpiryPolicy,
    /// How often a caught-up WatchEvents watcher reads the feed again.
    pub watch_poll_interval: Duration,
}

/// The token authority: everything the use cases need. (Not `TokenService`,
/// the name of the generated gRPC trait that `api::tokens` implements.)
pub struct TokenAuthority {
    pub(super) store: Arc<dyn Store>,
    pub(super) cache: Arc<TokenCache>,
    pub(super) keyring: Keyring,
    pub(super) policy: Policy,
    pub(super) recorder: Arc<Recorder>,
    pub(super) metrics: Arc<Metrics>,
    /// Spent by ReportLeakedSecrets, per network and in total.
    pub(super) leak_intake: IntakeBudget,
    /// Spent by GitHub's signed reports only: an anonymous flood that
    /// spends `leak_intake` must not silence the channel most leaks come by.
    pub(super) signed_intake: IntakeBudget,
    /// The WatchEvents watchers open, held to their caps.
    pub(super) watchers: Arc<super::watchers::Watchers>,
    /// Spent by an ADMIN's dry-run leak reports, per organization: they come
    /// through the control plane, one address for every organization, so a
    /// budget by address would let one organization's dry runs refuse all
    /// the others'. No total: each is an authenticated ADMIN's call.
    pub(super) dry_run_intake: IntakeBudget<String>,
    /// The sweep's events (inactivity warnings, expiry events) this process
    /// has written.
    pub(super) written_events: WrittenWarnings,
    /// Where this replica's next token sweep starts, when the last one
    /// stopped at a bound.
    pub(super) sweep_resume: std::sync::Mutex<Option<TokenId>>,
    /// The webhook endpoints this server delivers to.
    pub(super) webhooks: Vec<Arc<super::webhooks::Delivery>>,
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
            leak_intake: IntakeBudget::new(policy.leak_intake),
            dry_run_intake: IntakeBudget::new(IntakeLimits {
                per_peer: policy.leak_intake.per_peer,
                total: u32::MAX,
            }),
            signed_intake: IntakeBudget::new(IntakeLimits {
                per_peer: policy.signed_intake,
                total: policy.signed_intake,
            }),
            written_events: WrittenWarnings::default(),
            sweep_resume: std::sync::Mutex::new(None),
            store,
            cache: Arc::new(cache),
            keyring,
            policy,
            recorder,
            metrics,
            watchers: Arc::default(),
            webhooks: Vec::new(),
        }
    }

    pub fn catalogue(&self) -> &Catalogue {
        &self.policy.catalogue
    }

    pub fn cache(&self) -> &Arc<TokenCache> {
        &self.cache
    }

    pub(super) async fn existing(&self, id: TokenId) -> Result<TokenRecord, Error> {
        self.store
            .token_by_id(id)
            .await?
            .ok_or_else(|| Error::not_found(id.to_string()))
    }

    /// The token as one call shows it: its last use and client addresses,
    /// stored and noted since, so that a Check is visible at once.
    pub(super) async fn view(&self, record: TokenRecord) -> Result<TokenView, Error> {
        let stored = self.store.last_used(&[record.id]).await?.pop().flatten();
        let mut addresses = self.store.client_addresses(record.id).await?;
        addresses.merge(&self.recorder.pending_addresses(record.id));
        let mut view = self.merge_last_used(record, stored);
        view.client_addresses = addresses;
        Ok(view)
    }

    pub(super) fn merge_last_used(
        &self,
        record: TokenRecord,
        stored: Option<Timestamp>,
    ) -> TokenView {
        let pending = self.recorder.pending_last_used(record.id);
        let last_used_at = stored.max(pending);
        TokenView {
            inactive_revocation_at: self.policy.inactivity.revocation_at(
                &record,
                last_used_at,
                Timestamp::now(),
            ),
            last_used_at,
            record,
            client_addresses: RecentAddresses::default(),
        }
    }
}
