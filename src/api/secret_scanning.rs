//! The HTTP face of GitHub's secret-scanning partner program:
//! `POST /github/secret-scanning` on the `[secret_scanning]` listener. It
//! bounds what an unverified sender costs (reports in hand, body size and
//! time), verifies GitHub's signature over the raw body before reading it as
//! JSON, and hands the matches to `TokenAuthority::answer_secret_scanning`.
//! A refusal revokes nothing and is counted by reason; neither the body nor
//! any token is ever logged.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use axum::{
    Router,
    body::Body,
    extract::{ConnectInfo, State},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::post,
};
use tokio::sync::Semaphore;
use tokio_stream::StreamExt as _;

use super::request_context;
use crate::{
    domain::{
        self,
        secret_scanning::{
            Labelled, MAX_BODY_BYTES, MAX_CONCURRENT_REPORTS, PartnerKeys, Refusal, parse_matches,
        },
    },
    metrics::Metrics,
    service::{Error, HolderOrigin, TokenAuthority},
};

/// The path GitHub is registered to POST to.
pub const PATH: &str = "/github/secret-scanning";
/// The header naming the key a report is signed with.
pub const KEY_ID_HEADER: &str = "github-public-key-identifier";
/// The header carrying the signature (base64 of the DER ECDSA signature).
pub const SIGNATURE_HEADER: &str = "github-public-key-signature";
/// How long a report's body may take to arrive: a sender trickling bytes
/// holds its connection no longer than this.
const BODY_TIMEOUT: Duration = Duration::from_secs(10);

/// The address of the connection a report came on (the server's listener
/// supplies it as connect info).
#[derive(Clone, Copy, Debug)]
pub struct Peer(pub SocketAddr);

/// The endpoint's state: the service, GitHub's keys, and the places.
pub struct SecretScanning {
    service: Arc<TokenAuthority>,
    keys: PartnerKeys,
    metrics: Arc<Metrics>,
    places: Semaphore,
}

/// Why a report got no labelled answer.
enum Unanswered {
    Refused(Refusal),
    /// The store failed (logged); GitHub retries, and a resent report is
    /// answered alike.
    Unavailable,
}

impl SecretScanning {
    pub fn new(service: Arc<TokenAuthority>, keys: PartnerKeys, metrics: Arc<Metrics>) -> Self {
        Self {
            service,
            keys,
            metrics,
            places: Semaphore::new(MAX_CONCURRENT_REPORTS),
        }
    }

    /// The router of the endpoint (served with `ConnectInfo<Peer>`).
    pub fn router(self: Arc<Self>) -> Router {
        Router::new().route(PATH, post(report)).with_state(self)
    }

    async fn answer(
        &self,
        peer: SocketAddr,
        headers: &HeaderMap,
        body: Body,
    ) -> Result<Vec<Labelled>, Unanswered> {
        let declared = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|length| length > MAX_BODY_BYTES as u64) {
            return Err(Unanswered::Refused(Refusal::TooLarge));
        }
        let (key_id, signature) = (
            single(headers, KEY_ID_HEADER),
            single(headers, SIGNATURE_HEADER),
        );
        if key_id.is_none() || signature.is_none() {
            return Err(Unanswered::Refused(Refusal::MissingSignature));
        }
        let body = read_bounded(body).await.map_err(Unanswered::Refused)?;
        self.keys
            .verify(key_id, signature, &body)
            .map_err(Unanswered::Refused)?;
        // A place is taken only once the report is GitHub's: a sender that
        // trickles a body it cannot sign must not hold the places GitHub's
        // reports need. Bodies being read are bounded by the port's
        // connections (64) times MAX_BODY_BYTES, and each by BODY_TIMEOUT.
        // Refused, not queued: a flood must not hold the store while it waits.
        let _place = self
            .places
            .try_acquire()
            .map_err(|_| Unanswered::Refused(Refusal::Busy))?;
        let matches = parse_matches(&body).map_err(Unanswered::Refused)?;
        let request_id = single(headers, request_context::HEADER)
            .filter(|id| request_context::is_valid(id))
            .map_or_else(request_context::generate, str::to_owned);
        let origin = HolderOrigin {
            peer: Some(peer),
            request_id: &request_id,
        };
        match self.service.answer_secret_scanning(&matches, origin).await {
            Ok(labelled) => Ok(labelled),
            Err(Error::Domain(domain::Error::ResourceExhausted(_))) => {
                Err(Unanswered::Refused(Refusal::RateLimited))
            }
            // Bounded above already; kept for a rule the domain adds later.
            Err(Error::Domain(domain::Error::InvalidArgument { .. })) => {
                Err(Unanswered::Refused(Refusal::MalformedBody))
            }
            Err(error) => {
                tracing::error!(%error, %request_id, "answering a secret-scanning report failed");
                Err(Unanswered::Unavailable)
            }
        }
    }
}

