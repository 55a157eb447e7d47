//! `cargo xtask bench alerts`: alert evaluation cost (issue 10's goal:
//! 10,000 devices × 3 rules at 1 message/s each in a small fraction of a
//! core), measured in process by `rampart-loadgen alerts` with the same
//! evaluator `serve` runs. Runs on its own, never as part of `all`.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};
use serde_json::Value;

/// Sizes of a run.
#[derive(Debug, Clone, Copy)]
pub struct AlertSizes {
    /// Devices.
    pub devices: usize,
    /// Seconds of the paced phase.
    pub seconds: u64,
}

impl AlertSizes {
    /// The full run, or a seconds-long smoke run with `quick`.
    pub fn new(quick: bool) -> Self {
        if quick {
            Self {
                devices: 500,
                seconds: 2,
            }
        } else {
            Self {
                devices: 10_000,
                seconds: 60,
            }
        }
    }
}

/// Runs the benchmark with `loadgen`; returns the Markdown table and the
/// raw report.
pub fn bench(loadgen: &Path, z: &AlertSizes) -> Result<(String, Value)> {
    eprintln!(
        "alerts: {} devices × 3 rules at 1 message/s each for {} s, then flat out",
        z.devices, z.seconds
    );
    let out = Command::new(loadgen)
        .args([
            "alerts",
            "--devices",
            &z.devices.to_string(),
            "--duration",
            &format!("{}s", z.seconds),
        ])
        .output()
        .context("running rampart-loadgen alerts")?;
    if !out.status.success() {
        bail!(
            "rampart-loadgen alerts failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let report: Value = serde_json::from_slice(&out.stdout)
        .context("rampart-loadgen alerts printed no JSON report")?;
    Ok((table(&report), report))
}

/// The report as a Markdown table.
fn table(r: &Value) -> String {
    let f = |k: &str| r[k].as_f64().unwrap_or(0.0);
    format!(
        "Alert evaluation ({} devices × {} rules, in process)\n\n\
         | figure | value |\n|---|---:|\n\
         | paced rate, messages/s | {:.0} |\n\
         | CPU at that rate, share of one core | {:.2} % |\n\
         | flat out, messages/s | {:.0} |\n\
         | flat out, µs per message | {:.2} |\n\
         | trackers held | {} |\n\
         | alert transitions | {} |\n",
        r["devices"],
        r["rules"],
        f("pacedRate"),
        f("coreShare") * 100.0,
        f("maxRate"),
        f("microsPerMessage"),
        r["trackers"],
        r["transitions"],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_shows_the_core_share_in_percent() {
        let r = serde_json::json!({
            "devices": 10, "rules": 3, "pacedRate": 10.0, "coreShare": 0.0123,
            "maxRate": 1e6, "microsPerMessage": 1.0, "trackers": 30, "transitions": 2
        });
        assert!(
            table(&r).contains("| CPU at that rate, share of one core | 1.23 % |"),
            "{}",
            table(&r)
        );
    }
}
