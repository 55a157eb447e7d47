//! Revoke-to-disconnect (Rampart only): N devices connect; one after the
//! other, each is revoked with the real CLI (`rampart device revoke ID`
//! against the running server's data dir), and the time until the broker
//! closes that device's connection is measured twice: from just before the
//! CLI is spawned, and from the moment it has exited. The CLI commits the
//! revocation to the change feed, which `rampart serve` polls every
//! `serve.change_poll_interval`; the server then closes the session (MQTT 5
//! DISCONNECT 0x98, administrative action).
//!
//! The CLI commits before it re-signs the CRL, so the broker may close the
//! connection before the CLI has exited: the "from exit" figures are signed
//! and can be negative.
//!
//! Revoking back to back would phase-lock the measurement to the server's
//! poll: each disconnect happens just after a poll, so the next CLI would
//! always start at the same point of the cycle and every sample would see
//! the same wait. Instead revocation `i` of `n` starts `spread × i / n`
//! after the previous disconnect; with `spread` set to the poll interval
//! the start phases cover the cycle evenly, as independent revocations
//! would.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::client::{Client, ClientError, SessionKind, Target, connect_many};
use crate::{CertDir, LoadgenError, MqttVersion};

/// Revoke-to-disconnect parameters.
#[derive(Debug, Clone)]
pub struct RevokeConfig {
    /// Broker and protocol.
    pub target: Target,
    /// Identities that may be revoked: the first `devices`, sorted. They
    /// are unusable afterwards.
    pub certs: CertDir,
    /// Devices to connect and revoke.
    pub devices: usize,
    /// The `rampart` binary.
    pub rampart: PathBuf,
    /// The running server's data dir.
    pub data_dir: PathBuf,
    /// The running server's config file.
    pub config: Option<PathBuf>,
    /// Longest wait for one device: CLI run plus disconnect.
    pub timeout: Duration,
    /// Start phases are spread over this (the server's poll interval).
    pub spread: Duration,
}

/// One device's measurement.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct RevokeSample {
    /// The device.
    pub device: String,
    /// CLI spawn to CLI exit, microseconds.
    pub cli_us: i64,
    /// CLI spawn to connection closed, microseconds.
    pub from_spawn_us: Option<i64>,
    /// CLI exit to connection closed, microseconds (negative: closed first).
    pub from_exit_us: Option<i64>,
    /// How the connection ended.
    pub closed_by: String,
}

/// Percentiles of a few signed samples (nearest rank), microseconds.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SignedPercentiles {
    /// Number of samples.
    pub count: usize,
    /// Smallest sample.
    pub min_us: i64,
    /// Median.
    pub p50_us: i64,
    /// 99th percentile (with 20 samples: the largest).
    pub p99_us: i64,
    /// Largest sample.
    pub max_us: i64,
}

impl SignedPercentiles {
    /// Nearest-rank percentiles of `samples` (all zero when empty).
    pub fn of(samples: &[i64]) -> Self {
        let mut v = samples.to_vec();
        v.sort_unstable();
        let rank = |q: f64| -> i64 {
            if v.is_empty() {
                return 0;
            }
            let r = (q * v.len() as f64).ceil() as usize;
            v.get(r.clamp(1, v.len()) - 1).copied().unwrap_or(0)
        };
        Self {
            count: v.len(),
            min_us: v.first().copied().unwrap_or(0),
            p50_us: rank(0.50),
            p99_us: rank(0.99),
            max_us: v.last().copied().unwrap_or(0),
        }
    }
}

/// Revoke-to-disconnect results.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct RevokeReport {
    /// Always "revoke".
    pub scenario: String,
    /// Protocol version.
    pub mqtt_version: MqttVersion,
    /// Devices revoked.
    pub devices: usize,
    /// Start phases spread over this many milliseconds.
    pub spread_ms: f64,
    /// Connections the broker closed within the timeout.
    pub disconnected: usize,
    /// Connections still open at the timeout.
    pub not_disconnected: usize,
    /// How the connections ended: "DISCONNECT 0x98", "end of stream", ...
    pub closed_by: BTreeMap<String, usize>,
    /// CLI spawn to connection closed.
    pub from_spawn: SignedPercentiles,
    /// CLI exit to connection closed.
    pub from_exit: SignedPercentiles,
    /// CLI run time.
    pub cli: SignedPercentiles,
    /// Every device's figures, in revocation order.
    pub samples: Vec<RevokeSample>,
}

fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

/// Signed `b - a` in microseconds.
fn signed_micros(a: Instant, b: Instant) -> i64 {
    if b >= a {
        micros(b - a)
    } else {
        -micros(a - b)
    }
}

/// How a connection ended, from the error that ended its reads.
fn close_kind(e: &ClientError) -> String {
    match e {
        ClientError::Disconnected { reason, .. } => {
            format!("DISCONNECT {:#04x}", *reason as u8)
        }
        ClientError::Closed { .. } => "end of stream".into(),
        ClientError::Io { source, .. } => format!("I/O error ({})", source.kind()),
        other => format!("other: {other}"),
    }
}

/// Read until the broker ends the connection; report when and how.
async fn watch(mut client: Client, closed: oneshot::Sender<(Instant, String)>) {
    let kind = loop {
        if let Err(e) = client.read_more().await {
            break close_kind(&e);
        }
        // Nothing is expected before the DISCONNECT; anything else is skipped.
        loop {
            match client.next_buffered() {
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(e) => {
                    let _ = closed.send((Instant::now(), close_kind(&e)));
                    return;
                }
            }
        }
    };
    let _ = closed.send((Instant::now(), kind));
}

