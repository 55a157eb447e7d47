//! What every handler shares: the store, the CA, the limits, the counters.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use rampart_pki::Pki;
use rampart_store::Store;

use crate::config::WebConfig;
use crate::limit::FailureLimiter;
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
            }),
        }
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
}
