//! The pipeline's integration tests, one binary, against real SQLite stores
//! and local HTTP receivers.

mod influx;
mod pipeline;
mod retention;
