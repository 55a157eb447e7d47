//! `cargo xtask bench console`: the console's server-side times (issue 8's
//! goal: ≤ 100 ms each) — the device list on 10,000 devices and a 30-day
//! chart — measured in process by `rampart-loadgen console` on SQLite.
//! Runs on its own, never as part of `all`.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};
use serde_json::Value;

/// Sizes of a run.
#[derive(Debug, Clone, Copy)]
pub struct ConsoleSizes {
    /// Devices registered.
    pub devices: usize,
    /// Days of one-minute data for the charted device.
    pub days: u32,
    /// Timed runs of each measurement.
    pub runs: usize,
}

impl ConsoleSizes {
    /// The full run, or a seconds-long smoke run with `quick`.
    pub fn new(quick: bool) -> Self {
        if quick {
            Self {
                devices: 300,
                days: 2,
                runs: 20,
            }
        } else {
            Self {
                devices: 10_000,
                days: 30,
                runs: 200,
            }
        }
    }
}

/// Runs the benchmark with `loadgen` in `dir`; returns the Markdown table
/// and the raw report.
pub fn bench(loadgen: &Path, dir: &Path, z: &ConsoleSizes) -> Result<(String, Value)> {
    eprintln!(
        "console: {} devices, {} days of 1-minute data, {} runs each",
        z.devices, z.days, z.runs
    );
    let out = Command::new(loadgen)
        .args(["console", "--store-dir"])
        .arg(dir.join("console-store"))
        .args([
            "--devices",
            &z.devices.to_string(),
            "--days",
            &z.days.to_string(),
            "--runs",
            &z.runs.to_string(),
        ])
        .output()
        .context("running rampart-loadgen console")?;
    if !out.status.success() {
        bail!(
            "rampart-loadgen console failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let report: Value = serde_json::from_slice(&out.stdout)
        .context("rampart-loadgen console printed no JSON report")?;
    Ok((table(&report), report))
}

/// The report as a Markdown table, times in milliseconds.
fn table(r: &Value) -> String {
    let ms = |v: &Value| {
        v.as_f64()
            .map_or_else(|| "–".into(), |us| format!("{:.1}", us / 1000.0))
    };
    let mut t = format!(
        "Console, server side ({} devices, {} readings on the charted device; setup {:.0} s)\n\n\
         | measurement | answer size | p50 ms | p99 ms | max ms |\n|---|---:|---:|---:|---:|\n",
        r["devices"],
        r["readings"],
        r["setup_secs"].as_f64().unwrap_or(0.0)
    );
    for row in r["rows"].as_array().into_iter().flatten() {
        let l = &row["latency"];
        t.push_str(&format!(
            "| {} | {} | {} | {} | {} |\n",
            row["what"].as_str().unwrap_or("?"),
            row["size"],
            ms(&l["p50_us"]),
            ms(&l["p99_us"]),
            ms(&l["max_us"]),
        ));
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_shows_milliseconds() {
        let r = serde_json::json!({
            "devices": 10, "readings": 5, "setup_secs": 1.0,
            "rows": [{"what": "list", "size": 3, "latency": {"p50_us": 1500, "p99_us": 2500, "max_us": 3000}}]
        });
        assert!(
            table(&r).contains("| list | 3 | 1.5 | 2.5 | 3.0 |"),
            "{}",
            table(&r)
        );
    }
}
