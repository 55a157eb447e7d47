//! `rampart-loadgen`: run one benchmark scenario against an MQTT broker
//! over mutual TLS and print its report as JSON on standard output.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use rampart_loadgen::{
    CertDir, MqttVersion, Qos, SessionKind, Target, conns, fanin, fanout, handshakes, latency,
    lossfree, revoke, storebench,
};
use rustls_pki_types::ServerName;

/// MQTT load generator for Rampart's benchmarks.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    #[command(flatten)]
    common: Common,
    #[command(subcommand)]
    scenario: Scenario,
}

/// Options of every scenario.
#[derive(Debug, Args)]
struct Common {
    /// Broker address (IP:PORT).
    #[arg(long, global = true, default_value = "127.0.0.1:8883")]
    addr: SocketAddr,
    /// Directory with ca.crt and <id>.crt/<id>.key pairs.
    #[arg(long, global = true, default_value = "certs")]
    certs: PathBuf,
    /// Name the server certificate must carry.
    #[arg(long, global = true, default_value = "localhost")]
    server_name: String,
    /// MQTT version: 5 or 3.1.1.
    #[arg(long, global = true, default_value = "5")]
    mqtt: MqttVersion,
    /// Subscriber identity (left out of the device identities).
    #[arg(long, global = true, default_value = "reader")]
    subscriber: String,
    /// Keepalive in seconds.
    #[arg(long, global = true, default_value_t = 600)]
    keepalive: u64,
}

