//! The operator's client commands (`tokenauth token …`, `tokenauth member …`,
//! `tokenauth audit …`, `tokenauth events watch`),
//! which talk to a running server over gRPC with the generated client, and
//! the shell completions and man page made from the same clap definitions.
//!
//! Exit codes (documented in docs/operate/cli.md): 0 done; 1 failed for
//! another reason (an internal error on the server, local I/O); 2 a usage
//! error (bad flags, a missing or unsafe credential file); 3 the server
//! refused the request (invalid, not found, permission denied,
//! unauthenticated); 4 the server was unavailable (cannot connect, timed out,
//! overloaded): trying again later may work.

mod connect;
mod error;
mod events;
mod json;
mod members;
mod pages;
mod reports;
mod table;
mod token;

use std::path::PathBuf;

use clap::{Args, Subcommand, ValueEnum};

pub use connect::{causes, read_credential};
pub use error::CliError;
pub use members::MemberCommand;

/// Where the server is and how to reach it, shared by every client command.
#[derive(Args, Clone, Debug)]
pub struct ClientArgs {
    /// The server: http://HOST:PORT (plaintext) or https://HOST:PORT (TLS,
    /// with --ca) [variable: TOKENAUTH_SERVER].
    #[arg(
        long,
        env = "TOKENAUTH_SERVER",
        default_value = "http://127.0.0.1:50051",
        global = true
    )]
    pub server: String,
    /// A file (mode 0600 or stricter) holding the credential: a
    /// control-plane credential, or a service token holding `tokens:manage`
    /// or `audit_logs:read` [variable: TOKENAUTH_CREDENTIAL_FILE].
    #[arg(long, env = "TOKENAUTH_CREDENTIAL_FILE", global = true)]
    pub credential_file: Option<PathBuf>,
    /// PEM CA certificate(s) that sign the server's certificate (https://
    /// only) [variable: TOKENAUTH_CA].
    #[arg(long, env = "TOKENAUTH_CA", global = true)]
    pub ca: Option<PathBuf>,
    /// PEM client certificate, for a server that requires mTLS
    /// [variable: TOKENAUTH_CLIENT_CERT].
    #[arg(long, env = "TOKENAUTH_CLIENT_CERT", global = true, requires = "key")]
    pub cert: Option<PathBuf>,
    /// PEM private key of --cert [variable: TOKENAUTH_CLIENT_KEY].
    #[arg(long, env = "TOKENAUTH_CLIENT_KEY", global = true, requires = "cert")]
    pub key: Option<PathBuf>,
    /// `table` for people, `json` (protobuf's JSON mapping, as grpcurl
    /// prints it; with --all, one object per line) for scripts.
    #[arg(long, value_enum, default_value_t = Output::Table, global = true)]
    pub output: Output,
}

/// How results are printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
}

/// A token's kind, as the flags spell it.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Kind {
    Personal,
    Service,
}

/// The actor the control plane asserts: `--as USER:ROLE` with the
/// organization from `--org`. Without it the credential acts on its own
/// (a service token holding `tokens:manage` or `audit_logs:read`).
#[derive(Args, Clone, Debug)]
pub struct Scope {
    /// The organization (the request's org_id, and the actor's).
    #[arg(long)]
    pub org: String,
    /// The member the control plane acts for, USER:ROLE with ROLE one of
    /// read-only, read-write, admin (e.g. `--as alice:read-write`).
    #[arg(long = "as", id = "as", value_name = "USER:ROLE", value_parser = token::parse_actor)]
    pub actor: Option<(String, tokenauth::proto::OrgRole)>,
}

/// Following pages: one page (and the token of the next), or all of them.
#[derive(Args, Clone, Debug)]
pub struct Paging {
    /// At most this many items per page (the server's default: 50, at most 500).
    #[arg(long)]
    pub page_size: Option<i32>,
    /// The next-page token a previous page printed, with the same filters.
    #[arg(long, conflicts_with = "all")]
    pub page_token: Option<String>,
    /// Follow every page: items are printed as each page arrives (nothing
    /// is held beyond one page), as one JSON object per line with --output json.
    #[arg(long)]
    pub all: bool,
}

