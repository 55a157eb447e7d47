//! What every handler shares: the store, the CA, the limits, the counters.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use rampart_ota::campaign::Timeouts;
use rampart_ota::download::TokenKey;
use rampart_pki::Pki;
use rampart_provisioning::claim::ClaimPolicy;
use rampart_store::campaigns::CampaignStore;
use rampart_store::telemetry::TelemetryStore;
use rampart_store::{AlertStore, FirmwareStore, NotificationStore, Store, UserStore};
use time::OffsetDateTime;

use crate::auth::{Clock, SealingKey};

use crate::config::WebConfig;
use crate::limit::FailureLimiter;
use crate::live::LiveHub;
use crate::metrics::{MetricKind, MetricsText, Monitoring};
use crate::tls::ServerTls;

/// The web part's shared state; cheap to clone.
#[derive(Clone, Debug)]
pub struct AppState {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    store: Arc<dyn Store>,
    pki: Arc<Pki>,
    config: WebConfig,
    tls: ServerTls,
    enroll_failures: FailureLimiter,
    metrics: WebMetrics,
    monitoring: OnceLock<Monitoring>,
    devices: OnceLock<DeviceBackend>,
    ota: OnceLock<OtaBackend>,
    inbox: OnceLock<crate::inbox::InboxHub>,
    campaigns: OnceLock<CampaignBackend>,
    alerts: OnceLock<Alerts>,
    auth: AuthBackend,
    login_failures: FailureLimiter,
    /// The last TOTP step accepted per user: a code is good once.
    totp_steps: Mutex<HashMap<String, i64>>,
    /// Sign-ins waiting for their TOTP code: ticket hash → (user id, expiry).
    mfa_tickets: Mutex<HashMap<String, (String, OffsetDateTime)>>,
    /// Where the audit chain last verified, so `/audit` checks only newer rows.
    audit_chain: crate::audit_chain::ChainMemo,
}

/// The alert store, which has no `Debug` of its own.
struct Alerts(Arc<dyn AlertStore>);

impl std::fmt::Debug for Alerts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AlertStore")
    }
}

/// Publishes the CRL after a revocation, so that new TLS handshakes refuse
/// the certificate (the broker cuts live sessions from the change feed).
#[async_trait::async_trait]
pub trait CrlPublisher: Send + Sync + std::fmt::Debug {
    /// Signs and writes a fresh CRL from the store's revocations.
    async fn publish_crl(&self) -> Result<(), String>;
}

/// What the device and claim routes need besides the registry store.
#[derive(Clone, Debug)]
pub struct DeviceBackend {
    /// Telemetry: series, points, presence, rejected payloads.
    pub telemetry: Arc<dyn TelemetryStore>,
    /// Live events of committed readings and presence.
    pub live: LiveHub,
    /// Publishes the CRL after a revocation.
    pub crl: Arc<dyn CrlPublisher>,
    /// How claims behave (expiry, attempts).
    pub claim_policy: ClaimPolicy,
}

/// What firmware distribution needs: the uploads, the content-addressed
/// image store, and the key download tokens are checked with.
#[derive(Clone)]
pub struct OtaBackend {
    /// Trusted keys and uploaded firmware.
    pub firmware: Arc<dyn FirmwareStore>,
    /// The image store (`DATA_DIR/firmware`, as `rampart firmware upload`
    /// writes it): one file per image, named by its SHA-256.
    pub images: PathBuf,
    /// Checks download tokens (derived from the console key).
    pub tokens: TokenKey,
    /// Largest image an upload may carry (`firmware.max_image_size`).
    pub max_image_size: u64,
}

impl std::fmt::Debug for OtaBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OtaBackend")
            .field("images", &self.images)
            .field("max_image_size", &self.max_image_size)
            .finish_non_exhaustive()
    }
}

