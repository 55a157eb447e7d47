//! The fleet simulator: thousands of simulated DHT11/DHT22 sensor devices
//! in one process, each running the device core (`rampart-core`) as the
//! firmware does.
//!
//! Each device makes its own P-256 key, enrolls over HTTPS with a CSR and
//! the fleet's enrollment token (verifying the server against `--ca`
//! only), connects with mutual TLS as itself, streams batched readings at
//! QoS 1 out of the core's ring (a reading leaves the ring only on PUBACK),
//! keeps buffering while offline, and answers claims, commands, state
//! requests and certificate renewals. Its identity, boot counter and ring
//! live in a state dir, so a killed and restarted simulator resumes the
//! same devices with strictly increasing sequence numbers.
//!
//! Each device also runs firmware of a device type and version, with two
//! A/B slots as files ([`firmware`]): it takes signed update offers on
//! `ota/down` through the core's update machine, downloads the image over
//! HTTPS with its own certificate (resuming a broken download with a range
//! request), reboots into it on trial, and confirms it or rolls back.
//! `--ota-fault` makes a share of the fleet misbehave ([`faults`]).
//!
//! [`run`] (or [`Fleet::start`] and [`Fleet::wait`]) is the entry point;
//! `rampart simulate` and `rampart serve --demo` drive it.
//!
//! # What it must not do
//!
//! Re-implement device logic the core owns (ring, batching, sequence
//! numbers, backoff, provisioning, renewal, payloads); trust a server not
//! signed by the given CA; panic on anything a server sends.

mod device;
mod download;
pub mod enroll;
pub mod faults;
pub mod firmware;
mod fleet;
pub mod options;
pub mod progress;
pub mod sensor;
pub mod statedir;
pub mod stats;
pub mod tls;

pub use device::{COMMANDS, METRICS, RING_CAPACITY};
pub use faults::{FaultKind, FaultShare};
pub use fleet::{Fleet, FleetMonitor, SimError, Summary, run};
pub use options::{FleetOptions, parse_rate, parse_size};
pub use sensor::SensorKind;
pub use stats::{Counts, DeviceReport};
