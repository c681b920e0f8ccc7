//! Refusal budgets: which refused calls reach an organization's audit log,
//! so that a flood of refusals can neither fill the disk nor silence anyone
//! else's audit trail.
//!
//! - **Alike refusals are one event.** Refusals that differ only in time,
//!   request id and port (same organization, actor, address, method,
//!   outcome, detail and targets) within one wall-clock minute: the first is
//!   recorded at once; the others are counted and written as one follow-up
//!   event (`count`, and `repeat_of` naming the first) once the minute is
//!   over. A repeat costs no budget.
//! - **Each distinct refusal is paid for by its caller** (a [`Payer`]): one
//!   payer records at most `per_caller` distinct events a minute in one
//!   organization.
//! - **Outsiders share a cap.** In an organization, the payers outside it
//!   (other organizations' callers, unverified callers, the control plane on
//!   its own behalf) together record at most `outside` events a minute, and
//!   one such payer at most `outside` a minute in all organizations
//!   together. An organization's own callers never compete with outsiders
//!   or with another organization's callers.
//! - **What is not recorded is counted**, and the next event recorded in
//!   that organization carries the count (`dropped_before`).
//!
//! So one organization's audit log takes at most
//! `2 × (2 × per_caller + outside)` refusal events a minute (its own
//! callers, retired secrets of its tokens and outsiders, each distinct event
//! with at most one follow-up). The tables are per minute and hold at most
//! [`CAPACITY`] entries each; beyond that, newcomers share one overflow
//! entry, so a flood of made-up organization ids or addresses cannot grow
//! memory. Budgets are per process (per replica).

use std::{
    collections::HashMap,
    hash::{BuildHasher, Hash, Hasher, RandomState},
    net::{IpAddr, Ipv6Addr, SocketAddr},
    sync::{Mutex, MutexGuard},
};

use super::{
    audit::AuditEvent, caller::Principal, ids::EventId, time::Timestamp, usage::minute_of,
};

/// Most entries of each table (and follow-ups waiting to be written).
pub const CAPACITY: usize = 4096;

/// How many refusal events are recorded, per minute.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RefusalLimits {
    /// Distinct events one payer records in one organization.
    pub per_caller: u32,
    /// Distinct events outsiders record in one organization together, and
    /// one outsider records in all organizations together.
    pub outside: u32,
}

/// Who a refusal is charged to.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Payer {
    /// A verified caller, by its organization (the control plane acting for
    /// a member: the member's organization).
    Org(String),
    /// The control plane acting on its own behalf, by credential name.
    Credential(String),
    /// A caller whose credentials did not verify, by the network it called
    /// from: its IPv4 address, or the /64 of its IPv6 address (one host
    /// commonly holds a whole /64).
    Source(Option<IpAddr>),
    /// Retired secrets of the organization's own tokens presented to Check.
    RetiredSecrets,
}

impl Payer {
    /// The payer for a verified caller.
    pub fn of(principal: &Principal) -> Self {
        match principal {
            Principal::ControlPlane {
                actor: Some(actor), ..
            } => Self::Org(actor.org_id.clone()),
            Principal::ControlPlane {
                credential,
                actor: None,
            } => Self::Credential(credential.clone()),
            Principal::ServiceToken(token) => Self::Org(token.org_id.clone()),
        }
    }

    /// The payer for an unverified caller at `peer` (the connection's address).
    pub fn source(peer: Option<SocketAddr>) -> Self {
        Self::Source(peer.map(network_of))
    }

    fn is_inside(&self, org: &str) -> bool {
        match self {
            Self::Org(own) => own == org,
            Self::RetiredSecrets => true,
            Self::Credential(_) | Self::Source(_) => false,
        }
    }
}