/// What a new campaign takes when its request leaves it out (`[ota]`).
#[derive(Clone, Debug, PartialEq)]
pub struct CampaignDefaults {
    /// Per-state timeouts.
    pub timeouts: Timeouts,
    /// Minimum time between waves.
    pub soak: std::time::Duration,
    /// A finished wave below this success share pauses.
    pub success_threshold: f64,
    /// Failures reaching this share abort.
    pub failure_threshold: f64,
}

/// What the campaign routes need: the campaign store and the defaults.
#[derive(Clone)]
pub struct CampaignBackend {
    /// Campaigns and their per-device entries.
    pub campaigns: Arc<dyn CampaignStore>,
    /// Defaults of new campaigns.
    pub defaults: CampaignDefaults,
}

impl std::fmt::Debug for CampaignBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CampaignBackend")
            .field("defaults", &self.defaults)
            .finish_non_exhaustive()
    }
}

/// What the console's sign-in needs besides the registry store: the user
/// store, users' notifications, the key sealing TOTP secrets, and the clock.
#[derive(Clone, Debug)]
pub struct AuthBackend {
    /// Users, sessions, setup and API tokens.
    pub users: Arc<dyn UserStore>,
    /// What the console tells each user (claims that ended, ...).
    pub notifications: Arc<dyn NotificationStore>,
    /// Seals TOTP secrets at rest (kept outside the database).
    pub sealing_key: SealingKey,
    /// Now (a manual clock in tests).
    pub clock: Clock,
}