async fn report(
    State(endpoint): State<Arc<SecretScanning>>,
    ConnectInfo(Peer(peer)): ConnectInfo<Peer>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let metrics = &endpoint.metrics;
    match endpoint.answer(peer, &headers, body).await {
        Ok(labelled) => {
            for label in ["true_positive", "false_positive"] {
                let count = labelled.iter().filter(|l| l.label == label).count();
                metrics.record_secret_scanning_tokens(label, count as u64);
            }
            match serde_json::to_vec(&labelled) {
                Ok(json) => ([(header::CONTENT_TYPE, "application/json")], json).into_response(),
                Err(error) => {
                    tracing::error!(%error, "encoding a secret-scanning answer failed");
                    StatusCode::INTERNAL_SERVER_ERROR.into_response()
                }
            }
        }
        Err(Unanswered::Refused(refusal)) => {
            metrics.record_secret_scanning_refusal(refusal.label());
            tracing::info!(reason = refusal.label(), %peer, "secret-scanning report refused");
            (status_of(refusal), refusal.message()).into_response()
        }
        Err(Unanswered::Unavailable) => {
            metrics.record_secret_scanning_refusal("unavailable");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "the report could not be answered; retry later",
            )
                .into_response()
        }
    }
}

fn status_of(refusal: Refusal) -> StatusCode {
    match refusal {
        Refusal::Busy => StatusCode::SERVICE_UNAVAILABLE,
        Refusal::TooLarge | Refusal::TooManyMatches => StatusCode::PAYLOAD_TOO_LARGE,
        Refusal::Timeout => StatusCode::REQUEST_TIMEOUT,
        Refusal::MissingSignature | Refusal::UnknownKey | Refusal::BadSignature => {
            StatusCode::UNAUTHORIZED
        }
        Refusal::MalformedBody | Refusal::FieldTooLong => StatusCode::BAD_REQUEST,
        Refusal::RateLimited => StatusCode::TOO_MANY_REQUESTS,
    }
}

/// The value of a header sent exactly once, as text; a repeated header is
/// none (a proxy's appended copy must not let either win).
fn single<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    let mut values = headers.get_all(name).iter();
    let value = values.next()?;
    if values.next().is_some() {
        return None;
    }
    value.to_str().ok()
}

/// The body, refused past [`MAX_BODY_BYTES`] (whatever Content-Length
/// said) or [`BODY_TIMEOUT`].
async fn read_bounded(body: Body) -> Result<Vec<u8>, Refusal> {
    let read = async {
        let mut chunks = body.into_data_stream();
        let mut bytes = Vec::new();
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk.map_err(|_| Refusal::MalformedBody)?;
            if bytes.len() + chunk.len() > MAX_BODY_BYTES {
                return Err(Refusal::TooLarge);
            }
            bytes.extend_from_slice(&chunk);
        }
        Ok(bytes)
    };
    tokio::time::timeout(BODY_TIMEOUT, read)
        .await
        .unwrap_or(Err(Refusal::Timeout))
}