async fn revoke_with_cli(cfg: &RevokeConfig, id: &str) -> Result<(), LoadgenError> {
    let mut cmd = tokio::process::Command::new(&cfg.rampart);
    cmd.arg("--data-dir").arg(&cfg.data_dir);
    if let Some(config) = &cfg.config {
        cmd.arg("--config").arg(config);
    }
    cmd.args(["device", "revoke", id])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let out = tokio::time::timeout(cfg.timeout, cmd.output())
        .await
        .map_err(|_| {
            LoadgenError::Timeout(format!(
                "rampart device revoke {id} did not finish within {:?}",
                cfg.timeout
            ))
        })?
        .map_err(|e| LoadgenError::io(format!("running {}", cfg.rampart.display()), e))?;
    if !out.status.success() {
        return Err(LoadgenError::Config(format!(
            "rampart device revoke {id} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// Connect the devices, then revoke them one at a time.
pub async fn run(cfg: RevokeConfig) -> Result<RevokeReport, LoadgenError> {
    if cfg.devices == 0 {
        return Err(LoadgenError::Config(
            "revoke needs at least one device".into(),
        ));
    }
    let ids = cfg.certs.device_ids(cfg.devices, "")?;
    let mut watchers = Vec::with_capacity(ids.len());
    for (id, connected) in ids
        .iter()
        .zip(connect_many(&cfg.target, &cfg.certs, &ids, 8, SessionKind::Clean).await)
    {
        let (client, _) = connected?;
        let (tx, rx) = oneshot::channel();
        tokio::spawn(watch(client, tx));
        watchers.push((id.clone(), rx));
    }
    let n = watchers.len();
    let mut samples = Vec::with_capacity(n);
    let mut closed_by: BTreeMap<String, usize> = BTreeMap::new();
    let mut previous_close: Option<Instant> = None;
    for (i, (id, mut closed)) in watchers.into_iter().enumerate() {
        // A connection that ends before its revocation is not measurable.
        if let Ok((_, kind)) = closed.try_recv() {
            return Err(LoadgenError::Protocol(format!(
                "'{id}' was disconnected before it was revoked ({kind})"
            )));
        }
        // The start schedule (see the module comment), not a settling delay.
        if let Some(at) = previous_close {
            tokio::time::sleep_until(at + cfg.spread.mul_f64(i as f64 / n as f64)).await;
        }
        let spawned = Instant::now();
        revoke_with_cli(&cfg, &id).await?;
        let exited = Instant::now();
        let (from_spawn_us, from_exit_us, kind) =
            match tokio::time::timeout_at(spawned + cfg.timeout, closed).await {
                Ok(Ok((at, kind))) => {
                    previous_close = Some(at);
                    (
                        Some(signed_micros(spawned, at)),
                        Some(signed_micros(exited, at)),
                        kind,
                    )
                }
                Ok(Err(_)) => (None, None, "watcher ended without a report".into()),
                Err(_) => (None, None, "still connected at the timeout".into()),
            };
        *closed_by.entry(kind.clone()).or_default() += 1;
        samples.push(RevokeSample {
            device: id,
            cli_us: signed_micros(spawned, exited),
            from_spawn_us,
            from_exit_us,
            closed_by: kind,
        });
    }
    let pick = |f: fn(&RevokeSample) -> Option<i64>| -> Vec<i64> {
        samples.iter().filter_map(f).collect()
    };
    let from_spawn = pick(|s| s.from_spawn_us);
    let from_exit = pick(|s| s.from_exit_us);
    let cli = pick(|s| Some(s.cli_us));
    Ok(RevokeReport {
        scenario: "revoke".into(),
        mqtt_version: cfg.target.version,
        devices: samples.len(),
        spread_ms: cfg.spread.as_secs_f64() * 1000.0,
        disconnected: from_spawn.len(),
        not_disconnected: samples.len() - from_spawn.len(),
        closed_by,
        from_spawn: SignedPercentiles::of(&from_spawn),
        from_exit: SignedPercentiles::of(&from_exit),
        cli: SignedPercentiles::of(&cli),
        samples,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles_of_signed_samples() {
        let samples: Vec<i64> = (1..=20).map(|i| i * 1000 - 5000).collect();
        let p = SignedPercentiles::of(&samples);
        assert_eq!(p.count, 20);
        assert_eq!(p.min_us, -4000);
        // Rank ceil(0.5 × 20) = 10: the 10th smallest.
        assert_eq!(p.p50_us, 5000);
        // Rank ceil(0.99 × 20) = 20: the largest.
        assert_eq!(p.p99_us, 15_000);
        assert_eq!(p.max_us, 15_000);
        assert_eq!(SignedPercentiles::of(&[]), SignedPercentiles::default());
        assert_eq!(SignedPercentiles::of(&[7]).p50_us, 7);
    }

    #[test]
    fn signed_differences() {
        let a = Instant::now();
        let b = a + Duration::from_millis(3);
        assert_eq!(signed_micros(a, b), 3000);
        assert_eq!(signed_micros(b, a), -3000);
    }

    #[test]
    fn close_kinds_name_the_reason_code() {
        let e = ClientError::Disconnected {
            id: "d".into(),
            reason: mqtt5_protocol::ReasonCode::AdministrativeAction,
        };
        assert_eq!(close_kind(&e), "DISCONNECT 0x98");
        assert_eq!(
            close_kind(&ClientError::Closed { id: "d".into() }),
            "end of stream"
        );
    }
}
