//! Fixtures for the broker's protocol tests.
//!
//! A [`Platform`] is everything the broker needs, made for real in a
//! temporary directory: a CA (`rampart-pki`), a registry (the SQLite store),
//! a [`RecordingSink`] standing in for the pipeline, and the broker itself,
//! served by [`rampart_broker::run`] on a loopback port of the test's own
//! runtime. A [`Client`] is a raw MQTT client over mutual TLS: it sends
//! packets as given, or bytes for malformed input, and reads what the server
//! sends frame by frame, so a test sees exactly what is on the wire.
//!
//! Every wait is bounded by [`WAIT`]. The bound only stops a broken broker
//! from hanging the suite; passing runs never get near it. Nothing here
//! sleeps to let something happen: tests wait for the event itself (a
//! packet, a closed socket, a sink record, a counter).

use std::fmt;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use mqtt5_protocol::packet::MqttPacket;
use mqtt5_protocol::packet::connect::ConnectPacket;
use mqtt5_protocol::packet::disconnect::DisconnectPacket;
use mqtt5_protocol::packet::puback::PubAckPacket;
use mqtt5_protocol::packet::publish::PublishPacket;
use mqtt5_protocol::packet::subscribe::{SubscribePacket, SubscriptionOptions, TopicFilter};
use mqtt5_protocol::{
    FixedHeader, Packet, PacketType, Properties, PropertyId, PropertyValue, QoS, WillMessage,
};
use rampart_broker::metrics::Metrics;
use rampart_broker::{Broker, BrokerConfig, TlsMaterial};
use rampart_pki::{Pki, PkiOptions, RevocationReason};
use rampart_proto::DeviceId;
use rampart_proto::ingest::{
    Admission, DisconnectReason, InboundMessage, IngestOutcome, IngestSink, PresenceEvent,
    Rejection, RejectionKind,
};
use rampart_store::sqlite::SqliteOptions;
use rampart_store::{Actor, AuditKey, NewCertificate, NewDevice, NewService, SqliteStore, Store};
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_util::sync::CancellationToken;

/// Longest a test waits for something it expects. A failure bound only.
pub const WAIT: Duration = Duration::from_secs(5);

/// MQTT 3.1.1 (protocol level 4).
pub const V3: u8 = 4;
/// MQTT 5.0 (protocol level 5).
pub const V5: u8 = 5;

/// `devices/{id}/{category}/up`.
pub fn up(id: &str, category: &str) -> String {
    format!("devices/{id}/{category}/up")
}

