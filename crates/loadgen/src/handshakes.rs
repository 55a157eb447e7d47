//! Handshakes: K connectors each loop over TCP connect, a full TLS
//! handshake (no session resumption), CONNECT/CONNACK, DISCONNECT and close,
//! for a fixed duration. Reports completed connections per second.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::client::{Client, SessionKind, Target};
use crate::{CertDir, LoadgenError, MqttVersion, Percentiles};

/// Handshake parameters.
#[derive(Debug, Clone)]
pub struct HandshakesConfig {
    /// Broker and protocol.
    pub target: Target,
    /// Identities; connector k uses identity k.
    pub certs: CertDir,
    /// Concurrent connectors.
    pub concurrency: usize,
    /// Identity to leave out (the subscriber).
    pub exclude: String,
    /// How long to run.
    pub duration: Duration,
}

/// Handshake results.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct HandshakesReport {
    /// Always "handshakes".
    pub scenario: String,
    /// Protocol version.
    pub mqtt_version: MqttVersion,
    /// Concurrent connectors.
    pub concurrency: usize,
    /// Run time, seconds.
    pub duration_s: f64,
    /// Connections that reached a successful CONNACK.
    pub completed: u64,
    /// Connections that failed.
    pub failed: u64,
    /// `completed / duration_s`.
    pub per_s: f64,
    /// TCP connect to CONNACK, microseconds.
    pub connect_time: Percentiles,
    /// First few errors.
    pub errors: Vec<String>,
}

/// Run the handshake loop.
pub async fn run(cfg: HandshakesConfig) -> Result<HandshakesReport, LoadgenError> {
    let concurrency = cfg.concurrency.max(1);
    let ids = cfg.certs.device_ids(concurrency, &cfg.exclude)?;
    let started = Instant::now();
    let end = started + cfg.duration;
    let target = Arc::new(cfg.target.clone());
    let mut tasks = tokio::task::JoinSet::new();
    for id in ids {
        let config = cfg.certs.client_config(&cfg.certs.load(&id)?, false)?;
        let target = Arc::clone(&target);
        tasks.spawn(async move {
            let mut hist = crate::latency_histogram()?;
            let (mut ok, mut failed, mut errors) = (0u64, 0u64, Vec::new());
            while Instant::now() < end {
                let t = Instant::now();
                match Client::connect(&target, Arc::clone(&config), &id, SessionKind::Clean).await {
                    Ok(client) => {
                        let took = u64::try_from(t.elapsed().as_micros()).unwrap_or(u64::MAX);
                        hist.saturating_record(took.max(1));
                        ok += 1;
                        let _ = client.disconnect().await;
                    }
                    Err(e) => {
                        failed += 1;
                        if errors.len() < 2 {
                            errors.push(e.to_string());
                        }
                        // Do not spin on a refusing broker.
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
            Ok::<_, LoadgenError>((hist, ok, failed, errors))
        });
    }
    let mut hist = crate::latency_histogram()?;
    let (mut completed, mut failed, mut errors) = (0, 0, Vec::new());
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(Ok((h, ok, f, errs))) => {
                // Both histograms have the same bounds, so adding cannot fail.
                let _ = hist.add(&h);
                completed += ok;
                failed += f;
                errors.extend(errs.into_iter().take(5usize.saturating_sub(errors.len())));
            }
            Ok(Err(e)) => errors.push(e.to_string()),
            Err(e) => errors.push(format!("connector task: {e}")),
        }
    }
    let duration_s = started.elapsed().as_secs_f64();
    Ok(HandshakesReport {
        scenario: "handshakes".into(),
        mqtt_version: cfg.target.version,
        concurrency,
        duration_s,
        completed,
        failed,
        per_s: completed as f64 / duration_s,
        connect_time: Percentiles::of(&hist),
        errors,
    })
}
