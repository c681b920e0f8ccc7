//! One reader-writer lock per key, made when first wanted and dropped with
//! its last holder, so that callers of one key wait for each other and never
//! for another key's. The sled store keys them by organization: a RevokeAll
//! holds its organization's exclusively, an issue shared, since a RevokeAll
//! applies in several transactions and no token of its organization may be
//! issued between its first and its last (PostgreSQL's equivalent is an
//! advisory lock). The PostgreSQL store keys them by quota, so that issues
//! waiting for one quota wait here, not each holding a pooled connection.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use tokio::sync::{OwnedRwLockReadGuard, OwnedRwLockWriteGuard, RwLock};

/// The locks someone holds or waits for; an entry is removed with its last
/// guard, so the map holds no more than that.
#[derive(Default)]
pub(super) struct KeyedLocks {
    locks: Mutex<HashMap<String, Arc<RwLock<()>>>>,
}

enum Held {
    Shared(#[allow(dead_code)] OwnedRwLockReadGuard<()>),
    Exclusive(#[allow(dead_code)] OwnedRwLockWriteGuard<()>),
}

/// A held lock; released on drop.
pub(super) struct KeyGuard<'a> {
    held: Option<Held>,
    key: String,
    locks: &'a KeyedLocks,
}

impl KeyedLocks {
    fn lock_of(&self, key: &str) -> Arc<RwLock<()>> {
        let mut locks = self.locks.lock().unwrap_or_else(|e| e.into_inner());
        Arc::clone(locks.entry(key.to_owned()).or_default())
    }

    /// Waits until nobody holds `key` exclusively, and keeps anybody from it.
    pub(super) async fn shared(&self, key: &str) -> KeyGuard<'_> {
        let held = Held::Shared(self.lock_of(key).read_owned().await);
        self.guard(key, held)
    }

    /// Waits until nobody else holds `key`, and holds it alone.
    pub(super) async fn exclusive(&self, key: &str) -> KeyGuard<'_> {
        let held = Held::Exclusive(self.lock_of(key).write_owned().await);
        self.guard(key, held)
    }

    fn guard(&self, key: &str, held: Held) -> KeyGuard<'_> {
        KeyGuard {
            held: Some(held),
            key: key.to_owned(),
            locks: self,
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.locks.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

impl Drop for KeyGuard<'_> {
    fn drop(&mut self) {
        drop(self.held.take());
        let mut locks = self.locks.locks.lock().unwrap_or_else(|e| e.into_inner());
        // Only the map's own reference left: nobody holds or awaits it (a
        // waiter clones the Arc under this mutex before it waits).
        if locks
            .get(&self.key)
            .is_some_and(|lock| Arc::strong_count(lock) == 1)
        {
            locks.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_exclusive_holder_keeps_out_only_its_own_key() {
        let locks = KeyedLocks::default();
        let revoking = locks.exclusive("a").await;
        // Another organization is not held up.
        let other = locks.exclusive("b").await;
        drop(other);
        let waiting = tokio::time::timeout(std::time::Duration::from_millis(50), locks.shared("a"));
        assert!(waiting.await.is_err(), "an issue waits for the RevokeAll");
        drop(revoking);
        let first = locks.shared("a").await;
        let second = locks.shared("a").await;
        drop((first, second));
        assert_eq!(locks.len(), 0, "nothing is kept once released");
    }
}
