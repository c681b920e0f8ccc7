//! `tokenauth.v1.TokenService`: issue, read, list, rotate and revoke tokens,
//! and read their usage and the least-privilege report; and the members
//! personal tokens follow (handled in `api::members`). Every call is
//! authenticated first.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::{
    convert::{grace_from_proto, resolution_to_proto, timestamp_to_proto, usage_to_proto},
    credentials_of, members,
};
use crate::{
    domain::{
        caller::Method,
        ids::{TokenId, parse_token_id},
        leaks::LeakSource,
    },
    proto::{self, token_service_server},
    service::{HolderOrigin, SecretState, TokenAuthority},
};

/// The gRPC face of the token service.
pub struct TokenApi {
    service: Arc<TokenAuthority>,
}

impl TokenApi {
    pub fn new(service: Arc<TokenAuthority>) -> Self {
        Self { service }
    }
}

impl TokenApi {
    /// ReportLeakedSecrets with `dry_run`: an ADMIN's, authenticated.
    async fn preview_leak_report(
        &self,
        request: Request<proto::ReportLeakedSecretsRequest>,
    ) -> Result<Response<proto::ReportLeakedSecretsResponse>, Status> {
        let credentials = credentials_of(&request, request.get_ref().actor.as_ref());
        let caller = self
            .service
            .authenticate(credentials, Method::ReportLeakedSecrets, "", None)
            .await?;
        let (tally, affected_count, affected) = self
            .service
            .preview_leak_report(&caller, &request.get_ref().secrets)
            .await?;
        Ok(Response::new(proto::ReportLeakedSecretsResponse {
            received: tally.received,
            accepted: tally.accepted,
            malformed: tally.malformed,
            affected_count,
            affected: affected.into_iter().map(Into::into).collect(),
        }))
    }
}

#[tonic::async_trait]
impl token_service_server::TokenService for TokenApi {
    async fn issue_token(
        &self,
        request: Request<proto::IssueTokenRequest>,
    ) -> Result<Response<proto::IssueTokenResponse>, Status> {
        let credentials = credentials_of(&request, request.get_ref().actor.as_ref());
        let org = request.get_ref().org_id.clone();
        let caller = self
            .service
            .authenticate(credentials, Method::IssueToken, &org, None)
            .await?;
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
        let credentials = credentials_of(&request, request.get_ref().actor.as_ref());
        let hint = TokenId::parse(&request.get_ref().id);
        let caller = self
            .service
            .authenticate(credentials, Method::GetToken, "", hint)
            .await?;
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
        let credentials = credentials_of(&request, request.get_ref().actor.as_ref());
        let org = request.get_ref().org_id.clone();
        let caller = self
            .service
            .authenticate(credentials, Method::ListTokens, &org, None)
            .await?;
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
        let credentials = credentials_of(&request, request.get_ref().actor.as_ref());
        let hint = TokenId::parse(&request.get_ref().id);
        let caller = self
            .service
            .authenticate(credentials, Method::RevokeToken, "", hint)
            .await?;
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
        let credentials = credentials_of(&request, request.get_ref().actor.as_ref());
        let org = request.get_ref().org_id.clone();
        let caller = self
            .service
            .authenticate(credentials, Method::RevokeAll, &org, None)
            .await?;
        let dry_run = request.get_ref().dry_run;
        let selector = request.into_inner().try_into()?;
        if dry_run {
            let (affected_count, affected) =
                self.service.preview_revoke_all(&caller, selector).await?;
            return Ok(Response::new(proto::RevokeAllResponse {
                revoked_count: 0,
                affected_count,
                affected: affected.into_iter().map(Into::into).collect(),
            }));
        }
        let revoked_count = self.service.revoke_all(&caller, selector).await?;
        Ok(Response::new(proto::RevokeAllResponse {
            revoked_count,
            ..Default::default()
        }))
    }

    async fn rotate_token(
        &self,
        request: Request<proto::RotateTokenRequest>,
    ) -> Result<Response<proto::RotateTokenResponse>, Status> {
        let credentials = credentials_of(&request, request.get_ref().actor.as_ref());
        let hint = TokenId::parse(&request.get_ref().id);
        let caller = self
            .service
            .authenticate(credentials, Method::RotateToken, "", hint)
            .await?;
        let id = parse_token_id("id", &request.get_ref().id)?;
        let grace = grace_from_proto(request.get_ref().grace_period.as_ref())?;
        let (view, secret, old_expires_at) = self.service.rotate(&caller, id, grace).await?;
        Ok(Response::new(proto::RotateTokenResponse {
            token: Some(view.into()),
            secret: secret.expose().to_owned(),
            old_secret_expires_at: Some(timestamp_to_proto(old_expires_at)),
        }))
    }

