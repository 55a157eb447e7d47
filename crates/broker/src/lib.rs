//! Rampart's MQTT broker: MQTT 3.1.1 and 5.0 over mutual TLS, where the
//! client certificate *is* the identity.
//!
//! This crate owns connections, sessions, subscriptions, routing and access
//! control. It must not interpret payloads or store telemetry: every
//! device publish is handed to an [`rampart_proto::ingest::IngestSink`]
//! (the pipeline), and only what the sink accepts is acknowledged and
//! routed. It must not reach into the store's tables: it asks the `Store`
//! trait whether a certificate is current.

pub mod acl;
mod broker;
pub mod codec;
pub mod config;
mod connection;
pub mod identity;
pub mod metrics;
pub mod router;
mod server;
pub mod session;
pub mod tls;
pub mod topic;

pub use broker::{Broker, BrokerError, ServerPublishError};
pub use config::BrokerConfig;
pub use server::run;
pub use tls::TlsMaterial;
mod persist;
