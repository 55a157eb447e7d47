//! OTA campaigns end to end (docs/ota.md §2, §3, §5): `rampart serve` with
//! real device sessions over mutual TLS. Devices report `type`/`fw` on
//! `state/up`; a campaign made with `rampart campaign create` offers the
//! update on `ota/down` wave by wave; device reports on `ota/up` move it
//! until it completes, aborts at the failure threshold, times out an
//! entry, or is cancelled with a `cancel` downlink.

use std::path::Path;
use std::time::{Duration, Instant};

use mqtt5_protocol::packet::puback::PubAckPacket;
use mqtt5_protocol::packet::subscribe::SubscribePacket;
use mqtt5_protocol::{Packet, QoS};
use rampart_loadgen::{CertDir, Client, MqttVersion, Qos, SessionKind, Target};
use rampart_test_support::{Serve, Workspace, wait_limit};
use rustls_pki_types::ServerName;
use serde_json::Value;

const CONFIG: &str = r#"
[broker]
rate_limit_exempt = ["127.0.0.1", "::1"]

[ota]
tick = "100ms"
"#;

struct Setup {
    ws: Workspace,
    _serve: Serve,
    addr: std::net::SocketAddr,
    http: std::net::SocketAddr,
}

/// A server with devices `names` and firmware 1.1.0 for `sensor` uploaded.
fn start(names: &[&str]) -> Setup {
    let ws = Workspace::new();
    std::fs::write(ws.join("rampart.toml"), CONFIG).expect("config");
    ws.rampart().arg("init").assert().success();
    for n in names {
        ws.rampart_json(&["device", "create", "--id", n, "--out", "devices"]);
    }
    let key = ws.join("release.key").display().to_string();
    ws.rampart_json(&["firmware", "keygen", "--out", &key]);
    std::fs::write(ws.join("app.bin"), vec![0x5a; 4096]).expect("image");
    let bundle = ws.join("app.rfw").display().to_string();
    ws.rampart_json(&[
        "firmware",
        "sign",
        &ws.join("app.bin").display().to_string(),
        "--key",
        &key,
        "--device-type",
        "sensor",
        "--version",
        "1.1.0",
        "--security-version",
        "1",
        "--out",
        &bundle,
    ]);
    ws.rampart_json(&["firmware", "key", "add", &format!("{key}.pub")]);
    ws.rampart_json(&["firmware", "upload", &bundle]);
    let mut serve = ws.serve(&[("RAMPART_CONFIG", "rampart.toml")]);
    let addr = serve.listening("mqtt");
    let http = serve.listening("http");
    Setup {
        ws,
        _serve: serve,
        addr,
        http,
    }
}

/// A device session subscribed to its `down` topics.
struct Device {
    id: String,
    client: Client,
    next_id: u16,
    /// `ota/down` messages that arrived while waiting for an
    /// acknowledgement, oldest first: the engine re-sends an offer as soon
    /// as a reconnecting device subscribes, which may be before the SUBACK
    /// (MQTT 5 §3.8.4) or the PUBACK of its state report.
    held: std::collections::VecDeque<Value>,
}

async fn connect(dir: &Path, addr: std::net::SocketAddr, id: &str) -> Device {
    let certs = CertDir::open(dir).expect("cert dir");
    let config = certs
        .client_config(&certs.load(id).expect("device files"), false)
        .expect("tls config");
    let target = Target {
        addr,
        server_name: ServerName::try_from("localhost").expect("name"),
        version: MqttVersion::V5,
        keepalive: Duration::from_secs(30),
    };
    let mut client = Client::connect(&target, config, id, SessionKind::Clean)
        .await
        .expect("connect");
    let sub = SubscribePacket::new(1).add_filter(format!("devices/{id}/+/down"), QoS::AtLeastOnce);
    client.queue(&sub).expect("queue");
    client.flush().await.expect("flush");
    let mut d = Device {
        id: id.to_owned(),
        client,
        next_id: 1,
        held: std::collections::VecDeque::new(),
    };
    d.until_ack(
        "SUBACK",
        |p| matches!(p, Packet::SubAck(a) if a.packet_id == 1),
    )
    .await;
    d.publish(
        "state",
        serde_json::json!({"type": "sensor", "fw": "1.0.0"}),
    )
    .await;
    d
}

