//! Rampart's MQTT broker: MQTT 3.1.1 and 5.0 over mutual TLS, where the
//! client certificate *is* the identity.
//!
//! This crate owns connections, sessions, subscriptions, routing and access
//! control. It must not interpret payloads or store telemetry: every
//! device publish is handed to an [`rampart_proto::IngestSink`] (the
//! pipeline), and only what the sink accepts is acknowledged and routed.

pub mod acl;
pub mod identity;
pub mod topic;
