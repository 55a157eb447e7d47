//! What a fleet run is told: servers, size, pace, faults, and every
//! interval (so that tests run in seconds).

use std::path::PathBuf;
use std::time::Duration;

use rampart_core::backoff::{BackoffConfig, Jitter};
use rampart_core::batch::BatchPolicy;
use rampart_core::payload::Format;

use crate::faults::FaultShare;
use crate::sensor::SensorKind;

/// The device type simulated devices report and accept firmware for.
pub const DEFAULT_DEVICE_TYPE: &str = "rampart-sim";
/// The version of the factory image every simulated device starts with.
pub const DEFAULT_FIRMWARE_VERSION: &str = "1.0.0";
/// Bytes one firmware slot holds by default (4 MiB).
pub const DEFAULT_SLOT_SIZE: u64 = 4 * 1024 * 1024;

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
    /// Probability that a firmware download is cut once at a random byte
    /// (and resumed with a range request); `None`: the same as `flaky`.
    pub flaky_downloads: Option<f64>,
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
    /// The device type (`"type"` on `state/up`; offers for another are refused).
    pub device_type: String,
    /// The version of the factory image (slot A before any update), semver.
    pub firmware_version: String,
    /// Public keys (`rampart firmware keygen`'s `KEY.pub`) the devices
    /// trust to sign firmware; without any, every offer is refused.
    pub ota_trust: Vec<PathBuf>,
    /// Bytes one firmware slot holds.
    pub ota_slot_size: u64,
    /// Update faults and the share of devices each applies to.
    pub ota_faults: Vec<FaultShare>,
    /// How long a trial image has to connect and publish before it is rolled back.
    pub ota_confirm_timeout: Duration,
    /// Trial boots allowed before an image counts as crash-looping.
    pub ota_max_boot_attempts: u8,
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
            flaky_downloads: None,
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
            device_type: DEFAULT_DEVICE_TYPE.to_owned(),
            firmware_version: DEFAULT_FIRMWARE_VERSION.to_owned(),
            ota_trust: Vec::new(),
            ota_slot_size: DEFAULT_SLOT_SIZE,
            ota_faults: Vec::new(),
            ota_confirm_timeout: Duration::from_secs(60),
            ota_max_boot_attempts: 3,
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
        if let Some(p) = self.flaky_downloads
            && !(0.0..=1.0).contains(&p)
        {
            return Err(format!(
                "--flaky-downloads {p} is not a probability between 0 and 1"
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
        if !rampart_core::ota::manifest::valid_device_type(&self.device_type) {
            return Err(format!(
                "--device-type '{}' is not a device type (1 to 64 of a-z 0-9 . _ -)",
                self.device_type
            ));
        }
        if rampart_core::ota::Version::parse(&self.firmware_version).is_err() {
            return Err(format!(
                "--firmware-version '{}' is not a semantic version such as 1.0.0",
                self.firmware_version
            ));
        }
        if self.ota_slot_size == 0 {
            return Err("--ota-slot-size must be above zero".to_owned());
        }
        if self.ota_confirm_timeout.is_zero() {
            return Err("--ota-confirm-timeout must be longer than zero".to_owned());
        }
        if self.ota_max_boot_attempts == 0 {
            return Err("--ota-max-boot-attempts must be at least 1".to_owned());
        }
        crate::faults::counts(&self.ota_faults, self.devices).map(|_| ())
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

/// Parses a byte size: `4194304`, `512KiB`, `4MiB` (also `KB`/`MB` as
/// powers of 1000).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (number, unit) = t.split_at(digits);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("size '{s}' is not a number of bytes, e.g. 4MiB or 65536"))?;
    let factor: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        other => {
            return Err(format!(
                "unknown unit '{other}' in size '{s}'; use B, KiB, MiB, GiB, KB, MB or GB"
            ));
        }
    };
    n.checked_mul(factor)
        .ok_or_else(|| format!("size '{s}' is too large"))
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
        o.devices = 4;
        o.firmware_version = "1.0".into();
        assert!(
            o.validate()
                .expect_err("version")
                .contains("--firmware-version")
        );
        o.firmware_version = "1.0.0".into();
        o.device_type = "Sim".into();
        assert!(o.validate().expect_err("type").contains("--device-type"));
        o.device_type = "sim".into();
        o.ota_faults = vec![
            "hang:0.5".parse().expect("fault"),
            "crash-on-boot:0.5".parse().expect("fault"),
        ];
        assert_eq!(o.validate(), Ok(()));
        o.ota_faults.push("no-network:0.4".parse().expect("fault"));
        assert!(o.validate().expect_err("faults").contains("--ota-fault"));
    }

    #[test]
    fn sizes_parse_with_units() {
        assert_eq!(parse_size("4MiB"), Ok(4 * 1024 * 1024));
        assert_eq!(parse_size("512KiB"), Ok(512 * 1024));
        assert_eq!(parse_size("65536"), Ok(65_536));
        assert_eq!(parse_size("2MB"), Ok(2_000_000));
        assert!(parse_size("4 parsecs").is_err());
        assert!(parse_size("MiB").is_err());
        assert!(parse_size("99999999999999GiB").is_err());
    }
}
