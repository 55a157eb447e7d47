//! Push of stored telemetry to InfluxDB (v1 `/write` or v2 `/api/v2/write`)
//! in line protocol, from the store's durable outbox.
//!
//! Why an outbox: the pipeline queues every stored point for export in the
//! same transaction that stores it ([`crate::CommitOptions::outbox`]), so a
//! point is either stored *and* queued or neither, whatever crashes. This
//! task drains the queue: it peeks the oldest batches, posts them, and
//! removes them only after InfluxDB answered 2xx. While InfluxDB is down or
//! refuses a batch, the outbox keeps it and the task retries with
//! exponential backoff: nothing is lost.
//!
//! Delivery is at least once: a batch whose 2xx answer was lost, or whose
//! removal failed, is posted again. That is harmless because InfluxDB keeps
//! one value per series, field and timestamp and a second write of the
//! same point overwrites it with the same value.
//!
//! Schema, one line per device and timestamp:
//! `<measurement>,device=<id> <metric>=<value>[,<metric>=<value>...] <ts ms>`
//! with `precision=ms` on the URL. Values are floats, written so that they
//! parse back to the same `f64`. Field keys that InfluxDB reserves (`time`,
//! names starting with `_`) would get every batch holding them refused
//! forever, so they are written as `M_<name>`; metric names are lowercase,
//! so this never collides with another metric.
//!
//! A 4xx answer other than 408, 413 and 429 (or a redirect) means InfluxDB
//! will never take the batch as it is (bad token, unknown bucket, field
//! type conflict, wrong URL). The
//! batch is not dropped: it is logged at error level, counted in
//! `permanent_failures`, and retried every `max_backoff` until the cause is
//! fixed. A 413 (body too large) halves the number of batches per request,
//! down to one, until the outbox is drained.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt::{self, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rampart_store::telemetry::{PointRecord, TelemetryStore};
use reqwest::Url;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use tokio_util::sync::CancellationToken;

/// Bytes of an error answer kept for the log.
const ERROR_BODY_LIMIT: usize = 1024;

/// Where and how to push.
#[derive(Clone, PartialEq, Eq)]
pub struct InfluxOptions {
    /// The full write URL: v1 `http(s)://host:8086/write?db=D` or v2
    /// `http(s)://host:8086/api/v2/write?org=O&bucket=B`. `precision=ms`
    /// is added when absent; another precision is refused.
    pub url: String,
    /// Sent as `Authorization: Token <token>` (v2 API tokens; InfluxDB v1
    /// with a token accepts the same header).
    pub token: Option<String>,
    /// The measurement every point is written to.
    pub measurement: String,
    /// Outbox batches (one per group commit) sent per request.
    pub batch_batches: u32,
    /// How often an empty outbox is looked at again; also the first retry
    /// delay, doubled per consecutive failure.
    pub interval: Duration,
    /// Longest wait between retries.
    pub max_backoff: Duration,
    /// PEM file of extra CA certificates trusted for `https` (added to the
    /// public web roots).
    pub ca_file: Option<PathBuf>,
    /// Time limit of one request, connection included.
    pub timeout: Duration,
}

impl InfluxOptions {
    /// Options for `url` with the defaults: measurement `telemetry`, 64
    /// batches per request, 1 s poll, 60 s longest backoff, 10 s timeout.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            token: None,
            measurement: "telemetry".to_owned(),
            batch_batches: 64,
            interval: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
            ca_file: None,
            timeout: Duration::from_secs(10),
        }
    }
}

/// Neither the token nor the URL's query (a v1 URL may carry `p=`) is
/// shown.
impl fmt::Debug for InfluxOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InfluxOptions")
            .field("url", &redacted_url(&self.url))
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("measurement", &self.measurement)
            .field("batch_batches", &self.batch_batches)
            .field("interval", &self.interval)
            .field("max_backoff", &self.max_backoff)
            .field("ca_file", &self.ca_file)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// A URL as it may be logged: scheme, host, port and path only.
