//! Configuration: one typed struct, loaded from a TOML file and overridden by
//! `RAMPART_*` environment variables.
//!
//! An override names the key path upper-cased with `__` between levels:
//! `pki.device_validity_days` ← `RAMPART_PKI__DEVICE_VALIDITY_DAYS`. Values
//! are read as TOML (`30`, `true`, `["a", "b"]`) and otherwise as strings
//! (`10s`). Unknown keys, in the file or the environment, are an error that
//! names the key: a typo must not silently fall back to a default.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use rampart_store::sqlite::WriterPriority;
use serde::{Deserialize, Serialize};

use rampart_span as span;

/// Prefix of every configuration override variable.
const ENV_PREFIX: &str = "RAMPART_";

/// Sets `web.metrics_token` (as `RAMPART_WEB__METRICS_TOKEN` also does).
const METRICS_TOKEN_ENV: &str = "RAMPART_WEB_METRICS_TOKEN";

/// The whole configuration. Every field has a default.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Certificate authority.
    pub pki: PkiConfig,
    /// Storage.
    pub store: StoreConfig,
    /// `rampart serve` behaviour.
    pub serve: ServeConfig,
    /// The MQTT broker.
    pub broker: rampart_broker::BrokerConfig,
    /// The HTTPS server (API, enrollment, console).
    pub web: rampart_web::WebConfig,
    /// The telemetry pipeline.
    pub telemetry: TelemetryConfig,
    /// Certificate renewal over MQTT.
    pub renewal: RenewalConfig,
    /// Claiming devices.
    pub claim: ClaimConfig,
    /// Alert evaluation and webhook delivery.
    pub alerts: AlertsConfig,
    /// Firmware updates.
    pub firmware: FirmwareConfig,
    /// Offers, campaigns and the rollout engine (docs/ota.md §6).
    pub ota: OtaConfig,
    /// Logging.
    pub log: LogConfig,
}

/// `[renewal]`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RenewalConfig {
    /// Renewal requests one device may make within `window` (refused ones count).
    pub max_per_window: u32,
    /// The sliding window of that limit.
    #[serde(with = "span")]
    pub window: Duration,
}

impl Default for RenewalConfig {
    fn default() -> Self {
        let p = rampart_provisioning::limit::RatePolicy::default();
        Self {
            max_per_window: p.max_per_window,
            window: p.window,
        }
    }
}

/// `[alerts]`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertsConfig {
    /// Time limit of one webhook request, connection included.
    #[serde(with = "span")]
    pub delivery_timeout: Duration,
    /// First retry of a failed delivery after about this long (doubling).
    #[serde(with = "span")]
    pub retry_base: Duration,
    /// Longest wait between two attempts.
    #[serde(with = "span")]
    pub retry_cap: Duration,
    /// Attempts before a notification goes to the dead letters.
    pub max_attempts: u32,
    /// Deliveries in flight at once.
    pub max_concurrent_deliveries: usize,
    /// Redirect hops a delivery follows (each checked like the original).
    pub max_redirects: u8,
    /// Flapping suppression: an offline event counts only this much later
    /// (a device back within it raises nothing). 0 turns it off.
    #[serde(with = "span")]
    pub presence_hold_down: Duration,
    /// The console's public URL, for links in notifications.
    pub console_url: Option<String>,
    /// Webhook channels declared here (`[[alerts.channels]]`), created at
    /// start when missing.
    pub channels: Vec<DeclaredChannel>,
    /// Alert rules declared here (`[[alerts.rules]]`), created at start
    /// when missing and replaced when changed.
    pub rules: Vec<DeclaredRule>,
}

/// `[[alerts.channels]]`: a webhook channel kept in the configuration. The
/// URL is a secret, so it comes from an environment variable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeclaredChannel {
    /// Its name.
    pub name: String,
    /// `discord`, `slack` or `json`.
    pub kind: String,
    /// The environment variable holding the webhook URL.
    pub url_env: String,
    /// DANGER: plain http and private addresses allowed.
    #[serde(default)]
    pub danger_allow_private: bool,
    /// The environment variable holding the HMAC secret (json channels).
    #[serde(default)]
    pub secret_env: Option<String>,
    /// Most deliveries per minute.
    #[serde(default)]
    pub per_minute: Option<u32>,
}

/// `[[alerts.rules]]`: an alert rule kept in the configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeclaredRule {
    /// Its name.
    pub name: String,
    /// The expression, e.g. `offline for 10m`.
    pub expr: String,
    /// The channel notified.
    pub channel: String,
    /// Only this device.
    #[serde(default)]
    pub device: Option<String>,
    /// Only devices of this owner (`user:NAME`).
    #[serde(default)]
    pub owner: Option<String>,
    /// Accept a metric no device has sent yet.
    #[serde(default)]
    pub new_metric: bool,
}

impl Default for AlertsConfig {
    fn default() -> Self {
        let retry = rampart_alerts::delivery::RetryPolicy::default();
        Self {
            delivery_timeout: Duration::from_secs(10),
            retry_base: retry.base,
            retry_cap: retry.cap,
            max_attempts: retry.max_attempts,
            max_concurrent_deliveries: 16,
            max_redirects: 3,
            presence_hold_down: Duration::ZERO,
            console_url: None,
            channels: Vec::new(),
            rules: Vec::new(),
        }
    }
}

impl AlertsConfig {
    /// The delivery settings of the alert deliverer.
    pub fn delivery(&self) -> crate::alerting::DeliveryOptions {
        crate::alerting::DeliveryOptions {
            timeout: self.delivery_timeout,
            retry: rampart_alerts::delivery::RetryPolicy {
                base: self.retry_base,
                cap: self.retry_cap.max(self.retry_base),
                max_attempts: self.max_attempts.max(1),
            },
            max_concurrent: self.max_concurrent_deliveries.max(1),
            max_redirects: self.max_redirects,
            console_url: self.console_url.clone(),
        }
    }
}

