//! The store's integration tests, one binary: every scenario against a real
//! SQLite file and a fresh PostgreSQL database (`PgTestDb`).

mod campaigns;
mod enrollment;
mod firmware;
mod fleet;
mod provisioning;
mod store;
mod telemetry;
mod users;
