//! Loss-free probe: one open-loop fan-in run at a fixed total rate (QoS 1,
//! persistent subscriber, as [`crate::latency`]) and a verdict on whether
//! the broker carried that rate without loss. `cargo xtask bench` searches
//! for the highest rate that passes.
//!
//! A rate passes when every scheduled message was sent, every PUBLISH got a
//! successful PUBACK, the subscriber received every acknowledged message,
//! and the p99 latency stayed under a bound. The bound is what makes the
//! rate *sustained*: a broker that back-pressures its publishers (Rampart
//! holds PUBACK until the commit) would otherwise pass any rate it can work
//! off within the give-up time, with a queue growing all the while; a broker
//! that acknowledges and then drops under overload fails on the loss.

use std::time::Duration;

use crate::latency::{self, LatencyConfig, LatencyReport};
use crate::{LoadgenError, Qos, SessionKind};

/// Probe parameters.
#[derive(Debug, Clone)]
pub struct LossFreeConfig {
    /// The open-loop run; QoS 1 and a persistent subscriber are enforced.
    pub run: LatencyConfig,
    /// How long after the end publishers may still send late messages and
    /// wait for PUBACKs; what is not done by then fails the probe.
    pub give_up: Duration,
    /// Highest p99 latency (intended send to receipt) that still counts as
    /// keeping up with the rate.
    pub max_p99: Duration,
}

/// Probe results: the open-loop report and the verdict.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct LossFreeReport {
    /// The run's figures (`scenario` is "lossfree").
    #[serde(flatten)]
    pub run: LatencyReport,
    /// The p99 bound, microseconds.
    pub max_p99_us: u64,
    /// Whether the rate was carried without loss.
    pub loss_free: bool,
    /// Why not, when it was not.
    pub failures: Vec<String>,
}

/// The reasons a run was not loss-free at the rate (empty: it was).
pub fn judge(r: &LatencyReport, max_p99: Duration) -> Vec<String> {
    let mut why = Vec::new();
    if !r.errors.is_empty() {
        why.push(format!(
            "{} publisher error(s), first: {}",
            r.errors.len(),
            r.errors.first().map_or("", String::as_str)
        ));
    }
    if r.unsent > 0 {
        why.push(format!(
            "{} scheduled messages never sent (publishers stalled on PUBACKs)",
            r.unsent
        ));
    }
    if r.rejected > 0 {
        why.push(format!("{} PUBLISHes refused in their PUBACK", r.rejected));
    }
    let unacked = r.sent.saturating_sub(r.acked + r.rejected);
    if unacked > 0 {
        why.push(format!("{unacked} PUBLISHes never acknowledged"));
    }
    if r.lost > 0 {
        why.push(format!(
            "{} acknowledged messages lost (never reached the subscriber)",
            r.lost
        ));
    }
    if r.latency.count == 0 {
        why.push("no latency samples (nothing received after the warm-up)".into());
    }
    let bound = u64::try_from(max_p99.as_micros()).unwrap_or(u64::MAX);
    if r.latency.p99_us > bound {
        why.push(format!(
            "p99 latency {} µs above the {} µs bound (not keeping up)",
            r.latency.p99_us, bound
        ));
    }
    why
}

/// Run one probe.
pub async fn run(cfg: LossFreeConfig) -> Result<LossFreeReport, LoadgenError> {
    let mut run_cfg = cfg.run;
    run_cfg.qos = Qos::AtLeastOnce;
    run_cfg.subscriber_session = SessionKind::Persistent;
    let mut run = latency::run_with_give_up(run_cfg, cfg.give_up).await?;
    run.scenario = "lossfree".into();
    let failures = judge(&run, cfg.max_p99);
    Ok(LossFreeReport {
        run,
        max_p99_us: u64::try_from(cfg.max_p99.as_micros()).unwrap_or(u64::MAX),
        loss_free: failures.is_empty(),
        failures,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{MqttVersion, Percentiles};

    fn clean_run() -> LatencyReport {
        LatencyReport {
            scenario: "latency".into(),
            mqtt_version: MqttVersion::V5,
            qos: Qos::AtLeastOnce,
            devices: 50,
            uplink: crate::fanin::Uplink::Telemetry,
            rate_target: 1000.0,
            rate_sent: 1000.0,
            duration_s: 4.0,
            warmup_s: 1.0,
            subscriber_session: SessionKind::Persistent,
            sent: 4000,
            acked: 4000,
            rejected: 0,
            unsent: 0,
            received: 4000,
            lost: 0,
            duplicated: 0,
            stale: 0,
            latency: Percentiles {
                count: 3000,
                p50_us: 900,
                p90_us: 1500,
                p99_us: 3000,
                p999_us: 5000,
                max_us: 9000,
            },
            send_lag: None,
            ack: None,
            transit: None,
            outside_stalls: None,
            broker_cpu_percent: None,
            loadgen_cpu_percent: None,
            errors: Vec::new(),
        }
    }

    #[test]
    fn a_clean_run_passes_and_duplicates_are_not_loss() {
        let mut r = clean_run();
        r.duplicated = 3;
        r.received = 4003;
        assert!(judge(&r, Duration::from_millis(100)).is_empty());
    }

    #[test]
    fn each_failure_is_named() {
        let bound = Duration::from_millis(100);
        type Spoil = fn(&mut LatencyReport);
        let cases: [(&str, Spoil); 6] = [
            ("lost", |r| r.lost = 1),
            ("never sent", |r| r.unsent = 7),
            ("never acknowledged", |r| r.acked = 3990),
            ("refused", |r| {
                r.rejected = 2;
                r.acked = 3998;
            }),
            ("p99", |r| r.latency.p99_us = 150_000),
            ("publisher error", |r| r.errors.push("closed".into())),
        ];
        for (word, spoil) in cases {
            let mut r = clean_run();
            spoil(&mut r);
            let why = judge(&r, bound);
            assert_eq!(why.len(), 1, "{word}: {why:?}");
            assert!(why.iter().any(|w| w.contains(word)), "{word}: {why:?}");
        }
    }
}