impl AppState {
    /// State serving `store` and `pki` with the limits of `config`, over `tls`.
    pub fn new(
        store: Arc<dyn Store>,
        pki: Arc<Pki>,
        config: WebConfig,
        tls: ServerTls,
        auth: AuthBackend,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                login_failures: FailureLimiter::new(
                    config.login_failure_burst,
                    config.login_failure_refill,
                ),
                auth,
                totp_steps: Mutex::new(HashMap::new()),
                mfa_tickets: Mutex::new(HashMap::new()),
                audit_chain: crate::audit_chain::ChainMemo::default(),
                enroll_failures: FailureLimiter::new(
                    config.enroll_failure_burst,
                    config.enroll_failure_refill,
                ),
                store,
                pki,
                config,
                tls,
                metrics: WebMetrics::default(),
                monitoring: OnceLock::new(),
                devices: OnceLock::new(),
                ota: OnceLock::new(),
                inbox: OnceLock::new(),
                campaigns: OnceLock::new(),
                alerts: OnceLock::new(),
            }),
        }
    }

    /// Plugs in the other parts' metrics and readiness checks (see
    /// [`Monitoring`]). Set once, before serving; a second call is ignored
    /// with a warning.
    pub fn with_monitoring(self, monitoring: Monitoring) -> Self {
        if self.inner.monitoring.set(monitoring).is_err() {
            tracing::warn!("monitoring was already set; the new sources are ignored");
        }
        self
    }

    /// The plugged-in metrics and readiness checks.
    pub(crate) fn monitoring(&self) -> &Monitoring {
        static NONE: OnceLock<Monitoring> = OnceLock::new();
        self.inner
            .monitoring
            .get()
            .unwrap_or_else(|| NONE.get_or_init(Monitoring::new))
    }

    /// Plugs in what the device and claim routes need besides the
    /// registry (telemetry, live events, CRL publishing). Set once, before
    /// serving; without it those routes answer 503.
    pub fn with_devices(self, devices: DeviceBackend) -> Self {
        if self.inner.devices.set(devices).is_err() {
            tracing::warn!("the device backend was already set; the new one is ignored");
        }
        self
    }

    /// Plugs in the hub that wakes the notification streams (see
    /// [`crate::inbox`]). Set once, before serving; without it the stream
    /// route answers 503 and the badge refreshes only on page views.
    pub fn with_inbox(self, hub: crate::inbox::InboxHub) -> Self {
        if self.inner.inbox.set(hub).is_err() {
            tracing::warn!("the inbox hub was already set; the new one is ignored");
        }
        self
    }

    /// The hub waking notification streams, when plugged in.
    pub(crate) fn inbox(&self) -> Option<&crate::inbox::InboxHub> {
        self.inner.inbox.get()
    }

    /// The device backend, or a 503 saying it is missing.
    pub(crate) fn devices(&self) -> Result<&DeviceBackend, crate::ApiError> {
        self.inner.devices.get().ok_or_else(|| {
            crate::ApiError::new(
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                "devices_unavailable",
                "this server was started without telemetry; device pages are unavailable",
            )
        })
    }

    /// Plugs in firmware distribution (downloads, firmware API and pages).
    /// Set once, before serving; without it those routes answer 503.
    pub fn with_ota(self, ota: OtaBackend) -> Self {
        if self.inner.ota.set(ota).is_err() {
            tracing::warn!("the OTA backend was already set; the new one is ignored");
        }
        self
    }

    /// The OTA backend, or a 503 saying it is missing.
    pub(crate) fn ota(&self) -> Result<&OtaBackend, crate::ApiError> {
        self.inner.ota.get().ok_or_else(|| {
            crate::ApiError::new(
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                "ota_unavailable",
                "this server was started without firmware distribution",
            )
        })
    }

    /// Plugs in campaigns (API and pages). Set once, before serving;
    /// without it those routes answer 503.
    pub fn with_campaigns(self, campaigns: CampaignBackend) -> Self {
        if self.inner.campaigns.set(campaigns).is_err() {
            tracing::warn!("the campaign backend was already set; the new one is ignored");
        }
        self
    }

    /// Plugs in the alert store (channels, rules, alerts, dead letters).
    /// Set once, before serving; without it the alert routes answer 503.
    pub fn with_alerts(self, alerts: Arc<dyn AlertStore>) -> Self {
        if self.inner.alerts.set(Alerts(alerts)).is_err() {
            tracing::warn!("the alert store was already set; the new one is ignored");
        }
        self
    }

    /// The campaign backend, or a 503 saying it is missing.
    pub(crate) fn campaigns(&self) -> Result<&CampaignBackend, crate::ApiError> {
        self.inner.campaigns.get().ok_or_else(|| {
            crate::ApiError::new(
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                "campaigns_unavailable",
                "this server was started without update campaigns",
            )
        })
    }

    /// The alert store, or a 503 saying it is missing.
    pub(crate) fn alerts(&self) -> Result<&dyn AlertStore, crate::ApiError> {
        self.inner
            .alerts
            .get()
            .map(|a| a.0.as_ref())
            .ok_or_else(|| {
                crate::ApiError::new(
                    axum::http::StatusCode::SERVICE_UNAVAILABLE,
                    "alerts_unavailable",
                    "this server was started without alerts",
                )
            })
    }

    /// The store.
    pub fn store(&self) -> &dyn Store {
        self.inner.store.as_ref()
    }

    /// The CA.
    pub fn pki(&self) -> &Arc<Pki> {
        &self.inner.pki
    }

    /// The limits in force.
    pub fn config(&self) -> &WebConfig {
        &self.inner.config
    }

    /// The TLS acceptor (reload it to change the certificate).
    pub fn tls(&self) -> &ServerTls {
        &self.inner.tls
    }

    /// Failed enrollments per source address.
    pub(crate) fn enroll_failures(&self) -> &FailureLimiter {
        &self.inner.enroll_failures
    }

    /// The counters.
    pub fn metrics(&self) -> &WebMetrics {
        &self.inner.metrics
    }

    /// The user store.
    pub fn users(&self) -> &dyn UserStore {
        self.inner.auth.users.as_ref()
    }

    /// The audit chain's last verified position.
    pub(crate) fn audit_chain(&self) -> &crate::audit_chain::ChainMemo {
        &self.inner.audit_chain
    }

    /// Users' notifications.
    pub fn notifications(&self) -> &dyn NotificationStore {
        self.inner.auth.notifications.as_ref()
    }

    /// The same, shared (for streams that outlive the request).
    pub(crate) fn notifications_shared(&self) -> Arc<dyn NotificationStore> {
        Arc::clone(&self.inner.auth.notifications)
    }

    /// The key sealing TOTP secrets.
    pub(crate) fn sealing_key(&self) -> &SealingKey {
        &self.inner.auth.sealing_key
    }

    /// The console's clock.
    pub fn clock(&self) -> &Clock {
        &self.inner.auth.clock
    }

    /// Failed sign-ins per source address.
    pub(crate) fn login_failures(&self) -> &FailureLimiter {
        &self.inner.login_failures
    }

    /// Accepts TOTP step `step` for `user_id` unless it (or a later one)
    /// was accepted before: each code signs in once (RFC 6238 §5.2).
    pub(crate) fn use_totp_step(&self, user_id: &str, step: i64) -> bool {
        let Ok(mut steps) = self.inner.totp_steps.lock() else {
            return false;
        };
        match steps.get(user_id) {
            Some(&last) if last >= step => false,
            _ => {
                steps.insert(user_id.to_owned(), step);
                true
            }
        }
    }

    /// Remembers that `user_id` passed the password step; returns the
    /// ticket the TOTP step must bring (valid five minutes).
    pub(crate) fn issue_mfa_ticket(&self, user_id: &str) -> String {
        let ticket = crate::auth::secret::random_token();
        let now = self.clock().now();
        if let Ok(mut t) = self.inner.mfa_tickets.lock() {
            t.retain(|_, (_, expires)| *expires > now);
            t.insert(
                crate::auth::secret::hash(&ticket),
                (user_id.to_owned(), now + time::Duration::minutes(5)),
            );
        }
        ticket
    }

    /// The user whose password step `ticket` proves, used up by this call.
    pub(crate) fn take_mfa_ticket(&self, ticket: &str) -> Option<String> {
        let now = self.clock().now();
        let mut t = self.inner.mfa_tickets.lock().ok()?;
        let (user, expires) = t.remove(&crate::auth::secret::hash(ticket))?;
        (expires > now).then_some(user)
    }
}

