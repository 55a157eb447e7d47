//! Project automation. `cargo xtask bench [broker|ingest|query|conns|sim|all] [--quick]`
//! measures Rampart against a Mosquitto 2.x started beside it with an
//! equivalent configuration; see BENCHMARKS.md.

mod pipeline;
mod procs;
mod search;
mod setup;
mod sim;
mod stats;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand, ValueEnum};
use serde_json::Value;

use crate::procs::Guard;
use crate::search::RateSearch;
use crate::setup::{Env, READER};

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
    /// Everything.
    All,
}

#[derive(Debug, clap::Args)]
struct BenchArgs {
    /// Which scenarios to run.
    #[arg(value_enum, default_value = "all")]
    suite: Suite,
    /// Tiny sizes and one round (a CI smoke run: about a minute).
    #[arg(long)]
    quick: bool,
    /// Rounds per scenario and broker (default 3, 1 with --quick).
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
    /// Time per broker for the loss-free rate search (default 90s, 20s
    /// with --quick).
    #[arg(long, value_parser = humantime::parse_duration)]
    search_budget: Option<Duration>,
    /// Latency rates in messages per second (comma-separated), instead of
    /// 25/50/75 % of Mosquitto's fan-in QoS 1 (persistent) median.
    #[arg(long, value_delimiter = ',')]
    latency_rates: Vec<f64>,
    /// Use dev-profile binaries (faster to build, meaningless figures).
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

/// Sizes of one bench run.
#[derive(Debug, Clone)]
struct Sizes {
    rounds: usize,
    conns_rounds: usize,
    devices: usize,
    connections: usize,
    fanin: Duration,
    latency: Duration,
    warmup: Duration,
    latency_fractions: Vec<f64>,
    handshakes: Duration,
    handshake_concurrency: usize,
    hold: Duration,
    fanout_subscribers: usize,
    fanout: Duration,
    fanout_warmup: Duration,
    fanout_window: usize,
    probe: Duration,
    probe_warmup: Duration,
    probe_give_up: Duration,
    probe_max_p99: Duration,
    search_budget: Duration,
    search_max_probes: usize,
    search_start: f64,
    search_precision: f64,
    revocable: usize,
}

impl Sizes {
    fn of(a: &BenchArgs) -> Sizes {
        let quick = a.quick;
        Sizes {
            rounds: a.rounds.unwrap_or(if quick { 1 } else { 3 }).max(1),
            conns_rounds: a.conns_rounds.unwrap_or(1).max(1),
            devices: a.devices.unwrap_or(if quick { 10 } else { 50 }).max(1),
            connections: a
                .connections
                .unwrap_or(if quick { 50 } else { 10_000 })
                .max(1),
            fanin: Duration::from_secs(if quick { 1 } else { 8 }),
            latency: Duration::from_secs(if quick { 2 } else { 8 }),
            warmup: Duration::from_millis(if quick { 500 } else { 2000 }),
            latency_fractions: if quick {
                vec![0.5]
            } else {
                vec![0.25, 0.5, 0.75]
            },
            handshakes: Duration::from_secs(if quick { 1 } else { 8 }),
            handshake_concurrency: 8,
            hold: Duration::from_secs(if quick { 1 } else { 5 }),
            fanout_subscribers: a
                .fanout_subscribers
                .unwrap_or(if quick { 50 } else { 1000 })
                .max(1),
            fanout: Duration::from_secs(if quick { 1 } else { 8 }),
            fanout_warmup: Duration::from_millis(if quick { 200 } else { 1000 }),
            fanout_window: 16,
            probe: Duration::from_millis(if quick { 1500 } else { 4000 }),
            probe_warmup: Duration::from_millis(if quick { 500 } else { 1000 }),
            probe_give_up: Duration::from_secs(2),
            probe_max_p99: Duration::from_millis(100),
            search_budget: a.search_budget.unwrap_or(Duration::from_secs(if quick {
                20
            } else {
                90
            })),
            search_max_probes: if quick { 4 } else { 16 },
            search_start: if quick { 500.0 } else { 1000.0 },
            search_precision: 0.05,
            revocable: 20,
        }
    }
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
    rampart: (Guard, std::net::SocketAddr),
    mosquitto: (Guard, std::net::SocketAddr),
    outcomes: Vec<(Scenario, Outcome)>,
}

impl Bench {
    fn broker(&mut self, b: Broker) -> (u32, std::net::SocketAddr) {
        match b {
            Broker::Rampart => (self.rampart.0.pid(), self.rampart.1),
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
        let status = Guard::spawn("rampart-loadgen", &mut cmd)?.wait_timeout(s.timeout)?;
        if !status.success() {
            let err = std::fs::read_to_string(&err_path).unwrap_or_default();
            bail!(
                "load generator failed against {b:?} ({status}): {}",
                err.trim()
            );
        }
        let text = std::fs::read_to_string(&out_path).context("reading the report")?;
        serde_json::from_str(&text)
            .with_context(|| format!("parsing the report {}", out_path.display()))
    }

    /// Run a scenario `rounds` times against both brokers, alternating which
    /// goes first.
    fn run(&mut self, s: Scenario) -> Result<()> {
        let mut outcome = Outcome {
            title: s.title.clone(),
            ..Outcome::default()
        };
        for round in 0..s.rounds {
            let order = if round % 2 == 0 {
                [Broker::Rampart, Broker::Mosquitto]
            } else {
                [Broker::Mosquitto, Broker::Rampart]
            };
            for b in order.into_iter().filter(|b| s.brokers.contains(b)) {
                self.settle();
                let started = Instant::now();
                let tag = format!("{}-{b:?}-{round}", s.key);
                let report = self.run_loadgen(b, &s, &tag)?;
                let summary: Vec<String> = s
                    .metrics
                    .iter()
                    .map(|m| format!("{} {}", stats::fmt(value(&report, m)), m.unit))
                    .collect();
                eprintln!(
                    "  {:<34} {b:<9?} round {}: {} ({:.1} s)",
                    s.title,
                    round + 1,
                    summary.join(", "),
                    started.elapsed().as_secs_f64()
                );
                outcome.reports.entry(b).or_default().push(report);
            }
        }
        self.outcomes.push((s, outcome));
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
    /// each broker within `z.search_budget` and `z.search_max_probes`. The
    /// outcome holds, per broker, the report of the highest passing probe
    /// (none if nothing passed) with the whole search under `/search`.
    fn search_loss_free(&mut self, z: &Sizes) -> Result<()> {
        struct State {
            search: RateSearch,
            spent: Duration,
            last: Duration,
            probes: Vec<Value>,
            best: Option<Value>,
        }
        let floor = (z.devices as f64).max(50.0);
        let mut states: BTreeMap<Broker, State> = BOTH
            .iter()
            .map(|&b| {
                let search = RateSearch::new(
                    z.search_start,
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
            let order = if step % 2 == 0 {
                BOTH
            } else {
                [Broker::Mosquitto, Broker::Rampart]
            };
            let mut ran = false;
            for b in order {
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

    fn median(&self, key: &str, b: Broker, m: &Metric) -> Option<f64> {
        let (_, o) = self.outcomes.iter().find(|(s, _)| s.key == key)?;
        let values: Vec<f64> = o
            .reports
            .get(&b)?
            .iter()
            .filter_map(|r| value(r, m))
            .collect();
        stats::median(&values)
    }
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
        rounds: z.rounds,
        timeout: z.fanin + Duration::from_secs(90),
        brokers: BOTH.to_vec(),
    }
}

fn latency_scenario(z: &Sizes, rate: f64, fraction: Option<f64>) -> Scenario {
    let (key, title) = match fraction {
        Some(f) => {
            let pct = (f * 100.0).round();
            (
                format!("latency-{pct}"),
                format!("latency QoS 1 @ {rate:.0} msg/s ({pct} % of M.)"),
            )
        }
        None => (
            format!("latency-{rate:.0}"),
            format!("latency QoS 1 @ {rate:.0} msg/s"),
        ),
    };
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
        ],
        metrics: vec![
            metric("p50", "µs", "/latency/p50_us", false),
            metric("p99", "µs", "/latency/p99_us", false),
            metric("p99.9", "µs", "/latency/p999_us", false),
        ],
        rounds: z.rounds,
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

fn fanout_scenario(z: &Sizes, qos: u8, subscriber_certs: &Path) -> Scenario {
    Scenario {
        key: format!("fanout-q{qos}"),
        title: format!("fan-out QoS {qos}, 1 dev→{} subs", z.fanout_subscribers),
        args: vec![
            "fanout".into(),
            "--subscriber-certs".into(),
            subscriber_certs.display().to_string(),
            "--subscribers".into(),
            z.fanout_subscribers.to_string(),
            "--qos".into(),
            qos.to_string(),
            "--window".into(),
            z.fanout_window.to_string(),
            "--duration".into(),
            format!("{}ms", z.fanout.as_millis()),
            "--warmup".into(),
            format!("{}ms", z.fanout_warmup.as_millis()),
        ],
        metrics: vec![
            metric("deliveries", "msg/s", "/deliveries_per_s", true),
            metric("latency p50", "µs", "/latency/p50_us", false),
            metric("latency p99", "µs", "/latency/p99_us", false),
        ],
        rounds: z.rounds,
        // Connecting: Mosquitto completes ≈ 165 handshakes/s (8 connectors).
        timeout: z.fanout + Duration::from_secs(120 + (z.fanout_subscribers / 20) as u64),
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
        rounds: z.rounds,
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
    cmd.current_dir(&root)
        .args(["build", "-p", "rampart", "-p", "rampart-loadgen"]);
    if !dev {
        cmd.arg("--release");
    }
    eprintln!(
        "building rampart and rampart-loadgen ({})",
        if dev { "dev" } else { "release" }
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
        "rounds: {} (idle connections: {}); medians over rounds; loopback, both brokers and the \
         load generator on the same 2-core machine{}\n\n",
        z.rounds,
        z.conns_rounds,
        if args.dev_build {
            "; DEV BUILD: figures meaningless"
        } else {
            ""
        }
    ));
    out.push_str("| scenario | figure | unit | Rampart | Mosquitto | Rampart/Mosquitto | better | lost/dup (R; M) |\n");
    out.push_str("|---|---|---|---:|---:|---:|---|---|\n");
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
            out.push_str(&format!(
                "| {} | {} | {} | {} | {} | {} | {} | {} |\n",
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
                loss
            ));
        }
    }
    out.push('\n');
    out.push_str(&durability_notes(true));
    out.push_str(&scenario_notes(bench, z));
    out
}

/// What the table cannot say: the loss-free search's brackets, fan-out's
/// set-up and the revoke run's details.
fn scenario_notes(bench: &Bench, z: &Sizes) -> String {
    let mut out = String::new();
    for (s, o) in &bench.outcomes {
        match s.key.as_str() {
            "lossfree" => {
                out.push_str(&format!(
                    "Loss-free rate: open-loop QoS 1 fan-in probes of {:.1} s ({:.1} s warm-up), \
                     doubling from {:.0} msg/s then bisecting to {:.0} %, at most {} probes and \
                     {:.0} s per broker; a probe passes when every scheduled message was sent and \
                     acknowledged, the persistent subscriber received every one, and p99 ≤ {} ms.",
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
                        " {b:?}: loss-free at {} msg/s, {failed} ({probes} probes, {:.0} s).",
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
                 devices/#`), clean sessions. Closed loop end to end: message n is sent only once \
                 every subscriber has received message n − {}, so no broker queue ever fills and \
                 lost/dup are real; latency is send to delivery under that load.\n",
                z.fanout_subscribers, z.fanout_window
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
    let started = Instant::now();
    let z = Sizes::of(&args);
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => eprintln!("file descriptor limit: {n}"),
        Err(e) => eprintln!("could not raise the file descriptor limit: {e}"),
    }
    if args.suite != Suite::Sim && !args.mosquitto.is_file() {
        bail!(
            "Mosquitto not found at {} (Debian: apt-get install mosquitto; or pass --mosquitto PATH)",
            args.mosquitto.display()
        );
    }
    let bin = build(args.dev_build)?;
    let tmp = tempfile::Builder::new()
        .prefix("rampart-bench-")
        .tempdir()
        .context("creating the temp dir")?;
    let dir = tmp.path().to_path_buf();
    let run_conns = matches!(args.suite, Suite::Conns | Suite::All);
    let run_broker = matches!(args.suite, Suite::Broker | Suite::All);
    let run_ingest = matches!(args.suite, Suite::Ingest | Suite::All);
    let run_query = matches!(args.suite, Suite::Query | Suite::All);
    let out_dir = workspace_root().join("target").join("bench");
    std::fs::create_dir_all(&out_dir).context("creating target/bench")?;
    let run_sim = matches!(args.suite, Suite::Sim | Suite::All);
    let mut pipeline_table = String::new();
    if run_sim {
        let sz = sim::SimSizes::new(&args.sim, args.quick);
        let (t, raw) = sim::bench(&bin.join("rampart"), &dir.join("sim"), &sz, args.dev_build)?;
        std::fs::write(
            out_dir.join("sim.json"),
            serde_json::to_string_pretty(&raw)?,
        )
        .context("writing target/bench/sim.json")?;
        if args.suite == Suite::Sim {
            println!("{t}");
            std::fs::write(out_dir.join("latest-sim.md"), &t)
                .context("writing target/bench/latest-sim.md")?;
            eprintln!("total {:.0} s", started.elapsed().as_secs_f64());
            return Ok(());
        }
        pipeline_table = t;
    }
    if run_ingest || run_query {
        let pz = pipeline::PipelineSizes::new(args.quick, z.rounds);
        let pg = (!args.no_postgres).then_some(args.pg_admin_url.as_str());
        let (t, raw) = pipeline::bench(
            &bin.join("rampart-loadgen"),
            &dir,
            &pz,
            run_ingest,
            run_query,
            pg,
        )?;
        std::fs::write(
            out_dir.join("pipeline.json"),
            serde_json::to_string_pretty(&raw)?,
        )
        .context("writing target/bench/pipeline.json")?;
        if !pipeline_table.is_empty() {
            pipeline_table.push('\n');
        }
        pipeline_table.push_str(&t);
        if !(run_broker || run_conns) {
            println!("{pipeline_table}");
            std::fs::write(out_dir.join("latest-pipeline.md"), &pipeline_table)
                .context("writing target/bench/latest-pipeline.md")?;
            eprintln!("total {:.0} s", started.elapsed().as_secs_f64());
            return Ok(());
        }
    }
    let mut identities = z.handshake_concurrency.max(z.devices);
    if run_conns {
        identities = identities.max(z.connections);
    }
    let t = Instant::now();
    eprintln!(
        "preparing {} (init, {identities} device identities{})",
        dir.display(),
        if run_broker {
            format!(
                ", {} fan-out subscribers, {} revocable devices",
                z.fanout_subscribers, z.revocable
            )
        } else {
            String::new()
        }
    );
    let ids = setup::Identities {
        devices: identities,
        fanout_subscribers: if run_broker { z.fanout_subscribers } else { 0 },
        revocable: if run_broker { z.revocable } else { 0 },
    };
    let env = setup::prepare(&bin.join("rampart"), &dir, ids, 4)?;
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
    let rampart = procs::start_rampart(
        &env.rampart,
        &env.data,
        &env.config,
        dir.join("rampart.log"),
    )?;
    eprintln!(
        "rampart (pid {}) on {}, mosquitto (pid {}) on {maddr}",
        rampart.0.pid(),
        rampart.1,
        mosq.pid()
    );
    let mut b = Bench {
        env,
        loadgen: bin.join("rampart-loadgen"),
        rampart,
        mosquitto: (mosq, maddr),
        outcomes: Vec::new(),
    };

    if run_broker {
        b.run(fanin_scenario(&z, 0, false))?;
        b.run(fanin_scenario(&z, 1, false))?;
        b.run(fanin_scenario(&z, 1, true))?;
        b.search_loss_free(&z)?;
        if args.latency_rates.is_empty() {
            let max = metric("", "", "/msgs_per_s", true);
            let mosq_max = b
                .median("fanin-q1-persistent", Broker::Mosquitto, &max)
                .filter(|m| *m > 0.0)
                .context("no Mosquitto fan-in QoS 1 figure to base the latency rates on")?;
            for f in z.latency_fractions.clone() {
                b.run(latency_scenario(&z, (mosq_max * f).max(1.0), Some(f)))?;
            }
        } else {
            for &rate in &args.latency_rates {
                if !rate.is_finite() || rate <= 0.0 {
                    bail!("latency rates must be positive, not {rate}");
                }
                b.run(latency_scenario(&z, rate, None))?;
            }
        }
        b.run(handshakes_scenario(&z))?;
        let fanout_certs = b.env.fanout_certs.clone();
        b.run(fanout_scenario(&z, 0, &fanout_certs))?;
        b.run(fanout_scenario(&z, 1, &fanout_certs))?;
    }
    if run_conns {
        b.run(conns_scenario(&z))?;
    }
    if run_broker {
        // Last: it revokes identities and makes the server re-read its CRL.
        let poll = setup::change_poll_interval(&b.env)?;
        let revoke = revoke_scenario(&z, &b.env, poll);
        b.run(revoke)?;
    }

    let mut table = table(&b, &z, &args);
    if !pipeline_table.is_empty() {
        table.push('\n');
        table.push_str(&pipeline_table);
    }
    println!("{table}");
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
    std::fs::write(out_dir.join("latest.md"), &table).context("writing target/bench/latest.md")?;
    eprintln!(
        "raw reports: {}; total {:.0} s",
        out_dir.join("latest.json").display(),
        started.elapsed().as_secs_f64()
    );
    // Stop both brokers (by PID) before the temp dir goes away.
    drop(b);
    if args.keep {
        let kept = tmp.keep();
        eprintln!("kept {}", kept.display());
    }
    Ok(())
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Task::Bench(args) => bench(args),
    }
}
