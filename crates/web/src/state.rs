//! What every handler shares: the store, the CA, the limits, the counters.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use rampart_pki::Pki;
use rampart_store::Store;

use crate::config::WebConfig;
use crate::limit::FailureLimiter;
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
}

impl AppState {
    /// State serving `store` and `pki` with the limits of `config`, over `tls`.
    pub fn new(store: Arc<dyn Store>, pki: Arc<Pki>, config: WebConfig, tls: ServerTls) -> Self {
        Self {
            inner: Arc::new(Inner {
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
}

impl WebMetrics {
    /// Adds one to `counter`.
    pub(crate) fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
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
    }
}
