//! `tokenauth.v1.TokenService`: issue, read, list and revoke tokens.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::caller_of;
use crate::{
    domain::{ids::parse_token_id, service::TokenService},
    proto::{self, token_service_server},
};

/// The gRPC face of the token service.
pub struct TokenApi {
    service: Arc<TokenService>,
}

impl TokenApi {
    pub fn new(service: Arc<TokenService>) -> Self {
        Self { service }
    }
}

#[tonic::async_trait]
impl token_service_server::TokenService for TokenApi {
    async fn issue_token(
        &self,
        request: Request<proto::IssueTokenRequest>,
    ) -> Result<Response<proto::IssueTokenResponse>, Status> {
        let caller = caller_of(&request);
        let new = request.into_inner().try_into()?;
        let (view, secret) = self.service.issue(&caller, new).await?;
        Ok(Response::new(proto::IssueTokenResponse {
            token: Some(view.into()),
            secret: secret.expose().to_owned(),
        }))
    }

    async fn get_token(
        &self,
        request: Request<proto::GetTokenRequest>,
    ) -> Result<Response<proto::GetTokenResponse>, Status> {
        let caller = caller_of(&request);
        let id = parse_token_id("id", &request.get_ref().id)?;
        let view = self.service.get(&caller, id).await?;
        Ok(Response::new(proto::GetTokenResponse {
            token: Some(view.into()),
        }))
    }

    async fn list_tokens(
        &self,
        request: Request<proto::ListTokensRequest>,
    ) -> Result<Response<proto::ListTokensResponse>, Status> {
        let caller = caller_of(&request);
        let request = request.into_inner();
        let (page_size, page_token) = (request.page_size, request.page_token.clone());
        let query = request.try_into()?;
        let (views, next_page_token) = self
            .service
            .list(&caller, query, page_size, &page_token)
            .await?;
        Ok(Response::new(proto::ListTokensResponse {
            tokens: views.into_iter().map(Into::into).collect(),
            next_page_token,
        }))
    }

    async fn revoke_token(
        &self,
        request: Request<proto::RevokeTokenRequest>,
    ) -> Result<Response<proto::RevokeTokenResponse>, Status> {
        let caller = caller_of(&request);
        let id = parse_token_id("id", &request.get_ref().id)?;
        let view = self.service.revoke(&caller, id).await?;
        Ok(Response::new(proto::RevokeTokenResponse {
            token: Some(view.into()),
        }))
    }

    async fn revoke_all(
        &self,
        request: Request<proto::RevokeAllRequest>,
    ) -> Result<Response<proto::RevokeAllResponse>, Status> {
        let caller = caller_of(&request);
        let selector = request.into_inner().try_into()?;
        let revoked_count = self.service.revoke_all(&caller, selector).await?;
        Ok(Response::new(proto::RevokeAllResponse { revoked_count }))
    }
}