fn redacted_url(url: &str) -> String {
    match Url::parse(url) {
        Ok(u) => format!("{}{}", u.origin().ascii_serialization(), u.path()),
        Err(_) => "<invalid url>".to_owned(),
    }
}

/// Why the exporter cannot start.
#[derive(Debug, thiserror::Error)]
pub enum InfluxError {
    /// The URL does not parse.
    #[error("influx url is not a valid URL: {0}")]
    Url(String),
    /// The URL is not `http` or `https`.
    #[error("influx url has scheme '{0}'; use http:// or https://")]
    Scheme(String),
    /// The URL asks for another timestamp precision.
    #[error(
        "influx url asks for precision={0}; the exporter writes millisecond timestamps: remove the parameter or set precision=ms"
    )]
    Precision(String),
    /// The measurement name cannot be written.
    #[error("influx measurement {name:?} {why}")]
    Measurement {
        /// The name given.
        name: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// The token cannot be sent in an HTTP header.
    #[error("influx token contains characters not allowed in an HTTP header")]
    Token,
    /// The CA file cannot be used.
    #[error("influx ca_file {}: {why}", path.display())]
    CaFile {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        why: String,
    },
    /// TLS could not be set up.
    #[error("influx TLS setup: {0}")]
    Tls(#[from] rustls::Error),
    /// The HTTP client could not be built.
    #[error("influx HTTP client: {0}")]
    Client(String),
}

/// A measurement name checked to be writable in line protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Measurement(String);

impl Measurement {
    /// Checks `name`: not empty, no control characters or backslashes (line
    /// protocol cannot carry a newline, and a trailing backslash would
    /// escape the separator after it), not starting with `#` (a comment
    /// line) or `_` (reserved by InfluxDB).
    pub fn parse(name: &str) -> Result<Self, InfluxError> {
        let why = if name.is_empty() {
            Some("is empty")
        } else if name.chars().any(|c| c.is_control() || c == '\\') {
            Some("contains a control character or a backslash")
        } else if name.starts_with('#') {
            Some("starts with '#', which makes the line a comment")
        } else if name.starts_with('_') {
            Some("starts with '_', which InfluxDB reserves")
        } else {
            None
        };
        match why {
            Some(why) => Err(InfluxError::Measurement {
                name: name.to_owned(),
                why,
            }),
            None => Ok(Self(name.to_owned())),
        }
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Appends `s` escaped as a measurement: commas and spaces get a backslash
/// (line protocol, "Special characters").
fn push_measurement(out: &mut String, s: &str) {
    for c in s.chars() {
        if matches!(c, ',' | ' ') {
            out.push('\\');
        }
        out.push(c);
    }
}

/// Appends `s` escaped as a tag key, tag value or field key: commas, equals
/// signs and spaces get a backslash.
fn push_key(out: &mut String, s: &str) {
    for c in s.chars() {
        if matches!(c, ',' | '=' | ' ') {
            out.push('\\');
        }
        out.push(c);
    }
}

/// The field key of a metric: itself, or `M_<name>` for keys InfluxDB
/// refuses (`time` in v1; names starting with `_` in v2).
pub fn field_key(metric: &str) -> Cow<'_, str> {
    if metric == "time" || metric.starts_with('_') {
        Cow::Owned(format!("M_{metric}"))
    } else {
        Cow::Borrowed(metric)
    }
}

/// The fields of one line: metric → `(seq, value)` of the reading that
/// supplies it.
type LineFields<'a> = BTreeMap<&'a str, (u64, f64)>;

/// Encodes points as line protocol, one line per device and timestamp with
/// one field per metric, lines ordered by device and time. When the points
/// hold one metric of a device twice at the same timestamp (two readings
/// with equal `ts`), the reading with the higher `seq` wins, as the later
/// write would in InfluxDB.
pub fn encode_lines<'a>(
    measurement: &Measurement,
    points: impl IntoIterator<Item = &'a PointRecord>,
) -> String {
    let mut lines: BTreeMap<(&str, i64), LineFields<'_>> = BTreeMap::new();
    for p in points {
        let fields = lines.entry((p.device.as_str(), p.ts_ms)).or_default();
        let slot = fields.entry(p.metric.as_str()).or_insert((p.seq, p.value));
        if p.seq > slot.0 {
            *slot = (p.seq, p.value);
        }
    }
    let mut out = String::new();
    let mut value = ryu::Buffer::new();
    for ((device, ts), fields) in lines {
        push_measurement(&mut out, measurement.as_str());
        out.push_str(",device=");
        push_key(&mut out, device);
        for (i, (metric, (_, v))) in fields.into_iter().enumerate() {
            out.push(if i == 0 { ' ' } else { ',' });
            push_key(&mut out, &field_key(metric));
            out.push('=');
            out.push_str(value.format(v));
        }
        let _ = writeln!(out, " {ts}");
    }
    out
}

/// Counters of the InfluxDB export (monotonic).
#[derive(Debug, Default)]
pub struct InfluxMetrics {
    /// Outbox batches delivered.
    pub batches_sent: AtomicU64,
    /// Points delivered.
    pub points_sent: AtomicU64,
    /// Failed requests (any reason).
    pub failures: AtomicU64,
    /// Requests InfluxDB refused for good (4xx other than 408/413/429).
    pub permanent_failures: AtomicU64,
}

impl InfluxMetrics {
    fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }

    /// The counters in the Prometheus text exposition format.
    pub fn render_prometheus(&self) -> String {
        let mut out = String::new();
        for (name, help, value) in [
            (
                "rampart_influx_batches_sent_total",
                "Outbox batches delivered to InfluxDB.",
                &self.batches_sent,
            ),
            (
                "rampart_influx_points_sent_total",
                "Points delivered to InfluxDB.",
                &self.points_sent,
            ),
            (
                "rampart_influx_failures_total",
                "Failed InfluxDB write requests.",
                &self.failures,
            ),
            (
                "rampart_influx_permanent_failures_total",
                "InfluxDB write requests refused with a non-retryable status.",
                &self.permanent_failures,
            ),
        ] {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                value.load(Ordering::Relaxed)
            );
        }
        out
    }
}

