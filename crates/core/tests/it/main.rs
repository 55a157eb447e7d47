//! Integration tests of the device core, run on the host with std.

mod payload;
mod ring;
mod strategies;
