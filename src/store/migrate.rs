//! `tokenauth migrate`: copies a sled database into PostgreSQL, verifiably.
//!
//! Every table is copied in key order in batches. The source wins: a row the
//! target already holds is replaced by the source's when they differ, so
//! the command can be run again after an interruption, or after the source
//! changed (a token revoked on sled since), and the copy converges. Rows
//! the source no longer holds are not deleted (the target may hold tokens
//! of its own). Then each table is read back from PostgreSQL in the same
//! order and its count and SHA-256 compared with the source's: the copy is
//! verified only if every table matches exactly.
//!
//! The statements themselves live with the schema (`postgres/schema.rs`).
//!
//! A target whose revocation log has entries is refused: replicas have
//! revoked or rotated there, and the source winning would bring revoked
//! tokens and retired secrets back to life.

use deadpool_postgres::GenericClient;
use sha2::{Digest as _, Sha256};

use super::{
    StoreError,
    keys::{self, decode_usage_tail, usage_keys},
    postgres::{PostgresStore, schema},
    records::{decode_client_addresses, decode_member, decode_token, kind_number},
    sled::SledStore,
};
use crate::domain::time::Timestamp;

/// Rows per INSERT.
const BATCH: usize = 1000;

/// One table's outcome.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableReport {
    pub name: &'static str,
    pub rows: u64,
    pub source_sha256: String,
    pub target_rows: u64,
    pub target_sha256: String,
}

impl TableReport {
    pub fn verified(&self) -> bool {
        self.rows == self.target_rows && self.source_sha256 == self.target_sha256
    }
}

/// Count and SHA-256 of a sequence of (key, value) pairs.
#[derive(Default)]
struct Fingerprint {
    rows: u64,
    hash: Sha256,
}

impl Fingerprint {
    fn add(&mut self, key: &[u8], value: &[u8]) {
        self.rows += 1;
        for part in [key, value] {
            self.hash
                .update(u32::try_from(part.len()).unwrap_or(u32::MAX).to_be_bytes());
            self.hash.update(part);
        }
    }

    fn finish(self) -> (u64, String) {
        let digest = self.hash.finalize();
        (
            self.rows,
            digest.iter().map(|b| format!("{b:02x}")).collect(),
        )
    }
}

/// The tables, as (name, sled tree, key prefix, the target's rows as
/// (key, value) in key order).
const TABLES: &[(&str, &str, &[u8], &str)] = &[
    ("tokens", keys::TOKENS, b"", schema::READ_BACK_TOKENS),
    ("digests", keys::DIGESTS, b"", schema::READ_BACK_DIGESTS),
    ("audit", keys::AUDIT, b"", schema::READ_BACK_AUDIT),
    ("usage", keys::USAGE_ROWS, b"", schema::READ_BACK_USAGE),
    (
        "last_used",
        keys::LAST_USED,
        b"",
        schema::READ_BACK_LAST_USED,
    ),
    (
        "client_addresses",
        keys::CLIENT_ADDRESSES,
        b"",
        schema::READ_BACK_CLIENT_ADDRESSES,
    ),
    ("members", keys::MEMBERS, b"", schema::READ_BACK_MEMBERS),
    (
        "pepper_checks",
        keys::META,
        keys::PEPPER_CHECK_PREFIX,
        // The id as sled keys it: four bytes, big-endian (ids are u32, so
        // not every one fits an int4).
        schema::READ_BACK_PEPPER_CHECKS,
    ),
];

/// Copies everything in `from` into `to`, then verifies the copy table by table.
pub async fn migrate(from: &SledStore, to: &PostgresStore) -> Result<Vec<TableReport>, StoreError> {
    refuse_if_in_use(&to.client().await?).await?;
    let mut reports = Vec::new();
    for &(name, tree, prefix, select) in TABLES {
        let mut source = Fingerprint::default();
        let mut batch = Vec::with_capacity(BATCH);
        for entry in from.scan_tree(tree, prefix)? {
            let (key, value) = entry?;
            // The sled meta tree keys pepper checks by a prefix and the id.
            let key = key[prefix.len()..].to_vec();
            source.add(&key, &value);
            batch.push((key, value));
            if batch.len() == BATCH {
                insert(to, name, &batch).await?;
                batch.clear();
            }
        }
        insert(to, name, &batch).await?;
        let mut target = Fingerprint::default();
        let client = to.client().await?;
        for row in client.query(select, &[]).await? {
            target.add(row.try_get(0)?, row.try_get(1)?);
        }
        let (rows, source_sha256) = source.finish();
        let (target_rows, target_sha256) = target.finish();
        reports.push(TableReport {
            name,
            rows,
            source_sha256,
            target_rows,
            target_sha256,
        });
    }
    Ok(reports)
}

/// Refuses a target that replicas have revoked or rotated in: copying the
/// source over it could bring revoked tokens and retired secrets back. Only
/// a replica writes the revocation log (this command does not). Inside a
/// batch's transaction, the share lock on the log's counter orders the check
/// against a revocation committing meanwhile: either the revocation came
/// first and is seen here, or it waits for the batch and applies over it.
async fn refuse_if_in_use(client: &impl GenericClient) -> Result<(), StoreError> {
    let logged: i64 = client
        .query_one(schema::CLOCK_FOR_SHARE, &[])
        .await?
        .try_get(0)?;
    if logged > 0 {
        return Err(StoreError::Unsupported(
            "the target database is in use: replicas have revoked or rotated tokens in it, and \
             copying the source over it could bring revoked tokens and retired secrets back; \
             migrate into an empty database",
        ));
    }
    Ok(())
}