#[derive(Subcommand, Debug)]
pub enum TokenCommand {
    /// Issue a token; its secret is printed once (alone on stdout when
    /// stdout is not a terminal), and never shown again.
    Issue(token::IssueArgs),
    /// Show one token by its id.
    Get(token::IdArgs),
    /// List tokens (newest first).
    List(token::ListArgs),
    /// Revoke one token by its id (revoking a revoked token keeps the first time).
    Revoke(token::IdArgs),
    /// Revoke every live token of one user (--owner), or the service tokens
    /// (--kind service) of an organization or one of its workspaces.
    RevokeAll(token::RevokeAllArgs),
    /// Give a token a new secret (printed once); the old one keeps working for --grace.
    Rotate(token::RotateArgs),
    /// Check decisions by token, permission, decision and minute (oldest first).
    Usage(reports::UsageArgs),
    /// Least privilege: each live token's permissions it did not use since
    /// --since, and the tokens not used at all (newest first).
    Unused(reports::UnusedArgs),
}

#[derive(Subcommand, Debug)]
pub enum AuditCommand {
    /// List audit events (newest first).
    List(reports::AuditArgs),
}

#[derive(Subcommand, Debug)]
pub enum EventsCommand {
    /// Follow the change feed (WatchEvents): the events after a cursor,
    /// then each as it commits, one line each with its cursor.
    Watch(events::WatchArgs),
}

/// The shells `tokenauth completions` writes for.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Shell {
    Bash,
    Zsh,
    Fish,
}

/// Runs a `tokenauth token …` command against the server.
pub fn token(client: &ClientArgs, command: TokenCommand) -> Result<(), CliError> {
    match command {
        TokenCommand::Usage(args) => runtime()?.block_on(reports::usage(client, args)),
        TokenCommand::Unused(args) => runtime()?.block_on(reports::unused(client, args)),
        command => runtime()?.block_on(token::run(client, command)),
    }
}

/// Runs a `tokenauth member …` command against the server.
pub fn member(client: &ClientArgs, command: MemberCommand) -> Result<(), CliError> {
    runtime()?.block_on(members::run(client, command))
}

/// Runs a `tokenauth audit …` command against the server.
pub fn audit(client: &ClientArgs, command: AuditCommand) -> Result<(), CliError> {
    let AuditCommand::List(args) = command;
    runtime()?.block_on(reports::audit(client, args))
}

/// Runs a `tokenauth events …` command against the server.
pub fn events(client: &ClientArgs, command: EventsCommand) -> Result<(), CliError> {
    let EventsCommand::Watch(args) = command;
    runtime()?.block_on(events::watch(client, args))
}

fn runtime() -> Result<tokio::runtime::Runtime, CliError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::Failed(format!("starting the async runtime: {e}")))
}

/// Writes the completion script for `shell` of `command` to stdout.
pub fn completions(mut command: clap::Command, shell: Shell) -> Result<(), CliError> {
    let shell = match shell {
        Shell::Bash => clap_complete::Shell::Bash,
        Shell::Zsh => clap_complete::Shell::Zsh,
        Shell::Fish => clap_complete::Shell::Fish,
    };
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut command, "tokenauth", &mut out);
    write_stdout(&out)
}

/// Writes the man page of `command` (roff) to stdout.
pub fn man(command: clap::Command) -> Result<(), CliError> {
    let mut out = Vec::new();
    clap_mangen::Man::new(command)
        .render(&mut out)
        .map_err(|e| CliError::Failed(format!("rendering the man page: {e}")))?;
    write_stdout(&out)
}

fn write_stdout(bytes: &[u8]) -> Result<(), CliError> {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(bytes)
        .and_then(|()| stdout.flush())
        .map_err(CliError::from_output)
}
