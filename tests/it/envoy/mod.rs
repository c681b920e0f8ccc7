//! The real Envoy in front of the real tokenauth, as `deploy/` ships them:
//! HTTP/1.1 and HTTP/2 requests through Envoy's `ext_authz` filter to an
//! upstream that reports what reached it. Each test starts its own stack
//! (Envoy is ready in well under a second) and runs a group of scenarios on
//! it, so the groups run in parallel without sharing state.
//!
//! - `proxy`: Envoy as a child process and the client spoken through it
//!   (shared with `benches/floor.rs`);
//! - `stack`: the harness (Envoy, tokenauth, the echoing upstream, a client);
//! - `requests`: credentials, identity headers, `/healthz`, revocation, expiry;
//! - `scopes`: permissions, organizations, workspaces and where the rules read them;
//! - `paths`: what Envoy does to paths and repeated headers before tokenauth sees them;
//! - `failures`: tokenauth stopped or hung, and Envoy's health check of it;
//! - `transcoder`: JSON over HTTP through the shipped gRPC-JSON transcoder config;
//! - `addresses`: the client address recorded for a token, not the client's to choose.

mod addresses;
mod failures;
mod paths;
mod proxy;
mod requests;
mod scopes;
mod stack;
pub(crate) mod transcoder;
