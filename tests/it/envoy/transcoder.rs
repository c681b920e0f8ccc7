//! JSON over HTTP through the real Envoy running the shipped
//! `deploy/envoy/transcoder.yaml` (only its socket addresses, CA file and
//! descriptor path rewritten), in front of the real tokenauth serving TLS as
//! deploy/kubernetes has it: a control plane's calls as plain HTTP requests
//! with JSON bodies, the credential and the actor in headers, and gRPC errors
//! as HTTP statuses with a JSON body.

use std::{net::SocketAddr, path::Path};

use hyper::Method;
use serde_json::{Value, json};
use tempfile::TempDir;
use tonic::transport::{Certificate, ClientTlsConfig};

use super::stack::{Envoy, Protocol, Request, Response, SERVICE_NAME, repository, send};
use crate::{
    docs::{markdown::examples, walkthrough::compare},
    harness::TestServer,
    tls::Pki,
};

/// The page whose examples `the_documented_curl_examples_run_as_shown` runs.
pub const DOCUMENT: &str = "docs/api-json.md";

/// Where the shipped config reads the descriptor set and the CA.
const SHIPPED_DESCRIPTOR: &str = "/etc/envoy/tokenauth.pb";
const SHIPPED_CA_FILE: &str = "/etc/envoy/tokenauth-ca.pem";

/// The shipped transcoder config with loopback addresses, the test's CA and
/// the checked-in descriptor set; nothing else changed.
fn transcoder_config(tokenauth: SocketAddr, ca_file: &Path) -> String {
    let shipped =
        std::fs::read_to_string(repository().join("deploy/envoy/transcoder.yaml")).unwrap();
    let descriptor = repository().join("deploy/envoy/tokenauth.pb");
    let substitutions = [
        (
            "socket_address: { address: 0.0.0.0, port_value: 8081 }".to_owned(),
            "socket_address: { address: 127.0.0.1, port_value: 0 }".to_owned(),
        ),
        (
            "socket_address: { address: tokenauth.tokenauth.svc.cluster.local, port_value: 50051 }"
                .to_owned(),
            format!(
                "socket_address: {{ address: {}, port_value: {} }}",
                tokenauth.ip(),
                tokenauth.port()
            ),
        ),
        (
            "socket_address: { address: 127.0.0.1, port_value: 9902 }".to_owned(),
            "socket_address: { address: 127.0.0.1, port_value: 0 }".to_owned(),
        ),
        (SHIPPED_CA_FILE.to_owned(), ca_file.display().to_string()),
        (
            format!("proto_descriptor: {SHIPPED_DESCRIPTOR}"),
            format!("proto_descriptor: {}", descriptor.display()),
        ),
    ];
    let mut config = shipped.clone();
    for (from, to) in &substitutions {
        assert_eq!(
            config.matches(from.as_str()).count(),
            1,
            "deploy/envoy/transcoder.yaml no longer reads `{from}` once"
        );
        config = config.replace(from.as_str(), to);
    }
    let changed = shipped
        .lines()
        .zip(config.lines())
        .filter(|(before, after)| before != after)
        .count();
    assert_eq!(changed, substitutions.len());
    assert!(
        !config.contains("0.0.0.0"),
        "an address was left unrewritten"
    );
    config
}

/// tokenauth behind the shipped transcoder.
struct JsonApi {
    tokenauth: TestServer,
    envoy: Envoy,
    _certs: TempDir,
}

/// A JSON answer: the HTTP status and the parsed body.
#[derive(Debug)]
struct Answer {
    status: u16,
    body: Value,
}

