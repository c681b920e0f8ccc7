//! How PostgreSQL's rows and errors become the store's: the token record
//! of a row, the digests a revocation logs, and the error categories.

use tokio_postgres::Row;

use crate::domain::token::TokenRecord;
use crate::store::{StoreError, records::decode_token};

impl From<tokio_postgres::Error> for StoreError {
    fn from(error: tokio_postgres::Error) -> Self {
        // What the error is (its SQLSTATE, message, and the table and
        // constraint it names), never its DETAIL or WHERE: those quote row
        // values, such as the digest a unique violation on `digests` is
        // about, and the cause ends up in the logs.
        match error.as_db_error() {
            Some(db) => {
                let mut cause =
                    format!("postgres: {} (SQLSTATE {}", db.message(), db.code().code());
                for (what, name) in [("table", db.table()), ("constraint", db.constraint())] {
                    if let Some(name) = name {
                        cause.push_str(&format!(", {what} {name}"));
                    }
                }
                cause.push(')');
                StoreError::Unavailable(cause)
            }
            // Its Display leaves the cause out ("error connecting to
            // server"); the cause (refused, timed out, a standby) is what
            // an operator needs, and carries no row data.
            None => match std::error::Error::source(&error) {
                Some(cause) => StoreError::Unavailable(format!("postgres: {error}: {cause}")),
                None => StoreError::Unavailable(format!("postgres: {error}")),
            },
        }
    }
}

impl From<deadpool_postgres::PoolError> for StoreError {
    fn from(error: deadpool_postgres::PoolError) -> Self {
        match error {
            // The database's own reason (no such database, authentication
            // failed...), which the pool's Display reduces to "db error".
            deadpool_postgres::PoolError::Backend(error) => StoreError::from(error),
            other => StoreError::Unavailable(format!("postgres connection pool: {other}")),
        }
    }
}

pub(super) fn bytes16(value: &[u8], what: &str) -> Result<[u8; 16], StoreError> {
    value
        .try_into()
        .map_err(|_| StoreError::Corrupt(format!("{what}: expected 16 bytes")))
}

pub(super) fn record_of(row: &Row) -> Result<TokenRecord, StoreError> {
    decode_token(row.try_get::<_, &[u8]>("record")?)
}

/// Everything the revocation log must say about `records`: the digests of
/// their secrets.
pub(super) fn digests_of<'a>(records: impl IntoIterator<Item = &'a TokenRecord>) -> Vec<Vec<u8>> {
    records
        .into_iter()
        .flat_map(|r| r.secrets.iter().map(|s| s.digest.0.to_vec()))
        .collect()
}
