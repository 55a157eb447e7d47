//! The host's CPU time, from the first line of `/proc/stat`, read around
//! each load generator run: how much of it the hypervisor gave to other
//! guests (*steal*). On a shared 2-vCPU machine a third of the time can go
//! that way; latency tails then say more about the neighbours than about
//! the broker, and a ratio between two runs with different steal is not a
//! comparison of the brokers. The report carries it so the table can say.

use serde_json::{Value, json};

/// Cumulative CPU time of all CPUs, in clock ticks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuTimes {
    total: u64,
    steal: u64,
}

impl CpuTimes {
    /// Reads `/proc/stat`; `None` where there is none (not Linux).
    pub fn read() -> Option<Self> {
        Self::parse(&std::fs::read_to_string("/proc/stat").ok()?)
    }

    /// Parses the aggregate `cpu` line: user nice system idle iowait irq
    /// softirq steal guest guest_nice. Guest time is already counted in
    /// user and nice, so the total is the first eight fields.
    fn parse(stat: &str) -> Option<Self> {
        let line = stat.lines().find(|l| l.starts_with("cpu "))?;
        let fields: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .take(8)
            .map(str::parse)
            .collect::<Result<_, _>>()
            .ok()?;
        let steal = *fields.get(7)?;
        Some(Self {
            total: fields.iter().sum(),
            steal,
        })
    }
}

/// The report's `host` object for the time between two readings.
pub fn between(before: CpuTimes, after: CpuTimes) -> Value {
    let total = after.total.saturating_sub(before.total);
    let steal = after.steal.saturating_sub(before.steal);
    let percent = if total > 0 {
        100.0 * steal as f64 / total as f64
    } else {
        0.0
    };
    json!({ "steal_percent": percent })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steal_is_its_share_of_all_cpu_time() {
        let before =
            CpuTimes::parse("cpu  100 0 50 800 10 0 5 35 0 0\ncpu0 50 0 25 400 5 0 2 18 0 0\n")
                .expect("a full cpu line");
        let after =
            CpuTimes::parse("cpu  200 0 100 1000 10 0 10 135 7 0\n").expect("a full cpu line");
        assert_eq!(before.total, 1000);
        assert_eq!(after.total, 1455);
        let v = between(before, after);
        // 100 stolen ticks of 455.
        assert!(
            (v["steal_percent"].as_f64().expect("a number") - 100.0 * 100.0 / 455.0).abs() < 1e-9
        );
    }

    #[test]
    fn a_missing_or_short_cpu_line_is_none() {
        assert_eq!(CpuTimes::parse("intr 1 2 3\n"), None);
        assert_eq!(CpuTimes::parse("cpu  1 2 3\n"), None);
        assert_eq!(CpuTimes::parse("cpu  1 2 x 4 5 6 7 8\n"), None);
    }
}
