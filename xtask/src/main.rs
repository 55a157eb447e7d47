//! Project automation. `cargo xtask bench [broker|ingest|query|conns|sim|all] [--quick]`
//! measures Rampart against a Mosquitto 2.x started beside it with an
//! equivalent configuration; see BENCHMARKS.md.

mod alerts;
mod console;
mod host;
mod pipeline;
mod plan;
mod procs;
mod scrape;
mod search;
mod setup;
mod sim;
mod sizes;
mod stats;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand, ValueEnum};
use serde_json::Value;

use crate::plan::{Plan, Suites, Timeline};
use crate::procs::Guard;
use crate::search::RateSearch;
use crate::setup::{Env, READER};
use crate::sizes::Sizes;

/// Project automation for Rampart.
#[derive(Debug, Parser)]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// Benchmark Rampart against Mosquitto (release builds, loopback only).
    Bench(BenchArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Suite {
    /// Fan-in QoS 0/1, highest loss-free fan-in rate, latency at fixed
    /// rates, TLS handshakes, fan-out 1 → N, and (Rampart only, last)
    /// revoke-to-disconnect.
    Broker,
    /// Idle connections: RSS per connection and idle CPU.
    Conns,
    /// Rampart only: durable ingest through the pipeline (50- and 1-point messages).
    Ingest,
    /// Rampart only: chart query latency on a store of 10 million points.
    Query,
    /// Rampart only: simulated devices one `rampart simulate` sustains at 1 reading/s each.
    Sim,
    /// Rampart only, in process: the console's device list on 10,000
    /// devices and a 30-day chart (runs on its own, not part of `all`).
    Console,
    /// Rampart only, in process: alert evaluation of 10,000 devices × 3
    /// rules at 1 message/s each (runs on its own, not part of `all`).
    Alerts,
    /// Everything above but `sim` and `console` (issue 6's scenarios, within 15 minutes).
    All,
}

#[derive(Debug, clap::Args)]
struct BenchArgs {
    /// Which scenarios to run.
    #[arg(value_enum, default_value = "all")]
    suite: Suite,
    /// Tiny sizes and one round (a CI smoke run: about two minutes).
    #[arg(long)]
    quick: bool,
    /// Rounds of every comparison scenario per broker, and of every ingest
    /// configuration (default 2, 1 with --quick).
    #[arg(long)]
    rounds: Option<usize>,
    /// Rounds of the idle-connections scenario (default 1: it is slow).
    #[arg(long)]
    conns_rounds: Option<usize>,
    /// Idle connections to open (default 10000, 50 with --quick).
    #[arg(long)]
    connections: Option<usize>,
    /// Publishing devices in fan-in and latency (default 50, 10 with --quick).
    #[arg(long)]
    devices: Option<usize>,
    /// Subscribers in fan-out (default 1000, 50 with --quick).
    #[arg(long)]
    fanout_subscribers: Option<usize>,
    /// Time per broker for the loss-free rate search (default 45s, 20s
    /// with --quick).
    #[arg(long, value_parser = humantime::parse_duration)]
    search_budget: Option<Duration>,
    /// Latency rates in messages per second (comma-separated), instead of
    /// 25/50/75 % of Mosquitto's highest loss-free rate in this run.
    #[arg(long, value_delimiter = ',')]
    latency_rates: Vec<f64>,
    /// Run `all` even when its time plan exceeds 15 minutes.
    #[arg(long)]
    no_time_bound: bool,
    /// Use dev-profile binaries (meaningless figures; built with the whole
    /// workspace's targets, so that a `cargo test --workspace` build is
    /// reused).
    #[arg(long)]
    dev_build: bool,
    /// Mosquitto binary.
    #[arg(long, default_value = "/usr/sbin/mosquitto")]
    mosquitto: PathBuf,
    /// PostgreSQL server for the PostgreSQL ingest rows: a database is
    /// created there per run (with psql) and dropped after.
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/postgres")]
    pg_admin_url: String,
    /// Skip the PostgreSQL rows.
    #[arg(long)]
    no_postgres: bool,
    /// Keep the temporary directory (data dir, certificates, logs).
    #[arg(long)]
    keep: bool,
    #[command(flatten)]
    sim: sim::SimArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
enum Broker {
    Rampart,
    Mosquitto,
}

/// One row of the results table: a figure pulled out of the load
/// generator's JSON report by a JSON pointer.
#[derive(Debug, Clone)]
struct Metric {
    label: &'static str,
    unit: &'static str,
    pointer: &'static str,
    scale: f64,
    higher_is_better: bool,
}

const fn metric(
    label: &'static str,
    unit: &'static str,
    pointer: &'static str,
    higher_is_better: bool,
) -> Metric {
    Metric {
        label,
        unit,
        pointer,
        scale: 1.0,
        higher_is_better,
    }
}

/// Both brokers, for scenarios that compare them.
const BOTH: [Broker; 2] = [Broker::Rampart, Broker::Mosquitto];

/// A scenario: load generator arguments and the figures it yields.
#[derive(Debug, Clone)]
struct Scenario {
    key: String,
    title: String,
    args: Vec<String>,
    metrics: Vec<Metric>,
    rounds: usize,
    timeout: Duration,
    /// The brokers it runs against (Rampart-only scenarios: Rampart).
    brokers: Vec<Broker>,
}

/// Results of one scenario: reports per broker, in run order.
#[derive(Debug, Default, serde::Serialize)]
struct Outcome {
    title: String,
    reports: BTreeMap<Broker, Vec<Value>>,
}

struct Bench {
    env: Env,
    loadgen: PathBuf,
    rampart: (Guard, procs::Listening),
    mosquitto: (Guard, std::net::SocketAddr),
    outcomes: Vec<(Scenario, Outcome)>,
    /// What this run's latency rates are fractions of (none when they were
    /// given with `--latency-rates`).
    latency_basis: Option<LatencyBasis>,
}

impl Bench {
    fn broker(&mut self, b: Broker) -> (u32, std::net::SocketAddr) {
        match b {
            Broker::Rampart => (self.rampart.0.pid(), self.rampart.1.mqtt),
            Broker::Mosquitto => (self.mosquitto.0.pid(), self.mosquitto.1),
        }
    }

    fn run_loadgen(&mut self, b: Broker, s: &Scenario, tag: &str) -> Result<Value> {
        let (pid, addr) = self.broker(b);
        self.rampart.0.ensure_running()?;
        self.mosquitto.0.ensure_running()?;
        let out_path = self.env.dir.join(format!("{tag}.json"));
        let err_path = self.env.dir.join(format!("{tag}.stderr"));
        let mut cmd = Command::new(&self.loadgen);
        cmd.arg("--addr")
            .arg(addr.to_string())
            .arg("--certs")
            .arg(&self.env.certs)
            .args(["--subscriber", READER]);
        for a in &s.args {
            cmd.arg(a.replace("{broker_pid}", &pid.to_string()));
        }
        cmd.stdin(Stdio::null())
            .stdout(std::fs::File::create(&out_path).context("creating the report file")?)
            .stderr(std::fs::File::create(&err_path).context("creating the stderr file")?)
            .env("RUST_BACKTRACE", "0");
        // The committer's counters around the Rampart runs of scenarios
        // with `/store/` rows: whether it kept up (BENCHMARKS.md).
        let wants_store = s.metrics.iter().any(|m| m.pointer.starts_with("/store/"));
        let counters = match (b, self.rampart.1.metrics) {
            (Broker::Rampart, Some(addr)) if wants_store => Some((addr, scrape::read(addr)?)),
            _ => None,
        };
        let cpu_before = host::CpuTimes::read();
        let status = Guard::spawn("rampart-loadgen", &mut cmd)?.wait_timeout(s.timeout)?;
        let cpu_after = host::CpuTimes::read();
        if !status.success() {
            let err = std::fs::read_to_string(&err_path).unwrap_or_default();
            bail!(
                "load generator failed against {b:?} ({status}): {}",
                err.trim()
            );
        }
        let text = std::fs::read_to_string(&out_path).context("reading the report")?;
        let mut report: Value = serde_json::from_str(&text)
            .with_context(|| format!("parsing the report {}", out_path.display()))?;
        if let (Some((addr, before)), Some(fields)) = (counters, report.as_object_mut()) {
            fields.insert("store".into(), scrape::between(before, scrape::read(addr)?));
        }
        if let (Some(before), Some(after), Some(fields)) =
            (cpu_before, cpu_after, report.as_object_mut())
        {
            fields.insert("host".into(), host::between(before, after));
        }
        Ok(report)
    }

    /// Run a scenario `rounds` times against both brokers, alternating which
    /// goes first.
    fn run(&mut self, s: Scenario) -> Result<()> {
        let mut outcome = Outcome {
            title: s.title.clone(),
            ..Outcome::default()
        };
        for round in 0..s.rounds {
            for b in round_order(round)
                .into_iter()
                .filter(|b| s.brokers.contains(b))
            {
                self.settle();
                let started = Instant::now();
                let tag = format!("{}-{b:?}-{round}", s.key);
                let report = self.run_loadgen(b, &s, &tag)?;
                print_run(&s, b, round, &report, started.elapsed());
                outcome.reports.entry(b).or_default().push(report);
            }
        }
        self.outcomes.push((s, outcome));
        Ok(())
    }

    /// Fan-out: per round and broker, one load generator run connects the
    /// subscribers once and measures a phase per scenario in `parts` (their
    /// QoS, in order); each phase's report goes to its scenario.
    fn run_fanout(&mut self, run: &Scenario, parts: Vec<Scenario>) -> Result<()> {
        let mut outcomes: Vec<Outcome> = parts
            .iter()
            .map(|p| Outcome {
                title: p.title.clone(),
                ..Outcome::default()
            })
            .collect();
        for round in 0..run.rounds {
            for b in round_order(round) {
                self.settle();
                let started = Instant::now();
                let report = self.run_loadgen(b, run, &format!("{}-{b:?}-{round}", run.key))?;
                let took = started.elapsed();
                let phases = report
                    .get("phases")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default();
                if phases.len() != parts.len() {
                    bail!(
                        "fan-out against {b:?} measured {} of {} phases: {}",
                        phases.len(),
                        parts.len(),
                        phases
                            .last()
                            .and_then(|p| p.get("errors"))
                            .map_or_else(String::new, Value::to_string)
                    );
                }
                eprintln!(
                    "  fan-out {b:<9?} round {}: {} subscribers connected in {:.1} s, {} phases in {:.1} s",
                    round + 1,
                    report
                        .get("subscribers")
                        .and_then(Value::as_u64)
                        .unwrap_or(0),
                    report
                        .get("connect_wall_s")
                        .and_then(Value::as_f64)
                        .unwrap_or(0.0),
                    phases.len(),
                    took.as_secs_f64()
                );
                for ((part, outcome), phase) in parts.iter().zip(&mut outcomes).zip(phases) {
                    print_run(part, b, round, &phase, took);
                    outcome.reports.entry(b).or_default().push(phase);
                }
            }
        }
        self.outcomes.extend(parts.into_iter().zip(outcomes));
        Ok(())
    }

    /// Wait until both brokers are idle, so that a backlog left by the
    /// previous run does not eat into the next one.
    fn settle(&self) {
        let pids = [self.rampart.0.pid(), self.mosquitto.0.pid()];
        let waited = procs::wait_idle(&pids, Duration::from_secs(20));
        if waited > Duration::from_secs(1) {
            eprintln!(
                "  (waited {:.1} s for the brokers to go idle)",
                waited.as_secs_f64()
            );
        }
    }

    /// Search each broker's highest loss-free fan-in rate ([`RateSearch`]):
    /// one open-loop probe per rate, probes alternating between the brokers,
    /// each broker within `z.search_budget` and `z.search_max_probes`. Each
    /// broker's search starts at its closed-loop QoS 1 persistent fan-in
    /// median of this run when there is one (the rate it carried with its
    /// own back-pressure: a close first guess, so fewer probes are spent
    /// doubling), else at `z.search_start`. The outcome holds, per broker,
    /// the report of the highest passing probe (none if nothing passed)
    /// with the whole search under `/search`.
    fn search_loss_free(&mut self, z: &Sizes) -> Result<()> {
        struct State {
            search: RateSearch,
            spent: Duration,
            last: Duration,
            probes: Vec<Value>,
            best: Option<Value>,
        }
        let floor = (z.devices as f64).max(50.0);
        let closed_loop = metric("", "", "/msgs_per_s", true);
        let starts: BTreeMap<Broker, f64> = BOTH
            .iter()
            .map(|&b| {
                let start = self
                    .median("fanin-q1-persistent", b, &closed_loop)
                    .filter(|r| r.is_finite() && *r > 0.0)
                    .map_or(z.search_start, two_significant_digits)
                    .max(floor);
                (b, start)
            })
            .collect();
        let mut states: BTreeMap<Broker, State> = BOTH
            .iter()
            .map(|&b| {
                let search = RateSearch::new(
                    starts.get(&b).copied().unwrap_or(z.search_start),
                    floor,
                    z.search_precision,
                    z.search_max_probes,
                );
                let state = State {
                    search,
                    spent: Duration::ZERO,
                    last: Duration::ZERO,
                    probes: Vec::new(),
                    best: None,
                };
                (b, state)
            })
            .collect();
        let scenario = loss_free_scenario(z);
        for step in 0.. {
            let mut ran = false;
            for b in round_order(step) {
                let Some(st) = states.get_mut(&b) else {
                    continue;
                };
                let Some(rate) = st.search.next() else {
                    continue;
                };
                // Another probe as long as the last one would still fit.
                if st.spent + st.last > z.search_budget {
                    continue;
                }
                self.settle();
                let started = Instant::now();
                let mut probe = scenario.clone();
                probe
                    .args
                    .extend(["--rate".to_string(), format!("{rate:.0}")]);
                let report = self.run_loadgen(b, &probe, &format!("lossfree-{b:?}-{step}"))?;
                let took = started.elapsed();
                st.spent += took;
                st.last = took;
                let passed = report
                    .pointer("/loss_free")
                    .and_then(Value::as_bool)
                    .unwrap_or(false);
                st.search.record(rate, passed);
                let failures = report.get("failures").cloned().unwrap_or(Value::Null);
                eprintln!(
                    "  loss-free search {b:<9?} probe {}: {rate:.0} msg/s {} ({:.1} s)",
                    st.search.probes(),
                    if passed {
                        format!(
                            "loss-free, p99 {} µs",
                            report
                                .pointer("/latency/p99_us")
                                .and_then(Value::as_u64)
                                .unwrap_or(0)
                        )
                    } else {
                        format!("failed: {failures}")
                    },
                    took.as_secs_f64()
                );
                st.probes.push(serde_json::json!({
                    "rate": rate,
                    "loss_free": passed,
                    "failures": failures,
                    "p99_us": report.pointer("/latency/p99_us"),
                    "seconds": took.as_secs_f64(),
                }));
                if passed && st.search.highest_pass() == Some(rate) {
                    st.best = Some(report);
                }
                ran = true;
            }
            if !ran {
                break;
            }
        }
        let mut outcome = Outcome {
            title: scenario.title.clone(),
            ..Outcome::default()
        };
        for (b, st) in states {
            let mut report = st.best.unwrap_or_else(|| serde_json::json!({}));
            if let Some(obj) = report.as_object_mut() {
                obj.insert(
                    "search".into(),
                    serde_json::json!({
                        "start": starts.get(&b),
                        "highest_pass": st.search.highest_pass(),
                        "lowest_fail": st.search.lowest_fail(),
                        "probes": st.probes,
                        "seconds": st.spent.as_secs_f64(),
                    }),
                );
            }
            outcome.reports.insert(b, vec![report]);
        }
        self.outcomes.push((scenario, outcome));
        Ok(())
    }

    /// Latency at fixed rates: `given`, or else 25/50/75 % of Mosquitto's
    /// highest loss-free rate from this run's search; when the search found
    /// none, of Mosquitto's closed-loop QoS 1 persistent fan-in median, said
    /// in every row's title and in a note.
    ///
    /// At the middle rate, a second row has the devices publish command
    /// results instead of telemetry (`--uplink cmd`): Rampart routes them
    /// without storing them, so the two rows at that rate separate the
    /// broker's own latency from what storing every message costs.
    fn run_latency(&mut self, z: &Sizes, given: &[f64]) -> Result<()> {
        let rates: Vec<(f64, Option<(f64, LatencyBasis)>)> = if given.is_empty() {
            let basis = self.set_latency_basis()?;
            z.latency_fractions
                .iter()
                .map(|&f| ((basis.rate() * f).max(1.0), Some((f, basis))))
                .collect()
        } else {
            given.iter().map(|&rate| (rate, None)).collect()
        };
        for &(rate, fraction) in &rates {
            self.run(latency_scenario(z, rate, fraction, Uplink::Telemetry))?;
        }
        if let Some(&(rate, fraction)) = rates.get(rates.len() / 2) {
            self.run(latency_scenario(z, rate, fraction, Uplink::Cmd))?;
        }
        Ok(())
    }

    /// Chooses and records the basis of the latency rates: Mosquitto's
    /// loss-free rate from this run's search, else its closed-loop fan-in
    /// (said loudly).
    fn set_latency_basis(&mut self) -> Result<LatencyBasis> {
        let loss_free = self
            .outcomes
            .iter()
            .find(|(s, _)| s.key == "lossfree")
            .and_then(|(_, o)| o.reports.get(&Broker::Mosquitto)?.first())
            .and_then(|r| r.pointer("/search/highest_pass")?.as_f64());
        let closed_loop = metric("", "", "/msgs_per_s", true);
        let fanin = self.median("fanin-q1-persistent", Broker::Mosquitto, &closed_loop);
        let basis = LatencyBasis::of(loss_free, fanin).context(
            "neither a Mosquitto loss-free rate nor a fan-in QoS 1 figure to base the latency \
             rates on (or pass --latency-rates)",
        )?;
        if let LatencyBasis::FaninFallback(r) = basis {
            eprintln!(
                "  latency rates: FALLBACK to Mosquitto's closed-loop fan-in ({r:.0} msg/s): the \
                 loss-free search found no loss-free rate for it"
            );
        }
        self.latency_basis = Some(basis);
        Ok(basis)
    }

    /// A figure's values over the rounds of one scenario and broker.
    fn values(&self, key: &str, b: Broker, m: &Metric) -> Vec<f64> {
        self.outcomes
            .iter()
            .find(|(s, _)| s.key == key)
            .and_then(|(_, o)| o.reports.get(&b))
            .map(|reports| reports.iter().filter_map(|r| value(r, m)).collect())
            .unwrap_or_default()
    }

    fn median(&self, key: &str, b: Broker, m: &Metric) -> Option<f64> {
        stats::median(&self.values(key, b, m))
    }

    /// (max − min) / median over the rounds, in percent.
    fn spread(&self, key: &str, b: Broker, m: &Metric) -> Option<f64> {
        stats::spread_percent(&self.values(key, b, m))
    }
}

/// Which broker goes first in `round`: they alternate.
fn round_order(round: usize) -> [Broker; 2] {
    if round.is_multiple_of(2) {
        BOTH
    } else {
        [Broker::Mosquitto, Broker::Rampart]
    }
}

/// One line per run: the scenario, broker, round and its figures.
fn print_run(s: &Scenario, b: Broker, round: usize, report: &Value, took: Duration) {
    let summary: Vec<String> = s
        .metrics
        .iter()
        .map(|m| format!("{} {}", stats::fmt(value(report, m)), m.unit))
        .collect();
    eprintln!(
        "  {:<34} {b:<9?} round {}: {} ({:.1} s)",
        s.title,
        round + 1,
        summary.join(", "),
        took.as_secs_f64()
    );
}

/// `x` rounded to two significant digits (26,501 → 27,000), for readable
/// probe rates.
fn two_significant_digits(x: f64) -> f64 {
    if !x.is_finite() || x <= 0.0 {
        return x;
    }
    let scale = 10f64.powi(x.log10().floor() as i32 - 1);
    (x / scale).round() * scale
}

fn value(report: &Value, m: &Metric) -> Option<f64> {
    report
        .pointer(m.pointer)
        .and_then(Value::as_f64)
        .map(|v| v * m.scale)
}

fn sum(reports: Option<&Vec<Value>>, pointer: &str) -> u64 {
    reports
        .map(|rs| {
            rs.iter()
                .filter_map(|r| r.pointer(pointer).and_then(Value::as_u64))
                .sum()
        })
        .unwrap_or(0)
}

fn fanin_scenario(z: &Sizes, qos: u8, persistent: bool) -> Scenario {
    let session = if persistent { "persistent" } else { "clean" };
    let mut args: Vec<String> = vec![
        "fanin".into(),
        "--devices".into(),
        z.devices.to_string(),
        "--qos".into(),
        qos.to_string(),
        "--window".into(),
        "16".into(),
        "--duration".into(),
        format!("{}ms", z.fanin.as_millis()),
    ];
    if persistent {
        args.push("--persistent-subscriber".into());
    }
    Scenario {
        key: format!("fanin-q{qos}-{session}"),
        title: format!("fan-in QoS {qos}, {} dev→1, {session} sub", z.devices),
        args,
        metrics: vec![metric("received", "msg/s", "/msgs_per_s", true)],
        rounds: z.fanin_rounds,
        timeout: z.fanin + Duration::from_secs(90),
        brokers: BOTH.to_vec(),
    }
}

/// What the latency rates are fractions of.
#[derive(Debug, Clone, Copy, PartialEq)]
enum LatencyBasis {
    /// Mosquitto's highest loss-free rate found by this run's search.
    LossFree(f64),
    /// The search found no loss-free rate for Mosquitto: its closed-loop
    /// QoS 1 persistent fan-in median of this run instead.
    FaninFallback(f64),
}

impl LatencyBasis {
    /// Mosquitto's highest loss-free rate in the search's outcome, else its
    /// closed-loop QoS 1 persistent fan-in median, else nothing.
    fn of(loss_free: Option<f64>, fanin: Option<f64>) -> Option<Self> {
        let usable = |r: &f64| r.is_finite() && *r > 0.0;
        match (loss_free.filter(usable), fanin.filter(usable)) {
            (Some(r), _) => Some(Self::LossFree(r)),
            (None, Some(r)) => Some(Self::FaninFallback(r)),
            (None, None) => None,
        }
    }

    fn rate(self) -> f64 {
        match self {
            Self::LossFree(r) | Self::FaninFallback(r) => r,
        }
    }

    /// How a latency row names its basis.
    fn short(self) -> &'static str {
        match self {
            Self::LossFree(_) => "M. loss-free",
            Self::FaninFallback(_) => "M. fan-in, FALLBACK",
        }
    }

    /// The note under the table.
    fn note(self) -> String {
        match self {
            Self::LossFree(r) => format!(
                "Latency rates: fractions of Mosquitto's highest loss-free rate in this run \
                 ({r:.0} msg/s), so both brokers are measured at rates Mosquitto sustains \
                 without loss.\n"
            ),
            Self::FaninFallback(r) => format!(
                "Latency rates: FALLBACK. The loss-free search found no loss-free rate for \
                 Mosquitto (every probe failed; see the loss-free note), so the rates are \
                 fractions of Mosquitto's closed-loop QoS 1 persistent fan-in median \
                 ({r:.0} msg/s) instead: rates at which Mosquitto may lose messages.\n"
            ),
        }
    }
}

/// What the devices of a latency row publish (the load generator's
/// `--uplink`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Uplink {
    /// Telemetry: Rampart stores every message before its PUBACK.
    Telemetry,
    /// Command results: Rampart routes them without storing them.
    Cmd,
}

