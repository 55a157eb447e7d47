//! The device and claim routes over real HTTPS: list with filters and
//! pages, detail, telemetry (JSON and CSV), presence, live events, the
//! actions with their refusals (role, CSRF), the pages, and claims.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::body::Bytes;
use rampart_ingest::{LiveEvent, StoredReading};
use rampart_proto::control::ClaimConfirmation;
use rampart_proto::telemetry::MetricName;
use rampart_proto::{ClaimCode, DeviceId, QrPayload};
use rampart_provisioning::claim::{self, ClaimPolicy};
use rampart_store::telemetry::{IngestItem, NewReading, NewRejection, TelemetryStore};
use rampart_store::{Actor, DeviceState, NewDevice, Owner, Store};
use rampart_test_support::wait_limit;
use serde_json::json;
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use crate::common::{Server, config};
use crate::console::Req;

fn id(s: &str) -> DeviceId {
    DeviceId::parse(s).expect("id")
}

fn code(n: u8) -> ClaimCode {
    ClaimCode::from_random([n; rampart_proto::CLAIM_CODE_BYTES])
}

fn fingerprint(device: &str) -> String {
    hex::encode(Sha256::digest(device.as_bytes()))
}

/// Registers `device` directly in the store with claim code `c`.
async fn register(s: &Server, device: &str, c: &ClaimCode) {
    let now = OffsetDateTime::now_utc();
    let serial = fingerprint(device)[..32].to_owned();
    s.store
        .create_device(
            NewDevice {
                id: id(device),
                serial,
                fingerprint: fingerprint(device),
                not_before: now,
                not_after: now + time::Duration::days(365),
                claim_code_hash: c.hash(),
            },
            &Actor::system(),
        )
        .await
        .expect("device");
}

