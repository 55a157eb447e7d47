//! The console's server-side costs (issue 8): the device list on a fleet of
//! 10,000 devices and a 30-day chart (series query + SVG render), in
//! process on the store, without HTTP.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rampart_proto::DeviceId;
use rampart_proto::telemetry::MetricName;
use rampart_store::telemetry::{IngestItem, NewReading, SeriesQuery, TelemetryStore};
use rampart_store::{Actor, DeviceQuery, DeviceSort, DeviceState, IdMatch, NewDevice, Store};
use serde::Serialize;

use crate::{LoadgenError, Percentiles, latency_histogram};

/// Sizes of the console benchmark.
#[derive(Debug, Clone, Copy)]
pub struct ConsoleConfig {
    /// Devices registered.
    pub devices: usize,
    /// Days of one-minute data for the charted device.
    pub days: u32,
    /// Timed runs of each measurement.
    pub runs: usize,
}

/// One measurement.
#[derive(Debug, Serialize)]
pub struct ConsoleRow {
    /// What was measured.
    pub what: String,
    /// Server-side time.
    pub latency: Percentiles,
    /// Rows or buckets in the answer.
    pub size: u64,
}

/// The benchmark's answer.
#[derive(Debug, Serialize)]
pub struct ConsoleReport {
    /// Devices registered.
    pub devices: usize,
    /// Readings of the charted device.
    pub readings: u64,
    /// Setup time (not measured for the goal), seconds.
    pub setup_secs: f64,
    /// The measurements.
    pub rows: Vec<ConsoleRow>,
}