impl Uplink {
    fn arg(self) -> &'static str {
        match self {
            Uplink::Telemetry => "telemetry",
            Uplink::Cmd => "cmd",
        }
    }
}

fn latency_scenario(
    z: &Sizes,
    rate: f64,
    fraction: Option<(f64, LatencyBasis)>,
    uplink: Uplink,
) -> Scenario {
    let (mut key, mut title) = match fraction {
        Some((f, basis)) => {
            let pct = (f * 100.0).round();
            (
                format!("latency-{pct}"),
                format!(
                    "latency QoS 1 @ {rate:.0} msg/s ({pct} % of {})",
                    basis.short()
                ),
            )
        }
        None => (
            format!("latency-{rate:.0}"),
            format!("latency QoS 1 @ {rate:.0} msg/s"),
        ),
    };
    if uplink == Uplink::Cmd {
        key.push_str("-cmd");
        title.push_str(", cmd uplink (routed, not stored)");
    }
    Scenario {
        key,
        title,
        args: vec![
            "latency".into(),
            "--devices".into(),
            z.devices.to_string(),
            "--qos".into(),
            "1".into(),
            "--rate".into(),
            format!("{rate:.0}"),
            "--duration".into(),
            format!("{}ms", z.latency.as_millis()),
            "--warmup".into(),
            format!("{}ms", z.warmup.as_millis()),
            "--persistent-subscriber".into(),
            "--uplink".into(),
            uplink.arg().into(),
            "--broker-pid".into(),
            "{broker_pid}".into(),
        ],
        metrics: vec![
            metric("p50", "µs", "/latency/p50_us", false),
            metric("p99", "µs", "/latency/p99_us", false),
            metric("p99.9", "µs", "/latency/p999_us", false),
            // Where the time goes (see BENCHMARKS.md, "Latency breakdown").
            metric("send lag p99", "µs", "/send_lag/p99_us", false),
            metric("in transit p99", "µs", "/transit/p99_us", false),
            // The tail without the host's pauses, and how many there were
            // (see the load generator's `stalls` module).
            metric(
                "p99 outside stalls",
                "µs",
                "/outside_stalls/latency/p99_us",
                false,
            ),
            metric(
                "stalled 100 ms windows",
                "windows",
                "/outside_stalls/stalled_windows",
                false,
            ),
            metric("PUBACK p50", "µs", "/ack/p50_us", false),
            metric("PUBACK p99", "µs", "/ack/p99_us", false),
            metric("broker CPU", "% of a core", "/broker_cpu_percent", false),
            metric(
                "load generator CPU",
                "% of a core",
                "/loadgen_cpu_percent",
                false,
            ),
            // The neighbours' share (see host.rs): not the broker's doing.
            metric(
                "host CPU stolen",
                "% of the time",
                "/host/steal_percent",
                false,
            ),
            // Rampart only: its telemetry committer over the run.
            metric("ingest commits", "1/s", "/store/commits_per_s", false),
            metric(
                "messages per commit",
                "msg",
                "/store/messages_per_commit",
                false,
            ),
            metric(
                "committer busy",
                "% of the time",
                "/store/committer_busy_percent",
                false,
            ),
        ],
        // The routed-only row is a diagnosis next to the stored one, not a
        // target: one round keeps `all` within its bound.
        rounds: match uplink {
            Uplink::Telemetry => z.latency_rounds,
            Uplink::Cmd => 1,
        },
        timeout: z.latency + Duration::from_secs(90),
        brokers: BOTH.to_vec(),
    }
}