/// Runs `f` until it returns true, yielding to the runtime in between, for
/// state that has no event to wait on (the broker's counters). Fails after
/// [`WAIT`].
pub async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !f() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {WAIT:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

// ---------------------------------------------------------------------------
// The pipeline stand-in
// ---------------------------------------------------------------------------

/// What the [`RecordingSink`] has seen.
#[derive(Debug, Default)]
pub struct SinkLog {
    /// Messages the sink committed (or rejected: see `rejected`), in order.
    pub committed: Vec<InboundMessage>,
    /// Messages the sink rejected, in order.
    pub rejected: Vec<InboundMessage>,
    /// Presence events, in order.
    pub presence: Vec<PresenceEvent>,
    /// `ingest` calls waiting at the gate right now.
    pub held: usize,
    /// Admitted messages waiting for their commit at the commit gate.
    pub commits_held: usize,
    /// Commits that failed ([`RecordingSink::fail_commits`]).
    pub commits_failed: usize,
}

/// A pipeline that records what the broker hands it, in two steps like the
/// real one: admission (it can reject payloads by prefix, and hold messages
/// behind a gate to show back-pressure) and commit (which can be held, to
/// show that acknowledgements wait for it while routing does not, or made
/// to fail).
#[derive(Debug)]
pub struct RecordingSink {
    rec: Recorder,
    reject_prefix: Mutex<Option<Vec<u8>>>,
    gate: Mutex<Option<Arc<Semaphore>>>,
    commit_gate: Mutex<Option<Arc<Semaphore>>>,
    fail_commits: Arc<std::sync::atomic::AtomicBool>,
}

/// The log and its change notifications, shared with pending commits.
#[derive(Debug, Clone)]
struct Recorder {
    log: Arc<Mutex<SinkLog>>,
    changed: Arc<watch::Sender<u64>>,
}

impl Recorder {
    fn record(&self, f: impl FnOnce(&mut SinkLog)) {
        f(&mut self.log.lock().expect("sink log lock poisoned"));
        self.changed.send_modify(|n| *n += 1);
    }
}

impl Default for RecordingSink {
    fn default() -> Self {
        Self {
            rec: Recorder {
                log: Arc::new(Mutex::new(SinkLog::default())),
                changed: Arc::new(watch::Sender::new(0)),
            },
            reject_prefix: Mutex::new(None),
            gate: Mutex::new(None),
            commit_gate: Mutex::new(None),
            fail_commits: Arc::default(),
        }
    }
}

/// The detail the sink gives when it rejects a payload.
pub const REJECT_DETAIL: &str = "payload is not a telemetry document";

/// The detail the sink gives when a commit fails.
pub const STORE_FAILED_DETAIL: &str = "the telemetry store is unavailable";

impl RecordingSink {
    fn log(&self) -> MutexGuard<'_, SinkLog> {
        self.rec.log.lock().expect("sink log lock poisoned")
    }

    fn record(&self, f: impl FnOnce(&mut SinkLog)) {
        self.rec.record(f);
    }

    /// From now on every admitted message waits for its commit at a
    /// closed gate until [`Self::release_commits`].
    pub fn hold_commits(&self) {
        *self.commit_gate.lock().expect("sink lock poisoned") = Some(Arc::new(Semaphore::new(0)));
    }

    /// Lets `n` more held commits through.
    pub fn release_commits(&self, n: usize) {
        if let Some(gate) = self
            .commit_gate
            .lock()
            .expect("sink lock poisoned")
            .as_ref()
        {
            gate.add_permits(n);
        }
    }

    /// From now on every commit fails (the store is unavailable).
    pub fn fail_commits(&self) {
        self.fail_commits.store(true, Ordering::SeqCst);
    }

    /// From now on commits succeed again (the store is back).
    pub fn succeed_commits(&self) {
        self.fail_commits.store(false, Ordering::SeqCst);
    }

    /// Payloads starting with `prefix` are rejected as
    /// [`RejectionKind::PayloadFormatInvalid`] from now on.
    pub fn reject_payloads_starting_with(&self, prefix: &[u8]) {
        *self.reject_prefix.lock().expect("sink lock poisoned") = Some(prefix.to_vec());
    }

    /// From now on every message waits at a closed gate until [`Self::release`].
    pub fn hold(&self) {
        *self.gate.lock().expect("sink lock poisoned") = Some(Arc::new(Semaphore::new(0)));
    }

    /// Lets `n` more held messages through.
    pub fn release(&self, n: usize) {
        if let Some(gate) = self.gate.lock().expect("sink lock poisoned").as_ref() {
            gate.add_permits(n);
        }
    }

    /// Payloads committed so far, in order.
    pub fn committed_payloads(&self) -> Vec<Bytes> {
        self.log()
            .committed
            .iter()
            .map(|m| m.payload.clone())
            .collect()
    }

    /// A copy of the committed messages.
    pub fn committed(&self) -> Vec<InboundMessage> {
        self.log().committed.clone()
    }

    /// A copy of the rejected messages.
    pub fn rejected(&self) -> Vec<InboundMessage> {
        self.log().rejected.clone()
    }

    /// Waits until `pred` holds for the log. Checks after subscribing to
    /// changes, so no change between the check and the wait is missed.
    pub async fn wait_until(&self, what: &str, pred: impl Fn(&SinkLog) -> bool) {
        let mut changes = self.rec.changed.subscribe();
        let waited = tokio::time::timeout(WAIT, async {
            loop {
                if pred(&self.log()) {
                    return;
                }
                changes.changed().await.expect("sink dropped");
            }
        })
        .await;
        assert!(
            waited.is_ok(),
            "timed out after {WAIT:?} waiting for {what}"
        );
    }

    /// Waits until at least `n` messages are held at the gate.
    pub async fn wait_held(&self, n: usize) {
        self.wait_until(
            &format!("{n} or more message(s) held by the pipeline"),
            |l| l.held >= n,
        )
        .await;
    }

    /// Waits until at least `n` admitted messages wait for their commit.
    pub async fn wait_commits_held(&self, n: usize) {
        self.wait_until(
            &format!("{n} or more message(s) waiting for their commit"),
            |l| l.commits_held >= n,
        )
        .await;
    }

    /// Waits until `n` or more commits have failed.
    pub async fn wait_commits_failed(&self, n: usize) {
        self.wait_until(&format!("{n} or more failed commit(s)"), |l| {
            l.commits_failed >= n
        })
        .await;
    }

    /// Reasons of the device's disconnect events so far, in order.
    pub fn disconnects(&self, device: &str) -> Vec<DisconnectReason> {
        disconnects_in(&self.log(), device)
    }

    /// Waits until the device has `n` disconnect events and returns their reasons.
    pub async fn wait_disconnects(&self, device: &str, n: usize) -> Vec<DisconnectReason> {
        self.wait_until(&format!("{n} disconnect event(s) of {device}"), |l| {
            disconnects_in(l, device).len() >= n
        })
        .await;
        self.disconnects(device)
    }

    /// The presence events of `device` so far, in order.
    pub fn presence_of(&self, device: &str) -> Vec<PresenceEvent> {
        self.log()
            .presence
            .iter()
            .filter(|e| match e {
                PresenceEvent::Connected { device: d, .. }
                | PresenceEvent::Disconnected { device: d, .. } => d.as_str() == device,
            })
            .cloned()
            .collect()
    }

    /// Number of presence events of `device` so far (connects and disconnects).
    pub fn presence_count(&self, device: &str) -> usize {
        self.log()
            .presence
            .iter()
            .filter(|e| match e {
                PresenceEvent::Connected { device: d, .. }
                | PresenceEvent::Disconnected { device: d, .. } => d.as_str() == device,
            })
            .count()
    }
}

