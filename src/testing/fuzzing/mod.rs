//! Entry points for the fuzz targets in `fuzz/` and for the replay of their
//! corpora as ordinary tests (`tests/it/fuzz_replay.rs`): each takes
//! arbitrary bytes and must neither panic nor break the invariants it states.
//!
//! The `request` target goes through the very functions the handlers call
//! (`api::credentials_of`, the `TryFrom` conversions of `api::convert`,
//! `api::ext_authz::http_request`, the domain's validation, pagination and
//! authorization rules), so an invariant broken here is broken in the server.

use std::{fmt::Debug, sync::OnceLock, time::Duration};

use prost::Message;

mod mesh;

use self::mesh::ext_authz_check;
use super::fixtures;
use crate::{
    api::{convert::grace_from_proto, credentials_of, members::required_role, request_context},
    config::Config,
    domain::{
        audit::AuditQuery,
        authz::{self, Verdict},
        caller::{Actor, OrgRole, Principal, validate_actor},
        ext_authz::ExtAuthzPolicy,
        feed::{FeedCursor, FeedQuery, in_feed},
        ids::{TokenId, optional_id, parse_token_id, require_id, validate_name},
        leaks::{self, LeakSource},
        member::MemberKey,
        pagination::{self, MAX_PAGE_SIZE},
        permissions::{Catalogue, Level},
        query::{TokenQuery, audit_fingerprint, list_fingerprint, usage_fingerprint},
        routes::{DotSegments, RouteTable},
        secret,
        time::Timestamp,
        token::{NewToken, TokenKind, validate_check_query},
        unused::{self, UnusedQuery},
        usage::UsageQuery,
    },
    proto,
    service::Policy,
};

/// The token parser: anything may be presented as a token.
pub fn token(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if secret::parse(text).is_some() {
        // Only the exact shape passes: prefix, 43 + 6 base62 characters.
        assert_eq!(text.len(), secret::SECRET_LEN);
        assert!(text.is_ascii());
    }
}

/// The API-key header of the fuzzed ext_authz policy.
const API_KEY_HEADER: &str = "x-api-key";

/// The shared route rules ([`fixtures::ROUTE_POLICY`]) with credential
/// stripping, in both dot-segment modes.
fn policies() -> &'static [ExtAuthzPolicy; 2] {
    static POLICIES: OnceLock<[ExtAuthzPolicy; 2]> = OnceLock::new();
    POLICIES.get_or_init(|| {
        let text = fixtures::route_policy("strip_credentials = true");
        let catalogue = Catalogue::default();
        let compile = |dots: &str| {
            let mut config = Config::from_toml(&text).unwrap_or_default();
            config.ext_authz.dot_segments = toml::Value::String(dots.into())
                .try_into()
                .unwrap_or_default();
            config
                .ext_authz
                .compile(&catalogue)
                .unwrap_or_else(|_| ExtAuthzPolicy {
                    limits: crate::domain::ext_authz::HeadLimits {
                        max_headers: config.ext_authz.max_headers,
                        max_header_bytes: config.ext_authz.max_header_bytes,
                    },
                    routes: RouteTable::new(Vec::new(), DotSegments::Reject),
                    unmatched: crate::domain::ext_authz::Unmatched::Deny,
                    api_key_header: None,
                    strip_credentials: false,
                })
        };
        [compile("reject"), compile("resolve")]
    })
}

/// The path normalizer and the route matcher: the first byte picks the
/// dot-segment mode and the method, the rest is the request target.
pub fn route(data: &[u8]) {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let Ok(target) = std::str::from_utf8(rest) else {
        return;
    };
    let table = &policies()[usize::from(selector & 1)].routes;
    let method = if selector & 2 == 0 { "GET" } else { "POST" };
    if let Ok(path) = table.normalize(target) {
        // A normalized path never carries what could mean something else
        // upstream: no empty, `.` or `..` segment, no slash inside a
        // segment, no path parameter.
        for segment in path.segments() {
            assert!(!segment.is_empty() && segment != "." && segment != "..");
            assert!(!segment.contains(['/', ';']));
        }
        if let Some(matched) = table.find(method, &path) {
            // A capture is a whole segment of the path.
            for (_, value) in &matched.captures {
                assert!(path.segments().iter().any(|s| s == value));
            }
        }
    }
}

