//! Leaked-secret intake: the rules for a report of secrets found where they
//! should not be (a ticket, a public repository, a CI log), which anyone may
//! send, since holding a secret is proof enough to have it revoked (as with
//! GitHub's public revocation API).
//!
//! Because the caller is unverified, everything here bounds what one report
//! and one network can cost before any lookup: a batch holds at most
//! [`MAX_REPORTED_SECRETS`]; every secret's shape and checksum is checked
//! (`secret::parse`) before it is looked up, and a malformed one is counted,
//! never kept or logged; and [`IntakeBudget`] spends a per-minute budget of
//! secrets per network (an IPv4 address or an IPv6 /64) and in total, so
//! that one flooding network spends its own share and cannot starve others
//! of theirs. What a report learns is counts only ([`Tally`]), never which
//! secret was live: the answer is no validity oracle.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::Mutex,
};

use super::{
    Error,
    refusals::{CAPACITY, network_of},
    secret,
    time::Timestamp,
    usage::minute_of,
};

/// Most secrets in one report.
pub const MAX_REPORTED_SECRETS: usize = 1000;
/// Most bytes of a report's `source` (who found it, e.g. "github").
pub const MAX_SOURCE_BYTES: usize = 64;
/// Most bytes of a report's `url` (where it was found).
pub const MAX_URL_BYTES: usize = 512;

/// Where a report says the secrets were found, validated: printable ASCII
/// without spaces, within [`MAX_SOURCE_BYTES`] and [`MAX_URL_BYTES`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LeakSource {
    pub source: String,
    pub url: String,
}

impl LeakSource {
    pub fn new(source: &str, url: &str) -> Result<Self, Error> {
        printable("source", source, MAX_SOURCE_BYTES)?;
        printable("url", url, MAX_URL_BYTES)?;
        Ok(Self {
            source: source.to_owned(),
            url: url.to_owned(),
        })
    }

    /// The audit detail of a token revoked on this report.
    pub fn detail(&self) -> String {
        let or_none = |text: &str| if text.is_empty() { "-" } else { text }.to_owned();
        format!(
            "reported leaked by {} at {}",
            or_none(&self.source),
            or_none(&self.url)
        )
    }
}

fn printable(field: &'static str, value: &str, max: usize) -> Result<(), Error> {
    if value.len() > max {
        return Err(Error::invalid(field, format!("is longer than {max} bytes")));
    }
    if value.bytes().any(|b| !b.is_ascii_graphic()) {
        return Err(Error::invalid(
            field,
            "only printable ASCII without spaces is allowed",
        ));
    }
    // Source and url are logged and kept in the audit log: a secret in them
    // (a url with `?t=tkpat_...`) would outlive its revocation there. Read
    // as a reader would recover it: percent-decoded, in any case.
    if crate::domain::secret::mentions_a_secret(&recoverable(value)) {
        return Err(Error::invalid(
            field,
            "must not carry a secret: report secrets in `secrets` only",
        ));
    }
    Ok(())
}

/// `text` percent-decoded until nothing changes (`%255F` is `%5F` is
/// `_`), lower-cased: what one could turn back into a secret.
fn recoverable(text: &str) -> String {
    let mut bytes = text.as_bytes().to_vec();
    loop {
        let mut decoded = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            let hex = |at: usize| bytes.get(at).and_then(|&b| char::from(b).to_digit(16));
            match (bytes[i], hex(i + 1), hex(i + 2)) {
                (b'%', Some(high), Some(low)) => {
                    // Two hex digits: at most 255.
                    decoded.push(u8::try_from(high * 16 + low).unwrap_or(u8::MAX));
                    i += 3;
                }
                (b, _, _) => {
                    decoded.push(b);
                    i += 1;
                }
            }
        }
        // Each round that changes something shortens the text: it ends.
        if decoded == bytes {
            return String::from_utf8_lossy(&bytes).to_ascii_lowercase();
        }
        bytes = decoded;
    }
}

/// A report's secrets, sorted before any lookup: the well-formed ones (each
/// once), and how many were malformed. Refuses an empty or oversized batch.
pub fn sort_reported<S: AsRef<str>>(secrets: &[S]) -> Result<(Vec<&str>, u64), Error> {
    if secrets.is_empty() {
        return Err(Error::invalid("secrets", "is required"));
    }
    if secrets.len() > MAX_REPORTED_SECRETS {
        return Err(Error::invalid(
            "secrets",
            format!("holds more than {MAX_REPORTED_SECRETS} secrets; split the report"),
        ));
    }
    let mut well_formed: Vec<&str> = Vec::with_capacity(secrets.len());
    let mut malformed = 0u64;
    for presented in secrets.iter().map(AsRef::as_ref) {
        if secret::parse(presented).is_some() {
            well_formed.push(presented);
        } else {
            malformed += 1;
        }
    }
    well_formed.sort_unstable();
    well_formed.dedup();
    Ok((well_formed, malformed))
}

