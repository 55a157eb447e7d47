//! `cargo xtask bench sim` (Rampart only): how many simulated devices one
//! `rampart simulate` process sustains at one reading per second each, and
//! its memory per device.
//!
//! One `rampart serve` with its own data dir; for each fleet size (smallest
//! first, on one state dir so that each size enrolls only the devices the
//! previous one did not) `rampart simulate --rate 1/s --batch-size 1` runs
//! until every device is connected, warms up, then is measured over a
//! steady window from its own progress lines: acknowledged readings per
//! second (the target is one per device), whether the buffer grows, its
//! CPU and RSS (and the server's CPU) from `/proc`.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::procs::{self, Guard, Listening, cpu_seconds};
use crate::setup::{self, Env, Identities};
use crate::stats;

/// The simulated devices' id prefix.
const ID_PREFIX: &str = "bench-sim";

/// `sim` options of `cargo xtask bench`.
#[derive(Debug, clap::Args)]
pub struct SimArgs {
    /// Fleet sizes of the `sim` scenario, comma-separated (default
    /// 1000,5000,10000; 20,100 with --quick).
    #[arg(long, value_delimiter = ',')]
    sim_devices: Vec<usize>,
    /// Time the `sim` scenario may take; sizes that no longer fit are
    /// skipped and marked (default 300s, 60s with --quick).
    #[arg(long, value_parser = humantime::parse_duration)]
    sim_budget: Option<Duration>,
}

/// Sizes and times of one `sim` run.
#[derive(Debug, Clone)]
pub struct SimSizes {
    fleets: Vec<usize>,
    budget: Duration,
    warmup: Duration,
    window: Duration,
    connect_rate: f64,
    enroll_rate: f64,
    drain: Duration,
}

impl SimSizes {
    /// Sizes from the options, defaults by `quick`.
    pub fn new(a: &SimArgs, quick: bool) -> Self {
        let mut fleets = if a.sim_devices.is_empty() {
            if quick {
                vec![20, 100]
            } else {
                vec![1_000, 5_000, 10_000]
            }
        } else {
            a.sim_devices.iter().copied().filter(|&n| n > 0).collect()
        };
        fleets.sort_unstable();
        fleets.dedup();
        Self {
            fleets,
            budget: a
                .sim_budget
                .unwrap_or(Duration::from_secs(if quick { 60 } else { 300 })),
            warmup: Duration::from_secs(if quick { 1 } else { 3 }),
            window: Duration::from_secs(if quick { 3 } else { 10 }),
            connect_rate: 1_000.0,
            // Each enrollment is a CSR verified, a certificate signed and a
            // transaction committed: a rate two cores sustain beside the
            // fleet already streaming.
            enroll_rate: 100.0,
            drain: Duration::from_secs(5),
        }
    }

    /// What a run of `n` devices needs at least beyond connecting.
    fn fixed_time(&self) -> Duration {
        self.warmup + self.window + self.drain
    }
}

/// One line of `rampart simulate`'s plain progress output
/// (`progress 12.3s connected 198/200 enrolled 200 sent … acked … buffered …`).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Progress {
    elapsed_s: f64,
    connected: u64,
    devices: u64,
    acked: u64,
    buffered: u64,
    dropped: u64,
}

impl Progress {
    fn parse(line: &str) -> Option<Self> {
        let rest = line.trim().strip_prefix("progress")?;
        let mut words = rest.split_whitespace();
        let mut p = Progress {
            elapsed_s: words.next()?.strip_suffix('s')?.parse().ok()?,
            ..Progress::default()
        };
        let mut seen = 0;
        while let Some(word) = words.next() {
            let field = match word {
                "connected" => {
                    let (c, d) = words.next()?.split_once('/')?;
                    p.connected = c.parse().ok()?;
                    p.devices = d.parse().ok()?;
                    seen += 1;
                    continue;
                }
                "acked" => &mut p.acked,
                "buffered" => &mut p.buffered,
                "dropped" => &mut p.dropped,
                _ => continue,
            };
            *field = words.next()?.parse().ok()?;
            seen += 1;
        }
        (seen == 4).then_some(p)
    }
}

