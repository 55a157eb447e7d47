//! Certificate renewal and claiming end to end: the real `serve` and CLI,
//! a device speaking MQTT over mutual TLS with the load generator's client,
//! CSRs made with `rcgen`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use mqtt5_protocol::packet::puback::PubAckPacket;
use mqtt5_protocol::packet::subscribe::SubscribePacket;
use mqtt5_protocol::{Packet, QoS, ReasonCode};
use rampart_loadgen::{CertDir, Client, LoadgenError, MqttVersion, Qos, SessionKind, Target};
use rampart_proto::control::{BindMessage, RenewalAnswer};
use rampart_store::sqlite::SqliteOptions;
use rampart_store::{AuditKey, CertificateStatus, SqliteStore, Store};
use rampart_test_support::{Serve, Workspace, wait_limit};
use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair};
use rustls_pki_types::ServerName;

const CONFIG: &str = r#"
[broker]
rate_limit_exempt = ["127.0.0.1", "::1"]

[renewal]
max_per_window = 8
window = "1h"

[claim]
expiry = "10m"
max_attempts = 3
max_confirmations_per_window = 6
confirmation_window = "1h"
"#;

/// A server with one device, `meter-1`, whose files are in `devices/`.
struct Setup {
    ws: Workspace,
    serve: Serve,
    addr: std::net::SocketAddr,
    claim_code: String,
    qr: String,
}

fn start(config: &str) -> Setup {
    let ws = Workspace::new();
    std::fs::write(ws.join("rampart.toml"), config).expect("config");
    ws.rampart().arg("init").assert().success();
    let created = ws.rampart_json(&["device", "create", "--id", "meter-1", "--out", "devices"]);
    let mut serve = ws.serve(&[("RAMPART_CONFIG", "rampart.toml")]);
    let addr = serve.listening("mqtt");
    Setup {
        claim_code: created["claim_code"]
            .as_str()
            .expect("claim code")
            .to_owned(),
        qr: created["qr_payload"]
            .as_str()
            .expect("QR payload")
            .to_owned(),
        ws,
        serve,
        addr,
    }
}

fn target(addr: std::net::SocketAddr) -> Target {
    Target {
        addr,
        server_name: ServerName::try_from("localhost").expect("name"),
        version: MqttVersion::V5,
        keepalive: Duration::from_secs(30),
    }
}

/// A device session: the MQTT client, subscribed to its `down` topics.
struct Device {
    client: Client,
    next_id: u16,
}

async fn connect(dir: &Path, addr: std::net::SocketAddr) -> Result<Device, LoadgenError> {
    let certs = CertDir::open(dir)?;
    let config = certs.client_config(&certs.load("meter-1")?, false)?;
    let mut client = Client::connect(&target(addr), config, "meter-1", SessionKind::Clean).await?;
    let sub = SubscribePacket::new(1).add_filter("devices/meter-1/+/down", QoS::AtLeastOnce);
    client.queue(&sub)?;
    client.flush().await?;
    match client.next_packet().await? {
        Packet::SubAck(a) => assert_eq!(a.packet_id, 1),
        other => panic!("expected SUBACK, got {other:?}"),
    }
    Ok(Device { client, next_id: 1 })
}

