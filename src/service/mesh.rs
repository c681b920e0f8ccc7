//! The mesh authorizer (Envoy ext_authz): route rules over Check. The pure
//! parts (limits, routes, ids, the verdict and the headers the upstream
//! receives) are `domain::ext_authz`; this is the orchestration that finds
//! the route and the credential, asks [`TokenAuthority::check`], and shapes
//! the answer, so that usage recording, exact expiry and the revocation
//! guarantees apply to the mesh unchanged.

use std::sync::Arc;

use super::{authority::TokenAuthority, check::CheckOrigin, error::Error};
use crate::domain::{
    Error as DomainError,
    audit::Origin,
    ext_authz::{
        Denial, ExtAuthzPolicy, HttpRequest, Identity, MeshVerdict, Unmatched, credential,
        route_ids, upstream_headers,
    },
    ids::is_request_id,
    routes::{RequestView as _, Route},
    token::validate_check_query,
};

/// The mesh authorizer: route rules over the token authority.
pub struct ExtAuthz {
    service: Arc<TokenAuthority>,
    policy: ExtAuthzPolicy,
}

impl ExtAuthz {
    pub fn new(service: Arc<TokenAuthority>, policy: ExtAuthzPolicy) -> Self {
        Self { service, policy }
    }

    /// Decides on `request`. A deny is a verdict; only an internal fault (the
    /// store failing on a cache miss) is an error.
    /// Denies a request whose ids are missing or invalid, unless its
    /// credential is bad in itself: then the client hears 401 about the
    /// credential, not 403 about the request.
    async fn deny_request(
        &self,
        presented: &str,
        denial: Denial,
        route: &Route,
    ) -> Result<MeshVerdict, Error> {
        Ok(match self.service.unusable(presented).await? {
            Some(reason) => MeshVerdict::deny_on(Denial::Token(reason), route, None),
            None => MeshVerdict::deny_on(denial, route, None),
        })
    }

    /// `connection` is the ext_authz call's own origin (the proxy's address
    /// and the call's request id).
    pub async fn authorize(
        &self,
        request: Option<&HttpRequest>,
        connection: &CheckOrigin<'_>,
    ) -> Result<MeshVerdict, Error> {
        let Some(request) = request else {
            return Ok(MeshVerdict::deny(Denial::NotHttp));
        };
        // First, so that nothing below ever runs on an unbounded request.
        if let Err(denial) = self.policy.limits.admit(request) {
            return Ok(MeshVerdict::deny(denial));
        }
        let path = match self.policy.routes.normalize(&request.path) {
            Ok(path) => path,
            Err(why) => return Ok(MeshVerdict::deny(Denial::InvalidPath(why))),
        };
        let Some(matched) = self.policy.routes.find(&request.method, &path) else {
            return Ok(match self.policy.unmatched {
                Unmatched::Deny => MeshVerdict::deny(Denial::NoRoute),
                Unmatched::Allow => MeshVerdict::Allow {
                    // With no identity there is nothing to conflict with.
                    allow: upstream_headers(&self.policy, request, None)
                        .map_err(|name| Error::Internal(format!("conflict on {name}")))?,
                    permission: None,
                    route: None,
                },
            });
        };
        let route = matched.route;
        let presented = match credential(&self.policy, request) {
            Ok(presented) => presented,
            Err(denial) => return Ok(MeshVerdict::deny_on(denial, route, None)),
        };
        let ids = route_ids(route, &matched.captures, request);
        let (org_id, workspace_id) = match ids {
            Ok(ids) => ids,
            Err(denial) => return self.deny_request(presented, denial, route).await,
        };
        let query = match validate_check_query(
            self.service.catalogue(),
            &route.permission,
            &org_id,
            &workspace_id,
        ) {
            Ok(query) => query,
            Err(DomainError::InvalidArgument {
                field: field @ ("org_id" | "workspace_id"),
                reason,
            }) => {
                let denial = Denial::InvalidId { field, reason };
                return self.deny_request(presented, denial, route).await;
            }
            // The permission was validated against this catalogue at startup.
            Err(other) => {
                return Err(Error::Internal(format!(
                    "route {}: {other}",
                    route.pattern.as_str()
                )));
            }
        };
        // Envoy sets x-request-id on every request it proxies, but passes a
        // client's own on by default: kept only if it passes the rule every
        // path applies, else the ext_authz call's own id stands in (if
        // Envoy sent one; an audit event makes one up otherwise).
        let origin = CheckOrigin {
            origin: Origin {
                connection: connection.origin.connection,
                reported: request.source,
            },
            request_id: request
                .header_values("x-request-id")
                .first()
                .copied()
                .filter(|id| is_request_id(id))
                .or(connection.request_id),
            client: request.source.map(|source| source.ip()),
        };
        let decision = self.service.check(presented, &query, &origin).await?;
        let identity = decision.token.as_ref().map(|t| Identity::of(&t.record));
        if !decision.allowed() {
            return Ok(MeshVerdict::deny_on(
                Denial::Token(decision.reason),
                route,
                identity,
            ));
        }
        Ok(
            match upstream_headers(&self.policy, request, identity.as_ref()) {
                Ok(allow) => MeshVerdict::Allow {
                    allow,
                    permission: Some(route.permission.clone()),
                    route: Some(route.pattern.as_str().to_owned()),
                },
                Err(name) => {
                    MeshVerdict::deny_on(Denial::IdentityHeaderConflict(name), route, identity)
                }
            },
        )
    }
}
