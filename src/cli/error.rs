//! What a client command's failure prints (one line) and its exit code.

use std::process::ExitCode;

use tonic::{Code, Status};

/// A client command's failure.
#[derive(Debug)]
pub enum CliError {
    /// Bad flags or local setup (a missing or unsafe credential file): exit 2.
    Usage(String),
    /// The server answered with an error status: exit 3 (refused), 4
    /// (unavailable) or 1 (anything else), by its code.
    Status(Status),
    /// The server could not be reached: exit 4.
    Unavailable(String),
    /// Anything else (local I/O, an answer that makes no sense): exit 1.
    Failed(String),
    /// Standard output was closed by its reader (`| head`): stop quietly.
    OutputClosed,
}

impl CliError {
    /// An error writing standard output.
    pub fn from_output(error: std::io::Error) -> Self {
        if error.kind() == std::io::ErrorKind::BrokenPipe {
            Self::OutputClosed
        } else {
            Self::Failed(format!("writing the output: {error}"))
        }
    }

    /// The exit code scripts can tell apart.
    pub fn exit_code(&self) -> ExitCode {
        ExitCode::from(match self {
            Self::Usage(_) => 2,
            Self::Status(status) => match status.code() {
                Code::InvalidArgument
                | Code::NotFound
                | Code::AlreadyExists
                | Code::PermissionDenied
                | Code::Unauthenticated
                | Code::FailedPrecondition
                | Code::OutOfRange
                | Code::Unimplemented => 3,
                Code::Unavailable
                | Code::DeadlineExceeded
                | Code::ResourceExhausted
                | Code::Aborted
                | Code::Cancelled => 4,
                Code::Ok | Code::Unknown | Code::Internal | Code::DataLoss => 1,
            },
            Self::Unavailable(_) => 4,
            Self::Failed(_) => 1,
            // As a `head` reader expects of its writer: not an error.
            Self::OutputClosed => 0,
        })
    }

    /// The one line printed on stderr (none when the output was closed).
    pub fn line(&self) -> Option<String> {
        let text = match self {
            Self::Usage(text) | Self::Unavailable(text) | Self::Failed(text) => text.clone(),
            // grpcurl's spelling of the code, then the server's message,
            // which never holds a secret (the server returns none after
            // issuance).
            Self::Status(status) => format!("{:?}: {}", status.code(), status.message()),
            Self::OutputClosed => return None,
        };
        Some(format!("error: {}", one_line(&text)))
    }
}

/// `text` with its control characters (line breaks, escapes) made spaces,
/// so that an error is one line and cannot move a terminal's cursor.
fn one_line(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_is_one_line_naming_its_code() {
        let error = CliError::Status(Status::not_found("no token\ntok_1\x1b[2J"));
        assert_eq!(
            error.line().as_deref(),
            Some("error: NotFound: no token tok_1 [2J")
        );
        assert_eq!(error.exit_code(), ExitCode::from(3));
        assert_eq!(
            CliError::Status(Status::unavailable("x")).exit_code(),
            ExitCode::from(4)
        );
        assert_eq!(
            CliError::Status(Status::internal("x")).exit_code(),
            ExitCode::from(1)
        );
        assert_eq!(CliError::OutputClosed.line(), None);
    }
}
