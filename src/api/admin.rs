//! `tokenauth.v1.AdminService`: backups, streamed to the operator, and the
//! webhook endpoints' failed deliveries.

use std::{path::PathBuf, sync::Arc};

use tokio::io::AsyncReadExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::{convert::timestamp_to_proto, credentials_of};
use crate::{
    domain::{caller::Method, ids::EventId},
    proto::{self, admin_service_server},
    service::{TokenAuthority, webhooks::MAX_REDELIVER_IDS},
};

const CHUNK_BYTES: usize = 64 * 1024;

fn invalid(field: &'static str, reason: String) -> Status {
    crate::service::Error::invalid(field, reason).into()
}

fn require_endpoint(name: &str) -> Result<(), Status> {
    if name.is_empty() {
        return Err(invalid("endpoint", "is required".into()));
    }
    Ok(())
}

/// The gRPC face of the administrative operations.
pub struct AdminApi {
    service: Arc<TokenAuthority>,
    /// Where backup files are staged before they are streamed (the data directory).
    staging: PathBuf,
}

impl AdminApi {
    pub fn new(service: Arc<TokenAuthority>, staging: PathBuf) -> Self {
        Self { service, staging }
    }
}

/// Removes the staged file however the stream ends.
struct Staged(PathBuf);

impl Drop for Staged {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[tonic::async_trait]
impl admin_service_server::AdminService for AdminApi {
    type BackupStream = ReceiverStream<Result<proto::BackupChunk, Status>>;

    async fn backup(
        &self,
        request: Request<proto::BackupRequest>,
    ) -> Result<Response<Self::BackupStream>, Status> {
        let credentials = credentials_of(&request, None);
        let caller = self
            .service
            .authenticate(credentials, Method::Backup, "", None)
            .await?;
        let staged = Staged(
            self.staging
                .join(format!("backup-{}.tmp", super::request_context::generate())),
        );
        self.service.backup(&caller, &staged.0).await?;
        let mut file = tokio::fs::File::open(&staged.0).await.map_err(|e| {
            Status::from(crate::service::Error::Internal(format!("backup file: {e}")))
        })?;
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            let _staged = staged;
            let mut buf = vec![0u8; CHUNK_BYTES];
            loop {
                match file.read(&mut buf).await {
                    Ok(0) => return,
                    Ok(n) => {
                        let chunk = proto::BackupChunk {
                            data: buf[..n].to_vec(),
                        };
                        if tx.send(Ok(chunk)).await.is_err() {
                            return;
                        }
                    }
                    Err(error) => {
                        tracing::error!(%error, "reading the staged backup failed");
                        let _ = tx.send(Err(Status::internal("internal error"))).await;
                        return;
                    }
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn list_failed_deliveries(
        &self,
        request: Request<proto::ListFailedDeliveriesRequest>,
    ) -> Result<Response<proto::ListFailedDeliveriesResponse>, Status> {
        let credentials = credentials_of(&request, None);
        let caller = self
            .service
            .authenticate(credentials, Method::ListFailedDeliveries, "", None)
            .await?;
        let endpoint = &request.get_ref().endpoint;
        require_endpoint(endpoint)?;
        let listed = self
            .service
            .list_failed_deliveries(&caller, endpoint)
            .await?;
        let deliveries = listed
            .deliveries
            .into_iter()
            .map(|failed| proto::FailedDelivery {
                event_id: failed.event_id.to_string(),
                event_type: failed.event_type,
                cursor: failed.cursor.encode(),
                attempts: failed.attempts,
                first_attempt_time: Some(timestamp_to_proto(failed.first_attempt)),
                last_attempt_time: Some(timestamp_to_proto(failed.last_attempt)),
                last_error: failed.last_error,
                queued: failed.queued,
            })
            .collect();
        Ok(Response::new(proto::ListFailedDeliveriesResponse {
            deliveries,
            dropped: listed.dropped,
        }))
    }

    async fn redeliver_events(
        &self,
        request: Request<proto::RedeliverEventsRequest>,
    ) -> Result<Response<proto::RedeliverEventsResponse>, Status> {
        let credentials = credentials_of(&request, None);
        let caller = self
            .service
            .authenticate(credentials, Method::RedeliverEvents, "", None)
            .await?;
        let message = request.get_ref();
        require_endpoint(&message.endpoint)?;
        if message.event_ids.len() > MAX_REDELIVER_IDS {
            return Err(invalid(
                "event_ids",
                format!("at most {MAX_REDELIVER_IDS} ids (or none, with all)"),
            ));
        }
        let ids = match (message.all, message.event_ids.is_empty()) {
            (true, true) => None,
            (false, false) => Some(
                message
                    .event_ids
                    .iter()
                    .map(|id| {
                        EventId::parse(id).ok_or_else(|| {
                            invalid("event_ids", format!("{id:?} is not an event id"))
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()?,
            ),
            _ => {
                return Err(invalid(
                    "event_ids",
                    "name the event ids to redeliver, or set all (not both)".into(),
                ));
            }
        };
        let queued = self
            .service
            .redeliver_events(&caller, &message.endpoint, ids.as_deref())
            .await?;
        Ok(Response::new(proto::RedeliverEventsResponse {
            queued: u32::try_from(queued).unwrap_or(u32::MAX),
        }))
    }
}
