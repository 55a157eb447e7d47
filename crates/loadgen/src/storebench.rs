//! Rampart-only benchmarks of the telemetry pipeline and store, in process
//! (no broker): durable ingest through the pipeline API, and chart query
//! latency on a store holding millions of points.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rampart_ingest::{Pipeline, PipelineOptions};
use rampart_proto::DeviceId;
use rampart_proto::ingest::{InboundMessage, IngestOutcome, MessageProperties, QoS};
use rampart_proto::telemetry::MetricName;
use rampart_proto::topic::Category;
use rampart_store::telemetry::{IngestItem, NewReading, SeriesQuery, TelemetryStore};
use serde::Serialize;

use crate::{LoadgenError, Percentiles, latency_histogram};

/// Where the benchmarks store.
#[derive(Debug, Clone)]
pub enum BenchStore {
    /// SQLite in this directory (created).
    Dir(std::path::PathBuf),
    /// The PostgreSQL database at this URL.
    Url(String),
}

/// Opens the store the benchmarks write to and checks that it holds no
/// telemetry yet: the benchmarks number readings from 0, and readings
/// already stored would be answered as duplicates, not written.
pub async fn open_store(at: &BenchStore) -> Result<Arc<dyn TelemetryStore>, LoadgenError> {
    let opened = |e: rampart_store::StoreError| LoadgenError::Config(format!("open store: {e}"));
    // No audit head file: the benchmarks append no audit rows.
    let key = rampart_store::AuditKey::new([0; 32], None);
    let (store, shown): (Arc<dyn TelemetryStore>, String) = match at {
        BenchStore::Dir(dir) => {
            std::fs::create_dir_all(dir)
                .map_err(|e| LoadgenError::io(format!("create {}", dir.display()), e))?;
            let store = rampart_store::SqliteStore::open(
                &dir.join("rampart.db"),
                key,
                rampart_store::sqlite::SqliteOptions::default(),
            )
            .map_err(opened)?;
            (Arc::new(store), dir.display().to_string())
        }
        BenchStore::Url(url) => {
            let store = rampart_store::PostgresStore::connect(
                url,
                key,
                rampart_store::postgres::PostgresOptions::default(),
            )
            .await
            .map_err(opened)?;
            let shown = store.target().to_owned();
            (Arc::new(store), shown)
        }
    };
    if store.oldest_point().await.map_err(opened)?.is_some() {
        return Err(LoadgenError::Config(format!(
            "the store at {shown} already holds telemetry; benchmarks need an empty one (a new directory, or a database made with createdb)"
        )));
    }
    Ok(store)
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Settings of the ingest benchmark.
#[derive(Debug, Clone)]
pub struct IngestConfig {
    /// Concurrent devices.
    pub devices: usize,
    /// Messages each device has in flight: a burst offered together, as the
    /// broker offers publishes that arrived together on one connection
    /// (docs/decisions/0004); the next burst waits for all its answers.
    pub window: usize,
    /// Points per message: 1 (one reading, one metric) or an even number
    /// (a batch of readings with two metrics each).
    pub points_per_message: usize,
    /// How long to publish.
    pub duration: Duration,
}

/// What the ingest benchmark measured.
#[derive(Debug, Clone, Serialize)]
pub struct IngestReport {
    /// Devices.
    pub devices: usize,
    /// Messages in flight per device.
    pub window: usize,
    /// Points per message.
    pub points_per_message: usize,
    /// Messages committed.
    pub messages: u64,
    /// Points committed.
    pub points: u64,
    /// Measured seconds.
    pub seconds: f64,
    /// Messages per second.
    pub msgs_per_s: f64,
    /// Points per second.
    pub points_per_s: f64,
    /// Transactions.
    pub commits: u64,
    /// Mean messages per transaction.
    pub mean_messages_per_commit: f64,
    /// Time from offer to durable answer.
    pub latency: Percentiles,
    /// Messages not answered `Committed` (must be 0).
    pub not_committed: u64,
}

/// One message's JSON for device `d` starting at reading `n`.
fn message(points: usize, seq: u64, ts: i64) -> (String, u64) {
    if points <= 1 {
        return (
            format!(
                r#"{{"seq":{seq},"ts":{ts},"m":{{"temperature":{}}}}}"#,
                20.0 + (seq % 50) as f64 / 10.0
            ),
            1,
        );
    }
    let readings = points / 2;
    let mut s = String::with_capacity(readings * 64);
    s.push_str(r#"{"batch":["#);
    for i in 0..readings as u64 {
        if i > 0 {
            s.push(',');
        }
        s.push_str(&format!(
            r#"{{"seq":{},"ts":{},"m":{{"temperature":{},"humidity":{}}}}}"#,
            seq + i,
            ts + i as i64 * 1000,
            20.0 + ((seq + i) % 50) as f64 / 10.0,
            40 + (seq + i) % 20
        ));
    }
    s.push_str("]}");
    (s, readings as u64)
}

/// Runs the ingest benchmark against `store`.
pub async fn ingest(
    store: Arc<dyn TelemetryStore>,
    cfg: IngestConfig,
) -> Result<IngestReport, LoadgenError> {
    let (pipeline, committer) = Pipeline::start(store, PipelineOptions::default());
    let start_ts = now_ms() - 30 * 86_400_000;
    let deadline = Instant::now() + cfg.duration;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for d in 0..cfg.devices {
        let pipeline = pipeline.clone();
        let points = cfg.points_per_message;
        let window = cfg.window.max(1);
        tasks.push(tokio::spawn(async move {
            let device = DeviceId::parse(&format!("bench-{d:05}"))
                .map_err(|e| LoadgenError::Config(e.to_string()))?;
            let mut hist = latency_histogram()?;
            let (mut seq, mut ts) = (0u64, start_ts);
            let (mut messages, mut bad) = (0u64, 0u64);
            while Instant::now() < deadline {
                let sent = Instant::now();
                let mut burst = Vec::with_capacity(window);
                for _ in 0..window {
                    let (body, readings) = message(points, seq, ts);
                    seq += readings;
                    ts += readings as i64 * 1000;
                    burst.push(pipeline.process(InboundMessage {
                        device: device.clone(),
                        category: Category::Telemetry,
                        qos: QoS::AtLeastOnce,
                        payload: Bytes::from(body),
                        properties: MessageProperties::default(),
                        received_at_ms: now_ms(),
                    }));
                }
                for outcome in futures_util::future::join_all(burst).await {
                    let _ = hist.record(sent.elapsed().as_micros().max(1) as u64);
                    if outcome == IngestOutcome::Committed {
                        messages += 1;
                    } else {
                        bad += 1;
                    }
                }
            }
            Ok::<_, LoadgenError>((messages, bad, hist))
        }));
    }
    let mut hist = latency_histogram()?;
    let (mut messages, mut bad) = (0, 0);
    for t in tasks {
        let (m, b, h) = t
            .await
            .map_err(|e| LoadgenError::Protocol(format!("device task: {e}")))??;
        messages += m;
        bad += b;
        hist.add(&h)
            .map_err(|e| LoadgenError::Config(format!("histogram: {e}")))?;
    }
    let seconds = started.elapsed().as_secs_f64();
    let metrics = Arc::clone(pipeline.metrics());
    drop(pipeline);
    let _ = committer.await;
    let commits = metrics.commits.load(Ordering::Relaxed);
    let items = metrics.commit_items.load(Ordering::Relaxed);
    let points = metrics.points_stored.load(Ordering::Relaxed);
    Ok(IngestReport {
        devices: cfg.devices,
        window: cfg.window.max(1),
        points_per_message: cfg.points_per_message,
        messages,
        points,
        seconds,
        msgs_per_s: messages as f64 / seconds,
        points_per_s: points as f64 / seconds,
        commits,
        mean_messages_per_commit: if commits == 0 {
            0.0
        } else {
            items as f64 / commits as f64
        },
        latency: Percentiles::of(&hist),
        not_committed: bad,
    })
}

/// Settings of the chart query benchmark.
#[derive(Debug, Clone)]
pub struct ChartConfig {
    /// Days of 1-second data for the charted device.
    pub days: u32,
    /// Points the store holds in all (other devices fill it up).
    pub total_points: u64,
    /// Queries per window.
    pub queries: usize,
    /// Buckets per query.
    pub buckets: u32,
}

/// Latency of one kind of chart query.
#[derive(Debug, Clone, Serialize)]
pub struct ChartWindow {
    /// The window queried, e.g. `7d`.
    pub window: String,
    /// Resolution the store answered from.
    pub resolution: String,
    /// Buckets in the answer.
    pub buckets: usize,
    /// Latency.
    pub latency: Percentiles,
}

/// What the chart benchmark measured.
#[derive(Debug, Clone, Serialize)]
pub struct ChartReport {
    /// Points stored before querying.
    pub points_stored: u64,
    /// Points of the charted device, per metric.
    pub points_per_metric: u64,
    /// Seconds the bulk load took.
    pub load_seconds: f64,
    /// Bulk-load rate (large transactions), points per second.
    pub load_points_per_s: f64,
    /// One entry per window.
    pub windows: Vec<ChartWindow>,
}

/// Loads `readings` 1-second readings of `metrics` for `device`, ending now.
async fn load_device(
    store: &dyn TelemetryStore,
    device: &str,
    metrics: &[&str],
    readings: u64,
    end_ms: i64,
) -> Result<u64, LoadgenError> {
    let device = DeviceId::parse(device).map_err(|e| LoadgenError::Config(e.to_string()))?;
    let names: Vec<MetricName> = metrics
        .iter()
        .map(|m| MetricName::parse(m).map_err(|e| LoadgenError::Config(e.to_string())))
        .collect::<Result<_, _>>()?;
    let start = end_ms - readings as i64 * 1000;
    let per_item = 500u64;
    let per_commit = 40usize;
    let mut items = Vec::with_capacity(per_commit);
    let mut points = 0;
    let mut seq = 0u64;
    while seq < readings {
        let n = per_item.min(readings - seq);
        let batch: Vec<NewReading> = (seq..seq + n)
            .map(|s| {
                let phase = s as f64 / 3600.0;
                NewReading {
                    seq: s,
                    ts_ms: start + s as i64 * 1000,
                    received_ms: end_ms,
                    flags: 0,
                    digest: s as i64,
                    metrics: names
                        .iter()
                        .enumerate()
                        .map(|(i, m)| (m.clone(), 20.0 + 5.0 * (phase + i as f64).sin()))
                        .collect(),
                }
            })
            .collect();
        points += n * names.len() as u64;
        items.push(IngestItem::Readings {
            device: device.clone(),
            readings: batch,
            payload: Bytes::new(),
        });
        seq += n;
        if items.len() == per_commit || seq >= readings {
            store
                .commit_ingest(std::mem::take(&mut items).into(), false)
                .await
                .map_err(|e| LoadgenError::Config(format!("load: {e}")))?;
        }
    }
    Ok(points)
}

/// Runs the chart benchmark: fills `store`, then times queries.
pub async fn chart(
    store: Arc<dyn TelemetryStore>,
    cfg: ChartConfig,
) -> Result<ChartReport, LoadgenError> {
    let end = now_ms();
    let readings = u64::from(cfg.days) * 86_400;
    let started = Instant::now();
    let mut stored = load_device(
        &*store,
        "chart-0",
        &["temperature", "humidity"],
        readings,
        end,
    )
    .await?;
    let mut filler = 1;
    while stored < cfg.total_points {
        let name = format!("filler-{filler}");
        let n = readings.min(cfg.total_points - stored);
        stored += load_device(&*store, &name, &["temperature"], n, end).await?;
        filler += 1;
    }
    let load_seconds = started.elapsed().as_secs_f64();
    let device = DeviceId::parse("chart-0").map_err(|e| LoadgenError::Config(e.to_string()))?;
    let metric =
        MetricName::parse("temperature").map_err(|e| LoadgenError::Config(e.to_string()))?;
    let mut windows = Vec::new();
    for (label, span) in [
        (format!("{}d", cfg.days), i64::from(cfg.days) * 86_400_000),
        ("24h".into(), 86_400_000),
        ("1h".into(), 3_600_000),
    ] {
        let mut hist = latency_histogram()?;
        let mut last = None;
        for q in 0..cfg.queries {
            // Slide the window a little each time, as a live chart does.
            let to = end - (q as i64 % 60) * 1000;
            let t = Instant::now();
            let series = store
                .query_series(&SeriesQuery {
                    device: device.clone(),
                    metric: metric.clone(),
                    from_ms: to - span,
                    to_ms: to,
                    buckets: cfg.buckets,
                })
                .await
                .map_err(|e| LoadgenError::Config(format!("query: {e}")))?;
            let _ = hist.record(t.elapsed().as_micros().max(1) as u64);
            last = Some(series);
        }
        let series = last.ok_or_else(|| LoadgenError::Config("no queries".into()))?;
        windows.push(ChartWindow {
            window: label,
            resolution: series.resolution.as_str().to_owned(),
            buckets: series.buckets.len(),
            latency: Percentiles::of(&hist),
        });
    }
    Ok(ChartReport {
        points_stored: stored,
        points_per_metric: readings,
        load_seconds,
        load_points_per_s: stored as f64 / load_seconds,
        windows,
    })
}
