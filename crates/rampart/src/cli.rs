//! Command-line interface (clap derive). `docs/cli.md` documents every
//! command and its `--json` output; keep the two in step.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use rampart_pki::RevocationReason;
use rampart_proto::DeviceId;
use rampart_store::Owner;

/// Rampart: a secure, self-hosted IoT device platform in one binary.
#[derive(Debug, Parser)]
#[command(name = "rampart", version, about, propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Flags accepted before or after any subcommand.
#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// Data directory (CA, database, keys).
    #[arg(
        long,
        global = true,
        env = "RAMPART_DATA_DIR",
        default_value = "./rampart-data",
        value_name = "DIR"
    )]
    pub data_dir: PathBuf,
    /// Configuration file (TOML); see `rampart config example`.
    #[arg(long, global = true, env = "RAMPART_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Machine-readable JSON output wherever a command prints data.
    #[arg(long, global = true)]
    pub json: bool,
    /// More log output (repeat for more).
    #[arg(short, long, global = true, action = clap::ArgAction::Count, conflicts_with = "quiet")]
    pub verbose: u8,
    /// Less log output (repeat for less).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub quiet: u8,
}

/// Top-level commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create the data dir, CA, server certificate and store (idempotent).
    Init,
    /// Run the platform (creates the data dir on first start).
    Serve(ServeArgs),
    /// The certificate authority.
    #[command(subcommand)]
    Ca(CaCommand),
    /// Devices: register, inspect, revoke.
    #[command(subcommand)]
    Device(DeviceCommand),
    /// Service identities: back-end consumers and operators' tools.
    #[command(subcommand)]
    Service(ServiceCommand),
    /// Enrollment tokens: devices register themselves over HTTPS with one.
    #[command(subcommand)]
    EnrollToken(EnrollTokenCommand),
    /// Telemetry: chart queries, exports, rejected messages.
    #[command(subcommand)]
    Telemetry(TelemetryCommand),
    /// Firmware updates: signing keys, signed bundles, trusted keys, uploads.
    #[command(subcommand)]
    Firmware(FirmwareCommand),
    /// OTA campaigns: roll uploaded firmware out in waves (docs/ota.md §5).
    #[command(subcommand)]
    Campaign(CampaignCommand),
    /// Run a fleet of simulated DHT11/DHT22 sensor devices against a server.
    Simulate(Box<SimulateArgs>),
    /// Write a consistent backup of the data dir to FILE (works while
    /// `serve` runs).
    Backup {
        /// Where to write the backup (a tar file, created 0600; must not exist).
        file: PathBuf,
    },
    /// Restore a backup into an empty or absent data dir.
    Restore {
        /// A file written by `rampart backup`.
        file: PathBuf,
    },
    /// The audit log.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Alerts: webhook channels, rules, alerts and undeliverable notifications.
    #[command(subcommand)]
    Alert(AlertCommand),
    /// Configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
}

