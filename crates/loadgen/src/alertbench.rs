//! Alert evaluation cost (issue 10): a fleet of devices, three rules
//! each, one message per device per second, fed to the same
//! [`rampart_alerts::Evaluator`] `serve` runs, in process.
//!
//! Two phases:
//! - paced: the real rate (devices × rate messages per second) for a
//!   while, spread over 10 ms slots, with the timer tick `serve` does;
//!   the figure is the CPU the process used over the wall time, as a share
//!   of one core (evaluation is one task: at most one core);
//! - flat out: the same messages as fast as they go, for the headroom.
//!
//! Readings follow a random walk from values spread over the fleet, some
//! near the limits, crossing the thresholds now and then, so trackers move through their
//! states and transitions happen (counted) as they would in a fleet.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rampart_alerts::{DeviceRef, Evaluator, Rule, Scope, parse};
use serde::Serialize;

use crate::procfs;

/// What to run.
#[derive(Debug, Clone, Copy)]
pub struct AlertBenchConfig {
    /// Devices in the fleet.
    pub devices: usize,
    /// How long the paced phase runs.
    pub duration: Duration,
    /// Messages per device per second.
    pub rate_per_device: f64,
}

/// The figures.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AlertBenchReport {
    /// Devices.
    pub devices: usize,
    /// Rules (each applies to every device).
    pub rules: usize,
    /// Paced phase: messages evaluated.
    pub paced_messages: u64,
    /// Paced phase: wall seconds.
    pub paced_seconds: f64,
    /// Paced phase: messages per second achieved.
    pub paced_rate: f64,
    /// Paced phase: CPU seconds used.
    pub paced_cpu_seconds: f64,
    /// Paced phase: CPU as a share of one core.
    pub core_share: f64,
    /// Flat out: messages per second.
    pub max_rate: f64,
    /// Flat out: microseconds per message.
    pub micros_per_message: f64,
    /// Trackers held at the end.
    pub trackers: usize,
    /// Alert transitions produced (both phases).
    pub transitions: u64,
}

/// A deterministic pseudo-random source (xorshift), so runs compare.
struct Noise(u64);

impl Noise {
    fn next(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

struct Fleet {
    ids: Vec<String>,
    owners: HashMap<String, Option<String>>,
    temperature: Vec<f64>,
    humidity: Vec<f64>,
    noise: Noise,
}

impl Fleet {
    fn new(devices: usize) -> Self {
        let ids: Vec<String> = (0..devices).map(|i| format!("bench-{i:05}")).collect();
        let owners = ids
            .iter()
            .enumerate()
            .map(|(i, id)| (id.clone(), Some(format!("user:owner-{}", i % 50))))
            .collect();
        Self {
            ids,
            owners,
            // Spread from 20 to 30 °C and 18 to 57 %: some devices hover
            // around the limits, so alerts fire and resolve during a run.
            temperature: (0..devices).map(|i| 20.0 + (i % 11) as f64).collect(),
            humidity: (0..devices).map(|i| 18.0 + (i % 40) as f64).collect(),
            noise: Noise(0x9E37_79B9_7F4A_7C15),
        }
    }

    /// One message of device `i` at `at_ms`, as the engine handles it.
    fn message(
        &mut self,
        eval: &mut Evaluator,
        i: usize,
        at_ms: u64,
        out: &mut Vec<rampart_alerts::Transition>,
    ) {
        let t = (self.temperature[i] + (self.noise.next() - 0.5) * 0.6).clamp(10.0, 40.0);
        let h = (self.humidity[i] + (self.noise.next() - 0.5) * 1.2).clamp(5.0, 90.0);
        self.temperature[i] = t;
        self.humidity[i] = h;
        let id = &self.ids[i];
        let owner = self.owners.get(id).cloned().flatten();
        let metrics = [("temperature", t), ("humidity", h)];
        eval.reading(
            DeviceRef {
                id,
                owner: owner.as_deref(),
            },
            &metrics,
            at_ms,
            out,
        );
    }
}

fn now_ms(start: Instant, base_ms: u64) -> u64 {
    base_ms + u64::try_from(start.elapsed().as_millis()).unwrap_or(0)
}

/// Runs both phases.
pub fn alerts(config: AlertBenchConfig) -> AlertBenchReport {
    let rules = [
        "temperature > 30 for 5m hysteresis 1",
        "humidity < 20 for 1m",
        "no-telemetry for 15m",
    ];
    let mut eval = Evaluator::new();
    eval.set_rules(
        rules
            .iter()
            .enumerate()
            .map(|(i, e)| Rule {
                id: i as u64 + 1,
                scope: Scope::Fleet,
                condition: parse(e).expect("benchmark rules parse"),
            })
            .collect(),
    );
    let mut fleet = Fleet::new(config.devices);
    let mut out = Vec::new();
    let mut transitions = 0u64;
    let base_ms = 1_764_000_000_000;

    // Paced: the fleet's rate, in 10 ms slots.
    let per_second = config.devices as f64 * config.rate_per_device;
    let slot = Duration::from_millis(10);
    let per_slot = per_second * slot.as_secs_f64();
    let pid = std::process::id();
    let cpu0 = procfs::cpu_seconds(pid).unwrap_or(0.0);
    let start = Instant::now();
    let mut sent = 0u64;
    let mut owed = 0.0;
    let mut next = 0usize;
    let mut slot_at = start;
    while start.elapsed() < config.duration {
        owed += per_slot;
        let now = now_ms(start, base_ms);
        while owed >= 1.0 {
            fleet.message(&mut eval, next, now, &mut out);
            next = (next + 1) % config.devices;
            owed -= 1.0;
            sent += 1;
        }
        eval.tick(now, &mut out);
        transitions += out.len() as u64;
        out.clear();
        slot_at += slot;
        if let Some(wait) = slot_at.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    }
    let paced_seconds = start.elapsed().as_secs_f64();
    let paced_cpu = procfs::cpu_seconds(pid).unwrap_or(0.0) - cpu0;

    // Flat out: the same work with time advancing as the paced run's would.
    let flat = (per_second * 10.0).max(10_000.0) as u64;
    let flat_start = Instant::now();
    let mut clock = now_ms(start, base_ms);
    for k in 0..flat {
        if k % config.devices.max(1) as u64 == 0 {
            clock += 1_000;
            eval.tick(clock, &mut out);
        }
        fleet.message(&mut eval, next, clock, &mut out);
        next = (next + 1) % config.devices;
    }
    transitions += out.len() as u64;
    let flat_seconds = flat_start.elapsed().as_secs_f64();

    AlertBenchReport {
        devices: config.devices,
        rules: rules.len(),
        paced_messages: sent,
        paced_seconds,
        paced_rate: sent as f64 / paced_seconds,
        paced_cpu_seconds: paced_cpu,
        core_share: paced_cpu / paced_seconds,
        max_rate: flat as f64 / flat_seconds,
        micros_per_message: flat_seconds * 1e6 / flat as f64,
        trackers: eval.tracked(),
        transitions,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_short_run_evaluates_every_message() {
        let r = alerts(AlertBenchConfig {
            devices: 50,
            duration: Duration::from_millis(200),
            rate_per_device: 10.0,
        });
        assert!(r.paced_messages >= 50, "{r:?}");
        assert_eq!(r.rules, 3);
        // Every device has a temperature, humidity and telemetry tracker
        // once it has sent a reading (humidity/temperature trackers exist
        // from the first reading).
        assert_eq!(r.trackers, 150, "{r:?}");
        assert!(r.max_rate > 0.0);
    }
}
