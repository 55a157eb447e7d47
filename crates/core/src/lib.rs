//! The Rampart device core: the logic every Rampart device runs, shared by
//! the fleet simulator (`crates/sim`) and device firmware (ESP32-C3 and
//! other `riscv32imc` / `thumbv7em` boards).
//!
//! # What it owns
//!
//! - [`measurement`]: one reading (`seq`, optional device timestamp, a few
//!   metric values by index into the device's metric-name table).
//! - [`ring`]: the offline buffer: a const-capacity ring of measurements that
//!   overwrites the oldest and counts drops, with a fixed, versioned,
//!   checksummed byte layout that can live in RTC memory across deep sleep.
//! - [`batch`]: when to flush the buffer (by count, by age, before sleep).
//! - [`seq`]: sequence numbers strictly increasing across reboots through a
//!   boot counter kept behind a storage trait.
//! - [`backoff`]: reconnect and retry delays, exponential with jitter.
//! - [`provision`]: the provisioning state machine (key → CSR → certificate
//!   → unbound → bound), persistable as a few bytes.
//! - [`renewal`]: when and how to renew the device certificate.
//! - [`ota`]: signed firmware bundles (format and verification, shared
//!   with the server) and the update state machine: verify, stream into the
//!   inactive slot, boot on trial, confirm or roll back.
//! - [`payload`]: the wire formats of `docs/payloads.md`: telemetry (JSON
//!   and CBOR), reported state, claim confirmations, renewal CSRs,
//!   command results and OTA reports are encoded into caller buffers; claim, renewal, state,
//!   command and update-offer (`ota/down`) downlinks are parsed without allocating.
//!
//! # What it must not do
//!
//! No I/O, no allocation (`#![no_std]` without `alloc`), no clock and no
//! random source of its own, no `unsafe`, and no panic on any input: every
//! byte that came from a network, flash or RTC memory is checked and refused
//! with an error value. Crypto (key generation, CSRs, TLS) belongs to the host;
//! the one exception is firmware signature and hash verification ([`ota`]),
//! done here so the device checks exactly what the server checks.
//!
//! # How a host drives it
//!
//! The host owns the radio, TLS, flash and the clock. It passes time in as
//! `now_ms: u64` (Unix milliseconds where a wall clock is needed, as for
//! certificate validity; any monotonic millisecond clock elsewhere) and
//! randomness through [`backoff::RandomSource`]. The state machines take
//! *events* (what happened: "key generated", "claim request received") and
//! answer *actions* (what to do next: "send the CSR", "publish this nonce",
//! "wait until t"); the host performs the action and reports the outcome as
//! the next event. A typical loop:
//!
//! 1. At boot: [`seq::SeqGen::start`] with the boot-counter store,
//!    [`ring::Ring::restore`] from RTC memory, [`provision::Provisioning::from_bytes`]
//!    from flash.
//! 2. Until provisioned, act on [`provision::Provisioning::poll`].
//! 3. Connected: each reading becomes a [`measurement::Measurement`] with the
//!    next seq, is pushed into the ring, and [`batch::BatchPolicy::decide`]
//!    says when to encode the oldest readings with
//!    [`payload::encode_batch`] and publish them; on PUBACK they are dropped
//!    from the ring ([`ring::Ring::ack_through`]).
//! 4. Disconnected: keep buffering; reconnect after [`backoff::Backoff::next_delay`].
//! 5. Before deep sleep: flush if connected, then [`ring::Ring::to_bytes`]
//!    into RTC memory.
//! 6. Updates: at boot [`ota::update::Ota::start`] with the persisted
//!    [`ota::update::OtaState`] (a trial image must confirm with
//!    [`ota::update::Ota::confirm`] once connected and published); an offer
//!    goes through [`ota::update::Ota::offer`], the image through
//!    [`ota::update::Ota::write_chunk`] and [`ota::update::Ota::finish`].
#![no_std]
#![cfg_attr(
    not(test),
    deny(
        clippy::indexing_slicing,
        clippy::panic,
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::arithmetic_side_effects
    )
)]

#[cfg(test)]
extern crate std;

pub mod backoff;
pub mod batch;
mod layout;
pub mod measurement;
pub mod ota;
pub mod payload;
pub mod provision;
pub mod renewal;
pub mod ring;
pub mod seq;

pub use layout::{BufferTooSmall, LayoutError};
