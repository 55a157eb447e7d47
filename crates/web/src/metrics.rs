//! Monitoring: `/metrics` in the Prometheus text exposition format and
//! `/readyz`, on the HTTPS server behind a bearer token, or on a separate
//! plain-HTTP address for scrapers.
//!
//! The web part does not know the broker or the pipeline: the binary hands
//! it [`Monitoring`], a list of metric sources (closures writing into a
//! [`MetricsText`]) and readiness checks. The exposition format is written
//! here, by hand, after the Prometheus text format 0.0.4 specification:
//! `# HELP` and `# TYPE` once per family, label values escaped (`\\`,
//! `\"`, `\n`), one sample per line.

use std::fmt::{self, Write};
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::error::ApiError;
use crate::state::AppState;

/// Content type of the Prometheus text format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The kind of a metric family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    /// Only goes up (names end in `_total`).
    Counter,
    /// Goes up and down.
    Gauge,
    /// A `_sum` and a `_count` (no quantiles).
    Summary,
    /// Cumulative `_bucket` counts by upper bound (`le`), `_sum`, `_count`.
    Histogram,
}

impl MetricKind {
    fn as_str(self) -> &'static str {
        match self {
            MetricKind::Counter => "counter",
            MetricKind::Gauge => "gauge",
            MetricKind::Summary => "summary",
            MetricKind::Histogram => "histogram",
        }
    }
}

/// A Prometheus text exposition being written.
#[derive(Debug, Default)]
pub struct MetricsText {
    out: String,
}

impl MetricsText {
    /// An empty exposition.
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts a family: its `# HELP` and `# TYPE` lines. `name` must be a
    /// valid metric name (`[a-zA-Z_:][a-zA-Z0-9_:]*`); it comes from code,
    /// never from input, and is checked in debug builds.
    pub fn family(&mut self, name: &str, kind: MetricKind, help: &str) -> &mut Self {
        debug_assert!(valid_name(name), "metric name {name:?}");
        let _ = writeln!(self.out, "# HELP {name} {}", escape_help(help));
        let _ = writeln!(self.out, "# TYPE {name} {}", kind.as_str());
        self
    }

    /// One sample of `name` with `labels` (names from code, values escaped).
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) -> &mut Self {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                debug_assert!(valid_name(k), "label name {k:?}");
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{k}=\"{}\"", escape_label(v));
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {}", Value(value));
        self
    }

    /// A family with one unlabelled sample.
    pub fn single(&mut self, name: &str, kind: MetricKind, help: &str, value: f64) -> &mut Self {
        self.family(name, kind, help).sample(name, &[], value)
    }

    /// A summary family `name` with `_sum` and `_count`.
    pub fn summary(&mut self, name: &str, help: &str, sum: f64, count: u64) -> &mut Self {
        self.family(name, MetricKind::Summary, help);
        self.sample(&format!("{name}_sum"), &[], sum);
        self.sample(&format!("{name}_count"), &[], count as f64)
    }

    /// A histogram family `name`: `buckets` are (upper bound, observations
    /// at or below it that fell in no smaller bucket), in increasing order;
    /// they are written cumulatively, then `+Inf` (= `count`), `_sum` and
    /// `_count`.
    pub fn histogram(
        &mut self,
        name: &str,
        help: &str,
        buckets: &[(f64, u64)],
        sum: f64,
        count: u64,
    ) -> &mut Self {
        self.family(name, MetricKind::Histogram, help);
        let bucket = format!("{name}_bucket");
        let mut seen = 0u64;
        for &(le, n) in buckets {
            debug_assert!(le.is_finite(), "bucket bound {le}");
            seen = seen.saturating_add(n);
            let le = Value(le).to_string();
            self.sample(&bucket, &[("le", &le)], seen.min(count) as f64);
        }
        self.sample(&bucket, &[("le", "+Inf")], count as f64);
        self.sample(&format!("{name}_sum"), &[], sum);
        self.sample(&format!("{name}_count"), &[], count as f64)
    }

    /// The text.
    pub fn finish(self) -> String {
        self.out
    }
}