/// The request messages the `request` target covers, by selector (its
/// first byte, modulo their number): every request of every service in
/// `proto/tokenauth/v1/`, and Envoy's ext_authz `CheckRequest`.
pub const REQUEST_MESSAGES: [&str; 16] = [
    "tokenauth.v1.IssueTokenRequest",
    "tokenauth.v1.GetTokenRequest",
    "tokenauth.v1.ListTokensRequest",
    "tokenauth.v1.RevokeTokenRequest",
    "tokenauth.v1.RevokeAllRequest",
    "tokenauth.v1.RotateTokenRequest",
    "tokenauth.v1.ListTokenUsageRequest",
    "tokenauth.v1.ListAuditEventsRequest",
    "tokenauth.v1.CheckRequest",
    "tokenauth.v1.BackupRequest",
    "envoy.service.auth.v3.CheckRequest",
    "tokenauth.v1.ReportLeakedSecretsRequest",
    "tokenauth.v1.SetMemberRequest",
    "tokenauth.v1.RemoveMemberRequest",
    "tokenauth.v1.ReportUnusedPermissionsRequest",
    "tokenauth.v1.WatchEventsRequest",
];

/// Every request message, decoded from wire bytes and converted into domain
/// types as its handler does: the first byte picks the message (see
/// [`REQUEST_MESSAGES`]), the rest is its encoding. Returns the message's
/// name when it decoded and every conversion accepted it, so that the
/// replay can tell that the corpus reaches each message's invariants.
pub fn request(data: &[u8]) -> Option<&'static str> {
    let (&selector, bytes) = data.split_first()?;
    let index = usize::from(selector) % REQUEST_MESSAGES.len();
    let accepted = match index {
        0 => issue_token(bytes),
        1 => token_by_id(bytes, |m: &proto::GetTokenRequest| {
            (&m.id, m.actor.as_ref())
        }),
        2 => list_tokens(bytes),
        3 => token_by_id(bytes, |m: &proto::RevokeTokenRequest| {
            (&m.id, m.actor.as_ref())
        }),
        4 => revoke_all(bytes),
        5 => rotate_token(bytes),
        6 => list_token_usage(bytes),
        7 => list_audit_events(bytes),
        8 => check(bytes),
        9 => backup(bytes),
        10 => ext_authz_check(bytes),
        11 => report_leaked_secrets(bytes),
        12 => set_member(bytes),
        13 => remove_member(bytes),
        14 => report_unused_permissions(bytes),
        _ => watch_events(bytes),
    };
    accepted.map(|()| REQUEST_MESSAGES[index])
}

/// The service's rules with the default configuration.
// A fuzz harness states what must hold by panicking; the default
// configuration's validity is also a unit test of `config`.
#[allow(clippy::expect_used)]
fn service_policy() -> &'static Policy {
    static POLICY: OnceLock<Policy> = OnceLock::new();
    POLICY.get_or_init(|| {
        Config::default()
            .policy()
            .expect("the default configuration is valid")
    })
}

/// Decodes a message; what decodes re-encodes to a message that decodes
/// equal (unknown fields are dropped once, then stable).
fn decode<M: Message + Default + PartialEq + Debug>(bytes: &[u8]) -> Option<M> {
    let message = M::decode(bytes).ok()?;
    let again = M::decode(message.encode_to_vec().as_slice()).ok();
    assert_eq!(
        again.as_ref(),
        Some(&message),
        "re-encoding changed the message"
    );
    Some(message)
}

