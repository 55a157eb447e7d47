//! `rampart serve --demo`: a fleet of simulated DHT11-style sensors
//! (`rampart-sim`) running inside the server, so that a newcomer sees
//! devices enroll and data flow within the first minute.
//!
//! The fleet goes through the same doors as real devices: an enrollment
//! token created through the provisioning path (scoped to the `demo-` ids,
//! limited to the devices still without a certificate, short-lived,
//! audited as the demo fleet, never printed), enrollment over HTTPS, and
//! mutual TLS to the broker, verifying the server against the data dir's
//! CA chain. Its state dir (`<data dir>/demo`) keeps identities, boot
//! counters and unsent readings, so a restart resumes the same devices
//! without enrolling again.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use rampart_core::batch::BatchPolicy;
use rampart_provisioning::enrollment::{self, TokenSpec};
use rampart_sim::statedir::StateDir;
use rampart_sim::{Fleet, FleetMonitor, FleetOptions, Summary};
use rampart_store::Actor;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::platform::Platform;

/// The demo devices' id prefix (ids `demo-0001` …); the token is scoped to it.
pub const ID_PREFIX: &str = "demo";

/// How long the demo fleet's enrollment token is accepted: long enough for
/// the fleet's first connections, short enough not to linger.
const TOKEN_VALIDITY: Duration = Duration::from_secs(15 * 60);

/// New connections per second: well within the broker's per-address limit
/// (`broker.connection_rate_per_ip`), since every demo device is local.
const CONNECT_RATE: f64 = 10.0;

/// What `serve --demo` is told.
#[derive(Debug, Clone, Copy)]
pub struct DemoOptions {
    /// Number of simulated devices.
    pub devices: usize,
    /// Time between two readings of a device.
    pub reading_interval: Duration,
}

/// The demo fleet running in the server.
#[derive(Debug)]
pub struct DemoFleet {
    task: JoinHandle<Summary>,
    announcer: JoinHandle<()>,
}

impl DemoFleet {
    /// Starts the fleet against this server's bound MQTT and HTTPS
    /// addresses. Reading stops when `shutdown` is cancelled; then
    /// [`DemoFleet::stopped`] waits for the fleet to drain.
    pub async fn start(
        platform: &Platform,
        options: DemoOptions,
        mqtt: SocketAddr,
        http: SocketAddr,
        shutdown: CancellationToken,
    ) -> Result<Self> {
        let root = platform.dir.root().join("demo");
        let unenrolled = unenrolled_devices(&root, options.devices).await?;
        let token = if unenrolled == 0 {
            None
        } else {
            Some(create_token(platform, unenrolled).await?)
        };
        let ca_file = root.join("server-ca.pem");
        crate::datadir::write_atomic(&ca_file, platform.pki.chain_pem().as_bytes(), 0o644)
            .context("cannot write the CA chain for the demo fleet")?;

        let sans = platform.pki_options()?.server_sans;
        let mut fleet = FleetOptions::new(
            connect_address(mqtt, &sans),
            connect_address(http, &sans),
            ca_file,
            root,
        );
        fleet.devices = options.devices;
        fleet.token = token;
        fleet.id_prefix = Some(ID_PREFIX.to_owned());
        fleet.reading_interval = options.reading_interval;
        // Readings reach the store within seconds, whatever the rate.
        fleet.batch = BatchPolicy {
            max_count: 10,
            max_age_ms: 2_000,
        };
        fleet.connect_rate = CONNECT_RATE;
        // The fleet drains before the broker stops accepting, within serve's
        // own shutdown timeout.
        let drain = platform.config.serve.shutdown_timeout / 2;
        fleet.drain_timeout = drain;
        fleet.io_timeout = drain.clamp(Duration::from_secs(1), Duration::from_secs(5));
        // The server's own open-files limit is raised for its clients.
        fleet.raise_fd_limit = false;

        let fleet = Fleet::start(fleet, shutdown.clone())
            .await
            .context("cannot start the demo fleet")?;
        tracing::info!(
            devices = options.devices,
            id_prefix = fleet.id_prefix(),
            enrolling = unenrolled,
            "demo fleet starting"
        );
        let announcer = tokio::spawn(announce(fleet.monitor(), shutdown));
        Ok(Self {
            task: tokio::spawn(fleet.wait()),
            announcer,
        })
    }

