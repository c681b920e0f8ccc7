//! GitHub's secret-scanning reports, once their signature is verified (the
//! HTTP face, `api::secret_scanning`, does that): the same intake as
//! ReportLeakedSecrets (`leaks::sort_reported`, each secret revoked by
//! [`TokenAuthority::revoke_leaked`]) but a budget of its own (an anonymous
//! flood must not silence GitHub's reports), answered per match,
//! since only GitHub, which holds the secrets anyway, can sign a report.

use std::collections::HashMap;

use super::{
    authority::TokenAuthority,
    error::Error,
    leaks::{HolderOrigin, Leaked},
};
use crate::domain::{
    leaks::{LeakSource, sort_reported},
    secret_scanning::{Label, Labelled, ReportedMatch, SOURCE},
    time::Timestamp,
};

impl TokenAuthority {
    /// Revokes every live token the matches name, and labels each match:
    /// `true_positive` when its token is now revoked. Refuses the whole
    /// report, before any lookup, when it is over GitHub's budget.
    pub async fn answer_secret_scanning(
        &self,
        matches: &[ReportedMatch],
        origin: HolderOrigin<'_>,
    ) -> Result<Vec<Labelled>, Error> {
        let tokens: Vec<&str> = matches.iter().map(|m| m.token.as_str()).collect();
        let (well_formed, malformed) = sort_reported(&tokens)?;
        self.spend_signed_intake(origin.peer, tokens.len())?;
        // The url a secret is audited with: that of its first match.
        let mut url_of: HashMap<&str, &str> = HashMap::with_capacity(matches.len());
        for reported in matches {
            url_of
                .entry(reported.token.as_str())
                .or_insert(reported.url.as_str());
        }
        let now = Timestamp::now();
        let mut revoked_now = 0u64;
        let mut label_of: HashMap<&str, Label> = HashMap::with_capacity(well_formed.len());
        for presented in well_formed {
            let url = url_of.get(presented).copied().unwrap_or_default();
            // A url the audit log cannot keep (too long, or carrying a
            // secret) is left out rather than the report refused.
            let source = LeakSource::new(SOURCE, url)
                .or_else(|_| LeakSource::new(SOURCE, ""))
                .map_err(Error::Domain)?;
            let label = match self.revoke_leaked(presented, &source, origin, now).await? {
                Leaked::Revoked => {
                    revoked_now += 1;
                    Label::TruePositive
                }
                Leaked::AlreadyRevoked => Label::TruePositive,
                Leaked::NotLive => Label::FalsePositive,
            };
            label_of.insert(presented, label);
        }
        tracing::info!(
            received = matches.len(), malformed, revoked = revoked_now,
            peer = origin.peer.map(tracing::field::display), request_id = %origin.request_id,
            "GitHub secret-scanning report answered"
        );
        Ok(matches
            .iter()
            .map(|reported| {
                let label = label_of
                    .get(reported.token.as_str())
                    .copied()
                    .unwrap_or(Label::FalsePositive);
                Labelled::new(reported, label)
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        domain::{secret::Secret, token::TokenKind},
        service::fixture::fixture,
    };

    const ORIGIN: HolderOrigin<'static> = HolderOrigin {
        peer: None,
        request_id: "req-1",
    };

    fn reported(token: &str, url: &str) -> ReportedMatch {
        ReportedMatch {
            token: token.to_owned(),
            token_type: "tokenauth_service_token".into(),
            url: url.to_owned(),
            source: "content".into(),
        }
    }

    fn labels(answer: &[Labelled]) -> Vec<&'static str> {
        answer.iter().map(|l| l.label).collect()
    }

    #[tokio::test]
    async fn each_match_is_labelled_and_a_resent_report_is_answered_alike() {
        let f = fixture();
        let (id, live) = f.issue("org-1", "ws-1", &["test_api:run"]).await;
        let stranger = Secret::generate(TokenKind::Service).unwrap();
        let long_url = format!("https://github.com/o/r/{}", "p".repeat(1000));
        let report = vec![
            reported(&live, &long_url),
            reported(stranger.expose(), ""),
            reported("tksat_garbage", ""),
            reported(&live, "https://github.com/o/r/2"),
        ];
        let answer = f
            .authority
            .answer_secret_scanning(&report, ORIGIN)
            .await
            .unwrap();
        assert_eq!(
            labels(&answer),
            [
                "true_positive",
                "false_positive",
                "false_positive",
                "true_positive"
            ]
        );
        assert_eq!(
            answer[0].token_hash,
            crate::domain::secret_scanning::token_hash(&live)
        );
        let record = f.store.token_by_id(id).await.unwrap().unwrap();
        assert!(record.revoked_at.is_some());
        let again = f
            .authority
            .answer_secret_scanning(&report, ORIGIN)
            .await
            .unwrap();
        assert_eq!(again, answer);
        let after = f.store.token_by_id(id).await.unwrap().unwrap();
        assert_eq!(
            after.revoked_at, record.revoked_at,
            "the first revocation stands"
        );
    }
}