/// The actor a control-plane call asserts, read by `credentials_of` (as
/// every management handler reads it) and validated as `authenticate`
/// validates it. `None` when none is asserted or it is invalid.
fn asserted_actor(asserted: Option<&proto::Actor>) -> Option<Actor> {
    let mut request = tonic::Request::new(());
    request.metadata_mut().insert(
        request_context::HEADER,
        tonic::metadata::MetadataValue::from_static("fuzz"),
    );
    let credentials = credentials_of(&request, asserted);
    assert!(credentials.bearer.is_none());
    assert_eq!(credentials.request_id, "fuzz");
    // An empty Actor message is the same as none.
    let empty = asserted.is_none_or(|a| *a == proto::Actor::default());
    assert_eq!(credentials.actor.is_none(), empty);
    let (asserted, claim) = (asserted?, credentials.actor?);
    let actor = validate_actor(&claim).ok()?;
    assert!(require_id("user_id", &actor.user_id).is_ok());
    assert!(require_id("org_id", &actor.org_id).is_ok());
    assert_eq!(
        (actor.user_id.as_str(), actor.org_id.as_str()),
        (asserted.user_id.as_str(), asserted.org_id.as_str())
    );
    let role = match actor.role {
        OrgRole::ReadOnly => proto::OrgRole::ReadOnly,
        OrgRole::ReadWrite => proto::OrgRole::ReadWrite,
        OrgRole::Admin => proto::OrgRole::Admin,
    };
    assert_eq!(role as i32, asserted.org_role);
    Some(actor)
}

fn control_plane(actor: Option<Actor>) -> Principal {
    Principal::ControlPlane {
        credential: "fuzz".into(),
        actor,
    }
}

/// An allow by the control plane for an actor is always within the actor's
/// own organization.
fn assert_within_actor_org(verdict: &Verdict, principal: &Principal, org_id: &str) {
    if *verdict == Verdict::Allow
        && let Principal::ControlPlane {
            actor: Some(actor), ..
        } = principal
    {
        assert_eq!(
            actor.org_id, org_id,
            "allowed outside the actor's organization"
        );
    }
}

/// A token id from a request field, as the handlers parse it (and hint it to
/// `authenticate`): it prints back as the text, in canonical case.
fn token_id(text: &str) -> Option<TokenId> {
    let hint = TokenId::parse(text);
    let id = parse_token_id("id", text).ok();
    assert_eq!(hint, id);
    let id = id?;
    let printed = id.to_string();
    assert_eq!(TokenId::parse(&printed), Some(id));
    assert_eq!(TokenId::from_bytes(id.to_bytes()), id);
    assert!(printed.eq_ignore_ascii_case(text));
    assert_eq!(printed.len(), text.len());
    Some(id)
}

/// An optional id filter: `None` exactly when empty, otherwise the request's
/// value, a valid id.
fn assert_filter(filter: Option<&String>, requested: &str) {
    assert_eq!(
        filter.map(String::as_str),
        (!requested.is_empty()).then_some(requested)
    );
    if let Some(value) = filter {
        assert!(require_id("filter", value).is_ok());
    }
}

/// The page size served for a requested one: refused only when negative,
/// otherwise 1 to `MAX_PAGE_SIZE`, and what was asked when that is allowed.
fn page_size(requested: i32) -> Option<usize> {
    let served = pagination::page_size(requested);
    assert_eq!(served.is_err(), requested < 0);
    let served = served.ok()?;
    assert!((1..=MAX_PAGE_SIZE).contains(&served));
    if let Ok(asked @ 1..) = usize::try_from(requested) {
        assert_eq!(served, asked.min(MAX_PAGE_SIZE));
    }
    Some(served)
}

/// A page token accepted for a listing is the encoding of the cursor it
/// decodes to (hex, in either case): no other text continues a listing.
fn page_token(token: &str, fingerprint: [u8; 8]) -> Option<Option<Vec<u8>>> {
    let cursor = pagination::decode(token, fingerprint).ok()?;
    match &cursor {
        None => assert!(token.is_empty()),
        Some(cursor) => assert!(
            pagination::encode(fingerprint, cursor).eq_ignore_ascii_case(token),
            "a page token that is not the encoding of its cursor was accepted"
        ),
    }
    Some(cursor)
}