/// `[firmware]`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FirmwareConfig {
    /// Largest firmware image accepted by `rampart firmware upload` and
    /// `POST /api/v1/firmware`, bytes.
    pub max_image_size: u64,
}

impl Default for FirmwareConfig {
    fn default() -> Self {
        Self {
            max_image_size: rampart_ota::DEFAULT_MAX_IMAGE_SIZE,
        }
    }
}

/// `[ota]` (docs/ota.md §6)
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OtaConfig {
    /// How often the rollout engine runs.
    #[serde(with = "span")]
    pub tick: Duration,
    /// Lifetime of a download URL in an offer.
    #[serde(with = "span")]
    pub download_token_ttl: Duration,
    /// Base of download URLs (`https://host:port`); by default derived
    /// from the HTTPS listener's address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_url: Option<String>,
    /// Default `offered` timeout of new campaigns.
    #[serde(with = "span")]
    pub offered_timeout: Duration,
    /// Default `downloading` timeout.
    #[serde(with = "span")]
    pub downloading_timeout: Duration,
    /// Default `verifying` timeout.
    #[serde(with = "span")]
    pub verifying_timeout: Duration,
    /// Default `pending-reboot` timeout.
    #[serde(with = "span")]
    pub pending_reboot_timeout: Duration,
    /// Default `pending-confirm` timeout.
    #[serde(with = "span")]
    pub pending_confirm_timeout: Duration,
    /// Default failure threshold of new campaigns (0 to 1).
    pub default_failure_threshold: f64,
    /// Default success threshold of new campaigns (0 to 1).
    pub default_success_threshold: f64,
    /// Default soak time between waves.
    #[serde(with = "span")]
    pub default_soak: Duration,
}

// Thresholds are validated finite fractions, so equality is total.
impl Eq for OtaConfig {}

impl Default for OtaConfig {
    fn default() -> Self {
        let t = rampart_ota::campaign::Timeouts::default();
        Self {
            tick: Duration::from_secs(1),
            download_token_ttl: Duration::from_secs(3600),
            public_url: None,
            offered_timeout: t.offered,
            downloading_timeout: t.downloading,
            verifying_timeout: t.verifying,
            pending_reboot_timeout: t.pending_reboot,
            pending_confirm_timeout: t.pending_confirm,
            default_failure_threshold: rampart_ota::campaign::DEFAULT_FAILURE_THRESHOLD,
            default_success_threshold: rampart_ota::campaign::DEFAULT_SUCCESS_THRESHOLD,
            default_soak: Duration::from_secs(600),
        }
    }
}

impl OtaConfig {
    /// The default per-state timeouts of new campaigns.
    pub fn timeouts(&self) -> rampart_ota::campaign::Timeouts {
        rampart_ota::campaign::Timeouts {
            offered: self.offered_timeout,
            downloading: self.downloading_timeout,
            verifying: self.verifying_timeout,
            pending_reboot: self.pending_reboot_timeout,
            pending_confirm: self.pending_confirm_timeout,
        }
    }

    fn validate(&self) -> Result<()> {
        if self.tick.is_zero() || self.download_token_ttl.is_zero() {
            bail!("ota.tick and ota.download_token_ttl must be greater than zero");
        }
        let t = self.timeouts();
        let states = [
            t.offered,
            t.downloading,
            t.verifying,
            t.pending_reboot,
            t.pending_confirm,
        ];
        if states.iter().any(Duration::is_zero) {
            bail!("every ota.*_timeout must be greater than zero");
        }
        for (key, v) in [
            (
                "ota.default_failure_threshold",
                self.default_failure_threshold,
            ),
            (
                "ota.default_success_threshold",
                self.default_success_threshold,
            ),
        ] {
            if !(0.0..=1.0).contains(&v) {
                bail!("{key} must be a fraction between 0 and 1 (got {v})");
            }
        }
        if let Some(url) = &self.public_url
            && !url.starts_with("https://")
        {
            bail!("ota.public_url must start with https:// (got '{url}')");
        }
        Ok(())
    }
}

/// `[claim]`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClaimConfig {
    /// How long a device has to confirm a claim.
    #[serde(with = "span")]
    pub expiry: Duration,
    /// Confirmations with a wrong nonce before the claim is refused.
    pub max_attempts: u32,
    /// Confirmations one device may send within `confirmation_window`.
    pub max_confirmations_per_window: u32,
    /// The sliding window of that limit.
    #[serde(with = "span")]
    pub confirmation_window: Duration,
}

impl Default for ClaimConfig {
    fn default() -> Self {
        let p = rampart_provisioning::claim::ClaimPolicy::default();
        Self {
            expiry: p.expiry,
            max_attempts: p.max_attempts,
            max_confirmations_per_window: 10,
            confirmation_window: Duration::from_secs(60),
        }
    }
}

impl RenewalConfig {
    /// The limiter's policy.
    pub fn policy(&self) -> rampart_provisioning::limit::RatePolicy {
        rampart_provisioning::limit::RatePolicy {
            max_per_window: self.max_per_window,
            window: self.window,
        }
    }
}

impl ClaimConfig {
    /// The claim policy.
    pub fn policy(&self) -> rampart_provisioning::claim::ClaimPolicy {
        rampart_provisioning::claim::ClaimPolicy {
            expiry: self.expiry,
            max_attempts: self.max_attempts,
        }
    }

