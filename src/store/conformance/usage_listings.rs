//! Usage listings of many tenants, for comparing stores with each other:
//! sled reads its rows bucket by bucket where the memory store keeps
//! indexes, and `tokenauth migrate` copies sled's rows into PostgreSQL;
//! each must list what the other lists.

use crate::domain::{
    ids::TokenId,
    time::Timestamp,
    token::Reason,
    usage::{Resolution, UsageQuery, UsageRecord},
};
use crate::store::{Store, UsagePage};

const MINUTE: i64 = 60_000_000;
const ORGS: [&str; 3] = ["a", "ab", "b"];
const TOKENS: u8 = 6;

/// Rows of every resolution spread over three days, of tokens in three
/// organizations whose names share a beginning, several in one bucket,
/// with two permissions (one the other's beginning) and two decisions.
pub fn usage_of_many_tenants() -> Vec<UsageRecord> {
    let mut seed = 7u64;
    let mut next = |n: u64| {
        seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        (seed >> 33) % n
    };
    (0..600)
        .map(|_| {
            let token = next(u64::from(TOKENS)) as u8;
            let resolution =
                [Resolution::Minute, Resolution::Hour, Resolution::Day][next(3) as usize];
            let step = match resolution {
                Resolution::Minute => MINUTE,
                Resolution::Hour => 60 * MINUTE,
                Resolution::Day => 24 * 60 * MINUTE,
            };
            let minute = next(3 * 24 * 60) as i64 * MINUTE;
            UsageRecord {
                org_id: ORGS[usize::from(token) % ORGS.len()].into(),
                token_id: TokenId::from_bytes([token; 16]),
                permission: ["p:x", "p:xy"][next(2) as usize].into(),
                decision: [Reason::Ok, Reason::Revoked][next(2) as usize],
                minute: Timestamp::from_micros(minute / step * step),
                resolution,
                count: 1 + next(5),
            }
        })
        .collect()
}

/// Every page of every listing of [`usage_of_many_tenants`]' organizations
/// and of each of their tokens, over three ranges, at three page sizes.
pub async fn every_usage_listing(store: &dyn Store) -> Vec<(UsageQuery, usize, Vec<UsagePage>)> {
    let mut listings = Vec::new();
    for (o, org) in ORGS.into_iter().enumerate() {
        let tokens = (0..TOKENS)
            .filter(|t| usize::from(*t) % ORGS.len() == o)
            .map(|t| Some(TokenId::from_bytes([t; 16])));
        for token_id in std::iter::once(None).chain(tokens) {
            for (start, end) in [(None, None), (Some(90), Some(2_000)), (Some(1_440), None)] {
                let query = UsageQuery {
                    org_id: org.into(),
                    token_id,
                    start: start.map(|m| Timestamp::from_micros(m * MINUTE)),
                    end: end.map(|m| Timestamp::from_micros(m * MINUTE)),
                };
                for limit in [1, 7, 1_000] {
                    let mut pages = Vec::new();
                    let mut after = None;
                    loop {
                        let page = store
                            .list_usage(&query, after.as_deref(), limit)
                            .await
                            .unwrap();
                        after.clone_from(&page.next);
                        pages.push(page);
                        if after.is_none() {
                            break;
                        }
                    }
                    listings.push((query.clone(), limit, pages));
                }
            }
        }
    }
    listings
}
