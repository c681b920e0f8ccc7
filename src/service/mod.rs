//! The use cases: authenticate management callers, then issue, read, list,
//! rotate and revoke tokens under the rules of `domain::authz`, with an
//! audit event for every change and every refusal; report usage and audit;
//! and answer Check and the mesh over the cache. The API handlers call
//! these and hold no logic of their own; the rules themselves live in the
//! pure `domain`, the persistence behind `store::Store`.
//!
//! One file per job: `authenticate`, `refusals`, `manage`, `reports`,
//! `members`, `check`, `lookup` (cache first, then the store under the fill
//! gate), `mesh` (Envoy's ext_authz over Check), `leaks` (revocation by a
//! secret's holder: leak reports and RevokeSelf), `secret_scanning` (GitHub's
//! signed leak reports, through the same intake), `forensics` (LookupSecret),
//! `unused` (the least-privilege report), `sweep` (the background walk of
//! every token that applies the inactivity policy and writes expiry events).

mod authenticate;
mod authority;
pub mod cache;
mod check;
#[cfg(test)]
mod dry_run_cost;
mod error;
mod fast_hash;
mod feed;
mod forensics;
mod leaks;
mod lookup;
mod manage;
mod members;
mod mesh;
pub mod recorder;
mod refusals;
mod reports;
mod secret_scanning;
mod sweep;
mod unused;
mod watchers;
pub mod webhooks;

#[cfg(test)]
mod fixture;

pub use self::{
    authority::{ControlPlaneCredential, Policy, TokenAuthority},
    check::{CheckOrigin, Decision},
    error::Error,
    feed::{STALL_TIMEOUT, WATCH_BUFFER, WatchItem},
    forensics::SecretState,
    leaks::HolderOrigin,
    members::Removal,
    mesh::ExtAuthz,
    sweep::SweepReport,
    unused::{TokenUnused, UnusedReport},
    watchers::{MAX_WATCHERS, MAX_WATCHERS_PER_ORG},
};
