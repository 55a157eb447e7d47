//! The time plan of a bench run: an estimate per step from the configured
//! sizes, printed before anything starts, and the actual time per step
//! printed as each ends and again at the end, so that every run shows where
//! its time went against the 15-minute bound of `cargo xtask bench all`.
//!
//! The estimates are arithmetic on the sizes with the per-run costs below,
//! taken from the full release runs of 2026-11-25 on the 2-core bench
//! machine and the `--quick` runs since; a run on a busy machine or with
//! dev binaries takes longer. The end-of-run summary puts planned and
//! actual side by side so the constants can be corrected from a real run.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};

use crate::pipeline::{POSTGRES_CONFIGS, PipelineSizes, SQLITE_CONFIGS};
use crate::setup::Identities;
use crate::sizes::Sizes;

/// `cargo xtask bench all` must plan to finish within this (issue 6).
pub const ALL_BOUND: Duration = Duration::from_secs(15 * 60);

/// One `rampart device|service create` with 4 CLI processes at a time
/// (10,000 device identities took ≈ 3 min; SQLite serialises the writes,
/// so more processes do not help).
const IDENTITY_S: f64 = 0.018;
/// `rampart init`, the reader, the CA export, starting both brokers.
const STARTUP_S: f64 = 5.0;
/// Per load generator run beyond its window: process start, connecting
/// the ≈ 50 devices and the subscriber, the subscriber's drain (≥ 1 s of
/// silence) and the wait until both brokers are idle (≥ 0.3 s).
const RUN_OVERHEAD_S: f64 = 2.5;
/// Per QoS 0 fan-in round beyond [`RUN_OVERHEAD_S`]: Rampart keeps
/// delivering (and committing) what it read after the window, and the next
/// run waits until both brokers are idle. `--quick` dev runs spent 14–25 s
/// on it for a 1 s window; release runs have not measured it yet.
const QOS0_BACKLOG_S: f64 = 10.0;
/// A handshake run has no subscriber to connect or drain.
const HANDSHAKE_OVERHEAD_S: f64 = 1.0;
/// Per fan-out phase beyond its window: the subscribers' last deliveries
/// and the pause before the next phase.
const FANOUT_PHASE_OVERHEAD_S: f64 = 1.0;
/// mTLS connections opened per second, 32 at a time (10,000 idle
/// connections: Rampart 10.1 s, Mosquitto 27.4 s).
const RAMPART_CONNECTS_PER_S: f64 = 990.0;
const MOSQUITTO_CONNECTS_PER_S: f64 = 365.0;
/// Fan-out subscribers connected and subscribed per second on Mosquitto
/// (1,000 in ≈ 6 s; each one is a `user` block in its ACL).
const MOSQUITTO_SUBSCRIBERS_PER_S: f64 = 170.0;
/// Idle connections: settle before the RSS reading, and closing them.
const CONNS_EXTRA_S: f64 = 2.0;
/// One revocation: CLI run, up to one change-feed poll, the spread.
const REVOKE_PER_DEVICE_S: f64 = 0.3;
/// Per ingest run beyond its window: store open, the last burst's commit;
/// PostgreSQL also creates and drops a database.
const SQLITE_INGEST_OVERHEAD_S: f64 = 2.0;
const POSTGRES_INGEST_OVERHEAD_S: f64 = 4.0;
/// Chart store bulk load (197,000 points/s), per query, and set-up.
const CHART_LOAD_POINTS_PER_S: f64 = 197_000.0;
const CHART_QUERY_S: f64 = 0.003;
const CHART_WINDOWS: f64 = 3.0;
const CHART_SETUP_S: f64 = 5.0;

/// Which suites a run includes.
#[derive(Debug, Clone, Copy)]
pub struct Suites {
    /// Fan-in, loss-free search, latency, handshakes, fan-out, revoke.
    pub broker: bool,
    /// Idle connections.
    pub conns: bool,
    /// Durable ingest (Rampart only).
    pub ingest: bool,
    /// Chart queries (Rampart only).
    pub query: bool,
}

/// What a plan is made from besides the sizes.
#[derive(Debug, Clone, Copy)]
pub struct Inputs<'a> {
    /// Sizes of the broker scenarios.
    pub sizes: &'a Sizes,
    /// Sizes of the pipeline scenarios.
    pub pipeline: &'a PipelineSizes,
    /// Suites to run.
    pub suites: Suites,
    /// Whether the PostgreSQL ingest rows run.
    pub postgres: bool,
    /// Latency rates measured (3 by default; `--latency-rates` sets them);
    /// the middle one is measured twice (stored and routed only).
    pub latency_rates: usize,
}