impl Device {
    /// Publishes on `devices/{id}/{category}/up` at QoS 1 and waits for
    /// the PUBACK (the report is committed then).
    async fn publish(&mut self, category: &str, body: Value) {
        self.next_id += 1;
        let id = self.next_id;
        let topic = format!("devices/{}/{category}/up", self.id);
        let p =
            self.client
                .publish_packet(&topic, body.to_string().into_bytes(), Qos::AtLeastOnce, id);
        self.client.queue(&p).expect("queue");
        self.client.flush().await.expect("flush");
        self.until_ack(
            "PUBACK",
            |p| matches!(p, Packet::PubAck(a) if a.packet_id == id),
        )
        .await;
    }

    /// Reads until the acknowledgement `is_ack`; an `ota/down` message
    /// arriving meanwhile is acknowledged and held for [`Device::ota_down`],
    /// any other publish is a failure.
    async fn until_ack(&mut self, what: &str, is_ack: impl Fn(&Packet) -> bool) {
        let topic = format!("devices/{}/ota/down", self.id);
        let deadline = tokio::time::Instant::now() + wait_limit();
        loop {
            let packet = tokio::time::timeout_at(deadline, self.client.next_packet())
                .await
                .unwrap_or_else(|_| panic!("{}: no {what} within the wait limit", self.id))
                .expect("read");
            if is_ack(&packet) {
                return;
            }
            if let Packet::Publish(p) = packet {
                assert_eq!(
                    p.topic_name,
                    topic,
                    "{}: unexpected publish while waiting for {what}: {}",
                    self.id,
                    String::from_utf8_lossy(&p.payload)
                );
                if let Some(pid) = p.packet_id {
                    self.client.queue(&PubAckPacket::new(pid)).expect("queue");
                    self.client.flush().await.expect("flush");
                }
                self.held
                    .push_back(serde_json::from_slice(&p.payload).expect("ota/down JSON"));
            }
        }
    }

    /// The next message on `ota/down`, acknowledged.
    async fn ota_down(&mut self) -> Value {
        if let Some(held) = self.held.pop_front() {
            return held;
        }
        let topic = format!("devices/{}/ota/down", self.id);
        let deadline = tokio::time::Instant::now() + wait_limit();
        loop {
            let packet = tokio::time::timeout_at(deadline, self.client.next_packet())
                .await
                .unwrap_or_else(|_| {
                    panic!("{}: nothing on ota/down within the wait limit", self.id)
                })
                .expect("read");
            if let Packet::Publish(p) = packet {
                if let Some(pid) = p.packet_id {
                    self.client.queue(&PubAckPacket::new(pid)).expect("queue");
                    self.client.flush().await.expect("flush");
                }
                if p.topic_name == topic {
                    return serde_json::from_slice(&p.payload).expect("ota/down JSON");
                }
            }
        }
    }

    async fn report(&mut self, status: &str, reason: Option<&str>) {
        let mut body = serde_json::json!({"status": status, "version": "1.1.0"});
        if status == "downloading" {
            body["bytes"] = 1024.into();
            body["total"] = 4096.into();
        }
        if let Some(r) = reason {
            body["reason"] = r.into();
        }
        self.publish("ota", body).await;
    }

    /// Reports every step up to `succeeded`.
    async fn succeed(&mut self) {
        for s in [
            "downloading",
            "verifying",
            "pending-reboot",
            "pending-confirm",
            "succeeded",
        ] {
            self.report(s, None).await;
        }
    }
}

fn show(ws: &Workspace, id: u64) -> Value {
    ws.rampart_json(&["campaign", "show", &id.to_string()])
}

