//! Rampart-only benchmarks: durable ingest through the pipeline API and
//! chart query latency (`rampart-loadgen ingest|chart`, in process, no
//! broker). Mosquitto has no equivalent, so these get their own table.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::plan::{Suites, Timeline};
use crate::procs::Guard;
use crate::stats;

/// Sizes of the pipeline benchmarks.
#[derive(Debug, Clone)]
pub struct PipelineSizes {
    pub rounds: usize,
    pub ingest: Duration,
    pub devices: usize,
    pub chart_days: u32,
    pub chart_points: u64,
    pub chart_queries: usize,
}

impl PipelineSizes {
    /// Full size (2 rounds of 6 s per ingest configuration, chart queries on
    /// 10 million points) or tiny with `quick`; `rounds` overrides the
    /// ingest rounds.
    pub fn new(quick: bool, rounds: Option<usize>) -> Self {
        Self {
            rounds: rounds.unwrap_or(if quick { 1 } else { 2 }).max(1),
            ingest: Duration::from_secs(if quick { 1 } else { 6 }),
            devices: if quick { 20 } else { 200 },
            chart_days: if quick { 1 } else { 7 },
            chart_points: if quick { 200_000 } else { 10_000_000 },
            chart_queries: if quick { 20 } else { 300 },
        }
    }
}

fn run(loadgen: &Path, dir: &Path, tag: &str, args: &[String], timeout: Duration) -> Result<Value> {
    let out_path = dir.join(format!("{tag}.json"));
    let err_path = dir.join(format!("{tag}.stderr"));
    let mut cmd = Command::new(loadgen);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).context("creating the report file")?)
        .stderr(std::fs::File::create(&err_path).context("creating the stderr file")?);
    let status = Guard::spawn("rampart-loadgen", &mut cmd)?.wait_timeout(timeout)?;
    if !status.success() {
        let err = std::fs::read_to_string(&err_path).unwrap_or_default();
        bail!("{tag} failed ({status}): {}", err.trim());
    }
    let text = std::fs::read_to_string(&out_path).context("reading the report")?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", out_path.display()))
}

/// Where an ingest run stores.
#[derive(Debug, Clone, Copy)]
enum Backend<'a> {
    /// A fresh SQLite file in the bench dir.
    Sqlite,
    /// A fresh database on this PostgreSQL server (admin URL).
    Postgres(&'a str),
}

/// Rounds of one ingest configuration; its table rows and raw reports.
fn ingest_rows(
    loadgen: &Path,
    dir: &Path,
    z: &PipelineSizes,
    backend: Backend<'_>,
    points: usize,
    window: usize,
) -> Result<(String, (String, Value))> {
    let name = match backend {
        Backend::Sqlite => "sqlite",
        Backend::Postgres(_) => "pg",
    };
    let mut reports = Vec::new();
    for round in 0..z.rounds {
        let tag = format!("ingest-{name}-{points}-w{window}-{round}");
        eprintln!(
            "  ingest ({name}), {points} point(s)/message, window {window}, round {}",
            round + 1
        );
        let store_dir = dir.join(&tag);
        let pg = match backend {
            Backend::Postgres(admin) => Some(PgBenchDb::create(admin, &tag)?),
            Backend::Sqlite => None,
        };
        let store = match &pg {
            Some(db) => ["--store-url".to_owned(), db.url.clone()],
            None => ["--store-dir".to_owned(), store_dir.display().to_string()],
        };
        let mut args: Vec<String> = vec!["ingest".into()];
        args.extend(store);
        args.extend([
            "--devices".into(),
            z.devices.to_string(),
            "--points".into(),
            points.to_string(),
            "--window".into(),
            window.to_string(),
            "--duration".into(),
            format!("{}s", z.ingest.as_secs()),
        ]);
        reports.push(run(
            loadgen,
            dir,
            &tag,
            &args,
            z.ingest + Duration::from_secs(120),
        )?);
        let _ = std::fs::remove_dir_all(&store_dir);
    }
    let title = format!(
        "durable ingest ({}), {} devices × {window} in flight, {points} point(s)/message",
        match backend {
            Backend::Sqlite => "SQLite",
            Backend::Postgres(_) => "PostgreSQL",
        },
        z.devices
    );
    let mut rows = String::new();
    for (label, unit, pointer) in [
        ("points", "points/s", "/points_per_s"),
        ("messages", "msg/s", "/msgs_per_s"),
        ("messages per commit", "mean", "/mean_messages_per_commit"),
        ("answer latency p50", "ms", "/latency/p50_us"),
        ("answer latency p99", "ms", "/latency/p99_us"),
        ("not committed", "messages", "/not_committed"),
    ] {
        let scale = if unit == "ms" { 0.001 } else { 1.0 };
        let values: Vec<f64> = reports
            .iter()
            .filter_map(|r| r.pointer(pointer).and_then(Value::as_f64))
            .map(|v| v * scale)
            .collect();
        let v = stats::fmt(stats::median(&values));
        rows.push_str(&format!("| {title} | {label} | {unit} | {v} |\n"));
    }
    Ok((
        rows,
        (
            format!("ingest-{name}-{points}-w{window}"),
            Value::Array(reports),
        ),
    ))
}