/// One loss-free probe without its `--rate`; its metrics are the search's
/// table rows.
fn loss_free_scenario(z: &Sizes) -> Scenario {
    Scenario {
        key: "lossfree".into(),
        title: format!(
            "highest loss-free rate, QoS 1, {} dev→1, persistent sub",
            z.devices
        ),
        args: vec![
            "lossfree".into(),
            "--devices".into(),
            z.devices.to_string(),
            "--duration".into(),
            format!("{}ms", z.probe.as_millis()),
            "--warmup".into(),
            format!("{}ms", z.probe_warmup.as_millis()),
            "--give-up".into(),
            format!("{}ms", z.probe_give_up.as_millis()),
            "--max-p99".into(),
            format!("{}ms", z.probe_max_p99.as_millis()),
        ],
        metrics: vec![
            metric("rate", "msg/s", "/rate_target", true),
            metric("p99 at that rate", "µs", "/latency/p99_us", false),
        ],
        rounds: 1,
        timeout: z.probe + z.probe_give_up + Duration::from_secs(90),
        brokers: BOTH.to_vec(),
    }
}

/// QoS of the fan-out phases, in run order.
const FANOUT_QOS: [u8; 2] = [0, 1];

/// The fan-out run: subscribers connected once per broker and round, one
/// phase per [`FANOUT_QOS`]; its phases' figures go to
/// [`fanout_part`]'s scenarios.
fn fanout_run(z: &Sizes, subscriber_certs: &Path) -> Scenario {
    let qos: Vec<String> = FANOUT_QOS.iter().map(u8::to_string).collect();
    Scenario {
        key: "fanout".into(),
        title: format!("fan-out, 1 dev→{} subs", z.fanout_subscribers),
        args: vec![
            "fanout".into(),
            "--subscriber-certs".into(),
            subscriber_certs.display().to_string(),
            "--subscribers".into(),
            z.fanout_subscribers.to_string(),
            "--qos".into(),
            qos.join(","),
            "--window".into(),
            z.fanout_window.to_string(),
            "--duration".into(),
            format!("{}ms", z.fanout.as_millis()),
            "--warmup".into(),
            format!("{}ms", z.fanout_warmup.as_millis()),
        ],
        metrics: Vec::new(),
        rounds: z.fanout_rounds,
        // Connecting: Mosquitto completes ≈ 165 handshakes/s (8 connectors);
        // each phase may drain for up to 7 s after its window.
        timeout: (z.fanout + Duration::from_secs(10)) * FANOUT_QOS.len() as u32
            + Duration::from_secs(120 + (z.fanout_subscribers / 20) as u64),
        brokers: BOTH.to_vec(),
    }
}

