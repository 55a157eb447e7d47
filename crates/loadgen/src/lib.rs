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

pub mod alertbench;
pub mod client;
pub mod conns;
pub mod consolebench;
pub mod error;
pub mod fanin;
pub mod fanout;
pub mod handshakes;
pub mod identity;
pub mod latency;
pub mod lossfree;
pub mod pacer;
pub mod payload;
pub mod procfs;
pub mod revoke;
pub mod stalls;
pub mod storebench;
pub mod tracking;

pub use client::{Client, ClientError, MqttVersion, Qos, SessionKind, Target};
pub use error::LoadgenError;
pub use identity::{CertDir, Identity};

/// Percentiles of a latency histogram, in microseconds.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
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

/// A duration as a histogram sample: whole microseconds, at least 1.
pub(crate) fn micros(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1)
}

/// A histogram for microsecond latencies from 1 µs to 10 minutes, 3 digits.
pub fn latency_histogram() -> Result<hdrhistogram::Histogram<u64>, LoadgenError> {
    hdrhistogram::Histogram::new_with_bounds(1, 600_000_000, 3)
        .map_err(|e| LoadgenError::Config(format!("latency histogram: {e}")))
}