fn disconnects_in(log: &SinkLog, device: &str) -> Vec<DisconnectReason> {
    log.presence
        .iter()
        .filter_map(|e| match e {
            PresenceEvent::Disconnected {
                device: d, reason, ..
            } if d.as_str() == device => Some(*reason),
            _ => None,
        })
        .collect()
}

#[async_trait::async_trait]
impl IngestSink for RecordingSink {
    async fn ingest(&self, message: InboundMessage) -> IngestOutcome {
        self.admit(message).await.outcome().await
    }

    async fn admit(&self, message: InboundMessage) -> Admission {
        let gate = self.gate.lock().expect("sink lock poisoned").clone();
        if let Some(gate) = gate {
            self.record(|l| l.held += 1);
            gate.acquire().await.expect("gate never closed").forget();
            self.record(|l| l.held -= 1);
        }
        let reject = self
            .reject_prefix
            .lock()
            .expect("sink lock poisoned")
            .as_ref()
            .is_some_and(|p| message.payload.starts_with(p));
        if reject {
            self.record(|l| l.rejected.push(message));
            return Admission::Decided(IngestOutcome::Rejected(Rejection {
                kind: RejectionKind::PayloadFormatInvalid,
                detail: REJECT_DETAIL.to_owned(),
            }));
        }
        let commit_gate = self.commit_gate.lock().expect("sink lock poisoned").clone();
        let fail = Arc::clone(&self.fail_commits);
        let rec = self.rec.clone();
        Admission::Queued(Box::pin(async move {
            if let Some(gate) = commit_gate {
                rec.record(|l| l.commits_held += 1);
                gate.acquire().await.expect("gate never closed").forget();
                rec.record(|l| l.commits_held -= 1);
            }
            if fail.load(Ordering::SeqCst) {
                rec.record(|l| l.commits_failed += 1);
                return IngestOutcome::Rejected(Rejection {
                    kind: RejectionKind::Internal,
                    detail: STORE_FAILED_DETAIL.to_owned(),
                });
            }
            rec.record(|l| l.committed.push(message));
            IngestOutcome::Committed
        }))
    }

    async fn presence(&self, event: PresenceEvent) {
        self.record(|l| l.presence.push(event));
    }
}

// ---------------------------------------------------------------------------
// The platform: CA, registry, broker
// ---------------------------------------------------------------------------

/// A certificate and its key, as a client holds them.
#[derive(Clone)]
pub struct Credentials {
    /// The certificate CN.
    pub id: DeviceId,
    /// The certificate's serial (lowercase hex).
    pub serial: String,
    cert_pem: String,
    key_pem: String,
}

impl Credentials {
    fn issued(name: &str, cert: rampart_pki::IssuedCertificate, key: &str) -> Self {
        Self {
            id: id(name),
            serial: cert.serial,
            cert_pem: cert.pem,
            key_pem: key.to_owned(),
        }
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Credentials({})", self.id)
    }
}

/// A CA, a registry, a recording pipeline and a running broker.
pub struct Platform {
    pki: Pki,
    /// The registry.
    pub store: Arc<SqliteStore>,
    /// The broker under test.
    pub broker: Arc<Broker>,
    /// The pipeline stand-in.
    pub sink: Arc<RecordingSink>,
    addr: SocketAddr,
    roots: Arc<RootCertStore>,
    shutdown: CancellationToken,
    server: Option<JoinHandle<io::Result<()>>>,
    changes_seen: AtomicU64,
    // Last: removed after everything above that may use it.
    _dir: tempfile::TempDir,
}

/// The broker's TLS material from `pki`, without a CRL.
fn tls_material(pki: &Pki, tls12: bool) -> TlsMaterial {
    let read = |p: std::path::PathBuf| std::fs::read_to_string(&p).expect("read server PEM");
    TlsMaterial {
        server_chain_pem: read(pki.server_cert_path()),
        server_key_pem: read(pki.server_key_path()),
        client_ca_pem: pki.client_ca_pem(),
        crl_pem: None,
        tls12,
    }
}