/// The table rows of one fan-out phase (measured by [`fanout_run`]).
fn fanout_part(z: &Sizes, qos: u8) -> Scenario {
    Scenario {
        key: format!("fanout-q{qos}"),
        title: format!("fan-out QoS {qos}, 1 dev→{} subs", z.fanout_subscribers),
        args: Vec::new(),
        metrics: vec![
            metric("deliveries", "msg/s", "/deliveries_per_s", true),
            metric("latency p50", "µs", "/latency/p50_us", false),
            metric("latency p99", "µs", "/latency/p99_us", false),
        ],
        rounds: z.fanout_rounds,
        timeout: Duration::ZERO,
        brokers: BOTH.to_vec(),
    }
}

/// Rampart only, one round: it revokes its identities for good. The
/// revocations' start phases are spread over `poll`, the server's
/// change-feed poll interval.
fn revoke_scenario(z: &Sizes, env: &Env, poll: Duration) -> Scenario {
    let ms = |label, pointer| {
        let mut m = metric(label, "ms", pointer, false);
        m.scale = 1.0 / 1000.0;
        m
    };
    let per_device = Duration::from_secs(10);
    Scenario {
        key: "revoke".into(),
        title: format!("revoke → disconnect, {} devices", z.revocable),
        args: vec![
            "revoke".into(),
            "--device-certs".into(),
            env.revoke_certs.display().to_string(),
            "--devices".into(),
            z.revocable.to_string(),
            "--rampart".into(),
            env.rampart.display().to_string(),
            "--data-dir".into(),
            env.data.display().to_string(),
            "--config".into(),
            env.config.display().to_string(),
            "--timeout".into(),
            format!("{}s", per_device.as_secs()),
            "--spread".into(),
            format!("{}ms", poll.as_millis()),
        ],
        metrics: vec![
            ms("from CLI spawn p50", "/from_spawn/p50_us"),
            ms("from CLI spawn p99", "/from_spawn/p99_us"),
            ms("from CLI exit p50", "/from_exit/p50_us"),
            ms("from CLI exit p99", "/from_exit/p99_us"),
        ],
        rounds: 1,
        timeout: Duration::from_secs(60) + per_device * z.revocable as u32,
        brokers: vec![Broker::Rampart],
    }
}

