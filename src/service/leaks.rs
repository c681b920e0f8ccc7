//! Leaked-secret intake and RevokeSelf: revocation by whoever holds a
//! secret, with no management credential. The rules (batch bounds, shape
//! before lookup, per-network budgets, counts-only answers) are
//! `domain::leaks`; each revocation is [`TokenAuthority::revoke_record`],
//! the same as RevokeToken's, so it is immediate, durable and seen by every
//! replica.

use std::net::SocketAddr;

use super::{authority::TokenAuthority, error::Error};
use crate::domain::{
    audit::{AuditAction, AuditEvent, Origin},
    authz::{self, Verdict},
    caller::{Caller, Method},
    ids::{EventId, TokenId},
    leaks::{IntakeBudget, LeakSource, Tally, sort_reported},
    pagination::DEFAULT_PAGE_SIZE,
    secret,
    time::Timestamp,
    token::{Reason, TokenRecord, TokenView, liveness},
};

/// What a reported secret came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Leaked {
    /// It named a live token, now revoked.
    Revoked,
    /// It named a token revoked before.
    AlreadyRevoked,
    /// It names nothing that could be used: unknown, expired, or a secret
    /// replaced by rotation.
    NotLive,
}

/// Where an unauthenticated revocation came from, for its audit events.
#[derive(Clone, Copy, Debug)]
pub struct HolderOrigin<'a> {
    pub peer: Option<SocketAddr>,
    pub request_id: &'a str,
}

impl TokenAuthority {
    /// Revokes every live token a reported secret names; answers counts
    /// only. Refuses an empty or oversized report, or one over the caller's
    /// network's (or everyone's) budget, before looking anything up.
    pub async fn report_leaked(
        &self,
        secrets: &[String],
        source: &LeakSource,
        origin: HolderOrigin<'_>,
    ) -> Result<Tally, Error> {
        let (well_formed, malformed) = sort_reported(secrets)?;
        let received = secrets.len() as u64;
        self.spend_intake(origin.peer, secrets.len())?;
        let now = Timestamp::now();
        let mut revoked = 0u64;
        for presented in &well_formed {
            if self.revoke_leaked(presented, source, origin, now).await? == Leaked::Revoked {
                revoked += 1;
            }
        }
        let tally = Tally {
            received,
            accepted: well_formed.len() as u64,
            malformed,
        };
        tracing::info!(
            received, accepted = tally.accepted, malformed, revoked, source = %source.source,
            url = %source.url, peer = origin.peer.map(tracing::field::display),
            request_id = %origin.request_id, "leaked secrets reported"
        );
        Ok(tally)
    }

    /// Revokes the live token that the well-formed secret `presented`
    /// names, audited as a leak report from `source`: the one path of every
    /// leak intake (ReportLeakedSecrets, GitHub's secret scanning).
    pub(super) async fn revoke_leaked(
        &self,
        presented: &str,
        source: &LeakSource,
        origin: HolderOrigin<'_>,
        now: Timestamp,
    ) -> Result<Leaked, Error> {
        let record = match self.usable_token_of(presented, now).await? {
            Ok(record) => record,
            Err(Reason::Revoked) => {
                return Ok(match self.revocation_of(presented).await? {
                    Some(_) => Leaked::AlreadyRevoked,
                    None => Leaked::NotLive,
                });
            }
            Err(_) => return Ok(Leaked::NotLive),
        };
        let mut event = self.holder_event(Method::ReportLeakedSecrets, &record, now, origin)?;
        event.detail = source.detail();
        self.revoke_record(&record, now, event).await?;
        tracing::warn!(
            token_id = %record.id, org_id = %record.org_id, source = %source.source,
            url = %source.url, peer = origin.peer.map(tracing::field::display),
            request_id = %origin.request_id, "token revoked: its secret was reported leaked"
        );
        Ok(Leaked::Revoked)
    }