    /// The limit on confirmations.
    pub fn confirmation_limit(&self) -> rampart_provisioning::limit::RatePolicy {
        rampart_provisioning::limit::RatePolicy {
            max_per_window: self.max_confirmations_per_window,
            window: self.confirmation_window,
        }
    }
}

/// `[pki]`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PkiConfig {
    /// Name used in the CA subjects ("<name> Root CA", "<name> Issuing CA").
    pub ca_name: String,
    /// Validity of device certificates, in days.
    pub device_validity_days: u32,
    /// Validity of the server certificate, in days.
    pub server_validity_days: u32,
    /// Server certificate names; empty means localhost, 127.0.0.1, ::1 and the host name.
    pub server_sans: Vec<String>,
    /// How long a published CRL stays valid; it is re-signed at half this.
    #[serde(with = "span")]
    pub crl_validity: Duration,
    /// Server certificate (PEM chain) to use instead of the one Rampart issues.
    pub server_cert: Option<PathBuf>,
    /// Key of `server_cert` (PEM).
    pub server_key: Option<PathBuf>,
    /// Environment variable holding the CA key passphrase (keys are encrypted when it is set).
    pub key_passphrase_env: String,
    /// File holding the CA key passphrase (alternative to the variable).
    pub key_passphrase_file: Option<PathBuf>,
}

impl Default for PkiConfig {
    fn default() -> Self {
        Self {
            ca_name: "Rampart".into(),
            device_validity_days: 365,
            server_validity_days: 397,
            server_sans: Vec::new(),
            server_cert: None,
            server_key: None,
            crl_validity: Duration::from_secs(7 * 24 * 3600),
            key_passphrase_env: "RAMPART_CA_PASSPHRASE".into(),
            key_passphrase_file: None,
        }
    }
}

/// `[store]`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// PostgreSQL URL; empty means SQLite in the data dir.
    pub url: StoreUrl,
    /// How long a writer waits for another process holding the database.
    #[serde(with = "span")]
    pub busy_timeout: Duration,
    /// SQLite only: how the store's writer and checkpoint threads are
    /// scheduled: `adaptive` (default; Linux `SCHED_IDLE` with a standby
    /// thread that takes over starved writes), `normal`, or `idle`.
    pub writer_priority: WriterPriority,
    /// SQLite, `adaptive` only: how long a write may wait for the idle
    /// writer before the standby thread takes the queue over.
    #[serde(with = "span")]
    pub writer_takeover_after: Duration,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            url: StoreUrl::default(),
            busy_timeout: Duration::from_secs(10),
            writer_priority: WriterPriority::Adaptive,
            writer_takeover_after: rampart_store::sqlite::WRITER_TAKEOVER_AFTER,
        }
    }
}

/// `store.url`: a database URL that may carry a password, so its `Debug`
/// form hides it. Serialised as the plain string (`config show` redacts it
/// itself, see [`StoreUrl::redacted`]).
#[derive(Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct StoreUrl(String);

impl StoreUrl {
    /// The URL as configured, password included: only for connecting.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether no URL is set (SQLite in the data dir).
    pub fn is_empty(&self) -> bool {
        self.0.trim().is_empty()
    }

    /// The URL with any password replaced by `***`.
    pub fn redacted(&self) -> Self {
        Self(rampart_store::postgres::redact_url(&self.0))
    }
}

impl std::fmt::Debug for StoreUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&rampart_store::postgres::redact_url(&self.0), f)
    }
}

/// `[serve]`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServeConfig {
    /// How often the server checks the store for changes made by the CLI.
    #[serde(with = "span")]
    pub change_poll_interval: Duration,
    /// How long an orderly shutdown may take before parts are abandoned.
    #[serde(with = "span")]
    pub shutdown_timeout: Duration,
    /// How often certificate, key, CA and CRL files are checked for
    /// changes; changed files are loaded without a restart.
    #[serde(with = "span")]
    pub tls_reload_interval: Duration,
}

impl Default for ServeConfig {
    fn default() -> Self {
        Self {
            change_poll_interval: Duration::from_millis(100),
            shutdown_timeout: Duration::from_secs(10),
            tls_reload_interval: Duration::from_secs(30),
        }
    }
}

/// `[telemetry]`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// Largest telemetry or state payload, in bytes.
    pub max_payload_bytes: usize,
    /// Most metrics in one reading.
    pub max_metrics: usize,
    /// Most readings in one batch message.
    pub max_batch: usize,
    /// Most messages in one group-commit transaction.
    pub commit_max_items: usize,
    /// Least time between the starts of two group commits under load
    /// (zero: back to back).
    #[serde(with = "span")]
    pub commit_interval: Duration,
    /// How long raw points are kept.
    #[serde(with = "span")]
    pub raw_retention: Duration,
    /// How long one-minute rollups are kept.
    #[serde(with = "span")]
    pub minute_retention: Duration,
    /// How long hourly rollups are kept (absent: forever). Daily rollups
    /// are kept forever.
    #[serde(
        with = "span::option",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub hour_retention: Option<Duration>,
    /// How long presence history is kept.
    #[serde(with = "span")]
    pub presence_retention: Duration,
    /// Archive raw points to compressed files in the data dir before
    /// deleting them.
    pub archive: bool,
    /// How often retention runs.
    #[serde(with = "span")]
    pub retention_interval: Duration,
    /// Push stored points to InfluxDB (absent: no push).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub influx: Option<InfluxConfig>,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        let limits = rampart_proto::telemetry::Limits::default();
        Self {
            max_payload_bytes: limits.max_payload_bytes,
            max_metrics: limits.max_metrics,
            max_batch: limits.max_batch,
            commit_max_items: 4096,
            commit_interval: rampart_ingest::commit::MIN_INTERVAL,
            raw_retention: Duration::from_secs(30 * 86_400),
            minute_retention: Duration::from_secs(365 * 86_400),
            hour_retention: None,
            presence_retention: Duration::from_secs(365 * 86_400),
            archive: true,
            retention_interval: Duration::from_secs(3600),
            influx: None,
        }
    }
}