fn id(name: &str) -> DeviceId {
    DeviceId::parse(name).expect("test identity names are valid")
}

impl Platform {
    /// A platform with the test defaults (see [`Platform::start_with`]).
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// A platform whose broker config is the default with loopback exempt
    /// from the connection rate limit, then changed by `configure`.
    pub async fn start_with(configure: impl FnOnce(&mut BrokerConfig)) -> Self {
        let dir = tempfile::tempdir().expect("create temp dir");
        let (pki, _) =
            Pki::init(&dir.path().join("pki"), &PkiOptions::default()).expect("create the CA");
        let store = Arc::new(
            SqliteStore::open(
                &dir.path().join("rampart.db"),
                AuditKey::new([7; 32], None),
                SqliteOptions::default(),
            )
            .expect("open the store"),
        );
        let tls = tls_material(&pki, false);
        let mut config = BrokerConfig {
            rate_limit_exempt: vec![Ipv4Addr::LOCALHOST.into()],
            ..BrokerConfig::default()
        };
        configure(&mut config);
        let sink = Arc::new(RecordingSink::default());
        let broker = Broker::new(
            config,
            &tls,
            Arc::clone(&store) as Arc<dyn Store>,
            Arc::clone(&sink) as Arc<dyn IngestSink>,
        )
        .expect("build the broker");
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .expect("bind a loopback port");
        let addr = listener.local_addr().expect("listener address");
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(rampart_broker::run(
            listener,
            Arc::clone(&broker),
            shutdown.clone(),
        ));
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(pki.chain_pem().as_bytes()) {
            roots
                .add(cert.expect("CA chain PEM"))
                .expect("CA certificate as trust anchor");
        }
        Self {
            pki,
            store,
            broker,
            sink,
            addr,
            roots: Arc::new(roots),
            shutdown,
            server: Some(server),
            changes_seen: AtomicU64::new(0),
            _dir: dir,
        }
    }

    /// Reloads the broker's TLS configuration, offering TLS 1.2 too if
    /// `tls12` (`broker.tls12`).
    pub fn reload_tls(&self, tls12: bool) {
        self.broker
            .reload_tls(&tls_material(&self.pki, tls12))
            .expect("reload the TLS configuration");
    }

    /// The broker's counters.
    pub fn metrics(&self) -> Arc<Metrics> {
        self.broker.metrics()
    }

    /// A certificate from this CA for `name` that the registry does not know.
    pub fn unregistered_device(&self, name: &str) -> Credentials {
        let (cert, key) = self
            .pki
            .issue_device_with_generated_key(&id(name))
            .expect("issue a device certificate");
        Credentials::issued(name, cert, &key)
    }

    /// A registered device `name`.
    pub async fn device(&self, name: &str) -> Credentials {
        let (cert, key) = self
            .pki
            .issue_device_with_generated_key(&id(name))
            .expect("issue a device certificate");
        self.store
            .create_device(
                NewDevice {
                    id: id(name),
                    serial: cert.serial.clone(),
                    fingerprint: cert.fingerprint.clone(),
                    not_before: cert.not_before,
                    not_after: cert.not_after,
                    claim_code_hash: "not used by the broker".into(),
                },
                &Actor::system(),
            )
            .await
            .expect("register the device");
        Credentials::issued(name, cert, &key)
    }

    /// A new certificate and key for the registered device `name`,
    /// recorded as its pending certificate, as a renewal leaves it.
    pub async fn renewed(&self, name: &str) -> Credentials {
        let (cert, key) = self
            .pki
            .issue_device_with_generated_key(&id(name))
            .expect("issue a device certificate");
        self.store
            .add_pending_certificate(
                NewCertificate {
                    identity: id(name),
                    serial: cert.serial.clone(),
                    fingerprint: cert.fingerprint.clone(),
                    not_before: cert.not_before,
                    not_after: cert.not_after,
                },
                &Actor::system(),
            )
            .await
            .expect("record the pending certificate");
        Credentials::issued(name, cert, &key)
    }

    /// A registered service identity `name`.
    pub async fn service(&self, name: &str) -> Credentials {
        let (cert, key) = self
            .pki
            .issue_service(&id(name))
            .expect("issue a service certificate");
        self.store
            .create_service(
                NewService {
                    id: id(name),
                    serial: cert.serial.clone(),
                    fingerprint: cert.fingerprint.clone(),
                    not_before: cert.not_before,
                    not_after: cert.not_after,
                },
                &Actor::system(),
            )
            .await
            .expect("register the service");
        Credentials::issued(name, cert, &key)
    }

    /// Revokes the device in the registry and tells the broker, as `serve`
    /// does from the change feed.
    pub async fn revoke_device(&self, name: &str) {
        self.store
            .revoke_device(&id(name), RevocationReason::KeyCompromise, &Actor::system())
            .await
            .expect("revoke the device");
        self.feed_changes().await;
    }

