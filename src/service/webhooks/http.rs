//! One webhook attempt: a POST on a fresh connection (HTTP/1.1, TLS by
//! rustls on ring for `https`), bounded in time by the endpoint's timeout
//! and in memory by a small header buffer; the response's body is never
//! read, only its status, so a receiver that answers with gigabytes, or
//! dribbles, costs nothing but the timeout.

use std::sync::Arc;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;

use super::Endpoint;

/// Most bytes of a response's head (status line and headers) read before
/// the attempt fails: hyper's floor for its read buffer.
const MAX_RESPONSE_HEAD_BYTES: usize = 8192;

/// Why an attempt failed, in words safe to log and to keep: never the
/// receiver's body, nor anything of the request.
#[derive(Debug, thiserror::Error)]
pub enum AttemptError {
    #[error("no answer within {0:?}")]
    TimedOut(std::time::Duration),
    #[error("could not connect: {0}")]
    Connect(std::io::Error),
    #[error("TLS handshake failed: {0}")]
    Tls(std::io::Error),
    #[error("HTTP exchange failed: {0}")]
    Http(hyper::Error),
    #[error("answered HTTP {0}")]
    Status(u16),
}

/// The headers of one attempt, as the Standard Webhooks specification names them.
pub struct Signed<'a> {
    pub id: &'a str,
    pub timestamp: i64,
    pub signature: String,
}

/// POSTs `body` to `endpoint`: `Ok` on a 2xx answer.
pub async fn post(
    endpoint: &Endpoint,
    signed: &Signed<'_>,
    body: &[u8],
) -> Result<(), AttemptError> {
    match tokio::time::timeout(endpoint.timeout, exchange(endpoint, signed, body)).await {
        Ok(result) => result,
        Err(_) => Err(AttemptError::TimedOut(endpoint.timeout)),
    }
}

async fn exchange(
    endpoint: &Endpoint,
    signed: &Signed<'_>,
    body: &[u8],
) -> Result<(), AttemptError> {
    let target = &endpoint.target;
    let tcp = TcpStream::connect((target.host.as_str(), target.port))
        .await
        .map_err(AttemptError::Connect)?;
    let _ = tcp.set_nodelay(true);
    match &endpoint.tls {
        Some(tls) => {
            let name = ServerName::try_from(target.host.clone())
                .map_err(|e| AttemptError::Tls(std::io::Error::other(e)))?;
            let stream = tokio_rustls::TlsConnector::from(Arc::clone(tls))
                .connect(name, tcp)
                .await
                .map_err(AttemptError::Tls)?;
            send(TokioIo::new(stream), endpoint, signed, body).await
        }
        None => send(TokioIo::new(tcp), endpoint, signed, body).await,
    }
}

async fn send<T>(
    io: TokioIo<T>,
    endpoint: &Endpoint,
    signed: &Signed<'_>,
    body: &[u8],
) -> Result<(), AttemptError>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::Builder::new()
        .max_buf_size(MAX_RESPONSE_HEAD_BYTES)
        .handshake::<_, Full<Bytes>>(io)
        .await
        .map_err(AttemptError::Http)?;
    // The connection is driven by its own task, ended (the socket closed)
    // when this attempt ends, however it ends.
    let driver = AbortOnDrop(tokio::spawn(async move {
        let _ = connection.await;
    }));
    let request = hyper::Request::post(endpoint.target.path_and_query.as_str())
        .header(hyper::header::HOST, endpoint.target.authority.as_str())
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .header(
            hyper::header::USER_AGENT,
            concat!("tokenauth/", env!("CARGO_PKG_VERSION")),
        )
        .header(hyper::header::CONNECTION, "close")
        .header("webhook-id", signed.id)
        .header("webhook-timestamp", signed.timestamp.to_string())
        .header("webhook-signature", signed.signature.as_str())
        .body(Full::new(Bytes::copy_from_slice(body)))
        .map_err(|e| AttemptError::Connect(std::io::Error::other(e)))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(AttemptError::Http)?;
    drop(driver);
    let status = response.status();
    if status.is_success() {
        Ok(())
    } else {
        Err(AttemptError::Status(status.as_u16()))
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
