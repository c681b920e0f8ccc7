//! The `tokenauth` binary: parse the command line, load the configuration,
//! start logging, and run the server (or a maintenance command, or a
//! client command of `cli`).

mod cli;

// jemalloc rather than glibc's malloc: in an A/B under sustained Check load
// it answered more Checks for less CPU per call, and its RSS after five
// minutes was lower (glibc's heap fragments under sled's pages of many
// sizes). It does not stop sled's own growth over an hour: BENCHMARKS.md.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use std::{net::SocketAddr, path::PathBuf, process::ExitCode};

use clap::{CommandFactory, Parser, Subcommand};
use tokenauth::{config::Config, pepper, server, telemetry};

#[derive(Parser)]
#[command(
    name = "tokenauth",
    version,
    about = "Issues, lists, revokes and checks API access tokens over gRPC"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gRPC server. Precedence: flags, then TOKENAUTH_* variables, then the config file.
    Serve(ServeArgs),
    /// Manage the pepper file (the keys token digests are made with).
    Pepper {
        #[command(subcommand)]
        action: PepperAction,
    },
    /// Manage control-plane credentials.
    Credential {
        #[command(subcommand)]
        action: CredentialAction,
    },
    /// Work with the configuration.
    Config {
        #[command(subcommand)]
        action: ConfigAction,
    },
    /// Take a consistent backup from a running server (the pepper is not in it).
    Backup {
        /// The server, e.g. http://127.0.0.1:50051.
        #[arg(long, default_value = "http://127.0.0.1:50051")]
        server: String,
        /// A file holding the control-plane credential.
        #[arg(long, env = "TOKENAUTH_CREDENTIAL_FILE")]
        credential_file: PathBuf,
        /// Where to write the backup.
        #[arg(long)]
        out: PathBuf,
    },
    /// Issue, show, list, revoke and rotate tokens on a running server.
    Token {
        #[command(flatten)]
        client: cli::ClientArgs,
        #[command(subcommand)]
        action: cli::TokenCommand,
    },
    /// Set, show, list and remove the members whose roles personal tokens
    /// follow, on a running server.
    Member {
        #[command(flatten)]
        client: cli::ClientArgs,
        #[command(subcommand)]
        action: cli::MemberCommand,
    },
    /// Read the audit log of a running server.
    Audit {
        #[command(flatten)]
        client: cli::ClientArgs,
        #[command(subcommand)]
        action: cli::AuditCommand,
    },
    /// Follow the change feed of a running server.
    Events {
        #[command(flatten)]
        client: cli::ClientArgs,
        #[command(subcommand)]
        action: cli::EventsCommand,
    },
    /// Print a shell completion script, e.g. `tokenauth completions bash >
    /// /etc/bash_completion.d/tokenauth`.
    Completions {
        #[arg(value_enum)]
        shell: cli::Shell,
    },
    /// Print the man page (roff), e.g. `tokenauth man > tokenauth.1`.
    Man,
    /// Copy a sled data directory into PostgreSQL and verify the copy
    /// (counts and SHA-256 per table). Safe to run again.
    Migrate(MigrateArgs),
    /// Restore a backup into a new data directory (with the server stopped).
    Restore {
        /// The backup file.
        #[arg(long)]
        from: PathBuf,
        /// The data directory to create; it must not exist or be empty.
        #[arg(long)]
        data_dir: PathBuf,
    },
}

#[derive(clap::Args)]
struct MigrateArgs {
    /// The sled data directory to copy (its server must be stopped).
    #[arg(long)]
    from: PathBuf,
    /// The PostgreSQL URL to copy into (without a password; see --password-file).
    #[arg(long)]
    to: String,
    /// A file holding the database password.
    #[arg(long)]
    password_file: Option<PathBuf>,
    /// PEM file of the CA(s) that sign the database server's certificate:
    /// connect over TLS and verify the server (as `postgres.ca_file`).
    #[arg(long)]
    ca_file: Option<PathBuf>,
}

