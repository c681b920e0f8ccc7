//! `tokenauth.v1.AdminService`: backups, streamed to the operator.

use std::{path::PathBuf, sync::Arc};

use tokio::io::AsyncReadExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::credentials_of;
use crate::{
    domain::caller::Method,
    proto::{self, admin_service_server},
    service::TokenAuthority,
};

const CHUNK_BYTES: usize = 64 * 1024;

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
}
