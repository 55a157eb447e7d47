//! The InfluxDB export against a local HTTP(S) receiver on 127.0.0.1 that
//! records what it is sent and answers as it is told: points stored by the
//! pipeline reach it through the durable outbox, whatever it answered
//! before.

use std::collections::BTreeSet;
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rampart_ingest::influx::{InfluxExporter, InfluxMetrics, InfluxOptions};
use rampart_ingest::{CommitOptions, Pipeline, PipelineOptions};
use rampart_proto::DeviceId;
use rampart_proto::ingest::{InboundMessage, IngestOutcome, MessageProperties, QoS};
use rampart_proto::topic::Category;
use rampart_store::sqlite::SqliteOptions;
use rampart_store::telemetry::{PointFilter, TelemetryStore};
use rampart_store::{AuditKey, SqliteStore};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const NOW: i64 = 1_764_000_000_000;
const WAIT: Duration = Duration::from_secs(30);

/// `(device, metric, ts_ms, value bits)`: what InfluxDB would hold.
type Point = (String, String, i64, u64);

/// One request as the receiver read it, and the status it answered.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    target: String,
    headers: Vec<(String, String)>,
    body: String,
    status: u16,
}

impl Seen {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Debug)]
struct ReceiverState {
    /// The status answered to every request (204 accepts).
    answer: u16,
    /// Bodies longer than this are answered 413.
    max_body: Option<usize>,
    seen: Vec<Seen>,
}

/// A minimal HTTP/1.1 server standing in for InfluxDB's write endpoint.
#[derive(Debug)]
struct Receiver {
    addr: SocketAddr,
    state: Arc<Mutex<ReceiverState>>,
    task: JoinHandle<()>,
}