fn handshakes_scenario(z: &Sizes) -> Scenario {
    Scenario {
        key: "handshakes".into(),
        title: format!("TLS handshakes, {} connectors", z.handshake_concurrency),
        args: vec![
            "handshakes".into(),
            "--concurrency".into(),
            z.handshake_concurrency.to_string(),
            "--duration".into(),
            format!("{}ms", z.handshakes.as_millis()),
        ],
        metrics: vec![
            metric("connections", "1/s", "/per_s", true),
            metric("connect p99", "µs", "/connect_time/p99_us", false),
        ],
        rounds: z.handshake_rounds,
        timeout: z.handshakes + Duration::from_secs(90),
        brokers: BOTH.to_vec(),
    }
}

fn conns_scenario(z: &Sizes) -> Scenario {
    let mut rss = metric(
        "RSS per connection",
        "KiB",
        "/rss_per_connection_bytes",
        false,
    );
    rss.scale = 1.0 / 1024.0;
    Scenario {
        key: "conns".into(),
        title: format!("{} idle mTLS connections", z.connections),
        args: vec![
            "--keepalive".into(),
            "3600".into(),
            "conns".into(),
            "--connections".into(),
            z.connections.to_string(),
            "--concurrency".into(),
            "32".into(),
            "--hold".into(),
            format!("{}ms", z.hold.as_millis()),
            "--broker-pid".into(),
            "{broker_pid}".into(),
        ],
        metrics: vec![
            metric("connected", "", "/connected", true),
            rss,
            metric("idle CPU", "% core", "/idle_cpu_percent", false),
            metric("time to open all", "s", "/connect_wall_s", false),
        ],
        rounds: z.conns_rounds,
        timeout: Duration::from_secs(180 + (z.connections / 20) as u64),
        brokers: BOTH.to_vec(),
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

fn build(dev: bool) -> Result<PathBuf> {
    let root = workspace_root();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&root);
    if dev {
        // The workspace with every target resolves features as `cargo test
        // --workspace` does, so CI's smoke run reuses the test build's
        // artifacts (`-p` would unify features differently and rebuild
        // dependencies: five minutes of CI's time).
        cmd.args(["build", "--workspace", "--all-targets"]);
    } else {
        cmd.args([
            "build",
            "-p",
            "rampart",
            "-p",
            "rampart-loadgen",
            "--release",
        ]);
    }
    eprintln!(
        "building rampart and rampart-loadgen ({})",
        if dev {
            "dev, with the workspace's targets"
        } else {
            "release"
        }
    );
    let status = cmd.status().context("running cargo build")?;
    if !status.success() {
        bail!("cargo build failed: {status}");
    }
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from);
    Ok(target.join(if dev { "debug" } else { "release" }))
}

