//! The real Envoy as a child process, running the shipped
//! `deploy/envoy/envoy.yaml` with only its addresses (and the CA file it
//! trusts for tokenauth) rewritten to loopback, its admin endpoint's
//! readers, and the HTTP/1.1 and HTTP/2 client spoken through it. Shared by
//! the Envoy tests (`stack.rs`) and the Envoy benchmark (`benches/floor.rs`
//! includes this file), so that both run the same Envoy the same way; it
//! names nothing in the test crate but `tools::tool`.

use std::{
    fmt,
    net::SocketAddr,
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use http_body_util::{BodyExt, Full};
use hyper::{
    HeaderMap, Method,
    body::Bytes,
    client::conn::{http1, http2},
};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::Value;
use tempfile::TempDir;

use crate::tools::tool;

/// The name tokenauth's certificate carries: the Service the shipped
/// envoy.yaml sends ext_authz calls to, and verifies by name.
pub const SERVICE_NAME: &str = "tokenauth.tokenauth.svc.cluster.local";

/// Where the shipped envoy.yaml reads the CA that issued tokenauth's certificate.
const SHIPPED_CA_FILE: &str = "/etc/envoy/tokenauth-ca.pem";

/// How long a wait may take before the test gives up: a guard against a
/// hung test, far above what a start or a health check round needs.
pub const GUARD: Duration = Duration::from_secs(30);

pub fn repository() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// A wait that polls, and fails the test saying `what` once [`GUARD`] is over.
pub struct Deadline {
    end: Instant,
    what: String,
}

impl Deadline {
    pub fn new(what: impl Into<String>) -> Self {
        Self::within(GUARD, what)
    }

    pub fn within(guard: Duration, what: impl Into<String>) -> Self {
        Self {
            end: Instant::now() + guard,
            what: what.into(),
        }
    }

    /// Waits a poll's interval, or fails the test if the time is over.
    pub async fn tick(&self) {
        assert!(Instant::now() < self.end, "gave up waiting: {}", self.what);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The HTTP version a client speaks to Envoy (HTTP/2 over cleartext, with
/// prior knowledge, as a gRPC-less API client or a sidecar would).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Http1,
    Http2,
}

pub const PROTOCOLS: [Protocol; 2] = [Protocol::Http1, Protocol::Http2];

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Http1 => "HTTP/1.1",
            Protocol::Http2 => "HTTP/2",
        })
    }
}

/// A request as a client sends it: the path goes out byte for byte.
#[derive(Clone, Debug)]
pub struct Request {
    pub method: Method,
    /// `Host` (HTTP/1.1) or `:authority` (HTTP/2).
    pub authority: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

impl Request {
    pub fn new(method: Method, path: &str) -> Self {
        Self {
            method,
            authority: "api.example.com".to_owned(),
            path: path.to_owned(),
            headers: Vec::new(),
            body: Bytes::new(),
        }
    }

    pub fn get(path: &str) -> Self {
        Self::new(Method::GET, path)
    }

    pub fn post(path: &str) -> Self {
        Self::new(Method::POST, path)
    }

    pub fn host(mut self, authority: &str) -> Self {
        authority.clone_into(&mut self.authority);
        self
    }

    /// Adds a header (a second call with the same name adds a second copy).
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    pub fn bearer(self, secret: &str) -> Self {
        self.header("authorization", &format!("Bearer {secret}"))
    }

    /// A JSON body, with its content type.
    pub fn json(mut self, body: &Value) -> Self {
        self.body = Bytes::from(body.to_string());
        self.header("content-type", "application/json")
    }

    /// The `x-org-id` header the shipped rules read the organization from.
    pub fn org(self, org: &str) -> Self {
        self.header("x-org-id", org)
    }
}

/// What came back through Envoy.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: String,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }

    /// What the upstream received, if this response is the upstream's.
    pub fn upstream(&self) -> Option<Echoed> {
        let body: Value = serde_json::from_str(&self.body).ok()?;
        let echoed = body.get("echoed")?;
        Some(Echoed {
            method: echoed["method"].as_str().unwrap().to_owned(),
            path: echoed["path"].as_str().unwrap().to_owned(),
            headers: echoed["headers"]
                .as_array()
                .unwrap()
                .iter()
                .map(|pair| {
                    (
                        pair[0].as_str().unwrap().to_owned(),
                        pair[1].as_str().unwrap().to_owned(),
                    )
                })
                .collect(),
        })
    }

    /// The `code` of tokenauth's deny body, if this is one.
    pub fn deny_code(&self) -> Option<String> {
        let body: Value = serde_json::from_str(&self.body).ok()?;
        body.get("code")?.as_str().map(str::to_owned)
    }
}

/// What the upstream received, as it reported it.
#[derive(Debug)]
pub struct Echoed {
    pub method: String,
    /// The path and query, as they arrived.
    pub path: String,
    pub headers: Vec<(String, String)>,
}