impl JsonApi {
    async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    async fn start_with(
        configure: impl FnOnce(&mut tokenauth::config::Config) + Send + 'static,
    ) -> Self {
        let pki = Pki::new("tokenauth test CA");
        let (cert, key) = pki.issue(&[SERVICE_NAME]);
        let certs = tempfile::tempdir().unwrap();
        let (cert_file, key_file) = (certs.path().join("tls.crt"), certs.path().join("tls.key"));
        std::fs::write(&cert_file, cert).unwrap();
        std::fs::write(&key_file, key).unwrap();
        let client_tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&pki.ca_pem))
            .domain_name(SERVICE_NAME);
        let tokenauth = TestServer::start_wrapped_tls(
            move |config| {
                config.tls.cert_file = Some(cert_file);
                config.tls.key_file = Some(key_file);
                configure(config);
            },
            |store| store,
            Some(client_tls),
        )
        .await;
        let dir = tempfile::tempdir().unwrap();
        let ca_file = dir.path().join("tokenauth-ca.pem");
        std::fs::write(&ca_file, &pki.ca_pem).unwrap();
        let config = transcoder_config(tokenauth.addr(), &ca_file);
        let envoy = Envoy::run(dir, &config).await;
        Self {
            tokenauth,
            envoy,
            _certs: certs,
        }
    }

    /// `method path` with `body`, as the control plane acting for an
    /// ADMIN of org-1 (`actor` overrides the actor headers).
    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> Answer {
        self.call_as(method, path, body, &[("admin", "org-1", "ADMIN")])
            .await
    }

    async fn call_as(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        actors: &[(&str, &str, &str)],
    ) -> Answer {
        let mut request = Request::new(method, path)
            .bearer(&self.tokenauth.control_plane)
            .host("tokenauth.example.com");
        for (user, org, role) in actors {
            request = request
                .header("x-tokenauth-actor-user-id", user)
                .header("x-tokenauth-actor-org-id", org)
                .header("x-tokenauth-actor-role", role);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        self.send(&request).await
    }

    async fn send_raw(&self, request: &Request) -> Response {
        send(self.envoy.listener, Protocol::Http1, request)
            .await
            .unwrap_or_else(|e| panic!("{request:?}: {e}"))
    }

    async fn send(&self, request: &Request) -> Answer {
        let response = self.send_raw(request).await;
        let body = serde_json::from_str(&response.body).unwrap_or_else(|_| {
            panic!(
                "{request:?}: not JSON ({}): {}\n{}",
                response.status,
                response.body,
                self.envoy.logs()
            )
        });
        Answer {
            status: response.status,
            body,
        }
    }
}

fn service_token(name: &str) -> Value {
    json!({"kind": "SERVICE", "name": name, "permissions": ["scim:read"]})
}