/// Ingest configurations on SQLite: (points per message, messages in
/// flight per device).
pub const SQLITE_CONFIGS: [(usize, usize); 4] = [(50, 1), (50, 16), (1, 1), (1, 16)];

/// Ingest configurations on PostgreSQL.
pub const POSTGRES_CONFIGS: [(usize, usize); 2] = [(50, 16), (1, 16)];

/// Runs the ingest and/or chart benchmarks; returns a markdown table and the
/// raw reports.
pub fn bench(
    loadgen: &Path,
    dir: &Path,
    z: &PipelineSizes,
    suites: Suites,
    pg_admin: Option<&str>,
    time: &mut Timeline,
) -> Result<(String, Value)> {
    let mut out = String::from(
        "Rampart only, in process (`rampart-loadgen ingest|chart`, SQLite, \
         `synchronous=FULL`: every message durable before its answer):\n\n\
         | scenario | figure | unit | median |\n|---|---|---|---:|\n",
    );
    let mut raw = serde_json::Map::new();
    if suites.ingest {
        time.time("ingest", || {
            let mut configs: Vec<(Backend, usize, usize)> = SQLITE_CONFIGS
                .into_iter()
                .map(|(p, w)| (Backend::Sqlite, p, w))
                .collect();
            if let Some(admin) = pg_admin {
                configs.extend(POSTGRES_CONFIGS.map(|(p, w)| (Backend::Postgres(admin), p, w)));
            }
            for (backend, points, window) in configs {
                let (rows, (key, reports)) = ingest_rows(loadgen, dir, z, backend, points, window)?;
                out.push_str(&rows);
                raw.insert(key, reports);
            }
            Ok(())
        })?;
    }
    if suites.query {
        let (rows, report) = time.time("query", || chart(loadgen, dir, z))?;
        out.push_str(&rows);
        raw.insert("chart".into(), report);
    }
    Ok((out, Value::Object(raw)))
}

/// The chart store and its queries: table rows and the raw report.
fn chart(loadgen: &Path, dir: &Path, z: &PipelineSizes) -> Result<(String, Value)> {
    let mut out = String::new();
    let store = dir.join("chart");
    eprintln!(
        "  chart: loading {} points, then {} queries per window",
        z.chart_points, z.chart_queries
    );
    let report = run(
        loadgen,
        dir,
        "chart",
        &[
            "chart".into(),
            "--store-dir".into(),
            store.display().to_string(),
            "--days".into(),
            z.chart_days.to_string(),
            "--total-points".into(),
            z.chart_points.to_string(),
            "--queries".into(),
            z.chart_queries.to_string(),
            "--buckets".into(),
            "1000".into(),
        ],
        Duration::from_secs(1200),
    )?;
    let _ = std::fs::remove_dir_all(&store);
    let stored = report.pointer("/points_stored").and_then(Value::as_f64);
    out.push_str(&format!(
        "| chart store | points stored | points | {} |\n| chart store | bulk load | points/s | {} |\n",
        stats::fmt(stored),
        stats::fmt(report.pointer("/load_points_per_s").and_then(Value::as_f64)),
    ));
    for w in report
        .pointer("/windows")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
    {
        let name = format!(
            "chart query, {} window, 1,000 buckets (from {}, {} buckets)",
            w["window"].as_str().unwrap_or("?"),
            w["resolution"].as_str().unwrap_or("?"),
            w["buckets"]
        );
        for (label, pointer) in [("p50", "/latency/p50_us"), ("p99", "/latency/p99_us")] {
            let v = w
                .pointer(pointer)
                .and_then(Value::as_f64)
                .map(|us| us / 1000.0);
            out.push_str(&format!(
                "| {name} | latency {label} | ms | {} |\n",
                stats::fmt(v)
            ));
        }
    }
    Ok((out, report))
}

/// A database created for one benchmark run with `psql`, dropped after.
struct PgBenchDb {
    admin: String,
    name: String,
    url: String,
}

impl PgBenchDb {
    fn create(admin: &str, tag: &str) -> Result<Self> {
        let name = format!(
            "rampart_bench_{}_{}",
            std::process::id(),
            tag.replace('-', "_")
        );
        psql(admin, &format!("CREATE DATABASE {name}"))?;
        let base = admin.rsplit_once('/').map_or(admin, |(b, _)| b);
        Ok(Self {
            admin: admin.to_owned(),
            url: format!("{base}/{name}"),
            name,
        })
    }
}

impl Drop for PgBenchDb {
    fn drop(&mut self) {
        if let Err(e) = psql(
            &self.admin,
            &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
        ) {
            eprintln!("could not drop {}: {e}", self.name);
        }
    }
}

fn psql(admin: &str, sql: &str) -> Result<()> {
    let out = Command::new("psql")
        .args([admin, "-v", "ON_ERROR_STOP=1", "-q", "-c", sql])
        .stdin(Stdio::null())
        .output()
        .context("running psql (Debian: apt-get install postgresql-client)")?;
    if !out.status.success() {
        bail!(
            "psql {sql:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}