impl Receiver {
    async fn start(answer: u16, tls: Option<tokio_rustls::TlsAcceptor>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let state = Arc::new(Mutex::new(ReceiverState {
            answer,
            max_body: None,
            seen: Vec::new(),
        }));
        let shared = Arc::clone(&state);
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let state = Arc::clone(&shared);
                let tls = tls.clone();
                tokio::spawn(async move {
                    match tls {
                        // A failed handshake just closes the connection.
                        Some(acceptor) => {
                            if let Ok(stream) = acceptor.accept(stream).await {
                                serve(stream, state).await;
                            }
                        }
                        None => serve(stream, state).await,
                    }
                });
            }
        });
        Self { addr, state, task }
    }

    fn answer(&self, status: u16) {
        self.state.lock().expect("state").answer = status;
    }

    fn seen(&self) -> Vec<Seen> {
        self.state.lock().expect("state").seen.clone()
    }

    fn answered(&self, status: u16) -> usize {
        self.seen().iter().filter(|s| s.status == status).count()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serves requests on one connection until the client closes it.
async fn serve(stream: impl AsyncRead + AsyncWrite + Unpin, state: Arc<Mutex<ReceiverState>>) {
    let mut stream = BufReader::new(stream);
    loop {
        let mut request_line = String::new();
        match stream.read_line(&mut request_line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let mut parts = request_line.split_whitespace();
        let method = parts.next().unwrap_or_default().to_owned();
        let target = parts.next().unwrap_or_default().to_owned();
        let mut headers = Vec::new();
        loop {
            let mut line = String::new();
            if stream.read_line(&mut line).await.unwrap_or(0) == 0 {
                return;
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':') {
                headers.push((k.trim().to_owned(), v.trim().to_owned()));
            }
        }
        let length: usize = headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0; length];
        if stream.read_exact(&mut body).await.is_err() {
            return;
        }
        let status = {
            let mut s = state.lock().expect("state");
            let status = match s.max_body {
                Some(max) if length > max => 413,
                _ => s.answer,
            };
            s.seen.push(Seen {
                method,
                target,
                headers,
                body: String::from_utf8_lossy(&body).into_owned(),
                status,
            });
            status
        };
        let response = if status == 204 {
            "HTTP/1.1 204 No Content\r\n\r\n".to_owned()
        } else {
            let text = format!(r#"{{"code":"test","message":"answering {status}"}}"#);
            format!(
                "HTTP/1.1 {status} Test\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{text}",
                text.len()
            )
        };
        if stream.write_all(response.as_bytes()).await.is_err() {
            return;
        }
        let _ = stream.flush().await;
    }
}

/// Parses line protocol as the exporter writes it back into points.
fn parse_lines(body: &str) -> Vec<Point> {
    assert!(!body.contains('\\'), "nothing here needs escaping: {body}");
    let mut points = Vec::new();
    for line in body.lines() {
        let (key, rest) = line.split_once(' ').expect("key and fields");
        let (fields, ts) = rest.rsplit_once(' ').expect("fields and timestamp");
        let (measurement, device) = key.split_once(",device=").expect("device tag");
        assert_eq!(measurement, "telemetry", "{line}");
        let ts: i64 = ts.parse().expect("timestamp");
        for field in fields.split(',') {
            let (metric, value) = field.split_once('=').expect("field");
            let value: f64 = value.parse().expect("float value");
            points.push((device.to_owned(), metric.to_owned(), ts, value.to_bits()));
        }
    }
    points
}

/// Points in the bodies the receiver accepted.
fn delivered(receiver: &Receiver) -> BTreeSet<Point> {
    receiver
        .seen()
        .iter()
        .filter(|s| s.status == 204)
        .flat_map(|s| parse_lines(&s.body))
        .collect()
}

async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + WAIT;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn store(dir: &Path) -> Arc<SqliteStore> {
    Arc::new(
        SqliteStore::open(
            &dir.join("rampart.db"),
            AuditKey::new([0; 32], None),
            SqliteOptions::default(),
        )
        .expect("open store"),
    )
}

/// Feeds `messages` telemetry messages per device through a pipeline that
/// queues stored points in the outbox; every third message is a batch of
/// two readings. Returns the stored points.
async fn feed(store: &Arc<SqliteStore>, devices: &[&str], messages: u64) -> BTreeSet<Point> {
    let options = PipelineOptions {
        commit: CommitOptions {
            outbox: true,
            ..CommitOptions::default()
        },
        ..PipelineOptions::default()
    };
    let (pipeline, task) = Pipeline::start(Arc::clone(store) as Arc<dyn TelemetryStore>, options);
    let mut seq = 0u64;
    for device in devices {
        for i in 0..messages {
            let mut readings = Vec::new();
            for _ in 0..(if i % 3 == 2 { 2 } else { 1 }) {
                seq += 1;
                let ts = NOW - 60_000 + seq as i64 * 250;
                readings.push(format!(
                    r#"{{"seq":{seq},"ts":{ts},"m":{{"temperature":{},"humidity":{}}}}}"#,
                    20.0 + seq as f64 / 4.0,
                    seq as f64 + 0.5
                ));
            }
            let payload = if readings.len() == 1 {
                readings.remove(0)
            } else {
                format!(r#"{{"batch":[{}]}}"#, readings.join(","))
            };
            let outcome = pipeline
                .process(InboundMessage {
                    device: DeviceId::parse(device).expect("id"),
                    category: Category::Telemetry,
                    qos: QoS::AtLeastOnce,
                    payload: Bytes::from(payload),
                    properties: MessageProperties::default(),
                    received_at_ms: NOW,
                })
                .await;
            assert!(matches!(outcome, IngestOutcome::Committed), "{outcome:?}");
        }
    }
    drop(pipeline);
    task.await.expect("committer");
    let (points, more) = store
        .export_points(&PointFilter::default(), None, 100_000)
        .await
        .expect("export");
    assert!(more.is_none());
    points
        .into_iter()
        .map(|p| (p.device, p.metric, p.ts_ms, p.value.to_bits()))
        .collect()
}

/// `(outbox batches, points in them)`.
async fn outbox(store: &SqliteStore) -> (usize, usize) {
    let rows = store.outbox_peek(100_000).await.expect("peek");
    (rows.len(), rows.iter().map(|(_, p)| p.len()).sum())
}

fn options(url: String) -> InfluxOptions {
    InfluxOptions {
        interval: Duration::from_millis(2),
        max_backoff: Duration::from_millis(10),
        timeout: Duration::from_secs(5),
        ..InfluxOptions::new(url)
    }
}

/// Starts an exporter; returns its metrics, its shutdown and its task.
fn start(
    store: &Arc<SqliteStore>,
    options: &InfluxOptions,
) -> (Arc<InfluxMetrics>, CancellationToken, JoinHandle<()>) {
    let exporter = InfluxExporter::new(options).expect("exporter");
    let metrics = exporter.metrics();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(exporter.run(
        Arc::clone(store) as Arc<dyn TelemetryStore>,
        shutdown.clone(),
    ));
    (metrics, shutdown, task)
}

async fn stop(shutdown: CancellationToken, task: JoinHandle<()>) {
    shutdown.cancel();
    tokio::time::timeout(WAIT, task)
        .await
        .expect("exporter stops on shutdown")
        .expect("exporter did not panic");
}

#[tokio::test]
async fn every_point_arrives_once_influxdb_recovers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = store(dir.path());
    let receiver = Receiver::start(503, None).await;
    let mut o = options(format!(
        "http://{}/api/v2/write?org=acme&bucket=sensors",
        receiver.addr
    ));
    o.token = Some("t0ken-v2".into());
    o.batch_batches = 3;
    let (metrics, shutdown, task) = start(&s, &o);

    // Ingest while InfluxDB is down.
    let stored = feed(&s, &["greenhouse-1", "a4:cf:12:00:00:01", "barn"], 10).await;
    assert_eq!(stored.len(), 3 * (7 + 3 * 2) * 2);
    eventually("three refused requests", || async {
        receiver.answered(503) >= 3 && metrics.failures.load(Ordering::Relaxed) >= 3
    })
    .await;
    // Nothing left the outbox while every request failed.
    let (batches, points) = outbox(&s).await;
    assert_eq!(points, stored.len());
    assert_eq!(batches, 30);
    assert_eq!(receiver.answered(204), 0);

    receiver.answer(204);
    eventually("an empty outbox", || async { outbox(&s).await.0 == 0 }).await;
    stop(shutdown, task).await;

    assert_eq!(delivered(&receiver), stored);
    assert_eq!(
        metrics.points_sent.load(Ordering::Relaxed),
        stored.len() as u64
    );
    assert_eq!(metrics.batches_sent.load(Ordering::Relaxed), 30);
    assert_eq!(metrics.permanent_failures.load(Ordering::Relaxed), 0);
    let text = metrics.render_prometheus();
    assert!(
        text.contains(&format!(
            "rampart_influx_points_sent_total {}\n",
            stored.len()
        )),
        "{text}"
    );
    for seen in receiver.seen() {
        assert_eq!(seen.method, "POST");
        assert_eq!(
            seen.target,
            "/api/v2/write?org=acme&bucket=sensors&precision=ms"
        );
        assert_eq!(seen.header("authorization"), Some("Token t0ken-v2"));
        assert_eq!(
            seen.header("content-type"),
            Some("text/plain; charset=utf-8")
        );
    }
    // Lines group the metrics of one reading: two fields per line.
    let accepted = receiver.seen().into_iter().find(|s| s.status == 204);
    let body = accepted.expect("an accepted request").body;
    assert!(
        body.lines()
            .all(|l| l.contains("humidity=") && l.contains(",temperature=")),
        "{body}"
    );
}

#[tokio::test]
async fn a_refused_batch_stays_in_the_outbox_until_accepted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = store(dir.path());
    let receiver = Receiver::start(400, None).await;
    let mut o = options(format!(
        "http://{}/api/v2/write?org=o&bucket=b",
        receiver.addr
    ));
    o.token = Some("t".into());
    let stored = feed(&s, &["dev-1"], 6).await;
    let (metrics, shutdown, task) = start(&s, &o);

    eventually("three permanent failures", || async {
        metrics.permanent_failures.load(Ordering::Relaxed) >= 3
    })
    .await;
    assert_eq!(outbox(&s).await.1, stored.len());
    assert_eq!(metrics.points_sent.load(Ordering::Relaxed), 0);

    receiver.answer(204);
    eventually("an empty outbox", || async { outbox(&s).await.0 == 0 }).await;
    stop(shutdown, task).await;
    assert_eq!(delivered(&receiver), stored);
    assert!(receiver.answered(400) >= 3);
}

#[tokio::test]
async fn too_large_requests_are_split_and_v1_urls_get_no_token() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = store(dir.path());
    let receiver = Receiver::start(204, None).await;
    // Room for two lines (about 70 bytes each), not three.
    receiver.state.lock().expect("state").max_body = Some(150);
    let mut o = options(format!("http://{}/write?db=rampart", receiver.addr));
    o.batch_batches = 8;
    let stored = feed(&s, &["dev-1"], 6).await;
    let (metrics, shutdown, task) = start(&s, &o);

    eventually("an empty outbox", || async { outbox(&s).await.0 == 0 }).await;
    stop(shutdown, task).await;
    assert_eq!(delivered(&receiver), stored);
    assert!(receiver.answered(413) >= 1);
    assert_eq!(metrics.permanent_failures.load(Ordering::Relaxed), 0);
    for seen in receiver.seen() {
        assert_eq!(seen.target, "/write?db=rampart&precision=ms");
        assert_eq!(seen.header("authorization"), None);
        if seen.status == 204 {
            assert!(seen.body.len() <= 150, "{}", seen.body);
        }
    }
}

