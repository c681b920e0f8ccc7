//! Who is calling a management RPC, as a value the domain receives.
//!
//! The API layer builds a [`Caller`] from the transport (peer address, and
//! later the `authorization` metadata) before any handler logic runs, so that
//! handlers never parse metadata themselves. Management authorization will
//! turn [`Principal`] into verified identities; until then every management
//! caller is [`Principal::Unverified`], which is why the service listens on
//! loopback by default.

use std::net::SocketAddr;

/// The verified identity behind a request, if any.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Principal {
    /// No credential was verified for this call.
    Unverified,
}

/// A management call's origin.
#[derive(Clone, Debug)]
pub struct Caller {
    pub principal: Principal,
    /// The remote address of the connection, when known.
    pub peer: Option<SocketAddr>,
}

impl Caller {
    /// What `created_by` records for tokens this caller issues.
    pub fn actor(&self) -> String {
        match self.principal {
            Principal::Unverified => "unverified".to_owned(),
        }
    }
}