/// `[telemetry.influx]`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InfluxConfig {
    /// The write endpoint: v1 `http://host:8086/write?db=D` or v2
    /// `https://host:8086/api/v2/write?org=O&bucket=B`.
    pub url: String,
    /// Environment variable holding the API token (sent as
    /// `Authorization: Token ...`); unset: no token.
    #[serde(default = "default_influx_token_env")]
    pub token_env: String,
    /// Measurement name.
    #[serde(default = "default_influx_measurement")]
    pub measurement: String,
    /// A CA certificate (PEM) to trust for the endpoint, besides the
    /// public roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
}

fn default_influx_token_env() -> String {
    "RAMPART_INFLUX_TOKEN".into()
}

fn default_influx_measurement() -> String {
    "telemetry".into()
}

/// `[log]`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `text` or `json`.
    pub format: LogFormat,
    /// Base level filter (`info`, `debug`, or a full `tracing` filter); `-v`/`-q` shift it.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
            level: "info".into(),
        }
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// A commented configuration file holding every default.
pub const EXAMPLE: &str = r#"# Rampart configuration. Every key is optional; the values shown are the
# defaults. Any key can be overridden by an environment variable named
# RAMPART_ + the key path upper-cased with "__" between levels, e.g.
# RAMPART_PKI__DEVICE_VALIDITY_DAYS=90.

[pki]
# Name used in the CA subjects ("<name> Root CA", "<name> Issuing CA").
ca_name = "Rampart"
# Validity of device certificates issued from CSRs, in days.
device_validity_days = 365
# Validity of the server certificate, in days (browsers accept at most 398).
server_validity_days = 397
# Names in the server certificate. Empty: localhost, 127.0.0.1, ::1 and this
# machine's host name. Add the name devices use to reach the server.
server_sans = []
# A server certificate issued elsewhere (e.g. by an external CA imported
# with `ca import` without its key, or a public CA), used instead of the one
# Rampart issues. Both or neither.
# server_cert = "/etc/rampart/server.crt"
# server_key = "/etc/rampart/server.key"
# How long a published CRL stays valid; Rampart re-signs it at half this.
crl_validity = "7days"
# Environment variable holding the passphrase that encrypts the CA keys.
# When it is set (or key_passphrase_file is), CA keys are stored encrypted.
key_passphrase_env = "RAMPART_CA_PASSPHRASE"
# File holding that passphrase instead (first line is used).
# key_passphrase_file = "/run/secrets/rampart-ca"

[store]
# Where the registry, the audit log and the broker's sessions live. Empty:
# SQLite in the data dir (rampart.db). A PostgreSQL URL moves them into that
# database, e.g. for several `serve` replicas sharing one registry:
#   url = "postgres://rampart:PASSWORD@db.internal:5432/rampart"
# The user needs to create tables in the database's schema on first start.
# The CA and the audit key stay in the data dir: replicas share copies of
# it. Put the password in RAMPART_STORE__URL rather than this file if you
# prefer; it is never logged, and `config show` prints it as ***.
url = ""
# How long a write waits for another process (the CLI, a second tool)
# holding the database, or one of its locks, before giving up.
busy_timeout = "10s"
# SQLite only: how the threads that write the database (group commits,
# registry changes, WAL checkpoints) are scheduled.
# "adaptive" (default): Linux SCHED_IDLE while they keep up, so that MQTT
# delivery rarely waits behind a commit (delivery p99 halved at 3,000 msg/s
# on the 2-core bench host, see BENCHMARKS.md); when a write has waited
# longer than writer_takeover_after, a thread with the fair share of the
# CPU takes the writes over until CPU time is free again, so storage never
# stalls behind CPU-bound neighbours. Acknowledgements wait a little longer
# under load.
# "normal": the fair share of the CPU all the time.
# "idle": SCHED_IDLE without the takeover: next to a CPU-bound process on
# the same machine storage nearly stops, and with it every acknowledgement.
writer_priority = "adaptive"
# With "adaptive": how long a write may wait for the idle writer before
# the fair-share thread takes over (1ms to 10s).
writer_takeover_after = "50ms"

[serve]
# How often a running server picks up changes made by the CLI (revocations,
# disables, ...). Changes apply within this interval.
change_poll_interval = "100ms"
# How long an orderly shutdown may take.
shutdown_timeout = "10s"
# How often the server certificate, key, CA and CRL files are checked for
# changes (e.g. a renewed certificate); changes load without a restart.
tls_reload_interval = "30s"