/// An optional time bound: the request's instant, to the microsecond.
fn assert_bound(bound: Option<Timestamp>, requested: Option<&prost_types::Timestamp>) {
    assert_eq!(bound.is_some(), requested.is_some());
    if let (Some(bound), Some(requested)) = (bound, requested) {
        let micros = requested.nanos - requested.nanos % 1_000;
        assert_eq!(bound.to_parts(), (requested.seconds, micros));
    }
}

fn assert_range(start: Option<Timestamp>, end: Option<Timestamp>) {
    if let (Some(start), Some(end)) = (start, end) {
        assert!(start < end, "an empty or inverted time range was accepted");
    }
}

fn issue_token(bytes: &[u8]) -> Option<()> {
    let message: proto::IssueTokenRequest = decode(bytes)?;
    let principal = control_plane(asserted_actor(message.actor.as_ref()));
    let policy = service_policy();
    let now = Timestamp::now();
    let new = NewToken::try_from(message).ok()?;
    let valid = new
        .validate(&policy.catalogue, &policy.lifetime, now)
        .ok()?;
    assert!(require_id("org_id", &valid.org_id).is_ok());
    assert!(optional_id("workspace_id", &valid.workspace_id).is_ok());
    assert_eq!(validate_name(&valid.name).ok().as_ref(), Some(&valid.name));
    let workspace_level = !valid.workspace_id.is_empty();
    for permission in &valid.permissions {
        let level = policy.catalogue.grant_level(permission);
        assert!(level.is_ok(), "an unknown permission was granted");
        if workspace_level || valid.kind == TokenKind::Service {
            let wanted = if workspace_level {
                Level::Workspace
            } else {
                Level::Organization
            };
            assert_eq!(level.ok(), Some(wanted), "a permission of the wrong level");
        }
    }
    let max = match valid.kind {
        TokenKind::Personal => {
            assert!(require_id("owner_user_id", &valid.owner_user_id).is_ok());
            policy.lifetime.personal_max
        }
        TokenKind::Service => {
            assert!(valid.owner_user_id.is_empty());
            policy.lifetime.service_max
        }
    };
    // The default configuration bounds every lifetime.
    assert!(max.is_some());
    let latest = now.saturating_add(max.unwrap_or_default());
    assert!(
        valid.expires_at.is_some_and(|at| now < at && at <= latest),
        "an expiry in the past or beyond the maximum lifetime"
    );
    let verdict = authz::issue(&principal, &valid, &policy.roles);
    assert_within_actor_org(&verdict, &principal, &valid.org_id);
    if verdict == Verdict::Allow
        && let Principal::ControlPlane {
            actor: Some(actor), ..
        } = &principal
    {
        match valid.kind {
            TokenKind::Service => assert_eq!(actor.role, OrgRole::Admin),
            TokenKind::Personal => assert_eq!(actor.user_id, valid.owner_user_id),
        }
    }
    Some(())
}

/// GetToken and RevokeToken: a token id and an actor.
fn token_by_id<M: Message + Default + PartialEq + Debug>(
    bytes: &[u8],
    fields: fn(&M) -> (&String, Option<&proto::Actor>),
) -> Option<()> {
    let message: M = decode(bytes)?;
    let (id, actor) = fields(&message);
    asserted_actor(actor);
    token_id(id)?;
    Some(())
}

fn list_tokens(bytes: &[u8]) -> Option<()> {
    let message: proto::ListTokensRequest = decode(bytes)?;
    let principal = control_plane(asserted_actor(message.actor.as_ref()));
    let (size, token) = (message.page_size, message.page_token.clone());
    let mut query = TokenQuery::try_from(message.clone()).ok()?;
    assert_eq!(query.org_id, message.org_id);
    assert!(require_id("org_id", &query.org_id).is_ok());
    assert_filter(query.workspace_id.as_ref(), &message.workspace_id);
    assert_filter(query.owner_user_id.as_ref(), &message.owner_user_id);
    assert_eq!(query.include_revoked, message.include_revoked);
    page_size(size)?;
    let verdict = authz::list(&principal, &mut query);
    assert_within_actor_org(&verdict, &principal, &query.org_id);
    if verdict == Verdict::Allow
        && let Principal::ControlPlane {
            actor: Some(actor), ..
        } = &principal
        && actor.role != OrgRole::Admin
    {
        // A member lists their own personal tokens, whatever was asked.
        assert_eq!(query.owner_user_id.as_ref(), Some(&actor.user_id));
        assert_eq!(query.kind, Some(TokenKind::Personal));
    }
    // The page token is bound to the query as authorization narrowed it.
    let fingerprint = list_fingerprint(&query);
    page_token(&token, fingerprint)?;
    pagination::decode_id(&token, fingerprint).ok()?;
    Some(())
}