/// A sample value as the format writes it (`NaN`, `+Inf`, `-Inf` spelled out).
struct Value(f64);

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v = self.0;
        if v.is_nan() {
            f.write_str("NaN")
        } else if v.is_infinite() {
            f.write_str(if v > 0.0 { "+Inf" } else { "-Inf" })
        } else if v.fract() == 0.0 && v.abs() < 1e15 {
            write!(f, "{}", v as i64)
        } else {
            write!(f, "{v}")
        }
    }
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// Escapes a label value: backslash, double quote, line feed.
pub fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Escapes help text: backslash and line feed.
fn escape_help(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\n', "\\n")
}

/// Writes some metric families into an exposition.
pub type MetricsSource = Arc<dyn Fn(&mut MetricsText) + Send + Sync>;

/// Says whether a part is ready; `Err` carries the reason shown in `/readyz`.
pub type ReadinessCheck = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

/// What the binary plugs in: the other parts' metrics and readiness.
#[derive(Clone, Default)]
pub struct Monitoring {
    sources: Vec<MetricsSource>,
    checks: Vec<(&'static str, ReadinessCheck)>,
}

impl fmt::Debug for Monitoring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Monitoring")
            .field("sources", &self.sources.len())
            .field(
                "checks",
                &self.checks.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl Monitoring {
    /// Nothing plugged in: `/metrics` shows the web part's own figures,
    /// `/readyz` checks the store only.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a source of metric families.
    pub fn source(mut self, source: impl Fn(&mut MetricsText) + Send + Sync + 'static) -> Self {
        self.sources.push(Arc::new(source));
        self
    }

    /// Adds a readiness check named `part` (`broker`, ...).
    pub fn check(
        mut self,
        part: &'static str,
        check: impl Fn() -> Result<(), String> + Send + Sync + 'static,
    ) -> Self {
        self.checks.push((part, Arc::new(check)));
        self
    }
}

/// The whole exposition: the web part's figures, then every source's.
pub fn render(state: &AppState) -> String {
    let mut text = MetricsText::new();
    state.metrics().write_prometheus(&mut text);
    for source in &state.monitoring().sources {
        source(&mut text);
    }
    text.finish()
}

/// Whether `given` equals `expected`, in time independent of where they
/// differ and of their lengths (both are hashed first).
fn token_matches(given: &str, expected: &str) -> bool {
    let a = Sha256::digest(given.as_bytes());
    let b = Sha256::digest(expected.as_bytes());
    a.ct_eq(&b).into()
}

/// `GET /metrics` on the HTTPS server: needs `web.metrics_token`.
pub(crate) async fn metrics_https(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if state.config().metrics_token.is_none() {
        let message = match state.config().metrics_addr {
            Some(addr) => format!("metrics are served over plain HTTP on {addr}, not here; set web.metrics_token to also serve them here"),
            None => "metrics are not exposed: set web.metrics_token (or RAMPART_WEB_METRICS_TOKEN) to serve /metrics here behind a bearer token, or web.metrics_addr to serve them on a separate address".into(),
        };
        return ApiError::new(StatusCode::NOT_FOUND, "metrics_not_exposed", message)
            .into_response();
    }
    metrics_checked(&state, &headers)
}

/// Serves the exposition when the token (if one is configured) is given.
fn metrics_checked(state: &AppState, headers: &HeaderMap) -> Response {
    if let Some(expected) = &state.config().metrics_token {
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        let ok = given.is_some_and(|g| token_matches(g, expected.expose()));
        if !ok {
            let mut r = ApiError::new(
                StatusCode::UNAUTHORIZED,
                "metrics_token_invalid",
                "send the metrics token as 'Authorization: Bearer <web.metrics_token>'",
            )
            .into_response();
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"rampart-metrics\""),
            );
            return r;
        }
    }
    let mut r = render(state).into_response();
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
    r
}

