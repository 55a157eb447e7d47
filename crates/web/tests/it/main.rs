//! The web part's integration tests, one binary: the real server in
//! process on a loopback port, over real TLS, with a real HTTPS client that
//! trusts only the test CA, a real CA and a real SQLite store.

mod alerts;
mod auth;
mod campaigns;
mod common;
mod console;
mod devices;
mod enroll;
mod firmware;
mod live;
mod matrix;
mod metrics;
mod ota;
mod registry;
mod server;