/// Registers `devices` devices, stores `days` of one-minute readings for
/// one, then times the device list and the chart.
pub async fn console(
    store: rampart_store::SqliteStore,
    config: ConsoleConfig,
) -> Result<ConsoleReport, LoadgenError> {
    let err =
        |what: &str, e: rampart_store::StoreError| LoadgenError::Config(format!("{what}: {e}"));
    let setup = Instant::now();
    let now = time::OffsetDateTime::now_utc();
    let actor = Actor::system();
    // Registration: the store's normal (audited) path, eight at a time.
    let store = Arc::new(store);
    let mut next = 0usize;
    while next < config.devices {
        let mut batch = tokio::task::JoinSet::new();
        for n in next..(next + 8).min(config.devices) {
            let (store, actor) = (Arc::clone(&store), actor.clone());
            batch.spawn(async move {
                let id = DeviceId::parse(&format!("sensor-{n:05}")).map_err(|e| e.to_string())?;
                store
                    .create_device(
                        NewDevice {
                            id,
                            serial: format!("{n:032x}"),
                            fingerprint: format!("{n:064x}"),
                            not_before: now,
                            not_after: now + time::Duration::days(30 + (n % 400) as i64),
                            claim_code_hash: "bench".into(),
                        },
                        &actor,
                    )
                    .await
                    .map(drop)
                    .map_err(|e| e.to_string())
            });
        }
        while let Some(r) = batch.join_next().await {
            r.map_err(|e| LoadgenError::Config(format!("register: {e}")))?
                .map_err(|e| LoadgenError::Config(format!("register: {e}")))?;
        }
        next += 8;
    }
    // A third online, some seen recently, some disabled.
    for n in (0..config.devices).step_by(3) {
        let id = DeviceId::parse(&format!("sensor-{n:05}"))
            .map_err(|e| LoadgenError::Config(e.to_string()))?;
        store
            .record_presence(&id, true, now - time::Duration::seconds(n as i64))
            .await
            .map_err(|e| err("presence", e))?;
    }
    // The charted device: one reading a minute for `days`.
    let device =
        DeviceId::parse("sensor-00000").map_err(|e| LoadgenError::Config(e.to_string()))?;
    let metric =
        MetricName::parse("temperature").map_err(|e| LoadgenError::Config(e.to_string()))?;
    let to_ms = now.unix_timestamp() * 1000;
    let from_ms = to_ms - i64::from(config.days) * 86_400_000;
    let total = (to_ms - from_ms) / 60_000;
    let mut seq = 0u64;
    while (seq as i64) < total {
        let readings: Vec<NewReading> = (0..1000)
            .take_while(|i| (seq as i64 + i) < total)
            .map(|i| {
                let s = seq + i as u64;
                let ts = from_ms + s as i64 * 60_000;
                NewReading {
                    seq: s,
                    ts_ms: ts,
                    received_ms: ts,
                    flags: 0,
                    digest: s as i64,
                    metrics: vec![(
                        metric.clone(),
                        20.0 + ((s % 1440) as f64 / 240.0).sin() * 3.0,
                    )],
                }
            })
            .collect();
        seq += readings.len() as u64;
        store
            .commit_ingest(
                vec![IngestItem::Readings {
                    device: device.clone(),
                    readings,
                    payload: Bytes::new(),
                }]
                .into(),
                false,
            )
            .await
            .map_err(|e| err("ingest", e))?;
    }
    let setup_secs = setup.elapsed().as_secs_f64();

    let page = |f: fn(&mut DeviceQuery)| {
        let mut q = DeviceQuery {
            limit: 50,
            ..DeviceQuery::default()
        };
        f(&mut q);
        q
    };
    let lists: [(&str, DeviceQuery); 5] = [
        ("device list: first page by id", page(|_| {})),
        (
            "device list: online, by last seen (desc)",
            page(|q| {
                q.online = Some(true);
                q.sort = DeviceSort::LastSeen;
                q.descending = true;
            }),
        ),
        (
            "device list: state + cert expiring, by expiry",
            page(|q| {
                q.state = Some(DeviceState::Unbound);
                q.cert_expires_before =
                    Some(time::OffsetDateTime::now_utc() + time::Duration::days(60));
                q.sort = DeviceSort::CertExpiry;
            }),
        ),
        (
            "device list: substring search",
            page(|q| q.id = Some(IdMatch::Contains("77".into()))),
        ),
        (
            "device list: page 100 by created (desc)",
            page(|q| {
                q.sort = DeviceSort::Created;
                q.descending = true;
                q.offset = 4950;
            }),
        ),
    ];
    let mut rows = Vec::new();
    for (what, q) in lists {
        let mut h = latency_histogram()?;
        let mut size = 0;
        for _ in 0..config.runs {
            let t = Instant::now();
            let p = store.query_devices(&q).await.map_err(|e| err("list", e))?;
            record(&mut h, t.elapsed());
            size = p.total;
        }
        rows.push(ConsoleRow {
            what: what.into(),
            latency: Percentiles::of(&h),
            size,
        });
    }
    let mut h = latency_histogram()?;
    let mut size = 0;
    for _ in 0..config.runs {
        let t = Instant::now();
        let series = store
            .query_series(&SeriesQuery {
                device: device.clone(),
                metric: metric.clone(),
                from_ms,
                to_ms,
                buckets: 720,
            })
            .await
            .map_err(|e| err("series", e))?;
        let svg = rampart_web::chart::render(&rampart_web::chart::Chart {
            id: "bench",
            title: "sensor-00000 temperature",
            unit: "°C",
            from_ms,
            to_ms,
            bucket_ms: series.bucket_ms,
            buckets: &series.buckets,
            width: 800,
            height: 260,
        });
        record(&mut h, t.elapsed());
        size = series.buckets.len() as u64;
        std::hint::black_box(svg);
    }
    rows.push(ConsoleRow {
        what: format!(
            "{}-day chart: query_series (720 buckets) + SVG",
            config.days
        ),
        latency: Percentiles::of(&h),
        size,
    });
    Ok(ConsoleReport {
        devices: config.devices,
        readings: seq,
        setup_secs,
        rows,
    })
}

fn record(h: &mut hdrhistogram::Histogram<u64>, d: Duration) {
    let _ = h.record((d.as_micros() as u64).max(1));
}