fn revoke_all(bytes: &[u8]) -> Option<()> {
    let message: proto::RevokeAllRequest = decode(bytes)?;
    let principal = control_plane(asserted_actor(message.actor.as_ref()));
    let selector = TokenQuery::try_from(message.clone()).ok()?;
    assert_eq!(selector.org_id, message.org_id);
    assert!(!selector.include_revoked);
    assert!(require_id("org_id", &selector.org_id).is_ok());
    assert_filter(selector.workspace_id.as_ref(), &message.workspace_id);
    assert_filter(selector.owner_user_id.as_ref(), &message.owner_user_id);
    let verdict = authz::revoke_all(&principal, &selector);
    assert_within_actor_org(&verdict, &principal, &selector.org_id);
    if verdict == Verdict::Allow
        && let Principal::ControlPlane { actor: None, .. } = &principal
    {
        // On its own behalf, the control plane revokes one user's tokens only.
        assert!(selector.owner_user_id.is_some());
    }
    Some(())
}

fn rotate_token(bytes: &[u8]) -> Option<()> {
    let message: proto::RotateTokenRequest = decode(bytes)?;
    asserted_actor(message.actor.as_ref());
    token_id(&message.id)?;
    let grace = grace_from_proto(message.grace_period.as_ref()).ok()?;
    match &message.grace_period {
        None => assert_eq!(grace, Duration::ZERO),
        Some(asked) => {
            assert_eq!(u64::try_from(asked.seconds).ok(), Some(grace.as_secs()));
            assert_eq!(u32::try_from(asked.nanos).ok(), Some(grace.subsec_nanos()));
        }
    }
    Some(())
}

fn list_token_usage(bytes: &[u8]) -> Option<()> {
    let message: proto::ListTokenUsageRequest = decode(bytes)?;
    let principal = control_plane(asserted_actor(message.actor.as_ref()));
    let query = UsageQuery::try_from(&message).ok()?;
    assert_eq!(query.org_id, message.org_id);
    assert!(require_id("org_id", &query.org_id).is_ok());
    match query.token_id {
        None => assert!(message.token_id.is_empty()),
        Some(id) => assert_eq!(token_id(&message.token_id), Some(id)),
    }
    assert_bound(query.start, message.start_time.as_ref());
    assert_bound(query.end, message.end_time.as_ref());
    assert_range(query.start, query.end);
    page_size(message.page_size)?;
    if query.token_id.is_none() {
        let verdict = authz::read_org_usage(&principal, &query.org_id);
        assert_within_actor_org(&verdict, &principal, &query.org_id);
    }
    page_token(&message.page_token, usage_fingerprint(&query))?;
    Some(())
}

fn list_audit_events(bytes: &[u8]) -> Option<()> {
    let message: proto::ListAuditEventsRequest = decode(bytes)?;
    let principal = control_plane(asserted_actor(message.caller_actor.as_ref()));
    let query = AuditQuery::try_from(&message).ok()?;
    assert_eq!(query.org_id, message.org_id);
    assert!(require_id("org_id", &query.org_id).is_ok());
    assert_filter(query.workspace_id.as_ref(), &message.workspace_id);
    assert_filter(query.actor.as_ref(), &message.actor);
    match query.token_id {
        None => assert!(message.token_id.is_empty()),
        Some(id) => assert_eq!(token_id(&message.token_id), Some(id)),
    }
    assert_eq!(query.action.is_none(), message.action == 0);
    assert_bound(query.start, message.start_time.as_ref());
    assert_bound(query.end, message.end_time.as_ref());
    assert_range(query.start, query.end);
    page_size(message.page_size)?;
    let verdict = authz::read_org(&principal, &query.org_id);
    assert_within_actor_org(&verdict, &principal, &query.org_id);
    page_token(&message.page_token, audit_fingerprint(&query))?;
    Some(())
}

