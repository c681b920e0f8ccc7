//! How the store reaches PostgreSQL: the transport a URL may use (TLS,
//! or plaintext only where that is safe or asked for) and the connection
//! settings every pooled connection gets (keepalives, user timeout).

use std::{sync::Arc, time::Duration};

use rustls_pki_types::{CertificateDer, pem::PemObject};
use tokio_postgres::config::{SslMode, TargetSessionAttrs};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::store::StoreError;

/// How a replica follows the revocation log.
#[derive(Clone, Debug)]
pub struct FeedTiming {
    pub poll_interval: Duration,
    pub max_staleness: Duration,
    pub retention: Duration,
}

/// How to reach the database.
#[derive(Clone, Debug)]
pub struct PostgresSettings {
    pub url: String,
    pub password: Option<String>,
    /// PEM certificates of the CA(s) that sign the database server's
    /// certificate. With them, every connection is TLS and the server's
    /// certificate and name are verified; without them, connections are
    /// plaintext and a URL that asks for TLS (`sslmode=require`) is refused.
    pub ca_pem: Option<Vec<u8>>,
    pub pool_size: usize,
    pub connect_timeout: Duration,
    pub feed: FeedTiming,
}

/// TCP keepalive on every connection: the first probe after this much
/// silence (tokio-postgres' default is two hours, which leaves an idle
/// LISTEN connection to a vanished server looking alive that long)...
pub(super) const KEEPALIVE_IDLE: Duration = Duration::from_secs(10);
/// ...then one probe this often...
pub(super) const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
/// ...and the connection is dropped after this many unanswered ones.
pub(super) const KEEPALIVE_RETRIES: u32 = 3;
/// Data sent and not acknowledged by the peer for this long closes the
/// connection (TCP_USER_TIMEOUT): a query in flight on a half-open
/// connection fails after this, not after the kernel's ~15 minutes of
/// retransmissions. A query that waits on the server (for a lock, say) has
/// had its bytes acknowledged and is not affected.
pub(super) const TCP_USER_TIMEOUT: Duration = Duration::from_secs(20);
/// How the connection to the database travels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// TLS, the server's certificate verified against `postgres.ca_file`.
    Tls,
    /// Plaintext to this machine (loopback, or a Unix socket).
    PlaintextLocal,
    /// Plaintext to another machine, which the URL asked for (`sslmode=disable`).
    PlaintextOffHost,
}

/// How a connection to `url` travels, with a CA file (`has_ca`) or
/// without; or why it is refused. The connection carries every token record
/// and revocation, so plaintext that leaves the machine is not only
/// readable: whoever sits on the path can alter what the database answers
/// (a revoked token reported live). So without a CA it is refused for a
/// database on another host, unless the URL says `sslmode=disable`: the
/// operator's explicit word that the network carries it safely (a warning
/// and the `tokenauth_plaintext{link="database"}` gauge then say so).
/// `sslmode=prefer`, libpq's default, is refused rather than read as
/// plaintext: it means "TLS if offered", which a client that cannot verify
/// the server would only pretend to honour.
pub fn transport(url: &str, has_ca: bool) -> Result<Transport, String> {
    // Never echo the URL: it may hold a password.
    let config: tokio_postgres::Config = url
        .parse()
        .map_err(|_| "the PostgreSQL URL is not valid".to_owned())?;
    if has_ca {
        return Ok(Transport::Tls);
    }
    let ip_is_local = |ip: &std::net::IpAddr| ip.is_loopback();
    let remote: Vec<String> = config
        .get_hosts()
        .iter()
        .filter_map(|host| match host {
            tokio_postgres::config::Host::Tcp(name) => {
                let local = name.eq_ignore_ascii_case("localhost")
                    || name
                        .parse::<std::net::IpAddr>()
                        .is_ok_and(|ip| ip_is_local(&ip));
                (!local).then(|| name.clone())
            }
            tokio_postgres::config::Host::Unix(_) => None,
        })
        .chain(
            config
                .get_hostaddrs()
                .iter()
                .filter(|ip| !ip_is_local(ip))
                .map(ToString::to_string),
        )
        .collect();
    match config.get_ssl_mode() {
        SslMode::Require => Err(
            "the PostgreSQL URL asks for TLS (sslmode=require): set postgres.ca_file to \
             the CA that signs the database server's certificate"
                .to_owned(),
        ),
        _ if remote.is_empty() => Ok(Transport::PlaintextLocal),
        SslMode::Disable => Ok(Transport::PlaintextOffHost),
        _ => Err(format!(
            "the database ({}) is on another machine, and without postgres.ca_file the \
             connection would be plaintext, where token records and revocations can be read \
             and altered on the way: set postgres.ca_file to the CA that signs the database \
             server's certificate (TLS, verified), or, on a network you trust with it, accept \
             plaintext explicitly with sslmode=disable in the URL",
            remote.join(", ")
        )),
    }
}

/// The connection settings of `settings`, ready for the pool and LISTEN,
/// and the TLS connector when the database is reached over TLS.
pub(super) fn connection_config(
    settings: &PostgresSettings,
) -> Result<(tokio_postgres::Config, Option<MakeRustlsConnect>), StoreError> {
    let invalid = |reason: &str| StoreError::Unavailable(format!("store: {reason}"));
    transport(&settings.url, settings.ca_pem.is_some()).map_err(|reason| invalid(&reason))?;
    // Never echo the URL: it may hold a password.
    let mut config: tokio_postgres::Config = settings
        .url
        .parse()
        .map_err(|_| invalid("the PostgreSQL URL is not valid"))?;
    if let Some(password) = &settings.password {
        config.password(password);
    }
    config.connect_timeout(settings.connect_timeout);
    config.application_name("tokenauth");
    // Primaries only, whatever the URL says: a URL listing several hosts
    // could otherwise land the log follower on a lagging standby, whose log
    // would vouch for a cache that missed revocations the primary holds.
    config.target_session_attrs(TargetSessionAttrs::ReadWrite);
    // These replace any keepalive settings in the URL: the revocation bound
    // and the reconnects rest on a dead connection being noticed.
    config
        .keepalives(true)
        .keepalives_idle(KEEPALIVE_IDLE)
        .keepalives_interval(KEEPALIVE_INTERVAL)
        .keepalives_retries(KEEPALIVE_RETRIES)
        .tcp_user_timeout(TCP_USER_TIMEOUT);
    let tls = match &settings.ca_pem {
        Some(pem) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(pem) {
                let cert = cert.map_err(|_| invalid("postgres.ca_file is not PEM"))?;
                roots
                    .add(cert)
                    .map_err(|e| invalid(&format!("postgres.ca_file: {e}")))?;
            }
            if roots.is_empty() {
                return Err(invalid("postgres.ca_file holds no certificate"));
            }
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let client = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(|e| invalid(&format!("TLS: {e}")))?
                .with_root_certificates(roots)
                .with_no_client_auth();
            config.ssl_mode(SslMode::Require);
            Some(MakeRustlsConnect::new(client))
        }
        None => {
            // Local, or off-host with sslmode=disable (see `transport`):
            // plaintext, said plainly rather than "prefer".
            config.ssl_mode(SslMode::Disable);
            None
        }
    };
    Ok((config, tls))
}
