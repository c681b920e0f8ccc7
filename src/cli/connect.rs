//! Reaching the server: the channel (plaintext, TLS or mTLS) and the
//! credential read from a private file, sent as `authorization: Bearer`.

use std::{io::Read, os::unix::fs::PermissionsExt, path::Path, time::Duration};

use tokenauth::proto::{
    audit_service_client::AuditServiceClient, token_service_client::TokenServiceClient,
};
use tonic::{
    Request, Status,
    metadata::{Ascii, MetadataValue},
    service::{Interceptor, interceptor::InterceptedService},
    transport::{Certificate, Channel, ClientTlsConfig, Identity},
};

use super::{CliError, ClientArgs};

/// A credential file longer than this is not a credential (ours are 55
/// characters); it is refused rather than read whole.
const MAX_CREDENTIAL_BYTES: u64 = 4096;

/// Adds the credential to every call.
#[derive(Clone)]
pub struct Bearer(MetadataValue<Ascii>);

impl Interceptor for Bearer {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        request
            .metadata_mut()
            .insert("authorization", self.0.clone());
        Ok(request)
    }
}

pub type Authed = InterceptedService<Channel, Bearer>;

/// The connected clients of the services the commands call.
pub struct Clients {
    pub tokens: TokenServiceClient<Authed>,
    pub audit: AuditServiceClient<Authed>,
}

/// Reads the credential, then connects: a usage error never waits on the network.
pub async fn connect(args: &ClientArgs) -> Result<Clients, CliError> {
    let file = args.credential_file.as_deref().ok_or_else(|| {
        CliError::Usage(
            "no credential: give --credential-file FILE or set TOKENAUTH_CREDENTIAL_FILE".into(),
        )
    })?;
    let bearer = Bearer(read_credential(file)?);
    let channel = channel(args).await?;
    Ok(Clients {
        tokens: TokenServiceClient::with_interceptor(channel.clone(), bearer.clone()),
        audit: AuditServiceClient::with_interceptor(channel, bearer),
    })
}

/// The `Bearer` header value of the credential in `file`, refused when the
/// file is readable by its group or others: a secret is kept private, and a
/// file that is not has perhaps leaked already.
pub fn read_credential(file: &Path) -> Result<MetadataValue<Ascii>, CliError> {
    let unreadable = |e: std::io::Error| CliError::Usage(format!("{}: {e}", file.display()));
    let mut opened = std::fs::File::open(file).map_err(unreadable)?;
    let metadata = opened.metadata().map_err(unreadable)?;
    let mode = metadata.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(CliError::Usage(format!(
            "{}: a credential file must be readable by its owner only, and this one has mode \
             {mode:04o}: run `chmod 600 {}` (and, if others could read it, replace the credential)",
            file.display(),
            file.display()
        )));
    }
    if metadata.len() > MAX_CREDENTIAL_BYTES {
        return Err(CliError::Usage(format!(
            "{}: not a credential (longer than {MAX_CREDENTIAL_BYTES} bytes)",
            file.display()
        )));
    }
    let mut text = String::new();
    (&mut opened)
        .take(MAX_CREDENTIAL_BYTES)
        .read_to_string(&mut text)
        .map_err(unreadable)?;
    // The content is never echoed: it is a secret, even when malformed.
    let credential = text.trim();
    if credential.is_empty() || credential.contains(char::is_whitespace) {
        return Err(CliError::Usage(format!(
            "{}: not a credential (one line, no spaces, expected)",
            file.display()
        )));
    }
    format!("Bearer {credential}")
        .parse()
        .map_err(|_| CliError::Usage(format!("{}: not a credential", file.display())))
}

/// The channel to `--server`, over TLS for `https://`.
async fn channel(args: &ClientArgs) -> Result<Channel, CliError> {
    let server = &args.server;
    let tls = match server.split_once("://") {
        Some(("http", _)) => false,
        Some(("https", _)) => true,
        _ => {
            return Err(CliError::Usage(format!(
                "--server {server}: give the server as http://HOST:PORT or https://HOST:PORT"
            )));
        }
    };
    let mut endpoint = Channel::from_shared(server.clone())
        .map_err(|e| CliError::Usage(format!("--server {server}: not a URL: {e}")))?
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(60));
    if tls {
        let ca = args.ca.as_deref().ok_or_else(|| {
            CliError::Usage(format!(
                "--server {server}: TLS needs --ca (the CA that signs the server's certificate)"
            ))
        })?;
        let mut config = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(ca)?));
        if let (Some(cert), Some(key)) = (&args.cert, &args.key) {
            config = config.identity(Identity::from_pem(read(cert)?, read(key)?));
        }
        endpoint = endpoint
            .tls_config(config)
            .map_err(|e| CliError::Usage(format!("TLS: {}", causes(&e))))?;
    } else if args.ca.is_some() || args.cert.is_some() {
        return Err(CliError::Usage(format!(
            "--server {server}: --ca, --cert and --key need an https:// server"
        )));
    }
    endpoint
        .connect()
        .await
        .map_err(|e| CliError::Unavailable(format!("cannot connect to {server}: {}", causes(&e))))
}

fn read(path: &Path) -> Result<Vec<u8>, CliError> {
    std::fs::read(path).map_err(|e| CliError::Usage(format!("{}: {e}", path.display())))
}

/// An error and its causes, `outer: inner`: tonic's transport error says
/// only "transport error", and the reason is in its sources.
pub fn causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.ends_with(&cause_text) {
            text = format!("{text}: {cause_text}");
        }
        source = cause.source();
    }
    text
}
