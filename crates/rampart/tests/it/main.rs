//! The binary's end-to-end tests, one test binary: the real `rampart`
//! executable driven like an operator would, with real MQTT clients
//! (mosquitto, paho-mqtt, the load generator's Rust client) over mutual TLS.

mod broker;
mod browser;
mod campaigns;
mod cli;
mod console;
mod control;
mod crash;
mod demo;
mod enroll;
mod firmware;
mod metrics;
mod serve;
mod simulate;
mod telemetry;