fn durability_notes(fanin_persistent: bool) -> String {
    let mut s = String::from(
        "Durability: Rampart stores every QoS 1 message queued for a persistent session and \
         sends PUBACK only after that write has committed (group commit, SQLite). Mosquitto: \
         `persistence true` with the default `autosave_interval 1800`: queued messages are in \
         memory and written to disk every 30 minutes or at shutdown; a crash loses them.\n",
    );
    if fanin_persistent {
        s.push_str(
            "Subscriber session: `clean sub` rows use a non-persistent subscriber (nothing is \
             stored by either broker); `persistent sub` rows and the latency rows use a \
             persistent one (Rampart commits each message before PUBACK).\n",
        );
    }
    s
}

fn table(bench: &Bench, z: &Sizes, args: &BenchArgs) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "rounds per broker: fan-in {}, latency {}, handshakes {}, fan-out {}, idle connections \
         {}; the loss-free search and revoke run once; medians over rounds, and the round spread \
         ((max − min) / median) where there are two or more; loopback, both brokers and the \
         load generator on the same 2-core machine{}\n\n",
        z.fanin_rounds,
        z.latency_rounds,
        z.handshake_rounds,
        z.fanout_rounds,
        z.conns_rounds,
        if args.dev_build {
            "; DEV BUILD: figures meaningless"
        } else {
            ""
        }
    ));
    out.push_str("| scenario | figure | unit | Rampart | Mosquitto | Rampart/Mosquitto | better | lost/dup (R; M) | round spread % (R; M) |\n");
    out.push_str("|---|---|---|---:|---:|---:|---|---|---|\n");
    for (s, o) in &bench.outcomes {
        let loss = if ["fanin", "latency", "fanout", "lossfree"]
            .iter()
            .any(|k| s.key.starts_with(k))
        {
            format!(
                "{}/{}; {}/{}",
                sum(o.reports.get(&Broker::Rampart), "/lost"),
                sum(o.reports.get(&Broker::Rampart), "/duplicated"),
                sum(o.reports.get(&Broker::Mosquitto), "/lost"),
                sum(o.reports.get(&Broker::Mosquitto), "/duplicated"),
            )
        } else {
            String::new()
        };
        for m in &s.metrics {
            let r = bench.median(&s.key, Broker::Rampart, m);
            let q = bench.median(&s.key, Broker::Mosquitto, m);
            let ratio = match (r, q) {
                (Some(r), Some(q)) if q != 0.0 => stats::fmt(Some(r / q)),
                _ => "–".into(),
            };
            let spread = match (
                bench.spread(&s.key, Broker::Rampart, m),
                bench.spread(&s.key, Broker::Mosquitto, m),
            ) {
                (None, None) => String::new(),
                (r, q) => format!("{}; {}", stats::fmt(r), stats::fmt(q)),
            };
            out.push_str(&format!(
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
                o.title,
                m.label,
                m.unit,
                stats::fmt(r),
                stats::fmt(q),
                ratio,
                if m.higher_is_better {
                    "higher"
                } else {
                    "lower"
                },
                loss,
                spread
            ));
        }
    }
    out.push('\n');
    out.push_str(&durability_notes(true));
    if let Some(basis) = bench.latency_basis {
        out.push_str(&basis.note());
    }
    if bench
        .outcomes
        .iter()
        .any(|(s, _)| s.key.starts_with("latency"))
    {
        out.push_str(LATENCY_NOTE);
    }
    out.push_str(&scenario_notes(bench, z));
    out
}

const LATENCY_NOTE: &str = "Latency rows: p50/p99/p99.9 are the subscriber's receive time minus \
     each message's scheduled send time. `send lag` is how late the load generator queued a \
     message against its schedule (its own timer and CPU share; a full window of 64 \
     unacknowledged messages per device would add to it), `in transit` each message's \
     receive time minus the time the load generator queued it (the latency without that \
     lateness: the broker's part plus the load generator's own sending and receiving), \
     `p99 outside stalls` the p99 of the 100 ms windows (by scheduled send time) in which no \
     message was 5 ms late or more, and `stalled 100 ms windows` how many were left out: a \
     guest paused by its host delays every broker alike, and a few pauses decide a run's \
     p99; a broker stalling on its own shows in the count, \
     `PUBACK` the publisher's wait for its acknowledgement (Rampart: after the commit; it \
     delays delivery only through a full window), `broker CPU` and `load generator CPU` each process's use over the measured \
     time, in percent of one of the 2 cores the three share. `host CPU stolen` is the share of \
     the virtual machine's CPU time the hypervisor gave to other guests during the run \
     (`/proc/stat`, steal): where it is high, tails measure the neighbours as much as the \
     broker, and rounds with different steal do not compare the brokers. `ingest commits`, `messages per \
     commit` and `committer busy` (Rampart only, from its `/metrics`, over the whole run \
     including connection set-up and warm-up) show whether the telemetry committer kept up: \
     busy near 100 % means it was saturated, batches grew and each acknowledgement waited \
     for a whole commit in progress. The `cmd uplink (routed, not stored)` row repeats the \
     middle rate with the devices publishing command results (`devices/{id}/cmd/up`) instead \
     of telemetry: Rampart checks, routes and acknowledges them (the persistent \
     subscriber's copies included) without storing them in its pipeline, Mosquitto treats \
     both alike; against the telemetry row at the same rate it shows how much of Rampart's \
     latency and CPU is the broker and how much is storing every message.\n";

