//! tokenauth: a gRPC service that issues, lists, revokes and checks API access
//! tokens for a multi-tenant platform.
//!
//! The layers, top to bottom:
//! - [`api`]: one file per gRPC service: read credentials, validate,
//!   convert, call the service, convert back; [`proto`] holds the generated
//!   wire types, sealed, with a redacting `Debug` for secrets;
//! - [`service`]: the use cases ([`service::TokenAuthority`]: authenticate,
//!   refusals, manage, reports, check, lookup, mesh), with the Check cache
//!   and the recorder;
//! - [`store`]: the [`store::Store`] trait, sled and PostgreSQL behind it;
//! - [`domain`]: tokens, permissions, queries and decisions, as pure values
//!   and functions.
//!
//! Beside them: [`config`], [`pepper`], [`server`] (loading, keys, wiring),
//! [`metrics`] and [`telemetry`], [`private_fs`] (the data directory and
//! backups, readable by their owner only).
//!
//! **The dependency rule**: a layer uses only the layers below it, and
//! `domain` imports nothing from the crate outside `domain/` and does no I/O
//! (no tokio, sled, tokio_postgres, tonic, files or sockets);
//! `tests/it/architecture.rs` checks it on the source.

pub mod api;
pub mod config;
pub mod connections;
pub mod domain;
pub mod metrics;
pub mod pepper;
pub mod private_fs;
pub mod proto;
pub mod server;
pub mod service;
pub mod store;
pub mod telemetry;
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod testing;