fn check(bytes: &[u8]) -> Option<()> {
    let message: proto::CheckRequest = decode(bytes)?;
    if secret::parse(&message.token).is_some() {
        assert_eq!(message.token.len(), secret::SECRET_LEN);
    }
    let catalogue = &service_policy().catalogue;
    let query = validate_check_query(
        catalogue,
        &message.permission,
        &message.org_id,
        &message.workspace_id,
    )
    .ok()?;
    // An exact permission of the catalogue, indexed as usage records name it.
    assert_eq!(
        catalogue.name(query.permission_index),
        Some(query.permission)
    );
    assert!(require_id("org_id", query.org_id).is_ok());
    assert!(optional_id("workspace_id", query.workspace_id).is_ok());
    if query.level == Level::Workspace {
        assert!(!query.workspace_id.is_empty());
    }
    Some(())
}

fn backup(bytes: &[u8]) -> Option<()> {
    let message: proto::BackupRequest = decode(bytes)?;
    // No fields: nothing of the request reaches the domain.
    assert!(message.encode_to_vec().is_empty());
    // The handler asserts no actor: the control plane acts on its own behalf.
    assert!(asserted_actor(None).is_none());
    assert_eq!(authz::backup(&control_plane(None)), Verdict::Allow);
    Some(())
}

#[cfg(test)]
mod tests;

/// Anyone may report secrets (no credential): what a report names is sorted
/// before any lookup, and what it says about itself (source, url) goes to
/// logs and the audit log only when it cannot carry a secret.
fn report_leaked_secrets(bytes: &[u8]) -> Option<()> {
    let message: proto::ReportLeakedSecretsRequest = decode(bytes)?;
    let source = LeakSource::new(&message.source, &message.url).ok()?;
    assert!(source.source.len() <= leaks::MAX_SOURCE_BYTES);
    assert!(source.url.len() <= leaks::MAX_URL_BYTES);
    assert!(!secret::mentions_a_secret(&source.detail()));
    let (well_formed, malformed) = leaks::sort_reported(&message.secrets).ok()?;
    assert!(!message.secrets.is_empty() && message.secrets.len() <= leaks::MAX_REPORTED_SECRETS);
    // Each well-formed secret is looked up once, and only those.
    assert!(well_formed.windows(2).all(|pair| pair[0] < pair[1]));
    assert!(well_formed.iter().all(|s| secret::parse(s).is_some()));
    let parsed = message
        .secrets
        .iter()
        .filter(|s| secret::parse(s).is_some())
        .count();
    assert_eq!(
        usize::try_from(malformed).ok()? + parsed,
        message.secrets.len()
    );
    if message.dry_run {
        // A dry run tells which secrets are live: an ADMIN's only.
        let principal = control_plane(asserted_actor(message.actor.as_ref()));
        if authz::preview_leak_report(&principal) == Verdict::Allow {
            assert!(matches!(
                &principal,
                Principal::ControlPlane { actor: Some(actor), .. } if actor.role == OrgRole::Admin
            ));
        }
    }
    Some(())
}

/// A member change names a valid member key and, for SetMember, a role;
/// only the control plane, or an ADMIN of that organization, may make it.
fn member_change(org_id: &str, user_id: &str, actor: Option<&proto::Actor>) -> Option<MemberKey> {
    let principal = control_plane(asserted_actor(actor));
    let key = MemberKey::new(org_id, user_id).ok()?;
    assert_eq!(
        (key.org_id.as_str(), key.user_id.as_str()),
        (org_id, user_id)
    );
    let verdict = authz::members(&principal, &key.org_id, None);
    assert_within_actor_org(&verdict, &principal, &key.org_id);
    if verdict == Verdict::Allow
        && let Principal::ControlPlane {
            actor: Some(actor), ..
        } = &principal
    {
        assert_eq!(actor.role, OrgRole::Admin);
    }
    // What a removal (or its dry run) reaches: the member's own personal
    // tokens in that organization, never another's.
    let reach = key.tokens();
    assert_eq!(reach.org_id, key.org_id);
    assert_eq!(reach.owner_user_id.as_deref(), Some(user_id));
    assert_eq!(reach.kind, Some(TokenKind::Personal));
    assert!(!reach.include_revoked);
    Some(key)
}