/// The network an unverified caller at `peer` is charged as: its IPv4
/// address, or the /64 of its IPv6 address (one host commonly holds a whole
/// /64, so charging addresses would let it multiply its budget).
pub fn network_of(peer: SocketAddr) -> IpAddr {
    match peer.ip().to_canonical() {
        IpAddr::V6(ip) => {
            let s = ip.segments();
            IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
        v4 => v4,
    }
}

/// What to do with a refusal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    /// Record it now; `dropped` refusals in its organization were not
    /// recorded since the previous event recorded there.
    Record { dropped: u64 },
    /// Alike to one recorded this minute: counted for its follow-up.
    Repeat,
    /// Over budget: counted, and reported with the organization's next event.
    Drop,
}

/// Counts per key, with one shared overflow count once the map is full.
struct Counts<K> {
    map: HashMap<K, u32>,
    overflow: u32,
}

impl<K: Eq + Hash> Counts<K> {
    fn new() -> Self {
        Self {
            map: HashMap::new(),
            overflow: 0,
        }
    }

    fn used(&self, key: &K) -> u32 {
        match self.map.get(key) {
            Some(used) => *used,
            None if self.map.len() < CAPACITY => 0,
            None => self.overflow,
        }
    }

    fn charge(&mut self, key: K) {
        if let Some(used) = self.map.get_mut(&key) {
            *used += 1;
        } else if self.map.len() < CAPACITY {
            self.map.insert(key, 1);
        } else {
            self.overflow += 1;
        }
    }

    fn clear(&mut self) {
        self.map.clear();
        self.overflow = 0;
    }
}

/// Refusals not recorded, per organization, until its next recorded event.
/// Beyond [`CAPACITY`] organizations, counts are kept without one.
#[derive(Default)]
struct Drops {
    by_org: HashMap<String, u64>,
    untracked: u64,
}

impl Drops {
    fn add(&mut self, org: &str, count: u64) {
        if let Some(dropped) = self.by_org.get_mut(org) {
            *dropped += count;
        } else if self.by_org.len() < CAPACITY {
            self.by_org.insert(org.to_owned(), count);
        } else {
            self.untracked += count;
        }
    }

    fn take(&mut self, org: &str) -> u64 {
        self.by_org.remove(org).unwrap_or(0)
    }
}

/// The first of alike refusals this minute, and how many followed it.
struct Alike {
    first: AuditEvent,
    inside: bool,
    repeats: u64,
}

struct Window {
    minute: Timestamp,
    per_caller: Counts<(String, Payer)>,
    outside_in: Counts<String>,
    outside_by: Counts<Payer>,
    alike: HashMap<u64, Alike>,
    /// Follow-ups of closed minutes, waiting to be written.
    follow_ups: Vec<AuditEvent>,
    /// Refusals to decide on and write at the next flush.
    deferred: Vec<(AuditEvent, Payer)>,
    /// Kept apart so that outsiders, who can name any organization, can
    /// never crowd an organization's own drop counts out of the table.
    dropped_inside: Drops,
    dropped_outside: Drops,
}

impl Window {
    fn drops(&mut self, inside: bool) -> &mut Drops {
        if inside {
            &mut self.dropped_inside
        } else {
            &mut self.dropped_outside
        }
    }

    fn take_dropped(&mut self, org: &str) -> u64 {
        self.dropped_inside.take(org) + self.dropped_outside.take(org)
    }

    /// Starts `minute` if it is later than the current one.
    fn roll(&mut self, minute: Timestamp, now: Timestamp) {
        if minute > self.minute {
            self.close(now);
            self.minute = minute;
        }
    }

    /// Ends the current minute: its repeats become follow-ups, its budgets
    /// start afresh.
    fn close(&mut self, now: Timestamp) {
        for (_, alike) in std::mem::take(&mut self.alike) {
            if alike.repeats == 0 {
                continue;
            }
            let mut event = alike.first;
            let id = match EventId::generate(now) {
                Ok(id) if self.follow_ups.len() < CAPACITY => id,
                // No room (follow-ups not written for a long time) or no
                // randomness: the repeats become drops, reported later.
                _ => {
                    self.drops(alike.inside).add(&event.org_id, alike.repeats);
                    continue;
                }
            };
            event.repeat_of = Some(event.id);
            event.id = id;
            event.time = now;
            event.count = alike.repeats;
            // The repeats each had their own.
            event.request_id.clear();
            event.dropped_before = self.take_dropped(&event.org_id);
            self.follow_ups.push(event);
        }
        self.per_caller.clear();
        self.outside_in.clear();
        self.outside_by.clear();
    }
}