[broker]
# Also offer TLS 1.2 for older device stacks. TLS 1.2 sends the client
# certificate in clear: anyone on the path learns the device id.
tls12 = false
# Most simultaneous connections.
max_connections = 100000
# A TLS handshake plus CONNECT must finish within this (slowloris).
handshake_timeout = "10s"
# New connections per second from one IP address (0: no limit).
connection_rate_per_ip = 50
# Addresses exempt from that limit, e.g. ["127.0.0.1", "::1"].
rate_limit_exempt = []
# Largest packet accepted from a client, in bytes.
max_packet_size = 262144
# QoS 1/2 messages in flight to one client (MQTT 5 receive maximum).
max_inflight = 64
# Messages queued per client before the overflow policy applies: QoS 0
# messages are dropped first, then the oldest; every drop is counted.
max_queued_messages = 1000
# How long each copy queued for a persistent session waits for its subscriber
# to acknowledge it before it is written: a copy delivered and acknowledged
# meanwhile is never written ("0s" writes at once; adds up to this to such a
# PUBACK).
delivery_grace = "2ms"
# Topic aliases a v5 client may use (0 disables them).
topic_alias_maximum = 32
# Longest session expiry; also the expiry of MQTT 3.1.1 persistent sessions.
max_session_expiry = "7days"
# Keepalive imposed on clients that ask for none or more, in seconds.
max_keepalive_secs = 3600
# Extra access rules, added to the defaults (devices publish to
# devices/{cn}/+/up and subscribe to devices/{cn}/+/down; services subscribe
# to devices/# and publish devices/+/cmd/down and devices/+/state/down):
# [[broker.acl]]
# identity = "device"          # "device", "service", or one exact identity name
# access = "readwrite"         # "publish", "subscribe" or "readwrite"
# topic = "devices/{cn}/#"     # {cn} = the connecting identity

[web]
# The HTTPS server (--http-addr, default :8443): the console, the JSON API,
# device enrollment. It presents the same server certificate
# as the broker.
# Also offer TLS 1.2 (TLS 1.3 only otherwise).
tls12 = false
# The TLS handshake, and then each request's headers, must arrive within
# this (slowloris).
handshake_timeout = "10s"
# Most simultaneous connections; more are closed at once.
max_connections = 1024
# Largest request body, in bytes.
max_body_bytes = 65536
# Failed enrollments (bad token, CSR or id) one source address may make in
# a burst before it is answered 429 with Retry-After; then one more per
# enroll_failure_refill. Successful enrollments never count, so a fleet
# behind one address is not slowed. 0 disables the limit (not advised).
enroll_failure_burst = 10
enroll_failure_refill = "6s"
# A device whose enrollment answer was lost asks again with the same token
# and key: within this, and until it first connects, it is answered with
# the same certificate (and a new claim code) instead of "id taken".
# "0s" never answers twice.
enroll_repeat_window = "15m"
# /metrics (Prometheus text format) is served only with one of these.
# A bearer token scrapers send as "Authorization: Bearer <token>", at
# least 16 characters; better set in RAMPART_WEB_METRICS_TOKEN than here.
# metrics_token = "..."
# A separate plain-HTTP address serving /metrics, /healthz and /readyz
# only, for a scraper on a trusted network (the token is required there
# too when set).
# metrics_addr = "127.0.0.1:9464"
# Console sign-in. Owners and admins must use a TOTP second factor (until
# they enrol one, they can do nothing else).
require_mfa_for_admins = false
# A session ends after this long without a request, and this long after
# sign-in whatever happens.
session_idle_timeout = "30m"
session_absolute_timeout = "12h"
# Failed sign-ins in a row that lock an account, and for how long (0: never).
login_max_failures = 5
login_lockout = "15m"
# Failed sign-ins one source address may make in a burst before it is
# answered 429; then one more per login_failure_refill. Kept in memory.
login_failure_burst = 20
login_failure_refill = "30s"
# How long an invitation link stays valid.
invite_valid_for = "7days"
# Origins whose pages may call the API with an API token (never with the
# session cookie), e.g. ["https://tools.example.com"]. Empty: none.
cors_allowed_origins = []

[telemetry]
# Largest telemetry or state payload, in bytes.
max_payload_bytes = 65536
# Most metrics in one reading, and readings in one batch message.
max_metrics = 64
max_batch = 1000
# Most messages committed in one transaction (group commit).
commit_max_items = 4096
# Least time between the starts of two commits under load: a commit that
# would follow the previous one sooner waits and takes in what arrives
# meanwhile (fewer fsyncs per message); after a pause commits start at
# once. "0s": back to back; at most "1s".
commit_interval = "2ms"
# Retention per resolution. Daily rollups are kept forever; hourly ones too
# unless hour_retention is set.
raw_retention = "30days"
minute_retention = "365days"
# hour_retention = "5years"
presence_retention = "365days"
# Write raw points leaving retention to compressed files under archive/ in
# the data dir before deleting them.
archive = true
retention_interval = "1h"
# Push every stored point to InfluxDB (v1 /write or v2 /api/v2/write),
# through a durable outbox: nothing is lost while InfluxDB is down.
# [telemetry.influx]
# url = "https://influx.example:8086/api/v2/write?org=acme&bucket=fleet"
# token_env = "RAMPART_INFLUX_TOKEN"
# measurement = "telemetry"
# ca_file = "/etc/rampart/influx-ca.pem"

[renewal]
# Devices renew their certificate by sending a CSR for a new key on
# devices/{id}/cert/up. Requests one device may make per window (malformed
# and refused ones count); more are answered "rate_limited".
max_per_window = 3
window = "1h"

[claim]
# How long a device has to confirm a claim (`rampart device claim`) with
# the nonce sent on devices/{id}/bind/down.
expiry = "10m"
# Confirmations with a wrong nonce before the claim is refused.
max_attempts = 5
# Confirmations one device may send per window; more are answered
# "rate_limited" without being checked.
max_confirmations_per_window = 10
confirmation_window = "1m"