/// One planned step, in run order.
#[derive(Debug, Clone)]
pub struct Step {
    /// The key the run records its actual time under.
    pub key: &'static str,
    /// What runs, with its sizes.
    pub what: String,
    /// Estimated seconds.
    pub seconds: f64,
}

/// The estimated steps of a run.
#[derive(Debug, Clone)]
pub struct Plan {
    /// In run order.
    pub steps: Vec<Step>,
}

impl Plan {
    /// The plan for these sizes and suites.
    pub fn new(i: Inputs<'_>) -> Plan {
        let z = i.sizes;
        let s = i.suites;
        let mut steps = Vec::new();
        let mut step = |key, what: String, seconds: f64| steps.push(Step { key, what, seconds });
        let pz = i.pipeline;
        if s.ingest {
            let sqlite = SQLITE_CONFIGS.len() as f64
                * pz.rounds as f64
                * (pz.ingest.as_secs_f64() + SQLITE_INGEST_OVERHEAD_S);
            let (pg_configs, pg) = if i.postgres {
                let n = POSTGRES_CONFIGS.len();
                let t = n as f64
                    * pz.rounds as f64
                    * (pz.ingest.as_secs_f64() + POSTGRES_INGEST_OVERHEAD_S);
                (n, t)
            } else {
                (0, 0.0)
            };
            step(
                "ingest",
                format!(
                    "durable ingest: ({} SQLite + {pg_configs} PostgreSQL configurations) × {} × {}",
                    SQLITE_CONFIGS.len(),
                    count(pz.rounds, "round"),
                    secs(pz.ingest)
                ),
                sqlite + pg,
            );
        }
        if s.query {
            step(
                "query",
                format!(
                    "chart query: load {} points, {} queries per window",
                    pz.chart_points, pz.chart_queries
                ),
                pz.chart_points as f64 / CHART_LOAD_POINTS_PER_S
                    + CHART_WINDOWS * pz.chart_queries as f64 * CHART_QUERY_S
                    + CHART_SETUP_S,
            );
        }
        if !(s.broker || s.conns) {
            return Plan { steps };
        }
        let ids = Identities::for_run(z, s).total();
        step(
            "setup",
            format!("set-up: init, {ids} identities (CLI, 4 at a time), both brokers started"),
            STARTUP_S + ids as f64 * IDENTITY_S,
        );
        if s.broker {
            for (key, name) in [
                ("fanin-q0-clean", "fan-in QoS 0, clean sub: "),
                ("fanin-q1-clean", "fan-in QoS 1, clean sub: "),
                ("fanin-q1-persistent", "fan-in QoS 1, persistent sub: "),
            ] {
                let (what, mut seconds) =
                    comparison(name.into(), z.fanin_rounds, z.fanin, RUN_OVERHEAD_S);
                if key == "fanin-q0-clean" {
                    seconds += z.fanin_rounds as f64 * QOS0_BACKLOG_S;
                }
                step(key, what, seconds);
            }
            let probe = z.probe.as_secs_f64() + RUN_OVERHEAD_S + z.probe_give_up.as_secs_f64();
            let search = (z.search_max_probes as f64 * probe).min(z.search_budget.as_secs_f64());
            step(
                "lossfree",
                format!(
                    "loss-free rate search: ≤ {} or {} probes of {} per broker",
                    secs(z.search_budget),
                    z.search_max_probes,
                    secs(z.probe)
                ),
                2.0 * search,
            );
            let (what, seconds) = comparison(
                format!("latency: {} × ", count(i.latency_rates, "rate")),
                z.latency_rounds,
                z.latency,
                RUN_OVERHEAD_S,
            );
            // The middle rate once more, routed only: one round.
            let (_, not_stored) = comparison(String::new(), 1, z.latency, RUN_OVERHEAD_S);
            step(
                "latency",
                format!("{what}, and 1 round of the middle rate not stored"),
                i.latency_rates as f64 * seconds
                    + if i.latency_rates > 0 { not_stored } else { 0.0 },
            );
            let c = comparison(
                "TLS handshakes: ".into(),
                z.handshake_rounds,
                z.handshakes,
                HANDSHAKE_OVERHEAD_S,
            );
            step("handshakes", c.0, c.1);
            let subs = z.fanout_subscribers as f64;
            let connect = subs / RAMPART_CONNECTS_PER_S + subs / MOSQUITTO_SUBSCRIBERS_PER_S;
            let phases = 2.0 * (z.fanout.as_secs_f64() + FANOUT_PHASE_OVERHEAD_S);
            step(
                "fanout",
                format!(
                    "fan-out: {} × 2 brokers × ({} connected once, QoS 0 and 1 phases of {})",
                    count(z.fanout_rounds, "round"),
                    count(z.fanout_subscribers, "subscriber"),
                    secs(z.fanout)
                ),
                z.fanout_rounds as f64 * (connect + 2.0 * (RUN_OVERHEAD_S + phases)),
            );
        }
        if s.conns {
            let n = z.connections as f64;
            step(
                "conns",
                format!(
                    "idle connections: {} × 2 brokers, {}, hold {}",
                    z.connections,
                    count(z.conns_rounds, "round"),
                    secs(z.hold)
                ),
                z.conns_rounds as f64
                    * (n / RAMPART_CONNECTS_PER_S
                        + n / MOSQUITTO_CONNECTS_PER_S
                        + 2.0 * (RUN_OVERHEAD_S + CONNS_EXTRA_S + z.hold.as_secs_f64())),
            );
        }
        if s.broker {
            step(
                "revoke",
                format!("revoke → disconnect: {} devices (Rampart)", z.revocable),
                RUN_OVERHEAD_S + z.revocable as f64 * REVOKE_PER_DEVICE_S,
            );
        }
        Plan { steps }
    }