/// A process's resident set size in KiB (`VmRSS` of `/proc/PID/status`).
fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// CPU use of `pid` between two readings, in % of one core.
fn cpu_percent(pid: u32, before: Option<f64>, seconds: f64) -> Option<f64> {
    let (b, a) = (before?, cpu_seconds(pid)?);
    (seconds > 0.0).then(|| (a - b) / seconds * 100.0)
}

/// The measured figures of one fleet size.
#[derive(Debug, Clone, serde::Serialize)]
struct Row {
    devices: usize,
    connect_s: f64,
    acked_per_s: f64,
    buffered_start: u64,
    buffered_end: u64,
    dropped: u64,
    sustained: bool,
    sim_cpu_percent: Option<f64>,
    server_cpu_percent: Option<f64>,
    sim_rss_kib: Option<u64>,
}

/// Runs `rampart ARGS` against the scenario's data dir; its stdout.
fn rampart(env: &Env, args: &[&str]) -> Result<Vec<u8>> {
    let out = Command::new(&env.rampart)
        .arg("--data-dir")
        .arg(&env.data)
        .arg("--config")
        .arg(&env.config)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running rampart {args:?}"))?;
    if !out.status.success() {
        bail!(
            "rampart {args:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out.stdout)
}

/// Runs the scenario in `dir`; returns its table (Markdown) and raw rows.
pub fn bench(
    rampart_bin: &Path,
    dir: &Path,
    z: &SimSizes,
    dev_build: bool,
) -> Result<(String, Value)> {
    let started = Instant::now();
    std::fs::create_dir_all(dir).context("creating the sim bench dir")?;
    let none = Identities {
        devices: 0,
        fanout_subscribers: 0,
        revocable: 0,
    };
    let env = setup::prepare(rampart_bin, dir, none, 1)?;
    let (server, addrs) = procs::start_rampart_listening(
        rampart_bin,
        &env.data,
        &env.config,
        dir.join("rampart.log"),
        false,
    )?;
    let ca = dir.join("ca.pem");
    std::fs::write(&ca, rampart(&env, &["ca", "export"])?).context("writing ca.pem")?;
    let largest = z.fleets.last().copied().unwrap_or(0).to_string();
    let created: Value = serde_json::from_slice(&rampart(
        &env,
        &[
            "--json",
            "enroll-token",
            "create",
            "--uses",
            &largest,
            "--expires",
            "2h",
            "--id-prefix",
            &format!("{ID_PREFIX}-"),
        ],
    )?)
    .context("parsing `enroll-token create --json`")?;
    let token = created
        .get("token")
        .and_then(Value::as_str)
        .context("`enroll-token create --json` printed no token")?
        .to_owned();
    eprintln!(
        "sim: rampart serve (pid {}) on {} / {}; fleets {:?}",
        server.pid(),
        addrs.mqtt,
        addrs.http,
        z.fleets
    );

    let mut rows = Vec::new();
    let mut skipped = Vec::new();
    let mut failed: Vec<(usize, String)> = Vec::new();
    for &n in &z.fleets {
        let left = z.budget.saturating_sub(started.elapsed());
        if left < z.fixed_time() + Duration::from_secs(5) {
            skipped.push(n);
            continue;
        }
        let run = Fleet {
            rampart: rampart_bin,
            server: &server,
            addrs,
            ca: &ca,
            token: &token,
            state: &dir.join("state"),
            log: dir.join(format!("simulate-{n}.log")),
        };
        // A size that cannot be measured (its fleet did not connect within
        // the budget, or simulate failed) is reported in the table; the
        // sizes measured before it keep their figures.
        match run.measure(n, z, left) {
            Ok(row) => {
                eprintln!(
                    "  {n} devices: {:.0} acked/s, buffered {} → {}, sustained: {}",
                    row.acked_per_s, row.buffered_start, row.buffered_end, row.sustained
                );
                rows.push(row);
            }
            Err(e) => {
                eprintln!("  {n} devices: not measured: {e:#}");
                failed.push((n, format!("{e:#}")));
            }
        }
    }
    drop(server);
    let raw = json!({ "rows": rows, "skipped": skipped, "failed": failed });
    let mut t = table(&rows, &skipped, z, dev_build);
    for (n, why) in &failed {
        t.push_str(&format!("\nNot measured: {n} devices: {why}\n"));
    }
    Ok((t, raw))
}

/// One `rampart simulate` run against the scenario's server.
struct Fleet<'a> {
    rampart: &'a Path,
    server: &'a Guard,
    addrs: Listening,
    ca: &'a Path,
    token: &'a str,
    state: &'a Path,
    log: PathBuf,
}

impl Fleet<'_> {
    /// Starts `n` devices, waits until all are connected (within `left`),
    /// measures a window, and stops the fleet with SIGTERM.
    fn measure(&self, n: usize, z: &SimSizes, left: Duration) -> Result<Row> {
        let mut cmd = Command::new(self.rampart);
        cmd.arg("simulate")
            .args(["--devices", &n.to_string(), "--rate", "1/s"])
            .args(["--batch-size", "1", "--read-failures", "0"])
            .args(["--id-prefix", ID_PREFIX])
            .args(["--connect-rate", &z.connect_rate.to_string()])
            .args(["--enroll-rate", &z.enroll_rate.to_string()])
            .args(["--progress-every", "1s"])
            .args(["--drain-timeout", &format!("{}s", z.drain.as_secs())])
            .arg("--server")
            .arg(self.addrs.mqtt.to_string())
            .arg("--http")
            .arg(self.addrs.http.to_string())
            .arg("--ca")
            .arg(self.ca)
            .arg("--state-dir")
            .arg(self.state)
            .env("RAMPART_ENROLL_TOKEN", self.token)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut sim = Guard::spawn("rampart simulate", &mut cmd)?;
        let stderr = sim.take_stderr().context("simulate: no stderr pipe")?;
        let (tx, rx) = mpsc::channel();
        let log = self.log.clone();
        std::thread::spawn(move || {
            let mut out = std::fs::File::create(&log).ok();
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(p) = Progress::parse(&line) {
                    let _ = tx.send(p);
                }
                if let Some(f) = out.as_mut() {
                    let _ = writeln!(f, "{line}");
                }
            }
        });
        let (sim_pid, server_pid) = (sim.pid(), self.server.pid());
        let log = self.log.display().to_string();
        let next = |deadline: Instant| -> Result<Progress> {
            let wait = deadline.saturating_duration_since(Instant::now());
            rx.recv_timeout(wait).map_err(|_| {
                anyhow::anyhow!(
                    "simulate of {n} devices: no progress line before the deadline (the time \
                     budget ran out while devices were still enrolling or connecting, or the \
                     simulator stalled); see {log} (kept with --keep)"
                )
            })
        };

        // Every device connected, within what the budget leaves.
        let connect_deadline = Instant::now() + left.saturating_sub(z.fixed_time());
        let ready = loop {
            let p = next(connect_deadline)?;
            if p.devices == n as u64 && p.connected == p.devices {
                break p;
            }
            if Instant::now() >= connect_deadline {
                bail!(
                    "only {} of {n} simulated devices connected within the time budget; see {log}",
                    p.connected
                );
            }
        };
        let window_deadline = Instant::now() + z.warmup + z.window * 3;
        let start = loop {
            let p = next(window_deadline)?;
            if p.elapsed_s >= ready.elapsed_s + z.warmup.as_secs_f64() {
                break p;
            }
        };
        let (sim_cpu, server_cpu, t0) = (
            cpu_seconds(sim_pid),
            cpu_seconds(server_pid),
            Instant::now(),
        );
        let end = loop {
            let p = next(window_deadline)?;
            if p.elapsed_s >= start.elapsed_s + z.window.as_secs_f64() {
                break p;
            }
        };
        let seconds = t0.elapsed().as_secs_f64();
        let sim_cpu_percent = cpu_percent(sim_pid, sim_cpu, seconds);
        let server_cpu_percent = cpu_percent(server_pid, server_cpu, seconds);
        let sim_rss_kib = rss_kib(sim_pid);

        // Stop the fleet as an operator would: it delivers what it holds.
        let _ = Command::new("kill")
            .args(["-TERM", &sim_pid.to_string()])
            .status();
        let status = sim.wait_timeout(z.drain + Duration::from_secs(20))?;
        if !status.success() {
            bail!("simulate of {n} devices ended with {status}; see {log}");
        }

        let acked_per_s = (end.acked - start.acked) as f64 / (end.elapsed_s - start.elapsed_s);
        Ok(Row {
            devices: n,
            connect_s: ready.elapsed_s,
            acked_per_s,
            buffered_start: start.buffered,
            buffered_end: end.buffered,
            dropped: end.dropped - start.dropped,
            // One reading per device per second arrives, and the backlog
            // does not grow by more than one second's worth.
            sustained: acked_per_s >= 0.95 * n as f64
                && end.buffered <= start.buffered + n as u64
                && end.dropped == start.dropped,
            sim_cpu_percent,
            server_cpu_percent,
            sim_rss_kib,
        })
    }
}