/// Counters of the web part, for logs, tests and (later) `/metrics`.
#[derive(Debug, Default)]
pub struct WebMetrics {
    /// TCP connections accepted.
    pub accepted: AtomicU64,
    /// Connections closed at once because `max_connections` were open.
    pub refused_max_connections: AtomicU64,
    /// TLS handshakes that failed or timed out.
    pub handshake_failures: AtomicU64,
    /// Requests answered.
    pub requests: AtomicU64,
    /// Devices enrolled.
    pub enrolled: AtomicU64,
    /// Enrollments answered again (the first answer was lost).
    pub enroll_repeated: AtomicU64,
    /// Enrollments refused (bad token, CSR, id, body).
    pub enroll_refused: AtomicU64,
    /// Requests answered 429.
    pub rate_limited: AtomicU64,
    /// Requests answered, by status class (index 0: 1xx ... 4: 5xx).
    pub responses_by_class: [AtomicU64; 5],
    /// Successful console sign-ins.
    pub logins: AtomicU64,
    /// Failed console sign-ins (wrong name, password or code).
    pub login_failures: AtomicU64,
    /// State-changing requests refused for a missing or wrong CSRF token
    /// or a foreign origin.
    pub csrf_refused: AtomicU64,
    /// Firmware download requests refused, by reason (docs/ota.md §4).
    pub ota_refused: Mutex<BTreeMap<&'static str, u64>>,
    /// Firmware downloads answered with image bytes (200 or 206).
    pub ota_downloads: AtomicU64,
    /// Of those, the ones answering a `Range` (206).
    pub ota_range_requests: AtomicU64,
    /// Firmware downloads answered 304 (`If-None-Match`).
    pub ota_not_modified: AtomicU64,
    /// Image bytes sent.
    pub ota_bytes: AtomicU64,
}