/// What a report is told: counts, never which secret was live.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    /// Secrets in the report.
    pub received: u64,
    /// Well formed (prefix, length, alphabet and checksum), so looked up:
    /// each one that named a live token has revoked it.
    pub accepted: u64,
    /// Not one of our secrets; counted, never looked up nor logged.
    pub malformed: u64,
}

/// Secrets a report may have looked up, per minute.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IntakeLimits {
    /// By one network (an IPv4 address, an IPv6 /64).
    pub per_peer: u32,
    /// By everyone together.
    pub total: u32,
}

/// Which budget a report did not fit in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exhausted {
    Peer,
    Total,
}

impl Exhausted {
    pub fn message(self) -> &'static str {
        match self {
            Self::Peer => "too many secrets reported from this address this minute; retry later",
            Self::Total => "too many secrets reported this minute; retry later",
        }
    }
}

struct Minute<K> {
    start: Timestamp,
    by_payer: HashMap<K, u32>,
    /// Payers beyond [`CAPACITY`] share one count, so that a flood of
    /// addresses (or organizations) cannot grow memory.
    overflow: u32,
    total: u32,
}

/// The per-minute budgets of leak reports, per process (per replica), by
/// payer: a network (`Option<IpAddr>`, the default) for anonymous reports,
/// an organization for an ADMIN's dry runs.
pub struct IntakeBudget<K = Option<IpAddr>> {
    limits: IntakeLimits,
    minute: Mutex<Minute<K>>,
}

impl IntakeBudget {
    /// Spends `secrets` of `peer`'s network's budget and of the total at
    /// `now` (see [`IntakeBudget::take_for`]).
    pub fn take(
        &self,
        peer: Option<SocketAddr>,
        secrets: u32,
        now: Timestamp,
    ) -> Result<(), Exhausted> {
        self.take_for(peer.map(network_of), secrets, now)
    }
}

impl<K: std::hash::Hash + Eq> IntakeBudget<K> {
    pub fn new(limits: IntakeLimits) -> Self {
        Self {
            limits,
            minute: Mutex::new(Minute {
                start: Timestamp::from_micros(0),
                by_payer: HashMap::new(),
                overflow: 0,
                total: 0,
            }),
        }
    }

