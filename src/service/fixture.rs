//! A token authority over the in-memory store, for the service's unit
//! tests: no network, no server, no disk; the real cache, and a store that
//! passes the same contract as sled and PostgreSQL (`store::conformance`).

use std::{sync::Arc, time::Duration};

use sha2::{Digest as _, Sha256};

use super::{
    authority::{ControlPlaneCredential, Policy, TokenAuthority},
    cache::{CacheSettings, TokenCache},
    recorder::Recorder,
};
use crate::{
    config::Config,
    domain::{
        audit::{AuditEvent, AuditQuery},
        caller::{Actor, Caller, Credentials, OrgRole, Principal},
        ids::TokenId,
        secret::{Keyring, PepperKey},
        token::{NewToken, TokenKind},
    },
    metrics::Metrics,
    store::{Store, memory::MemoryStore},
};

/// The control-plane credential the fixture accepts (by its SHA-256).
pub(super) const CONTROL_PLANE: &str = "the control plane's credential";

pub(super) struct Fixture {
    pub authority: TokenAuthority,
    pub store: Arc<dyn Store>,
}

pub(super) fn fixture() -> Fixture {
    fixture_over(Arc::new(MemoryStore::new()))
}

/// [`fixture`] over `store` (e.g. the in-memory store behind a hook).
pub(super) fn fixture_over(store: Arc<dyn Store>) -> Fixture {
    build(store, |_| {})
}

/// [`fixture`] with the default policy changed by `adjust`.
pub(super) fn fixture_with_policy(adjust: impl FnOnce(&mut Policy)) -> Fixture {
    build(Arc::new(MemoryStore::new()), adjust)
}

fn build(store: Arc<dyn Store>, adjust: impl FnOnce(&mut Policy)) -> Fixture {
    let mut policy = Config::default().policy().unwrap();
    adjust(&mut policy);
    policy.control_plane = vec![ControlPlaneCredential {
        name: "cp".into(),
        sha256: Sha256::digest(CONTROL_PLANE.as_bytes()).into(),
    }];
    let keyring = Keyring::new(vec![PepperKey::new(1, b"test pepper")]).unwrap();
    let metrics = Metrics::new(None, Duration::from_secs(60)).unwrap();
    let recorder = Arc::new(Recorder::new(
        policy.catalogue.clone(),
        policy.refusal_limits,
    ));
    let cache = TokenCache::new(&CacheSettings {
        capacity: 100,
        negative_capacity: 100,
        negative_ttl: Duration::from_secs(60),
    });
    let authority = TokenAuthority::new(
        Arc::clone(&store),
        cache,
        keyring,
        policy,
        recorder,
        metrics,
    );
    Fixture { authority, store }
}

/// What a call from 127.0.0.1 presenting `bearer` (if any) carries.
pub(super) fn credentials(bearer: Option<&str>) -> Credentials {
    Credentials {
        bearer: bearer.map(|b| Ok(b.to_owned())),
        actor: None,
        peer: Some("127.0.0.1:4000".parse().unwrap()),
        request_id: "req-1".into(),
    }
}

/// The control plane acting for an ADMIN of `org`.
pub(super) fn admin(org: &str) -> Caller {
    Caller {
        principal: Principal::ControlPlane {
            credential: "cp".into(),
            actor: Some(Actor {
                user_id: "admin".into(),
                org_id: org.into(),
                role: OrgRole::Admin,
            }),
        },
        peer: Some("127.0.0.1:4000".parse().unwrap()),
        request_id: "req-1".into(),
    }
}

impl Fixture {
    /// Issues a service token of `org` (in `workspace`, or org-level when
    /// empty) holding `permissions`; returns its id and secret.
    pub async fn issue(
        &self,
        org: &str,
        workspace: &str,
        permissions: &[&str],
    ) -> (TokenId, String) {
        let new = NewToken {
            kind: TokenKind::Service,
            org_id: org.into(),
            workspace_id: workspace.into(),
            name: "t".into(),
            permissions: permissions.iter().map(|p| (*p).to_owned()).collect(),
            expires_at: None,
            owner_user_id: String::new(),
        };
        let (view, secret) = self.authority.issue(&admin(org), new).await.unwrap();
        (view.record.id, secret.expose().to_owned())
    }

    /// The audit events of `org`, newest first.
    pub async fn audit(&self, org: &str) -> Vec<AuditEvent> {
        let query = AuditQuery {
            org_id: org.into(),
            ..AuditQuery::default()
        };
        self.store
            .list_audit(&query, None, 100)
            .await
            .unwrap()
            .events
    }
}