#[tokio::test]
async fn https_is_verified_against_the_configured_ca() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = store(dir.path());

    let ca_key = rcgen::KeyPair::generate().expect("key");
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).expect("ca");
    let server_key = rcgen::KeyPair::generate().expect("key");
    let server_cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .expect("params")
        .signed_by(&server_key, &*ca)
        .expect("server cert");
    let ca_file = dir.path().join("influx-ca.pem");
    std::fs::write(&ca_file, ca.pem()).expect("write ca");
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_no_client_auth()
    .with_single_cert(
        vec![server_cert.der().clone()],
        rustls_pki_types::PrivateKeyDer::Pkcs8(server_key.serialize_der().into()),
    )
    .expect("server config");
    let receiver =
        Receiver::start(204, Some(tokio_rustls::TlsAcceptor::from(Arc::new(config)))).await;
    let stored = feed(&s, &["dev-1", "dev-2"], 4).await;
    let url = format!("https://{}/api/v2/write?org=o&bucket=b", receiver.addr);

    // Without the CA the server is not trusted: nothing is sent.
    let (metrics, shutdown, task) = start(&s, &options(url.clone()));
    eventually("a failed TLS handshake", || async {
        metrics.failures.load(Ordering::Relaxed) >= 2
    })
    .await;
    stop(shutdown, task).await;
    assert!(receiver.seen().is_empty());
    assert_eq!(outbox(&s).await.1, stored.len());

    let mut o = options(url);
    o.ca_file = Some(ca_file);
    let (_metrics, shutdown, task) = start(&s, &o);
    eventually("an empty outbox", || async { outbox(&s).await.0 == 0 }).await;
    stop(shutdown, task).await;
    assert_eq!(delivered(&receiver), stored);
}
