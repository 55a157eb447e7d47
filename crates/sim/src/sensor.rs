//! A simulated DHT11 / DHT22 temperature and humidity sensor.
//!
//! Temperature follows a daily cycle by the wall clock (warmest mid
//! afternoon, UTC shifted by a per-device phase), plus a slow drift
//! (weather, heating: an Ornstein–Uhlenbeck process with a six-hour time
//! constant) and read-to-read noise. Humidity is derived from a slowly
//! drifting dew point with the Magnus formula, so it falls when the
//! temperature rises, as relative humidity does indoors. Both are clamped
//! to the sensor's range and quantised to its resolution: 1 °C / 1 % for
//! the DHT11, 0.1 for the DHT22. A read fails now and then (no answer, or
//! a checksum mismatch), as the real one-wire sensors do; a failed read
//! produces no value.
//!
//! Pure: time comes in as Unix milliseconds, randomness from a seeded PRNG.

use std::fmt;
use std::str::FromStr;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

/// Which sensor a device carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SensorKind {
    /// DHT11: 0–50 °C, 20–90 % RH, 1 °C / 1 % resolution.
    Dht11,
    /// DHT22 (AM2302): −40–80 °C, 0–100 % RH, 0.1 resolution.
    Dht22,
}

impl SensorKind {
    /// The reading's resolution (both quantities).
    pub fn resolution(self) -> f64 {
        match self {
            SensorKind::Dht11 => 1.0,
            SensorKind::Dht22 => 0.1,
        }
    }

    /// Temperature range in °C.
    pub fn temperature_range(self) -> (f64, f64) {
        match self {
            SensorKind::Dht11 => (0.0, 50.0),
            SensorKind::Dht22 => (-40.0, 80.0),
        }
    }

    /// Relative humidity range in %.
    pub fn humidity_range(self) -> (f64, f64) {
        match self {
            SensorKind::Dht11 => (20.0, 90.0),
            SensorKind::Dht22 => (0.0, 100.0),
        }
    }

    /// Share of reads that fail on a typical wired sensor (timeouts and
    /// checksum errors); the DHT11's cheaper protocol timing fails more.
    pub fn typical_failure_rate(self) -> f64 {
        match self {
            SensorKind::Dht11 => 0.02,
            SensorKind::Dht22 => 0.01,
        }
    }

    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            SensorKind::Dht11 => "dht11",
            SensorKind::Dht22 => "dht22",
        }
    }
}

impl fmt::Display for SensorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for SensorKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "dht11" => Ok(SensorKind::Dht11),
            "dht22" | "am2302" => Ok(SensorKind::Dht22),
            other => Err(format!("unknown sensor '{other}'; expected dht11 or dht22")),
        }
    }
}

/// One successful read, quantised to the sensor's resolution.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Reading {
    /// Temperature in °C.
    pub temperature: f32,
    /// Relative humidity in %.
    pub humidity: f32,
}

/// Why a read produced no value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ReadFailure {
    /// The sensor did not answer the start signal in time.
    #[error("the sensor did not answer (timeout)")]
    Timeout,
    /// The 40 bits arrived but their checksum byte does not match.
    #[error("checksum mismatch in the sensor's answer")]
    Checksum,
}

/// Six hours: how long the drift takes to forget where it was.
const DRIFT_TAU_S: f64 = 6.0 * 3600.0;
/// Stationary spread of the temperature drift, °C.
const TEMP_DRIFT_SD: f64 = 1.0;
/// Stationary spread of the dew-point drift, °C.
const DEW_DRIFT_SD: f64 = 1.5;
/// Read-to-read noise, °C and % RH.
const TEMP_NOISE_SD: f64 = 0.15;
const HUMIDITY_NOISE_SD: f64 = 0.8;
/// Hour of the day (UTC, before the device's phase) of the warmest moment.
const PEAK_HOUR: f64 = 15.0;
const DAY_MS: f64 = 86_400_000.0;

/// Where a device sits: its climate, drawn once per device.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Site {
    /// Mean temperature, °C.
    mean_temp: f64,
    /// Half the day–night swing, °C.
    amplitude: f64,
    /// Mean dew point below the mean temperature, °C.
    dew_depression: f64,
    /// Shift of the daily cycle, hours.
    phase_h: f64,
}

/// A simulated sensor with its own climate and random state.
#[derive(Debug, Clone)]
pub struct Sensor {
    kind: SensorKind,
    failure_rate: f64,
    site: Site,
    temp_drift: f64,
    dew_drift: f64,
    last_ms: Option<u64>,
    rng: SmallRng,
}

