//! `tokenauth events watch` (WatchEvents): the change feed, one line per
//! event as it commits, each with the cursor to resume after.

use std::io::Write;

use clap::Args;
use tokenauth::proto::{Actor, WatchEventsRequest, WatchEventsResponse};

use super::{
    CliError, ClientArgs, Output, connect, json,
    reports::{Action, action_of},
    table,
    token::parse_actor,
};

#[derive(Args, Debug)]
pub struct WatchArgs {
    /// The organization whose events to follow; without it, every
    /// organization's (the control plane acting on its own only).
    #[arg(long)]
    pub org: Option<String>,
    /// The member the control plane acts for, USER:ROLE (an admin of --org).
    #[arg(long = "as", id = "as", value_name = "USER:ROLE", value_parser = parse_actor, requires = "org")]
    pub actor: Option<(String, tokenauth::proto::OrgRole)>,
    /// Resume after this cursor (one this command printed); by default the
    /// feed is replayed from its start (as far back as events are kept).
    #[arg(long)]
    pub after: Option<String>,
    /// Only events of these actions (repeat the flag for several): the
    /// changes and the lifecycle warnings, not `denied`.
    #[arg(long, value_enum)]
    pub action: Vec<Action>,
    /// Stop after this many events; by default follow until interrupted.
    #[arg(long)]
    pub limit: Option<u64>,
}

/// The table's columns: the cursor, then an audit event's.
fn header() -> String {
    format!("{:<36}  {}", "CURSOR", table::audit_header())
}

fn row(message: &WatchEventsResponse, now: i64) -> String {
    let event = message.event.clone().unwrap_or_default();
    format!("{:<36}  {}", message.cursor, table::audit_row(&event, now))
}

/// The JSON of one message, as grpcurl prints a stream's: one object per
/// event, here one per line.
fn object(message: &WatchEventsResponse) -> serde_json::Value {
    json::Object::new()
        .string("cursor", &message.cursor)
        .message("event", message.event.as_ref().map(json::audit_event))
        .build()
}

pub async fn watch(client: &ClientArgs, args: WatchArgs) -> Result<(), CliError> {
    let mut audit = connect::connect(client).await?.audit;
    let org = args.org.unwrap_or_default();
    let request = WatchEventsRequest {
        caller_actor: args.actor.map(|(user, role)| Actor {
            user_id: user,
            org_id: org.clone(),
            org_role: role as i32,
        }),
        org_id: org,
        after: args.after.unwrap_or_default(),
        actions: args
            .action
            .into_iter()
            .map(|a| action_of(a) as i32)
            .collect(),
    };
    let mut stream = audit
        .watch_events(request)
        .await
        .map_err(CliError::Status)?
        .into_inner();
    let out = &mut std::io::stdout().lock();
    let written = |result: std::io::Result<()>| result.map_err(CliError::from_output);
    if client.output == Output::Table {
        written(writeln!(out, "{}", header()))?;
        written(out.flush())?;
    }
    let (mut printed, mut last) = (0u64, String::new());
    while args.limit.is_none_or(|limit| printed < limit) {
        let message = match stream.message().await {
            Ok(Some(message)) => message,
            Ok(None) => return Ok(()),
            Err(status) => {
                // Where to resume: the last cursor printed (RESOURCE_EXHAUSTED
                // says the watcher fell behind; UNAVAILABLE, the server stops).
                if !last.is_empty() {
                    eprintln!("resume with: --after {last}");
                }
                return Err(CliError::Status(status));
            }
        };
        let line = match client.output {
            Output::Table => row(&message, table::now()),
            Output::Json => object(&message).to_string(),
        };
        // Each event is flushed as it comes: a reader sees it at once.
        written(writeln!(out, "{line}"))?;
        written(out.flush())?;
        last = message.cursor;
        printed += 1;
    }
    Ok(())
}
