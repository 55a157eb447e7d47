//! What a fleet run is told: servers, size, pace, faults, and every
//! interval (so that tests run in seconds).

use std::path::PathBuf;
use std::time::Duration;

use rampart_core::backoff::{BackoffConfig, Jitter};
use rampart_core::batch::BatchPolicy;
use rampart_core::payload::Format;

use crate::sensor::SensorKind;

/// Options of a fleet run. [`FleetOptions::new`] fills in the defaults.
#[derive(Debug, Clone)]
pub struct FleetOptions {
    /// Number of devices (ids `PREFIX-0001` …).
    pub devices: usize,
    /// The MQTT port, `HOST:PORT`; HOST is checked against the server certificate.
    pub mqtt: String,
    /// The HTTPS port for enrollment, `HOST:PORT`.
    pub http: String,
    /// The CA bundle the server is verified against (`rampart ca export`).
    pub ca_file: PathBuf,
    /// The enrollment token; only needed while a device has no certificate.
    pub token: Option<String>,
    /// Time between two readings of a device.
    pub reading_interval: Duration,
    /// Id prefix of a new state dir (default: `sim-` and six random hex digits).
    pub id_prefix: Option<String>,
    /// Where identities, boot counters and rings are kept.
    pub state_dir: PathBuf,
    /// Probability, per reading interval, that a connected device drops its
    /// connection abruptly.
    pub flaky: f64,
    /// Deep-sleep cycle: wake, read, flush, disconnect, sleep this long.
    pub sleep_cycle: Option<Duration>,
    /// Stop reading after this long (`None`: until shut down).
    pub duration: Option<Duration>,
    /// The sensor model.
    pub sensor: SensorKind,
    /// Probability that a sensor read fails (default: the sensor's typical rate).
    pub read_failure_rate: Option<f64>,
    /// When buffered readings are flushed.
    pub batch: BatchPolicy,
    /// Telemetry encoding.
    pub format: Format,
    /// Reconnect backoff.
    pub backoff: BackoffConfig,
    /// Test knob: renew the certificate this long after it was issued,
    /// instead of at two thirds of its validity.
    pub renew_every: Option<Duration>,
    /// How long the final flush may take after reading stops.
    pub drain_timeout: Duration,
    /// New connections (TLS handshakes) per second across the fleet.
    pub connect_rate: f64,
    /// Enrollments (HTTPS requests whose CSR the server signs) per second
    /// across the fleet: heavier for the server than a connection.
    pub enroll_rate: f64,
    /// MQTT keepalive.
    pub keepalive: Duration,
    /// Time limit of one network operation (connect, enrollment, write).
    pub io_timeout: Duration,
    /// Batches in flight (unacknowledged) per device.
    pub max_inflight: usize,
    /// Shortest time between two writes of a device's buffer to the state
    /// dir (it is always written before sleeping, rebooting and stopping).
    pub persist_every: Duration,
    /// Raise the open-files limit to fit the fleet.
    pub raise_fd_limit: bool,
}

impl FleetOptions {
    /// Options with defaults for everything but the servers, CA and state dir.
    pub fn new(mqtt: String, http: String, ca_file: PathBuf, state_dir: PathBuf) -> Self {
        Self {
            devices: 1,
            mqtt,
            http,
            ca_file,
            token: None,
            reading_interval: Duration::from_secs(1),
            id_prefix: None,
            state_dir,
            flaky: 0.0,
            sleep_cycle: None,
            duration: None,
            sensor: SensorKind::Dht11,
            read_failure_rate: None,
            batch: BatchPolicy::default(),
            format: Format::Json,
            backoff: BackoffConfig {
                initial_ms: 1_000,
                max_ms: 60_000,
                jitter: Jitter::Decorrelated,
                stable_after_ms: 60_000,
            },
            renew_every: None,
            drain_timeout: Duration::from_secs(10),
            connect_rate: 40.0,
            enroll_rate: 20.0,
            keepalive: Duration::from_secs(60),
            io_timeout: Duration::from_secs(10),
            max_inflight: 16,
            persist_every: Duration::from_secs(5),
            raise_fd_limit: true,
        }
    }