/// `rampart telemetry ...`
#[derive(Debug, Subcommand)]
pub enum TelemetryCommand {
    /// A chart of a device's metric: min, max, avg, count and last per bucket,
    /// from the coarsest rollup that still gives the buckets asked for.
    Query {
        /// The device.
        #[arg(long)]
        device: DeviceId,
        /// The metric (all of the device's metrics when absent).
        #[arg(long)]
        metric: Option<String>,
        /// Start: RFC 3339, `now`, relative (`-24h`, `-7d`) or Unix ms.
        #[arg(long, default_value = "-24h", allow_hyphen_values = true)]
        from: String,
        /// End (exclusive), same forms.
        #[arg(long, default_value = "now", allow_hyphen_values = true)]
        to: String,
        /// How many buckets across the range.
        #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..=100_000))]
        buckets: u32,
    },
    /// Every stored point, one per line.
    Export {
        /// `csv` or `jsonl`.
        #[arg(long, value_enum)]
        format: ExportFormatArg,
        /// Only this device.
        #[arg(long)]
        device: Option<DeviceId>,
        /// Only points at or after this time.
        #[arg(long, allow_hyphen_values = true)]
        from: Option<String>,
        /// Only points before this time.
        #[arg(long, allow_hyphen_values = true)]
        to: Option<String>,
        /// Write to FILE instead of standard output.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// Messages the pipeline refused, newest first.
    Rejected {
        /// Only this device.
        #[arg(long)]
        device: Option<DeviceId>,
        /// How many.
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// A device's ingest counters, metrics, reported state and presence history.
    Stats {
        /// The device.
        device: DeviceId,
    },
}

/// Export formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ExportFormatArg {
    /// Comma-separated values with a header line.
    Csv,
    /// One JSON object per line.
    Jsonl,
}

/// `rampart serve` options.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// MQTT over TLS listen address (port 0 picks a free port).
    #[arg(long, env = "RAMPART_MQTT_ADDR", default_value = "0.0.0.0:8883")]
    pub mqtt_addr: SocketAddr,
    /// HTTPS (console, API) listen address (port 0 picks a free port).
    #[arg(long, env = "RAMPART_HTTP_ADDR", default_value = "0.0.0.0:8443")]
    pub http_addr: SocketAddr,
    /// Also run a fleet of simulated DHT11-style sensors in this process
    /// (ids `demo-0001` …, state in `<data dir>/demo`): data flows at once.
    #[arg(long)]
    pub demo: bool,
    /// Devices in the demo fleet.
    #[arg(long, default_value_t = 20, value_name = "N", requires = "demo",
          value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub demo_devices: u32,
    /// Readings per demo device: 1/s, 10/s, 6/min.
    #[arg(long, default_value = "1/s", requires = "demo", value_parser = rampart_sim::parse_rate)]
    pub demo_rate: Duration,
}