    /// A leak report's dry run, for an ADMIN: the counts, how many live
    /// tokens of the caller's organization the secrets name, and the first
    /// page of them. Changes nothing; other organizations' tokens are not
    /// told apart from unknown secrets.
    pub async fn preview_leak_report(
        &self,
        caller: &Caller,
        secrets: &[String],
    ) -> Result<(Tally, u64, Vec<TokenView>), Error> {
        let (well_formed, malformed) = sort_reported(secrets)?;
        let org = match &caller.principal {
            crate::domain::caller::Principal::ControlPlane {
                actor: Some(actor), ..
            } => actor.org_id.clone(),
            _ => String::new(),
        };
        // The caller as the service knows them: a demoted ADMIN's stale
        // session neither previews nor learns which secrets are live.
        let (principal, verdict) = match self.acting_member_as_stored(caller).await? {
            Ok(principal) => {
                let verdict = authz::preview_leak_report(&principal);
                (Some(principal), verdict)
            }
            Err(why) => (None, Verdict::Deny(why)),
        };
        self.authorize_org(caller, Method::ReportLeakedSecrets, &org, "", verdict)
            .await?;
        let principal =
            principal.ok_or_else(|| Error::Internal("authorized without a principal".into()))?;
        let asked = u32::try_from(secrets.len()).unwrap_or(u32::MAX);
        self.dry_run_intake
            .take_for(org.clone(), asked, Timestamp::now())
            .map_err(|_| {
                Error::resource_exhausted(
                    "too many secrets dry-run for this organization this minute; retry later"
                        .into(),
                )
            })?;
        let now = Timestamp::now();
        let (mut count, mut first) = (0u64, Vec::new());
        // Two secrets of one token (the current one and one still in its
        // rotation grace) revoke it once: counted once, as the report would.
        let mut seen: std::collections::HashSet<TokenId> =
            std::collections::HashSet::with_capacity(well_formed.len());
        for presented in &well_formed {
            let Some(record) = self.live_token_of(presented, now).await? else {
                continue;
            };
            if authz::lookup_secret(&principal, &record) != Verdict::Allow
                || !seen.insert(record.id)
            {
                continue;
            }
            count += 1;
            if first.len() < DEFAULT_PAGE_SIZE {
                first.push(self.view(record).await?);
            }
        }
        let tally = Tally {
            received: secrets.len() as u64,
            accepted: well_formed.len() as u64,
            malformed,
        };
        tracing::info!(
            received = tally.received, accepted = tally.accepted, malformed, would_revoke = count,
            actor = %caller.actor_ref().label(), request_id = %caller.request_id,
            "leak report dry run"
        );
        Ok((tally, count, first))
    }

    /// Revokes the token whose secret `presented` is, for its holder;
    /// returns its id and revocation time. A revoked token's first
    /// revocation stands; an unusable secret is `Unauthenticated`.
    pub async fn revoke_self(
        &self,
        presented: &str,
        origin: HolderOrigin<'_>,
    ) -> Result<(TokenId, Timestamp), Error> {
        self.spend_intake(origin.peer, 1)?;
        let now = Timestamp::now();
        let record = match self.usable_token_of(presented, now).await? {
            Ok(record) => record,
            Err(Reason::Revoked) => {
                // Either the token is revoked (nothing to do) or only this
                // secret is, by rotation: its holder holds nothing live.
                if let Some(revoked) = self.revocation_of(presented).await? {
                    return Ok(revoked);
                }
                return Err(Error::unauthenticated(
                    "the secret has been replaced by rotation".into(),
                ));
            }
            Err(reason) => return Err(Error::unauthenticated(unusable_message(reason).into())),
        };
        let event = self.holder_event(Method::RevokeSelf, &record, now, origin)?;
        let outcome = self.revoke_record(&record, now, event).await?;
        tracing::info!(
            token_id = %record.id, org_id = %record.org_id,
            peer = origin.peer.map(tracing::field::display), request_id = %origin.request_id,
            "token revoked by its holder"
        );
        Ok((record.id, outcome.record.revoked_at.unwrap_or(now)))
    }