/// What the table cannot say: the loss-free search's brackets, fan-out's
/// set-up and the revoke run's details.
fn scenario_notes(bench: &Bench, z: &Sizes) -> String {
    let mut out = String::new();
    for (s, o) in &bench.outcomes {
        match s.key.as_str() {
            "lossfree" => {
                out.push_str(&format!(
                    "Loss-free rate: open-loop QoS 1 fan-in probes of {:.1} s ({:.1} s warm-up), \
                     one per rate, starting at the broker's closed-loop QoS 1 persistent fan-in \
                     median of this run (two significant digits; {:.0} msg/s without one), \
                     doubling (or halving) until the verdict changes, then bisecting to {:.0} %, \
                     at most {} probes and {:.0} s per broker; a probe passes when every \
                     scheduled message was sent and acknowledged, the persistent subscriber \
                     received every one, and p99 ≤ {} ms.",
                    z.probe.as_secs_f64(),
                    z.probe_warmup.as_secs_f64(),
                    z.search_start,
                    z.search_precision * 100.0,
                    z.search_max_probes,
                    z.search_budget.as_secs_f64(),
                    z.probe_max_p99.as_millis()
                ));
                for (b, reports) in &o.reports {
                    let Some(r) = reports.first() else { continue };
                    let probes = r
                        .pointer("/search/probes")
                        .and_then(Value::as_array)
                        .map_or(0, Vec::len);
                    let rate = |p: &str| stats::fmt(r.pointer(p).and_then(Value::as_f64));
                    let failed = if r
                        .pointer("/search/lowest_fail")
                        .is_some_and(Value::is_number)
                    {
                        format!("failed at {} msg/s", rate("/search/lowest_fail"))
                    } else {
                        "no probe failed".into()
                    };
                    out.push_str(&format!(
                        " {b:?}: started at {} msg/s, loss-free at {} msg/s, {failed} ({probes} \
                         probes, {:.0} s).",
                        rate("/search/start"),
                        rate("/search/highest_pass"),
                        r.pointer("/search/seconds")
                            .and_then(Value::as_f64)
                            .unwrap_or(0.0)
                    ));
                }
                out.push('\n');
            }
            "fanout-q0" => out.push_str(&format!(
                "Fan-out: one device publishes to its telemetry topic; {} subscribers, each its \
                 own identity and connection (Rampart services; Mosquitto users with `topic read \
                 devices/#`), clean sessions, subscribed at QoS 1 and connected once per broker \
                 and round for both phases: QoS 0 (published at QoS 0, so delivered at QoS 0) \
                 then QoS 1, {:.1} s each ({:.1} s warm-up). Closed loop end to end: message n \
                 is sent only once every subscriber has received message n − {}, so no broker \
                 queue ever fills and lost/dup are real; latency is send to delivery under that \
                 load.\n",
                z.fanout_subscribers,
                z.fanout.as_secs_f64(),
                z.fanout_warmup.as_secs_f64(),
                z.fanout_window
            )),
            "revoke" => {
                let Some(r) = o.reports.get(&Broker::Rampart).and_then(|v| v.first()) else {
                    continue;
                };
                let n = |p: &str| r.pointer(p).and_then(Value::as_u64).unwrap_or(0);
                out.push_str(&format!(
                    "Revoke → disconnect (Rampart only): `serve.change_poll_interval` = {:.0} ms \
                     (as `rampart config show` reports it; the bench leaves the default); revocations one at a time, start \
                     phases spread over one poll interval; {} of {} connections closed by the \
                     broker ({}); `rampart device revoke` took {:.1} ms (p50). The CLI commits \
                     the revocation before it re-signs the CRL, so \"from CLI exit\" can be \
                     negative.\n",
                    r.pointer("/spread_ms")
                        .and_then(Value::as_f64)
                        .unwrap_or(0.0),
                    n("/disconnected"),
                    n("/devices"),
                    r.get("closed_by")
                        .map_or_else(String::new, Value::to_string),
                    n("/cli/p50_us") as f64 / 1000.0
                ));
            }
            _ => {}
        }
    }
    out
}

fn bench(args: BenchArgs) -> Result<()> {
    let z = Sizes::of(&args);
    let pz = pipeline::PipelineSizes::new(args.quick, args.rounds);
    let suites = Suites {
        broker: matches!(args.suite, Suite::Broker | Suite::All),
        conns: matches!(args.suite, Suite::Conns | Suite::All),
        ingest: matches!(args.suite, Suite::Ingest | Suite::All),
        query: matches!(args.suite, Suite::Query | Suite::All),
    };
    if let Some(bad) = args
        .latency_rates
        .iter()
        .find(|r| !r.is_finite() || **r <= 0.0)
    {
        bail!("latency rates must be positive, not {bad}");
    }
    let plan = Plan::new(plan::Inputs {
        sizes: &z,
        pipeline: &pz,
        suites,
        postgres: !args.no_postgres,
        latency_rates: if args.latency_rates.is_empty() {
            z.latency_fractions.len()
        } else {
            args.latency_rates.len()
        },
    });
    eprint!("{}", plan.render());
    if args.suite == Suite::All {
        if !args.no_time_bound {
            plan.check_bound(plan::ALL_BOUND)?;
        } else if plan.total() > plan::ALL_BOUND {
            eprintln!("--no-time-bound: running past the 15-minute bound of `all`");
        }
    }
    let mut time = Timeline::new(plan);
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => eprintln!("file descriptor limit: {n}"),
        Err(e) => eprintln!("could not raise the file descriptor limit: {e}"),
    }
    if !matches!(args.suite, Suite::Sim | Suite::Console | Suite::Alerts)
        && !args.mosquitto.is_file()
    {
        bail!(
            "Mosquitto not found at {} (Debian: apt-get install mosquitto; or pass --mosquitto PATH)",
            args.mosquitto.display()
        );
    }
    let bin = time.time("build", || build(args.dev_build))?;
    let tmp = tempfile::Builder::new()
        .prefix("rampart-bench-")
        .tempdir()
        .context("creating the temp dir")?;
    let dir = tmp.path().to_path_buf();
    let out_dir = workspace_root().join("target").join("bench");
    std::fs::create_dir_all(&out_dir).context("creating target/bench")?;
    // The simulator benchmark (issue 7) runs on its own: `all` keeps to
    // issue 6's scenarios and their 15-minute bound.
    if args.suite == Suite::Alerts {
        let z = alerts::AlertSizes::new(args.quick);
        let (t, raw) = time.time("alerts", || alerts::bench(&bin.join("rampart-loadgen"), &z))?;
        std::fs::write(
            out_dir.join("alerts.json"),
            serde_json::to_string_pretty(&raw)?,
        )
        .context("writing target/bench/alerts.json")?;
        println!("{t}");
        eprint!("{}", time.render());
        std::fs::write(out_dir.join("latest-alerts.md"), &t)
            .context("writing target/bench/latest-alerts.md")?;
        return Ok(());
    }
    if args.suite == Suite::Console {
        let z = console::ConsoleSizes::new(args.quick);
        let (t, raw) = time.time("console", || {
            console::bench(&bin.join("rampart-loadgen"), &dir, &z)
        })?;
        std::fs::write(
            out_dir.join("console.json"),
            serde_json::to_string_pretty(&raw)?,
        )
        .context("writing target/bench/console.json")?;
        println!("{t}");
        eprint!("{}", time.render());
        std::fs::write(out_dir.join("latest-console.md"), &t)
            .context("writing target/bench/latest-console.md")?;
        if args.keep {
            eprintln!("kept {}", tmp.keep().display());
        }
        return Ok(());
    }
    let run_sim = args.suite == Suite::Sim;
    let mut pipeline_table = String::new();
    if run_sim {
        let sz = sim::SimSizes::new(&args.sim, args.quick);
        let (t, raw) = time.time("sim", || {
            sim::bench(&bin.join("rampart"), &dir.join("sim"), &sz, args.dev_build)
        })?;
        std::fs::write(
            out_dir.join("sim.json"),
            serde_json::to_string_pretty(&raw)?,
        )
        .context("writing target/bench/sim.json")?;
        println!("{t}");
        eprint!("{}", time.render());
        std::fs::write(out_dir.join("latest-sim.md"), &t)
            .context("writing target/bench/latest-sim.md")?;
        if args.keep {
            eprintln!("kept {}", tmp.keep().display());
        }
        return Ok(());
    }
    if suites.ingest || suites.query {
        let pg = (!args.no_postgres).then_some(args.pg_admin_url.as_str());
        let (t, raw) = pipeline::bench(
            &bin.join("rampart-loadgen"),
            &dir,
            &pz,
            suites,
            pg,
            &mut time,
        )?;
        std::fs::write(
            out_dir.join("pipeline.json"),
            serde_json::to_string_pretty(&raw)?,
        )
        .context("writing target/bench/pipeline.json")?;
        pipeline_table = t;
        if !(suites.broker || suites.conns) {
            pipeline_table.push('\n');
            pipeline_table.push_str(&time.render());
            println!("{pipeline_table}");
            std::fs::write(out_dir.join("latest-pipeline.md"), &pipeline_table)
                .context("writing target/bench/latest-pipeline.md")?;
            return Ok(());
        }
    }
    let mut b = time.time("setup", || start_brokers(&args, &z, suites, &bin, &dir))?;

    if suites.broker {
        time.time("fanin-q0-clean", || b.run(fanin_scenario(&z, 0, false)))?;
        time.time("fanin-q1-clean", || b.run(fanin_scenario(&z, 1, false)))?;
        time.time("fanin-q1-persistent", || b.run(fanin_scenario(&z, 1, true)))?;
        time.time("lossfree", || b.search_loss_free(&z))?;
        time.time("latency", || b.run_latency(&z, &args.latency_rates))?;
        time.time("handshakes", || b.run(handshakes_scenario(&z)))?;
        time.time("fanout", || {
            let run = fanout_run(&z, &b.env.fanout_certs);
            let parts = FANOUT_QOS.iter().map(|&q| fanout_part(&z, q)).collect();
            b.run_fanout(&run, parts)
        })?;
    }
    if suites.conns {
        time.time("conns", || b.run(conns_scenario(&z)))?;
    }
    if suites.broker {
        // Last: it revokes identities and makes the server re-read its CRL.
        time.time("revoke", || {
            let poll = setup::change_poll_interval(&b.env)?;
            let revoke = revoke_scenario(&z, &b.env, poll);
            b.run(revoke)
        })?;
    }

    let mut table = table(&b, &z, &args);
    if !pipeline_table.is_empty() {
        table.push('\n');
        table.push_str(&pipeline_table);
    }
    let raw: Vec<(&str, &Outcome)> = b
        .outcomes
        .iter()
        .map(|(s, o)| (s.key.as_str(), o))
        .collect();
    std::fs::write(
        out_dir.join("latest.json"),
        serde_json::to_string_pretty(&raw)?,
    )
    .context("writing target/bench/latest.json")?;
    eprintln!("raw reports: {}", out_dir.join("latest.json").display());
    // Stop both brokers (by PID) before the temp dir goes away.
    drop(b);
    if args.keep {
        let kept = tmp.keep();
        eprintln!("kept {}", kept.display());
    }
    table.push('\n');
    table.push_str(&time.render());
    println!("{table}");
    std::fs::write(out_dir.join("latest.md"), &table).context("writing target/bench/latest.md")?;
    Ok(())
}