/// `GET /readyz`: 200 when the store answers a trivial query and every
/// plugged-in check passes; 503 naming what is not ready otherwise.
pub(crate) async fn readyz(State(state): State<AppState>) -> Response {
    let mut failing = Vec::new();
    match tokio::time::timeout(std::time::Duration::from_secs(5), state.store().ping()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            // The detail may name hosts or paths: logged, not shown.
            tracing::warn!(error = %e, "readiness: the store does not answer");
            failing.push(json!({"part": "store", "reason": "the store does not answer a query"}));
        }
        Err(_) => {
            tracing::warn!("readiness: the store did not answer within 5 s");
            failing.push(json!({"part": "store", "reason": "the store did not answer within 5 s"}));
        }
    }
    for (part, check) in &state.monitoring().checks {
        if let Err(reason) = check() {
            failing.push(json!({"part": part, "reason": reason}));
        }
    }
    if failing.is_empty() {
        axum::Json(json!({"status": "ready"})).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({
                "status": "not_ready",
                "error": {"code": "not_ready", "message": "some parts are not ready", "failing": failing}
            })),
        )
            .into_response()
    }
}

/// Serves `/metrics`, `/healthz` and `/readyz` over plain HTTP on
/// `listener` until `shutdown` (the `web.metrics_addr` server). Nothing
/// else is reachable there.
pub async fn run_metrics(
    listener: TcpListener,
    state: AppState,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let app = Router::new()
        .route(
            "/metrics",
            get(
                |State(state): State<AppState>, headers: HeaderMap| async move {
                    metrics_checked(&state, &headers)
                },
            ),
        )
        .route(
            "/healthz",
            get(|| async { axum::Json(json!({"status": "ok"})) }),
        )
        .route("/readyz", get(readyz))
        .fallback(|| async { ApiError::not_found() })
        .with_state(state);
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_samples_and_escaping() {
        let mut t = MetricsText::new();
        t.family(
            "rampart_x_total",
            MetricKind::Counter,
            "Things.\nSecond \\ line.",
        );
        t.sample("rampart_x_total", &[("reason", "a\"b\\c\nd")], 3.0);
        t.sample("rampart_x_total", &[("reason", "ok"), ("qos", "1")], 0.5);
        t.summary("rampart_y_seconds", "Time.", 1.25, 4);
        t.single("rampart_z", MetricKind::Gauge, "Now.", f64::INFINITY);
        assert_eq!(
            t.finish(),
            "# HELP rampart_x_total Things.\\nSecond \\\\ line.\n\
             # TYPE rampart_x_total counter\n\
             rampart_x_total{reason=\"a\\\"b\\\\c\\nd\"} 3\n\
             rampart_x_total{reason=\"ok\",qos=\"1\"} 0.5\n\
             # HELP rampart_y_seconds Time.\n\
             # TYPE rampart_y_seconds summary\n\
             rampart_y_seconds_sum 1.25\n\
             rampart_y_seconds_count 4\n\
             # HELP rampart_z Now.\n\
             # TYPE rampart_z gauge\n\
             rampart_z +Inf\n"
        );
    }

    #[test]
    fn histogram_buckets_are_cumulative() {
        let mut t = MetricsText::new();
        t.histogram(
            "rampart_c_seconds",
            "Commits.",
            &[(0.001, 2), (0.01, 0), (0.1, 3)],
            2.5,
            6,
        );
        assert_eq!(
            t.finish(),
            "# HELP rampart_c_seconds Commits.\n\
             # TYPE rampart_c_seconds histogram\n\
             rampart_c_seconds_bucket{le=\"0.001\"} 2\n\
             rampart_c_seconds_bucket{le=\"0.01\"} 2\n\
             rampart_c_seconds_bucket{le=\"0.1\"} 5\n\
             rampart_c_seconds_bucket{le=\"+Inf\"} 6\n\
             rampart_c_seconds_sum 2.5\n\
             rampart_c_seconds_count 6\n"
        );
    }

    #[test]
    fn token_comparison() {
        assert!(token_matches("0123456789abcdef", "0123456789abcdef"));
        assert!(!token_matches("0123456789abcdeF", "0123456789abcdef"));
        assert!(!token_matches("", "0123456789abcdef"));
        assert!(!token_matches("0123456789abcdef0", "0123456789abcdef"));
    }

    #[test]
    fn names_are_checked() {
        assert!(valid_name("rampart_broker_connections"));
        assert!(!valid_name("9lives"));
        assert!(!valid_name("a-b"));
    }
}