[alerts]
# Time limit of one webhook request, connection included. A receiver
# that hangs holds up only its own notifications.
delivery_timeout = "10s"
# Failed deliveries are retried with exponential backoff from retry_base,
# doubling up to retry_cap (with jitter, honouring Retry-After), and go
# to the dead letters (console, `rampart alert dead-letters`) after
# max_attempts attempts (about a day with these values).
retry_base = "5s"
retry_cap = "15m"
max_attempts = 100
max_concurrent_deliveries = 16
# Redirects followed, each checked like the original URL (https, public).
max_redirects = 3
# Flapping suppression: an offline event counts only this much later, so
# a device back within it raises nothing. "0s" turns it off; a rule's own
# `for` duration already debounces.
presence_hold_down = "0s"
# The console's public URL, for links in notifications, e.g.
# console_url = "https://rampart.example.net:8443"
#
# Channels and rules can live here too (created when `serve` starts; a
# rule whose expression, scope or channel changed is replaced). A channel's
# URL is a secret: it is read from an environment variable.
# [[alerts.channels]]
# name = "ops-discord"
# kind = "discord"                  # or "slack", "json"
# url_env = "RAMPART_OPS_DISCORD_URL"
# [[alerts.rules]]
# name = "greenhouse-hot"
# expr = "temperature > 30 for 5m hysteresis 1"
# channel = "ops-discord"
# device = "greenhouse-1"           # or owner = "user:ann"; neither: fleet

[firmware]
# Largest firmware image `rampart firmware upload` and the console's
# upload (POST /api/v1/firmware) accept, in bytes (16 MiB, the largest
# ESP32 app partition). Larger bundles are refused
# before their signature is checked.
max_image_size = 16777216

[ota]
# Firmware offers and campaigns (docs/ota.md). How often the rollout engine
# times out devices, applies thresholds and starts waves.
tick = "1s"
# Lifetime of the download URL in an offer.
download_token_ttl = "1h"
# Base of download URLs in offers, as devices reach the HTTPS listener;
# by default derived from --http-addr.
# public_url = "https://rampart.example.net:8443"
# Defaults of new campaigns: how long a device may stay in each state
# before it counts as failed(timeout-<state>).
offered_timeout = "1h"
downloading_timeout = "1h"
verifying_timeout = "5m"
pending_reboot_timeout = "10m"
pending_confirm_timeout = "15m"
# Failures (failed + rolled back) reaching this share of the devices
# offered so far abort a campaign; a finished wave whose success share is
# below the success threshold pauses it.
default_failure_threshold = 0.1
default_success_threshold = 0.9
# Minimum time between a wave finishing and the next starting.
default_soak = "10m"

[log]
# "text" or "json".
format = "text"
# Base level: error, warn, info, debug, trace, or a tracing filter such as
# "info,rampart_store=debug". -v and -q shift it.
level = "info"
"#;

impl Config {
    /// Loads `file` (if any), applies environment overrides, validates.
    pub fn load(file: Option<&Path>) -> Result<Self> {
        Self::load_with_env(file, std::env::vars())
    }

    /// [`Config::load`] with an explicit environment (for tests).
    pub fn load_with_env(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self> {
        let mut table = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read config file {}", path.display()))?;
                toml::from_str::<toml::Table>(&text)
                    .with_context(|| format!("config file {} is not valid TOML", path.display()))?
            }
            None => toml::Table::new(),
        };
        let mut from_env = Vec::new();
        let mut metrics_token = None;
        for (name, raw) in env {
            // The one secret of `[web]` also has a plain name (no `__`).
            if name == METRICS_TOKEN_ENV {
                metrics_token = Some(raw);
                continue;
            }
            let Some(path) = name.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            // Variables without `__` are command-line flags (RAMPART_DATA_DIR, ...).
            if !path.contains("__") {
                continue;
            }
            let keys: Vec<String> = path.split("__").map(str::to_ascii_lowercase).collect();
            set_path(&mut table, &keys, parse_env_value(&raw))
                .with_context(|| format!("environment variable {name}"))?;
            from_env.push((keys.join("."), name));
        }
        let config: Config =
            serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
                let key = e.path().to_string();
                let origin = from_env
                    .iter()
                    .find(|(k, _)| key.starts_with(k.as_str()) || k.starts_with(key.as_str()))
                    .map(|(_, var)| format!(" (from environment variable {var})"))
                    .or_else(|| file.map(|f| format!(" (in {})", f.display())))
                    .unwrap_or_default();
                anyhow::anyhow!("invalid configuration key '{key}'{origin}: {}", e.inner())
            })?;
        let mut config = config;
        if let Some(token) = metrics_token.filter(|t| !t.is_empty()) {
            config.web.metrics_token = Some(rampart_web::MetricsToken::new(token));
        }
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<()> {
        if self.pki.device_validity_days == 0 || self.pki.device_validity_days > 3650 {
            bail!("pki.device_validity_days must be between 1 and 3650");
        }
        if self.pki.server_validity_days == 0 || self.pki.server_validity_days > 3650 {
            bail!("pki.server_validity_days must be between 1 and 3650");
        }
        if self.pki.crl_validity < Duration::from_secs(3600) {
            bail!("pki.crl_validity must be at least 1h");
        }
        if self.pki.server_cert.is_some() != self.pki.server_key.is_some() {
            bail!("pki.server_cert and pki.server_key go together: set both or neither");
        }
        if !self.store.url.is_empty()
            && !rampart_store::postgres::is_postgres_url(self.store.url.expose())
        {
            bail!(
                "store.url must be a postgres:// or postgresql:// URL, or empty for SQLite in the data dir (got '{}')",
                self.store.url.redacted().expose()
            );
        }
        self.web.validate().map_err(anyhow::Error::msg)?;
        if self.serve.change_poll_interval.is_zero() {
            bail!("serve.change_poll_interval must be greater than zero");
        }
        if self.renewal.max_per_window == 0 || self.renewal.window.is_zero() {
            bail!(
                "renewal.max_per_window and renewal.window must be greater than zero (devices could never renew)"
            );
        }
        if self.claim.expiry.is_zero() || self.claim.max_attempts == 0 {
            bail!("claim.expiry and claim.max_attempts must be greater than zero");
        }
        if self.claim.max_confirmations_per_window == 0 || self.claim.confirmation_window.is_zero()
        {
            bail!(
                "claim.max_confirmations_per_window and claim.confirmation_window must be greater than zero"
            );
        }
        if self.telemetry.commit_interval > MAX_COMMIT_INTERVAL {
            bail!(
                "telemetry.commit_interval must be at most 1s (every acknowledgement under load waits up to that long; got {})",
                span::format(self.telemetry.commit_interval)
            );
        }
        let takeover = self.store.writer_takeover_after;
        if takeover < Duration::from_millis(1) || takeover > MAX_WRITER_TAKEOVER_AFTER {
            bail!(
                "store.writer_takeover_after must be between 1ms and 10s (got {})",
                span::format(takeover)
            );
        }
        self.ota.validate()?;
        Ok(())
    }
}