    /// Waits (bounded by `deadline`) until the fleet has stopped reading,
    /// flushed what it holds and disconnected; the shutdown token given to
    /// [`DemoFleet::start`] must have been cancelled.
    pub async fn stopped(self, deadline: Duration) {
        self.announcer.abort();
        match tokio::time::timeout(deadline, self.task).await {
            Ok(Ok(s)) => tracing::info!(
                acknowledged = s.fleet.acknowledged,
                buffered = s.fleet.buffered,
                "demo fleet stopped"
            ),
            Ok(Err(e)) => tracing::warn!(error = %e, "demo fleet task failed"),
            Err(_) => tracing::warn!("the demo fleet did not stop within the shutdown timeout"),
        }
    }
}

/// Devices of the demo state dir without a certificate yet (all of them on
/// the first start).
async fn unenrolled_devices(root: &Path, devices: usize) -> Result<usize> {
    let root = root.to_path_buf();
    tokio::task::spawn_blocking(move || -> Result<usize> {
        let state = StateDir::open(&root, Some(ID_PREFIX))
            .with_context(|| format!("cannot open the demo state dir {}", root.display()))?;
        let mut count = 0;
        for n in 1..=devices {
            if state.device(&state.device_id(n)?)?.identity()?.is_none() {
                count += 1;
            }
        }
        Ok(count)
    })
    .await
    .context("demo state dir task failed")?
}

/// A token for exactly the devices still to enroll, scoped to the demo ids
/// and audited as the demo fleet. It is handed to the fleet in memory only.
async fn create_token(platform: &Platform, uses: usize) -> Result<String> {
    let spec = TokenSpec {
        uses: u32::try_from(uses).context("too many demo devices")?,
        valid_for: TOKEN_VALIDITY,
        id_prefix: Some(format!("{ID_PREFIX}-")),
        owner: None,
    };
    let actor = Actor {
        name: "demo-fleet".to_owned(),
        source: "serve --demo".to_owned(),
    };
    let created = enrollment::create_token(&platform.store, &spec, &actor)
        .await
        .context("cannot create the demo fleet's enrollment token")?;
    Ok(created.secret.as_str().to_owned())
}

/// `HOST:PORT` the fleet connects to for a listener bound to `bound`: the
/// loopback address of the same family when the listener takes every
/// address (`0.0.0.0`, `::`), else the bound address itself. The host is
/// also the name checked against the server certificate, so an unspecified
/// IPv6 listener is reached over IPv4 loopback when the certificate does
/// not name `::1` (Linux's `[::]` sockets accept IPv4 too).
fn connect_address(bound: SocketAddr, server_sans: &[String]) -> String {
    let names = |ip: IpAddr| server_sans.iter().any(|s| s.parse() == Ok(ip));
    let ip = match bound.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => {
            if names(IpAddr::V6(Ipv6Addr::LOCALHOST)) {
                IpAddr::V6(Ipv6Addr::LOCALHOST)
            } else {
                IpAddr::V4(Ipv4Addr::LOCALHOST)
            }
        }
        ip => ip,
    };
    if !names(ip) {
        tracing::warn!(
            addr = %ip,
            "the server certificate does not name the address the demo fleet connects to; \
             add it to pki.server_sans or listen on 0.0.0.0"
        );
    }
    SocketAddr::new(ip, bound.port()).to_string()
}

/// Logs one line once every demo device is connected and readings are
/// being acknowledged (the fleet's own errors are logged as they happen).
async fn announce(monitor: FleetMonitor, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let c = monitor.counts();
        if c.connected == c.devices && c.acknowledged > 0 {
            tracing::info!(
                devices = c.devices,
                acknowledged = c.acknowledged,
                "demo fleet: {} simulated devices streaming; see rampart device list",
                c.devices
            );
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sans() -> Vec<String> {
        ["localhost", "127.0.0.1", "::1"].map(String::from).to_vec()
    }

    #[test]
    fn unspecified_listeners_are_reached_over_loopback() {
        let any4: SocketAddr = "0.0.0.0:8883".parse().expect("addr");
        let any6: SocketAddr = "[::]:8443".parse().expect("addr");
        assert_eq!(connect_address(any4, &sans()), "127.0.0.1:8883");
        assert_eq!(connect_address(any6, &sans()), "[::1]:8443");
        let v4_only = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
        assert_eq!(connect_address(any6, &v4_only), "127.0.0.1:8443");
    }

    #[test]
    fn a_specific_listen_address_is_used_as_bound() {
        let bound: SocketAddr = "127.0.0.1:40001".parse().expect("addr");
        assert_eq!(connect_address(bound, &sans()), "127.0.0.1:40001");
        let lan: SocketAddr = "10.0.0.5:8883".parse().expect("addr");
        assert_eq!(connect_address(lan, &sans()), "10.0.0.5:8883");
    }
}