    /// Spends `secrets` of `payer`'s budget and of the total at `now`, or
    /// spends nothing and says which budget they do not fit in. A whole
    /// report fits or is refused: it is never half looked up.
    pub fn take_for(&self, payer: K, secrets: u32, now: Timestamp) -> Result<(), Exhausted> {
        let mut minute = self
            .minute
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let start = minute_of(now);
        if minute.start != start {
            minute.start = start;
            minute.by_payer.clear();
            minute.overflow = 0;
            minute.total = 0;
        }
        let tracked = minute.by_payer.contains_key(&payer) || minute.by_payer.len() < CAPACITY;
        let used = if tracked {
            minute.by_payer.get(&payer).copied().unwrap_or(0)
        } else {
            minute.overflow
        };
        if used.saturating_add(secrets) > self.limits.per_peer {
            return Err(Exhausted::Peer);
        }
        if minute.total.saturating_add(secrets) > self.limits.total {
            return Err(Exhausted::Total);
        }
        minute.total += secrets;
        if tracked {
            *minute.by_payer.entry(payer).or_insert(0) += secrets;
        } else {
            minute.overflow += secrets;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{secret::Secret, token::TokenKind};

    const NOW: Timestamp = Timestamp::from_micros(1_800_000_000_000_000);

    fn peer(text: &str) -> Option<SocketAddr> {
        Some(text.parse().unwrap())
    }

    #[test]
    fn a_batch_is_bounded_and_sorted_before_any_lookup() {
        let good = Secret::generate(TokenKind::Service).unwrap();
        let mut typo = good.expose().to_owned().into_bytes();
        typo[20] = if typo[20] == b'a' { b'b' } else { b'a' };
        let typo = String::from_utf8(typo).unwrap();
        let batch = vec![
            good.expose().to_owned(),
            good.expose().to_owned(),
            typo,
            "not a token".into(),
        ];
        let (well_formed, malformed) = sort_reported(&batch).unwrap();
        assert_eq!(well_formed, vec![good.expose()]);
        assert_eq!(malformed, 2);
        assert!(sort_reported::<String>(&[]).is_err());
        let oversized = vec![good.expose().to_owned(); MAX_REPORTED_SECRETS + 1];
        let Err(Error::InvalidArgument { field, .. }) = sort_reported(&oversized) else {
            panic!("an oversized batch must be refused");
        };
        assert_eq!(field, "secrets");
        assert!(sort_reported(&oversized[1..]).is_ok());
    }

    #[test]
    fn source_and_url_are_bounded_printable_text() {
        assert!(LeakSource::new("github", "https://github.com/o/r/blob/x").is_ok());
        assert!(LeakSource::new("", "").is_ok());
        assert!(LeakSource::new("git hub", "").is_err());
        assert!(LeakSource::new("github", "https://e.x/\n").is_err());
        assert!(LeakSource::new(&"s".repeat(MAX_SOURCE_BYTES + 1), "").is_err());
        assert!(LeakSource::new("", &"u".repeat(MAX_URL_BYTES + 1)).is_err());
        let secret = Secret::generate(TokenKind::Personal).unwrap();
        let url = format!("https://ci.example/log?t={}", secret.expose());
        assert!(LeakSource::new("ci", &url).is_err());
        assert!(LeakSource::new("tksat_", "").is_err());
        // Nor one a reader recovers by decoding the url or fixing its case.
        let body = secret.expose().strip_prefix("tkpat_").unwrap();
        for disguised in [
            format!("https://ci.example/log?t=tkpat%5F{body}"),
            format!("https://ci.example/log?t=tkpat%255f{body}"),
            format!("https://ci.example/log?t=%74kpat_{body}"),
            format!("https://ci.example/log?t=TKPAT_{body}"),
        ] {
            assert!(LeakSource::new("ci", &disguised).is_err(), "{disguised}");
        }
        assert!(LeakSource::new("ci", "https://e.x/a%20b%zz%").is_ok());
        assert_eq!(
            LeakSource::new("github", "").unwrap().detail(),
            "reported leaked by github at -"
        );
    }

    #[test]
    fn one_flooding_network_spends_its_own_budget_not_anothers() {
        let budget = IntakeBudget::new(IntakeLimits {
            per_peer: 10,
            total: 25,
        });
        let flooder = peer("203.0.113.7:1000");
        assert_eq!(budget.take(flooder, 10, NOW), Ok(()));
        assert_eq!(budget.take(flooder, 1, NOW), Err(Exhausted::Peer));
        // Another port, or another address of the same IPv6 /64, is the same network.
        assert_eq!(
            budget.take(peer("203.0.113.7:2000"), 1, NOW),
            Err(Exhausted::Peer)
        );
        assert_eq!(budget.take(peer("[2001:db8::1]:1"), 10, NOW), Ok(()));
        assert_eq!(
            budget.take(peer("[2001:db8::2]:1"), 1, NOW),
            Err(Exhausted::Peer)
        );
        // Another network still has its share, until the total is spent;
        // a refused report spends nothing.
        assert_eq!(
            budget.take(peer("198.51.100.1:1"), 6, NOW),
            Err(Exhausted::Total)
        );
        assert_eq!(budget.take(peer("198.51.100.1:1"), 5, NOW), Ok(()));
        assert_eq!(
            budget.take(peer("198.51.100.2:1"), 1, NOW),
            Err(Exhausted::Total)
        );
        // A new minute, new budgets.
        let later = Timestamp::from_micros(NOW.as_micros() + 60_000_000);
        assert_eq!(budget.take(flooder, 10, later), Ok(()));
    }

    #[test]
    fn past_capacity_newcomers_share_one_budget() {
        let budget = IntakeBudget::new(IntakeLimits {
            per_peer: 2,
            total: u32::MAX,
        });
        for i in 0..CAPACITY as u32 {
            let ip = std::net::Ipv4Addr::from(0x0a00_0000 + i);
            assert_eq!(
                budget.take(Some(SocketAddr::new(ip.into(), 1)), 1, NOW),
                Ok(())
            );
        }
        assert_eq!(budget.take(peer("192.0.2.1:1"), 2, NOW), Ok(()));
        assert_eq!(
            budget.take(peer("192.0.2.2:1"), 1, NOW),
            Err(Exhausted::Peer)
        );
        // Those tracked keep their own.
        assert_eq!(budget.take(peer("10.0.0.0:1"), 1, NOW), Ok(()));
    }
}