    /// Disables or enables the device and tells the broker.
    pub async fn set_disabled(&self, name: &str, disabled: bool) {
        self.store
            .set_device_disabled(&id(name), disabled, &Actor::system())
            .await
            .expect("disable the device");
        self.feed_changes().await;
    }

    /// Hands the broker every change-feed row it has not seen.
    async fn feed_changes(&self) {
        let after = self.changes_seen.load(Ordering::SeqCst);
        let changes = self
            .store
            .changes_since(after)
            .await
            .expect("read the change feed");
        for change in changes {
            self.changes_seen.fetch_max(change.seq, Ordering::SeqCst);
            self.broker.apply_change(&change).await;
        }
    }

    /// The broker's listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A TLS connection to the broker, with `creds` as client certificate
    /// (none if `None`).
    pub async fn tls(&self, creds: Option<&Credentials>) -> io::Result<TlsStream<TcpStream>> {
        self.tls_with(self.client_config(creds)).await
    }

    /// A TLS connection to the broker with `config` (which keeps the
    /// client's resumption tickets from one connection to the next).
    pub async fn tls_with(
        &self,
        config: Arc<rustls::ClientConfig>,
    ) -> io::Result<TlsStream<TcpStream>> {
        let tcp = TcpStream::connect(self.addr).await?;
        tcp.set_nodelay(true)?;
        let name = ServerName::try_from("localhost").expect("valid server name");
        TlsConnector::from(config).connect(name, tcp).await
    }

    /// A client configuration trusting the broker's CA, with `creds` as
    /// client certificate (none if `None`).
    pub fn client_config(&self, creds: Option<&Credentials>) -> Arc<rustls::ClientConfig> {
        self.client_config_for(creds, rustls::DEFAULT_VERSIONS)
    }

    /// [`Platform::client_config`] offering only the TLS `versions` given.
    pub fn client_config_for(
        &self,
        creds: Option<&Credentials>,
        versions: &[&'static rustls::SupportedProtocolVersion],
    ) -> Arc<rustls::ClientConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .expect("ring supports these TLS versions")
            .with_root_certificates(Arc::clone(&self.roots));
        let config = match creds {
            Some(c) => {
                let chain = CertificateDer::pem_slice_iter(c.cert_pem.as_bytes())
                    .collect::<Result<Vec<_>, _>>()
                    .expect("client certificate PEM");
                let key =
                    PrivateKeyDer::from_pem_slice(c.key_pem.as_bytes()).expect("client key PEM");
                builder
                    .with_client_auth_cert(chain, key)
                    .expect("client certificate and key match")
            }
            None => builder.with_no_client_auth(),
        };
        Arc::new(config)
    }

    /// A TLS session as `creds` speaking MQTT `version`, before CONNECT.
    pub async fn open(&self, creds: &Credentials, version: u8) -> Client {
        let stream = tokio::time::timeout(WAIT, self.tls(Some(creds)))
            .await
            .expect("TLS handshake timed out")
            .expect("TLS handshake with a CA-issued certificate");
        Client::over(stream, version)
    }

    /// Sends `connect` as `creds` and returns the client and the CONNACK.
    pub async fn connect(&self, creds: &Credentials, connect: Connect) -> (Client, ConnAck) {
        let mut client = self.open(creds, connect.version).await;
        client.send(&connect.packet()).await;
        let ack = client.recv_connack().await;
        (client, ack)
    }

    /// Connects and asserts that the broker accepted the CONNECT.
    pub async fn connected(&self, creds: &Credentials, connect: Connect) -> Client {
        let (client, ack) = self.connect(creds, connect).await;
        assert_eq!(ack.code, 0, "CONNACK of {creds:?}: {ack:?}");
        client
    }

    /// Stops the server as `serve` does at shutdown and returns what
    /// [`rampart_broker::run`] returned.
    pub async fn stop(&mut self) -> io::Result<()> {
        self.shutdown.cancel();
        let server = self.server.take().expect("server still running");
        tokio::time::timeout(WAIT, server)
            .await
            .expect("run() returned after shutdown")
            .expect("server task did not panic")
    }
}

