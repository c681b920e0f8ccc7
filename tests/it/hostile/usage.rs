//! A hostile tenant against usage upkeep: one organization's many busy
//! tokens, rolled up as they age, must neither take another organization's
//! usage with them nor keep Check from being answered while they roll up.

use std::{sync::Arc, time::Duration};

use tokenauth::{
    domain::{
        ids::TokenId,
        time::Timestamp,
        token::Reason as DomainReason,
        usage::{Resolution, UsageRecord},
    },
    proto::{ListTokenUsageRequest, ListTokenUsageResponse, UsageResolution},
    store::Store,
};
use tokio::time::Instant;

use crate::harness::{TestServer, admin, check, id_of, issue, workspace_token};

const GIVE_UP: Duration = Duration::from_secs(120);
const MINUTE: i64 = 60_000_000;
const HOUR: i64 = 60 * MINUTE;

/// The busy organization's tokens and minutes of old usage.
const BUSY_TOKENS: u16 = 400;
const BUSY_MINUTES: i64 = 60;

fn at(micros: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: micros.div_euclid(1_000_000),
        nanos: 0,
    }
}

async fn page(server: &TestServer, org: &str, start: i64, size: i32) -> ListTokenUsageResponse {
    server
        .tokens()
        .list_token_usage(ListTokenUsageRequest {
            org_id: org.into(),
            actor: admin(org),
            start_time: Some(at(start)),
            page_size: size,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
}

/// Every record of `org` from `start` on: (resolution, count) summed up,
/// and the response's resolution.
async fn totals(server: &TestServer, org: &str, start: i64) -> (Vec<(i32, u64)>, i32) {
    let mut sums: Vec<(i32, u64)> = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = server
            .tokens()
            .list_token_usage(ListTokenUsageRequest {
                org_id: org.into(),
                actor: admin(org),
                start_time: Some(at(start)),
                page_size: 1000,
                page_token: page_token.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        for record in &page.records {
            match sums.iter_mut().find(|(r, _)| *r == record.resolution) {
                Some((_, sum)) => *sum += record.count,
                None => sums.push((record.resolution, record.count)),
            }
        }
        if page.next_page_token.is_empty() {
            sums.sort_unstable();
            return (sums, page.resolution);
        }
        page_token = page.next_page_token;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_organizations_roll_up_loses_no_other_usage_and_check_keeps_answering() {
    let mut real: Option<Arc<dyn Store>> = None;
    let server = TestServer::start_wrapped(
        |config| {
            config.usage.flush_interval = Duration::from_millis(100);
            config.usage.upkeep_interval = Duration::from_millis(100);
            config.usage.upkeep_batch = 50;
        },
        |store| {
            real = Some(Arc::clone(&store));
            store
        },
    )
    .await;
    let store = real.unwrap();
    let quiet = issue(
        &server,
        workspace_token("org-quiet", "ws-1", &["test_api:run"]),
    )
    .await;
    let quiet_id = TokenId::parse(&id_of(&quiet)).unwrap();

    // Three days ago, a whole hour: the quiet organization's one token used
    // once a minute, the busy one's tokens as often, each a row of its own.
    let now = Timestamp::now().as_micros();
    let old_hour = (now - 72 * HOUR).div_euclid(HOUR) * HOUR;
    let row = |org: &str, token: TokenId, minute: i64| UsageRecord {
        org_id: org.into(),
        token_id: token,
        permission: "test_api:run".into(),
        decision: DomainReason::Ok,
        minute: Timestamp::from_micros(old_hour + minute * MINUTE),
        resolution: Resolution::Minute,
        count: 1,
    };
    let quiet_rows: Vec<_> = (0..BUSY_MINUTES)
        .map(|m| row("org-quiet", quiet_id, m))
        .collect();
    store.record_usage(&quiet_rows).await.unwrap();
    // Minute after minute, as the recorder writes them: the quiet
    // organization's rows lie among the busy one's in time.
    for minute in 0..BUSY_MINUTES {
        let busy: Vec<_> = (0..BUSY_TOKENS)
            .map(|t| {
                let mut id = [9u8; 16];
                id[..2].copy_from_slice(&t.to_be_bytes());
                row("org-busy", TokenId::from_bytes(id), minute)
            })
            .collect();
        store.record_usage(&busy).await.unwrap();
    }
    let busy_total = u64::from(BUSY_TOKENS) * BUSY_MINUTES as u64;

    // Check the quiet token all along, and watch the busy rows roll up.
    let started = Instant::now();
    let (mut checks, mut checks_mid_roll_up) = (0u64, 0u64);
    loop {
        assert!(
            check(&server, &quiet.secret, "test_api:run", "org-quiet", "ws-1")
                .await
                .allowed
        );
        checks += 1;
        let oldest = page(&server, "org-busy", old_hour, 1).await;
        let latest = page(
            &server,
            "org-busy",
            old_hour + (BUSY_MINUTES - 1) * MINUTE,
            1,
        )
        .await;
        // The oldest row is an hour row once the roll-up began; no minute
        // row is left of the last minute once it ended.
        let began = oldest.records[0].resolution == UsageResolution::Hour as i32;
        let ended = latest.records.is_empty();
        match (began, ended) {
            (true, true) => break,
            (true, false) => checks_mid_roll_up += 1,
            _ => {}
        }
        assert!(started.elapsed() < GIVE_UP, "the roll-up never finished");
    }
    assert!(
        checks_mid_roll_up > 0,
        "Checks were answered while the busy organization's rows rolled up ({checks} in all)"
    );

    // Every count of both organizations, once, by the hour for the old
    // hour; the quiet one's Checks of today by the minute.
    let from = old_hour - HOUR;
    let (busy, resolution) = totals(&server, "org-busy", from).await;
    assert_eq!(busy, vec![(UsageResolution::Hour as i32, busy_total)]);
    assert_eq!(resolution, UsageResolution::Hour as i32);
    let started = Instant::now();
    loop {
        let (quiet_usage, _) = totals(&server, "org-quiet", from).await;
        let expected = vec![
            (UsageResolution::Minute as i32, checks),
            (UsageResolution::Hour as i32, BUSY_MINUTES as u64),
        ];
        if quiet_usage == expected {
            break;
        }
        // Today's Checks reach the store at the next flush.
        assert!(
            started.elapsed() < GIVE_UP,
            "the quiet organization's usage: {quiet_usage:?}, expected {expected:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