    /// The estimated total.
    pub fn total(&self) -> Duration {
        Duration::from_secs_f64(self.steps.iter().map(|s| s.seconds).sum())
    }

    /// The estimate of the step `key`.
    fn seconds(&self, key: &str) -> Option<f64> {
        self.steps.iter().find(|s| s.key == key).map(|s| s.seconds)
    }

    /// The plan as printed before the run.
    pub fn render(&self) -> String {
        let mut out = String::from(
            "time plan (estimates for release binaries on an otherwise idle machine; the build is not included):\n",
        );
        for s in &self.steps {
            out.push_str(&format!("  {:>6.0} s  {}\n", s.seconds, s.what));
        }
        out.push_str(&format!(
            "  {:>6.0} s  total ({})\n",
            self.total().as_secs_f64(),
            minutes(self.total())
        ));
        out
    }

    /// Fail when the plan exceeds `bound`, naming the largest steps and the
    /// ways out.
    pub fn check_bound(&self, bound: Duration) -> Result<()> {
        if self.total() <= bound {
            return Ok(());
        }
        let mut largest: Vec<&Step> = self.steps.iter().collect();
        largest.sort_by(|a, b| b.seconds.total_cmp(&a.seconds));
        let named: Vec<String> = largest
            .iter()
            .take(3)
            .map(|s| format!("{} ({:.0} s)", s.key, s.seconds))
            .collect();
        bail!(
            "`cargo xtask bench all` plans {}, over its {} bound (largest steps: {}). \
             Lower the sizes (--rounds, --connections, --fanout-subscribers, --search-budget, \
             --latency-rates), run the suites one at a time (broker, conns, ingest, query), \
             or pass --no-time-bound to run it anyway.",
            minutes(self.total()),
            minutes(bound),
            named.join(", ")
        )
    }
}

/// A scenario run `rounds` times against each broker, `window` long plus
/// `overhead` seconds: its description (after `name`) and estimate.
fn comparison(name: String, rounds: usize, window: Duration, overhead: f64) -> (String, f64) {
    (
        format!(
            "{name}{} × 2 brokers × {}",
            count(rounds, "round"),
            secs(window)
        ),
        2.0 * rounds as f64 * (window.as_secs_f64() + overhead),
    )
}