impl Drop for Platform {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

// ---------------------------------------------------------------------------
// The raw client
// ---------------------------------------------------------------------------

/// The fields of a CONNECT a test varies.
#[derive(Debug, Clone)]
pub struct Connect {
    /// 4 (MQTT 3.1.1) or 5 (MQTT 5.0).
    pub version: u8,
    /// Client identifier.
    pub client_id: String,
    /// Clean start (MQTT 5) / clean session (3.1.1).
    pub clean_start: bool,
    /// Keepalive in seconds.
    pub keep_alive: u16,
    /// MQTT 5 session expiry interval.
    pub session_expiry: Option<u32>,
    /// Will message.
    pub will: Option<WillMessage>,
    /// MQTT 5 Receive Maximum (in-flight deliveries the client accepts).
    pub receive_maximum: Option<u16>,
    /// MQTT 5 Maximum Packet Size the client accepts.
    pub maximum_packet_size: Option<u32>,
}

impl Connect {
    /// An MQTT 5 CONNECT: clean start, keepalive 60 s, no will.
    pub fn v5(client_id: &str) -> Self {
        Self {
            version: V5,
            client_id: client_id.to_owned(),
            clean_start: true,
            keep_alive: 60,
            session_expiry: None,
            will: None,
            receive_maximum: None,
            maximum_packet_size: None,
        }
    }

    /// The same for MQTT 3.1.1.
    pub fn v3(client_id: &str) -> Self {
        Self {
            version: V3,
            ..Self::v5(client_id)
        }
    }

    /// The CONNECT packet.
    pub fn packet(&self) -> Packet {
        let mut properties = Properties::default();
        if let Some(e) = self.session_expiry {
            properties.set_session_expiry_interval(e);
        }
        if let Some(r) = self.receive_maximum {
            properties.set_receive_maximum(r);
        }
        if let Some(m) = self.maximum_packet_size {
            properties.set_maximum_packet_size(m);
        }
        Packet::Connect(Box::new(ConnectPacket {
            protocol_version: self.version,
            clean_start: self.clean_start,
            keep_alive: self.keep_alive,
            client_id: self.client_id.clone(),
            username: None,
            password: None,
            will: self.will.clone(),
            properties,
            will_properties: Properties::default(),
        }))
    }
}

/// A CONNACK as it was on the wire.
#[derive(Debug)]
pub struct ConnAck {
    /// Session present flag.
    pub session_present: bool,
    /// MQTT 5 reason code, or MQTT 3.1.1 return code, as sent.
    pub code: u8,
    /// MQTT 5 properties.
    pub properties: Properties,
}

/// One packet as received: first byte and body.
#[derive(Debug, Clone)]
pub struct Frame {
    /// Packet type and flags.
    pub first: u8,
    /// Everything after the remaining length.
    pub body: Bytes,
}

impl Frame {
    /// Decodes the frame as a server packet of protocol `version`.
    pub fn decode(&self, version: u8) -> Packet {
        let packet_type = PacketType::from_u8(self.first >> 4).expect("server sent a known type");
        let remaining = u32::try_from(self.body.len()).expect("frame fits in u32");
        let header = FixedHeader::new(packet_type, self.first & 0x0F, remaining);
        let mut body = self.body.clone();
        let packet =
            Packet::decode_from_body_with_version(packet_type, &header, &mut body, version)
                .expect("server packet decodes");
        assert!(
            !body.has_remaining(),
            "{} bytes left after a server {}",
            body.remaining(),
            packet.packet_type_name()
        );
        packet
    }
}

/// What the next read from the server brought.
#[derive(Debug)]
pub enum Event {
    /// A complete packet.
    Frame(Frame),
    /// The connection ended (EOF, TLS close, reset); the text says how.
    Closed(String),
}

/// Splits one complete frame off the front of `buf`, if there is one.
fn split_frame(buf: &mut BytesMut) -> Option<Frame> {
    let mut remaining: usize = 0;
    let mut header_len = None;
    for i in 0..4 {
        let byte = *buf.get(1 + i)?;
        remaining |= usize::from(byte & 0x7F) << (7 * i);
        if byte & 0x80 == 0 {
            header_len = Some(2 + i);
            break;
        }
    }
    let header_len = header_len.expect("server sent a remaining length over 4 bytes");
    if buf.len() < header_len + remaining {
        return None;
    }
    let mut frame = buf.split_to(header_len + remaining);
    let first = frame.get_u8();
    frame.advance(header_len - 1);
    Some(Frame {
        first,
        body: frame.freeze(),
    })
}

/// Encodes a client packet with the crate's own encoder.
pub fn encode(packet: &Packet) -> BytesMut {
    let mut out = BytesMut::new();
    let encoded = match packet {
        Packet::Connect(p) => p.encode(&mut out),
        Packet::Publish(p) => p.encode(&mut out),
        Packet::PubAck(p) => p.encode(&mut out),
        Packet::PubRec(p) => p.encode(&mut out),
        Packet::PubRel(p) => p.encode(&mut out),
        Packet::PubComp(p) => p.encode(&mut out),
        Packet::Subscribe(p) => p.encode(&mut out),
        Packet::Unsubscribe(p) => p.encode(&mut out),
        Packet::Disconnect(p) => p.encode(&mut out),
        Packet::PingReq => {
            out.put_slice(&[0xC0, 0x00]);
            Ok(())
        }
        other => panic!("{} is not a client packet", other.packet_type_name()),
    };
    encoded.expect("client packet encodes");
    out
}

/// An MQTT client over mutual TLS that speaks packets, not an API.
pub struct Client {
    stream: TlsStream<TcpStream>,
    rbuf: BytesMut,
    /// Protocol level it speaks.
    pub version: u8,
    next_id: u16,
}

impl Client {
    /// A client on an established TLS session, before CONNECT.
    pub fn over(stream: TlsStream<TcpStream>, version: u8) -> Self {
        Client {
            stream,
            rbuf: BytesMut::new(),
            version,
            next_id: 0,
        }
    }