fn table(rows: &[Row], skipped: &[usize], z: &SimSizes, dev_build: bool) -> String {
    let mut out = format!(
        "Simulator (Rampart only): `rampart simulate --rate 1/s --batch-size 1 --read-failures 0` \
         against `rampart serve` on the same machine; {:.0} s warm-up once all devices are \
         connected, then a {:.0} s window; one run per size{}\n\n",
        z.warmup.as_secs_f64(),
        z.window.as_secs_f64(),
        if dev_build {
            "; DEV BUILD: figures meaningless"
        } else {
            ""
        }
    );
    out.push_str(
        "| devices | all connected after (s) | acked readings/s | buffered (start → end) | \
         sustained | simulate CPU (% core) | serve CPU (% core) | simulate RSS (MiB) | \
         RSS per device (KiB) | added RSS per added device (KiB) |\n",
    );
    out.push_str("|---:|---:|---:|---|---|---:|---:|---:|---:|---:|\n");
    let mut previous: Option<&Row> = None;
    for r in rows {
        let rss = r.sim_rss_kib.map(|k| k as f64);
        let marginal = match (
            previous.and_then(|p| p.sim_rss_kib.map(|k| (p.devices, k))),
            r.sim_rss_kib,
        ) {
            (Some((pn, pk)), Some(k)) if r.devices > pn => {
                Some((k as f64 - pk as f64) / (r.devices - pn) as f64)
            }
            _ => None,
        };
        out.push_str(&format!(
            "| {} | {} | {} | {} → {} | {} | {} | {} | {} | {} | {} |\n",
            r.devices,
            stats::fmt(Some(r.connect_s)),
            stats::fmt(Some(r.acked_per_s)),
            r.buffered_start,
            r.buffered_end,
            if r.sustained { "yes" } else { "no" },
            stats::fmt(r.sim_cpu_percent),
            stats::fmt(r.server_cpu_percent),
            stats::fmt(rss.map(|k| k / 1024.0)),
            stats::fmt(rss.map(|k| k / r.devices as f64)),
            stats::fmt(marginal),
        ));
        previous = Some(r);
    }
    for n in skipped {
        out.push_str(&format!(
            "| {n} | skipped: the {:.0} s time budget was spent | | | | | | | | |\n",
            z.budget.as_secs_f64()
        ));
    }
    out.push_str(
        "\nSustained: acknowledged readings/s ≥ 95 % of the devices and the simulator's buffer \
         grew by less than one second's worth over the window, nothing dropped. RSS per device \
         includes the process's fixed base; the last column is the slope between sizes.\n",
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_lines_parse() {
        let line = "progress   12.3s  connected 198/200  enrolled 200  sent 2400  acked 2380  \
                    buffered 20  dropped 3  read failures 0  reconnects 30";
        assert_eq!(
            Progress::parse(line),
            Some(Progress {
                elapsed_s: 12.3,
                connected: 198,
                devices: 200,
                acked: 2380,
                buffered: 20,
                dropped: 3,
            })
        );
        assert_eq!(Progress::parse("fleet starting devices=3"), None);
        assert_eq!(Progress::parse("progress 1.0s connected 1/2"), None);
    }

    #[test]
    fn sizes_are_sorted_and_default_by_quick() {
        let a = SimArgs {
            sim_devices: vec![500, 0, 100, 500],
            sim_budget: None,
        };
        assert_eq!(SimSizes::new(&a, false).fleets, [100, 500]);
        let none = SimArgs {
            sim_devices: Vec::new(),
            sim_budget: None,
        };
        assert_eq!(SimSizes::new(&none, true).fleets, [20, 100]);
        assert_eq!(SimSizes::new(&none, false).fleets, [1_000, 5_000, 10_000]);
    }
}