/// `rampart simulate` options. Every interval is configurable so that
/// tests run in seconds.
#[derive(Debug, Args)]
pub struct SimulateArgs {
    /// Number of simulated devices.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub devices: u32,
    /// The server's MQTT port, HOST:PORT (HOST is checked against its certificate).
    #[arg(long, default_value = "localhost:8883", value_name = "HOST:PORT")]
    pub server: String,
    /// The server's HTTPS port (enrollment), HOST:PORT.
    #[arg(long, default_value = "localhost:8443", value_name = "HOST:PORT")]
    pub http: String,
    /// The CA bundle the server is verified against (`rampart ca export > ca.pem`).
    #[arg(long, value_name = "FILE")]
    pub ca: PathBuf,
    /// Enrollment token (`rampart enroll-token create`); needed while a device is not enrolled.
    #[arg(long, env = "RAMPART_ENROLL_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Readings per device: 1/s, 10/s, 6/min, 30/h.
    #[arg(long, default_value = "1/s", value_parser = rampart_sim::parse_rate)]
    pub rate: Duration,
    /// Id prefix of a new state dir (default: sim- and six random hex digits); must fit the token's scope.
    #[arg(long, value_name = "P")]
    pub id_prefix: Option<String>,
    /// Where the devices' keys, certificates, boot counters and buffers live.
    #[arg(long, default_value = "./rampart-sim", value_name = "DIR")]
    pub state_dir: PathBuf,
    /// Probability per reading interval that a connected device drops its connection.
    #[arg(long, default_value_t = 0.0, value_name = "P")]
    pub flaky: f64,
    /// Probability that a firmware download is cut once at a random byte and
    /// resumed with a range request (default: the --flaky probability).
    #[arg(long, value_name = "P")]
    pub flaky_downloads: Option<f64>,
    /// Deep-sleep mode: wake every DURATION, read, flush, disconnect, sleep (--rate is then unused).
    #[arg(long, value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub sleep_cycle: Option<Duration>,
    /// Stop reading after this long, deliver what is buffered, and exit (default: until SIGINT/SIGTERM).
    #[arg(long, value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub duration: Option<Duration>,
    /// The sensor model.
    #[arg(long, default_value = "dht11", value_parser = parse_sensor)]
    pub sensor: rampart_sim::SensorKind,
    /// Probability that a sensor read fails (default: the sensor's typical 2 % / 1 %).
    #[arg(long, value_name = "P")]
    pub read_failures: Option<f64>,
    /// Flush once this many readings are buffered.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub batch_size: u32,
    /// Flush once the oldest buffered reading is this old.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub batch_age: Duration,
    /// Telemetry encoding.
    #[arg(long, value_enum, default_value = "json")]
    pub format: PayloadFormatArg,
    /// First reconnect delay (grows with jitter up to --backoff-max).
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub backoff_min: Duration,
    /// Longest reconnect delay.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub backoff_max: Duration,
    /// Test knob: renew each certificate this long after it was issued
    /// (real renewals happen at two thirds of the validity, i.e. after months).
    #[arg(long, value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub renew_every: Option<Duration>,
    /// How long the final delivery may take after reading stops.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub drain_timeout: Duration,
    /// New connections per second across the fleet (the broker limits
    /// connections per address: broker.connection_rate_per_ip).
    #[arg(long, default_value_t = 40.0)]
    pub connect_rate: f64,
    /// Enrollments per second across the fleet (each one has the server
    /// sign a certificate and commit a transaction).
    #[arg(long, default_value_t = 20.0)]
    pub enroll_rate: f64,
    /// MQTT keepalive.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub keepalive: Duration,
    /// Time limit of one network operation (connect, enrollment, write).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub io_timeout: Duration,
    /// Shortest time between two writes of a device's reading buffer to
    /// the state dir (always written before sleeping and stopping; a
    /// kill -9 loses at most this much of unacknowledged readings).
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub persist_every: Duration,
    /// How often progress is shown.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub progress_every: Duration,
    /// The device type the simulated firmware is built for (reported as "type"; offers for another are refused).
    #[arg(long, default_value = rampart_sim::options::DEFAULT_DEVICE_TYPE, value_name = "TYPE")]
    pub device_type: String,
    /// The version of the factory image every device starts with (reported as "fw").
    #[arg(long, default_value = rampart_sim::options::DEFAULT_FIRMWARE_VERSION, value_name = "SEMVER")]
    pub firmware_version: String,
    /// A firmware signing key the devices trust (`rampart firmware keygen`'s KEY.pub); repeatable.
    #[arg(long, value_name = "KEY.pub")]
    pub ota_trust: Vec<PathBuf>,
    /// Bytes one firmware slot holds: 4MiB, 512KiB, 65536.
    #[arg(long, default_value = "4MiB", value_parser = rampart_sim::parse_size, value_name = "SIZE")]
    pub ota_slot_size: u64,
    /// Make a share of the devices misbehave during updates, KIND:SHARE
    /// (corrupt-download, crash-on-boot, hang, no-network; e.g. crash-on-boot:0.05); repeatable.
    #[arg(long, value_name = "KIND:SHARE")]
    pub ota_fault: Vec<rampart_sim::FaultShare>,
    /// How long an image on trial has to connect and publish before it is rolled back.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub ota_confirm_timeout: Duration,
    /// Trial boots allowed before an image counts as crash-looping and is rolled back.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u8).range(1..=100))]
    pub ota_max_boot_attempts: u8,
}

/// Telemetry payload encodings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PayloadFormatArg {
    /// JSON text.
    Json,
    /// CBOR.
    Cbor,
}

fn parse_sensor(s: &str) -> Result<rampart_sim::SensorKind, String> {
    s.parse()
}