    /// The TLS session under the client.
    pub fn tls(&self) -> &rustls::ClientConnection {
        self.stream.get_ref().1
    }

    /// A fresh packet identifier (1, 2, ...).
    pub fn packet_id(&mut self) -> u16 {
        self.next_id = self.next_id.wrapping_add(1).max(1);
        self.next_id
    }

    /// Writes a packet.
    pub async fn send(&mut self, packet: &Packet) {
        let bytes = encode(packet);
        self.send_raw(&bytes).await;
    }

    /// Writes bytes as they are.
    pub async fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("write to broker");
        self.stream.flush().await.expect("flush to broker");
    }

    /// Reads until a frame is complete or the connection ends.
    async fn read_event(&mut self) -> Event {
        loop {
            if let Some(frame) = split_frame(&mut self.rbuf) {
                return Event::Frame(frame);
            }
            match self.stream.read_buf(&mut self.rbuf).await {
                Ok(0) if self.rbuf.is_empty() => return Event::Closed("EOF".into()),
                Ok(0) => {
                    return Event::Closed(format!(
                        "EOF inside a packet, {} bytes pending",
                        self.rbuf.len()
                    ));
                }
                Ok(_) => {}
                Err(e) => return Event::Closed(format!("{:?}: {e}", e.kind())),
            }
        }
    }

    /// The next frame or the end of the connection, within [`WAIT`].
    pub async fn next_event(&mut self) -> Event {
        tokio::time::timeout(WAIT, self.read_event())
            .await
            .unwrap_or_else(|_| panic!("nothing from the broker within {WAIT:?}"))
    }

    /// The next frame; fails if the connection ends.
    pub async fn recv_frame(&mut self) -> Frame {
        match self.next_event().await {
            Event::Frame(f) => f,
            Event::Closed(how) => panic!("connection closed ({how}) while a packet was expected"),
        }
    }

    /// The next packet, decoded.
    pub async fn recv(&mut self) -> Packet {
        let frame = self.recv_frame().await;
        frame.decode(self.version)
    }

    /// Asserts that the server closes the connection with nothing more sent.
    pub async fn expect_closed(&mut self) {
        match self.next_event().await {
            Event::Closed(_) => {}
            Event::Frame(f) => panic!(
                "expected the connection to close, got {:?}",
                f.decode(self.version)
            ),
        }
    }

    /// Asserts an MQTT 5 DISCONNECT with `code`, then the close.
    pub async fn expect_disconnect(&mut self, code: u8) {
        match self.recv().await {
            Packet::Disconnect(d) => assert_eq!(
                u8::from(d.reason_code),
                code,
                "DISCONNECT reason: got {:?}",
                d.reason_code
            ),
            other => panic!("expected DISCONNECT 0x{code:02X}, got {other:?}"),
        }
        self.expect_closed().await;
    }

    /// Asserts that nothing arrives within `window`. A failure bound: a
    /// wrong broker would usually show itself well within it; a right one
    /// is never waited for longer than this.
    pub async fn expect_silence(&mut self, window: Duration) {
        if let Ok(event) = tokio::time::timeout(window, self.read_event()).await {
            panic!("expected nothing from the broker, got {event:?}");
        }
    }

    /// Reads the CONNACK, keeping the raw return/reason code.
    pub async fn recv_connack(&mut self) -> ConnAck {
        let frame = self.recv_frame().await;
        assert_eq!(frame.first, 0x20, "expected CONNACK, got {frame:?}");
        let mut body = frame.body.clone();
        assert!(body.len() >= 2, "CONNACK too short: {frame:?}");
        let flags = body.get_u8();
        let code = body.get_u8();
        let properties = if self.version == V5 {
            Properties::decode(&mut body).expect("CONNACK properties")
        } else {
            assert!(body.is_empty(), "MQTT 3.1.1 CONNACK is 2 bytes: {frame:?}");
            Properties::default()
        };
        ConnAck {
            session_present: flags & 1 == 1,
            code,
            properties,
        }
    }