fn now_ms() -> i64 {
    (OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

/// Stores readings `(seq, temperature, humidity)` of `device`, one a minute
/// up to now, and one rejected payload.
async fn ingest(s: &Server, device: &str, n: u64) {
    let now = now_ms();
    let readings = (1..=n)
        .map(|seq| NewReading {
            seq,
            ts_ms: now - (n - seq) as i64 * 60_000 - 1_000,
            received_ms: now,
            flags: 0,
            digest: seq as i64,
            metrics: vec![
                (
                    MetricName::parse("temperature").expect("m"),
                    20.0 + seq as f64,
                ),
                (MetricName::parse("humidity").expect("m"), 40.0),
            ],
        })
        .collect();
    let items: Vec<IngestItem> = vec![
        IngestItem::Readings {
            device: id(device),
            readings,
            payload: Bytes::new(),
        },
        IngestItem::Rejected(NewRejection {
            device: id(device),
            at_ms: now,
            category: "telemetry".into(),
            kind: "invalid_json".into(),
            detail: "the payload is not JSON".into(),
            seq: None,
            payload: b"{oops".to_vec(),
            payload_len: 5,
        }),
    ];
    TelemetryStore::commit_ingest(&s.store, Arc::from(items), false)
        .await
        .expect("commit");
}

async fn state_of(s: &Server, device: &str) -> DeviceState {
    s.store
        .device(&id(device))
        .await
        .expect("store")
        .expect("device")
        .state
}

#[tokio::test]
async fn the_list_filters_sorts_and_pages_with_a_total() {
    let s = Server::start(config()).await;
    let owner = s.owner().await;
    for i in 0..25 {
        register(&s, &format!("sensor-{i:02}"), &code(i)).await;
    }
    register(&s, "pump-1", &code(99)).await;
    s.store
        .set_device_disabled(&id("sensor-03"), true, &Actor::system())
        .await
        .expect("disable");
    s.store
        .record_presence(&id("sensor-07"), true, OffsetDateTime::now_utc())
        .await
        .expect("presence");

    let r = Req::get("/api/v1/devices?q=sensor&limit=10&offset=10")
        .session(&owner)
        .send(&s)
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["total"], 25);
    let ids: Vec<&str> = r.body["devices"]
        .as_array()
        .expect("devices")
        .iter()
        .map(|d| d["id"].as_str().expect("id"))
        .collect();
    assert_eq!(ids.len(), 10);
    assert_eq!(ids.first(), Some(&"sensor-10"));
    assert_eq!(ids.last(), Some(&"sensor-19"));

    let r = Req::get("/api/v1/devices?state=disabled")
        .session(&owner)
        .send(&s)
        .await;
    assert_eq!(r.body["total"], 1, "{}", r.text);
    assert_eq!(r.body["devices"][0]["id"], "sensor-03");
    let r = Req::get("/api/v1/devices?online=true")
        .session(&owner)
        .send(&s)
        .await;
    assert_eq!(r.body["total"], 1, "{}", r.text);
    assert_eq!(r.body["devices"][0]["id"], "sensor-07");
    let r = Req::get("/api/v1/devices?sort=id&order=desc&limit=1")
        .session(&owner)
        .send(&s)
        .await;
    assert_eq!(r.body["devices"][0]["id"], "sensor-24", "{}", r.text);

    for bad in [
        "/api/v1/devices?limit=501",
        "/api/v1/devices?limit=0",
        "/api/v1/devices?state=sleeping",
        "/api/v1/devices?sort=colour",
        "/api/v1/devices?color=red",
    ] {
        let r = Req::get(bad).session(&owner).send(&s).await;
        assert_eq!(r.status, 400, "{bad}: {}", r.text);
        assert!(
            r.code() == "invalid_parameter" || r.code() == "unknown_parameter",
            "{bad}: {}",
            r.text
        );
    }

    // The page shows the same page of the same query.
    let r = Req::get("/devices?q=sensor&state=disabled")
        .session(&owner)
        .send(&s)
        .await;
    assert_eq!(r.status, 200);
    assert!(r.text.contains("sensor-03"), "{}", r.text);
    assert!(!r.text.contains("sensor-04"));
    assert!(r.text.contains("1–1 of 1 devices"), "{}", r.text);
}

#[tokio::test]
async fn detail_telemetry_csv_and_presence_come_from_the_store() {
    let s = Server::start(config()).await;
    let owner = s.owner().await;
    register(&s, "greenhouse-1", &code(1)).await;
    ingest(&s, "greenhouse-1", 30).await;
    s.store
        .record_presence(&id("greenhouse-1"), true, OffsetDateTime::now_utc())
        .await
        .expect("presence");

    let r = Req::get("/api/v1/devices/greenhouse-1")
        .session(&owner)
        .send(&s)
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["device"]["state"], "unbound");
    assert_eq!(r.body["device"]["fingerprint"], fingerprint("greenhouse-1"));
    assert_eq!(r.body["telemetry"]["readings"], 30);
    assert_eq!(r.body["rejected"][0]["kind"], "invalid_json");
    assert!(
        r.body["rejected"][0].get("payload").is_none(),
        "payload bytes are never sent"
    );

    let r =
        Req::get("/api/v1/devices/greenhouse-1/telemetry?metric=temperature&from=-1h&buckets=60")
            .session(&owner)
            .send(&s)
            .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let buckets = r.body["buckets"].as_array().expect("buckets");
    let count: u64 = buckets
        .iter()
        .map(|b| b["count"].as_u64().expect("count"))
        .sum();
    assert_eq!(count, 30, "{}", r.text);
    let max = buckets
        .iter()
        .map(|b| b["max"].as_f64().expect("max"))
        .fold(f64::MIN, f64::max);
    assert_eq!(max, 50.0);

    for bad in [
        "/api/v1/devices/greenhouse-1/telemetry?from=yesterday",
        "/api/v1/devices/greenhouse-1/telemetry?from=now&to=-1h",
        "/api/v1/devices/greenhouse-1/telemetry?buckets=100000",
        "/api/v1/devices/greenhouse-1/telemetry?metric=Bad%20Name",
        "/api/v1/devices/greenhouse-1/telemetry?colour=red",
        "/api/v1/devices/..%2F..%2Fetc/telemetry",
    ] {
        let r = Req::get(bad).session(&owner).send(&s).await;
        assert!(
            r.status == 400 || r.status == 404,
            "{bad}: {} {}",
            r.status,
            r.text
        );
        assert!(!r.code().is_empty(), "{bad}: {}", r.text);
    }

    let r = Req::get("/api/v1/devices/greenhouse-1/telemetry.csv?from=-1h")
        .session(&owner)
        .send(&s)
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(r.header("content-type").starts_with("text/csv"));
    assert!(
        r.header("content-disposition")
            .contains("greenhouse-1-telemetry.csv")
    );
    let lines: Vec<&str> = r.text.lines().collect();
    assert_eq!(lines.first(), Some(&"time,metric,value,seq"));
    assert_eq!(lines.len(), 1 + 60, "30 readings × 2 metrics");
    assert!(r.text.contains(",temperature,50,30"), "{}", r.text);

    let r = Req::get("/api/v1/devices/greenhouse-1/presence")
        .session(&owner)
        .send(&s)
        .await;
    assert_eq!(r.status, 200, "{}", r.text);

    // The page: charts as SVG, the certificate, the rejected payload, CSV.
    let r = Req::get("/devices/greenhouse-1?range=1h")
        .session(&owner)
        .send(&s)
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    for needle in [
        "<svg",
        "Temperature",
        "Humidity",
        &fingerprint("greenhouse-1"),
        "invalid_json",
        "/api/v1/devices/greenhouse-1/telemetry.csv?from=",
        "/static/console.js",
    ] {
        assert!(r.text.contains(needle), "{needle} missing");
    }
    assert!(!r.text.contains("<script>"), "no inline script");
    let r = Req::get("/").session(&owner).send(&s).await;
    assert_eq!(r.status, 200);
    assert!(r.text.contains("Fleet overview") && r.text.contains("invalid_json"));
    let r = Req::get("/static/console.js").send(&s).await;
    assert_eq!(r.status, 200);
    assert!(r.header("content-type").starts_with("text/javascript"));
    assert!(r.text.contains("EventSource"));
}

