//! The listings that report rather than manage: `tokenauth token usage`
//! (ListTokenUsage), `tokenauth token unused` (ReportUnusedPermissions) and
//! `tokenauth audit list` (ListAuditEvents), and the audit actions' flags.

use std::time::SystemTime;

use clap::{Args, ValueEnum};
use tokenauth::proto::{
    AuditAction, ListAuditEventsRequest, ListTokenUsageRequest, ReportUnusedPermissionsRequest,
};

use super::{
    CliError, ClientArgs, Paging, Scope, connect, json,
    pages::{self, Page, Printer},
    table,
    token::{parse_time, timestamp},
};

#[derive(Args, Debug)]
pub struct UsageArgs {
    #[command(flatten)]
    pub scope: Scope,
    /// Only this token's usage (its id).
    #[arg(long)]
    pub token: Option<String>,
    #[command(flatten)]
    pub window: Window,
    #[command(flatten)]
    pub paging: Paging,
}

#[derive(Args, Debug)]
pub struct UnusedArgs {
    #[command(flatten)]
    pub scope: Scope,
    /// Only tokens of this workspace.
    #[arg(long)]
    pub workspace: Option<String>,
    /// The start of the window: RFC 3339, or a duration ago (`30d`); by
    /// default as far back as usage is kept.
    #[arg(long, value_parser = parse_moment)]
    pub since: Option<prost_types::Timestamp>,
    #[command(flatten)]
    pub paging: Paging,
}

#[derive(Args, Debug)]
pub struct AuditArgs {
    #[command(flatten)]
    pub scope: Scope,
    /// Only events of this workspace.
    #[arg(long)]
    pub workspace: Option<String>,
    /// Only events naming this token (its id) among their targets.
    #[arg(long)]
    pub token: Option<String>,
    /// Only events whose actor's user id, credential or token id is this.
    #[arg(long)]
    pub actor: Option<String>,
    /// Only events of this action.
    #[arg(long, value_enum)]
    pub action: Option<Action>,
    #[command(flatten)]
    pub window: Window,
    #[command(flatten)]
    pub paging: Paging,
}

