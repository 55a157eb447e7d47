//! The broker's integration tests, one binary: a real TLS listener, real
//! certificates and a raw MQTT client (`common`).

mod common;
mod downlink;
mod limits;
mod protocol;
mod scale;