#[tokio::test]
async fn actions_need_the_role_and_the_csrf_token_and_revocation_publishes_the_crl() {
    let s = Server::start(config()).await;
    let owner = s.owner().await;
    let viewer = s.user(&owner, "vera", "viewer").await;
    let operator = s.user(&owner, "otto", "operator").await;
    register(&s, "pump-1", &code(1)).await;

    // A viewer may not revoke or disable: 403 JSON, nothing changed.
    for path in [
        "/api/v1/devices/pump-1/revoke",
        "/api/v1/devices/pump-1/disable",
    ] {
        let r = Req::post(path)
            .session(&viewer)
            .json(json!({}))
            .send(&s)
            .await;
        assert_eq!(r.status, 403, "{}", r.text);
        assert_eq!(r.code(), "forbidden");
    }
    // An operator may disable, not revoke.
    let r = Req::post("/api/v1/devices/pump-1/revoke")
        .session(&operator)
        .json(json!({}))
        .send(&s)
        .await;
    assert_eq!(r.status, 403, "{}", r.text);
    assert_eq!(state_of(&s, "pump-1").await, DeviceState::Unbound);

    // Without the CSRF token: 403, nothing changed.
    let r = Req::post("/api/v1/devices/pump-1/disable")
        .cookie(&operator.cookie)
        .json(json!({}))
        .send(&s)
        .await;
    assert_eq!(r.status, 403, "{}", r.text);
    assert_eq!(r.code(), "csrf_refused");
    let r = Req::post("/devices/pump-1/disable")
        .cookie(&operator.cookie)
        .form(&[("confirm", "yes"), ("csrf_token", "forged")])
        .send(&s)
        .await;
    assert_eq!(r.status, 403, "{}", r.text);
    assert_eq!(state_of(&s, "pump-1").await, DeviceState::Unbound);

    // Unknown fields are refused.
    let r = Req::post("/api/v1/devices/pump-1/disable")
        .session(&operator)
        .json(json!({ "force": true }))
        .send(&s)
        .await;
    assert_eq!(r.status, 400, "{}", r.text);
    assert_eq!(state_of(&s, "pump-1").await, DeviceState::Unbound);

    let r = Req::post("/api/v1/devices/pump-1/disable")
        .session(&operator)
        .send(&s)
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["state"], "disabled");
    let audit = s.store.audit_log(0, 1000).await.expect("audit");
    let last = audit.last().expect("an audit row");
    assert_eq!(last.actor, "otto", "{last:?}");

    // The page form: without confirmation it only asks.
    let r = Req::post("/devices/pump-1/enable")
        .session(&operator)
        .form(&[("csrf_token", &operator.csrf)])
        .send(&s)
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(r.text.contains("Enable this device?"), "{}", r.text);
    assert_eq!(state_of(&s, "pump-1").await, DeviceState::Disabled);
    let r = Req::post("/devices/pump-1/enable")
        .session(&operator)
        .form(&[("csrf_token", &operator.csrf), ("confirm", "yes")])
        .send(&s)
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(state_of(&s, "pump-1").await, DeviceState::Unbound);

    // The owner revokes: final, the CRL is published.
    assert_eq!(s.crl.0.load(Ordering::SeqCst), 0);
    let r = Req::post("/devices/pump-1/revoke")
        .session(&owner)
        .form(&[
            ("csrf_token", &owner.csrf),
            ("confirm", "yes"),
            ("reason", "key-compromise"),
        ])
        .send(&s)
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(r.text.contains("is revoked"), "{}", r.text);
    assert_eq!(state_of(&s, "pump-1").await, DeviceState::Revoked);
    assert_eq!(s.crl.0.load(Ordering::SeqCst), 1);
    let certs = s.store.certificates_of(&id("pump-1")).await.expect("certs");
    assert!(
        certs.iter().all(|c| c.revocation_reason.is_some()),
        "{certs:?}"
    );
    // Enabling a revoked device is refused with a clear message.
    let r = Req::post("/api/v1/devices/pump-1/enable")
        .session(&owner)
        .send(&s)
        .await;
    assert_eq!(r.status, 409, "{}", r.text);
    assert_eq!(r.code(), "device_state");
}

