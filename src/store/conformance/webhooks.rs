//! The webhook progress contract: a cursor that never moves back, parked
//! deliveries kept in feed order within their bound (the oldest dropped,
//! and counted), requeued and settled by event id.

use crate::domain::{feed::FeedCursor, ids::EventId, time::Timestamp, webhook::FailedDelivery};
use crate::store::Store;

fn parked(n: u64) -> FailedDelivery {
    FailedDelivery {
        event_id: EventId::first_at(Timestamp::from_micros(
            1_700_000_000_000_000 + n as i64 * 1000,
        )),
        cursor: FeedCursor { major: n, minor: n },
        event_type: "token.issued".into(),
        payload: format!(r#"{{"n":{n}}}"#).into_bytes(),
        attempts: 3,
        first_attempt: Timestamp::from_micros(1),
        last_attempt: Timestamp::from_micros(2),
        last_error: "answered HTTP 500".into(),
        queued: false,
    }
}

pub async fn webhook_progress_keeps_its_cursor_and_a_bounded_list(store: &dyn Store) {
    let name = "conformance-hook";
    assert_eq!(store.webhook_cursor(name).await.unwrap(), None);
    let at = |n| FeedCursor { major: n, minor: n };
    assert_eq!(
        store.advance_webhook(name, at(2), None, 2).await.unwrap(),
        0
    );
    // Never back.
    store.advance_webhook(name, at(1), None, 2).await.unwrap();
    assert_eq!(store.webhook_cursor(name).await.unwrap(), Some(at(2)));
    for n in 3..=5 {
        let dropped = store
            .advance_webhook(name, at(n), Some(&parked(n)), 2)
            .await
            .unwrap();
        assert_eq!(dropped, u64::from(n == 5));
    }
    assert_eq!(store.webhook_cursor(name).await.unwrap(), Some(at(5)));
    // Parked again (a replica that took the lease over repeats the last
    // delivery): it takes no new place, so nothing else is dropped.
    assert_eq!(
        store
            .advance_webhook(name, at(5), Some(&parked(5)), 2)
            .await
            .unwrap(),
        0
    );
    let listed = store.failed_deliveries(name, 10).await.unwrap();
    assert_eq!(listed.deliveries, vec![parked(4), parked(5)]);
    assert_eq!(listed.dropped, 1);
    assert_eq!(
        store
            .failed_deliveries("conformance-other", 10)
            .await
            .unwrap(),
        Default::default()
    );

    let five = parked(5).event_id;
    assert_eq!(store.requeue_failed(name, Some(&[five])).await.unwrap(), 1);
    assert_eq!(store.requeue_failed(name, Some(&[five])).await.unwrap(), 0);
    let listed = store.failed_deliveries(name, 10).await.unwrap().deliveries;
    assert!(!listed[0].queued && listed[1].queued);
    assert_eq!(store.requeue_failed(name, None).await.unwrap(), 1);

    // A redelivery that failed again stays, one that succeeded goes.
    let again = FailedDelivery {
        attempts: 9,
        queued: false,
        ..parked(4)
    };
    store
        .settle_failed(name, at(4), Some(&again))
        .await
        .unwrap();
    store.settle_failed(name, at(5), None).await.unwrap();
    let listed = store.failed_deliveries(name, 10).await.unwrap();
    assert_eq!(listed.deliveries, vec![again]);
    assert_eq!(
        store.failed_deliveries(name, 0).await.unwrap().deliveries,
        vec![]
    );
}