impl WebMetrics {
    /// Adds one to `counter`.
    pub(crate) fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Adds `n` to `counter`.
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Counts a refused firmware download.
    pub(crate) fn ota_refusal(&self, reason: &'static str) {
        if let Ok(mut m) = self.ota_refused.lock() {
            *m.entry(reason).or_default() += 1;
        }
    }

    /// Refused firmware downloads with `reason` so far.
    pub fn ota_refused(&self, reason: &str) -> u64 {
        self.ota_refused
            .lock()
            .map(|m| m.get(reason).copied().unwrap_or_default())
            .unwrap_or_default()
    }

    /// The current value of `counter`.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    /// Counts a response with `status`.
    pub(crate) fn count_response(&self, status: u16) {
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        if let Some(c) = self.responses_by_class.get(class) {
            Self::inc(c);
        }
    }

    /// The web part's figures, names prefixed `rampart_http_`.
    pub fn write_prometheus(&self, t: &mut MetricsText) {
        let g = |c: &AtomicU64| Self::get(c) as f64;
        t.single(
            "rampart_http_connections_accepted_total",
            MetricKind::Counter,
            "TCP connections accepted by the HTTPS server.",
            g(&self.accepted),
        );
        t.single(
            "rampart_http_connections_refused_total",
            MetricKind::Counter,
            "HTTPS connections closed at once because web.max_connections were open.",
            g(&self.refused_max_connections),
        );
        t.single(
            "rampart_http_tls_handshake_failures_total",
            MetricKind::Counter,
            "HTTPS TLS handshakes that failed or timed out.",
            g(&self.handshake_failures),
        );
        t.family(
            "rampart_http_responses_total",
            MetricKind::Counter,
            "HTTPS requests answered, by status class.",
        );
        for (i, class) in ["1xx", "2xx", "3xx", "4xx", "5xx"].iter().enumerate() {
            if let Some(c) = self.responses_by_class.get(i) {
                t.sample("rampart_http_responses_total", &[("class", class)], g(c));
            }
        }
        t.single(
            "rampart_http_rate_limited_total",
            MetricKind::Counter,
            "HTTPS requests answered 429.",
            g(&self.rate_limited),
        );
        t.single(
            "rampart_enrollments_total",
            MetricKind::Counter,
            "Devices enrolled over HTTPS.",
            g(&self.enrolled),
        );
        t.single(
            "rampart_enrollments_refused_total",
            MetricKind::Counter,
            "Enrollments refused (bad token, CSR, id or body).",
            g(&self.enroll_refused),
        );
        t.single(
            "rampart_ota_downloads_total",
            MetricKind::Counter,
            "Firmware downloads answered with image bytes (200 or 206).",
            g(&self.ota_downloads),
        );
        t.single(
            "rampart_ota_download_range_requests_total",
            MetricKind::Counter,
            "Firmware downloads answering a Range request (206).",
            g(&self.ota_range_requests),
        );
        t.single(
            "rampart_ota_download_not_modified_total",
            MetricKind::Counter,
            "Firmware downloads answered 304 Not Modified.",
            g(&self.ota_not_modified),
        );
        t.single(
            "rampart_ota_download_bytes_total",
            MetricKind::Counter,
            "Firmware image bytes sent.",
            g(&self.ota_bytes),
        );
        t.family(
            "rampart_ota_download_refused_total",
            MetricKind::Counter,
            "Firmware download requests refused, by reason.",
        );
        let refused: Vec<(&'static str, u64)> = self
            .ota_refused
            .lock()
            .map(|m| m.iter().map(|(k, v)| (*k, *v)).collect())
            .unwrap_or_default();
        for (reason, n) in refused {
            t.sample(
                "rampart_ota_download_refused_total",
                &[("reason", reason)],
                n as f64,
            );
        }
    }
}
