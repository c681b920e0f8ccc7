//! The client addresses a token was used from, for forensics: the last
//! [`KEPT`] distinct ones, each with when it was last seen, newest first.
//! An address is an IP literal and nothing else (no port, no name), so
//! that what a caller reports is bounded and means one thing.

use std::net::IpAddr;

use super::{Error, time::Timestamp};

/// Distinct addresses kept per token: enough to tell "one CI runner" from
/// "suddenly somewhere else", few enough that a flood of addresses costs a
/// token a few dozen bytes, whatever its size.
pub const KEPT: usize = 5;

/// Longest address text accepted: an IPv6 literal with an embedded IPv4
/// (`ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255`) is 45 bytes.
pub const MAX_ADDRESS_BYTES: usize = 45;

/// Most tokens whose client addresses a replica holds in memory until
/// they are written, by default (`usage.max_pending_client_addresses`):
/// ~25 MB at ~250 bytes each; past it a Check's address is dropped (and
/// counted), never waited for.
pub const DEFAULT_MAX_PENDING_TOKENS: usize = 100_000;

/// One address and when a Check last came from it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientAddress {
    pub address: IpAddr,
    pub last_seen_at: Timestamp,
}

/// A token's latest distinct client addresses, newest first, at most
/// [`KEPT`] of them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecentAddresses {
    entries: Vec<ClientAddress>,
}

impl RecentAddresses {
    /// The addresses, newest first.
    pub fn entries(&self) -> &[ClientAddress] {
        &self.entries
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Notes a Check from `address` at `at`. A known address moves to its
    /// latest time; a new one enters, and the one seen longest ago leaves
    /// when more than [`KEPT`] are known.
    pub fn touch(&mut self, address: IpAddr, at: Timestamp) {
        // `::ffff:a.b.c.d` is the IPv4 client of a dual-stack listener:
        // one client, one entry.
        let address = address.to_canonical();
        match self.entries.iter_mut().find(|e| e.address == address) {
            Some(entry) => entry.last_seen_at = entry.last_seen_at.max(at),
            // In front, so that among addresses seen at the same instant the
            // one noted last stays when one must leave.
            None => self.entries.insert(
                0,
                ClientAddress {
                    address,
                    last_seen_at: at,
                },
            ),
        }
        self.entries
            .sort_by_key(|e| std::cmp::Reverse(e.last_seen_at));
        self.entries.truncate(KEPT);
    }

    /// Adds what `other` saw, as if each of its entries were touched here.
    pub fn merge(&mut self, other: &Self) {
        // Oldest first, so that ties keep `other`'s order.
        for entry in other.entries.iter().rev() {
            self.touch(entry.address, entry.last_seen_at);
        }
    }

    /// The addresses in `entries`, normalised: distinct, newest first, at
    /// most [`KEPT`].
    pub fn from_entries(entries: impl IntoIterator<Item = ClientAddress>) -> Self {
        let mut addresses = Self::default();
        let mut entries: Vec<ClientAddress> = entries.into_iter().collect();
        entries.reverse();
        for entry in entries {
            addresses.touch(entry.address, entry.last_seen_at);
        }
        addresses
    }
}

/// The address a caller reported, if any: empty is "not given"; anything
/// else must be an IPv4 or IPv6 literal.
pub fn parse_reported(field: &'static str, text: &str) -> Result<Option<IpAddr>, Error> {
    if text.is_empty() {
        return Ok(None);
    }
    if text.len() > MAX_ADDRESS_BYTES {
        return Err(Error::invalid(
            field,
            format!("is longer than {MAX_ADDRESS_BYTES} bytes"),
        ));
    }
    text.parse::<IpAddr>()
        .map(|address| Some(address.to_canonical()))
        .map_err(|_| {
            Error::invalid(
                field,
                "is not an IPv4 or IPv6 address (no port, brackets or zone)",
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_micros(secs * 1_000_000)
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn listed(addresses: &RecentAddresses) -> Vec<(String, i64)> {
        addresses
            .entries()
            .iter()
            .map(|e| {
                (
                    e.address.to_string(),
                    e.last_seen_at.as_micros() / 1_000_000,
                )
            })
            .collect()
    }

    #[test]
    fn keeps_the_latest_distinct_addresses_newest_first() {
        let mut addresses = RecentAddresses::default();
        for n in 0..20 {
            addresses.touch(ip(&format!("10.0.0.{n}")), at(n));
        }
        // Seen again: moves to the front, not a second entry.
        addresses.touch(ip("10.0.0.17"), at(30));
        assert_eq!(
            listed(&addresses),
            vec![
                ("10.0.0.17".into(), 30),
                ("10.0.0.19".into(), 19),
                ("10.0.0.18".into(), 18),
                ("10.0.0.16".into(), 16),
                ("10.0.0.15".into(), 15),
            ]
        );
        // An older sighting moves nothing back.
        addresses.touch(ip("10.0.0.17"), at(1));
        assert_eq!(listed(&addresses)[0], ("10.0.0.17".into(), 30));
        // Nor does an address seen before everything kept get in.
        addresses.touch(ip("10.9.9.9"), at(2));
        assert!(!listed(&addresses).iter().any(|(a, _)| a == "10.9.9.9"));
    }

    #[test]
    fn an_ipv4_mapped_address_is_its_ipv4_client() {
        let mut addresses = RecentAddresses::default();
        addresses.touch(ip("::ffff:192.0.2.7"), at(1));
        addresses.touch(ip("192.0.2.7"), at(2));
        assert_eq!(listed(&addresses), vec![("192.0.2.7".into(), 2)]);
    }

    #[test]
    fn merging_is_touching_each_entry() {
        let mut stored = RecentAddresses::default();
        stored.touch(ip("192.0.2.1"), at(5));
        stored.touch(ip("192.0.2.2"), at(6));
        let mut pending = RecentAddresses::default();
        pending.touch(ip("192.0.2.1"), at(9));
        pending.touch(ip("2001:db8::1"), at(8));
        stored.merge(&pending);
        assert_eq!(
            listed(&stored),
            vec![
                ("192.0.2.1".into(), 9),
                ("2001:db8::1".into(), 8),
                ("192.0.2.2".into(), 6),
            ]
        );
        assert_eq!(
            RecentAddresses::from_entries(stored.entries().to_vec()),
            stored
        );
    }

    #[test]
    fn a_reported_address_is_an_ip_literal_and_bounded() {
        assert_eq!(parse_reported("client_address", "").unwrap(), None);
        assert_eq!(
            parse_reported("client_address", "203.0.113.9").unwrap(),
            Some(ip("203.0.113.9"))
        );
        assert_eq!(
            parse_reported("client_address", "::ffff:203.0.113.9").unwrap(),
            Some(ip("203.0.113.9"))
        );
        let longest = "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255";
        assert_eq!(longest.len(), MAX_ADDRESS_BYTES);
        assert!(parse_reported("client_address", longest).unwrap().is_some());
        for bad in [
            "203.0.113.9:443",
            "[2001:db8::1]",
            "fe80::1%eth0",
            "example.com",
            "203.0.113",
            " 203.0.113.9",
        ] {
            let error = parse_reported("client_address", bad).unwrap_err();
            assert!(
                error
                    .to_string()
                    .starts_with("client_address: is not an IPv4"),
                "{bad}: {error}"
            );
        }
        let long = "1".repeat(10_000);
        let error = parse_reported("client_address", &long).unwrap_err();
        assert_eq!(error.to_string(), "client_address: is longer than 45 bytes");
    }
}
