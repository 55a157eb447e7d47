//! Device provisioning: how an identity comes to exist and stays current.
//!
//! The domain logic shared by the CLI, the web API and the MQTT control
//! handlers of `rampart serve`: registering a device from a CSR signed by
//! Rampart's CA, enrollment tokens (AWS "fleet provisioning by claim"),
//! certificate renewal over the device's authenticated session, and claims
//! (DESIGN.md "Claiming"). It owns no tables of its own (the store does)
//! and does no network I/O: callers hand it what arrived and publish what
//! it answers.

pub mod claim;
pub mod enrollment;
pub mod limit;
pub mod registration;
pub mod renewal;