#[tokio::test]
async fn a_control_plane_issues_lists_checks_and_revokes_with_json_over_http() {
    let api = JsonApi::start().await;

    let issued = api
        .call(
            Method::POST,
            "/v1/orgs/org-1/tokens",
            Some(service_token("ci")),
        )
        .await;
    assert_eq!(issued.status, 200, "{issued:?}");
    let secret = issued.body["secret"].as_str().unwrap().to_owned();
    let id = issued.body["token"]["id"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("tksat_"), "{issued:?}");
    assert_eq!(issued.body["token"]["orgId"], "org-1");
    assert_eq!(issued.body["token"]["kind"], "SERVICE");
    // The actor came from the headers: the audit log names it.
    let events = api
        .call(
            Method::GET,
            "/v1/orgs/org-1/audit-events?page_size=10",
            None,
        )
        .await;
    assert_eq!(events.status, 200, "{events:?}");
    let first = &events.body["events"][0];
    assert_eq!(first["targetTokenIds"][0], id.as_str(), "{events:?}");
    assert_eq!(first["actor"]["userId"], "admin", "{events:?}");

    // Two more, then the listing in pages of two.
    for name in ["ci-2", "ci-3"] {
        let more = api
            .call(
                Method::POST,
                "/v1/orgs/org-1/tokens",
                Some(service_token(name)),
            )
            .await;
        assert_eq!(more.status, 200, "{more:?}");
    }
    let first_page = api
        .call(Method::GET, "/v1/orgs/org-1/tokens?page_size=2", None)
        .await;
    assert_eq!(first_page.status, 200, "{first_page:?}");
    assert_eq!(first_page.body["tokens"].as_array().unwrap().len(), 2);
    let next = first_page.body["nextPageToken"].as_str().unwrap();
    assert!(!next.is_empty(), "{first_page:?}");
    let second_page = api
        .call(
            Method::GET,
            &format!("/v1/orgs/org-1/tokens?page_size=2&page_token={next}"),
            None,
        )
        .await;
    assert_eq!(second_page.status, 200, "{second_page:?}");
    assert_eq!(second_page.body["tokens"].as_array().unwrap().len(), 1);
    assert_eq!(second_page.body["nextPageToken"], "");
    // No secret is ever listed.
    assert!(!first_page.body.to_string().contains(&secret));
    assert!(!second_page.body.to_string().contains(&secret));

    let check = json!({"token": secret, "permission": "scim:read", "orgId": "org-1"});
    let allowed = api
        .call_as(Method::POST, "/v1/check", Some(check.clone()), &[])
        .await;
    assert_eq!(allowed.status, 200, "{allowed:?}");
    assert_eq!(allowed.body["allowed"], true, "{allowed:?}");
    assert_eq!(allowed.body["tokenId"], id.as_str());

    let got = api
        .call(Method::GET, &format!("/v1/tokens/{id}"), None)
        .await;
    assert_eq!(got.status, 200, "{got:?}");
    assert_eq!(got.body["token"]["name"], "ci");

    let revoked = api
        .call(
            Method::POST,
            &format!("/v1/tokens/{id}:revoke"),
            Some(json!({})),
        )
        .await;
    assert_eq!(revoked.status, 200, "{revoked:?}");
    assert!(
        revoked.body["token"]["revokedAt"].is_string(),
        "{revoked:?}"
    );
    let denied = api
        .call_as(Method::POST, "/v1/check", Some(check), &[])
        .await;
    assert_eq!(denied.status, 200, "{denied:?}");
    assert_eq!(denied.body["allowed"], false);
    assert_eq!(denied.body["reason"], "REVOKED");

    let rotated_one = api
        .call(
            Method::POST,
            "/v1/orgs/org-1/tokens",
            Some(service_token("rot")),
        )
        .await;
    let rot_id = rotated_one.body["token"]["id"].as_str().unwrap();
    let rotated = api
        .call(
            Method::POST,
            &format!("/v1/tokens/{rot_id}:rotate"),
            Some(json!({"gracePeriod": "3600s"})),
        )
        .await;
    assert_eq!(rotated.status, 200, "{rotated:?}");
    assert!(
        rotated.body["secret"]
            .as_str()
            .unwrap()
            .starts_with("tksat_")
    );
    assert!(rotated.body["oldSecretExpiresAt"].is_string());

    let all = api
        .call(
            Method::POST,
            "/v1/orgs/org-1/tokens:revokeAll",
            Some(json!({"kind": "SERVICE"})),
        )
        .await;
    assert_eq!(all.status, 200, "{all:?}");
    // ci-2, ci-3 and the rotated one were live.
    assert_eq!(all.body["revokedCount"], "3", "{all:?}");
}