impl Sensor {
    /// A sensor of `kind` whose reads fail with probability
    /// `failure_rate` (clamped to 0..=1), seeded by `seed`.
    pub fn new(kind: SensorKind, failure_rate: f64, seed: u64) -> Self {
        let mut rng = SmallRng::seed_from_u64(seed);
        let site = Site {
            mean_temp: rng.random_range(18.0..26.0),
            amplitude: rng.random_range(1.5..5.0),
            dew_depression: rng.random_range(8.0..14.0),
            phase_h: rng.random_range(-2.0..2.0),
        };
        // Start the drifts from their stationary distribution.
        let temp_drift = TEMP_DRIFT_SD * gaussian(&mut rng);
        let dew_drift = DEW_DRIFT_SD * gaussian(&mut rng);
        let failure_rate = if failure_rate.is_finite() {
            failure_rate.clamp(0.0, 1.0)
        } else {
            0.0
        };
        Self {
            kind,
            failure_rate,
            site,
            temp_drift,
            dew_drift,
            last_ms: None,
            rng,
        }
    }

    /// The sensor model.
    pub fn kind(&self) -> SensorKind {
        self.kind
    }

    /// Reads the sensor at wall-clock time `now_ms` (Unix milliseconds).
    pub fn read(&mut self, now_ms: u64) -> Result<Reading, ReadFailure> {
        self.advance_drift(now_ms);
        if self.failure_rate > 0.0 && self.rng.random_bool(self.failure_rate) {
            return Err(if self.rng.random_bool(0.5) {
                ReadFailure::Timeout
            } else {
                ReadFailure::Checksum
            });
        }
        let temp = self.true_temperature(now_ms) + TEMP_NOISE_SD * gaussian(&mut self.rng);
        let dew = self.site.mean_temp - self.site.dew_depression + self.dew_drift;
        let humidity =
            relative_humidity(temp, dew.min(temp)) + HUMIDITY_NOISE_SD * gaussian(&mut self.rng);
        let (t_lo, t_hi) = self.kind.temperature_range();
        let (h_lo, h_hi) = self.kind.humidity_range();
        Ok(Reading {
            temperature: quantise(temp.clamp(t_lo, t_hi), self.kind.resolution()),
            humidity: quantise(humidity.clamp(h_lo, h_hi), self.kind.resolution()),
        })
    }

    /// The temperature without noise: daily cycle plus drift.
    fn true_temperature(&self, now_ms: u64) -> f64 {
        let hour = (now_ms as f64 % DAY_MS) / 3_600_000.0;
        let angle = (hour - PEAK_HOUR - self.site.phase_h) / 24.0 * std::f64::consts::TAU;
        self.site.mean_temp + self.site.amplitude * angle.cos() + self.temp_drift
    }

    /// Moves both drifts forward to `now_ms` (exact Ornstein–Uhlenbeck step).
    fn advance_drift(&mut self, now_ms: u64) {
        let dt_s = match self.last_ms {
            Some(last) => now_ms.saturating_sub(last) as f64 / 1000.0,
            None => 0.0,
        };
        self.last_ms = Some(now_ms);
        if dt_s <= 0.0 {
            return;
        }
        let keep = (-dt_s / DRIFT_TAU_S).exp();
        let spread = (1.0 - keep * keep).sqrt();
        self.temp_drift = self.temp_drift * keep + TEMP_DRIFT_SD * spread * gaussian(&mut self.rng);
        self.dew_drift = self.dew_drift * keep + DEW_DRIFT_SD * spread * gaussian(&mut self.rng);
    }
}

/// Relative humidity (%) of air at `temp` °C with dew point `dew` °C
/// (Magnus formula, Alduchov & Eskridge 1996 coefficients).
fn relative_humidity(temp: f64, dew: f64) -> f64 {
    const B: f64 = 17.625;
    const C: f64 = 243.04;
    100.0 * ((B * dew / (C + dew)) - (B * temp / (C + temp))).exp()
}

/// `value` rounded to a multiple of `step`, as the sensor reports it.
fn quantise(value: f64, step: f64) -> f32 {
    // Round in tenths/units, then divide once, so that 21.3 comes out as
    // the f32 nearest to 21.3 (shortest decimal "21.3" on the wire).
    let units = (value / step).round();
    if step >= 1.0 {
        (units * step) as f32
    } else {
        (units / (1.0 / step).round()) as f32
    }
}

