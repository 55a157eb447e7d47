//! The store's integration tests, one binary: every scenario against a real
//! SQLite file and a fresh PostgreSQL database (`PgTestDb`).

mod alerts;
mod campaigns;
mod enrollment;
mod firmware;
mod fleet;
mod notifications;
mod provisioning;
mod store;
mod telemetry;
mod users;