    async fn list_token_usage(
        &self,
        request: Request<proto::ListTokenUsageRequest>,
    ) -> Result<Response<proto::ListTokenUsageResponse>, Status> {
        let credentials = credentials_of(&request, request.get_ref().actor.as_ref());
        let org = request.get_ref().org_id.clone();
        let caller = self
            .service
            .authenticate(credentials, Method::ListTokenUsage, &org, None)
            .await?;
        let query = request.get_ref().try_into()?;
        let request = request.into_inner();
        let listing = self
            .service
            .list_usage(&caller, query, request.page_size, &request.page_token)
            .await?;
        Ok(Response::new(proto::ListTokenUsageResponse {
            records: listing.records.into_iter().map(usage_to_proto).collect(),
            next_page_token: listing.next,
            resolution: resolution_to_proto(listing.resolution).into(),
        }))
    }

    async fn report_unused_permissions(
        &self,
        request: Request<proto::ReportUnusedPermissionsRequest>,
    ) -> Result<Response<proto::ReportUnusedPermissionsResponse>, Status> {
        let credentials = credentials_of(&request, request.get_ref().actor.as_ref());
        let org = request.get_ref().org_id.clone();
        let caller = self
            .service
            .authenticate(credentials, Method::ReportUnusedPermissions, &org, None)
            .await?;
        let query = request.get_ref().try_into()?;
        let request = request.into_inner();
        let report = self
            .service
            .report_unused(&caller, query, request.page_size, &request.page_token)
            .await?;
        Ok(Response::new(proto::ReportUnusedPermissionsResponse {
            tokens: report.tokens.into_iter().map(Into::into).collect(),
            next_page_token: report.next,
            effective_since: Some(timestamp_to_proto(report.effective_since)),
            truncated: report.truncated,
        }))
    }

    async fn report_leaked_secrets(
        &self,
        request: Request<proto::ReportLeakedSecretsRequest>,
    ) -> Result<Response<proto::ReportLeakedSecretsResponse>, Status> {
        if request.get_ref().dry_run {
            return self.preview_leak_report(request).await;
        }
        // No credential: only the peer and request id are read.
        let credentials = credentials_of(&request, None);
        let origin = HolderOrigin {
            peer: credentials.peer,
            request_id: &credentials.request_id,
        };
        let message = request.get_ref();
        let source = LeakSource::new(&message.source, &message.url)?;
        let tally = self
            .service
            .report_leaked(&message.secrets, &source, origin)
            .await?;
        Ok(Response::new(proto::ReportLeakedSecretsResponse {
            received: tally.received,
            accepted: tally.accepted,
            malformed: tally.malformed,
            ..Default::default()
        }))
    }

    async fn revoke_self(
        &self,
        request: Request<proto::RevokeSelfRequest>,
    ) -> Result<Response<proto::RevokeSelfResponse>, Status> {
        let credentials = credentials_of(&request, None);
        let presented = match &credentials.bearer {
            Some(Ok(secret)) => secret.as_str(),
            Some(Err(why)) => return Err(Status::unauthenticated(why.clone())),
            None => {
                return Err(Status::unauthenticated(
                    "present the token to revoke as authorization: Bearer <token>",
                ));
            }
        };
        let origin = HolderOrigin {
            peer: credentials.peer,
            request_id: &credentials.request_id,
        };
        let (id, revoked_at) = self.service.revoke_self(presented, origin).await?;
        Ok(Response::new(proto::RevokeSelfResponse {
            token_id: id.to_string(),
            revoked_at: Some(timestamp_to_proto(revoked_at)),
        }))
    }

    async fn lookup_secret(
        &self,
        request: Request<proto::LookupSecretRequest>,
    ) -> Result<Response<proto::LookupSecretResponse>, Status> {
        let credentials = credentials_of(&request, request.get_ref().actor.as_ref());
        let caller = self
            .service
            .authenticate(credentials, Method::LookupSecret, "", None)
            .await?;
        let (view, state) = self
            .service
            .lookup_secret(&caller, &request.get_ref().secret)
            .await?;
        let secret_state = match state {
            SecretState::Current => proto::SecretState::Current,
            SecretState::Replaced => proto::SecretState::Replaced,
            SecretState::Retired => proto::SecretState::Retired,
        };
        Ok(Response::new(proto::LookupSecretResponse {
            token: Some(view.into()),
            secret_state: secret_state.into(),
        }))
    }

    async fn set_member(
        &self,
        request: Request<proto::SetMemberRequest>,
    ) -> Result<Response<proto::SetMemberResponse>, Status> {
        members::set_member(&self.service, request).await
    }

    async fn remove_member(
        &self,
        request: Request<proto::RemoveMemberRequest>,
    ) -> Result<Response<proto::RemoveMemberResponse>, Status> {
        members::remove_member(&self.service, request).await
    }

    async fn get_member(
        &self,
        request: Request<proto::GetMemberRequest>,
    ) -> Result<Response<proto::GetMemberResponse>, Status> {
        members::get_member(&self.service, request).await
    }

    async fn list_members(
        &self,
        request: Request<proto::ListMembersRequest>,
    ) -> Result<Response<proto::ListMembersResponse>, Status> {
        members::list_members(&self.service, request).await
    }
}
