//! The provisioning crate's integration tests, one binary: the domain
//! functions against a real CA (`rampart-pki`) and a real SQLite store.

mod claim;
mod fixture;
mod renewal;