fn set_member(bytes: &[u8]) -> Option<()> {
    let message: proto::SetMemberRequest = decode(bytes)?;
    member_change(&message.org_id, &message.user_id, message.actor.as_ref())?;
    let role = required_role(message.org_role).ok()?;
    let named = match role {
        OrgRole::ReadOnly => proto::OrgRole::ReadOnly,
        OrgRole::ReadWrite => proto::OrgRole::ReadWrite,
        OrgRole::Admin => proto::OrgRole::Admin,
    };
    assert_eq!(named as i32, message.org_role);
    Some(())
}

fn remove_member(bytes: &[u8]) -> Option<()> {
    let message: proto::RemoveMemberRequest = decode(bytes)?;
    member_change(&message.org_id, &message.user_id, message.actor.as_ref())?;
    Some(())
}

/// The least-privilege report reveals what tokens did: only an ADMIN of the
/// organization reads it; its window never starts after now, nor is a
/// future `since` accepted; its page token is bound to the query.
fn report_unused_permissions(bytes: &[u8]) -> Option<()> {
    let message: proto::ReportUnusedPermissionsRequest = decode(bytes)?;
    let principal = control_plane(asserted_actor(message.actor.as_ref()));
    let query = UnusedQuery::try_from(&message).ok()?;
    assert_eq!(query.org_id, message.org_id);
    assert_filter(query.workspace_id.as_ref(), &message.workspace_id);
    assert_bound(query.since, message.since.as_ref());
    let served = unused::page_size(message.page_size).ok()?;
    assert!((1..=unused::MAX_PAGE_TOKENS).contains(&served));
    let now = Timestamp::now();
    match unused::window_start(query.since, now, &service_policy().usage_retention) {
        Ok(start) => assert!(start <= now),
        Err(_) => assert!(query.since.is_some_and(|since| since > now)),
    }
    let verdict = authz::read_org_usage(&principal, &query.org_id);
    assert_within_actor_org(&verdict, &principal, &query.org_id);
    page_token(&message.page_token, query.fingerprint())?;
    Some(())
}

/// The change feed is a live tap on an organization's tokens: only the
/// control plane watches every organization, an actor only their own (an
/// ADMIN); only changes are in it, each action once; a cursor is only one
/// the feed gave.
fn watch_events(bytes: &[u8]) -> Option<()> {
    let message: proto::WatchEventsRequest = decode(bytes)?;
    let principal = control_plane(asserted_actor(message.caller_actor.as_ref()));
    let query = FeedQuery::try_from(&message).ok()?;
    assert_eq!(
        query.org_id.as_deref(),
        (!message.org_id.is_empty()).then_some(message.org_id.as_str())
    );
    assert!(query.actions.iter().all(|action| in_feed(*action)));
    assert!(query.actions.len() <= message.actions.len());
    for (i, action) in query.actions.iter().enumerate() {
        assert!(!query.actions[..i].contains(action), "each action once");
    }
    let cursor = FeedCursor::decode(&message.after).ok()?;
    if !message.after.is_empty() {
        assert!(cursor.encode().eq_ignore_ascii_case(&message.after));
    }
    let verdict = authz::watch_events(&principal, query.org_id.as_deref());
    match &principal {
        Principal::ControlPlane {
            actor: Some(actor), ..
        } if verdict == Verdict::Allow => {
            assert_eq!(query.org_id.as_deref(), Some(actor.org_id.as_str()));
            assert_eq!(actor.role, OrgRole::Admin);
        }
        _ => {}
    }
    Some(())
}