/// Why a request did not deliver.
#[derive(Debug)]
enum SendError {
    /// Worth retrying soon: network, timeout, 5xx, 408, 429.
    Transient {
        reason: String,
        retry_after: Option<Duration>,
    },
    /// 413: the body is too large.
    TooLarge,
    /// InfluxDB will not take this request as it is.
    Permanent { status: u16, reason: String },
}

/// The exporter, checked and ready: build it with [`InfluxExporter::new`]
/// (which fails on a bad configuration), take its [`metrics`], then
/// [`run`](InfluxExporter::run) it.
///
/// [`metrics`]: InfluxExporter::metrics
pub struct InfluxExporter {
    client: reqwest::Client,
    url: Url,
    /// Scheme, host, port and path: what logs show.
    target: String,
    authorization: Option<HeaderValue>,
    measurement: Measurement,
    batch_batches: u32,
    interval: Duration,
    max_backoff: Duration,
    metrics: Arc<InfluxMetrics>,
}

impl fmt::Debug for InfluxExporter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InfluxExporter")
            .field("target", &self.target)
            .field("measurement", &self.measurement)
            .finish_non_exhaustive()
    }
}

impl InfluxExporter {
    /// Checks `options` and builds the HTTP client.
    pub fn new(options: &InfluxOptions) -> Result<Self, InfluxError> {
        let url = write_url(&options.url)?;
        let authorization = options
            .token
            .as_ref()
            .map(|t| {
                let mut v =
                    HeaderValue::from_str(&format!("Token {t}")).map_err(|_| InfluxError::Token)?;
                v.set_sensitive(true);
                Ok::<_, InfluxError>(v)
            })
            .transpose()?;
        let client = reqwest::Client::builder()
            .tls_backend_preconfigured(tls_config(options.ca_file.as_deref())?)
            .timeout(options.timeout)
            .connect_timeout(options.timeout)
            // A write endpoint that redirects is misconfigured; following
            // it would re-post the body elsewhere.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| InfluxError::Client(error_chain(&e.without_url())))?;
        Ok(Self {
            client,
            target: format!("{}{}", url.origin().ascii_serialization(), url.path()),
            url,
            authorization,
            measurement: Measurement::parse(&options.measurement)?,
            batch_batches: options.batch_batches.max(1),
            interval: options.interval,
            max_backoff: options.max_backoff,
            metrics: Arc::new(InfluxMetrics::default()),
        })
    }

