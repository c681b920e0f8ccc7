//! `tokenauth.v1.AuditService`: an organization's audit log, newest first,
//! and the feed of its changes (WatchEvents), oldest first.

use std::{pin::Pin, sync::Arc};

use tokio_stream::{Stream, StreamExt, wrappers::ReceiverStream};

use tonic::{Request, Response, Status};

use super::{convert::audit_to_proto, credentials_of};
use crate::{
    domain::caller::Method,
    proto::{self, audit_service_server},
    service::TokenAuthority,
};

/// The gRPC face of the audit log.
pub struct AuditApi {
    service: Arc<TokenAuthority>,
}

impl AuditApi {
    pub fn new(service: Arc<TokenAuthority>) -> Self {
        Self { service }
    }
}

#[tonic::async_trait]
impl audit_service_server::AuditService for AuditApi {
    type WatchEventsStream =
        Pin<Box<dyn Stream<Item = Result<proto::WatchEventsResponse, Status>> + Send + 'static>>;

    async fn watch_events(
        &self,
        request: Request<proto::WatchEventsRequest>,
    ) -> Result<Response<Self::WatchEventsStream>, Status> {
        let credentials = credentials_of(&request, request.get_ref().caller_actor.as_ref());
        let org = request.get_ref().org_id.clone();
        let caller = self
            .service
            .authenticate(credentials, Method::WatchEvents, &org, None)
            .await?;
        let query = request.get_ref().try_into()?;
        let events = self
            .service
            .watch_events(&caller, query, &request.get_ref().after)
            .await?;
        let stream = ReceiverStream::new(events).map(|item| {
            item.map(|(cursor, event)| proto::WatchEventsResponse {
                cursor: cursor.encode(),
                event: Some(audit_to_proto(event)),
            })
            .map_err(Status::from)
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn list_audit_events(
        &self,
        request: Request<proto::ListAuditEventsRequest>,
    ) -> Result<Response<proto::ListAuditEventsResponse>, Status> {
        let credentials = credentials_of(&request, request.get_ref().caller_actor.as_ref());
        let org = request.get_ref().org_id.clone();
        let caller = self
            .service
            .authenticate(credentials, Method::ListAuditEvents, &org, None)
            .await?;
        let query = request.get_ref().try_into()?;
        let request = request.into_inner();
        let (events, next_page_token) = self
            .service
            .list_audit(&caller, query, request.page_size, &request.page_token)
            .await?;
        Ok(Response::new(proto::ListAuditEventsResponse {
            events: events.into_iter().map(audit_to_proto).collect(),
            next_page_token,
        }))
    }
}