#[tokio::test]
async fn errors_come_back_as_http_statuses_with_a_json_body() {
    let api = JsonApi::start().await;

    // No credential: 401.
    let anonymous = api
        .send(&Request::new(Method::GET, "/v1/orgs/org-1/tokens").host("tokenauth.example.com"))
        .await;
    assert_eq!(anonymous.status, 401, "{anonymous:?}");
    assert_eq!(anonymous.body["code"], 16, "{anonymous:?}");
    assert!(anonymous.body["message"].is_string());

    // A member with a read-only role may not issue for the organization: 403.
    let read_only = api
        .call_as(
            Method::POST,
            "/v1/orgs/org-1/tokens",
            Some(service_token("x")),
            &[("bob", "org-1", "READ_ONLY")],
        )
        .await;
    assert_eq!(read_only.status, 403, "{read_only:?}");
    assert_eq!(read_only.body["code"], 7);

    // A role that is not one of the API's is refused, not read as no actor: 400.
    let bad_role = api
        .call_as(
            Method::GET,
            "/v1/orgs/org-1/tokens",
            None,
            &[("bob", "org-1", "OWNER")],
        )
        .await;
    assert_eq!(bad_role.status, 400, "{bad_role:?}");
    assert_eq!(bad_role.body["code"], 3);

    // An actor asserted twice is refused, never one copy winning: in the
    // query string (or body) besides the headers, or by a repeated header.
    let both = api
        .call_as(
            Method::GET,
            "/v1/orgs/org-1/tokens?actor.user_id=mallory&actor.org_id=org-1&actor.org_role=ADMIN",
            None,
            &[("bob", "org-1", "READ_ONLY")],
        )
        .await;
    assert_eq!(both.status, 400, "{both:?}");
    let in_body = api
        .call_as(
            Method::POST,
            "/v1/orgs/org-1/tokens",
            Some(
                json!({"kind": "SERVICE", "name": "x", "permissions": ["scim:read"],
                "actor": {"userId": "mallory", "orgId": "org-1", "orgRole": "ADMIN"}}),
            ),
            &[("bob", "org-1", "READ_ONLY")],
        )
        .await;
    assert_eq!(in_body.status, 400, "{in_body:?}");
    let repeated = api
        .call_as(
            Method::GET,
            "/v1/orgs/org-1/tokens",
            None,
            &[("bob", "org-1", "ADMIN"), ("bob", "org-1", "READ_ONLY")],
        )
        .await;
    assert_eq!(repeated.status, 400, "{repeated:?}");
    assert!(
        repeated.body["message"]
            .as_str()
            .unwrap()
            .contains("repeated"),
        "{repeated:?}"
    );

    // A malformed id: 400; a well-formed one that does not exist: 404.
    let malformed = api.call(Method::GET, "/v1/tokens/nope", None).await;
    assert_eq!(malformed.status, 400, "{malformed:?}");
    let issued = api
        .call(
            Method::POST,
            "/v1/orgs/org-1/tokens",
            Some(service_token("gone")),
        )
        .await;
    let id = issued.body["token"]["id"].as_str().unwrap();
    let other_org = api
        .call_as(
            Method::GET,
            &format!("/v1/tokens/{id}"),
            None,
            &[("eve", "org-2", "ADMIN")],
        )
        .await;
    assert_eq!(other_org.status, 404, "{other_org:?}");
    assert_eq!(other_org.body["code"], 5);

    // A misspelt query parameter and a path outside the API never reach tokenauth.
    let misspelt = api
        .send_raw(
            &Request::get("/v1/orgs/org-1/tokens?pagesize=2")
                .bearer(&api.tokenauth.control_plane)
                .host("tokenauth.example.com"),
        )
        .await;
    assert_eq!(misspelt.status, 400, "{misspelt:?}");
    assert!(misspelt.body.contains("\"pagesize\""), "{misspelt:?}");
    let elsewhere = api
        .send_raw(&Request::get("/admin").host("tokenauth.example.com"))
        .await;
    assert_eq!(elsewhere.status, 404, "{elsewhere:?}");
    // Nor does a gRPC call to a service the listener does not expose (a
    // backup holds every organization's records).
    let backup = api
        .send_raw(
            &Request::post("/tokenauth.v1.AdminService/Backup")
                .bearer(&api.tokenauth.control_plane)
                .header("content-type", "application/grpc")
                .host("tokenauth.example.com"),
        )
        .await;
    // Envoy answers a gRPC caller's 404 as UNIMPLEMENTED.
    assert_eq!(backup.header("grpc-status"), Some("12"), "{backup:?}");
    assert!(
        backup
            .header("grpc-message")
            .unwrap()
            .contains("no such route"),
        "{backup:?}"
    );
}

/// Clients of the JSON listener that send a request's head and stall on
/// its body cannot take every request slot of tokenauth: the shipped
/// circuit breaker lets at most 256 of them through, and the mesh's Checks
/// keep being answered.
#[tokio::test]
async fn stalled_json_clients_cannot_take_every_request_slot() {
    use tokio::io::AsyncWriteExt;
    // tokenauth's own limit just above the breaker's: without the breaker,
    // 300 stalled requests would hold all of it.
    let api = JsonApi::start_with(|config| config.limits.max_concurrent_requests = 300).await;
    let issued = api
        .call(
            Method::POST,
            "/v1/orgs/org-1/tokens",
            Some(service_token("mesh")),
        )
        .await;
    let secret = issued.body["secret"].as_str().unwrap().to_owned();
    let mut stalled = Vec::new();
    for _ in 0..300 {
        let mut socket = tokio::net::TcpStream::connect(api.envoy.listener)
            .await
            .unwrap();
        socket
            .write_all(
                b"POST /v1/check HTTP/1.1\r\nhost: tokenauth.example.com\r\n\
                  content-type: application/json\r\ncontent-length: 1000\r\n\r\n{",
            )
            .await
            .unwrap();
        stalled.push(socket);
    }
    // Every stalled request has reached Envoy, and as many as it lets
    // through (256 with the breaker, all of them without) hold a tokenauth
    // request open.
    let arrived = super::proxy::Deadline::new("300 stalled requests at Envoy");
    // Then wait for the count at tokenauth to stop moving.
    let mut last = (0, 0);
    let mut steady = 0;
    while steady < 5 {
        let envoy = &api.envoy;
        let now = (
            envoy.stat("http.tokenauth_json.downstream_rq_total").await,
            envoy.stat("cluster.tokenauth.upstream_rq_active").await,
        );
        // 301: the issue above, and the 300 stalled.
        steady = if now == last && now.0 >= 301 && now.1 >= 256 {
            steady + 1
        } else {
            0
        };
        last = now;
        arrived.tick().await;
    }
    let through = api.envoy.stat("cluster.tokenauth.upstream_rq_active").await;
    assert!(
        through <= 256,
        "{through} requests went through to tokenauth"
    );
    let decision = crate::harness::check(&api.tokenauth, &secret, "scim:read", "org-1", "").await;
    assert_eq!(
        decision.reason,
        tokenauth::proto::Reason::Ok as i32,
        "{decision:?}"
    );
    drop(stalled);
}