#[tokio::test]
async fn the_event_stream_delivers_readings_of_its_device_only() {
    let s = Server::start(config()).await;
    let owner = s.owner().await;
    register(&s, "greenhouse-1", &code(1)).await;
    let mut response = s
        .client
        .get(format!(
            "https://{}/api/v1/devices/greenhouse-1/events",
            s.addr
        ))
        .header("cookie", format!("__Host-rampart_session={}", owner.cookie))
        .send()
        .await
        .expect("stream");
    assert_eq!(response.status(), 200);
    assert!(
        response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"))
    );
    let reading = |device: &str, seq: u64, v: f64| LiveEvent::Readings {
        device: id(device),
        readings: vec![StoredReading {
            seq,
            ts_ms: now_ms(),
            metrics: vec![(MetricName::parse("temperature").expect("m"), v)],
        }],
    };
    let deadline = tokio::time::Instant::now() + wait_limit();
    let mut text = String::new();
    // The subscription exists once the headers came; publish until seen
    // (a publish before the hub registered it would be missed).
    while !text.contains("\"seq\":7") {
        s.fanout.publish(reading("other-device", 1, 99.5));
        s.fanout.publish(reading("greenhouse-1", 7, 21.5));
        match tokio::time::timeout_at(deadline, response.chunk()).await {
            Ok(Ok(Some(chunk))) => text.push_str(&String::from_utf8_lossy(&chunk)),
            other => panic!("no reading in time: {other:?}\n{text}"),
        }
    }
    assert!(text.contains("event: reading"), "{text}");
    assert!(text.contains("\"temperature\":21.5"), "{text}");
    assert!(
        !text.contains("99.5"),
        "another device's reading leaked: {text}"
    );

    let r = Req::get("/api/v1/devices/nobody/events")
        .session(&owner)
        .send(&s)
        .await;
    assert_eq!(r.status, 404, "{}", r.text);
}

