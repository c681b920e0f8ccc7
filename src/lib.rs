//! tokenauth: a gRPC service that issues, lists, revokes and checks API access
//! tokens for a multi-tenant platform.
//!
//! The crate is layered so that each room has one job:
//! - [`proto`]: the generated wire types, sealed, plus the hand-written
//!   redacting `Debug` of messages that carry secrets;
//! - [`api`]: one file per gRPC service, validate -> convert -> call the domain;
//! - [`domain`]: tokens, permissions and decisions, with no tonic and no sled;
//! - [`store`]: the [`store::Store`] trait and its sled implementation;
//! - [`cache`]: the moka layer in front of the store, and its invalidation rules;
//! - [`config`], [`pepper`], [`server`]: loading, keys and wiring;
//! - [`private_fs`]: the data directory and backups, readable by their owner only.

pub mod api;
pub mod cache;
pub mod config;
pub mod connections;
pub mod domain;
pub mod metrics;
pub mod pepper;
pub mod private_fs;
pub mod proto;
pub mod recorder;
pub mod server;
pub mod store;
pub mod telemetry;
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod testing;
