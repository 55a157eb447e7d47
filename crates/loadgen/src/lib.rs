//! Load generator for Rampart's benchmarks.
//!
//! Speaks MQTT 3.1.1 and 5 over mutual TLS with one client certificate per
//! connection, and runs the scenarios of `cargo xtask bench`: fan-in
//! throughput, open-loop latency, loss-free probes (the bench searches for
//! the highest loss-free rate), fan-out to many subscribers, idle
//! connections, TLS handshakes and (Rampart only) revoke-to-disconnect
//! latency. Every scenario returns a serialisable report. [`storebench`] measures the
//! telemetry pipeline and store in process (Rampart only); the `rampart-loadgen` binary
//! prints it as JSON.

pub mod client;
pub mod conns;
pub mod error;
pub mod fanin;
pub mod fanout;
pub mod frame;
pub mod handshakes;
pub mod identity;
pub mod latency;
pub mod lossfree;
pub mod payload;
pub mod procfs;
pub mod revoke;
pub mod storebench;
pub mod tracking;

pub use client::{Client, MqttVersion, SessionKind, Target};
pub use error::LoadgenError;
pub use identity::{CertDir, Identity};

/// QoS levels the scenarios publish with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Qos {
    /// At most once.
    #[serde(rename = "0")]
    AtMostOnce,
    /// At least once (PUBACK).
    #[serde(rename = "1")]
    AtLeastOnce,
}

impl Qos {
    /// The wire QoS of the codec crate.
    pub fn wire(self) -> mqtt5_protocol::QoS {
        match self {
            Qos::AtMostOnce => mqtt5_protocol::QoS::AtMostOnce,
            Qos::AtLeastOnce => mqtt5_protocol::QoS::AtLeastOnce,
        }
    }
}

impl std::str::FromStr for Qos {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "0" => Ok(Qos::AtMostOnce),
            "1" => Ok(Qos::AtLeastOnce),
            other => Err(format!("QoS must be 0 or 1, not '{other}'")),
        }
    }
}

/// Percentiles of a latency histogram, in microseconds.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Percentiles {
    /// Number of samples.
    pub count: u64,
    /// Median.
    pub p50_us: u64,
    /// 90th percentile.
    pub p90_us: u64,
    /// 99th percentile.
    pub p99_us: u64,
    /// 99.9th percentile.
    pub p999_us: u64,
    /// Largest sample.
    pub max_us: u64,
}

impl Percentiles {
    /// Summarise a histogram recorded in microseconds.
    pub fn of(h: &hdrhistogram::Histogram<u64>) -> Self {
        Percentiles {
            count: h.len(),
            p50_us: h.value_at_quantile(0.50),
            p90_us: h.value_at_quantile(0.90),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
            max_us: h.max(),
        }
    }
}

/// A histogram for microsecond latencies from 1 µs to 10 minutes, 3 digits.
pub fn latency_histogram() -> Result<hdrhistogram::Histogram<u64>, LoadgenError> {
    hdrhistogram::Histogram::new_with_bounds(1, 600_000_000, 3)
        .map_err(|e| LoadgenError::Config(format!("latency histogram: {e}")))
}
