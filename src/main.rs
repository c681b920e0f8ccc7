//! The `tokenauth` binary: parse the command line, load the configuration,
//! start logging, and run the server (or a maintenance command).

use std::{net::SocketAddr, path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
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
    },
}

#[derive(clap::Args)]
struct ServeArgs {
    /// TOML configuration file (optional: every setting has a default).
    #[arg(long, env = "TOKENAUTH_CONFIG")]
    config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:50051; variable: TOKENAUTH_LISTEN].
    #[arg(long)]
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
        /// Data directory whose pepper file to rotate [default: ./data].
        #[arg(long, env = "TOKENAUTH_DATA_DIR", default_value = "data")]
        data_dir: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => serve(args),
        Command::Credential {
            action: CredentialAction::Generate { name },
        } => generate_credential(&name),
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
    let credential = std::fs::read_to_string(credential_file)
        .map_err(|e| format!("{}: {e}", credential_file.display()))?;
    let bearer = format!("Bearer {}", credential.trim())
        .parse()
        .map_err(|_| format!("{}: not a credential", credential_file.display()))?;
    let channel = tonic::transport::Channel::from_shared(server.to_owned())
        .map_err(|e| format!("{server}: {e}"))?
        .connect()
        .await
        .map_err(|e| format!("{server}: {e}"))?;
    let mut request = tonic::Request::new(tokenauth::proto::BackupRequest {});
    request.metadata_mut().insert("authorization", bearer);
    let mut stream = tokenauth::proto::admin_service_client::AdminServiceClient::new(channel)
        .backup(request)
        .await
        .map_err(|s| s.message().to_owned())?
        .into_inner();
    // Written beside the target and renamed at the end: a failed backup
    // never leaves a plausible-looking partial file.
    let partial = out.with_extension("partial");
    // Mode 0600: a backup holds every token record and audit event.
    let mut file = tokenauth::private_fs::create_file(&partial)
        .map_err(|e| format!("{}: {e}", partial.display()))?;
    let mut bytes = 0u64;
    while let Some(chunk) = stream.message().await.map_err(|s| s.message().to_owned())? {
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
    match tokenauth::store::backup::restore(from, &data_dir.join("db")) {
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
    let from = tokenauth::store::SledStore::open(&source)
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

fn generate_credential(name: &str) -> ExitCode {
    use sha2::{Digest, Sha256};
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_graphic()) {
        eprintln!("error: --name must be non-empty printable ASCII without spaces");
        return ExitCode::FAILURE;
    }
    let credential = match tokenauth::domain::secret::Secret::generate_control_plane() {
        Ok(credential) => credential,
        Err(error) => {
            eprintln!("error: the OS random source failed: {error}");
            return ExitCode::FAILURE;
        }
    };
    let hash: String = Sha256::digest(credential.expose().as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    // The credential goes to stdout alone, so it can be piped into a secret store;
    // the config entry (no secret in it) goes to stderr.
    println!("{}", credential.expose());
    eprintln!(
        "Give the line above to the control plane (it is shown once). Add this to the config:\n\n\
         [[control_plane.credentials]]\nname = \"{name}\"\nsha256 = \"{hash}\""
    );
    ExitCode::SUCCESS
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