    /// The exporter's counters.
    pub fn metrics(&self) -> Arc<InfluxMetrics> {
        Arc::clone(&self.metrics)
    }

    /// Drains the outbox into InfluxDB until `shutdown`. A request cut by
    /// shutdown is not acknowledged, so its batches are sent again on the
    /// next start.
    pub async fn run(self, store: Arc<dyn TelemetryStore>, shutdown: CancellationToken) {
        tracing::info!(target_url = %self.target, "InfluxDB export started");
        let mut failures = 0u32;
        let mut per_request = self.batch_batches;
        loop {
            let peeked = tokio::select! {
                () = shutdown.cancelled() => return,
                r = store.outbox_peek(per_request) => r,
            };
            let rows = match peeked {
                Ok(rows) => rows,
                Err(e) => {
                    failures = failures.saturating_add(1);
                    tracing::warn!(error = %e, "could not read the export outbox");
                    if !pause(self.backoff(failures, None), &shutdown).await {
                        return;
                    }
                    continue;
                }
            };
            let (Some(&(first, _)), Some(&(last, _))) = (rows.first(), rows.last()) else {
                // Drained: the next backlog starts with full requests again.
                per_request = self.batch_batches;
                if !pause(self.interval, &shutdown).await {
                    return;
                }
                continue;
            };
            let points: u64 = rows.iter().map(|(_, p)| p.len() as u64).sum();
            let body = encode_lines(&self.measurement, rows.iter().flat_map(|(_, p)| p));
            let sent = if body.is_empty() {
                Ok(())
            } else {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    r = self.post(body) => r,
                }
            };
            let wait = match sent {
                Ok(()) => {
                    InfluxMetrics::add(&self.metrics.batches_sent, rows.len() as u64);
                    InfluxMetrics::add(&self.metrics.points_sent, points);
                    match store.outbox_ack(last).await {
                        Ok(()) => {
                            failures = 0;
                            continue;
                        }
                        Err(e) => {
                            failures = failures.saturating_add(1);
                            tracing::warn!(error = %e, first_batch = first, last_batch = last,
                                "delivered batches could not be removed from the outbox; they will be sent again (InfluxDB overwrites identical points)");
                            self.backoff(failures, None)
                        }
                    }
                }
                Err(error) => {
                    InfluxMetrics::add(&self.metrics.failures, 1);
                    failures = failures.saturating_add(1);
                    if let Err(e) = store.outbox_failed(first).await {
                        tracing::warn!(error = %e, batch = first, "could not count a failed export attempt");
                    }
                    match error {
                        SendError::Transient {
                            reason,
                            retry_after,
                        } => {
                            let wait = self.backoff(failures, retry_after);
                            tracing::warn!(target_url = %self.target, reason, first_batch = first, retry_in_ms = wait.as_millis() as u64,
                                "InfluxDB write failed; the batches stay in the outbox");
                            wait
                        }
                        SendError::TooLarge if rows.len() > 1 => {
                            per_request = (rows.len() as u32 / 2).max(1);
                            tracing::warn!(target_url = %self.target, batches = per_request,
                                "InfluxDB refused the request as too large (413); sending fewer batches per request");
                            Duration::ZERO
                        }
                        SendError::TooLarge => {
                            self.permanent(first, 413, "one outbox batch is larger than InfluxDB accepts (413); raise its body size limit (v1: http.max-body-size)");
                            self.max_backoff
                        }
                        SendError::Permanent { status, reason } => {
                            self.permanent(first, status, &reason);
                            self.max_backoff
                        }
                    }
                }
            };
            if !pause(wait, &shutdown).await {
                return;
            }
        }
    }

    fn permanent(&self, first: i64, status: u16, reason: &str) {
        InfluxMetrics::add(&self.metrics.permanent_failures, 1);
        tracing::error!(target_url = %self.target, status, reason, first_batch = first,
            retry_in_ms = self.max_backoff.as_millis() as u64,
            "InfluxDB refused the write; the batches stay in the outbox and are retried until the cause is fixed (token rights, bucket or database name, field type conflict)");
    }

    /// `interval · 2^(failures-1)`, at least the server's `Retry-After`, at
    /// most `max_backoff`.
    fn backoff(&self, failures: u32, retry_after: Option<Duration>) -> Duration {
        let base = self.interval.max(Duration::from_millis(1));
        let exp = base.saturating_mul(1u32 << failures.saturating_sub(1).min(20));
        exp.max(retry_after.unwrap_or_default())
            .min(self.max_backoff)
    }

    async fn post(&self, body: String) -> Result<(), SendError> {
        let mut request = self
            .client
            .post(self.url.clone())
            .header(CONTENT_TYPE, "text/plain; charset=utf-8")
            .body(body);
        if let Some(auth) = &self.authorization {
            request = request.header(AUTHORIZATION, auth.clone());
        }
        let mut response = request.send().await.map_err(|e| SendError::Transient {
            // `without_url`: a v1 URL may carry a password in its query.
            reason: error_chain(&e.without_url()),
            retry_after: None,
        })?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let mut text = Vec::new();
        while text.len() < ERROR_BODY_LIMIT {
            match response.chunk().await {
                Ok(Some(chunk)) => text.extend_from_slice(&chunk),
                Ok(None) | Err(_) => break,
            }
        }
        text.truncate(ERROR_BODY_LIMIT);
        let reason = format!("{status}: {}", String::from_utf8_lossy(&text).trim());
        Err(match status.as_u16() {
            413 => SendError::TooLarge,
            408 | 429 => SendError::Transient {
                reason,
                retry_after,
            },
            code @ 400..=499 => SendError::Permanent {
                status: code,
                reason,
            },
            code @ 300..=399 => SendError::Permanent {
                status: code,
                reason: format!("{reason} (a redirect: configure the final write URL)"),
            },
            // 5xx and anything unexpected: the server may recover.
            _ => SendError::Transient {
                reason,
                retry_after,
            },
        })
    }
}

