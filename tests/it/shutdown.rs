//! SIGTERM mid-load: the child drains, writes what it buffered, exits 0, and
//! nothing it acknowledged is lost.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use tokenauth::proto::{CheckRequest, GetTokenRequest};

use crate::{
    child::ChildSetup,
    harness::{admin, service_token},
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_load_loses_nothing_acknowledged() {
    let setup = ChildSetup::new("[usage]\nflush_interval = \"1h\"\n");
    let server = setup.start("info").await;
    let acknowledged: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..4)
        .map(|_| {
            let (mut tokens, acknowledged, stop) = (
                server.tokens(&setup.control_plane),
                Arc::clone(&acknowledged),
                Arc::clone(&stop),
            );
            tokio::spawn(async move {
                while !stop.load(Ordering::SeqCst) {
                    // Calls cut off by the shutdown fail; only acknowledged ones count.
                    match tokens
                        .issue_token(service_token("org-1", &["scim:read"]))
                        .await
                    {
                        Ok(response) => {
                            let response = response.into_inner();
                            let id = response.token.unwrap().id;
                            acknowledged.lock().unwrap().push((id, response.secret));
                        }
                        Err(_) => break,
                    }
                }
            })
        })
        .collect();
    // Let some acknowledgements accumulate, use the first token once, then stop the child.
    while acknowledged.lock().unwrap().len() < 20 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (used_id, used_secret) = acknowledged.lock().unwrap()[0].clone();
    let used = server
        .check()
        .check(CheckRequest {
            token: used_secret,
            permission: "scim:read".into(),
            org_id: "org-1".into(),
            workspace_id: String::new(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(used.allowed);
    server.signal("TERM");
    let exit = server.wait().await;
    stop.store(true, Ordering::SeqCst);
    for writer in writers {
        writer.await.unwrap();
    }
    assert_eq!(exit, Some(0), "a SIGTERM'd server exits 0");

    let restarted = setup.start("info").await;
    let acknowledged = acknowledged.lock().unwrap().clone();
    assert!(acknowledged.len() >= 20);
    let mut checks = restarted.check();
    for (id, secret) in &acknowledged {
        let response = checks
            .check(CheckRequest {
                token: secret.clone(),
                permission: "scim:read".into(),
                org_id: "org-1".into(),
                workspace_id: String::new(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert!(response.allowed, "acknowledged token {id} was lost");
    }
    // The last-use buffer (an hour's interval) was written at shutdown.
    let token = restarted
        .tokens(&setup.control_plane)
        .get_token(GetTokenRequest {
            id: used_id,
            actor: admin("org-1"),
        })
        .await
        .unwrap()
        .into_inner()
        .token
        .unwrap();
    assert!(token.last_used_at.is_some());
    restarted.signal("TERM");
    assert_eq!(restarted.wait().await, Some(0));
}