/// "1 round", "2 rounds".
fn count(n: usize, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

fn secs(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s.fract() == 0.0 {
        format!("{s:.0} s")
    } else {
        format!("{s:.1} s")
    }
}

fn minutes(d: Duration) -> String {
    format!("{:.1} min", d.as_secs_f64() / 60.0)
}

/// Actual times per step, against the plan.
#[derive(Debug)]
pub struct Timeline {
    started: Instant,
    plan: Plan,
    done: Vec<(&'static str, f64)>,
}

impl Timeline {
    /// Start the clock.
    pub fn new(plan: Plan) -> Self {
        Self {
            started: Instant::now(),
            plan,
            done: Vec::new(),
        }
    }

    /// Run one step, record and print its time.
    pub fn time<T>(&mut self, key: &'static str, f: impl FnOnce() -> Result<T>) -> Result<T> {
        let t = Instant::now();
        let result = f();
        let took = t.elapsed().as_secs_f64();
        self.done.push((key, took));
        let planned = self.plan.seconds(key).map_or_else(
            || "not planned".to_string(),
            |p| format!("planned {p:.0} s"),
        );
        eprintln!(
            "  [time] {key}: {took:.0} s ({planned}); {:.0} s since the start",
            self.started.elapsed().as_secs_f64()
        );
        result
    }

    /// Planned against actual, per step and in total.
    pub fn render(&self) -> String {
        let mut out = String::from(
            "Run time (planned → actual):\n\n| step | planned s | actual s |\n|---|---:|---:|\n",
        );
        let actual = |key: &str| -> Option<f64> {
            let mut it = self.done.iter().filter(|(k, _)| *k == key).peekable();
            it.peek()?;
            Some(it.map(|(_, s)| s).sum())
        };
        let fmt = |x: Option<f64>| x.map_or_else(|| "–".to_string(), |x| format!("{x:.0}"));
        let mut shown: Vec<&str> = Vec::new();
        for (key, _) in &self.done {
            if self.plan.seconds(key).is_none() && !shown.contains(key) {
                shown.push(key);
                out.push_str(&format!("| {key} | – | {} |\n", fmt(actual(key))));
            }
        }
        let mut actual_planned = 0.0;
        for s in &self.plan.steps {
            let a = actual(s.key);
            actual_planned += a.unwrap_or(0.0);
            out.push_str(&format!("| {} | {:.0} | {} |\n", s.key, s.seconds, fmt(a)));
        }
        let total = self.started.elapsed();
        out.push_str(&format!(
            "| planned steps | {:.0} ({}) | {actual_planned:.0} ({}) |\n\
             | total, build and reporting included | | {:.0} ({}) |\n",
            self.plan.total().as_secs_f64(),
            minutes(self.plan.total()),
            minutes(Duration::from_secs_f64(actual_planned)),
            total.as_secs_f64(),
            minutes(total)
        ));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn sizes(args: &[&str]) -> (Sizes, PipelineSizes) {
        let cli = crate::Cli::parse_from(["xtask", "bench"].iter().chain(args));
        let crate::Task::Bench(a) = cli.command;
        (Sizes::of(&a), PipelineSizes::new(a.quick, a.rounds))
    }

    const ALL: Suites = Suites {
        broker: true,
        conns: true,
        ingest: true,
        query: true,
    };

    fn plan(z: &Sizes, pz: &PipelineSizes, suites: Suites) -> Plan {
        Plan::new(Inputs {
            sizes: z,
            pipeline: pz,
            suites,
            postgres: true,
            latency_rates: z.latency_fractions.len(),
        })
    }

    #[test]
    fn the_default_all_plan_fits_the_bound_with_room() {
        let (z, pz) = sizes(&["all"]);
        let p = plan(&z, &pz, ALL);
        assert!(p.check_bound(ALL_BOUND).is_ok(), "{}", p.render());
        // Room for estimates that are off by a minute.
        assert!(p.total() <= Duration::from_secs(14 * 60), "{}", p.render());
        let keys: Vec<&str> = p.steps.iter().map(|s| s.key).collect();
        assert_eq!(
            keys,
            [
                "ingest",
                "query",
                "setup",
                "fanin-q0-clean",
                "fanin-q1-clean",
                "fanin-q1-persistent",
                "lossfree",
                "latency",
                "handshakes",
                "fanout",
                "conns",
                "revoke"
            ]
        );
    }

    #[test]
    fn more_rounds_break_the_bound_and_the_message_says_how_out() {
        let (z, pz) = sizes(&["all", "--rounds", "4"]);
        let p = plan(&z, &pz, ALL);
        let Err(e) = p.check_bound(ALL_BOUND) else {
            panic!("4 rounds everywhere should not fit: {}", p.render());
        };
        let msg = e.to_string();
        assert!(msg.contains("--no-time-bound"), "{msg}");
        assert!(msg.contains("15.0 min"), "{msg}");
    }

    #[test]
    fn the_plan_covers_only_the_suites_that_run() {
        let (z, pz) = sizes(&["conns"]);
        let conns_only = Suites {
            broker: false,
            conns: true,
            ingest: false,
            query: false,
        };
        let p = plan(&z, &pz, conns_only);
        let keys: Vec<&str> = p.steps.iter().map(|s| s.key).collect();
        assert_eq!(keys, ["setup", "conns"]);
        // 10,000 devices and the reader; no fan-out or revocable identities.
        assert_eq!(Identities::for_run(&z, conns_only).total(), 10_001);
        assert_eq!(Identities::for_run(&z, ALL).total(), 10_000 + 1 + 1000 + 20);
    }

    #[test]
    fn the_timeline_sums_repeated_steps_and_lists_unplanned_ones() -> Result<()> {
        let (z, pz) = sizes(&["all", "--quick"]);
        let mut t = Timeline::new(plan(&z, &pz, ALL));
        t.time("build", || Ok(()))?;
        t.time("latency", || Ok(()))?;
        t.time("latency", || Ok(()))?;
        let table = t.render();
        assert!(table.contains("| build | – | 0 |"), "{table}");
        assert!(table.contains("| revoke |"), "{table}");
        assert_eq!(table.matches("| latency |").count(), 1, "{table}");
        Ok(())
    }
}
