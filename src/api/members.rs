//! The member RPCs of `tokenauth.v1.TokenService` (SetMember, RemoveMember,
//! GetMember, ListMembers): authenticate, validate, call the service,
//! convert back. `api::tokens` forwards them here, so that the service's
//! one trait impl stays a list of calls.

use tonic::{Request, Response, Status};

use super::{
    convert::{org_role, timestamp_to_proto},
    credentials_of,
};
use crate::{
    domain::{
        Error,
        caller::{Method, OrgRole},
        member::{Member, MemberKey},
    },
    proto,
    service::TokenAuthority,
};

fn member_to_proto(member: Member) -> proto::Member {
    proto::Member {
        org_id: member.org_id,
        user_id: member.user_id,
        org_role: match member.role {
            OrgRole::ReadOnly => proto::OrgRole::ReadOnly,
            OrgRole::ReadWrite => proto::OrgRole::ReadWrite,
            OrgRole::Admin => proto::OrgRole::Admin,
        }
        .into(),
        updated_at: Some(timestamp_to_proto(member.updated_at)),
    }
}

pub(crate) fn required_role(role: i32) -> Result<OrgRole, Error> {
    proto::OrgRole::try_from(role)
        .ok()
        .and_then(org_role)
        .ok_or_else(|| Error::invalid("org_role", "is required (READ_ONLY, READ_WRITE or ADMIN)"))
}

pub async fn set_member(
    service: &TokenAuthority,
    request: Request<proto::SetMemberRequest>,
) -> Result<Response<proto::SetMemberResponse>, Status> {
    let credentials = credentials_of(&request, request.get_ref().actor.as_ref());
    let caller = service
        .authenticate(
            credentials,
            Method::SetMember,
            &request.get_ref().org_id,
            None,
        )
        .await?;
    let request = request.into_inner();
    let key = MemberKey::new(&request.org_id, &request.user_id)?;
    let role = required_role(request.org_role)?;
    let member = service.set_member(&caller, key, role).await?;
    Ok(Response::new(proto::SetMemberResponse {
        member: Some(member_to_proto(member)),
    }))
}

pub async fn remove_member(
    service: &TokenAuthority,
    request: Request<proto::RemoveMemberRequest>,
) -> Result<Response<proto::RemoveMemberResponse>, Status> {
    let credentials = credentials_of(&request, request.get_ref().actor.as_ref());
    let caller = service
        .authenticate(
            credentials,
            Method::RemoveMember,
            &request.get_ref().org_id,
            None,
        )
        .await?;
    let request = request.into_inner();
    let key = MemberKey::new(&request.org_id, &request.user_id)?;
    if request.dry_run {
        let (known, affected_count, affected) = service.preview_remove_member(&caller, key).await?;
        return Ok(Response::new(proto::RemoveMemberResponse {
            removed: known,
            revoked_count: 0,
            affected_count,
            affected: affected.into_iter().map(Into::into).collect(),
        }));
    }
    let removal = service.remove_member(&caller, key).await?;
    Ok(Response::new(proto::RemoveMemberResponse {
        removed: removal.was_member,
        revoked_count: removal.revoked,
        ..Default::default()
    }))
}

pub async fn get_member(
    service: &TokenAuthority,
    request: Request<proto::GetMemberRequest>,
) -> Result<Response<proto::GetMemberResponse>, Status> {
    let credentials = credentials_of(&request, request.get_ref().actor.as_ref());
    let caller = service
        .authenticate(
            credentials,
            Method::GetMember,
            &request.get_ref().org_id,
            None,
        )
        .await?;
    let request = request.into_inner();
    let key = MemberKey::new(&request.org_id, &request.user_id)?;
    let member = service.get_member(&caller, key).await?;
    Ok(Response::new(proto::GetMemberResponse {
        member: Some(member_to_proto(member)),
    }))
}

pub async fn list_members(
    service: &TokenAuthority,
    request: Request<proto::ListMembersRequest>,
) -> Result<Response<proto::ListMembersResponse>, Status> {
    let credentials = credentials_of(&request, request.get_ref().actor.as_ref());
    let caller = service
        .authenticate(
            credentials,
            Method::ListMembers,
            &request.get_ref().org_id,
            None,
        )
        .await?;
    let request = request.into_inner();
    let (members, next_page_token) = service
        .list_members(
            &caller,
            &request.org_id,
            request.page_size,
            &request.page_token,
        )
        .await?;
    Ok(Response::new(proto::ListMembersResponse {
        members: members.into_iter().map(member_to_proto).collect(),
        next_page_token,
    }))
}
