//! Delivery over HTTPS (rustls), to a receiver behind a TLS front in the
//! test process: a certificate the endpoint's `ca_file` vouches for, for
//! the address in the URL, is delivered to; one from another CA or for
//! another name is refused at the handshake, before any byte of an event
//! leaves the server.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};

use super::receiver::{PATIENCE, Receiver, Reply, SECRET, endpoint, verifies};
use crate::{
    harness::{TestServer, id_of, issue, service_token},
    pki::Pki,
};

/// A TLS front for `receiver` serving `cert_pem`: the `https` URL that
/// reaches it, and how many handshakes it was offered.
async fn tls_front(
    receiver: &Receiver,
    (cert_pem, key_pem): (String, String),
) -> (String, Arc<AtomicUsize>) {
    let certs = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let behind: hyper::Uri = receiver.url.parse().unwrap();
    let behind = behind.authority().unwrap().to_string();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let offered = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&offered);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            let (acceptor, behind) = (acceptor.clone(), behind.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let Ok(mut plain) = tokio::net::TcpStream::connect(&behind).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
            });
        }
    });
    (format!("https://127.0.0.1:{port}/hooks"), offered)
}

#[tokio::test]
async fn deliveries_over_https_reach_only_a_receiver_the_ca_file_vouches_for() {
    let ours = Pki::new("hooks CA");
    let theirs = Pki::new("another CA");
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("hooks-ca.pem");
    std::fs::write(&ca_file, &ours.ca_pem).unwrap();

    let trusted = Receiver::start(Reply::Ok).await;
    let (trusted_url, _) = tls_front(&trusted, ours.issue(&["127.0.0.1"])).await;
    let other_ca = Receiver::start(Reply::Ok).await;
    let (other_ca_url, other_ca_offered) = tls_front(&other_ca, theirs.issue(&["127.0.0.1"])).await;
    let other_name = Receiver::start(Reply::Ok).await;
    let (other_name_url, other_name_offered) =
        tls_front(&other_name, ours.issue(&["hooks.example.com"])).await;

    let server = TestServer::start_with(|config| {
        config.webhooks = [
            ("trusted", &trusted_url),
            ("other-ca", &other_ca_url),
            ("other-name", &other_name_url),
        ]
        .into_iter()
        .map(|(name, url)| {
            let mut hook = endpoint(dir.path(), name, url);
            hook.ca_file = Some(ca_file.clone());
            hook
        })
        .collect();
    })
    .await;
    let token = issue(&server, service_token("org-tls", &["scim:read"])).await;

    let delivered = trusted.wait_for_count(1).await;
    assert_eq!(delivered[0].json()["data"]["token_ids"][0], id_of(&token));
    assert!(verifies(SECRET, &delivered[0]));

    // Both refused endpoints were tried, and retried: nothing got through.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while other_ca_offered.load(Ordering::SeqCst) < 2
        || other_name_offered.load(Ordering::SeqCst) < 2
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the refused endpoints were not retried"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        other_ca.received().is_empty(),
        "delivered past a certificate of another CA"
    );
    assert!(
        other_name.received().is_empty(),
        "delivered past a certificate for another name"
    );
}
