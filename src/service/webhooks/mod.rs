//! Webhooks: the change feed delivered to the endpoints an operator
//! configured (`[[webhooks]]`), signed as the Standard Webhooks
//! specification says (`domain::webhook`).
//!
//! Each endpoint is a durable consumer of the feed: one task
//! (`deliver.rs`) delivers its events in feed order, one request in flight,
//! and records in the store after each success where it is, so that a
//! crash redelivers the event it was on and never skips one (at least
//! once). With a store shared by replicas, the task first takes the
//! endpoint's lease (`Store::try_lease`), so that one replica at a time
//! delivers. Failed attempts are retried with backoff until the event is
//! older than the endpoint's `max_age`, then parked in its failed
//! deliveries, which an operator lists and redelivers (`operator.rs`).
//! These tasks share nothing with Check or the management calls but the
//! store, which they read a page at a time.

use std::{sync::Arc, time::Duration};

use rustls_pki_types::{CertificateDer, pem::PemObject};

use crate::domain::{
    audit::AuditEvent,
    feed::FeedQuery,
    webhook::{RetryPolicy, SigningSecret, event_type},
};

mod deliver;
mod http;
mod operator;

pub use deliver::{Delivery, DeliveryTask, POLL_INTERVAL};
pub use operator::MAX_REDELIVER_IDS;

/// Where an endpoint's requests go, read from its URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub https: bool,
    pub host: String,
    pub port: u16,
    /// The `Host` header: host, and port when not the scheme's.
    pub authority: String,
    pub path_and_query: String,
}

impl Target {
    /// Reads an `http://` or `https://` URL; refuses one with credentials
    /// in it (they would travel in every log of every proxy on the way).
    pub fn parse(url: &str) -> Result<Self, String> {
        // Not quoted: its query or user part may hold a secret.
        let uri: ::http::Uri = url.parse().map_err(|_| "is not a URL".to_owned())?;
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err("must start with https:// or http://".into()),
        };
        let authority = uri.authority().ok_or("must name a host")?;
        if authority.as_str().contains('@') {
            return Err(
                "must not hold credentials (user:password@); the signature authenticates tokenauth"
                    .into(),
            );
        }
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        if host.is_empty() {
            return Err("must name a host".into());
        }
        let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
        Ok(Self {
            https,
            host: host.to_owned(),
            port,
            authority: authority.as_str().to_owned(),
            path_and_query: uri
                .path_and_query()
                .map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned()),
        })
    }
}

/// One configured endpoint, checked.
pub struct Endpoint {
    /// Its stable id: the key of its progress and lease.
    pub name: String,
    pub target: Target,
    /// For an `https` target.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    pub secret: SigningSecret,
    /// The types delivered; empty: every one.
    pub event_types: Vec<String>,
    pub org_id: Option<String>,
    pub timeout: Duration,
    pub retry: RetryPolicy,
    pub max_failed: usize,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Not the URL: its query may hold a receiver's own token.
        f.debug_struct("Endpoint")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl Endpoint {
    /// `ca_pem`: the CA certificates an `https` target's certificate must
    /// chain to.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        name: String,
        target: Target,
        ca_pem: Option<&[u8]>,
        secret: SigningSecret,
        event_types: Vec<String>,
        org_id: Option<String>,
        timeout: Duration,
        retry: RetryPolicy,
        max_failed: usize,
    ) -> Result<Self, String> {
        let tls = match ca_pem {
            Some(pem) if target.https => Some(Arc::new(client_tls(pem)?)),
            _ => None,
        };
        Ok(Self {
            name,
            target,
            tls,
            secret,
            event_types,
            org_id,
            timeout,
            retry,
            max_failed,
        })
    }

    /// What the endpoint reads of the feed: its organization's events.
    fn query(&self) -> FeedQuery {
        FeedQuery {
            org_id: self.org_id.clone(),
            actions: Vec::new(),
        }
    }

    /// The type `event` is delivered under, if this endpoint takes it.
    fn type_of(&self, event: &AuditEvent) -> Option<&'static str> {
        let name = event_type(event.action, event.method)?;
        (self.event_types.is_empty() || self.event_types.iter().any(|t| t == name)).then_some(name)
    }
}

fn client_tls(pem: &[u8]) -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pem) {
        let cert = cert.map_err(|e| format!("not PEM certificates: {e}"))?;
        // A bundle may hold a certificate rustls cannot use; the others serve.
        let _ = roots.add(cert);
    }
    if roots.is_empty() {
        return Err("holds no usable CA certificate".into());
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{domain::feed::FeedCursor, store::StoreError};

    /// Refuses every read of the feed: what a start that looked for the
    /// feed's end by reading it all would need.
    struct NoFeedReads;

    impl crate::store::layered::Hook for NoFeedReads {
        async fn before(
            &self,
            operation: crate::store::layered::Operation,
        ) -> Result<(), StoreError> {
            if operation == crate::store::layered::Operation::ReadFeed {
                return Err(StoreError::unavailable("the feed was read"));
            }
            Ok(())
        }
    }

    #[tokio::test]
    async fn a_new_endpoint_starts_at_the_feeds_end_without_reading_the_feed() {
        use crate::domain::audit::AuditAction;
        use crate::store::{Store, layered::Layered, memory::MemoryStore};
        let inner: Arc<dyn Store> = Arc::new(MemoryStore::new());
        for n in 0..3 {
            let event = crate::store::conformance::event("org-w", n, AuditAction::Issued, vec![]);
            inner.append_audit(&event).await.unwrap();
        }
        let end = inner
            .read_feed(&FeedQuery::default(), FeedCursor::START, 100)
            .await
            .unwrap()
            .reached;
        assert!(end > FeedCursor::START);
        let store = Layered::<NoFeedReads>::new(Arc::clone(&inner), NoFeedReads);
        let endpoint = Endpoint::new(
            "new".into(),
            Target::parse("http://127.0.0.1:9/").unwrap(),
            None,
            SigningSecret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap(),
            Vec::new(),
            None,
            Duration::from_secs(1),
            RetryPolicy {
                initial: Duration::from_secs(1),
                cap: Duration::from_secs(1),
                max_age: Duration::from_secs(1),
            },
            10,
        )
        .unwrap();
        let start = deliver::start_position(&store, &endpoint).await.unwrap();
        assert_eq!(start, end);
        assert_eq!(inner.webhook_cursor("new").await.unwrap(), Some(end));
    }

    #[test]
    fn urls_are_read_with_their_defaults() {
        let t = Target::parse("https://hooks.example.com/in?x=1").unwrap();
        assert_eq!(
            (
                t.https,
                t.host.as_str(),
                t.port,
                t.authority.as_str(),
                t.path_and_query.as_str()
            ),
            (
                true,
                "hooks.example.com",
                443,
                "hooks.example.com",
                "/in?x=1"
            )
        );
        let t = Target::parse("http://127.0.0.1:8080").unwrap();
        assert_eq!((t.port, t.path_and_query.as_str()), (8080, "/"));
        let t = Target::parse("http://[::1]:9/").unwrap();
        assert_eq!(t.host, "::1");
        for bad in [
            "ftp://x/",
            "hooks.example.com/in",
            "https://u:p@x/",
            "http:///",
        ] {
            assert!(Target::parse(bad).is_err(), "{bad}");
        }
    }
}