/// Which measurement to run.
#[derive(Debug, Subcommand)]
enum Scenario {
    /// N devices publish as fast as a window allows; one subscriber receives.
    Fanin {
        #[arg(long, default_value_t = 50)]
        devices: usize,
        #[arg(long, default_value = "1")]
        qos: Qos,
        /// Unacknowledged QoS 1 messages per device.
        #[arg(long, default_value_t = 16)]
        window: usize,
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        duration: Duration,
        #[arg(long, default_value_t = 100)]
        payload: usize,
        /// Keep the subscriber's session (the broker stores its messages).
        #[arg(long)]
        persistent_subscriber: bool,
    },
    /// Open-loop publishing at a fixed total rate; latency percentiles.
    Latency {
        #[arg(long, default_value_t = 50)]
        devices: usize,
        #[arg(long, default_value = "1")]
        qos: Qos,
        /// Total messages per second.
        #[arg(long)]
        rate: f64,
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        duration: Duration,
        #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
        warmup: Duration,
        #[arg(long, default_value_t = 64)]
        window: usize,
        #[arg(long, default_value_t = 100)]
        payload: usize,
        #[arg(long)]
        persistent_subscriber: bool,
        /// The uplink devices publish on: `telemetry` (Rampart stores
        /// every message before PUBACK) or `cmd` (command results, only
        /// routed: the broker without the pipeline's storage).
        #[arg(long, default_value = "telemetry")]
        uplink: fanin::Uplink,
        /// Broker PID, for its CPU use while measured.
        #[arg(long)]
        broker_pid: Option<u32>,
        /// Write every measured message's times (device, seq, scheduled,
        /// queued and received, ns after the run's start) to FILE as CSV.
        #[arg(long, value_name = "FILE")]
        timeline: Option<std::path::PathBuf>,
    },
    /// Open and hold idle connections.
    Conns {
        #[arg(long, default_value_t = 1000)]
        connections: usize,
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
        #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
        hold: Duration,
        /// Broker PID, for RSS and idle CPU.
        #[arg(long)]
        broker_pid: Option<u32>,
    },
    /// Rampart only, in process: durable ingest through the pipeline API.
    Ingest {
        #[command(flatten)]
        store: StoreArgs,
        #[arg(long, default_value_t = 200)]
        devices: usize,
        /// Points per message: 1, or an even number (readings of two metrics).
        #[arg(long, default_value_t = 50)]
        points: usize,
        /// Messages in flight per device (a burst offered together).
        #[arg(long, default_value_t = 1)]
        window: usize,
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        duration: Duration,
    },
    /// Rampart only, in process: chart query latency on a large store.
    Chart {
        #[command(flatten)]
        store: StoreArgs,
        /// Days of 1-second data for the charted device.
        #[arg(long, default_value_t = 7)]
        days: u32,
        /// Points in the store in all.
        #[arg(long, default_value_t = 10_000_000)]
        total_points: u64,
        #[arg(long, default_value_t = 200)]
        queries: usize,
        #[arg(long, default_value_t = 1000)]
        buckets: u32,
    },
    /// Rampart only, in process: alert evaluation of a fleet at its real
    /// message rate (three rules per device), and flat out.
    Alerts {
        #[arg(long, default_value_t = 10_000)]
        devices: usize,
        /// Length of the paced phase.
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        duration: std::time::Duration,
        /// Messages per device per second.
        #[arg(long, default_value_t = 1.0)]
        rate: f64,
    },
    /// Rampart only, in process: the console's device list on a large
    /// fleet and a long chart (SQLite).
    Console {
        /// Store directory (SQLite; created, must be empty).
        #[arg(long)]
        store_dir: PathBuf,
        #[arg(long, default_value_t = 10_000)]
        devices: usize,
        /// Days of one-minute data for the charted device.
        #[arg(long, default_value_t = 30)]
        days: u32,
        /// Timed runs of each measurement.
        #[arg(long, default_value_t = 200)]
        runs: usize,
    },
    /// New connections per second (full handshakes).
    Handshakes {
        #[arg(long, default_value_t = 8)]
        concurrency: usize,
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        duration: Duration,
    },
    /// One device publishes; N subscribers (own identities) receive its topic.
    /// The subscribers connect once; one measured phase per QoS given.
    Fanout {
        /// Directory with ca.crt and the subscribers' <id>.crt/<id>.key
        /// (identities allowed to subscribe to a device's telemetry).
        #[arg(long)]
        subscriber_certs: PathBuf,
        #[arg(long, default_value_t = 1000)]
        subscribers: usize,
        /// QoS of each phase, in order (e.g. `0,1`).
        #[arg(long, default_value = "1", value_delimiter = ',')]
        qos: Vec<Qos>,
        /// Messages the slowest subscriber may be behind the publisher.
        #[arg(long, default_value_t = 16)]
        window: usize,
        /// Publishing time per phase.
        #[arg(long, default_value = "8s", value_parser = humantime::parse_duration)]
        duration: Duration,
        #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
        warmup: Duration,
        #[arg(long, default_value_t = 100)]
        payload: usize,
        #[arg(long, default_value_t = 32)]
        connect_concurrency: usize,
    },
    /// Open-loop QoS 1 fan-in at a fixed rate (persistent subscriber): loss-free or not.
    Lossfree {
        #[arg(long, default_value_t = 50)]
        devices: usize,
        /// Total messages per second.
        #[arg(long)]
        rate: f64,
        #[arg(long, default_value = "4s", value_parser = humantime::parse_duration)]
        duration: Duration,
        #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
        warmup: Duration,
        #[arg(long, default_value_t = 64)]
        window: usize,
        #[arg(long, default_value_t = 100)]
        payload: usize,
        /// Time after the end for late sends and PUBACKs.
        #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
        give_up: Duration,
        /// Highest p99 latency that still counts as keeping up.
        #[arg(long, default_value = "100ms", value_parser = humantime::parse_duration)]
        max_p99: Duration,
    },
    /// Rampart only: revoke connected devices with the CLI, time the disconnects.
    Revoke {
        /// Directory with ca.crt and the revocable devices' <id>.crt/<id>.key.
        #[arg(long)]
        device_certs: PathBuf,
        #[arg(long, default_value_t = 20)]
        devices: usize,
        /// The `rampart` binary.
        #[arg(long)]
        rampart: PathBuf,
        /// The running server's data dir.
        #[arg(long)]
        data_dir: PathBuf,
        /// The running server's config file.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Longest wait per device (CLI run and disconnect).
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        timeout: Duration,
        /// Spread the revocations' start phases over this (the server's
        /// `serve.change_poll_interval`).
        #[arg(long, default_value = "100ms", value_parser = humantime::parse_duration)]
        spread: Duration,
    },
}