#[derive(Subcommand)]
enum ConfigAction {
    /// Validate the file (and the TOKENAUTH_* variables over it) and print
    /// the effective configuration, with credential hashes redacted.
    Check {
        /// The TOML file; without it, the defaults and the environment are checked.
        file: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum CredentialAction {
    /// Print a new control-plane credential, and the config entry (its hash) that admits it.
    Generate {
        /// The credential's name, as audit events will show it.
        #[arg(long)]
        name: String,
        /// Write the credential to FILE (created with mode 0600; an existing
        /// file is left alone and the command fails) instead of standard output.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
        /// Append the entry that admits the credential to the config file
        /// FILE (created with mode 0600 if absent). Without it, the entry is
        /// printed on standard error, as TOML that can be appended as it is.
        #[arg(long, value_name = "FILE")]
        config_entry: Option<PathBuf>,
    },
}

#[derive(clap::Args)]
struct ServeArgs {
    /// TOML configuration file (optional: every setting has a default).
    #[arg(long, env = "TOKENAUTH_CONFIG")]
    config: Option<PathBuf>,
    /// Address to listen on, HOST:PORT (an IP or a host name) [default:
    /// 127.0.0.1:50051; variable: TOKENAUTH_LISTEN].
    #[arg(long, value_parser = tokenauth::config::resolve_listen)]
    listen: Option<SocketAddr>,
    /// Data directory [default: ./data; variable: TOKENAUTH_DATA_DIR].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Log filter, e.g. `info` or `tokenauth=debug` (RUST_LOG syntax).
    #[arg(long, env = "TOKENAUTH_LOG", default_value = "info")]
    log: String,
    /// Log format: `json` (one object per line, for production), `text`
    /// (readable), or `auto` (text on a terminal, JSON otherwise).
    #[arg(long, env = "TOKENAUTH_LOG_FORMAT", value_enum, default_value_t = LogFormat::Auto)]
    log_format: LogFormat,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Auto,
    Json,
    Text,
}

#[derive(Subcommand)]
enum PepperAction {
    /// Create a new pepper file (refuses to replace one). For servers that
    /// share a PostgreSQL store: create it once, and give every replica a copy.
    Create {
        /// Where to write it (mode 0600).
        #[arg(long)]
        file: PathBuf,
    },
    /// Add a new pepper key. New tokens use it after the next start; existing tokens keep working.
    Rotate {
        /// The pepper file [default: <data dir>/pepper].
        #[arg(long)]
        file: Option<PathBuf>,
        /// Data directory whose pepper file to rotate.
        #[arg(long, env = "TOKENAUTH_DATA_DIR", default_value = "data")]
        data_dir: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let client = match cli.command {
        Command::Token { client, action } => cli::token(&client, action),
        Command::Member { client, action } => cli::member(&client, action),
        Command::Audit { client, action } => cli::audit(&client, action),
        Command::Events { client, action } => cli::events(&client, action),
        Command::Completions { shell } => cli::completions(Cli::command(), shell),
        Command::Man => cli::man(Cli::command()),
        command => return maintenance(command),
    };
    match client {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            if let Some(line) = error.line() {
                eprintln!("{line}");
            }
            error.exit_code()
        }
    }
}

/// The server and the commands that work on its files.
fn maintenance(command: Command) -> ExitCode {
    match command {
        Command::Token { .. }
        | Command::Member { .. }
        | Command::Audit { .. }
        | Command::Events { .. }
        | Command::Completions { .. }
        | Command::Man => ExitCode::FAILURE,
        Command::Serve(args) => serve(args),
        Command::Credential {
            action:
                CredentialAction::Generate {
                    name,
                    out,
                    config_entry,
                },
        } => match generate_credential(&name, out.as_deref(), config_entry.as_deref()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("error: {error}");
                ExitCode::FAILURE
            }
        },
        Command::Config {
            action: ConfigAction::Check { file },
        } => check_config(file.as_deref()),
        Command::Backup {
            server,
            credential_file,
            out,
        } => backup(&server, &credential_file, &out),
        Command::Restore { from, data_dir } => restore(&from, &data_dir),
        Command::Migrate(args) => migrate(&args),
        Command::Pepper {
            action: PepperAction::Create { file },
        } => match pepper::create(&file) {
            Ok(()) => {
                println!(
                    "created {}: a secret. Give every replica the same file, and back it up",
                    file.display()
                );
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("error: {error}");
                ExitCode::FAILURE
            }
        },
        Command::Pepper {
            action: PepperAction::Rotate { file, data_dir },
        } => {
            let path = file.unwrap_or_else(|| data_dir.join("pepper"));
            match pepper::rotate(&path) {
                Ok(id) => {
                    println!(
                        "added pepper key {id} to {}; restart the server to use it",
                        path.display()
                    );
                    ExitCode::SUCCESS
                }
                Err(error) => {
                    eprintln!("error: {error}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn backup(server: &str, credential_file: &std::path::Path, out: &std::path::Path) -> ExitCode {
    let outcome = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())
        .and_then(|runtime| runtime.block_on(take_backup(server, credential_file, out)));
    match outcome {
        Ok(bytes) => {
            println!(
                "wrote {bytes} bytes to {}. It holds no secret, but is useless without the \
                 pepper file: back that up separately, as a secret.",
                out.display()
            );
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn take_backup(
    server: &str,
    credential_file: &std::path::Path,
    out: &std::path::Path,
) -> Result<u64, String> {
    use std::io::Write;
    // The client commands' reader: owner-only file, bounded size, never echoed.
    let bearer = cli::read_credential(credential_file).map_err(|e| {
        e.line()
            .unwrap_or_else(|| "unreadable credential file".to_owned())
    })?;
    if !server.contains("://") {
        return Err(format!(
            "--server {server}: give the server as a URL, e.g. http://{server}"
        ));
    }
    let channel = tonic::transport::Channel::from_shared(server.to_owned())
        .map_err(|e| format!("--server {server}: not a URL: {e}"))?
        .connect_timeout(std::time::Duration::from_secs(10))
        .connect()
        .await
        .map_err(|e| format!("cannot connect to {server}: {}", cli::causes(&e)))?;
    let mut request = tonic::Request::new(tokenauth::proto::BackupRequest {});
    request.metadata_mut().insert("authorization", bearer);
    let refused = |status: tonic::Status| {
        format!(
            "{server} refused the backup: {:?}: {}",
            status.code(),
            status.message()
        )
    };
    let mut stream = tokenauth::proto::admin_service_client::AdminServiceClient::new(channel)
        .backup(request)
        .await
        .map_err(refused)?
        .into_inner();
    // Written beside the target and renamed at the end: a failed backup
    // never leaves a plausible-looking partial file.
    let partial = out.with_extension("partial");
    // Mode 0600: a backup holds every token record and audit event.
    let mut file = tokenauth::private_fs::create_file(&partial)
        .map_err(|e| format!("{}: {e}", partial.display()))?;
    let mut bytes = 0u64;
    while let Some(chunk) = stream.message().await.map_err(refused)? {
        file.write_all(&chunk.data)
            .map_err(|e| format!("{}: {e}", partial.display()))?;
        bytes += chunk.data.len() as u64;
    }
    file.sync_all()
        .map_err(|e| format!("{}: {e}", partial.display()))?;
    std::fs::rename(&partial, out).map_err(|e| format!("{}: {e}", out.display()))?;
    Ok(bytes)
}

fn restore(from: &std::path::Path, data_dir: &std::path::Path) -> ExitCode {
    let private = tokenauth::private_fs::create_dir(data_dir)
        .and_then(|()| tokenauth::private_fs::tighten_dir(data_dir));
    if let Err(error) = private {
        eprintln!("error: {}: {error}", data_dir.display());
        return ExitCode::FAILURE;
    }
    match tokenauth::store::sled::backup::restore(from, &data_dir.join("db")) {
        Ok(entries) => {
            println!(
                "restored {entries} entries into {}. Put the pepper file that belongs with this \
                 backup where the server reads it (its pepper_file; by default {}, mode 0600) \
                 before starting the server: it refuses any other.",
                data_dir.display(),
                data_dir.join("pepper").display()
            );
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

fn migrate(args: &MigrateArgs) -> ExitCode {
    let outcome = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())
        .and_then(|runtime| runtime.block_on(run_migration(args)));
    match outcome {
        Ok(reports) => {
            println!("table          rows  sha256 (source = target)");
            let mut verified = true;
            for report in &reports {
                if report.verified() {
                    println!(
                        "{:<13} {:>5}  {}",
                        report.name, report.rows, report.source_sha256
                    );
                } else {
                    verified = false;
                    println!(
                        "{:<13} {:>5}  {}  DIFFERS: the target has {} rows, sha256 {}",
                        report.name,
                        report.rows,
                        report.source_sha256,
                        report.target_rows,
                        report.target_sha256
                    );
                }
            }
            if verified {
                println!(
                    "verified: the target holds exactly what {} holds. Give the replicas the \
                     pepper file of this data directory.",
                    args.from.display()
                );
                ExitCode::SUCCESS
            } else {
                eprintln!(
                    "error: the copy differs from the source (was the target already in use, or \
                     the source server still running?)"
                );
                ExitCode::FAILURE
            }
        }
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn run_migration(
    args: &MigrateArgs,
) -> Result<Vec<tokenauth::store::migrate::TableReport>, String> {
    let source = args.from.join("db");
    if !source.exists() {
        return Err(format!("{}: no database here", source.display()));
    }
    let from = tokenauth::store::sled::SledStore::open(&source)
        .map_err(|e| format!("{}: {e} (is its server still running?)", source.display()))?;
    let mut config = Config {
        store: args.to.clone(),
        ..Config::default()
    };
    config.postgres.password_file = args.password_file.clone();
    config.postgres.ca_file = args.ca_file.clone();
    let url = match config.store_kind().map_err(|e| e.to_string())? {
        tokenauth::config::StoreKind::Postgres(url) => url,
        tokenauth::config::StoreKind::Sled => return Err("--to must be a PostgreSQL URL".into()),
    };
    let settings = server::postgres_settings(&config, url).map_err(|e| e.to_string())?;
    let to = tokenauth::store::postgres::PostgresStore::open(&settings)
        .await
        .map_err(|e| e.to_string())?;
    tokenauth::store::migrate::migrate(&from, &to)
        .await
        .map_err(|e| e.to_string())
}

fn check_config(file: Option<&std::path::Path>) -> ExitCode {
    let config = match Config::load(file, std::env::vars()) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::FAILURE;
        }
    };
    if let Err(error) = config.policy() {
        eprintln!("error: {error}");
        return ExitCode::FAILURE;
    }
    // As the server checks them at start (their files read): a check that
    // passes a config the server refuses would be no check.
    if let Err(error) = tokenauth::config::webhooks::endpoints(&config.webhooks) {
        eprintln!("error: {error}");
        return ExitCode::FAILURE;
    }
    match toml::to_string(&config.redacted()) {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("error: printing the configuration: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Makes a control-plane credential. The credential goes to `out` (mode
/// 0600) or alone to stdout, so it can be piped into a secret store; the
/// config entry admitting it (its hash, no secret) is appended to
/// `config_entry`, or printed on stderr as TOML whose every other line is a
/// comment, so that `2>> tokenauth.toml` also leaves a valid file.
fn generate_credential(
    name: &str,
    out: Option<&std::path::Path>,
    config_entry: Option<&std::path::Path>,
) -> Result<(), String> {
    use sha2::{Digest, Sha256};
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_graphic()) {
        return Err("--name must be non-empty printable ASCII without spaces".into());
    }
    let credential = tokenauth::domain::secret::Secret::generate_control_plane()
        .map_err(|e| format!("the OS random source failed: {e}"))?;
    let hash: String = Sha256::digest(credential.expose().as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let entry = format!(
        "[[control_plane.credentials]]\nname = {}\nsha256 = \"{hash}\"\n",
        toml::Value::String(name.to_owned())
    );
    // Checked before anything is written: a refused entry leaves no
    // credential file behind that nothing admits.
    let addition = match config_entry {
        Some(path) => Some(appended_config(path, name, &entry)?),
        None => None,
    };
    match out {
        Some(path) => {
            write_private(path, &format!("{}\n", credential.expose()), true)?;
            eprintln!(
                "# Wrote the credential to {} (mode 0600). Give it to the control plane; it is \
                 not shown again.",
                path.display()
            );
        }
        None => {
            println!("{}", credential.expose());
            eprintln!(
                "# The credential is on standard output. Give it to the control plane; it is not \
                 shown again."
            );
        }
    }
    match (config_entry, addition) {
        (Some(path), Some(text)) => {
            write_private(path, &text, false)?;
            eprintln!(
                "# Added the entry that admits it to {}; restart the server to use it.",
                path.display()
            );
        }
        _ => eprint!("# Add this entry to the server's config, then restart the server:\n{entry}"),
    }
    Ok(())
}

/// What to append to `path` so that it ends with `entry`, refused unless
/// the result is valid TOML (a file that ends inside a table array or an inline table, or that
/// sets `control_plane.credentials = []`, cannot take the entry as is), or
/// if it would admit two credentials of one name (the server refuses that).
fn appended_config(path: &std::path::Path, name: &str, entry: &str) -> Result<String, String> {
    let existing = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(error) => return Err(format!("{}: {error}", path.display())),
    };
    let separator = if existing.is_empty() || existing.ends_with("\n\n") {
        ""
    } else if existing.ends_with('\n') {
        "\n"
    } else {
        "\n\n"
    };
    let addition = format!("{separator}{entry}");
    let table = toml::from_str::<toml::Table>(&format!("{existing}{addition}")).map_err(|e| {
        format!(
            "{}: the entry cannot be appended (the result would not be valid TOML: {}); add it \
             by hand",
            path.display(),
            e.message()
        )
    })?;
    let names = table
        .get("control_plane")
        .and_then(|c| c.get("credentials"))
        .and_then(toml::Value::as_array)
        .map(|entries| {
            entries
                .iter()
                .filter(|e| e.get("name") == Some(&toml::Value::String(name.to_owned())))
                .count()
        });
    if names > Some(1) {
        return Err(format!(
            "{}: a credential named {name:?} is already there; choose another --name (while \
             rotating: add the new one, move the control plane to it, remove the old one)",
            path.display()
        ));
    }
    Ok(addition)
}

/// Writes `text` to `path`, creating it with mode 0600: as a new file when
/// `new` (an existing file is an error), else appended (an existing file
/// keeps its mode).
fn write_private(path: &std::path::Path, text: &str, new: bool) -> Result<(), String> {
    use std::{io::Write, os::unix::fs::OpenOptionsExt};
    let mut options = std::fs::OpenOptions::new();
    options.write(true).mode(0o600);
    if new {
        options.create_new(true);
    } else {
        options.create(true).append(true);
    }
    let mut file = options
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| format!("{}: {e}", path.display()))
}

fn serve(args: ServeArgs) -> ExitCode {
    let mut config = match Config::load(args.config.as_deref(), std::env::vars()) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("error: invalid configuration: {error}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    if let Some(data_dir) = args.data_dir {
        config.data_dir = data_dir;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: starting the async runtime failed: {error}");
            return ExitCode::FAILURE;
        }
    };
    // Inside the runtime: the OTLP exporters spawn onto it.
    let _entered = runtime.enter();
    let telemetry = match telemetry::init(
        &args.log,
        log_format(args.log_format),
        config.telemetry.otlp_endpoint.as_deref(),
    ) {
        Ok(telemetry) => telemetry,
        Err(error) => {
            eprintln!("error: starting logs and traces: {error}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(run(config));
    telemetry.shutdown();
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(%error, "tokenauth stopped");
            ExitCode::FAILURE
        }
    }
}

fn log_format(format: LogFormat) -> telemetry::LogFormat {
    use std::io::IsTerminal;
    let terminal = std::io::stderr().is_terminal();
    match (format, terminal) {
        (LogFormat::Text, _) | (LogFormat::Auto, true) => {
            telemetry::LogFormat::Text { ansi: terminal }
        }
        (LogFormat::Json, _) | (LogFormat::Auto, false) => telemetry::LogFormat::Json,
    }
}

async fn run(config: Config) -> Result<(), server::ServerError> {
    let mut running = server::start(config).await?;
    tokio::select! {
        result = running.wait() => return result,
        () = shutdown_signal() => tracing::info!("shutdown signal received"),
    }
    running.shutdown().await
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            tracing::warn!("cannot install signal handlers; only ctrl-c will stop the server");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// clap's own checks of the definitions (unique names, valid
    /// requirements), which it otherwise makes only when a command runs.
    #[test]
    fn the_command_line_is_well_formed() {
        super::Cli::command().debug_assert();
    }
}
