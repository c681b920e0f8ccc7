//! What each of tokenauth's transport settings costs on its own: the plain
//! floor against the floor with one setting added (`floor_server::Settings`:
//! HTTP/2 keepalive, the per-call timeout, the size and stream limits, load
//! shedding with the concurrency limit, and all four), native Checks, in
//! interleaved rounds as in the gRPC scenario. Neither server runs any of
//! tokenauth's code, so a ratio here is the setting's price in tonic and
//! hyper; what tokenauth spends beyond the "all" floor is its own
//! (connection tracking, the request context, the handler, the store).

use std::sync::Arc;

use tokenauth::proto::{CheckRequest, check_service_client::CheckServiceClient};

use super::{
    Window, floor_server::Settings, load::connect, load_average, measure, median, start_floor,
};

pub async fn run(runs: usize, seconds: u64) {
    let plain = start_floor("").await;
    let plain_channel = connect(plain.addr, 1).await;
    let request = Arc::new(CheckRequest {
        token: "tka_floor_settings_not_checked".into(),
        permission: "test_api:run".into(),
        org_id: "org-bench".into(),
        workspace_id: "ws-1".into(),
        ..CheckRequest::default()
    });
    println!(
        "## The floor with tokenauth's transport settings, one at a time ({runs} rounds of {seconds} s per window; medians; native Check)\n"
    );
    println!("Load average before: {}\n", load_average());
    println!(
        "| floor with | in flight | plain: server CPU µs/call | with it: server CPU µs/call | CPU per call, with / plain | calls/s, with / plain |"
    );
    println!("|---|---|---|---|---|---|");
    for name in Settings::NAMES {
        let with = start_floor(name).await;
        let with_channel = connect(with.addr, 1).await;
        for in_flight in [1usize, 16] {
            let (mut plains, mut withs): (Vec<Window>, Vec<Window>) = (Vec::new(), Vec::new());
            for round in 0..runs {
                // Alternate which goes first, so that a drift in the
                // machine's load weighs on both alike.
                let order = if round % 2 == 0 {
                    [
                        (&plain, &plain_channel, true),
                        (&with, &with_channel, false),
                    ]
                } else {
                    [
                        (&with, &with_channel, false),
                        (&plain, &plain_channel, true),
                    ]
                };
                for (server, channels, is_plain) in order {
                    let request = Arc::clone(&request);
                    let window = measure(
                        &[server.pid()],
                        channels,
                        in_flight,
                        seconds,
                        move |channel, _| {
                            let request = CheckRequest::clone(&request);
                            async move {
                                let response = CheckServiceClient::new(channel)
                                    .check(request)
                                    .await
                                    .unwrap();
                                assert!(response.into_inner().allowed);
                            }
                        },
                    )
                    .await;
                    if is_plain {
                        plains.push(window);
                    } else {
                        withs.push(window);
                    }
                }
            }
            let cpu =
                |windows: &[Window]| median(windows.iter().map(|w| w.cpu_per_call[0]).collect());
            let ratio = |f: fn(&Window) -> f64| {
                median(
                    withs
                        .iter()
                        .zip(&plains)
                        .map(|(w, p)| f(w) / f(p))
                        .collect(),
                )
            };
            println!(
                "| {name} | {in_flight} | {:.1} | {:.1} | {:.2} | {:.2} |",
                cpu(&plains),
                cpu(&withs),
                ratio(|w| w.cpu_per_call[0]),
                ratio(|w| w.figures.per_second),
            );
        }
    }
    println!("\nLoad average after: {}\n", load_average());
}