    pub(super) fn spend_intake(
        &self,
        peer: Option<SocketAddr>,
        secrets: usize,
    ) -> Result<(), Error> {
        spend(&self.leak_intake, peer, secrets)
    }

    /// Spends GitHub's own budget (see `TokenAuthority::signed_intake`).
    pub(super) fn spend_signed_intake(
        &self,
        peer: Option<SocketAddr>,
        matches: usize,
    ) -> Result<(), Error> {
        spend(&self.signed_intake, peer, matches)
    }

    /// The id and revocation time of the token `presented` names, if that
    /// token is revoked (not only this secret of it, by rotation).
    async fn revocation_of(&self, presented: &str) -> Result<Option<(TokenId, Timestamp)>, Error> {
        Ok(self
            .find_well_formed(presented)
            .await?
            .and_then(|(token, _)| Some((token.record.id, token.record.revoked_at?))))
    }

    /// The live token a well-formed secret names, if any.
    async fn live_token_of(
        &self,
        presented: &str,
        now: Timestamp,
    ) -> Result<Option<TokenRecord>, Error> {
        Ok(self.usable_token_of(presented, now).await?.ok())
    }

    /// The token `presented` names if that secret may be used at `now`,
    /// else why not.
    async fn usable_token_of(
        &self,
        presented: &str,
        now: Timestamp,
    ) -> Result<Result<TokenRecord, Reason>, Error> {
        if secret::parse(presented).is_none() {
            return Ok(Err(Reason::Malformed));
        }
        let Some((token, digest)) = self.find_well_formed(presented).await? else {
            return Ok(Err(Reason::NotFound));
        };
        let Some(secret) = token.record.secret_matching(&digest) else {
            return Ok(Err(Reason::NotFound));
        };
        Ok(match liveness(&token.record, secret, now) {
            Some(reason) => Err(reason),
            None => Ok(token.record.clone()),
        })
    }

    fn holder_event(
        &self,
        method: Method,
        record: &TokenRecord,
        now: Timestamp,
        origin: HolderOrigin<'_>,
    ) -> Result<AuditEvent, Error> {
        let id = EventId::generate(now).map_err(Error::internal("OS random source"))?;
        Ok(AuditEvent::by_holder(
            id,
            now,
            method,
            AuditAction::Revoked,
            record,
            &Origin {
                connection: origin.peer,
                reported: None,
            },
            origin.request_id,
        ))
    }
}

fn unusable_message(reason: Reason) -> &'static str {
    match reason {
        Reason::Malformed => "the token is malformed",
        Reason::Expired => "the token has expired",
        _ => "the token is not known",
    }
}

