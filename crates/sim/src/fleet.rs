//! Running a fleet: open the state dir, start one task per device (their
//! connections paced across the fleet), stop reading when the duration is
//! over or on shutdown, let every device drain, and sum up.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rampart_mqtt_client::{MqttVersion, Target};
use rampart_proto::DeviceId;
use rustls_pki_types::ServerName;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::device::Device;
use crate::enroll::{EnrollSetupError, Enroller};
use crate::faults::{self, FaultKind};
use crate::firmware::FirmwareBuild;
use crate::options::FleetOptions;
use crate::statedir::{StateDir, StateError};
use crate::stats::{Counts, DeviceReport, DeviceStats};
use crate::tls::{ServerTrust, TlsError};

/// Why a fleet could not start.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// An option is unusable.
    #[error("{0}")]
    Options(String),
    /// The CA bundle or TLS setup failed.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The state dir is unusable.
    #[error("state dir: {0}")]
    State(#[from] StateError),
    /// The enrollment client could not be set up.
    #[error(transparent)]
    Enroll(#[from] EnrollSetupError),
    /// Devices need enrolling and no token was given.
    #[error(
        "{count} of the devices are not enrolled yet and no enrollment token was given; \
         create one with `rampart enroll-token create --uses {count}` and pass it with --token"
    )]
    NoToken {
        /// Devices without a certificate.
        count: usize,
    },
    /// A `--ota-trust` key file is unusable.
    #[error("--ota-trust {path}: {reason}")]
    TrustKey {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// The MQTT server address does not resolve.
    #[error("cannot resolve --server {addr}: {reason}")]
    Resolve {
        /// The address given.
        addr: String,
        /// Why.
        reason: String,
    },
}

/// Spreads new connections (or enrollments) over time: at most `rate` per
/// second across the fleet, so that thousands of devices do not hit the
/// server (and its per-address limits) in the same instant.
#[derive(Debug)]
pub(crate) struct Pacer {
    gap: Duration,
    next: Mutex<Instant>,
}

impl Pacer {
    fn new(rate: f64) -> Self {
        Self {
            gap: Duration::from_secs_f64(1.0 / rate),
            next: Mutex::new(Instant::now()),
        }
    }

    /// Reserves the next free slot; the caller connects at that instant.
    pub(crate) fn reserve(&self) -> Instant {
        let now = Instant::now();
        let mut next = self
            .next
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let slot = (*next).max(now);
        *next = slot + self.gap;
        slot
    }
}

/// What every device of the fleet shares.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) options: FleetOptions,
    pub(crate) trust: ServerTrust,
    pub(crate) enroller: Option<Enroller>,
    pub(crate) target: Target,
    pub(crate) pacer: Pacer,
    /// Paces enrollments, as `pacer` paces connections.
    pub(crate) enroll_pacer: Pacer,
    /// Cancelled when reading stops (duration over or shutdown).
    pub(crate) stop: CancellationToken,
    /// Start of the fleet's monotonic millisecond clock.
    pub(crate) epoch: Instant,
    /// What every device's firmware is built with.
    pub(crate) firmware: FirmwareBuild,
    /// The devices with an update fault.
    pub(crate) faults: BTreeMap<String, FaultKind>,
}

/// The result of a run.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    /// The fleet's id prefix.
    pub id_prefix: String,
    /// The state dir.
    pub state_dir: String,
    /// How long the run took, ms.
    pub elapsed_ms: u64,
    /// Whether every ring was empty at the end (everything delivered).
    pub drained: bool,
    /// Totals over the fleet.
    pub fleet: Counts,
    /// Each device.
    pub devices: Vec<DeviceReport>,
}

/// A live view of a fleet's counters (for a progress display).
#[derive(Debug, Clone)]
pub struct FleetMonitor {
    devices: Arc<Vec<(DeviceId, Arc<DeviceStats>)>>,
    started: Instant,
}

impl FleetMonitor {
    /// Live totals over the fleet.
    pub fn counts(&self) -> Counts {
        let mut total = Counts::default();
        for (_, stats) in self.devices.iter() {
            total += stats.counts();
        }
        total
    }

    /// Time since the fleet started.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    fn reports(&self) -> Vec<DeviceReport> {
        self.devices
            .iter()
            .map(|(id, stats)| stats.report(id.as_str()))
            .collect()
    }
}