/// Entries of the campaign in `state`, by device id.
fn in_state(shown: &Value, state: &str) -> Vec<String> {
    let mut ids: Vec<String> = shown["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .filter(|e| e["state"] == state)
        .map(|e| e["deviceId"].as_str().expect("id").to_owned())
        .collect();
    ids.sort();
    ids
}

/// Polls `campaign show` until `f` holds, failing after the wait limit.
async fn until(ws: &Workspace, id: u64, what: &str, f: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + wait_limit();
    loop {
        let shown = show(ws, id);
        if f(&shown) {
            return shown;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {shown:#}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn create(ws: &Workspace, extra: &[&str]) -> u64 {
    let mut args = vec![
        "campaign",
        "create",
        "--name",
        "roll 1.1",
        "--firmware",
        "1",
        "--soak",
        "0s",
        "--approve",
    ];
    args.extend_from_slice(extra);
    let c = ws.rampart_json(&args);
    assert_eq!(c["status"], "running");
    c["id"].as_u64().expect("id")
}

fn check_offer(offer: &Value, campaign: u64, device: &str, http: std::net::SocketAddr) {
    assert_eq!(offer["type"], "offer", "{offer}");
    assert_eq!(offer["campaign"], campaign);
    assert_eq!(offer["size"], 4096);
    let sha = offer["sha256"].as_str().expect("sha256");
    assert_eq!(sha.len(), 64);
    assert!(offer["manifest"].as_str().is_some_and(|m| !m.is_empty()));
    assert_eq!(offer["signature"].as_str().map(str::len), Some(128));
    let url = offer["url"].as_str().expect("url");
    let prefix = format!("https://{http}/ota/v1/images/{sha}?t=");
    assert!(url.starts_with(&prefix), "{url} for {device}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_campaign_offers_wave_by_wave_and_completes() {
    let names = ["s-0", "s-1", "s-2", "s-3"];
    let s = start(&names);
    let dir = s.ws.join("devices");
    let mut devices = Vec::new();
    for n in names {
        devices.push(connect(&dir, s.addr, n).await);
    }
    let id = create(&s.ws, &["--all", "--waves", "50,100"]);
    let shown = until(&s.ws, id, "wave 1 offered", |v| {
        in_state(v, "offered").len() == 2
    })
    .await;
    let first = in_state(&shown, "offered");
    assert_eq!(in_state(&shown, "queued").len(), 2);
    for d in devices.iter_mut().filter(|d| first.contains(&d.id)) {
        let offer = d.ota_down().await;
        check_offer(&offer, id, &d.id, s.http);
        d.succeed().await;
    }
    let shown = until(&s.ws, id, "wave 2 offered", |v| {
        in_state(v, "succeeded").len() == 2 && in_state(v, "offered").len() == 2
    })
    .await;
    let second = in_state(&shown, "offered");
    assert!(second.iter().all(|d| !first.contains(d)));
    for d in devices.iter_mut().filter(|d| second.contains(&d.id)) {
        let offer = d.ota_down().await;
        check_offer(&offer, id, &d.id, s.http);
        d.succeed().await;
    }
    let done = until(&s.ws, id, "completed", |v| {
        v["campaign"]["status"] == "completed"
    })
    .await;
    assert_eq!(in_state(&done, "succeeded").len(), 4);
    assert_eq!(done["counts"]["succeeded"], 4);
    // A report for no campaign is counted as unmatched, not an error.
    let d = devices.first_mut().expect("device");
    d.publish(
        "ota",
        serde_json::json!({"status": "failed", "version": "0.9.0", "reason": "downgrade"}),
    )
    .await;
    let audit = s.ws.rampart_json(&["audit", "list", "--limit", "1000"]);
    let actions: Vec<&str> = audit
        .as_array()
        .expect("rows")
        .iter()
        .filter_map(|r| r["action"].as_str())
        .filter(|a| a.starts_with("campaign."))
        .collect();
    assert_eq!(
        actions,
        vec![
            "campaign.create",
            "campaign.wave",
            "campaign.wave",
            "campaign.complete"
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_abort_the_campaign_before_its_next_wave() {
    let names = ["f-0", "f-1", "f-2", "f-3"];
    let s = start(&names);
    let dir = s.ws.join("devices");
    let mut devices = Vec::new();
    for n in names {
        devices.push(connect(&dir, s.addr, n).await);
    }
    let id = create(
        &s.ws,
        &["--all", "--waves", "50,100", "--failure-threshold", "0.5"],
    );
    let shown = until(&s.ws, id, "wave 1 offered", |v| {
        in_state(v, "offered").len() == 2
    })
    .await;
    let first = in_state(&shown, "offered");
    let later = in_state(&shown, "queued");
    // One of the two fails: half of the devices offered so far.
    let mut wave1: Vec<&mut Device> = devices
        .iter_mut()
        .filter(|d| first.contains(&d.id))
        .collect();
    let failing = wave1.first_mut().expect("first");
    failing.ota_down().await;
    failing.report("downloading", None).await;
    failing.report("failed", Some("hash-mismatch")).await;
    let aborted = until(&s.ws, id, "aborted", |v| {
        v["campaign"]["status"] == "aborted"
    })
    .await;
    assert_eq!(aborted["campaign"]["statusReason"], "failure-threshold");
    assert_eq!(in_state(&aborted, "cancelled"), later);
    for e in aborted["entries"].as_array().expect("entries") {
        if later.iter().any(|l| e["deviceId"] == l.as_str()) {
            assert!(e["offeredAt"].is_null(), "{e}");
        }
    }
    let failed: Vec<&Value> = aborted["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .filter(|e| e["state"] == "failed")
        .collect();
    assert_eq!(failed.len(), 1);
    assert_eq!(
        failed.first().map(|e| &e["reason"]),
        Some(&Value::from("hash-mismatch"))
    );
    // The other wave-1 device finishes and is still recorded.
    let other = wave1.get_mut(1).expect("second");
    other.ota_down().await;
    other.succeed().await;
    until(&s.ws, id, "late success recorded", |v| {
        in_state(v, "succeeded").len() == 1
    })
    .await;
    let audit = s.ws.rampart_json(&["audit", "list", "--limit", "1000"]);
    let abort = audit
        .as_array()
        .expect("rows")
        .iter()
        .find(|r| r["action"] == "campaign.abort")
        .expect("abort audited")
        .clone();
    assert_eq!(abort["detail"]["failures"], 1);
    assert_eq!(abort["detail"]["offered"], 2);
    // No offer ever went to the later wave: the engine counted two.
    let shown = show(&s.ws, id);
    assert_eq!(in_state(&shown, "offered").len(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_device_times_out_and_cancel_reaches_a_downloading_one() {
    let names = ["t-0", "t-1"];
    let s = start(&names);
    let dir = s.ws.join("devices");
    let mut devices = Vec::new();
    for n in names {
        devices.push(connect(&dir, s.addr, n).await);
    }
    let id = create(
        &s.ws,
        &[
            "--devices",
            "t-0,t-1",
            "--waves",
            "100",
            "--offered-timeout",
            "1500ms",
            "--failure-threshold",
            "1",
        ],
    );
    let (busy, silent) = devices.split_at_mut(1);
    let busy = busy.first_mut().expect("t-0");
    let silent = silent.first_mut().expect("t-1");
    busy.ota_down().await;
    busy.report("downloading", None).await;
    silent.ota_down().await;
    let timed = until(&s.ws, id, "t-1 timed out", |v| {
        in_state(v, "failed") == ["t-1"]
    })
    .await;
    let entry = timed["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .find(|e| e["deviceId"] == "t-1")
        .expect("t-1")
        .clone();
    assert_eq!(entry["reason"], "timeout-offered");
    assert_eq!(in_state(&timed, "downloading"), ["t-0"]);

    let cancelled = s.ws.rampart_json(&["campaign", "cancel", &id.to_string()]);
    assert_eq!(cancelled["status"], "cancelled");
    let cancel = busy.ota_down().await;
    assert_eq!(
        cancel,
        serde_json::json!({"type": "cancel", "campaign": id})
    );
    let shown = show(&s.ws, id);
    assert_eq!(in_state(&shown, "cancelled"), ["t-0"]);
    // Cancelling twice is refused with the reason.
    let err = s.ws.rampart_fails(&["campaign", "cancel", &id.to_string()]);
    assert!(err.contains("cancelled"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_reconnecting_while_offered_gets_the_offer_again() {
    let s = start(&["r-0"]);
    let dir = s.ws.join("devices");
    let mut d = connect(&dir, s.addr, "r-0").await;
    let id = create(&s.ws, &["--devices", "r-0", "--waves", "100"]);
    let first = d.ota_down().await;
    check_offer(&first, id, "r-0", s.http);
    drop(d);
    let mut again = connect(&dir, s.addr, "r-0").await;
    let second = again.ota_down().await;
    check_offer(&second, id, "r-0", s.http);
    // The same update, offered again by the engine on connect.
    assert_eq!(first["sha256"], second["sha256"]);
    again.succeed().await;
    until(&s.ws, id, "completed", |v| {
        v["campaign"]["status"] == "completed"
    })
    .await;
}