/// Spends `secrets` of `budget` for `peer`, or refuses the whole report.
fn spend(budget: &IntakeBudget, peer: Option<SocketAddr>, secrets: usize) -> Result<(), Error> {
    let secrets = u32::try_from(secrets).unwrap_or(u32::MAX);
    budget
        .take(peer, secrets, Timestamp::now())
        .map_err(|exhausted| Error::resource_exhausted(exhausted.message().into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        domain::{leaks::MAX_REPORTED_SECRETS, secret::Secret, token::TokenKind},
        service::fixture::{admin, fixture},
    };

    const ORIGIN: HolderOrigin<'static> = HolderOrigin {
        peer: None,
        request_id: "req-1",
    };

    #[tokio::test]
    async fn a_reported_secret_is_revoked_and_the_answer_is_counts_only() {
        let f = fixture();
        let (id, live) = f.issue("org-1", "ws-1", &["test_api:run"]).await;
        let stranger = Secret::generate(TokenKind::Service).unwrap();
        let source = LeakSource::new("github", "https://github.com/o/r").unwrap();
        let batch = vec![
            live.clone(),
            stranger.expose().to_owned(),
            "tksat_nope".to_owned(),
        ];
        let tally = f
            .authority
            .report_leaked(&batch, &source, ORIGIN)
            .await
            .unwrap();
        assert_eq!(
            tally,
            Tally {
                received: 3,
                accepted: 2,
                malformed: 1
            }
        );
        assert!(
            f.store
                .token_by_id(id)
                .await
                .unwrap()
                .unwrap()
                .revoked_at
                .is_some()
        );
        // Reporting it again changes nothing and answers alike.
        let again = f
            .authority
            .report_leaked(&batch, &source, ORIGIN)
            .await
            .unwrap();
        assert_eq!(again, tally);
    }

    #[tokio::test]
    async fn a_dry_run_counts_a_token_once_whichever_of_its_secrets_are_reported() {
        let f = fixture();
        let (id, old) = f.issue("org-1", "ws-1", &["test_api:run"]).await;
        // Rotated with a grace period: both secrets name the live token.
        let (_, new, _) = f
            .authority
            .rotate(&admin("org-1"), id, std::time::Duration::from_secs(3600))
            .await
            .unwrap();
        let batch = vec![old.clone(), new.expose().to_owned()];
        let (_, would_revoke, first) = f
            .authority
            .preview_leak_report(&admin("org-1"), &batch)
            .await
            .unwrap();
        let source = LeakSource::new("github", "").unwrap();
        f.authority
            .report_leaked(&batch, &source, ORIGIN)
            .await
            .unwrap();
        let revoked = f
            .audit("org-1")
            .await
            .iter()
            .filter(|e| e.method == Method::ReportLeakedSecrets)
            .count();
        assert_eq!(revoked, 1, "the report revokes the token once");
        assert_eq!(would_revoke, 1, "the dry run must say what the report does");
        assert_eq!(first.len(), 1);
    }

    /// ADMINs reach the dry run through the control plane, one peer for
    /// every organization: a budget by peer would let one organization's
    /// dry runs refuse every other organization's for the rest of the
    /// minute, so the budget is the organization's.
    #[tokio::test]
    async fn one_organizations_dry_runs_do_not_refuse_anothers() {
        let f = fixture();
        let (_, live) = f.issue("org-b", "ws-1", &["test_api:run"]).await;
        let batch: Vec<String> = (0..MAX_REPORTED_SECRETS)
            .map(|_| {
                Secret::generate(TokenKind::Service)
                    .unwrap()
                    .expose()
                    .to_owned()
            })
            .collect();
        let mut spent = 0;
        while f
            .authority
            .preview_leak_report(&admin("org-a"), &batch)
            .await
            .is_ok()
        {
            spent += 1;
            assert!(spent < 100, "never refused");
        }
        let other = f
            .authority
            .preview_leak_report(&admin("org-b"), std::slice::from_ref(&live))
            .await;
        assert!(
            other.is_ok(),
            "org-b's dry run was refused after {spent} of org-a's: {other:?}"
        );
    }

    #[tokio::test]
    async fn revoke_self_revokes_once_and_refuses_what_is_not_live() {
        let f = fixture();
        let (id, live) = f.issue("org-1", "ws-1", &["test_api:run"]).await;
        let (got, at) = f.authority.revoke_self(&live, ORIGIN).await.unwrap();
        assert_eq!(got, id);
        let (_, again) = f.authority.revoke_self(&live, ORIGIN).await.unwrap();
        assert_eq!(again, at, "the first revocation stands");
        let stranger = Secret::generate(TokenKind::Service).unwrap();
        for bad in [stranger.expose(), "garbage"] {
            assert!(matches!(
                f.authority.revoke_self(bad, ORIGIN).await,
                Err(Error::Domain(crate::domain::Error::Unauthenticated(_)))
            ));
        }
    }
}
