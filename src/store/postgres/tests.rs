use std::time::Duration;

use super::{
    connect::{KEEPALIVE_IDLE, KEEPALIVE_INTERVAL, KEEPALIVE_RETRIES, TCP_USER_TIMEOUT},
    *,
};

#[test]
fn every_connection_notices_a_dead_peer_within_seconds() {
    let settings = PostgresSettings {
        url: "postgres://u@db/t?keepalives_idle=7200&sslmode=disable".into(),
        password: None,
        ca_pem: None,
        pool_size: 1,
        connect_timeout: Duration::from_secs(1),
        feed: FeedTiming {
            poll_interval: Duration::from_millis(200),
            max_staleness: Duration::from_millis(700),
            retention: Duration::from_secs(3600),
        },
    };
    let (config, _) = connection_config(&settings).unwrap();
    assert!(config.get_keepalives());
    assert_eq!(config.get_keepalives_idle(), KEEPALIVE_IDLE);
    assert_eq!(config.get_keepalives_interval(), Some(KEEPALIVE_INTERVAL));
    assert_eq!(config.get_keepalives_retries(), Some(KEEPALIVE_RETRIES));
    assert_eq!(config.get_tcp_user_timeout(), Some(&TCP_USER_TIMEOUT));
}
