//! Rampart's wire vocabulary: identity names, topic names and payload types.
//!
//! This crate owns the *shape* of what crosses the wire and the rules that
//! make a name safe to use in a topic. It must not do I/O, depend on a runtime,
//! or know about storage: every other crate (broker, ingest, store, web) and
//! the device firmware agree through these types.

mod claim;
pub mod control;
mod id;
pub mod ingest;
pub mod telemetry;
pub mod topic;

pub use claim::{CLAIM_CODE_BYTES, ClaimCode, ClaimCodeError, QrPayload, QrPayloadError};
pub use id::{DeviceId, IdError, MAX_ID_LEN};
