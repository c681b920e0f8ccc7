//! How a token record is encoded on disk: a format byte, then a protobuf
//! message declared here with prost's derive. Protobuf lets fields be added
//! later without rewriting old records; the format byte leaves room for more.

use prost::Message;

use super::StoreError;
use crate::domain::{
    ids::TokenId,
    secret::Digest,
    time::Timestamp,
    token::{StoredSecret, TokenKind, TokenRecord},
};

const FORMAT_V1: u8 = 1;

#[derive(Clone, PartialEq, Message)]
struct SecretV1 {
    #[prost(uint32, tag = "1")]
    key_id: u32,
    #[prost(bytes = "vec", tag = "2")]
    digest: Vec<u8>,
    #[prost(string, tag = "3")]
    hint: String,
    #[prost(int64, optional, tag = "4")]
    retired_at: Option<i64>,
}

#[derive(Clone, PartialEq, Message)]
struct TokenV1 {
    #[prost(bytes = "vec", tag = "1")]
    id: Vec<u8>,
    /// 1 personal, 2 service.
    #[prost(uint32, tag = "2")]
    kind: u32,
    #[prost(string, tag = "3")]
    org_id: String,
    #[prost(string, tag = "4")]
    workspace_id: String,
    #[prost(string, tag = "5")]
    name: String,
    #[prost(string, tag = "6")]
    owner_user_id: String,
    #[prost(string, tag = "7")]
    created_by: String,
    #[prost(string, repeated, tag = "8")]
    permissions: Vec<String>,
    #[prost(int64, tag = "9")]
    created_at: i64,
    #[prost(int64, optional, tag = "10")]
    expires_at: Option<i64>,
    #[prost(int64, optional, tag = "11")]
    revoked_at: Option<i64>,
    #[prost(message, repeated, tag = "12")]
    secrets: Vec<SecretV1>,
}

pub fn encode_token(record: &TokenRecord) -> Vec<u8> {
    let message = TokenV1 {
        id: record.id.to_bytes().to_vec(),
        kind: match record.kind {
            TokenKind::Personal => 1,
            TokenKind::Service => 2,
        },
        org_id: record.org_id.clone(),
        workspace_id: record.workspace_id.clone(),
        name: record.name.clone(),
        owner_user_id: record.owner_user_id.clone(),
        created_by: record.created_by.clone(),
        permissions: record.permissions.clone(),
        created_at: record.created_at.as_micros(),
        expires_at: record.expires_at.map(Timestamp::as_micros),
        revoked_at: record.revoked_at.map(Timestamp::as_micros),
        secrets: record
            .secrets
            .iter()
            .map(|s| SecretV1 {
                key_id: s.key_id,
                digest: s.digest.0.to_vec(),
                hint: s.hint.clone(),
                retired_at: s.retired_at.map(Timestamp::as_micros),
            })
            .collect(),
    };
    let mut out = Vec::with_capacity(1 + message.encoded_len());
    out.push(FORMAT_V1);
    message.encode_raw(&mut out);
    out
}

pub fn decode_token(bytes: &[u8]) -> Result<TokenRecord, StoreError> {
    let corrupt = |what: &str| StoreError::Corrupt(format!("token record: {what}"));
    let (&format, body) = bytes.split_first().ok_or_else(|| corrupt("empty"))?;
    if format != FORMAT_V1 {
        return Err(corrupt(&format!("unknown format {format}")));
    }
    let message = TokenV1::decode(body).map_err(|e| corrupt(&e.to_string()))?;
    let id: [u8; 16] = message
        .id
        .as_slice()
        .try_into()
        .map_err(|_| corrupt("id"))?;
    let kind = match message.kind {
        1 => TokenKind::Personal,
        2 => TokenKind::Service,
        other => return Err(corrupt(&format!("kind {other}"))),
    };
    let secrets = message
        .secrets
        .into_iter()
        .map(|s| {
            let digest: [u8; 32] = s
                .digest
                .as_slice()
                .try_into()
                .map_err(|_| corrupt("digest"))?;
            Ok(StoredSecret {
                key_id: s.key_id,
                digest: Digest(digest),
                hint: s.hint,
                retired_at: s.retired_at.map(Timestamp::from_micros),
            })
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
    if secrets.is_empty() {
        return Err(corrupt("no secret"));
    }
    Ok(TokenRecord {
        id: TokenId::from_bytes(id),
        kind,
        org_id: message.org_id,
        workspace_id: message.workspace_id,
        name: message.name,
        owner_user_id: message.owner_user_id,
        created_by: message.created_by,
        permissions: message.permissions,
        created_at: Timestamp::from_micros(message.created_at),
        expires_at: message.expires_at.map(Timestamp::from_micros),
        revoked_at: message.revoked_at.map(Timestamp::from_micros),
        secrets,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> TokenRecord {
        TokenRecord {
            id: TokenId::from_bytes([3; 16]),
            kind: TokenKind::Personal,
            org_id: "org".into(),
            workspace_id: String::new(),
            name: "laptop".into(),
            owner_user_id: "u1".into(),
            created_by: "u1".into(),
            permissions: vec!["scim:read".into()],
            created_at: Timestamp::from_micros(5),
            expires_at: Some(Timestamp::from_micros(10)),
            revoked_at: None,
            secrets: vec![StoredSecret {
                key_id: 2,
                digest: Digest([4; 32]),
                hint: "tkpat_abcd".into(),
                retired_at: Some(Timestamp::from_micros(-3)),
            }],
        }
    }

    #[test]
    fn records_round_trip() {
        let record = sample();
        assert_eq!(decode_token(&encode_token(&record)).unwrap(), record);
    }

    #[test]
    fn damaged_records_are_reported_not_panicked_on() {
        let good = encode_token(&sample());
        assert!(decode_token(&[]).is_err());
        assert!(decode_token(&[9]).is_err());
        for cut in 1..good.len() {
            // Every truncation either decodes to something or errors; never panics.
            let _ = decode_token(&good[..cut]);
        }
        assert!(decode_token(&good[..good.len() - 3]).is_err());
    }
}