/// `deploy/envoy/tokenauth.pb` is the descriptor set the build compiles
/// from `proto/`. After a change to the protos, regenerate it with
/// `scripts/openapi`.
#[test]
fn the_shipped_descriptor_set_is_the_one_the_build_compiles() {
    let path = repository().join("deploy/envoy/tokenauth.pb");
    if std::env::var_os("TOKENAUTH_BLESS").is_some() {
        std::fs::write(&path, tokenauth::proto::FILE_DESCRIPTOR_SET).unwrap();
    }
    let shipped = std::fs::read(&path).unwrap();
    assert!(
        shipped == tokenauth::proto::FILE_DESCRIPTOR_SET,
        "deploy/envoy/tokenauth.pb differs from the build's descriptor set: \
         scripts/openapi"
    );
}

/// The curl examples of docs/api-json.md, run in order with the real curl
/// through the shipped config: `localhost:8081` is Envoy's listener,
/// `$TOKENAUTH_CREDENTIAL` the control-plane credential, and `<id of NAME>`
/// and `<secret of NAME>` those of the token named NAME in an earlier
/// output. Every shown output is compared as the docs walkthroughs compare
/// theirs (docs::walkthrough::compare).
#[tokio::test]
async fn the_documented_curl_examples_run_as_shown() {
    let api = JsonApi::start().await;
    let examples = examples(&repository().join(DOCUMENT));
    assert!(examples.len() >= 5, "{examples:?}");
    let mut tokens: Vec<(String, String, String)> = Vec::new();
    for example in &examples {
        let mut script = example
            .block
            .text
            .replace("localhost:8081", &api.envoy.listener.to_string());
        for (name, id, secret) in &tokens {
            script = script
                .replace(&format!("<id of {name}>"), id)
                .replace(&format!("<secret of {name}>"), secret);
        }
        assert!(
            !script.contains("<id of") && !script.contains("<secret of"),
            "{}: a placeholder of no earlier token",
            example.block.place()
        );
        // The server runs in this test's runtime: wait for curl off it.
        let credential = api.tokenauth.control_plane.clone();
        let output = tokio::task::spawn_blocking(move || {
            std::process::Command::new("sh")
                .arg("-c")
                .arg(&script)
                .env("TOKENAUTH_CREDENTIAL", credential)
                .output()
                .unwrap()
        })
        .await
        .unwrap();
        if let Ok(printed) = serde_json::from_slice::<Value>(&output.stdout)
            && let (Some(name), Some(id)) = (
                printed["token"]["name"].as_str(),
                printed["token"]["id"].as_str(),
            )
            && let Some(secret) = printed["secret"].as_str()
        {
            tokens.retain(|(n, _, _)| n != name);
            tokens.push((name.to_owned(), id.to_owned(), secret.to_owned()));
        }
        if let Some(shown) = &example.output {
            let problems = compare(&shown.lang, &shown.text, &output);
            assert!(
                problems.is_empty(),
                "{}: {problems:#?}\nstdout: {}\nstderr: {}",
                example.block.place(),
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        } else {
            assert!(
                output.status.success(),
                "{}: {output:?}",
                example.block.place()
            );
        }
    }
}
