//! TLS and mTLS, with certificates made at run time: with a client CA
//! configured, only clients holding a certificate it issued get in.

use tokenauth::{
    config::Config,
    proto::{CheckRequest, Reason, check_service_client::CheckServiceClient},
    server,
};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

pub use crate::pki::Pki;

async fn check_over(channel: Channel) -> Result<i32, tonic::Status> {
    CheckServiceClient::new(channel)
        .check(CheckRequest {
            token: "tksat_not_a_token".into(),
            permission: "scim:read".into(),
            org_id: "org-1".into(),
            workspace_id: String::new(),
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner().reason)
}

async fn connect(
    addr: std::net::SocketAddr,
    tls: ClientTlsConfig,
) -> Result<Channel, tonic::transport::Error> {
    Channel::from_shared(format!("https://localhost:{}", addr.port()))
        .unwrap()
        .tls_config(tls)?
        .connect()
        .await
}

#[tokio::test]
async fn with_a_client_ca_only_clients_with_its_certificates_get_in() {
    let dir = tempfile::tempdir().unwrap();
    let servers = Pki::new("server CA");
    let clients = Pki::new("client CA");
    let strangers = Pki::new("some other CA");
    let (cert, key) = servers.issue(&["localhost"]);
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    let mut config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.path().join("data"),
        ..Config::default()
    };
    config.tls.cert_file = Some(write("server.pem", &cert));
    config.tls.key_file = Some(write("server.key", &key));
    config.tls.client_ca_file = Some(write("clients-ca.pem", &clients.ca_pem));
    let running = server::start(config).await.unwrap();
    let addr = running.local_addr();
    let trust = || {
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&servers.ca_pem))
            .domain_name("localhost")
    };

    let (client_cert, client_key) = clients.issue(&["api-backend"]);
    let admitted = connect(
        addr,
        trust().identity(Identity::from_pem(&client_cert, &client_key)),
    )
    .await
    .unwrap();
    assert_eq!(
        check_over(admitted).await.unwrap(),
        Reason::Malformed as i32
    );

    // No certificate, or one from another CA: refused during the handshake
    // (or, at the latest, on the first call).
    let (stranger_cert, stranger_key) = strangers.issue(&["intruder"]);
    for tls in [
        trust(),
        trust().identity(Identity::from_pem(&stranger_cert, &stranger_key)),
    ] {
        let refused = match connect(addr, tls).await {
            Err(_) => true,
            Ok(channel) => check_over(channel).await.is_err(),
        };
        assert!(refused);
    }

    // Plaintext gets nowhere either.
    let plain = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await;
    let refused = match plain {
        Err(_) => true,
        Ok(channel) => check_over(channel).await.is_err(),
    };
    assert!(refused);
    running.shutdown().await.unwrap();
}

#[tokio::test]
async fn missing_tls_files_fail_the_start_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.path().join("data"),
        ..Config::default()
    };
    config.tls.cert_file = Some(dir.path().join("nope.pem"));
    config.tls.key_file = Some(dir.path().join("nope.key"));
    let error = server::start(config).await.err().expect("must not start");
    assert!(error.to_string().contains("nope.pem"), "{error}");
}

/// With TLS on the main port, Kubernetes' gRPC probes (which speak no TLS)
/// use `health.listen`: gRPC health alone, in plaintext, reporting what the
/// main port's health reports, and nothing else.
#[tokio::test]
async fn with_tls_the_health_port_answers_probes_in_plaintext_and_nothing_else() {
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let dir = tempfile::tempdir().unwrap();
    let servers = Pki::new("server CA");
    let (cert, key) = servers.issue(&["localhost"]);
    std::fs::write(dir.path().join("server.pem"), cert).unwrap();
    std::fs::write(dir.path().join("server.key"), key).unwrap();
    let mut config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.path().join("data"),
        ..Config::default()
    };
    config.tls.cert_file = Some(dir.path().join("server.pem"));
    config.tls.key_file = Some(dir.path().join("server.key"));
    config.health.listen = Some("127.0.0.1:0".parse().unwrap());
    let running = server::start(config).await.unwrap();
    let probes = Channel::from_shared(format!("http://{}", running.probe_addr().unwrap()))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = HealthClient::new(probes.clone());
    let mut serving = false;
    for _ in 0..200 {
        let status = health
            .check(HealthCheckRequest {
                service: "envoy.service.auth.v3.Authorization".into(),
            })
            .await
            .unwrap()
            .into_inner()
            .status;
        if status == crate::harness::SERVING {
            serving = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    assert!(
        serving,
        "the probe port reports the ext_authz service SERVING"
    );
    let status = check_over(probes).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unimplemented, "{status:?}");
    // The main port is TLS only.
    let plain = Channel::from_shared(format!("http://{}", running.local_addr()))
        .unwrap()
        .connect()
        .await;
    assert!(match plain {
        Err(_) => true,
        Ok(channel) => check_over(channel).await.is_err(),
    });
    running.shutdown().await.unwrap();
}