/// A time window, each end an RFC 3339 time or a duration meaning "that long ago".
#[derive(Args, Debug)]
pub struct Window {
    /// Inclusive start: RFC 3339, or a duration ago (`1h`, `7d`).
    #[arg(long, value_parser = parse_moment)]
    pub start_time: Option<prost_types::Timestamp>,
    /// Exclusive end: RFC 3339, or a duration ago.
    #[arg(long, value_parser = parse_moment)]
    pub end_time: Option<prost_types::Timestamp>,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Action {
    Issued,
    Revoked,
    RevokedAll,
    Rotated,
    Denied,
    MemberSet,
    MemberRemoved,
    InactivityWarning,
    Expiring,
    Expired,
}

/// The API's action a flag names.
pub fn action_of(action: Action) -> AuditAction {
    match action {
        Action::Issued => AuditAction::Issued,
        Action::Revoked => AuditAction::Revoked,
        Action::RevokedAll => AuditAction::RevokedAll,
        Action::Rotated => AuditAction::Rotated,
        Action::Denied => AuditAction::Denied,
        Action::MemberSet => AuditAction::MemberSet,
        Action::MemberRemoved => AuditAction::MemberRemoved,
        Action::InactivityWarning => AuditAction::InactivityWarning,
        Action::Expiring => AuditAction::Expiring,
        Action::Expired => AuditAction::Expired,
    }
}

fn parse_moment(text: &str) -> Result<prost_types::Timestamp, String> {
    match humantime::parse_duration(text) {
        Ok(ago) => SystemTime::now()
            .checked_sub(ago)
            .map(timestamp)
            .ok_or_else(|| "too long ago".to_owned()),
        Err(_) => parse_time(text).map_err(|e| format!("{e}, or a duration ago such as 1h")),
    }
}

pub async fn usage(client: &ClientArgs, args: UsageArgs) -> Result<(), CliError> {
    let mut tokens = connect::connect(client).await?.tokens;
    let request = ListTokenUsageRequest {
        org_id: args.scope.org.clone(),
        token_id: args.token.unwrap_or_default(),
        start_time: args.window.start_time,
        end_time: args.window.end_time,
        page_size: args.paging.page_size.unwrap_or(0),
        page_token: String::new(),
        actor: args.scope.actor(),
    };
    let printer = Printer {
        field: "records",
        header: table::usage_header,
        row: table::usage_row,
        json: json::usage_record,
    };
    pages::list(
        &mut std::io::stdout().lock(),
        client.output,
        args.paging.all,
        args.paging.page_token.unwrap_or_default(),
        &printer,
        async |page_token| {
            let page = tokens
                .list_token_usage(ListTokenUsageRequest {
                    page_token,
                    ..request.clone()
                })
                .await
                .map_err(CliError::Status)?
                .into_inner();
            Ok(Page {
                items: page.records,
                next_page_token: page.next_page_token,
            })
        },
    )
    .await
}

pub async fn unused(client: &ClientArgs, args: UnusedArgs) -> Result<(), CliError> {
    let mut tokens = connect::connect(client).await?.tokens;
    let request = ReportUnusedPermissionsRequest {
        org_id: args.scope.org.clone(),
        workspace_id: args.workspace.unwrap_or_default(),
        since: args.since,
        page_size: args.paging.page_size.unwrap_or(0),
        page_token: String::new(),
        actor: args.scope.actor(),
    };
    let printer = Printer {
        field: "tokens",
        header: table::unused_header,
        row: table::unused_row,
        json: json::unused_token,
    };
    let mut window_told = false;
    pages::list(
        &mut std::io::stdout().lock(),
        client.output,
        args.paging.all,
        args.paging.page_token.unwrap_or_default(),
        &printer,
        async |page_token| {
            let page = tokens
                .report_unused_permissions(ReportUnusedPermissionsRequest {
                    page_token,
                    ..request.clone()
                })
                .await
                .map_err(CliError::Status)?
                .into_inner();
            // On standard error, so that stdout stays the listing alone.
            if !window_told && let Some(since) = &page.effective_since {
                eprintln!("usage since {}", json::rfc3339(since));
                window_told = true;
            }
            if page.truncated {
                eprintln!(
                    "truncated: a token's usage outgrew what one page reads; its unused \
                     permissions may include some it used later in the window"
                );
            }
            Ok(Page {
                items: page.tokens,
                next_page_token: page.next_page_token,
            })
        },
    )
    .await
}

pub async fn audit(client: &ClientArgs, args: AuditArgs) -> Result<(), CliError> {
    let mut audit = connect::connect(client).await?.audit;
    let action = args.action.map_or(AuditAction::Unspecified, action_of);
    let request = ListAuditEventsRequest {
        org_id: args.scope.org.clone(),
        workspace_id: args.workspace.unwrap_or_default(),
        token_id: args.token.unwrap_or_default(),
        actor: args.actor.unwrap_or_default(),
        action: action as i32,
        start_time: args.window.start_time,
        end_time: args.window.end_time,
        page_size: args.paging.page_size.unwrap_or(0),
        page_token: String::new(),
        caller_actor: args.scope.actor(),
    };
    let printer = Printer {
        field: "events",
        header: table::audit_header,
        row: table::audit_row,
        json: json::audit_event,
    };
    pages::list(
        &mut std::io::stdout().lock(),
        client.output,
        args.paging.all,
        args.paging.page_token.unwrap_or_default(),
        &printer,
        async |page_token| {
            let page = audit
                .list_audit_events(ListAuditEventsRequest {
                    page_token,
                    ..request.clone()
                })
                .await
                .map_err(CliError::Status)?
                .into_inner();
            Ok(Page {
                items: page.events,
                next_page_token: page.next_page_token,
            })
        },
    )
    .await
}