/// A running fleet.
#[derive(Debug)]
pub struct Fleet {
    shared: Arc<Shared>,
    state: StateDir,
    monitor: FleetMonitor,
    tasks: JoinSet<()>,
}

impl Fleet {
    /// Opens the state dir and starts every device. Reading stops when
    /// `options.duration` is over or `shutdown` is cancelled.
    pub async fn start(
        options: FleetOptions,
        shutdown: CancellationToken,
    ) -> Result<Self, SimError> {
        options.validate().map_err(SimError::Options)?;
        let trust = ServerTrust::from_file(&options.ca_file)?;
        let state = {
            let root = options.state_dir.clone();
            let prefix = options.id_prefix.clone();
            tokio::task::spawn_blocking(move || StateDir::open(&root, prefix.as_deref()))
                .await
                .map_err(|e| SimError::Options(format!("state dir task: {e}")))??
        };
        let target = resolve(&options).await?;
        let mut trusted_keys = Vec::new();
        for path in &options.ota_trust {
            let key = rampart_ota::PublicKey::read(path).map_err(|e| SimError::TrustKey {
                path: path.display().to_string(),
                reason: e.to_string(),
            })?;
            trusted_keys.push(rampart_core::ota::TrustedKey::new(*key.bytes()));
        }
        let firmware = FirmwareBuild {
            device_type: options.device_type.clone(),
            factory_version: options.firmware_version.clone(),
            trusted_keys: trusted_keys.into(),
            max_boot_attempts: options.ota_max_boot_attempts,
            confirm_timeout_ms: u64::try_from(options.ota_confirm_timeout.as_millis())
                .unwrap_or(u64::MAX),
            slot_size: options.ota_slot_size,
        };
        let ids = (1..=options.devices)
            .map(|n| state.device_id(n).map(|id| id.as_str().to_owned()))
            .collect::<Result<Vec<String>, StateError>>()?;
        let id_refs: Vec<&str> = ids.iter().map(String::as_str).collect();
        let faults = faults::assign(&id_refs, &options.ota_faults).map_err(SimError::Options)?;
        for (id, kind) in &faults {
            info!(device_id = %id, kind = %kind, "update fault");
        }
        let enroller = match &options.token {
            Some(token) => Some(Enroller::new(
                &trust,
                &options.http,
                token,
                options.io_timeout,
            )?),
            None => None,
        };
        if options.token.is_none() {
            let (state, n) = (state.clone(), options.devices);
            let count = tokio::task::spawn_blocking(move || -> Result<usize, StateError> {
                let mut count = 0;
                for i in 1..=n {
                    if state.device(&state.device_id(i)?)?.identity()?.is_none() {
                        count += 1;
                    }
                }
                Ok(count)
            })
            .await
            .map_err(|e| SimError::Options(format!("state dir task: {e}")))??;
            if count > 0 {
                return Err(SimError::NoToken { count });
            }
        }
        if options.raise_fd_limit {
            raise_fd_limit(options.devices);
        }
        let stop = shutdown.child_token();
        if let Some(duration) = options.duration {
            let stop = stop.clone();
            tokio::spawn(async move {
                tokio::select! {
                    _ = tokio::time::sleep(duration) => stop.cancel(),
                    _ = stop.cancelled() => {}
                }
            });
        }
        let shared = Arc::new(Shared {
            pacer: Pacer::new(options.connect_rate),
            enroll_pacer: Pacer::new(options.enroll_rate),
            options,
            trust,
            enroller,
            target,
            stop,
            epoch: Instant::now(),
            firmware,
            faults,
        });
        let mut devices = Vec::with_capacity(shared.options.devices);
        let mut tasks = JoinSet::new();
        info!(
            devices = shared.options.devices,
            id_prefix = state.prefix(),
            state_dir = %state.root().display(),
            "fleet starting"
        );
        for n in 1..=shared.options.devices {
            let id = state.device_id(n)?;
            let stats = Arc::new(DeviceStats::default());
            devices.push((id.clone(), Arc::clone(&stats)));
            let (shared, state) = (Arc::clone(&shared), state.clone());
            tasks.spawn(async move {
                let opened = tokio::task::spawn_blocking({
                    let (id, stats) = (id.clone(), Arc::clone(&stats));
                    move || {
                        let dir = state.device(&id)?;
                        Device::open(shared, id, dir, stats)
                    }
                })
                .await;
                match opened {
                    Ok(Ok(device)) => device.run().await,
                    Ok(Err(e)) => {
                        error!(device_id = %id, reason = %e, "device cannot start");
                        stats.set_error(e.to_string());
                    }
                    Err(e) => error!(device_id = %id, reason = %e, "device start task failed"),
                }
            });
        }
        Ok(Self {
            shared,
            state,
            monitor: FleetMonitor {
                devices: Arc::new(devices),
                started: Instant::now(),
            },
            tasks,
        })
    }