fn corrupt(what: &str) -> StoreError {
    StoreError::Corrupt(format!("source {what}"))
}

fn i64_of(bytes: &[u8], what: &str) -> Result<i64, StoreError> {
    Ok(i64::from_be_bytes(
        bytes.try_into().map_err(|_| corrupt(what))?,
    ))
}

/// Writes one batch of `table`'s (key, value) pairs: inserts the new ones and
/// replaces those that differ (rows that are the same are not rewritten).
async fn insert(
    to: &PostgresStore,
    table: &str,
    batch: &[(Vec<u8>, Vec<u8>)],
) -> Result<(), StoreError> {
    if batch.is_empty() {
        return Ok(());
    }
    let mut client = to.client().await?;
    let tx = client.transaction().await?;
    refuse_if_in_use(&tx).await?;
    let column = |i: usize| -> Vec<Vec<u8>> {
        batch
            .iter()
            .map(|(k, v)| if i == 0 { k.clone() } else { v.clone() })
            .collect()
    };
    let (keys, values) = (column(0), column(1));
    match table {
        "tokens" => {
            let mut orgs = Vec::new();
            let mut workspaces = Vec::new();
            let mut owners = Vec::new();
            let mut kinds = Vec::new();
            let mut expires = Vec::new();
            let mut revoked = Vec::new();
            for value in &values {
                let record = decode_token(value)?;
                orgs.push(record.org_id);
                workspaces.push(record.workspace_id);
                owners.push(record.owner_user_id);
                kinds.push(kind_number(record.kind) as i16);
                expires.push(record.expires_at.map(Timestamp::as_micros));
                revoked.push(record.revoked_at.map(Timestamp::as_micros));
            }
            tx.execute(
                schema::COPY_TOKENS,
                &[
                    &keys,
                    &values,
                    &orgs,
                    &workspaces,
                    &owners,
                    &kinds,
                    &expires,
                    &revoked,
                ],
            )
            .await?;
        }
        "digests" => {
            tx.execute(schema::COPY_DIGESTS, &[&keys, &values]).await?;
        }
        "audit" => {
            let ids = keys
                .iter()
                .map(|k| {
                    k.len()
                        .checked_sub(16)
                        .map(|start| k[start..].to_vec())
                        .ok_or_else(|| corrupt("audit key"))
                })
                .collect::<Result<Vec<_>, _>>()?;
            tx.execute(schema::COPY_AUDIT, &[&keys, &values, &ids])
                .await?;
        }
        "usage" => {
            let mut token_keys = Vec::new();
            let mut minutes = Vec::new();
            let mut counts = Vec::new();
            let mut resolutions = Vec::new();
            for (key, value) in batch {
                let (org, tail) = keys::take_part(key).ok_or_else(|| corrupt("usage key"))?;
                let record = decode_usage_tail(org, None, tail, value)?;
                let [_, _, by_token] = usage_keys(&record);
                token_keys.push(by_token);
                minutes.push(record.minute.as_micros());
                counts.push(i64::try_from(record.count).unwrap_or(i64::MAX));
                resolutions.push(record.resolution as i16);
            }
            tx.execute(
                schema::COPY_USAGE,
                &[&keys, &token_keys, &minutes, &counts, &resolutions],
            )
            .await?;
        }
        "last_used" => {
            let times = values
                .iter()
                .map(|v| i64_of(v, "last-used time"))
                .collect::<Result<Vec<_>, _>>()?;
            if keys.iter().any(|k| k.len() != 16) {
                return Err(corrupt("last-used token id"));
            }
            tx.execute(schema::COPY_LAST_USED, &[&keys, &times]).await?;
        }
        "client_addresses" => {
            if keys.iter().any(|k| k.len() != 16) {
                return Err(corrupt("client addresses token id"));
            }
            for value in &values {
                decode_client_addresses(value)?;
            }
            tx.execute(schema::COPY_CLIENT_ADDRESSES, &[&keys, &values])
                .await?;
        }
        "members" => {
            let (mut orgs, mut users) = (Vec::new(), Vec::new());
            for value in &values {
                let member = decode_member(value)?;
                orgs.push(member.org_id);
                users.push(member.user_id);
            }
            tx.execute(schema::COPY_MEMBERS, &[&keys, &values, &orgs, &users])
                .await?;
        }
        "pepper_checks" => {
            let ids = keys
                .iter()
                .map(|k| {
                    <[u8; 4]>::try_from(k.as_slice())
                        .map(|b| i64::from(u32::from_be_bytes(b)))
                        .map_err(|_| corrupt("pepper key id"))
                })
                .collect::<Result<Vec<_>, _>>()?;
            tx.execute(schema::COPY_PEPPER_CHECKS, &[&ids, &values])
                .await?;
        }
        other => return Err(StoreError::Corrupt(format!("unknown table {other}"))),
    }
    tx.commit().await?;
    Ok(())
}
