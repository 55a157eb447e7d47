//! Sizes of a bench run: rounds, windows and counts per scenario.
//!
//! The full-size defaults keep `cargo xtask bench all` under the
//! 15-minute bound of issue 6 (see [`crate::plan`]); BENCHMARKS.md ("Run
//! time") says what each window and round count gives up. `--rounds N`
//! sets every comparison scenario's rounds (and the ingest rounds) at once.

use std::time::Duration;

use crate::BenchArgs;

/// Sizes of one bench run.
#[derive(Debug, Clone)]
pub struct Sizes {
    /// Publishing devices in fan-in, latency and the loss-free probes.
    pub devices: usize,
    /// Closed-loop fan-in window (each of its three scenarios).
    pub fanin: Duration,
    /// Closed-loop fan-in rounds.
    pub fanin_rounds: usize,
    /// Open-loop latency window, warm-up included.
    pub latency: Duration,
    /// Leading part of a latency window left out of the histogram.
    pub warmup: Duration,
    /// Latency rounds (per rate).
    pub latency_rounds: usize,
    /// Latency rates as fractions of Mosquitto's highest loss-free rate.
    pub latency_fractions: Vec<f64>,
    /// TLS handshake window.
    pub handshakes: Duration,
    /// TLS handshake rounds.
    pub handshake_rounds: usize,
    /// Simultaneous connectors in the handshake scenario.
    pub handshake_concurrency: usize,
    /// Idle connections to open.
    pub connections: usize,
    /// How long the idle connections are held (idle CPU is measured over it).
    pub hold: Duration,
    /// Idle-connection rounds.
    pub conns_rounds: usize,
    /// Fan-out subscribers, connected once per broker and round.
    pub fanout_subscribers: usize,
    /// Window of each fan-out QoS phase, warm-up included.
    pub fanout: Duration,
    /// Leading part of a fan-out phase left out of the latency figures.
    pub fanout_warmup: Duration,
    /// Messages the slowest fan-out subscriber may be behind.
    pub fanout_window: usize,
    /// Fan-out rounds.
    pub fanout_rounds: usize,
    /// One loss-free probe's window, warm-up included.
    pub probe: Duration,
    /// Leading part of a probe left out of its latency figures.
    pub probe_warmup: Duration,
    /// How long after a probe publishers may still send and await PUBACKs.
    pub probe_give_up: Duration,
    /// Highest p99 latency a passing probe may have.
    pub probe_max_p99: Duration,
    /// Time per broker for the loss-free search.
    pub search_budget: Duration,
    /// Probes per broker for the loss-free search.
    pub search_max_probes: usize,
    /// First probe's rate when the run has no closed-loop fan-in figure to
    /// start from.
    pub search_start: f64,
    /// The search stops when the lowest failing rate is within this
    /// fraction of the highest passing one.
    pub search_precision: f64,
    /// Devices revoked in the revoke-to-disconnect scenario (one round).
    pub revocable: usize,
}

impl Sizes {
    /// The sizes for these arguments: full size, or tiny with `--quick`.
    pub fn of(a: &BenchArgs) -> Sizes {
        let quick = a.quick;
        let pick = |full: u64, small: u64| if quick { small } else { full };
        let rounds = |full: usize| a.rounds.unwrap_or(if quick { 1 } else { full }).max(1);
        Sizes {
            devices: a.devices.unwrap_or(if quick { 10 } else { 50 }).max(1),
            fanin: Duration::from_secs(pick(4, 1)),
            fanin_rounds: rounds(2),
            latency: Duration::from_secs(pick(6, 2)),
            warmup: Duration::from_millis(pick(1000, 500)),
            latency_rounds: rounds(2),
            latency_fractions: if quick {
                vec![0.5]
            } else {
                vec![0.25, 0.5, 0.75]
            },
            handshakes: Duration::from_secs(pick(5, 1)),
            handshake_rounds: rounds(2),
            handshake_concurrency: 8,
            connections: a
                .connections
                .unwrap_or(if quick { 50 } else { 10_000 })
                .max(1),
            hold: Duration::from_secs(pick(5, 1)),
            conns_rounds: a.conns_rounds.unwrap_or(1).max(1),
            fanout_subscribers: a
                .fanout_subscribers
                .unwrap_or(if quick { 50 } else { 1000 })
                .max(1),
            fanout: Duration::from_secs(pick(5, 1)),
            fanout_warmup: Duration::from_millis(pick(1000, 200)),
            fanout_window: 16,
            fanout_rounds: rounds(2),
            probe: Duration::from_millis(pick(4000, 1500)),
            probe_warmup: Duration::from_millis(pick(1000, 500)),
            probe_give_up: Duration::from_secs(2),
            probe_max_p99: Duration::from_millis(100),
            search_budget: a.search_budget.unwrap_or(Duration::from_secs(pick(45, 20))),
            search_max_probes: if quick { 4 } else { 8 },
            search_start: if quick { 500.0 } else { 1000.0 },
            search_precision: 0.10,
            revocable: 20,
        }
    }
}
