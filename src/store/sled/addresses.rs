//! The `client_addresses` tree: token id -> its latest client addresses
//! (`records::encode_client_addresses`).

use super::trees::Trees;
use crate::{
    domain::{client_address::RecentAddresses, ids::TokenId},
    store::{
        StoreError,
        records::{decode_client_addresses, encode_client_addresses},
    },
};

pub(super) fn read(trees: &Trees, id: TokenId) -> Result<RecentAddresses, StoreError> {
    trees.client_addresses.get(id.to_bytes())?.map_or_else(
        || Ok(RecentAddresses::default()),
        |v| decode_client_addresses(&v),
    )
}

pub(super) fn record(trees: &Trees, seen: &[(TokenId, RecentAddresses)]) -> Result<(), StoreError> {
    for (id, addresses) in seen {
        // Merged with what is stored, so that a slow flush moves nothing
        // back. A row that does not decode is replaced by what was seen:
        // it is a forensic hint, and the alternative is to keep none.
        trees
            .client_addresses
            .fetch_and_update(id.to_bytes(), |old| {
                let mut merged = old
                    .and_then(|v| decode_client_addresses(v).ok())
                    .unwrap_or_default();
                merged.merge(addresses);
                Some(encode_client_addresses(&merged))
            })?;
    }
    Ok(())
}
