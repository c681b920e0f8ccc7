//! `tokenauth.v1.CheckService`: the per-request authorization decision.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::{
    convert::{kind_to_proto, reason_to_proto},
    request_context,
};
use crate::{
    domain::{
        client_address::parse_reported,
        explain::{denial_detail, required_permission},
        token::{CheckQuery, validate_check_query},
    },
    proto::{self, check_service_server},
    service::{Decision, TokenAuthority},
};

/// The gRPC face of Check.
pub struct CheckApi {
    service: Arc<TokenAuthority>,
}

impl CheckApi {
    pub fn new(service: Arc<TokenAuthority>) -> Self {
        Self { service }
    }
}

/// The response; a deny also says what was missing (allocating only then).
fn decision_to_proto(decision: &Decision, query: &CheckQuery<'_>) -> proto::CheckResponse {
    let mut response = proto::CheckResponse {
        allowed: decision.allowed(),
        reason: reason_to_proto(decision.reason).into(),
        ..Default::default()
    };
    if !response.allowed {
        if let Some(permission) = required_permission(decision.reason, query.permission) {
            permission.clone_into(&mut response.required_permission);
        }
        response.detail = denial_detail(decision.reason, query).unwrap_or_default();
    }
    if let Some(token) = &decision.token {
        let record = &token.record;
        response.token_id = record.id.to_string();
        response.kind = kind_to_proto(record.kind).into();
        response.owner_user_id.clone_from(&record.owner_user_id);
        response.org_id.clone_from(&record.org_id);
        response.workspace_id.clone_from(&record.workspace_id);
    }
    response
}

#[tonic::async_trait]
impl check_service_server::CheckService for CheckApi {
    async fn check(
        &self,
        request: Request<proto::CheckRequest>,
    ) -> Result<Response<proto::CheckResponse>, Status> {
        let mut origin = request_context::check_origin(&request);
        let message = request.get_ref();
        let query = validate_check_query(
            self.service.catalogue(),
            &message.permission,
            &message.org_id,
            &message.workspace_id,
        )?;
        origin.client = parse_reported("client_address", &message.client_address)?;
        let decision = self.service.check(&message.token, &query, &origin).await?;
        Ok(Response::new(decision_to_proto(&decision, &query)))
    }
}