impl Echoed {
    /// Every value of header `name`, in order.
    pub fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The single value of header `name` (panics if it came twice).
    pub fn header(&self, name: &str) -> Option<&str> {
        let all = self.all(name);
        assert!(
            all.len() <= 1,
            "{name} arrived {} times: {self:?}",
            all.len()
        );
        all.first().copied()
    }
}

/// Sends `request` to `addr` over a new connection speaking `protocol`.
pub async fn send(
    addr: SocketAddr,
    protocol: Protocol,
    request: &Request,
) -> Result<Response, hyper::Error> {
    let io = TokioIo::new(tokio::net::TcpStream::connect(addr).await.unwrap());
    let mut builder = hyper::Request::builder().method(request.method.clone());
    let response = match protocol {
        Protocol::Http1 => {
            let (mut sender, connection) = http1::handshake(io).await?;
            tokio::spawn(connection);
            builder = builder
                .uri(request.path.as_str())
                .header("host", request.authority.as_str());
            for (name, value) in &request.headers {
                builder = builder.header(name.as_str(), value.as_str());
            }
            sender
                .send_request(builder.body(Full::new(request.body.clone())).unwrap())
                .await?
        }
        Protocol::Http2 => {
            let (mut sender, connection) = http2::handshake(TokioExecutor::new(), io).await?;
            tokio::spawn(connection);
            builder = builder.uri(format!("http://{}{}", request.authority, request.path));
            for (name, value) in &request.headers {
                builder = builder.header(name.as_str(), value.as_str());
            }
            sender
                .send_request(builder.body(Full::new(request.body.clone())).unwrap())
                .await?
        }
    };
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response.into_body().collect().await?.to_bytes();
    Ok(Response {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

/// The shipped Envoy config with its addresses (and only those) pointed at
/// loopback: the listener and the admin endpoint on free ports Envoy picks,
/// the tokenauth cluster at `tokenauth`, the API cluster at `upstream`; and
/// the CA it trusts for tokenauth read from `ca_file`.
pub fn envoy_config(tokenauth: SocketAddr, upstream: SocketAddr, ca_file: &Path) -> String {
    let shipped = std::fs::read_to_string(repository().join("deploy/envoy/envoy.yaml")).unwrap();
    let at = |addr: SocketAddr| {
        format!(
            "socket_address: {{ address: {}, port_value: {} }}",
            addr.ip(),
            addr.port()
        )
    };
    let any_port = "socket_address: { address: 127.0.0.1, port_value: 0 }".to_owned();
    let substitutions = [
        (
            "socket_address: { address: 0.0.0.0, port_value: 8080 }",
            any_port.clone(),
        ),
        (
            "socket_address: { address: tokenauth.tokenauth.svc.cluster.local, port_value: 50051 }",
            at(tokenauth),
        ),
        (
            "socket_address: { address: api.platform.svc.cluster.local, port_value: 8080 }",
            at(upstream),
        ),
        (
            "socket_address: { address: 127.0.0.1, port_value: 9901 }",
            any_port,
        ),
        (SHIPPED_CA_FILE, ca_file.display().to_string()),
    ];
    let mut config = shipped.clone();
    for (from, to) in &substitutions {
        assert_eq!(
            config.matches(from).count(),
            1,
            "deploy/envoy/envoy.yaml no longer reads `{from}` once: update tests/it/envoy/proxy.rs"
        );
        config = config.replace(from, to);
    }
    // Exactly five lines changed, four addresses and the CA file:
    // everything else is the shipped file as an operator would run it.
    let changed: Vec<&str> = shipped
        .lines()
        .zip(config.lines())
        .filter(|(before, after)| before != after)
        .map(|(_, after)| after)
        .collect();
    assert_eq!(shipped.lines().count(), config.lines().count());
    assert_eq!(changed.len(), substitutions.len(), "{changed:?}");
    assert!(
        changed
            .iter()
            .all(|line| line.contains("socket_address") || line.contains("trusted_ca"))
    );
    // The Service's name stays only where TLS verifies it (SNI and the
    // subject alternative name), which the test certificate carries.
    assert!(
        config
            .lines()
            .filter(|line| line.contains("svc.cluster.local"))
            .all(|line| line.contains(SERVICE_NAME)
                && (line.contains("sni:") || line.contains("exact:"))),
        "an address was left unrewritten"
    );
    assert!(
        !config.contains("0.0.0.0"),
        "an address was left unrewritten"
    );
    config
}

/// The real Envoy, as a child process with its own directory (config, logs,
/// admin address file). Hot restart is off: no shared memory or domain
/// socket exists for parallel instances to collide on.
pub struct Envoy {
    child: Child,
    dir: TempDir,
    /// The public listener (`public_api`).
    pub listener: SocketAddr,
    /// The admin endpoint, on loopback.
    pub admin: SocketAddr,
}

impl Envoy {
    /// Starts Envoy and polls its admin endpoint until it is ready and its
    /// health check has found tokenauth healthy.
    pub async fn start(tokenauth: SocketAddr, upstream: SocketAddr, ca_pem: &str) -> Self {
        Self::start_edited(tokenauth, upstream, ca_pem, |config| config).await
    }

    /// [`Self::start`] with [`envoy_config`] passed through `edit` first
    /// (the benchmark's direct-response routes).
    pub async fn start_edited(
        tokenauth: SocketAddr,
        upstream: SocketAddr,
        ca_pem: &str,
        edit: impl FnOnce(String) -> String,
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ca_file = dir.path().join("tokenauth-ca.pem");
        std::fs::write(&ca_file, ca_pem).unwrap();
        let config = edit(envoy_config(tokenauth, upstream, &ca_file));
        let envoy = Self::run(dir, &config).await;
        envoy
            .wait_for_health("tokenauth", tokenauth, "healthy")
            .await;
        envoy
    }

    /// Starts Envoy on `config` (written into `dir`, which it keeps) and
    /// polls its admin endpoint until it is ready.
    pub async fn run(dir: TempDir, config: &str) -> Self {
        let config_file = dir.path().join("envoy.yaml");
        std::fs::write(&config_file, config).unwrap();
        let admin_file = dir.path().join("admin-address");
        let child = Command::new(tool("envoy"))
            .arg("--config-path")
            .arg(&config_file)
            .arg("--admin-address-path")
            .arg(&admin_file)
            .args(["--disable-hot-restart", "--concurrency", "1"])
            .args(["--log-level", "warning"])
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(dir.path().join("stdout")).unwrap())
            .stderr(std::fs::File::create(dir.path().join("stderr")).unwrap())
            .spawn()
            .unwrap();
        let mut envoy = Self {
            child,
            dir,
            listener: "0.0.0.0:0".parse().unwrap(),
            admin: "0.0.0.0:0".parse().unwrap(),
        };
        envoy.admin = envoy.admin_address(&admin_file).await;
        let ready = Deadline::new("Envoy's /ready");
        loop {
            let (status, body) = envoy.admin_get("/ready").await;
            if status == 200 && body.trim() == "LIVE" {
                break;
            }
            envoy.still_running();
            ready.tick().await;
        }
        envoy.listener = envoy.listener_address().await;
        envoy
    }

    async fn admin_address(&mut self, file: &Path) -> SocketAddr {
        let deadline = Deadline::new("Envoy's admin address file");
        loop {
            if let Ok(text) = std::fs::read_to_string(file)
                && let Ok(addr) = text.trim().parse::<SocketAddr>()
            {
                assert!(addr.ip().is_loopback(), "admin on {addr}");
                return addr;
            }
            self.still_running();
            deadline.tick().await;
        }
    }

    async fn listener_address(&self) -> SocketAddr {
        let (status, body) = self.admin_get("/listeners?format=json").await;
        assert_eq!(status, 200, "{body}");
        let listeners: Value = serde_json::from_str(&body).unwrap();
        let address = &listeners["listener_statuses"][0]["local_address"]["socket_address"];
        let addr = SocketAddr::new(
            address["address"].as_str().unwrap().parse().unwrap(),
            u16::try_from(address["port_value"].as_u64().unwrap()).unwrap(),
        );
        assert!(addr.ip().is_loopback() && addr.port() != 0, "{listeners}");
        addr
    }

    /// The process id (the Envoy benchmark reads its CPU time in /proc).
    #[allow(dead_code)]
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    fn still_running(&mut self) {
        if let Some(status) = self.child.try_wait().unwrap() {
            panic!("Envoy exited ({status}): {}", self.logs());
        }
    }

    /// What Envoy wrote to stderr (its own log).
    pub fn logs(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr")).unwrap_or_default()
    }

    /// The access log the shipped config writes to stdout.
    pub fn access_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stdout")).unwrap_or_default()
    }

    /// GET `path` on the admin endpoint: (status, body).
    pub async fn admin_get(&self, path: &str) -> (u16, String) {
        let request = Request::get(path).host("localhost");
        match send(self.admin, Protocol::Http1, &request).await {
            Ok(response) => (response.status, response.body),
            Err(e) => panic!("admin {path}: {e}"),
        }
    }

    /// The value of counter or gauge `name` (0 if Envoy has not created it).
    pub async fn stat(&self, name: &str) -> u64 {
        let (status, body) = self.admin_get("/stats").await;
        assert_eq!(status, 200);
        body.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(": "))
            .map_or(0, |value| value.parse().unwrap())
    }

    /// The `health_flags` the admin's /clusters shows for host `addr` of `cluster`.
    pub async fn health(&self, cluster: &str, addr: SocketAddr) -> String {
        let (status, body) = self.admin_get("/clusters").await;
        assert_eq!(status, 200);
        let prefix = format!("{cluster}::{addr}::health_flags::");
        body.lines()
            .find_map(|line| line.strip_prefix(&prefix))
            .unwrap_or_else(|| panic!("no {prefix} in {body}"))
            .to_owned()
    }

    /// Polls /clusters until host `addr` of `cluster` has health flags `wanted`.
    pub async fn wait_for_health(&self, cluster: &str, addr: SocketAddr, wanted: &str) {
        let deadline = Deadline::new(format!("{cluster} {addr} to be {wanted}"));
        while self.health(cluster, addr).await != wanted {
            deadline.tick().await;
        }
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