/// Where the in-process benchmarks store.
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
struct StoreArgs {
    /// Store directory (SQLite; created).
    #[arg(long)]
    store_dir: Option<PathBuf>,
    /// PostgreSQL URL of an empty database, instead of SQLite.
    #[arg(long, value_name = "URL")]
    store_url: Option<String>,
}

impl StoreArgs {
    fn target(self) -> anyhow::Result<storebench::BenchStore> {
        match (self.store_dir, self.store_url) {
            (Some(dir), None) => Ok(storebench::BenchStore::Dir(dir)),
            (None, Some(url)) => Ok(storebench::BenchStore::Url(url)),
            _ => anyhow::bail!("give one of --store-dir and --store-url"),
        }
    }
}

fn session(persistent: bool) -> SessionKind {
    if persistent {
        SessionKind::Persistent
    } else {
        SessionKind::Clean
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let c = cli.common;
    let mqtt = || -> anyhow::Result<(CertDir, Target)> {
        let certs = CertDir::open(&c.certs)
            .with_context(|| format!("reading identities from {}", c.certs.display()))?;
        let server_name = ServerName::try_from(c.server_name.clone())
            .with_context(|| format!("'{}' is not a valid server name", c.server_name))?;
        let target = Target {
            addr: c.addr,
            server_name,
            version: c.mqtt,
            keepalive: Duration::from_secs(c.keepalive),
        };
        Ok((certs, target))
    };
    let report = match cli.scenario {
        Scenario::Fanin {
            devices,
            qos,
            window,
            duration,
            payload,
            persistent_subscriber,
        } => {
            let (certs, target) = mqtt()?;
            serde_json::to_value(
                fanin::run(fanin::FaninConfig {
                    target,
                    certs,
                    devices,
                    subscriber: c.subscriber,
                    qos,
                    window,
                    duration,
                    payload_size: payload,
                    subscriber_session: session(persistent_subscriber),
                    connect_concurrency: 16,
                })
                .await?,
            )?
        }
        Scenario::Latency {
            devices,
            qos,
            rate,
            duration,
            warmup,
            window,
            payload,
            persistent_subscriber,
            uplink,
            broker_pid,
            timeline,
        } => {
            let (certs, target) = mqtt()?;
            serde_json::to_value(
                latency::run(latency::LatencyConfig {
                    target,
                    certs,
                    devices,
                    subscriber: c.subscriber,
                    uplink,
                    qos,
                    rate,
                    duration,
                    warmup,
                    window,
                    payload_size: payload,
                    subscriber_session: session(persistent_subscriber),
                    connect_concurrency: 16,
                    broker_pid,
                    timeline,
                })
                .await?,
            )?
        }
        Scenario::Conns {
            connections,
            concurrency,
            hold,
            broker_pid,
        } => {
            let (certs, target) = mqtt()?;
            serde_json::to_value(
                conns::run(conns::ConnsConfig {
                    target,
                    certs,
                    connections,
                    exclude: c.subscriber,
                    concurrency,
                    hold,
                    broker_pid,
                })
                .await?,
            )?
        }
        Scenario::Handshakes {
            concurrency,
            duration,
        } => {
            let (certs, target) = mqtt()?;
            serde_json::to_value(
                handshakes::run(handshakes::HandshakesConfig {
                    target,
                    certs,
                    concurrency,
                    exclude: c.subscriber,
                    duration,
                })
                .await?,
            )?
        }
        Scenario::Ingest {
            store,
            devices,
            points,
            window,
            duration,
        } => serde_json::to_value(
            storebench::ingest(
                storebench::open_store(&store.target()?).await?,
                storebench::IngestConfig {
                    devices,
                    window,
                    points_per_message: points,
                    duration,
                },
            )
            .await?,
        )?,
        Scenario::Alerts {
            devices,
            duration,
            rate,
        } => serde_json::to_value(rampart_loadgen::alertbench::alerts(
            rampart_loadgen::alertbench::AlertBenchConfig {
                devices: devices.max(1),
                duration,
                rate_per_device: rate,
            },
        ))?,
        Scenario::Console {
            store_dir,
            devices,
            days,
            runs,
        } => {
            std::fs::create_dir_all(&store_dir)
                .with_context(|| format!("creating {}", store_dir.display()))?;
            let store = rampart_store::SqliteStore::open(
                &store_dir.join("rampart.db"),
                rampart_store::AuditKey::new([0; 32], None),
                rampart_store::sqlite::SqliteOptions::default(),
            )
            .context("opening the store")?;
            serde_json::to_value(
                rampart_loadgen::consolebench::console(
                    store,
                    rampart_loadgen::consolebench::ConsoleConfig {
                        devices,
                        days,
                        runs,
                    },
                )
                .await?,
            )?
        }
        Scenario::Chart {
            store,
            days,
            total_points,
            queries,
            buckets,
        } => serde_json::to_value(
            storebench::chart(
                storebench::open_store(&store.target()?).await?,
                storebench::ChartConfig {
                    days,
                    total_points,
                    queries,
                    buckets,
                },
            )
            .await?,
        )?,
        Scenario::Fanout {
            subscriber_certs,
            subscribers,
            qos,
            window,
            duration,
            warmup,
            payload,
            connect_concurrency,
        } => {
            let (certs, target) = mqtt()?;
            let subscriber_certs = CertDir::open(&subscriber_certs).with_context(|| {
                format!(
                    "reading subscriber identities from {}",
                    subscriber_certs.display()
                )
            })?;
            serde_json::to_value(
                fanout::run(fanout::FanoutConfig {
                    target,
                    certs,
                    exclude: c.subscriber,
                    subscriber_certs,
                    subscribers,
                    phases: qos,
                    window,
                    duration,
                    warmup,
                    payload_size: payload,
                    connect_concurrency,
                })
                .await?,
            )?
        }
        Scenario::Lossfree {
            devices,
            rate,
            duration,
            warmup,
            window,
            payload,
            give_up,
            max_p99,
        } => {
            let (certs, target) = mqtt()?;
            serde_json::to_value(
                lossfree::run(lossfree::LossFreeConfig {
                    run: latency::LatencyConfig {
                        target,
                        certs,
                        devices,
                        subscriber: c.subscriber,
                        uplink: fanin::Uplink::Telemetry,
                        qos: Qos::AtLeastOnce,
                        rate,
                        duration,
                        warmup,
                        window,
                        payload_size: payload,
                        subscriber_session: SessionKind::Persistent,
                        connect_concurrency: 16,
                        broker_pid: None,
                        timeline: None,
                    },
                    give_up,
                    max_p99,
                })
                .await?,
            )?
        }
        Scenario::Revoke {
            device_certs,
            devices,
            rampart,
            data_dir,
            config,
            timeout,
            spread,
        } => {
            let (_, target) = mqtt()?;
            let certs = CertDir::open(&device_certs).with_context(|| {
                format!("reading device identities from {}", device_certs.display())
            })?;
            serde_json::to_value(
                revoke::run(revoke::RevokeConfig {
                    target,
                    certs,
                    devices,
                    rampart,
                    data_dir,
                    config,
                    timeout,
                    spread,
                })
                .await?,
            )?
        }
    };
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}