/// Waits `wait`; `false` when `shutdown` came first.
async fn pause(wait: Duration, shutdown: &CancellationToken) -> bool {
    if wait.is_zero() {
        return !shutdown.is_cancelled();
    }
    tokio::select! {
        () = shutdown.cancelled() => false,
        () = tokio::time::sleep(wait) => true,
    }
}

/// Builds the exporter from `options` and runs it until `shutdown`; fails
/// only on a bad configuration. Use [`InfluxExporter`] directly to read its
/// metrics.
pub async fn run(
    store: Arc<dyn TelemetryStore>,
    options: InfluxOptions,
    shutdown: CancellationToken,
) -> Result<(), InfluxError> {
    InfluxExporter::new(&options)?.run(store, shutdown).await;
    Ok(())
}

/// Parses the write URL and makes sure it asks for millisecond precision.
fn write_url(raw: &str) -> Result<Url, InfluxError> {
    let mut url = Url::parse(raw).map_err(|e| InfluxError::Url(e.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(InfluxError::Scheme(url.scheme().to_owned()));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(InfluxError::Url("no host".to_owned()));
    }
    let precision = url
        .query_pairs()
        .find(|(k, _)| k == "precision")
        .map(|(_, v)| v.into_owned());
    match precision.as_deref() {
        None => {
            url.query_pairs_mut().append_pair("precision", "ms");
        }
        Some("ms") => {}
        Some(other) => return Err(InfluxError::Precision(other.to_owned())),
    }
    Ok(url)
}

/// rustls with the ring provider, trusting the public web roots and the
/// certificates of `ca_file`.
fn tls_config(ca_file: Option<&Path>) -> Result<rustls::ClientConfig, InfluxError> {
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    if let Some(path) = ca_file {
        let ca_err = |why: String| InfluxError::CaFile {
            path: path.to_owned(),
            why,
        };
        let mut added = 0;
        for cert in CertificateDer::pem_file_iter(path).map_err(|e| ca_err(e.to_string()))? {
            let cert = cert.map_err(|e| ca_err(e.to_string()))?;
            roots
                .add(cert)
                .map_err(|e| ca_err(format!("not a usable CA certificate: {e}")))?;
            added += 1;
        }
        if added == 0 {
            return Err(ca_err("holds no PEM certificate".to_owned()));
        }
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// An error and its causes, one sentence.
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let _ = write!(out, ": {s}");
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(device: &str, metric: &str, ts_ms: i64, value: f64, seq: u64) -> PointRecord {
        PointRecord {
            device: device.into(),
            metric: metric.into(),
            ts_ms,
            value,
            seq,
        }
    }

    fn m(name: &str) -> Measurement {
        Measurement::parse(name).expect("measurement")
    }

    #[test]
    fn points_of_one_device_and_time_share_a_line() {
        let points = [
            point("gh-1", "temperature", 2000, 21.5, 2),
            point("gh-1", "humidity", 1000, 40.0, 1),
            point("gh-1", "temperature", 1000, 21.25, 1),
            point("a4:cf:12:00:00:01", "t", 1000, 0.1 + 0.2, 7),
            point("gh-1", "humidity", 2000, 1e21, 2),
        ];
        assert_eq!(
            encode_lines(&m("telemetry"), &points),
            "telemetry,device=a4:cf:12:00:00:01 t=0.30000000000000004 1000\n\
             telemetry,device=gh-1 humidity=40.0,temperature=21.25 1000\n\
             telemetry,device=gh-1 humidity=1e21,temperature=21.5 2000\n"
        );
    }

    #[test]
    fn the_later_reading_wins_a_shared_timestamp() {
        let points = [
            point("d", "t", 5, 2.0, 9),
            point("d", "t", 5, 1.0, 3),
            point("d", "t", 5, 3.0, 4),
        ];
        assert_eq!(encode_lines(&m("x"), &points), "x,device=d t=2.0 5\n");
    }

    #[test]
    fn names_are_escaped_per_line_protocol() {
        let points = [point("a,b c=d", "e,f g=h", 1, 1.0, 1)];
        assert_eq!(
            encode_lines(&m("my meas,x=y"), &points),
            "my\\ meas\\,x=y,device=a\\,b\\ c\\=d e\\,f\\ g\\=h=1.0 1\n"
        );
    }

    #[test]
    fn reserved_field_keys_are_renamed() {
        assert_eq!(field_key("temperature"), "temperature");
        assert_eq!(field_key("time"), "M_time");
        assert_eq!(field_key("_field"), "M__field");
        assert_eq!(field_key("times"), "times");
        let points = [point("d", "time", 1, 4.0, 1)];
        assert_eq!(encode_lines(&m("t"), &points), "t,device=d M_time=4.0 1\n");
    }

    #[test]
    fn unwritable_measurements_are_refused() {
        for bad in ["", "a\nb", "a\\", "#x", "_internal"] {
            assert!(
                matches!(
                    Measurement::parse(bad),
                    Err(InfluxError::Measurement { .. })
                ),
                "{bad:?}"
            );
        }
        assert_eq!(m("sensor data").as_str(), "sensor data");
    }

    #[test]
    fn urls_get_millisecond_precision() {
        let v2 = write_url("https://influx:8086/api/v2/write?org=o&bucket=b").expect("v2");
        assert_eq!(
            v2.as_str(),
            "https://influx:8086/api/v2/write?org=o&bucket=b&precision=ms"
        );
        let v1 = write_url("http://127.0.0.1:8086/write?db=d&precision=ms").expect("v1");
        assert_eq!(v1.as_str(), "http://127.0.0.1:8086/write?db=d&precision=ms");
        assert!(matches!(
            write_url("http://h/write?db=d&precision=ns"),
            Err(InfluxError::Precision(p)) if p == "ns"
        ));
        assert!(matches!(
            write_url("ftp://h/write"),
            Err(InfluxError::Scheme(_))
        ));
        assert!(matches!(
            write_url("influx:8086"),
            Err(InfluxError::Scheme(_))
        ));
        assert!(matches!(write_url("/write"), Err(InfluxError::Url(_))));
    }

    #[test]
    fn secrets_stay_out_of_debug_output() {
        let mut o = InfluxOptions::new("http://h:8086/write?db=d&u=admin&p=hunter2");
        o.token = Some("s3cret".into());
        let shown = format!("{o:?}");
        assert!(
            !shown.contains("s3cret") && !shown.contains("hunter2"),
            "{shown}"
        );
        assert!(shown.contains("http://h:8086/write"), "{shown}");
        let exporter = InfluxExporter::new(&o).expect("exporter");
        let shown = format!("{exporter:?}");
        assert!(
            !shown.contains("s3cret") && !shown.contains("hunter2"),
            "{shown}"
        );
    }

    #[test]
    fn backoff_doubles_up_to_the_limit_and_honours_retry_after() {
        let mut o = InfluxOptions::new("http://h/write?db=d");
        o.interval = Duration::from_millis(100);
        o.max_backoff = Duration::from_secs(1);
        let e = InfluxExporter::new(&o).expect("exporter");
        let ms = |f, ra| e.backoff(f, ra).as_millis();
        assert_eq!(
            [
                ms(1, None),
                ms(2, None),
                ms(3, None),
                ms(4, None),
                ms(5, None)
            ],
            [100, 200, 400, 800, 1000]
        );
        assert_eq!(ms(u32::MAX, None), 1000);
        assert_eq!(ms(1, Some(Duration::from_millis(500))), 500);
        assert_eq!(ms(1, Some(Duration::from_secs(30))), 1000);
    }

    #[test]
    fn a_ca_file_without_certificates_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, "not a certificate\n").expect("write");
        let mut o = InfluxOptions::new("https://h/write?db=d");
        o.ca_file = Some(path.clone());
        assert!(matches!(
            InfluxExporter::new(&o),
            Err(InfluxError::CaFile { path: p, .. }) if p == path
        ));
        o.ca_file = Some(dir.path().join("missing.pem"));
        assert!(matches!(
            InfluxExporter::new(&o),
            Err(InfluxError::CaFile { .. })
        ));
    }

    #[test]
    fn metrics_render_as_prometheus_counters() {
        let metrics = InfluxMetrics::default();
        InfluxMetrics::add(&metrics.points_sent, 42);
        let text = metrics.render_prometheus();
        assert!(text.contains("# TYPE rampart_influx_points_sent_total counter\nrampart_influx_points_sent_total 42\n"), "{text}");
        assert!(
            text.contains("rampart_influx_permanent_failures_total 0\n"),
            "{text}"
        );
    }
}