impl Device {
    /// Publishes `payload` on `devices/meter-1/{category}/up` at QoS 1 and
    /// returns the PUBACK's reason code and the answer on the `down` topic.
    async fn request(&mut self, category: &str, payload: &[u8]) -> (ReasonCode, Vec<u8>) {
        self.next_id += 1;
        let id = self.next_id;
        let topic = format!("devices/meter-1/{category}/up");
        let p = self
            .client
            .publish_packet(&topic, payload.to_vec(), Qos::AtLeastOnce, id);
        self.client.queue(&p).expect("queue");
        self.client.flush().await.expect("flush");
        let down = format!("devices/meter-1/{category}/down");
        let (mut ack, mut answer) = (None, None);
        let deadline = tokio::time::Instant::now() + wait_limit();
        while ack.is_none() || answer.is_none() {
            let packet = tokio::time::timeout_at(deadline, self.client.next_packet())
                .await
                .expect("an answer within the wait limit")
                .expect("read");
            match packet {
                Packet::PubAck(a) if a.packet_id == id => ack = Some(a.reason_code),
                Packet::Publish(p) if p.topic_name == down => {
                    if let Some(pid) = p.packet_id {
                        self.client.queue(&PubAckPacket::new(pid)).expect("queue");
                        self.client.flush().await.expect("flush");
                    }
                    answer = Some(p.payload.to_vec());
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        (
            ack.unwrap_or(ReasonCode::Success),
            answer.unwrap_or_default(),
        )
    }

    /// The next PUBLISH on `topic`, acknowledged.
    async fn receive(&mut self, topic: &str) -> Vec<u8> {
        let deadline = tokio::time::Instant::now() + wait_limit();
        loop {
            let packet = tokio::time::timeout_at(deadline, self.client.next_packet())
                .await
                .unwrap_or_else(|_| panic!("nothing on {topic} within the wait limit"))
                .expect("read");
            if let Packet::Publish(p) = packet {
                if let Some(pid) = p.packet_id {
                    self.client.queue(&PubAckPacket::new(pid)).expect("queue");
                    self.client.flush().await.expect("flush");
                }
                if p.topic_name == topic {
                    return p.payload.to_vec();
                }
            }
        }
    }

    async fn renew(&mut self, csr: &str) -> (ReasonCode, RenewalAnswer) {
        let body = serde_json::json!({ "csr": csr }).to_string();
        let (code, answer) = self.request("cert", body.as_bytes()).await;
        (
            code,
            RenewalAnswer::decode(&answer).expect("a cert/down answer"),
        )
    }
}

fn csr(cn: &str, key: &KeyPair) -> String {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, cn);
    params
        .serialize_request(key)
        .and_then(|r| r.pem())
        .expect("CSR")
}

/// Writes `meter-1.crt` (the chain), `meter-1.key` and `ca.crt` into a new
/// directory `name`, as a device keeps its renewed credentials.
fn keep(ws: &Workspace, name: &str, chain: &str, key: &KeyPair) -> PathBuf {
    let dir = ws.join(name);
    std::fs::create_dir_all(&dir).expect("dir");
    std::fs::copy(ws.join("devices/ca.crt"), dir.join("ca.crt")).expect("CA");
    std::fs::write(dir.join("meter-1.crt"), chain).expect("certificate");
    std::fs::write(dir.join("meter-1.key"), key.serialize_pem()).expect("key");
    dir
}

fn issued(answer: RenewalAnswer) -> rampart_proto::control::IssuedRenewal {
    match answer {
        RenewalAnswer::Issued(i) => i,
        RenewalAnswer::Refused { error } => panic!("renewal refused: {error:?}"),
    }
}

fn refusal(answer: &RenewalAnswer) -> &str {
    match answer {
        RenewalAnswer::Refused { error } => error.code.as_str(),
        RenewalAnswer::Issued(i) => panic!("unexpectedly issued {}", i.serial),
    }
}

/// The store of the workspace, opened beside the running server.
fn store(ws: &Workspace) -> SqliteStore {
    let data = ws.data_dir();
    let key = rampart_store::read_key_file(&data.join("audit.key")).expect("audit key");
    SqliteStore::open(
        &data.join("rampart.db"),
        AuditKey::new(key, None),
        SqliteOptions::default(),
    )
    .expect("open the store")
}

/// Serials on the CRL `serve` publishes, as lowercase hex.
fn crl_serials(ws: &Workspace) -> String {
    let pem = ws.rampart().args(["ca", "crl"]).output().expect("ca crl");
    assert!(pem.status.success());
    std::fs::write(ws.join("crl.pem"), &pem.stdout).expect("write CRL");
    ws.openssl_ok(&["crl", "-in", "crl.pem", "-noout", "-text"])
        .to_ascii_lowercase()
}

/// Polls `f` until it is true, failing after the wait limit.
async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + wait_limit();
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewal_cycle_supersedes_and_revokes_the_old_certificate() {
    let s = start(CONFIG);
    let old_serial = s.ws.rampart_json(&["device", "show", "meter-1"])["serial"]
        .as_str()
        .expect("serial")
        .to_owned();
    let mut d = connect(&s.ws.join("devices"), s.addr)
        .await
        .expect("connect");

    let key = KeyPair::generate().expect("key");
    let (code, answer) = d.renew(&csr("meter-1", &key)).await;
    assert_eq!(code, ReasonCode::Success);
    let new = issued(answer);
    assert_eq!(new.serial.len(), 32, "{new:?}");
    assert!(
        new.chain.starts_with(&new.certificate),
        "the chain starts with the leaf"
    );
    assert_eq!(new.chain.matches("BEGIN CERTIFICATE").count(), 2);
    assert!(new.not_after > now_ms());
    let registry = store(&s.ws);
    let pending = registry
        .certificate(&new.serial)
        .await
        .expect("read")
        .expect("recorded");
    assert_eq!(pending.status, CertificateStatus::Pending);

    // The device switches: reconnects with the new certificate.
    let dir = keep(&s.ws, "renewed", &new.chain, &key);
    drop(d);
    let mut d = connect(&dir, s.addr)
        .await
        .expect("connect with the new certificate");
    let shown = s.ws.rampart_json(&["device", "show", "meter-1"]);
    assert_eq!(shown["serial"], new.serial.as_str());
    let old = registry
        .certificate(&old_serial)
        .await
        .expect("read")
        .expect("kept");
    assert_eq!(old.status, CertificateStatus::Superseded);
    assert_eq!(
        old.revocation_reason,
        Some(rampart_pki::RevocationReason::Superseded)
    );

    // serve publishes the CRL listing the old serial, and reloads it.
    let ws = &s.ws;
    eventually("the old serial on the CRL", || {
        crl_serials(ws).contains(&old_serial)
    })
    .await;
    assert!(crl_serials(ws).contains("superseded"));
    let refused = connect(&ws.join("devices"), s.addr).await;
    assert!(refused.is_err(), "the old certificate still connects");

    // Telemetry flows on the new certificate.
    let (code, _) = telemetry(&mut d).await;
    assert_eq!(code, ReasonCode::Success);
    let audit = ws.rampart_json(&["audit", "list"]);
    let actions: Vec<&str> = audit
        .as_array()
        .expect("rows")
        .iter()
        .filter_map(|r| r["action"].as_str())
        .collect();
    assert!(actions.contains(&"device.certificate.issue"), "{actions:?}");
    assert!(
        actions.contains(&"device.certificate.activate"),
        "{actions:?}"
    );
}

fn now_ms() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

/// Publishes a reading and returns the PUBACK code (and no answer).
async fn telemetry(d: &mut Device) -> (ReasonCode, ()) {
    d.next_id += 1;
    let id = d.next_id;
    let p = d.client.publish_packet(
        "devices/meter-1/telemetry/up",
        br#"{"seq":1,"m":{"temperature":21.5}}"#.to_vec(),
        Qos::AtLeastOnce,
        id,
    );
    d.client.queue(&p).expect("queue");
    d.client.flush().await.expect("flush");
    loop {
        if let Packet::PubAck(a) = d.client.next_packet().await.expect("read")
            && a.packet_id == id
        {
            return (a.reason_code, ());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_renewal_while_pending_replaces_the_first() {
    let s = start(CONFIG);
    let mut d = connect(&s.ws.join("devices"), s.addr)
        .await
        .expect("connect");
    let (key_a, key_b) = (
        KeyPair::generate().expect("key"),
        KeyPair::generate().expect("key"),
    );
    let a = issued(d.renew(&csr("meter-1", &key_a)).await.1);
    let b = issued(d.renew(&csr("meter-1", &key_b)).await.1);
    assert_ne!(a.serial, b.serial);
    let registry = store(&s.ws);
    let first = registry
        .certificate(&a.serial)
        .await
        .expect("read")
        .expect("kept");
    assert_eq!(first.status, CertificateStatus::Superseded);
    drop(d);

    let dir_a = keep(&s.ws, "a", &a.chain, &key_a);
    assert!(
        connect(&dir_a, s.addr).await.is_err(),
        "the replaced pending certificate"
    );
    let dir_b = keep(&s.ws, "b", &b.chain, &key_b);
    connect(&dir_b, s.addr)
        .await
        .expect("the newest pending certificate");
    let shown = s.ws.rampart_json(&["device", "show", "meter-1"]);
    assert_eq!(shown["serial"], b.serial.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_renewal_requests_get_error_answers_and_rejections() {
    let s = start(CONFIG);
    let mut d = connect(&s.ws.join("devices"), s.addr)
        .await
        .expect("connect");

    let (code, answer) = d.request("cert", b"{not json").await;
    assert_eq!(code, ReasonCode::PayloadFormatInvalid);
    let answer = RenewalAnswer::decode(&answer).expect("answer");
    assert_eq!(refusal(&answer), "invalid_request");

    let huge = format!(r#"{{"csr":"{}"}}"#, "A".repeat(20_000));
    let (code, answer) = d.request("cert", huge.as_bytes()).await;
    assert_eq!(code, ReasonCode::PayloadFormatInvalid);
    assert_eq!(
        refusal(&RenewalAnswer::decode(&answer).expect("answer")),
        "invalid_request"
    );

    let (code, answer) = d
        .renew("-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n")
        .await;
    assert_eq!(code, ReasonCode::PayloadFormatInvalid);
    assert_eq!(refusal(&answer), "invalid_csr");

    let other = KeyPair::generate().expect("key");
    let (code, answer) = d.renew(&csr("meter-2", &other)).await;
    assert_eq!(code, ReasonCode::NotAuthorized);
    assert_eq!(refusal(&answer), "id_mismatch");

    let current = KeyPair::from_pem(
        &std::fs::read_to_string(s.ws.join("devices/meter-1.key")).expect("current key"),
    )
    .expect("parse key");
    let (code, answer) = d.renew(&csr("meter-1", &current)).await;
    assert_eq!(code, ReasonCode::NotAuthorized);
    assert_eq!(refusal(&answer), "same_key");
    if let RenewalAnswer::Refused { error } = &answer {
        assert!(error.message.contains("new"), "{}", error.message);
    }

    // Five requests so far; the limit is 8 per hour. A flood is cut off.
    let fresh = KeyPair::generate().expect("key");
    let mut codes = Vec::new();
    for _ in 0..5 {
        let (code, answer) = d.renew(&csr("meter-1", &fresh)).await;
        codes.push((code, refusal_or_issued(&answer)));
    }
    assert_eq!(
        codes,
        [
            (ReasonCode::Success, "issued"),
            (ReasonCode::Success, "issued"),
            (ReasonCode::Success, "issued"),
            (ReasonCode::QuotaExceeded, "rate_limited"),
            (ReasonCode::QuotaExceeded, "rate_limited"),
        ]
    );
    // Telemetry is unaffected, and nothing was issued for the bad requests.
    assert_eq!(telemetry(&mut d).await.0, ReasonCode::Success);
    let certs = store(&s.ws)
        .certificates_of(&"meter-1".parse().expect("id"))
        .await
        .expect("certificates");
    assert_eq!(certs.len(), 4, "the original and three renewals");
    let mut serve = s.serve;
    serve.wait_for(&["renewal refused", "meter-1", "same_key"]);
}

fn refusal_or_issued(answer: &RenewalAnswer) -> &'static str {
    match answer {
        RenewalAnswer::Issued(_) => "issued",
        RenewalAnswer::Refused { error } => error.code.as_str(),
    }
}

/// Waits until the store says the device is online (presence is recorded
/// by the pipeline right after CONNECT).
async fn online(ws: &Workspace) {
    eventually("meter-1 online", || {
        ws.rampart_json(&["device", "show", "meter-1"])["online"] == true
    })
    .await;
}

/// Starts `rampart device claim ...` in the background.
fn claim_cli(ws: &Workspace, args: &[&str]) -> std::process::Child {
    ws.rampart_std()
        .args(["device", "claim"])
        .args(args)
        .args(["--json"])
        .env("RAMPART_CONFIG", "rampart.toml")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start rampart device claim")
}

fn finish(child: std::process::Child) -> (bool, serde_json::Value, String) {
    let out = child.wait_with_output().expect("claim finished");
    let json = serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
    (
        out.status.success(),
        json,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn nonce_of(message: &[u8]) -> String {
    match BindMessage::decode(message).expect("a bind/down message") {
        BindMessage::Claim { nonce, expires_at } => {
            assert_eq!(nonce.len(), 32);
            assert!(
                nonce
                    .bytes()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
            );
            assert!(expires_at > now_ms());
            nonce
        }
        other => panic!("expected a claim request, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claim_binds_the_device_after_it_confirms_the_nonce() {
    let s = start(CONFIG);
    let ws = &s.ws;
    // Offline: refused at once.
    let err = ws.rampart_fails(&[
        "device",
        "claim",
        "meter-1",
        "--code",
        &s.claim_code,
        "--owner",
        "user:ann",
    ]);
    assert!(err.contains("device offline"), "{err}");

    let mut d = connect(&ws.join("devices"), s.addr).await.expect("connect");
    online(ws).await;
    let err = ws.rampart_fails(&[
        "device",
        "claim",
        "meter-1",
        "--code",
        "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
        "--owner",
        "user:ann",
    ]);
    assert!(err.contains("wrong claim code"), "{err}");

    let cli = claim_cli(
        ws,
        &[
            "meter-1",
            "--code",
            &s.claim_code,
            "--owner",
            "user:ann",
            "--wait",
            "30s",
        ],
    );
    let nonce = nonce_of(&d.receive("devices/meter-1/bind/down").await);
    // A wrong nonce first: refused, the claim goes on.
    let (code, answer) = d
        .request("bind", br#"{"nonce":"00000000000000000000000000000000"}"#)
        .await;
    assert_eq!(code, ReasonCode::NotAuthorized);
    assert!(matches!(
        BindMessage::decode(&answer).expect("answer"),
        BindMessage::Error {
            code: rampart_proto::control::BindErrorCode::NonceMismatch,
            ..
        }
    ));
    let body = serde_json::json!({ "nonce": nonce }).to_string();
    let (code, answer) = d.request("bind", body.as_bytes()).await;
    assert_eq!(code, ReasonCode::Success);
    assert_eq!(
        BindMessage::decode(&answer).expect("answer"),
        BindMessage::Bound {
            owner: "user:ann".into()
        }
    );
    let (ok, json, stderr) = tokio::task::spawn_blocking(move || finish(cli))
        .await
        .expect("join");
    assert!(ok, "claim --wait failed: {stderr}");
    assert_eq!(json["status"], "bound");
    assert_eq!(json["owner"], "user:ann");

    let shown = ws.rampart_json(&["device", "show", "meter-1"]);
    assert_eq!(shown["state"], "bound");
    assert_eq!(
        shown["owner"],
        serde_json::json!({ "type": "user", "id": "ann" })
    );

    // A replay of the nonce, and a new claim of a bound device, are refused.
    let (code, answer) = d.request("bind", body.as_bytes()).await;
    assert_eq!(code, ReasonCode::NotAuthorized);
    assert!(matches!(
        BindMessage::decode(&answer).expect("answer"),
        BindMessage::Error {
            code: rampart_proto::control::BindErrorCode::AlreadyBound,
            ..
        }
    ));
    let err = ws.rampart_fails(&["device", "claim", "--qr", &s.qr, "--owner", "user:eve"]);
    assert!(err.contains("already claimed"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claim_by_qr_code_expires_or_is_refused_when_the_device_fails_to_confirm() {
    // Claims expire after a second here.
    let s = start(&CONFIG.replace("expiry = \"10m\"", "expiry = \"1s\""));
    let ws = &s.ws;
    let mut d = connect(&ws.join("devices"), s.addr).await.expect("connect");
    online(ws).await;

    // Expiry: the device answers too late.
    let cli = claim_cli(
        ws,
        &["--qr", &s.qr, "--owner", "group:ops", "--wait", "30s"],
    );
    let nonce = nonce_of(&d.receive("devices/meter-1/bind/down").await);
    let (ok, json, stderr) = tokio::task::spawn_blocking(move || finish(cli))
        .await
        .expect("join");
    assert!(!ok, "an unconfirmed claim must not succeed: {json}");
    assert!(stderr.contains("expired"), "{stderr}");
    let body = serde_json::json!({ "nonce": nonce }).to_string();
    let (code, answer) = d.request("bind", body.as_bytes()).await;
    assert_eq!(code, ReasonCode::NotAuthorized);
    match BindMessage::decode(&answer).expect("answer") {
        BindMessage::Error { code, .. } => assert!(
            matches!(
                code,
                rampart_proto::control::BindErrorCode::NoPendingClaim
                    | rampart_proto::control::BindErrorCode::ClaimExpired
            ),
            "{code:?}"
        ),
        other => panic!("expected an error, got {other:?}"),
    }

    // Refusal: wrong nonces until the limit (3) ends the claim.
    let cli = claim_cli(
        ws,
        &["--qr", &s.qr, "--owner", "group:ops", "--wait", "30s"],
    );
    nonce_of(&d.receive("devices/meter-1/bind/down").await);
    for _ in 0..3 {
        let (code, _) = d
            .request("bind", br#"{"nonce":"ffffffffffffffffffffffffffffffff"}"#)
            .await;
        assert_eq!(code, ReasonCode::NotAuthorized);
    }
    let (ok, _, stderr) = tokio::task::spawn_blocking(move || finish(cli))
        .await
        .expect("join");
    assert!(!ok);
    assert!(
        stderr.contains("refused") && stderr.contains("wrong nonces"),
        "{stderr}"
    );
    let shown = ws.rampart_json(&["device", "show", "meter-1"]);
    assert_eq!(shown["state"], "unbound");

    // Malformed confirmations get an error answer too.
    let (code, answer) = d.request("bind", b"[]").await;
    assert_eq!(code, ReasonCode::PayloadFormatInvalid);
    assert!(matches!(
        BindMessage::decode(&answer).expect("answer"),
        BindMessage::Error {
            code: rampart_proto::control::BindErrorCode::InvalidRequest,
            ..
        }
    ));

    // Five confirmations so far, six allowed per window: a flood is cut off.
    let (code, _) = d.request("bind", b"[]").await;
    assert_eq!(code, ReasonCode::PayloadFormatInvalid);
    let (code, answer) = d.request("bind", b"[]").await;
    assert_eq!(code, ReasonCode::QuotaExceeded);
    assert!(matches!(
        BindMessage::decode(&answer).expect("answer"),
        BindMessage::Error {
            code: rampart_proto::control::BindErrorCode::RateLimited,
            ..
        }
    ));
}
