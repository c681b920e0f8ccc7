//! The index scans behind listing tokens and audit events: newest first,
//! a page at a time, each bounded in the entries it examines.

use sled::Tree;

use super::trees::Trees;
use crate::domain::{audit::AuditQuery, ids::EventId};
use crate::store::{
    AuditPage, Page, PageRequest, StoreError, TokenQuery,
    keys::{self, audit_scan_range},
    records::decode_audit,
};

/// Most index entries one list call examines before returning a short page.
pub(super) const MAX_SCAN_PER_PAGE: usize = 5_000;

impl Trees {
    /// The index and key prefix that serve `query` with the narrowest scan.
    pub(super) fn index_for(&self, query: &TokenQuery) -> (&Tree, Vec<u8>) {
        let (index, prefix) = keys::index_scope(query);
        let trees = [&self.by_org, &self.by_workspace, &self.by_owner];
        (trees[index], prefix)
    }

    /// Matching records, newest first, starting after `page.after`.
    pub(super) fn scan(
        &self,
        query: &TokenQuery,
        page: PageRequest,
        max_scan: usize,
    ) -> Result<Page, StoreError> {
        let (index, prefix) = self.index_for(query);
        let mut low = prefix.clone();
        low.extend_from_slice(&[0u8; 16]);
        let mut high = prefix;
        let range = match page.after {
            Some(after) => {
                high.extend_from_slice(&after.to_bytes());
                index.range(low..high)
            }
            None => {
                high.extend_from_slice(&[0xFFu8; 16]);
                index.range(low..=high)
            }
        };
        let mut tokens = Vec::new();
        let mut last_examined = None;
        for (scanned, entry) in range.rev().enumerate() {
            let (key, _) = entry?;
            let id = keys::id_of_index_key(&key)
                .ok_or_else(|| StoreError::Corrupt("short index key".into()))?;
            if tokens.len() == page.limit || scanned == max_scan {
                // There is at least one more entry: the next page starts after the last one seen.
                return Ok(Page {
                    tokens,
                    next: last_examined,
                });
            }
            last_examined = Some(id);
            // An index entry without its record would be a bug; skip rather than fail a listing.
            if let Some(record) = self.record(id)?
                && query.matches(&record)
            {
                tokens.push(record);
            }
        }
        Ok(Page { tokens, next: None })
    }

    pub(super) fn scan_audit(
        &self,
        query: &AuditQuery,
        after: Option<EventId>,
        limit: usize,
    ) -> Result<AuditPage, StoreError> {
        let (low, high) = audit_scan_range(query, after);
        let range = self.audit.range(low..high);
        let mut events = Vec::new();
        let mut last_examined = None;
        for (scanned, entry) in range.rev().enumerate() {
            let (_, value) = entry?;
            if events.len() == limit || scanned == MAX_SCAN_PER_PAGE {
                return Ok(AuditPage {
                    events,
                    next: last_examined,
                });
            }
            let event = decode_audit(&value)?;
            last_examined = Some(event.id);
            if query.matches(&event) {
                events.push(event);
            }
        }
        Ok(AuditPage { events, next: None })
    }
}
