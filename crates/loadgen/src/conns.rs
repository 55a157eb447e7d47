//! Idle connections: open C mTLS connections (CONNECT done, long
//! keepalive), hold them, and report how long connecting took and, when
//! the broker's PID is given, its resident memory and CPU use while idle.

use std::time::Duration;

use tokio::time::Instant;

use crate::client::{SessionKind, Target, connect_many};
use crate::procfs;
use crate::{CertDir, LoadgenError, MqttVersion, Percentiles};

/// Idle-connection parameters.
#[derive(Debug, Clone)]
pub struct ConnsConfig {
    /// Broker and protocol (use a long keepalive).
    pub target: Target,
    /// Identities; one per connection.
    pub certs: CertDir,
    /// Connections to open.
    pub connections: usize,
    /// Identity to leave out (the subscriber).
    pub exclude: String,
    /// Simultaneous handshakes.
    pub concurrency: usize,
    /// How long to hold the connections once all are open.
    pub hold: Duration,
    /// The broker's PID, for RSS and CPU figures.
    pub broker_pid: Option<u32>,
}

/// Idle-connection results.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ConnsReport {
    /// Always "conns".
    pub scenario: String,
    /// Protocol version.
    pub mqtt_version: MqttVersion,
    /// Connections asked for.
    pub requested: usize,
    /// Connections that got a successful CONNACK.
    pub connected: usize,
    /// Connections that failed.
    pub failed: usize,
    /// Wall time to open them all, seconds.
    pub connect_wall_s: f64,
    /// Per connection: TCP connect to CONNACK (microseconds).
    pub connect_time: Percentiles,
    /// Broker RSS before connecting, KiB.
    pub rss_before_kib: Option<u64>,
    /// Broker RSS with all connections open (after a 1 s settle), KiB.
    pub rss_connected_kib: Option<u64>,
    /// `(rss_connected - rss_before) / connected`, bytes.
    pub rss_per_connection_bytes: Option<f64>,
    /// Broker CPU use while the connections were idle, percent of one core.
    pub idle_cpu_percent: Option<f64>,
    /// Seconds the connections were held idle.
    pub hold_s: f64,
    /// First few connection errors.
    pub errors: Vec<String>,
}

/// Open, hold and close the connections.
pub async fn run(cfg: ConnsConfig) -> Result<ConnsReport, LoadgenError> {
    let ids = cfg.certs.device_ids(cfg.connections, &cfg.exclude)?;
    let rss_before = cfg.broker_pid.and_then(procfs::rss_kib);
    let started = Instant::now();
    let results = connect_many(
        &cfg.target,
        &cfg.certs,
        &ids,
        cfg.concurrency,
        SessionKind::Clean,
    )
    .await;
    let connect_wall_s = started.elapsed().as_secs_f64();
    let mut hist = crate::latency_histogram()?;
    let mut clients = Vec::with_capacity(results.len());
    let mut errors = Vec::new();
    let mut failed = 0;
    for r in results {
        match r {
            Ok((client, took)) => {
                hist.saturating_record(crate::micros(took));
                clients.push(client);
            }
            Err(e) => {
                failed += 1;
                if errors.len() < 5 {
                    errors.push(e.to_string());
                }
            }
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_connected = cfg.broker_pid.and_then(procfs::rss_kib);
    let cpu_before = cfg.broker_pid.and_then(procfs::cpu_seconds);
    let hold_started = Instant::now();
    tokio::time::sleep(cfg.hold).await;
    let held = hold_started.elapsed().as_secs_f64();
    let cpu_after = cfg.broker_pid.and_then(procfs::cpu_seconds);
    let connected = clients.len();
    drop(clients);
    let rss_per_connection_bytes = match (rss_before, rss_connected) {
        (Some(b), Some(a)) if connected > 0 => {
            Some((a as f64 - b as f64) * 1024.0 / connected as f64)
        }
        _ => None,
    };
    let idle_cpu_percent = match (cpu_before, cpu_after) {
        (Some(b), Some(a)) if held > 0.0 => Some((a - b) / held * 100.0),
        _ => None,
    };
    Ok(ConnsReport {
        scenario: "conns".into(),
        mqtt_version: cfg.target.version,
        requested: cfg.connections,
        connected,
        failed,
        connect_wall_s,
        connect_time: Percentiles::of(&hist),
        rss_before_kib: rss_before,
        rss_connected_kib: rss_connected,
        rss_per_connection_bytes,
        idle_cpu_percent,
        hold_s: held,
        errors,
    })
}
