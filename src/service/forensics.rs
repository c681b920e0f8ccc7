//! Forensics: LookupSecret, which token a secret is, for an ADMIN of its
//! organization. A secret of another organization's token is answered
//! exactly as an unknown one (the refusal is audited in the token's
//! organization, off the answer's path, as for any hidden token).

use super::{authority::TokenAuthority, error::Error};
use crate::domain::{
    Error as DomainError, authz,
    caller::{Caller, Method},
    secret,
    time::Timestamp,
    token::TokenView,
};

/// Which of its token's secrets a looked-up secret is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SecretState {
    Current,
    /// Replaced by rotation, still in its grace period.
    Replaced,
    /// Replaced by rotation, past its grace period.
    Retired,
}

impl TokenAuthority {
    /// The token `presented` is a secret of, and which secret it is.
    pub async fn lookup_secret(
        &self,
        caller: &Caller,
        presented: &str,
    ) -> Result<(TokenView, SecretState), Error> {
        if secret::parse(presented).is_none() {
            return Err(Error::invalid(
                "secret",
                "is not a tokenauth secret (prefix, length, alphabet or checksum)",
            ));
        }
        // One answer for unknown and hidden alike, naming nothing.
        let unknown = || Error::not_found("for this secret".into());
        let Some((token, digest)) = self.find_well_formed(presented).await? else {
            return Err(unknown());
        };
        let Some(secret) = token.record.secret_matching(&digest) else {
            return Err(unknown());
        };
        let record = &token.record;
        let verdict = self
            .verdict_as_stored(caller, |p| authz::lookup_secret(p, record))
            .await?;
        match self
            .authorize_token(caller, Method::LookupSecret, record, verdict)
            .await
        {
            Err(Error::Domain(DomainError::NotFound(_))) => return Err(unknown()),
            other => other?,
        }
        let state = match secret.retired_at {
            None => SecretState::Current,
            Some(at) if at > Timestamp::now() => SecretState::Replaced,
            Some(_) => SecretState::Retired,
        };
        tracing::info!(
            token_id = %record.id, org_id = %record.org_id, actor = %caller.actor_ref().label(),
            peer = caller.peer.map(tracing::field::display), request_id = %caller.request_id,
            "secret looked up"
        );
        Ok((self.view(record.clone()).await?, state))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        domain::{secret::Secret, token::TokenKind},
        service::fixture::{admin, fixture},
    };

    #[tokio::test]
    async fn an_admin_finds_their_organizations_token_and_nothing_else() {
        let f = fixture();
        let (id, secret) = f.issue("org-1", "ws-1", &["test_api:run"]).await;
        let (view, state) = f
            .authority
            .lookup_secret(&admin("org-1"), &secret)
            .await
            .unwrap();
        assert_eq!((view.record.id, state), (id, SecretState::Current));
        let stranger = Secret::generate(TokenKind::Service).unwrap();
        let hidden = f
            .authority
            .lookup_secret(&admin("org-2"), &secret)
            .await
            .unwrap_err();
        let unknown = f
            .authority
            .lookup_secret(&admin("org-2"), stranger.expose())
            .await
            .unwrap_err();
        assert_eq!(hidden.to_string(), unknown.to_string());
        assert!(matches!(
            f.authority.lookup_secret(&admin("org-1"), "garbage").await,
            Err(Error::Domain(DomainError::InvalidArgument {
                field: "secret",
                ..
            }))
        ));
    }
}