/// Create the identities, then start Mosquitto and Rampart side by side.
fn start_brokers(
    args: &BenchArgs,
    z: &Sizes,
    suites: Suites,
    bin: &Path,
    dir: &Path,
) -> Result<Bench> {
    let ids = setup::Identities::for_run(z, suites);
    eprintln!(
        "preparing {} (init, {} device identities, {} fan-out subscribers, {} revocable devices)",
        dir.display(),
        ids.devices,
        ids.fanout_subscribers,
        ids.revocable
    );
    let t = Instant::now();
    let env = setup::prepare(&bin.join("rampart"), dir, ids, 4)?;
    eprintln!("  done in {:.1} s", t.elapsed().as_secs_f64());

    let port = procs::free_port()?;
    let mconf = setup::mosquitto_config(&env, port)?;
    let mut mcmd = Command::new(&args.mosquitto);
    mcmd.arg("-c")
        .arg(&mconf)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(
            std::fs::File::create(dir.join("mosquitto.log")).context("creating mosquitto.log")?,
        );
    let mut mosq = Guard::spawn("mosquitto", &mut mcmd)?;
    let maddr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
    procs::wait_listening(&mut mosq, maddr, Duration::from_secs(10)).with_context(|| {
        format!(
            "Mosquitto did not start; see {}",
            dir.join("mosquitto.log").display()
        )
    })?;
    let rampart = procs::start_rampart_listening(
        &env.rampart,
        &env.data,
        &env.config,
        dir.join("rampart.log"),
        true,
    )?;
    eprintln!(
        "rampart (pid {}) on {}, mosquitto (pid {}) on {maddr}",
        rampart.0.pid(),
        rampart.1.mqtt,
        mosq.pid()
    );
    Ok(Bench {
        env,
        loadgen: bin.join("rampart-loadgen"),
        rampart,
        mosquitto: (mosq, maddr),
        outcomes: Vec::new(),
        latency_basis: None,
    })
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Task::Bench(args) => bench(args),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_rates_come_from_the_loss_free_rate_else_fall_back_to_fan_in() {
        assert_eq!(
            LatencyBasis::of(Some(20_000.0), Some(2_000.0)),
            Some(LatencyBasis::LossFree(20_000.0))
        );
        let fallback = LatencyBasis::of(None, Some(2_000.0));
        assert_eq!(fallback, Some(LatencyBasis::FaninFallback(2_000.0)));
        assert_eq!(
            LatencyBasis::of(Some(0.0), Some(2_000.0)),
            Some(LatencyBasis::FaninFallback(2_000.0))
        );
        assert_eq!(LatencyBasis::of(None, Some(f64::NAN)), None);
        let Some(fallback) = fallback else {
            panic!("a fallback basis was expected");
        };
        // The fallback is said in every row's title and in the note.
        let title = latency_scenario(
            &Sizes::of(&quick_args()),
            1000.0,
            Some((0.5, fallback)),
            Uplink::Telemetry,
        )
        .title;
        assert!(title.contains("FALLBACK"), "{title}");
        assert!(fallback.note().contains("FALLBACK"));
    }

    fn quick_args() -> BenchArgs {
        let Task::Bench(a) = Cli::parse_from(["xtask", "bench", "--quick"]).command;
        a
    }

    #[test]
    fn search_start_rates_are_rounded_to_two_significant_digits() {
        assert_eq!(two_significant_digits(26_501.0), 27_000.0);
        assert_eq!(two_significant_digits(1_968.0), 2_000.0);
        assert_eq!(two_significant_digits(493.0), 490.0);
    }
}