/// The refusal budgets of one process.
pub struct RefusalLog {
    limits: RefusalLimits,
    /// Keys the alike-hash, so that no client can aim collisions.
    keys: RandomState,
    window: Mutex<Window>,
}

impl RefusalLog {
    pub fn new(limits: RefusalLimits) -> Self {
        Self {
            limits,
            keys: RandomState::new(),
            window: Mutex::new(Window {
                minute: Timestamp::from_micros(i64::MIN),
                per_caller: Counts::new(),
                outside_in: Counts::new(),
                outside_by: Counts::new(),
                alike: HashMap::new(),
                follow_ups: Vec::new(),
                deferred: Vec::new(),
                dropped_inside: Drops::default(),
                dropped_outside: Drops::default(),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Window> {
        self.window.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Decides on `event` (a refusal at `event.time`), charged to `payer`.
    pub fn admit(&self, event: &AuditEvent, payer: &Payer) -> Admission {
        let key = self.alike_key(event);
        let limits = self.limits;
        let mut window = self.lock();
        window.roll(minute_of(event.time), event.time);
        if let Some(alike) = window.alike.get_mut(&key) {
            alike.repeats += 1;
            return Admission::Repeat;
        }
        let org = event.org_id.as_str();
        let inside = payer.is_inside(org);
        let caller = (org.to_owned(), payer.clone());
        let room = window.per_caller.used(&caller) < limits.per_caller
            && (inside
                || (window.outside_in.used(&caller.0) < limits.outside
                    && window.outside_by.used(payer) < limits.outside));
        if !room {
            window.drops(inside).add(org, 1);
            return Admission::Drop;
        }
        window.per_caller.charge(caller);
        if !inside {
            window.outside_in.charge(org.to_owned());
            window.outside_by.charge(payer.clone());
        }
        // Beyond capacity, repeats of this one are simply charged as new.
        if window.alike.len() < CAPACITY {
            window.alike.insert(
                key,
                Alike {
                    first: event.clone(),
                    inside,
                    repeats: 0,
                },
            );
        }
        Admission::Record {
            dropped: window.take_dropped(org),
        }
    }

    /// Whether `payer`, an outsider everywhere (an unverified caller), may
    /// still record an event this minute. When it may not, its refusals are
    /// all dropped, so a caller can spare itself the work of finding out
    /// which organization a refusal belongs in (a store read a flood could
    /// otherwise multiply).
    pub fn outsider_has_room(&self, payer: &Payer, now: Timestamp) -> bool {
        let mut window = self.lock();
        window.roll(minute_of(now), now);
        window.outside_by.used(payer) < self.limits.outside
    }

    /// Keeps a refusal to be decided on (and written) later, by whoever
    /// takes it with [`Self::take_deferred`]: for a refusal whose write must
    /// not show in any reply's timing. Beyond [`CAPACITY`] waiting, it is
    /// counted as dropped.
    pub fn defer(&self, event: AuditEvent, payer: Payer) {
        let mut window = self.lock();
        if window.deferred.len() < CAPACITY {
            window.deferred.push((event, payer));
        } else {
            let inside = payer.is_inside(&event.org_id);
            window.drops(inside).add(&event.org_id, 1);
        }
    }

    /// The refusals deferred since the last call.
    pub fn take_deferred(&self) -> Vec<(AuditEvent, Payer)> {
        std::mem::take(&mut self.lock().deferred)
    }

    /// The follow-ups due at `now` (of every minute before `now`'s).
    pub fn take_follow_ups(&self, now: Timestamp) -> Vec<AuditEvent> {
        let mut window = self.lock();
        window.roll(minute_of(now), now);
        std::mem::take(&mut window.follow_ups)
    }

    /// Ends the current minute early (at shutdown), so that its repeats are
    /// among the follow-ups taken next.
    pub fn close_minute(&self, now: Timestamp) {
        self.lock().close(now);
    }

    /// Puts back follow-ups that could not be written, for the next try.
    pub fn requeue(&self, events: Vec<AuditEvent>) {
        let mut window = self.lock();
        for event in events {
            if window.follow_ups.len() < CAPACITY {
                window.follow_ups.push(event);
            } else {
                window.dropped_inside.add(&event.org_id, event.count);
            }
        }
    }

    /// Refusals dropped while their organization had no room in the drop
    /// tables, since the last call: they are in no audit event, only in
    /// the log line the caller writes.
    pub fn take_untracked_drops(&self) -> u64 {
        let mut window = self.lock();
        std::mem::take(&mut window.dropped_inside.untracked)
            + std::mem::take(&mut window.dropped_outside.untracked)
    }

    /// Alike refusals hash alike: everything but id, time, request id,
    /// port, and what budgets add.
    fn alike_key(&self, event: &AuditEvent) -> u64 {
        let mut hasher = self.keys.build_hasher();
        let AuditEvent {
            id: _,
            time: _,
            org_id,
            workspace_id,
            actor,
            action,
            target_token_ids,
            kind,
            outcome,
            method,
            detail,
            peer,
            peer_source,
            proxy_peer: _,
            request_id: _,
            count: _,
            repeat_of: _,
            dropped_before: _,
        } = event;
        (org_id, workspace_id, &actor.user_id, &actor.credential).hash(&mut hasher);
        (&actor.token_id, action, target_token_ids, kind).hash(&mut hasher);
        (outcome, method, detail, peer_source).hash(&mut hasher);
        match peer.parse::<SocketAddr>() {
            Ok(address) => address.ip().hash(&mut hasher),
            Err(_) => peer.hash(&mut hasher),
        }
        hasher.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{
        audit::{AuditOutcome, Origin},
        caller::Method,
    };

    const LIMITS: RefusalLimits = RefusalLimits {
        per_caller: 3,
        outside: 5,
    };
    const MINUTE: i64 = 60_000_000;

    fn refusal(org: &str, detail: &str, at: i64) -> AuditEvent {
        let time = Timestamp::from_micros(at);
        let origin = Origin {
            connection: Some("127.0.0.1:4000".parse().unwrap()),
            reported: None,
        };
        AuditEvent {
            org_id: org.to_owned(),
            ..AuditEvent::refusal(
                EventId::generate(time).unwrap(),
                time,
                Method::ListTokens,
                AuditOutcome::PermissionDenied,
                detail,
                &origin,
                "req-1",
            )
        }
    }

    fn own(org: &str) -> Payer {
        Payer::Org(org.to_owned())
    }

    #[test]
    fn alike_refusals_are_one_event_and_one_follow_up_with_their_count() {
        let log = RefusalLog::new(LIMITS);
        let first = refusal("org-a", "no", 10 * MINUTE + 1);
        assert_eq!(
            log.admit(&first, &own("org-a")),
            Admission::Record { dropped: 0 }
        );
        for i in 0..99 {
            let mut again = refusal("org-a", "no", 10 * MINUTE + 2 + i);
            again.request_id = format!("req-{i}");
            assert_eq!(log.admit(&again, &own("org-a")), Admission::Repeat);
        }
        assert!(
            log.take_follow_ups(Timestamp::from_micros(10 * MINUTE + 500))
                .is_empty()
        );
        let due = log.take_follow_ups(Timestamp::from_micros(11 * MINUTE));
        assert_eq!(due.len(), 1);
        assert_eq!((due[0].count, due[0].repeat_of), (99, Some(first.id)));
        assert!(due[0].request_id.is_empty());
        assert!(
            log.take_follow_ups(Timestamp::from_micros(12 * MINUTE))
                .is_empty()
        );
    }

    #[test]
    fn one_organization_cannot_spend_another_organizations_budget() {
        let log = RefusalLog::new(LIMITS);
        let at = 5 * MINUTE;
        for i in 0..50 {
            let flood = refusal("org-a", &format!("flood {i}"), at + i);
            log.admit(&flood, &own("org-a"));
        }
        for i in 0..3 {
            let mine = refusal("org-b", &format!("mine {i}"), at + 100 + i);
            assert!(matches!(
                log.admit(&mine, &own("org-b")),
                Admission::Record { .. }
            ));
        }
        // org-a's 47 drops are reported in org-a, not in org-b.
        let next = refusal("org-a", "next", 6 * MINUTE);
        assert_eq!(
            log.admit(&next, &own("org-a")),
            Admission::Record { dropped: 47 }
        );
    }

    #[test]
    fn outsiders_share_a_cap_that_the_organizations_own_callers_do_not_count_against() {
        let log = RefusalLog::new(LIMITS);
        let at = 7 * MINUTE;
        let mut recorded = 0;
        for source in 0..10u8 {
            let payer = Payer::source(Some(SocketAddr::from(([10, 0, 0, source], 1))));
            for i in 0..10 {
                let event = refusal("org-b", &format!("{source}/{i}"), at + i);
                if matches!(log.admit(&event, &payer), Admission::Record { .. }) {
                    recorded += 1;
                }
            }
        }
        assert_eq!(recorded, LIMITS.outside);
        // The first source's 3 recorded and 7 dropped, then the cap: the
        // second source's first event reported those 7; 88 dropped since.
        let inside = refusal("org-b", "own member", at + 50);
        assert_eq!(
            log.admit(&inside, &own("org-b")),
            Admission::Record { dropped: 88 }
        );
        let retired = refusal("org-b", "retired", at + 51);
        assert!(matches!(
            log.admit(&retired, &Payer::RetiredSecrets),
            Admission::Record { .. }
        ));
    }

    #[test]
    fn an_outsider_that_spent_its_minute_has_no_room_until_the_next() {
        let log = RefusalLog::new(LIMITS);
        let payer = Payer::source(Some(SocketAddr::from(([10, 0, 0, 1], 1))));
        let at = 3 * MINUTE;
        for org in 0..LIMITS.outside {
            assert!(log.outsider_has_room(&payer, Timestamp::from_micros(at)));
            let event = refusal(&format!("org-{org}"), "x", at);
            assert!(matches!(
                log.admit(&event, &payer),
                Admission::Record { .. }
            ));
        }
        assert!(!log.outsider_has_room(&payer, Timestamp::from_micros(at + 1)));
        assert!(log.outsider_has_room(&payer, Timestamp::from_micros(4 * MINUTE)));
    }

    #[test]
    fn ipv6_callers_are_budgeted_by_their_slash_64() {
        let a = Payer::source(Some("[2001:db8:1:2:aaaa::1]:5".parse().unwrap()));
        let b = Payer::source(Some("[2001:db8:1:2:bbbb::9]:6".parse().unwrap()));
        let c = Payer::source(Some("[2001:db8:1:3::1]:5".parse().unwrap()));
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn tables_stay_bounded_under_a_flood_of_made_up_organizations() {
        let log = RefusalLog::new(RefusalLimits {
            per_caller: 1,
            outside: u32::MAX,
        });
        let payer = Payer::source(None);
        for i in 0..(3 * CAPACITY as i64) {
            let event = refusal(&format!("org-{i}"), "x", MINUTE + i);
            log.admit(&event, &payer);
            log.admit(&event, &payer);
        }
        let window = log.lock();
        assert!(window.per_caller.map.len() <= CAPACITY);
        assert!(window.outside_in.map.len() <= CAPACITY);
        assert!(window.alike.len() <= CAPACITY);
        assert!(window.dropped_outside.by_org.len() <= CAPACITY);
    }

    #[test]
    fn drops_in_one_minute_are_reported_with_the_next_event_of_a_later_one() {
        let log = RefusalLog::new(LIMITS);
        for i in 0..5 {
            let event = refusal("org-a", &format!("{i}"), MINUTE + i);
            log.admit(&event, &own("org-a"));
        }
        let later = refusal("org-a", "later", 9 * MINUTE);
        assert_eq!(
            log.admit(&later, &own("org-a")),
            Admission::Record { dropped: 2 }
        );
    }
}