/// A standard normal sample (Box–Muller).
fn gaussian(rng: &mut SmallRng) -> f64 {
    let u1: f64 = 1.0 - rng.random::<f64>(); // (0, 1]: ln is finite
    let u2: f64 = rng.random::<f64>();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR_MS: u64 = 3_600_000;
    /// 2025-01-01T00:00:00Z.
    const MIDNIGHT: u64 = 1_735_689_600_000;

    fn readings(kind: SensorKind, seed: u64, every_ms: u64, n: u64) -> Vec<Reading> {
        let mut s = Sensor::new(kind, 0.0, seed);
        (0..n)
            .map(|i| s.read(MIDNIGHT + i * every_ms).expect("no failures"))
            .collect()
    }

    #[test]
    fn dht11_reads_whole_degrees_and_percent_within_its_range() {
        for r in readings(SensorKind::Dht11, 7, 60_000, 3 * 24 * 60) {
            assert_eq!(r.temperature.fract(), 0.0, "{r:?}");
            assert_eq!(r.humidity.fract(), 0.0, "{r:?}");
            assert!((0.0..=50.0).contains(&r.temperature), "{r:?}");
            assert!((20.0..=90.0).contains(&r.humidity), "{r:?}");
        }
    }

    #[test]
    fn dht22_reads_tenths_that_print_as_one_decimal() {
        let rs = readings(SensorKind::Dht22, 7, 60_000, 24 * 60);
        for r in &rs {
            let t = format!("{}", r.temperature);
            let decimals = t.split_once('.').map_or(0, |(_, d)| d.len());
            assert!(decimals <= 1, "{t}");
            assert!((-40.0..=80.0).contains(&r.temperature));
            assert!((0.0..=100.0).contains(&r.humidity));
        }
        // Finer than the DHT11: many readings are not whole degrees.
        assert!(rs.iter().filter(|r| r.temperature.fract() != 0.0).count() > rs.len() / 2);
    }

    #[test]
    fn afternoons_are_warmer_than_nights_and_humidity_moves_against_temperature() {
        let mut warmer = 0;
        for seed in 0..20 {
            let rs = readings(SensorKind::Dht22, seed, HOUR_MS / 4, 4 * 24);
            let at = |h: usize| rs[h * 4].temperature;
            // 15:00 vs 03:00 UTC (phase at most ±2 h).
            if at(15) > at(3) {
                warmer += 1;
            }
            let n = rs.len() as f64;
            let mt = rs.iter().map(|r| f64::from(r.temperature)).sum::<f64>() / n;
            let mh = rs.iter().map(|r| f64::from(r.humidity)).sum::<f64>() / n;
            let cov: f64 = rs
                .iter()
                .map(|r| (f64::from(r.temperature) - mt) * (f64::from(r.humidity) - mh))
                .sum();
            assert!(cov < 0.0, "seed {seed}: humidity should fall as it warms");
        }
        assert!(warmer >= 18, "only {warmer} of 20 devices warmer at 15:00");
    }

    #[test]
    fn consecutive_readings_change_little() {
        let rs = readings(SensorKind::Dht22, 3, 1_000, 600);
        for w in rs.windows(2) {
            assert!((w[1].temperature - w[0].temperature).abs() < 1.5, "{w:?}");
        }
    }

    #[test]
    fn reads_fail_at_about_the_configured_rate_and_never_always() {
        let mut s = Sensor::new(SensorKind::Dht11, 0.1, 1);
        let failures = (0..10_000)
            .filter(|i| s.read(MIDNIGHT + i * 1000).is_err())
            .count();
        assert!((800..1200).contains(&failures), "{failures}");
        let mut never = Sensor::new(SensorKind::Dht11, f64::NAN, 1);
        assert!((0..1000).all(|i| never.read(MIDNIGHT + i).is_ok()));
    }

    #[test]
    fn same_seed_same_readings() {
        assert_eq!(
            readings(SensorKind::Dht11, 42, 1000, 50),
            readings(SensorKind::Dht11, 42, 1000, 50)
        );
    }

    #[test]
    fn clock_going_backwards_does_not_break_the_model() {
        let mut s = Sensor::new(SensorKind::Dht11, 0.0, 5);
        let a = s.read(MIDNIGHT + HOUR_MS).expect("read");
        let b = s.read(MIDNIGHT).expect("read");
        assert!((a.temperature - b.temperature).abs() < 10.0);
    }

    #[test]
    fn sensor_names_parse() {
        assert_eq!("DHT22".parse::<SensorKind>(), Ok(SensorKind::Dht22));
        assert_eq!("dht11".parse::<SensorKind>(), Ok(SensorKind::Dht11));
        assert!("bme280".parse::<SensorKind>().is_err());
    }
}
