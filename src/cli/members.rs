//! `tokenauth member …`: set, get, list and remove the members whose roles
//! personal tokens follow, each one RPC of TokenService (list: one per page).
//! Without `--as`, the control-plane credential acts on its own behalf.

use std::io::Write;

use clap::{Args, Subcommand, ValueEnum};
use serde_json::Value;
use tokenauth::proto::{
    GetMemberRequest, ListMembersRequest, Member, OrgRole, RemoveMemberRequest, SetMemberRequest,
};

use super::{
    CliError, ClientArgs, Output, Paging, Scope, connect, json,
    pages::{self, Page, Printer},
    table,
};

#[derive(Subcommand, Debug)]
pub enum MemberCommand {
    /// Add a member, or change their role (the same role again changes
    /// nothing). Their personal tokens follow at once.
    Set(SetArgs),
    /// Show one member.
    Get(UserArgs),
    /// List an organization's members, by user id.
    List(ListArgs),
    /// Remove a member and revoke every personal token of theirs.
    Remove(RemoveArgs),
}

/// A role, as the flags spell it.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Role {
    ReadOnly,
    ReadWrite,
    Admin,
}

#[derive(Args, Debug)]
pub struct UserArgs {
    #[command(flatten)]
    pub scope: Scope,
    /// The member's user id.
    #[arg(long)]
    pub user: String,
}

#[derive(Args, Debug)]
pub struct RemoveArgs {
    #[command(flatten)]
    pub user: UserArgs,
    /// Change nothing: show how many personal tokens would be revoked, and the first of them.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Args, Debug)]
pub struct SetArgs {
    #[command(flatten)]
    pub user: UserArgs,
    #[arg(long, value_enum)]
    pub role: Role,
}

#[derive(Args, Debug)]
pub struct ListArgs {
    #[command(flatten)]
    pub scope: Scope,
    #[command(flatten)]
    pub paging: Paging,
}

fn role_number(role: Role) -> i32 {
    match role {
        Role::ReadOnly => OrgRole::ReadOnly as i32,
        Role::ReadWrite => OrgRole::ReadWrite as i32,
        Role::Admin => OrgRole::Admin as i32,
    }
}

fn role_name(role: i32) -> Option<&'static str> {
    OrgRole::try_from(role).ok().map(|r| r.as_str_name())
}

fn member_json(member: &Member) -> Value {
    json::Object::new()
        .string("orgId", &member.org_id)
        .string("userId", &member.user_id)
        .enumeration("orgRole", member.org_role, role_name(member.org_role))
        .time("updatedAt", member.updated_at.as_ref())
        .build()
}

fn member_header() -> String {
    format!("{:<30}  {:<10}  UPDATED", "USER", "ROLE")
}

fn member_row(member: &Member, now: i64) -> String {
    let role = role_name(member.org_role)
        .unwrap_or("?")
        .to_lowercase()
        .replace('_', "-");
    let updated = table::when(member.updated_at.as_ref(), now, "never");
    format!("{:<30}  {role:<10}  {updated}", member.user_id)
}

fn print_member(out: &mut impl Write, output: Output, member: &Member) -> Result<(), CliError> {
    let text = match output {
        Output::Json => format!(
            "{}\n",
            pages::pretty(
                &json::Object::new()
                    .message("member", Some(member_json(member)))
                    .build()
            )?
        ),
        Output::Table => format!(
            "{}\n{}\n",
            member_header(),
            member_row(member, table::now())
        ),
    };
    out.write_all(text.as_bytes())
        .map_err(CliError::from_output)
}

pub async fn run(client: &ClientArgs, command: MemberCommand) -> Result<(), CliError> {
    let mut tokens = connect::connect(client).await?.tokens;
    let mut out = std::io::stdout().lock();
    match command {
        MemberCommand::Set(args) => {
            let member = tokens
                .set_member(SetMemberRequest {
                    org_id: args.user.scope.org.clone(),
                    user_id: args.user.user,
                    org_role: role_number(args.role),
                    actor: args.user.scope.actor(),
                })
                .await
                .map_err(CliError::Status)?
                .into_inner()
                .member
                .unwrap_or_default();
            print_member(&mut out, client.output, &member)
        }
        MemberCommand::Get(args) => {
            let member = tokens
                .get_member(GetMemberRequest {
                    org_id: args.scope.org.clone(),
                    user_id: args.user,
                    actor: args.scope.actor(),
                })
                .await
                .map_err(CliError::Status)?
                .into_inner()
                .member
                .unwrap_or_default();
            print_member(&mut out, client.output, &member)
        }
        MemberCommand::Remove(RemoveArgs {
            user: args,
            dry_run,
        }) => {
            let user = args.user.clone();
            let removed = tokens
                .remove_member(RemoveMemberRequest {
                    org_id: args.scope.org.clone(),
                    user_id: args.user,
                    dry_run,
                    actor: args.scope.actor(),
                })
                .await
                .map_err(CliError::Status)?
                .into_inner();
            if dry_run {
                let summary = if removed.removed {
                    format!("removing {user}")
                } else {
                    format!("removing {user} (not a member the service knows)")
                };
                return pages::print_affected(
                    &mut out,
                    client.output,
                    &summary,
                    removed.affected_count,
                    &removed.affected,
                    table::now(),
                );
            }
            let text = match client.output {
                Output::Json => format!(
                    "{}\n",
                    pages::pretty(
                        &json::Object::new()
                            .boolean("removed", removed.removed)
                            .uint64("revokedCount", removed.revoked_count)
                            .build()
                    )?
                ),
                Output::Table => format!(
                    "{} {user}; {} personal token(s) revoked\n",
                    if removed.removed {
                        "removed"
                    } else {
                        "not a member the service knew:"
                    },
                    removed.revoked_count
                ),
            };
            out.write_all(text.as_bytes())
                .map_err(CliError::from_output)
        }
        MemberCommand::List(args) => {
            let request = ListMembersRequest {
                org_id: args.scope.org.clone(),
                page_size: args.paging.page_size.unwrap_or(0),
                page_token: String::new(),
                actor: args.scope.actor(),
            };
            let printer = Printer {
                field: "members",
                header: member_header,
                row: member_row,
                json: member_json,
            };
            pages::list(
                &mut out,
                client.output,
                args.paging.all,
                args.paging.page_token.unwrap_or_default(),
                &printer,
                async |page_token| {
                    let page = tokens
                        .list_members(ListMembersRequest {
                            page_token,
                            ..request.clone()
                        })
                        .await
                        .map_err(CliError::Status)?
                        .into_inner();
                    Ok(Page {
                        items: page.members,
                        next_page_token: page.next_page_token,
                    })
                },
            )
            .await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_member_prints_as_the_api_maps_it_and_as_a_row() {
        let member = Member {
            org_id: "org-1".into(),
            user_id: "bob".into(),
            org_role: OrgRole::ReadWrite as i32,
            updated_at: Some(prost_types::Timestamp {
                seconds: 1_764_761_646,
                nanos: 0,
            }),
        };
        let value = member_json(&member);
        assert_eq!(value["orgRole"], "READ_WRITE");
        assert_eq!(value["userId"], "bob");
        assert_eq!(value["updatedAt"], "2025-12-03T11:34:06Z");
        let row = member_row(&member, 1_764_761_646);
        assert!(row.starts_with("bob "), "{row}");
        assert!(row.contains("read-write"), "{row}");
    }
}
