//! `tokenauth token …`: issue, get, list, revoke, revoke-all and rotate,
//! each one RPC of TokenService (list: one per page).

use std::{
    io::{IsTerminal, Write},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use clap::Args;
use tokenauth::proto::{
    Actor, GetTokenRequest, IssueTokenRequest, ListTokensRequest, OrgRole, RevokeAllRequest,
    RevokeTokenRequest, RotateTokenRequest, Token, TokenKind,
};

use super::{
    CliError, ClientArgs, Kind, Output, Paging, Scope, TokenCommand, connect, json,
    pages::{self, Page, Printer},
    table,
};

#[derive(Args, Debug)]
pub struct IssueArgs {
    #[command(flatten)]
    pub scope: Scope,
    /// The workspace of a workspace-level token (none: organization-level).
    #[arg(long)]
    pub workspace: Option<String>,
    #[arg(long, value_enum)]
    pub kind: Kind,
    /// The user a personal token belongs to (default: the user of --as).
    #[arg(long)]
    pub owner: Option<String>,
    /// A name people will recognise it by.
    #[arg(long)]
    pub name: String,
    /// A permission, `resource:action` or `resource:*`; repeat the flag for more.
    #[arg(long = "permission", value_name = "PERMISSION")]
    pub permissions: Vec<String>,
    /// How long the token lives, e.g. `30d`, `12h` (default: the longest
    /// its kind may live, `max_lifetime`).
    #[arg(long, value_parser = humantime::parse_duration, conflicts_with = "expires_at")]
    pub expires_in: Option<Duration>,
    /// When the token expires, RFC 3339, e.g. `2027-01-31T00:00:00Z`.
    #[arg(long, value_parser = parse_time)]
    pub expires_at: Option<prost_types::Timestamp>,
}

#[derive(Args, Debug)]
pub struct IdArgs {
    /// The token's id (`tok_…`), never its secret.
    pub id: String,
    #[command(flatten)]
    pub scope: Scope,
}

#[derive(Args, Debug)]
pub struct ListArgs {
    #[command(flatten)]
    pub scope: Scope,
    /// Only tokens of this workspace.
    #[arg(long)]
    pub workspace: Option<String>,
    /// Only this user's personal tokens.
    #[arg(long)]
    pub owner: Option<String>,
    /// Only tokens of this kind.
    #[arg(long, value_enum)]
    pub kind: Option<Kind>,
    /// Revoked tokens too.
    #[arg(long)]
    pub include_revoked: bool,
    #[command(flatten)]
    pub paging: Paging,
}

#[derive(Args, Debug)]
pub struct RevokeAllArgs {
    #[command(flatten)]
    pub scope: Scope,
    /// Only in this workspace.
    #[arg(long)]
    pub workspace: Option<String>,
    /// Every live personal token of this user.
    #[arg(long)]
    pub owner: Option<String>,
    /// `service`: every live service token of the organization (or --workspace).
    #[arg(long, value_enum)]
    pub kind: Option<Kind>,
    /// Change nothing: show how many tokens would be revoked, and the first of them.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Args, Debug)]
pub struct RotateArgs {
    #[command(flatten)]
    pub id: IdArgs,
    /// How long the old secret keeps working, e.g. `1h` (default: not at all).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub grace: Option<Duration>,
}

/// `USER:ROLE`, the role as the API names it or in lower case with dashes.
pub fn parse_actor(text: &str) -> Result<(String, OrgRole), String> {
    let (user, role) = text
        .rsplit_once(':')
        .ok_or_else(|| "expected USER:ROLE, e.g. alice:read-write".to_owned())?;
    if user.is_empty() {
        return Err("the user is empty (expected USER:ROLE)".into());
    }
    let role = OrgRole::from_str_name(&role.to_uppercase().replace('-', "_"))
        .filter(|r| *r != OrgRole::Unspecified)
        .ok_or_else(|| format!("{role:?}: the role is one of read-only, read-write, admin"))?;
    Ok((user.to_owned(), role))
}

/// A token id; a secret given in its place is refused without being
/// echoed (which is why this is not a clap value parser: clap's error
/// repeats the value).
fn checked_id(text: String) -> Result<String, CliError> {
    if tokenauth::domain::secret::has_secret_prefix(&text) {
        return Err(CliError::Usage(
            "the token given is a secret, not an id: tokens are managed by their id (tok_…), \
             which `tokenauth token list` shows; nothing was sent"
                .into(),
        ));
    }
    Ok(text)
}

/// An RFC 3339 time.
pub fn parse_time(text: &str) -> Result<prost_types::Timestamp, String> {
    let at = humantime::parse_rfc3339_weak(text)
        .map_err(|e| format!("{e} (expected RFC 3339, e.g. 2027-01-31T00:00:00Z)"))?;
    Ok(timestamp(at))
}

pub fn timestamp(at: SystemTime) -> prost_types::Timestamp {
    let since = at.duration_since(UNIX_EPOCH).unwrap_or_default();
    prost_types::Timestamp {
        seconds: i64::try_from(since.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(since.subsec_nanos()).unwrap_or(0),
    }
}

impl Scope {
    pub fn actor(&self) -> Option<Actor> {
        self.actor.as_ref().map(|(user, role)| Actor {
            user_id: user.clone(),
            org_id: self.org.clone(),
            org_role: *role as i32,
        })
    }
}

fn kind(kind: Option<Kind>) -> i32 {
    let kind = match kind {
        None => TokenKind::Unspecified,
        Some(Kind::Personal) => TokenKind::Personal,
        Some(Kind::Service) => TokenKind::Service,
    };
    kind as i32
}

pub async fn run(client: &ClientArgs, command: TokenCommand) -> Result<(), CliError> {
    let mut tokens = connect::connect(client).await?.tokens;
    let mut out = std::io::stdout().lock();
    let now = table::now();
    match command {
        TokenCommand::Issue(args) => {
            let owner = match (args.kind, args.owner) {
                (Kind::Personal, None) => args
                    .scope
                    .actor
                    .as_ref()
                    .map(|(user, _)| user.clone())
                    .unwrap_or_default(),
                (_, owner) => owner.unwrap_or_default(),
            };
            let expires_at = args
                .expires_in
                .map(|d| timestamp(SystemTime::now() + d))
                .or(args.expires_at);
            let issued = tokens
                .issue_token(IssueTokenRequest {
                    kind: kind(Some(args.kind)),
                    org_id: args.scope.org.clone(),
                    workspace_id: args.workspace.unwrap_or_default(),
                    name: args.name,
                    permissions: args.permissions,
                    expires_at,
                    owner_user_id: owner,
                    actor: args.scope.actor(),
                })
                .await
                .map_err(CliError::Status)?
                .into_inner();
            let token = issued.token.unwrap_or_default();
            let value = json::Object::new()
                .message("token", Some(json::token(&token)))
                .string("secret", &issued.secret)
                .build();
            print_secret(
                &mut out,
                client.output,
                &token,
                None,
                &issued.secret,
                &value,
                now,
            )
        }
        TokenCommand::Get(args) => {
            let token = tokens
                .get_token(GetTokenRequest {
                    id: checked_id(args.id)?,
                    actor: args.scope.actor(),
                })
                .await
                .map_err(CliError::Status)?
                .into_inner()
                .token
                .unwrap_or_default();
            print_token(&mut out, client.output, &token, now)
        }
        TokenCommand::List(args) => {
            let request = ListTokensRequest {
                org_id: args.scope.org.clone(),
                workspace_id: args.workspace.unwrap_or_default(),
                owner_user_id: args.owner.unwrap_or_default(),
                kind: kind(args.kind),
                include_revoked: args.include_revoked,
                page_size: args.paging.page_size.unwrap_or(0),
                page_token: String::new(),
                actor: args.scope.actor(),
            };
            let printer = Printer {
                field: "tokens",
                header: table::token_header,
                row: table::token_row,
                json: json::token,
            };
            pages::list(
                &mut out,
                client.output,
                args.paging.all,
                args.paging.page_token.unwrap_or_default(),
                &printer,
                async |page_token| {
                    let page = tokens
                        .list_tokens(ListTokensRequest {
                            page_token,
                            ..request.clone()
                        })
                        .await
                        .map_err(CliError::Status)?
                        .into_inner();
                    Ok(Page {
                        items: page.tokens,
                        next_page_token: page.next_page_token,
                    })
                },
            )
            .await
        }
        TokenCommand::Revoke(args) => {
            let token = tokens
                .revoke_token(RevokeTokenRequest {
                    id: checked_id(args.id)?,
                    actor: args.scope.actor(),
                })
                .await
                .map_err(CliError::Status)?
                .into_inner()
                .token
                .unwrap_or_default();
            print_token(&mut out, client.output, &token, now)
        }
        TokenCommand::RevokeAll(args) => {
            let answer = tokens
                .revoke_all(RevokeAllRequest {
                    dry_run: args.dry_run,
                    org_id: args.scope.org.clone(),
                    workspace_id: args.workspace.unwrap_or_default(),
                    owner_user_id: args.owner.unwrap_or_default(),
                    kind: kind(args.kind),
                    actor: args.scope.actor(),
                })
                .await
                .map_err(CliError::Status)?
                .into_inner();
            if args.dry_run {
                return pages::print_affected(
                    &mut out,
                    client.output,
                    "revoke-all",
                    answer.affected_count,
                    &answer.affected,
                    now,
                );
            }
            let count = answer.revoked_count;
            let text = match client.output {
                Output::Json => {
                    pages::pretty(&json::Object::new().uint64("revokedCount", count).build())?
                }
                Output::Table => format!("revoked {count} token(s)"),
            };
            writeln!(out, "{text}").map_err(CliError::from_output)
        }
        TokenCommand::Rotate(args) => {
            let grace = args.grace.map(|d| prost_types::Duration {
                seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
                nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
            });
            let rotated = tokens
                .rotate_token(RotateTokenRequest {
                    id: checked_id(args.id.id)?,
                    grace_period: grace,
                    actor: args.id.scope.actor(),
                })
                .await
                .map_err(CliError::Status)?
                .into_inner();
            let token = rotated.token.unwrap_or_default();
            let value = json::Object::new()
                .message("token", Some(json::token(&token)))
                .string("secret", &rotated.secret)
                .time("oldSecretExpiresAt", rotated.old_secret_expires_at.as_ref())
                .build();
            let old = rotated.old_secret_expires_at;
            print_secret(
                &mut out,
                client.output,
                &token,
                old.as_ref(),
                &rotated.secret,
                &value,
                now,
            )
        }
        // Dispatched by the caller (cli::token), to reports.
        TokenCommand::Usage(_) | TokenCommand::Unused(_) => Ok(()),
    }
}

fn print_token(
    out: &mut impl Write,
    output: Output,
    token: &Token,
    now: i64,
) -> Result<(), CliError> {
    let text = match output {
        Output::Json => format!(
            "{}\n",
            pages::pretty(
                &json::Object::new()
                    .message("token", Some(json::token(token)))
                    .build()
            )?
        ),
        Output::Table => table::token_detail(token, None, now),
    };
    out.write_all(text.as_bytes())
        .map_err(CliError::from_output)
}

/// Prints a new secret once: with the token's details on a terminal; alone
/// on stdout otherwise (so `> file` captures just the secret), the details
/// going to stderr; or inside the response's JSON with `--output json`.
/// The warning that it will not be shown again always goes to stderr.
fn print_secret(
    out: &mut impl Write,
    output: Output,
    token: &Token,
    old_secret_until: Option<&prost_types::Timestamp>,
    secret: &str,
    response: &serde_json::Value,
    now: i64,
) -> Result<(), CliError> {
    let details = table::token_detail(token, old_secret_until, now);
    let (stdout, stderr) = match output {
        Output::Json => (format!("{}\n", pages::pretty(response)?), String::new()),
        Output::Table if std::io::stdout().is_terminal() => (
            format!("{details}{:<17} {secret}\n", "secret"),
            String::new(),
        ),
        Output::Table => (format!("{secret}\n"), details),
    };
    eprint!("{stderr}");
    out.write_all(stdout.as_bytes())
        .and_then(|()| out.flush())
        .map_err(CliError::from_output)?;
    eprintln!(
        "warning: this is the only time the secret of {} is shown: store it now (it is not \
         stored, and cannot be shown again)",
        token.id
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actors_read_as_user_and_role() {
        assert_eq!(
            parse_actor("alice:read-write"),
            Ok(("alice".into(), OrgRole::ReadWrite))
        );
        assert_eq!(
            parse_actor("root:ADMIN"),
            Ok(("root".into(), OrgRole::Admin))
        );
        assert_eq!(
            parse_actor("svc:x:read_only"),
            Ok(("svc:x".into(), OrgRole::ReadOnly))
        );
        for bad in ["alice", ":admin", "alice:owner", "alice:unspecified"] {
            assert!(parse_actor(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_secret_given_as_an_id_is_refused_without_echo() {
        let secret = "tkpat_0123456789abcdefghijABCDEFGHIJ0123456789abcdefgh";
        let line = checked_id(secret.into()).unwrap_err().line().unwrap();
        assert!(!line.contains("tkpat_"), "{line}");
        assert_eq!(checked_id("tok_01ABC".into()).unwrap(), "tok_01ABC");
    }
}