    /// A PUBLISH in this client's dialect, with a fresh packet id for QoS > 0.
    pub fn publish_packet(&mut self, topic: &str, payload: &[u8], qos: u8) -> PublishPacket {
        let wire_qos = match qos {
            0 => QoS::AtMostOnce,
            1 => QoS::AtLeastOnce,
            _ => QoS::ExactlyOnce,
        };
        let mut p = PublishPacket::new(topic, Bytes::copy_from_slice(payload), wire_qos);
        p.protocol_version = self.version;
        if qos > 0 {
            p.packet_id = Some(self.packet_id());
        }
        p
    }

    /// Publishes at QoS 1 and returns the PUBACK (asserting its packet id).
    pub async fn publish_qos1(&mut self, topic: &str, payload: &[u8]) -> PubAckPacket {
        let p = self.publish_packet(topic, payload, 1);
        let id = p.packet_id.expect("QoS 1 has an id");
        self.send(&Packet::Publish(p)).await;
        self.recv_puback(id).await
    }

    /// Reads a PUBACK for `id`.
    pub async fn recv_puback(&mut self, id: u16) -> PubAckPacket {
        match self.recv().await {
            Packet::PubAck(a) => {
                assert_eq!(a.packet_id, id, "PUBACK for the wrong packet");
                a
            }
            other => panic!("expected PUBACK {id}, got {other:?}"),
        }
    }

    /// Sends `publish` again as a retransmission (DUP set).
    pub async fn resend(&mut self, mut publish: PublishPacket) {
        publish.dup = true;
        self.send(&Packet::Publish(publish)).await;
    }

    /// Reads a successful PUBREC for `id`.
    pub async fn recv_pubrec_ok(&mut self, id: u16) {
        match self.recv().await {
            Packet::PubRec(r) => assert_eq!((r.packet_id, u8::from(r.reason_code)), (id, 0)),
            other => panic!("expected PUBREC {id}, got {other:?}"),
        }
    }

    /// Publishes at QoS 1 and asserts a successful PUBACK.
    pub async fn publish_ok(&mut self, topic: &str, payload: &[u8]) {
        let ack = self.publish_qos1(topic, payload).await;
        assert_eq!(
            u8::from(ack.reason_code),
            0,
            "PUBACK for {topic}: {:?}",
            ack.reason_code
        );
    }

    /// Subscribes to `filters` (each with its options) and returns the
    /// SUBACK's codes as sent.
    pub async fn subscribe_with(&mut self, filters: &[(&str, SubscriptionOptions)]) -> Vec<u8> {
        let id = self.packet_id();
        let mut s = SubscribePacket::new(id);
        s.protocol_version = self.version;
        for (f, o) in filters {
            s = s.add_filter_with_options(TopicFilter::with_options(*f, *o));
        }
        self.send(&Packet::Subscribe(s)).await;
        match self.recv().await {
            Packet::SubAck(a) => {
                assert_eq!(a.packet_id, id, "SUBACK for the wrong packet");
                a.reason_codes.iter().map(|c| *c as u8).collect()
            }
            other => panic!("expected SUBACK {id}, got {other:?}"),
        }
    }

    /// Subscribes to one filter at `qos` and returns the SUBACK code.
    pub async fn subscribe(&mut self, filter: &str, qos: u8) -> u8 {
        let wire_qos = match qos {
            0 => QoS::AtMostOnce,
            1 => QoS::AtLeastOnce,
            _ => QoS::ExactlyOnce,
        };
        let codes = self
            .subscribe_with(&[(filter, SubscriptionOptions::new(wire_qos))])
            .await;
        assert_eq!(codes.len(), 1, "one code per filter: {codes:?}");
        codes.first().copied().expect("one code")
    }

    /// The next packet, which must be a PUBLISH.
    pub async fn recv_publish(&mut self) -> PublishPacket {
        match self.recv().await {
            Packet::Publish(p) => p,
            other => panic!("expected PUBLISH, got {other:?}"),
        }
    }

    /// PINGREQ, and the next packet must be its PINGRESP.
    pub async fn ping(&mut self) {
        self.send(&Packet::PingReq).await;
        match self.recv().await {
            Packet::PingResp => {}
            other => panic!("expected PINGRESP, got {other:?}"),
        }
    }

    /// Sends a normal DISCONNECT and waits for the server to close.
    pub async fn disconnect(mut self) {
        self.send(&Packet::Disconnect(DisconnectPacket::normal()))
            .await;
        self.expect_closed().await;
    }
}

/// The reason string of an MQTT 5 ack's properties.
pub fn reason_string(props: &Properties) -> Option<String> {
    match props.get(PropertyId::ReasonString) {
        Some(PropertyValue::Utf8String(s)) => Some(s.clone()),
        _ => None,
    }
}
