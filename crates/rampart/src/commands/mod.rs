//! One module per command group.

pub mod audit;
pub mod backup;
pub mod ca;
pub mod campaign;
pub mod config;
pub mod device;
pub mod enroll_token;
pub mod firmware;
pub mod init;
pub mod service;
pub mod simulate;
pub mod telemetry;