    /// The fleet's id prefix.
    pub fn id_prefix(&self) -> &str {
        self.state.prefix()
    }

    /// The devices with an update fault (`--ota-fault`), by id.
    pub fn faults(&self) -> &BTreeMap<String, FaultKind> {
        &self.shared.faults
    }

    /// A live view of the counters.
    pub fn monitor(&self) -> FleetMonitor {
        self.monitor.clone()
    }

    /// Waits until reading stops and every device has drained (bounded by
    /// the drain timeout), and returns the summary.
    pub async fn wait(mut self) -> Summary {
        let stop = self.shared.stop.clone();
        tokio::select! {
            _ = stop.cancelled() => {}
            _ = async { while self.tasks.join_next().await.is_some() {} } => {}
        }
        let options = &self.shared.options;
        // Devices stop reading, flush within the drain timeout, then
        // disconnect (bounded by one more network time limit).
        let deadline = Instant::now() + options.drain_timeout + options.io_timeout * 2;
        while !self.tasks.is_empty() {
            match tokio::time::timeout_at(deadline, self.tasks.join_next()).await {
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(_) => {
                    warn!(
                        devices = self.tasks.len(),
                        "devices did not finish draining in time; stopping them"
                    );
                    self.tasks.abort_all();
                    while self.tasks.join_next().await.is_some() {}
                }
            }
        }
        let fleet = self.monitor.counts();
        Summary {
            id_prefix: self.state.prefix().to_owned(),
            state_dir: self.state.root().display().to_string(),
            elapsed_ms: u64::try_from(self.monitor.elapsed().as_millis()).unwrap_or(u64::MAX),
            drained: fleet.buffered == 0,
            fleet,
            devices: self.monitor.reports(),
        }
    }
}

/// Runs a fleet until `options.duration` is over or `shutdown` is
/// cancelled, then drains and returns the summary (`serve --demo` runs a
/// fleet in-process this way).
pub async fn run(options: FleetOptions, shutdown: CancellationToken) -> Result<Summary, SimError> {
    Ok(Fleet::start(options, shutdown).await?.wait().await)
}

/// Resolves `--server` and names the server for certificate checks.
async fn resolve(options: &FleetOptions) -> Result<Target, SimError> {
    let err = |reason: String| SimError::Resolve {
        addr: options.mqtt.clone(),
        reason,
    };
    let host = options
        .mqtt
        .rsplit_once(':')
        .map(|(h, _)| h.trim_start_matches('[').trim_end_matches(']'))
        .ok_or_else(|| err("expected HOST:PORT".to_owned()))?;
    let server_name =
        ServerName::try_from(host.to_owned()).map_err(|e| err(format!("bad host name: {e}")))?;
    let addr = tokio::net::lookup_host(&options.mqtt)
        .await
        .map_err(|e| err(e.to_string()))?
        .next()
        .ok_or_else(|| err("no address".to_owned()))?;
    Ok(Target {
        addr,
        server_name,
        version: MqttVersion::V5,
        keepalive: options.keepalive,
    })
}

/// Raises the open-files limit: each device holds one socket (two while
/// enrolling).
fn raise_fd_limit(devices: usize) {
    let want = (devices as u64).saturating_mul(2).saturating_add(256);
    match rlimit::increase_nofile_limit(want) {
        Ok(got) if got < want => warn!(
            limit = got,
            wanted = want,
            "the open-files limit is below what the fleet needs; raise it (ulimit -n) or run fewer devices"
        ),
        Ok(_) => {}
        Err(e) => warn!(reason = %e, "cannot raise the open-files limit"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_pacer_spaces_connections_at_the_rate() {
        let pacer = Pacer::new(10.0);
        let t0 = Instant::now();
        let slots: Vec<Duration> = (0..5).map(|_| pacer.reserve() - t0).collect();
        assert_eq!(
            slots,
            [0, 100, 200, 300, 400].map(Duration::from_millis).to_vec()
        );
        // Idle time is not banked: after a pause the next slot is now.
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(pacer.reserve(), Instant::now());
    }
}