    /// Checks values a flag parser cannot (probabilities, zero rates).
    pub fn validate(&self) -> Result<(), String> {
        if self.devices == 0 {
            return Err("--devices must be at least 1".to_owned());
        }
        if !(0.0..=1.0).contains(&self.flaky) {
            return Err(format!(
                "--flaky {} is not a probability between 0 and 1",
                self.flaky
            ));
        }
        if let Some(p) = self.read_failure_rate
            && !(0.0..=1.0).contains(&p)
        {
            return Err(format!(
                "--read-failures {p} is not a probability between 0 and 1"
            ));
        }
        if self.reading_interval.is_zero() {
            return Err("--rate gives no time between readings".to_owned());
        }
        if self.sleep_cycle.is_some_and(|c| c.is_zero()) {
            return Err("--sleep-cycle must be longer than zero".to_owned());
        }
        if !(self.connect_rate.is_finite() && self.connect_rate > 0.0) {
            return Err("--connect-rate must be above zero".to_owned());
        }
        if !(self.enroll_rate.is_finite() && self.enroll_rate > 0.0) {
            return Err("--enroll-rate must be above zero".to_owned());
        }
        if self.keepalive.as_secs() == 0 || self.keepalive.as_secs() > u64::from(u16::MAX) {
            return Err("--keepalive must be between 1 s and 65535 s".to_owned());
        }
        if self.max_inflight == 0 {
            return Err("at least one batch must be allowed in flight".to_owned());
        }
        Ok(())
    }

    /// Time between two readings: the sleep cycle if set, else the rate's interval.
    pub fn wake_interval(&self) -> Duration {
        self.sleep_cycle.unwrap_or(self.reading_interval)
    }
}

/// Parses a reading rate: `1/s`, `10/s`, `2/min`, `30/h`, or a plain
/// number per second; returns the time between readings.
pub fn parse_rate(s: &str) -> Result<Duration, String> {
    let (count, unit) = s.split_once('/').unwrap_or((s, "s"));
    let count: f64 = count
        .trim()
        .parse()
        .map_err(|_| format!("rate '{s}' is not a number per time unit, e.g. 1/s or 6/min"))?;
    let unit_secs = match unit.trim() {
        "s" | "sec" | "second" => 1.0,
        "m" | "min" | "minute" => 60.0,
        "h" | "hour" => 3600.0,
        other => {
            return Err(format!(
                "unknown time unit '{other}' in rate '{s}'; use s, min or h"
            ));
        }
    };
    if !(count.is_finite() && count > 0.0) {
        return Err(format!("rate '{s}' must be above zero"));
    }
    let interval = unit_secs / count;
    if interval < 0.001 {
        return Err(format!(
            "rate '{s}' is above 1000 readings per second per device"
        ));
    }
    Ok(Duration::from_secs_f64(interval))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse_into_intervals() {
        assert_eq!(parse_rate("1/s"), Ok(Duration::from_secs(1)));
        assert_eq!(parse_rate("10/s"), Ok(Duration::from_millis(100)));
        assert_eq!(parse_rate("2/min"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_rate("0.5"), Ok(Duration::from_secs(2)));
        assert!(parse_rate("0/s").is_err());
        assert!(parse_rate("fast").is_err());
        assert!(parse_rate("1/day").is_err());
        assert!(parse_rate("5000/s").is_err());
    }

    #[test]
    fn validation_names_the_flag() {
        let mut o = FleetOptions::new("a:1".into(), "a:2".into(), "ca".into(), "st".into());
        assert_eq!(o.validate(), Ok(()));
        o.flaky = 1.5;
        assert!(o.validate().expect_err("flaky").contains("--flaky"));
        o.flaky = 0.2;
        o.devices = 0;
        assert!(o.validate().expect_err("devices").contains("--devices"));
    }
}