/// Longest `telemetry.commit_interval`: beyond it devices would wait
/// seconds for acknowledgements and resend.
const MAX_COMMIT_INTERVAL: Duration = Duration::from_secs(1);

/// Longest `store.writer_takeover_after`: a starved writer would hold
/// every acknowledgement back that long.
const MAX_WRITER_TAKEOVER_AFTER: Duration = Duration::from_secs(10);

fn parse_env_value(raw: &str) -> toml::Value {
    toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_owned()))
}

fn set_path(table: &mut toml::Table, keys: &[String], value: toml::Value) -> Result<()> {
    match keys {
        [] => bail!("empty key"),
        [last] => {
            table.insert(last.clone(), value);
            Ok(())
        }
        [first, rest @ ..] => {
            let entry = table
                .entry(first.clone())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            match entry {
                toml::Value::Table(t) => set_path(t, rest, value),
                _ => bail!("'{first}' is a value, not a section"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn example_holds_exactly_the_defaults() {
        let parsed: Config = toml::from_str(EXAMPLE).expect("example parses");
        assert_eq!(parsed, Config::default());
    }

    #[test]
    fn what_config_show_prints_reads_back_in_the_units_written() {
        let mut config = Config::default();
        config.telemetry.hour_retention = Some(Duration::from_secs(5 * 365 * 86_400));
        // The broker's and the web's sections write theirs the same way.
        config.broker.max_session_expiry = Duration::from_secs(90 * 86_400);
        config.web.invite_valid_for = Duration::from_secs(45 * 86_400 + 12 * 3600);
        let shown = toml::to_string_pretty(&config).expect("serialises");
        for line in [
            "max_session_expiry = \"90days\"",
            "invite_valid_for = \"45days 12h\"",
            "minute_retention = \"365days\"",
            "hour_retention = \"1825days\"",
            "commit_interval = \"2ms\"",
        ] {
            assert!(shown.contains(line), "{line} not in {shown}");
        }
        assert!(!shown.contains("month"), "{shown}");
        let back: Config = toml::from_str(&shown).expect("reads back");
        assert_eq!(back, config);
    }

    #[test]
    fn ota_keys_come_from_the_environment_and_are_checked() {
        let c = Config::load_with_env(
            None,
            env(&[
                ("RAMPART_OTA__TICK", "250ms"),
                ("RAMPART_OTA__PUBLIC_URL", "https://iot.example.com:8443"),
                ("RAMPART_OTA__DEFAULT_FAILURE_THRESHOLD", "0.25"),
                ("RAMPART_OTA__OFFERED_TIMEOUT", "30s"),
            ]),
        )
        .expect("valid");
        assert_eq!(c.ota.tick, Duration::from_millis(250));
        assert_eq!(
            c.ota.public_url.as_deref(),
            Some("https://iot.example.com:8443")
        );
        assert_eq!(c.ota.default_failure_threshold, 0.25);
        assert_eq!(c.ota.timeouts().offered, Duration::from_secs(30));
        for (var, value, key) in [
            ("RAMPART_OTA__TICK", "0s", "ota.tick"),
            (
                "RAMPART_OTA__DEFAULT_SUCCESS_THRESHOLD",
                "1.5",
                "ota.default_success_threshold",
            ),
            (
                "RAMPART_OTA__PUBLIC_URL",
                "http://plain:80",
                "ota.public_url",
            ),
            ("RAMPART_OTA__VERIFYING_TIMEOUT", "0s", "ota.*_timeout"),
        ] {
            let err = Config::load_with_env(None, env(&[(var, value)]))
                .expect_err("refused")
                .to_string();
            assert!(err.contains(key), "{var}={value}: {err}");
        }
    }

    #[test]
    fn the_commit_interval_is_bounded() {
        let c = Config::load_with_env(None, env(&[("RAMPART_TELEMETRY__COMMIT_INTERVAL", "0s")]))
            .expect("zero: back to back");
        assert_eq!(c.telemetry.commit_interval, Duration::ZERO);
        let err = Config::load_with_env(None, env(&[("RAMPART_TELEMETRY__COMMIT_INTERVAL", "2s")]))
            .expect_err("refused")
            .to_string();
        assert!(err.contains("telemetry.commit_interval"), "{err}");
    }

    #[test]
    fn the_writer_priority_is_adaptive_unless_another_is_asked_for() {
        let c = Config::load_with_env(None, env(&[])).expect("defaults");
        assert_eq!(c.store.writer_priority, WriterPriority::Adaptive);
        assert_eq!(c.store.writer_takeover_after, Duration::from_millis(50));
        for (value, expected) in [
            ("normal", WriterPriority::Normal),
            ("idle", WriterPriority::Idle),
        ] {
            let c = Config::load_with_env(None, env(&[("RAMPART_STORE__WRITER_PRIORITY", value)]))
                .expect(value);
            assert_eq!(c.store.writer_priority, expected);
        }
        let c = Config::load_with_env(
            None,
            env(&[("RAMPART_STORE__WRITER_TAKEOVER_AFTER", "200ms")]),
        )
        .expect("bound");
        assert_eq!(c.store.writer_takeover_after, Duration::from_millis(200));
        let err = Config::load_with_env(None, env(&[("RAMPART_STORE__WRITER_PRIORITY", "low")]))
            .expect_err("refused")
            .to_string();
        assert!(err.contains("store.writer_priority"), "{err}");
        for bad in ["0s", "11s"] {
            let err =
                Config::load_with_env(None, env(&[("RAMPART_STORE__WRITER_TAKEOVER_AFTER", bad)]))
                    .expect_err("refused")
                    .to_string();
            assert!(err.contains("store.writer_takeover_after"), "{bad}: {err}");
        }
    }

    #[test]
    fn env_overrides_nested_keys() {
        let c = Config::load_with_env(
            None,
            env(&[
                ("RAMPART_PKI__DEVICE_VALIDITY_DAYS", "90"),
                ("RAMPART_STORE__BUSY_TIMEOUT", "2s"),
                (
                    "RAMPART_PKI__SERVER_SANS",
                    r#"["iot.example.com", "10.0.0.5"]"#,
                ),
                ("RAMPART_DATA_DIR", "/ignored/flag"),
            ]),
        )
        .expect("valid");
        assert_eq!(c.pki.device_validity_days, 90);
        assert_eq!(c.store.busy_timeout, Duration::from_secs(2));
        assert_eq!(c.pki.server_sans, ["iot.example.com", "10.0.0.5"]);
        assert!(c.store.url.is_empty());
    }

    #[test]
    fn web_limits_come_from_the_environment_and_are_checked() {
        let c = Config::load_with_env(
            None,
            env(&[
                ("RAMPART_WEB__ENROLL_FAILURE_BURST", "500"),
                ("RAMPART_WEB__ENROLL_FAILURE_REFILL", "100ms"),
                ("RAMPART_WEB__HANDSHAKE_TIMEOUT", "2s"),
            ]),
        )
        .expect("valid");
        assert_eq!(c.web.enroll_failure_burst, 500);
        assert_eq!(c.web.enroll_failure_refill, Duration::from_millis(100));
        assert_eq!(c.web.handshake_timeout, Duration::from_secs(2));
        for (var, value, key) in [
            ("RAMPART_WEB__MAX_CONNECTIONS", "0", "web.max_connections"),
            (
                "RAMPART_WEB__HANDSHAKE_TIMEOUT",
                "0s",
                "web.handshake_timeout",
            ),
            ("RAMPART_WEB__MAX_BODY_BYTES", "10", "web.max_body_bytes"),
        ] {
            let msg = format!(
                "{:#}",
                Config::load_with_env(None, env(&[(var, value)])).expect_err("refused")
            );
            assert!(msg.contains(key), "{msg}");
        }
    }

    #[test]
    fn store_url_from_env_selects_postgres_and_hides_its_password() {
        let url = "postgres://rampart:s3cret@db.internal:5432/rampart";
        let c = Config::load_with_env(None, env(&[("RAMPART_STORE__URL", url)])).expect("valid");
        assert_eq!(c.store.url.expose(), url);
        let debug = format!("{c:?}");
        assert!(!debug.contains("s3cret"), "{debug}");
        assert!(debug.contains("rampart:***@db.internal"), "{debug}");

        let msg = format!(
            "{:#}",
            Config::load_with_env(
                None,
                env(&[("RAMPART_STORE__URL", "mysql://u:s3cret@h/db")])
            )
            .expect_err("not postgres")
        );
        assert!(msg.contains("postgres://"), "{msg}");
        assert!(!msg.contains("s3cret"), "{msg}");
    }

    #[test]
    fn unknown_keys_are_named() {
        let err = Config::load_with_env(None, env(&[("RAMPART_PKI__DEVICE_VALIDITY", "90")]))
            .expect_err("unknown key");
        let msg = format!("{err:#}");
        assert!(msg.contains("device_validity"), "{msg}");
        assert!(msg.contains("RAMPART_PKI__DEVICE_VALIDITY"), "{msg}");

        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("c.toml");
        std::fs::write(&file, "[store]\nbusy_timeout = \"1s\"\nbogus = 1\n").expect("write");
        let msg = format!(
            "{:#}",
            Config::load_with_env(Some(&file), []).expect_err("bogus")
        );
        assert!(msg.contains("bogus"), "{msg}");

        std::fs::write(&file, "[nosuchsection]\nx = 1\n").expect("write");
        let msg = format!(
            "{:#}",
            Config::load_with_env(Some(&file), []).expect_err("section")
        );
        assert!(msg.contains("nosuchsection"), "{msg}");
    }

    #[test]
    fn corrupt_file_and_bad_values_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("c.toml");
        std::fs::write(&file, "[pki\nca_name = ").expect("write");
        let msg = format!(
            "{:#}",
            Config::load_with_env(Some(&file), []).expect_err("corrupt")
        );
        assert!(msg.contains("not valid TOML"), "{msg}");

        let msg = format!(
            "{:#}",
            Config::load_with_env(None, env(&[("RAMPART_STORE__BUSY_TIMEOUT", "soon")]))
                .expect_err("bad duration")
        );
        assert!(msg.contains("store.busy_timeout"), "{msg}");
    }
}
