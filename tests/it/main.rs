//! Integration tests: the real server on 127.0.0.1:0 with a temporary data
//! directory, driven through the generated gRPC clients. One binary, many
//! modules, so linking happens once.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod architecture;
mod audit;
mod backends;
mod backup;
mod deploy;
mod disk_faults;
mod docs;
mod envoy;
mod events_cli;
mod expiry;
mod ext_authz;
mod faults;
mod feed;
mod fuzz_replay;
mod governance;
mod harness;
mod hostile;
mod inactivity;

mod bad_input;
mod check;
mod child;
mod cli;
mod client_addresses;
mod corruption;
mod crash;
mod leaks;
mod lifecycle;
mod listing;
mod logs;
mod manifests;
mod members;
mod openapi;
mod operations;
mod operator;
mod persistence;
mod pg;
mod pki;
mod races;
mod reflection;
mod replicas;
mod revocation;
mod rotation;
mod secret_scanning;
mod shutdown;
mod store_conformance;
mod tls;
mod tools;
mod traces;
mod unused;
mod usage;
mod webhooks;
