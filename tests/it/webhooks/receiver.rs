//! A webhook receiver in the test process (axum on 127.0.0.1:0) that
//! answers as a test scripts it and keeps every request it got, with the
//! Standard Webhooks verification written here from the specification, not
//! taken from the server.

use std::{
    collections::VecDeque,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    Router,
    body::{Body, Bytes},
    extract::State,
    http::{HeaderMap, StatusCode},
    response::Response,
};
use base64::Engine as _;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use tokenauth::config::webhooks::WebhookConfig;

/// A liveness bound for a loaded machine, not a measurement.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// How the receiver answers one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reply {
    Ok,
    Status(u16),
    /// Never answers (the client's timeout ends the attempt).
    Hang,
    /// 200, then a body that never ends.
    EndlessBody,
    /// A response head far larger than any client should read.
    HugeHead,
    /// 200 after this many milliseconds.
    Slow(u64),
}

impl Reply {
    /// Whether the answer is a 2xx.
    fn succeeds(self) -> bool {
        matches!(self, Reply::Ok | Reply::EndlessBody | Reply::Slow(_))
    }
}

/// One request the receiver got.
#[derive(Clone, Debug)]
pub struct Received {
    pub id: String,
    pub timestamp: String,
    pub signature: String,
    pub body: Vec<u8>,
    pub reply: Reply,
    /// When it arrived: the benchmark's delivery lag is measured to it.
    #[allow(dead_code)] // for benches/webhooks.rs, which shares this file
    pub at: std::time::SystemTime,
}

impl Received {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap()
    }

    pub fn event_type(&self) -> String {
        self.json()["type"].as_str().unwrap().to_owned()
    }
}

#[derive(Default)]
struct Script {
    next: VecDeque<Reply>,
    then: Option<Reply>,
    received: Vec<Received>,
}

/// The running receiver.
#[derive(Clone)]
pub struct Receiver {
    pub url: String,
    script: Arc<Mutex<Script>>,
}

impl Receiver {
    /// A receiver that answers `then` to every request.
    pub async fn start(then: Reply) -> Self {
        let script = Arc::new(Mutex::new(Script {
            then: Some(then),
            ..Script::default()
        }));
        let app = Router::new()
            .fallback(receive)
            .with_state(Arc::clone(&script));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hooks", listener.local_addr().unwrap());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { url, script }
    }

    /// Answers `replies` to the next requests, in order, then as before.
    pub fn script(&self, replies: &[Reply]) {
        self.script.lock().unwrap().next.extend(replies);
    }

    /// Answers `reply` from now on.
    pub fn answer(&self, reply: Reply) {
        self.script.lock().unwrap().then = Some(reply);
    }

    pub fn received(&self) -> Vec<Received> {
        self.script.lock().unwrap().received.clone()
    }

    /// How many requests were answered 2xx, without copying them.
    #[allow(dead_code)] // for benches/webhooks.rs, which shares this file
    pub fn delivered_count(&self) -> usize {
        let script = self.script.lock().unwrap();
        script
            .received
            .iter()
            .filter(|r| r.reply.succeeds())
            .count()
    }

    /// The requests answered 2xx.
    pub fn delivered(&self) -> Vec<Received> {
        self.received()
            .into_iter()
            .filter(|r| r.reply.succeeds())
            .collect()
    }

    /// Waits until `done` holds of the delivered requests; panics after [`PATIENCE`].
    pub async fn wait_for(&self, what: &str, done: impl Fn(&[Received]) -> bool) -> Vec<Received> {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let delivered = self.delivered();
            if done(&delivered) {
                return delivered;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "waited {PATIENCE:?} for {what}; delivered: {:?}",
                delivered
                    .iter()
                    .map(Received::event_type)
                    .collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until `n` requests were answered 2xx.
    pub async fn wait_for_count(&self, n: usize) -> Vec<Received> {
        self.wait_for(&format!("{n} deliveries"), |d| d.len() >= n)
            .await
    }
}

async fn receive(
    State(script): State<Arc<Mutex<Script>>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let reply = {
        let mut script = script.lock().unwrap();
        let reply = script.next.pop_front().or(script.then).unwrap_or(Reply::Ok);
        script.received.push(Received {
            id: header("webhook-id"),
            timestamp: header("webhook-timestamp"),
            signature: header("webhook-signature"),
            body: body.to_vec(),
            reply,
            at: std::time::SystemTime::now(),
        });
        reply
    };
    match reply {
        Reply::Ok => Response::new(Body::empty()),
        Reply::Slow(millis) => {
            tokio::time::sleep(Duration::from_millis(millis)).await;
            Response::new(Body::empty())
        }
        Reply::Status(code) => Response::builder()
            .status(StatusCode::from_u16(code).unwrap())
            .body(Body::from("the receiver's own words, never to be logged"))
            .unwrap(),
        Reply::Hang => std::future::pending().await,
        Reply::EndlessBody => {
            let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
            let endless = tokio_stream::iter(std::iter::repeat_with(move || {
                Ok::<_, std::io::Error>(chunk.clone())
            }));
            Response::new(Body::from_stream(endless))
        }
        Reply::HugeHead => Response::builder()
            .header("x-filler", "y".repeat(1024 * 1024))
            .body(Body::empty())
            .unwrap(),
    }
}

/// The Standard Webhooks check of one request, from the specification:
/// HMAC-SHA256 keyed with the base64 after `whsec_`, over
/// `{webhook-id}.{webhook-timestamp}.{body}`, compared with each
/// space-separated `v1,<base64>` of the signature header.
pub fn verifies(secret: &str, received: &Received) -> bool {
    let key = base64::engine::general_purpose::STANDARD
        .decode(secret.strip_prefix("whsec_").unwrap())
        .unwrap();
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&key).unwrap();
    mac.update(format!("{}.{}.", received.id, received.timestamp).as_bytes());
    mac.update(&received.body);
    let expected = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    received
        .signature
        .split(' ')
        .any(|s| s.strip_prefix("v1,") == Some(expected.as_str()))
}

/// A signing secret, in a file of mode 0600 under `dir`.
pub const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

pub fn secret_file(dir: &Path, name: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(format!("{name}.whsec"));
    std::fs::write(&path, format!("{SECRET}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

/// An endpoint `name` delivering to `url`, with quick retries for tests.
pub fn endpoint(dir: &Path, name: &str, url: &str) -> WebhookConfig {
    WebhookConfig {
        name: name.into(),
        url: url.into(),
        secret_file: secret_file(dir, name),
        ca_file: None,
        event_types: Vec::new(),
        org_id: None,
        timeout: Duration::from_secs(2),
        first_retry_after: Duration::from_millis(50),
        max_age: Duration::from_secs(60),
        max_failed: 100,
    }
}
