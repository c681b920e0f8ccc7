//! Key layout of the sled trees.
//!
//! Index keys are built from length-prefixed parts (one length byte, then the
//! bytes; ids are at most 128 bytes) followed by the 16-byte token id, so no
//! choice of org, workspace or user id can make two index prefixes overlap,
//! and a prefix scan finds exactly one org's (or workspace's, or owner's) tokens.

use crate::domain::ids::{MAX_ID_BYTES, TokenId};

/// Names of the trees.
pub const TOKENS: &str = "tokens";
pub const DIGESTS: &str = "digests";
pub const BY_ORG: &str = "idx_org";
pub const BY_WORKSPACE: &str = "idx_org_workspace";
pub const BY_OWNER: &str = "idx_org_owner";
pub const LAST_USED: &str = "last_used";
pub const META: &str = "meta";

const _: () = assert!(MAX_ID_BYTES <= u8::MAX as usize);

/// Appends one length-prefixed part.
fn push_part(key: &mut Vec<u8>, part: &str) {
    // Domain validation bounds ids to MAX_ID_BYTES, which fits one byte.
    let len = u8::try_from(part.len()).unwrap_or(u8::MAX);
    key.push(len);
    key.extend_from_slice(&part.as_bytes()[..usize::from(len)]);
}

/// The prefix of every index key for these parts.
pub fn prefix(parts: &[&str]) -> Vec<u8> {
    let mut key = Vec::with_capacity(parts.iter().map(|p| p.len() + 1).sum::<usize>() + 16);
    for part in parts {
        push_part(&mut key, part);
    }
    key
}

/// An index key: the parts, then the token id.
pub fn index_key(parts: &[&str], id: TokenId) -> Vec<u8> {
    let mut key = prefix(parts);
    key.extend_from_slice(&id.to_bytes());
    key
}

/// The token id at the end of an index key.
pub fn id_of_index_key(key: &[u8]) -> Option<TokenId> {
    let start = key.len().checked_sub(16)?;
    let bytes: [u8; 16] = key[start..].try_into().ok()?;
    Some(TokenId::from_bytes(bytes))
}

/// The meta key of a pepper key's check value.
pub fn pepper_check_key(key_id: u32) -> Vec<u8> {
    let mut key = b"pepper_check/".to_vec();
    key.extend_from_slice(&key_id.to_be_bytes());
    key
}

pub const PEPPER_CHECK_PREFIX: &[u8] = b"pepper_check/";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_of_different_parts_never_overlap() {
        // Without length prefixes, ("ab", "c") and ("a", "bc") would share a prefix.
        let a = prefix(&["ab", "c"]);
        let b = prefix(&["a", "bc"]);
        assert!(!a.starts_with(&b) && !b.starts_with(&a));
        let org = prefix(&["org"]);
        let longer_org = prefix(&["org2"]);
        assert!(!longer_org.starts_with(&org));
    }

    #[test]
    fn index_keys_end_with_their_id() {
        let id = TokenId::from_bytes([9; 16]);
        let key = index_key(&["org", "ws"], id);
        assert!(key.starts_with(&prefix(&["org", "ws"])));
        assert_eq!(id_of_index_key(&key), Some(id));
        assert_eq!(id_of_index_key(&[1, 2]), None);
    }
}