#[tokio::test]
async fn a_claim_binds_once_the_device_confirms_and_refusals_say_why() {
    let s = Server::start(config()).await;
    let owner = s.owner().await;
    let operator = s.user(&owner, "otto", "operator").await;
    let c = code(5);
    register(&s, "thermo-1", &c).await;
    let qr = QrPayload {
        device_id: "thermo-1".into(),
        fingerprint: fingerprint("thermo-1"),
        claim_code: c.as_str().to_owned(),
    }
    .to_json();

    // Offline: refused, saying so.
    let r = Req::post("/api/v1/claims")
        .session(&operator)
        .raw(qr.clone())
        .send(&s)
        .await;
    assert_eq!(r.status, 409, "{}", r.text);
    assert_eq!(r.code(), "device_offline");
    s.store
        .record_presence(&id("thermo-1"), true, OffsetDateTime::now_utc())
        .await
        .expect("online");
    // Wrong code.
    let r = Req::post("/api/v1/claims")
        .session(&operator)
        .json(json!({ "deviceId": "thermo-1", "claimCode": code(6).as_str() }))
        .send(&s)
        .await;
    assert_eq!(r.status, 422, "{}", r.text);
    assert_eq!(r.code(), "wrong_code");
    // Unknown fields.
    let r = Req::post("/api/v1/claims")
        .session(&operator)
        .json(json!({ "deviceId": "thermo-1", "claimCode": c.as_str(), "owner": "user:eve" }))
        .send(&s)
        .await;
    assert_eq!(r.status, 400, "{}", r.text);

    // The label as scanned: pending until the device confirms.
    let r = Req::post("/api/v1/claims")
        .session(&operator)
        .raw(qr.clone())
        .send(&s)
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.body["status"], "pending");
    assert_eq!(r.body["owner"], "user:otto");
    let claim_id = r.body["id"].as_u64().expect("id");
    let path = format!("/api/v1/claims/{claim_id}");
    let r = Req::get(&path).session(&operator).send(&s).await;
    assert_eq!(r.body["status"], "pending", "{}", r.text);
    // Someone else's claim is not found.
    let other = s.user(&owner, "olga", "operator").await;
    let r = Req::get(&path).session(&other).send(&s).await;
    assert_eq!(r.status, 404, "{}", r.text);
    let r = Req::get(&format!("/claim?id={claim_id}"))
        .session(&operator)
        .send(&s)
        .await;
    assert!(r.text.contains("Waiting for"), "{}", r.text);

    // The device answers on bind/up with the nonce (what the control
    // plane does with the MQTT message).
    let nonce = s
        .store
        .claim(claim_id)
        .await
        .expect("store")
        .expect("claim")
        .nonce;
    claim::confirm(
        &s.store,
        &id("thermo-1"),
        &ClaimConfirmation { nonce },
        &ClaimPolicy::default(),
        OffsetDateTime::now_utc(),
        &Actor::system(),
    )
    .await
    .expect("confirmed");
    let r = Req::get(&path).session(&operator).send(&s).await;
    assert_eq!(r.body["status"], "bound", "{}", r.text);
    let d = s
        .store
        .device(&id("thermo-1"))
        .await
        .expect("s")
        .expect("d");
    assert_eq!(d.owner, Some(Owner::User("otto".into())));
    let r = Req::get(&format!("/claim?id={claim_id}"))
        .session(&operator)
        .send(&s)
        .await;
    assert!(r.text.contains("is now yours"), "{}", r.text);

    // Claimed already.
    let r = Req::post("/api/v1/claims")
        .session(&other)
        .raw(qr)
        .send(&s)
        .await;
    assert_eq!(r.status, 409, "{}", r.text);
    assert_eq!(r.code(), "already_claimed");
    // The page form shows the same refusal as HTML.
    let r = Req::post("/claim")
        .session(&other)
        .form(&[
            ("csrf_token", &other.csrf),
            ("device_id", "thermo-1"),
            ("claim_code", c.as_str()),
        ])
        .send(&s)
        .await;
    assert_eq!(r.status, 409, "{}", r.text);
    assert!(r.text.contains("already claimed"), "{}", r.text);
}