/// `rampart ca ...`
#[derive(Debug, Subcommand)]
pub enum CaCommand {
    /// Print the CA chain (issuing CA, then root) as PEM: the devices' trust bundle.
    Export,
    /// Print the current certificate revocation list as PEM.
    Crl,
    /// Show the CA: subjects, fingerprints, expiry, whether it can issue.
    Info,
    /// Use an external CA (e.g. Vault PKI); without --key Rampart only verifies.
    Import {
        /// CA certificate (PEM).
        #[arg(long, value_name = "FILE")]
        cert: PathBuf,
        /// CA private key (PEM, PKCS#8).
        #[arg(long, value_name = "FILE")]
        key: Option<PathBuf>,
    },
    /// Write the root CA key to FILE for offline keeping (and remove it with --remove).
    ExportRootKey {
        /// Where to write the key (mode 0600).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        /// Delete the root key from the data dir afterwards; the issuing CA keeps working.
        #[arg(long)]
        remove: bool,
    },
}

/// `rampart device ...`
#[derive(Debug, Subcommand)]
pub enum DeviceCommand {
    /// Sign a device's CSR (the production path: the key never leaves the device).
    SignCsr {
        /// The CSR (PEM); `-` reads standard input.
        file: PathBuf,
        /// Require the CSR's CN to be this id.
        #[arg(long)]
        id: Option<DeviceId>,
        /// Write the certificate here instead of standard output.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// Development shortcut: make a key on the server and register the device.
    Create {
        /// Device id (certificate CN, MQTT client id).
        #[arg(long)]
        id: DeviceId,
        /// Directory for ID.key, ID.crt and ca.crt (created if absent).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
    /// Register a device whose certificate this CA issued elsewhere (e.g. an
    /// imported Vault PKI CA whose key Rampart does not hold).
    Register {
        /// The device certificate (PEM).
        #[arg(long, value_name = "FILE")]
        cert: PathBuf,
    },
    /// List devices.
    List {
        /// Only devices in this state.
        #[arg(long, value_enum)]
        state: Option<StateArg>,
        /// Only ids containing this text.
        #[arg(long)]
        search: Option<String>,
    },
    /// Show one device.
    Show {
        /// Device id.
        id: DeviceId,
    },
    /// Revoke a device's certificate: it is cut off and cannot reconnect.
    Revoke {
        /// Device id.
        id: DeviceId,
        /// RFC 5280 reason.
        #[arg(long, default_value = "unspecified", value_parser = parse_reason)]
        reason: RevocationReason,
    },
    /// Block a device without revoking its certificate (reversible).
    Disable {
        /// Device id.
        id: DeviceId,
    },
    /// Lift a block set by `disable`.
    Enable {
        /// Device id.
        id: DeviceId,
    },
    /// Remove a device; its certificate stays on the CRL.
    Delete {
        /// Device id.
        id: DeviceId,
    },
    /// Claim a device for a user or group: checks the claim code, and sends
    /// the device (which must be online) a nonce to confirm.
    Claim {
        /// Device id (with --code; or give --qr instead).
        #[arg(required_unless_present = "qr", conflicts_with = "qr")]
        id: Option<DeviceId>,
        /// The claim code printed on the device's label.
        #[arg(long, required_unless_present = "qr", conflicts_with = "qr")]
        code: Option<String>,
        /// The content of the label's QR code: JSON with deviceId,
        /// fingerprint and claimCode.
        #[arg(long, value_name = "JSON")]
        qr: Option<String>,
        /// Who is to own the device: user:NAME or group:NAME.
        #[arg(long)]
        owner: Owner,
        /// Wait up to this long (e.g. 30s) for the device to confirm; exits
        /// 0 only once it is bound.
        #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
        wait: Option<Duration>,
    },
    /// Issue a new claim code and show its QR code (the old code becomes void).
    Qr {
        /// Device id.
        id: DeviceId,
        /// Make a new claim code (required: only a hash of the old one is kept).
        #[arg(long)]
        rotate_claim_code: bool,
        /// Write the QR code as PNG.
        #[arg(long, value_name = "FILE", conflicts_with = "svg")]
        png: Option<PathBuf>,
        /// Write the QR code as SVG.
        #[arg(long, value_name = "FILE")]
        svg: Option<PathBuf>,
    },
}

/// `rampart service ...`
#[derive(Debug, Subcommand)]
pub enum ServiceCommand {
    /// Issue a service certificate and key: DIR/NAME.crt, DIR/NAME.key, DIR/ca.crt.
    Create {
        /// Service name (certificate CN, MQTT client id); shares the namespace with device ids.
        name: DeviceId,
        /// Directory for the files (created if absent).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
    /// List services.
    List,
    /// Revoke a service's certificate: it is cut off and cannot reconnect.
    Revoke {
        /// Service name.
        name: DeviceId,
        /// RFC 5280 reason.
        #[arg(long, default_value = "unspecified", value_parser = parse_reason)]
        reason: RevocationReason,
    },
}

/// `rampart enroll-token ...`
#[derive(Debug, Subcommand)]
pub enum EnrollTokenCommand {
    /// Create a token; it is printed once (only its hash is stored).
    Create {
        /// How many devices it may register.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
        uses: u32,
        /// How long it is accepted: 30m, 24h, 7d, ...
        #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
        expires: std::time::Duration,
        /// Only device ids starting with this may enroll.
        #[arg(long, value_name = "PREFIX")]
        id_prefix: Option<String>,
        /// The user who owns the devices it registers.
        #[arg(long, value_name = "USER")]
        owner: Option<String>,
    },
    /// List tokens (never the tokens themselves): id, state, uses, expiry, scope.
    List,
    /// Revoke a token: it registers no more devices.
    Revoke {
        /// The token's id, as `list` shows it.
        id: String,
    },
}

/// Device state filter.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum StateArg {
    /// Registered, not claimed.
    Unbound,
    /// Claimed.
    Bound,
    /// Blocked.
    Disabled,
    /// Revoked.
    Revoked,
}

/// `rampart firmware ...`
#[derive(Debug, Subcommand)]
pub enum FirmwareCommand {
    /// Generate an Ed25519 firmware signing key: the secret key to KEY (PEM
    /// PKCS#8, mode 0600) and the public key to KEY.pub (PEM SPKI). Keep KEY
    /// offline; the server only ever needs KEY.pub. Never overwrites.
    Keygen {
        /// Where to write the secret key.
        #[arg(long, value_name = "KEY")]
        out: PathBuf,
    },
    /// Sign IMAGE into a bundle: manifest (device type, version, security
    /// version, size, SHA-256, key id), Ed25519 signature, image.
    // `--version` here is the image's; `rampart --version` still works.
    #[command(disable_version_flag = true)]
    Sign {
        /// The firmware image (raw application binary).
        image: PathBuf,
        /// The secret key from `rampart firmware keygen`.
        #[arg(long, value_name = "KEY")]
        key: PathBuf,
        /// The kind of device the image is for (`[a-z0-9._-]`, up to 64).
        #[arg(long, value_name = "T")]
        device_type: String,
        /// The image's semantic version (e.g. 1.4.0).
        #[arg(long, value_name = "SEMVER")]
        version: String,
        /// Anti-rollback counter: devices refuse images below the highest
        /// security version they confirmed. Raise it for security fixes.
        #[arg(long, value_name = "N")]
        security_version: u32,
        /// Where to write the bundle (must not exist).
        #[arg(long, value_name = "BUNDLE")]
        out: PathBuf,
    },
    /// Verify a bundle with public keys (the checks a device makes) and
    /// print its manifest.
    Verify {
        /// The bundle.
        bundle: PathBuf,
        /// A trusted public key (KEY.pub); repeat for several.
        #[arg(long = "pubkey", value_name = "KEY.pub", required = true)]
        pubkeys: Vec<PathBuf>,
        /// Also require this device type.
        #[arg(long, value_name = "T")]
        device_type: Option<String>,
        /// Largest image accepted, bytes (default: firmware.max_image_size).
        #[arg(long, value_name = "BYTES")]
        max_image_size: Option<u64>,
    },
    /// Public keys the server trusts to sign firmware.
    #[command(subcommand)]
    Key(FirmwareKeyCommand),
    /// Upload a bundle: accepted only if signed by a trusted key; the image
    /// is stored by its SHA-256 in the data dir and recorded.
    Upload {
        /// The bundle from `rampart firmware sign`.
        bundle: PathBuf,
    },
    /// Uploaded firmware, newest first.
    List,
}

/// `rampart campaign ...`
#[derive(Debug, Subcommand)]
pub enum CampaignCommand {
    /// Create a campaign (a draft, or running with --approve). Targets the
    /// devices reporting the firmware's device type, within --devices,
    /// --state or --all, leaving out revoked and disabled devices and those
    /// on the version already.
    Create(Box<CampaignCreateArgs>),
    /// Campaigns, newest first.
    List,
    /// One campaign: counts per state and the per-device table.
    Show {
        /// The campaign number.
        id: u64,
    },
    /// Approve a draft: the engine of `serve` starts its first wave.
    Approve {
        /// The campaign number.
        id: u64,
    },
    /// Pause a running campaign: no further wave starts.
    Pause {
        /// The campaign number.
        id: u64,
    },
    /// Resume a paused campaign (after a success-threshold pause, the
    /// finished wave counts as accepted).
    Resume {
        /// The campaign number.
        id: u64,
    },
    /// Emergency stop: queued devices are cancelled and devices holding the
    /// offer get a `cancel` downlink.
    Cancel {
        /// The campaign number.
        id: u64,
    },
}

/// `rampart campaign create`
#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("target").required(true).args(["devices", "state", "all"])))]
pub struct CampaignCreateArgs {
    /// A name for people.
    #[arg(long, value_name = "N")]
    pub name: String,
    /// The uploaded firmware (`rampart firmware list`).
    #[arg(long, value_name = "ID")]
    pub firmware: u64,
    /// Only these devices (comma-separated ids).
    #[arg(long, value_delimiter = ',', value_name = "ID,...")]
    pub devices: Vec<String>,
    /// Only devices in this registry state: bound or unbound.
    #[arg(long, value_name = "STATE", value_parser = ["bound", "unbound"])]
    pub state: Option<String>,
    /// Every device of the firmware's type.
    #[arg(long)]
    pub all: bool,
    /// Cumulative wave percentages, the last 100.
    #[arg(long, default_value = "1,10,50,100", value_name = "P,...")]
    pub waves: String,
    /// Minimum time between a wave finishing and the next (default:
    /// ota.default_soak).
    #[arg(long, value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub soak: Option<std::time::Duration>,
    /// A finished wave below this success share pauses (default:
    /// ota.default_success_threshold).
    #[arg(long, value_name = "FRACTION")]
    pub success_threshold: Option<f64>,
    /// Failures reaching this share of the offered devices abort (default:
    /// ota.default_failure_threshold).
    #[arg(long, value_name = "FRACTION")]
    pub failure_threshold: Option<f64>,
    /// Timeout of `offered` (default: ota.offered_timeout).
    #[arg(long, value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub offered_timeout: Option<std::time::Duration>,
    /// Timeout of `downloading` (default: ota.downloading_timeout).
    #[arg(long, value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub downloading_timeout: Option<std::time::Duration>,
    /// Timeout of `verifying` (default: ota.verifying_timeout).
    #[arg(long, value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub verifying_timeout: Option<std::time::Duration>,
    /// Timeout of `pending-reboot` (default: ota.pending_reboot_timeout).
    #[arg(long, value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub pending_reboot_timeout: Option<std::time::Duration>,
    /// Timeout of `pending-confirm` (default: ota.pending_confirm_timeout).
    #[arg(long, value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub pending_confirm_timeout: Option<std::time::Duration>,
    /// Start running at once instead of as a draft.
    #[arg(long)]
    pub approve: bool,
}

/// `rampart firmware key ...`
#[derive(Debug, Subcommand)]
pub enum FirmwareKeyCommand {
    /// Trust a public key (KEY.pub from `rampart firmware keygen`).
    Add {
        /// The public key file.
        pubkey: PathBuf,
        /// A name for it (default: `key-` and its key id).
        #[arg(long, value_name = "N")]
        name: Option<String>,
    },
    /// Trusted keys.
    List,
    /// Stop trusting keys, by name; several at once for a rotation. All or
    /// none: an unknown name removes nothing.
    Remove {
        /// Key names.
        #[arg(required = true, value_name = "NAME")]
        names: Vec<String>,
    },
}

/// `rampart alert ...`
#[derive(Debug, Subcommand)]
pub enum AlertCommand {
    /// Webhook channels notifications go to.
    #[command(subcommand)]
    Channel(AlertChannelCommand),
    /// Alert rules.
    #[command(subcommand)]
    Rule(AlertRuleCommand),
    /// Channels, rules and alerts (firing ones, or all with --all).
    List {
        /// Resolved and closed alerts too.
        #[arg(long)]
        all: bool,
        /// At most this many alerts.
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// Acknowledge an alert.
    Ack {
        /// The alert's number.
        id: u64,
    },
    /// Notifications given up on (the dead letters).
    DeadLetters {
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// Queue a dead letter for delivery again.
    Retry {
        /// The delivery's number (from `dead-letters`).
        id: u64,
    },
}

/// `rampart alert channel ...`
#[derive(Debug, Subcommand)]
pub enum AlertChannelCommand {
    /// Add a webhook channel. The URL is a secret: it is stored sealed and
    /// shown redacted (scheme and host) everywhere.
    Add {
        /// Its name (rules refer to it).
        #[arg(long, value_name = "N")]
        name: String,
        /// Receiver dialect: discord, slack or json (generic).
        #[arg(long, value_name = "KIND")]
        kind: String,
        /// The webhook URL: https and a public address.
        #[arg(long, value_name = "URL")]
        url: String,
        /// DANGER: allow plain http and private or loopback addresses (a
        /// receiver on this machine or the internal network).
        #[arg(long)]
        danger_allow_private: bool,
        /// Sign deliveries with the HMAC secret in this environment variable
        /// (json channels; header X-Rampart-Signature).
        #[arg(long, value_name = "VAR")]
        secret_env: Option<String>,
        /// Most deliveries per minute.
        #[arg(long, value_name = "N")]
        per_minute: Option<u32>,
    },
    /// Remove a channel no rule uses.
    Remove {
        /// The channel's name.
        name: String,
    },
}

/// `rampart alert rule ...`
#[derive(Debug, Subcommand)]
pub enum AlertRuleCommand {
    /// Add a rule, e.g. --expr 'temperature > 30 for 5m', 'offline for
    /// 10m', 'no-telemetry for 15m', 'cert-expires within 30d'.
    Add {
        /// Its name.
        #[arg(long, value_name = "N")]
        name: String,
        /// The condition.
        #[arg(long, value_name = "EXPR")]
        expr: String,
        /// The channel notified.
        #[arg(long, value_name = "N")]
        channel: String,
        /// Only this device.
        #[arg(long, value_name = "ID")]
        device: Option<String>,
        /// Only devices of this owner (user:NAME).
        #[arg(long, value_name = "OWNER", conflicts_with = "device")]
        owner: Option<String>,
        /// Accept a metric no device has sent yet.
        #[arg(long)]
        new_metric: bool,
    },
    /// Remove a rule; its firing alerts are closed without a notification.
    Remove {
        /// The rule's name.
        name: String,
    },
}

/// `rampart audit ...`
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Check the audit chain; reports the first broken row.
    Verify,
    /// Show audit rows, oldest first.
    List {
        /// Only rows after this sequence number.
        #[arg(long, default_value_t = 0)]
        after: u64,
        /// At most this many rows.
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
}

/// `rampart config ...`
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print a commented default configuration file.
    Example,
    /// Print the effective configuration (file + environment).
    Show,
}

fn parse_reason(s: &str) -> Result<RevocationReason, String> {
    s.parse().map_err(|_| {
        let all: Vec<String> = RevocationReason::ALL
            .iter()
            .map(|r| r.to_string())
            .collect();
        format!("unknown reason '{s}'; expected one of: {}", all.join(", "))
    })
}