#[tokio::test]
async fn a_claim_the_device_never_confirms_expires() {
    let s = Server::start(config()).await;
    let owner = s.owner().await;
    let c = code(8);
    register(&s, "thermo-2", &c).await;
    s.store
        .record_presence(&id("thermo-2"), true, OffsetDateTime::now_utc())
        .await
        .expect("online");
    let r = Req::post("/api/v1/claims")
        .session(&owner)
        .json(json!({ "deviceId": "thermo-2", "claimCode": c.as_str() }))
        .send(&s)
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let claim_id = r.body["id"].as_u64().expect("id");
    s.clock.advance(Duration::from_secs(601));
    let r = Req::get(&format!("/api/v1/claims/{claim_id}"))
        .session(&owner)
        .send(&s)
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["status"], "expired");
    assert!(
        r.body["message"]
            .as_str()
            .unwrap_or_default()
            .contains("expired")
    );
}

/// The next `unread` count of a notifications event stream, within a
/// bounded wait.
async fn next_unread(stream: &mut reqwest::Response) -> u64 {
    let deadline = tokio::time::Instant::now() + wait_limit();
    let mut text = String::new();
    loop {
        if let Some(at) = text.find("data: {\"unread\":") {
            let rest = &text[at + "data: {\"unread\":".len()..];
            if let Some(end) = rest.find('}') {
                return rest[..end].parse().expect("a count");
            }
        }
        let chunk = tokio::time::timeout_at(deadline, stream.chunk())
            .await
            .expect("an unread event in time")
            .expect("stream open")
            .expect("stream not ended");
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
}

#[tokio::test]
async fn a_finished_claim_notifies_the_user_who_started_it_and_nobody_else() {
    let s = Server::start(config()).await;
    let owner = s.owner().await;
    let otto = s.user(&owner, "otto", "operator").await;
    let olga = s.user(&owner, "olga", "operator").await;
    for (n, device) in [(11, "thermo-11"), (12, "thermo-12")] {
        register(&s, device, &code(n)).await;
        s.store
            .record_presence(&id(device), true, OffsetDateTime::now_utc())
            .await
            .expect("online");
    }
    let r = Req::post("/api/v1/claims")
        .session(&otto)
        .json(json!({ "deviceId": "thermo-11", "claimCode": code(11).as_str() }))
        .send(&s)
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let claim_id = r.body["id"].as_u64().expect("id");
    let r = Req::get("/api/v1/notifications")
        .session(&otto)
        .send(&s)
        .await;
    assert_eq!(
        (
            r.body["unread"].as_u64(),
            r.body["notifications"].as_array().map(Vec::len)
        ),
        (Some(0), Some(0)),
        "{}",
        r.text
    );

    // Otto's bell follows the count live, as EventSource would.
    let mut bell = s
        .browser
        .get(format!("https://{}/api/v1/notifications/events", s.addr))
        .header("cookie", format!("__Host-rampart_session={}", otto.cookie))
        .header("accept", "text/event-stream")
        .send()
        .await
        .expect("stream");
    assert_eq!(bell.status(), 200);
    assert_eq!(next_unread(&mut bell).await, 0);

    // The device confirms on bind/up (what the control plane does with
    // the MQTT message): the claim binds and Otto is told, in the same
    // transaction.
    let nonce = s
        .store
        .claim(claim_id)
        .await
        .expect("store")
        .expect("claim")
        .nonce;
    claim::confirm(
        &s.store,
        &id("thermo-11"),
        &ClaimConfirmation { nonce },
        &ClaimPolicy::default(),
        OffsetDateTime::now_utc(),
        &Actor::system(),
    )
    .await
    .expect("confirmed");
    // `serve`'s change follower broadcasts the feed's rows; the stream
    // wakes on the binding and re-reads Otto's count.
    let bound = s
        .store
        .changes_since(0)
        .await
        .expect("feed")
        .into_iter()
        .rfind(|c| c.kind == rampart_store::ChangeKind::DeviceBound)
        .expect("a DeviceBound change");
    s.changes.send(bound).expect("a listener");
    assert_eq!(next_unread(&mut bell).await, 1);
    let r = Req::get("/api/v1/notifications")
        .session(&otto)
        .send(&s)
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["unread"], 1, "{}", r.text);
    let n = &r.body["notifications"][0];
    assert_eq!(n["kind"], "claim.bound", "{}", r.text);
    assert_eq!(n["link"], "/devices/thermo-11");
    assert!(
        n["title"]
            .as_str()
            .unwrap_or_default()
            .contains("thermo-11")
    );
    assert!(n["readAt"].is_null());
    let notification_id = n["id"].as_u64().expect("id");

    // Every page's header shows Otto's badge; the page lists it.
    let r = Req::get("/devices").session(&otto).send(&s).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(r.text.contains(r#"data-unread="1""#), "{}", r.text);
    let r = Req::get("/notifications").session(&otto).send(&s).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(r.text.contains("thermo-11 is claimed"), "{}", r.text);
    assert!(r.text.contains("Mark all read"), "{}", r.text);

    // Olga sees none of it and cannot mark it, by id or at all.
    let r = Req::get("/api/v1/notifications")
        .session(&olga)
        .send(&s)
        .await;
    assert_eq!(r.body["unread"], 0, "{}", r.text);
    assert_eq!(r.body["notifications"], json!([]), "{}", r.text);
    let r = Req::get("/notifications").session(&olga).send(&s).await;
    assert!(!r.text.contains("thermo-11"), "{}", r.text);
    assert!(r.text.contains(r#"data-unread="0""#), "{}", r.text);
    let r = Req::post("/api/v1/notifications/read")
        .session(&olga)
        .json(json!({ "upTo": notification_id }))
        .send(&s)
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["marked"], 0, "{}", r.text);
    let r = Req::post("/notifications/read")
        .session(&olga)
        .form(&[("csrf_token", &olga.csrf)])
        .send(&s)
        .await;
    assert_eq!(r.status, 303, "{}", r.text);
    let r = Req::get("/api/v1/notifications?unread=true")
        .session(&otto)
        .send(&s)
        .await;
    assert_eq!(r.body["unread"], 1, "{}", r.text);

    // A claim that expires tells Otto too.
    let r = Req::post("/api/v1/claims")
        .session(&otto)
        .json(json!({ "deviceId": "thermo-12", "claimCode": code(12).as_str() }))
        .send(&s)
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let expiring = r.body["id"].as_u64().expect("id");
    s.clock.advance(Duration::from_secs(601));
    let r = Req::get(&format!("/api/v1/claims/{expiring}"))
        .session(&otto)
        .send(&s)
        .await;
    assert_eq!(r.body["status"], "expired", "{}", r.text);
    let r = Req::get("/api/v1/notifications")
        .session(&otto)
        .send(&s)
        .await;
    assert_eq!(r.body["unread"], 2, "{}", r.text);
    assert_eq!(
        r.body["notifications"][0]["kind"], "claim.failed",
        "{}",
        r.text
    );

    // Marking needs the CSRF token like any change; then Otto's are read.
    let r = Req::post("/notifications/read")
        .cookie(&otto.cookie)
        .form(&[("csrf_token", "wrong")])
        .send(&s)
        .await;
    assert_eq!(r.status, 403, "{}", r.text);
    let r = Req::post("/notifications/read")
        .cookie(&otto.cookie)
        .form(&[("csrf_token", &otto.csrf)])
        .send(&s)
        .await;
    assert_eq!(r.status, 303, "{}", r.text);
    // Marking read wakes the streams too (the user's other tabs).
    assert_eq!(next_unread(&mut bell).await, 0);
    let r = Req::get("/api/v1/notifications?unread=true")
        .session(&otto)
        .send(&s)
        .await;
    assert_eq!(r.body["unread"], 0, "{}", r.text);
    assert_eq!(r.body["notifications"], json!([]), "{}", r.text);
    let r = Req::get("/notifications?limit=0")
        .session(&otto)
        .send(&s)
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(
        r.text.contains("limit must be between 1 and 200"),
        "{}",
        r.text
    );
    let r = Req::get("/api/v1/notifications?color=red")
        .session(&otto)
        .send(&s)
        .await;
    assert_eq!(r.status, 400, "{}", r.text);
    assert_eq!(r.code(), "invalid_query");
}
