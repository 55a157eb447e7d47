//! What Rampart itself sends and accepts besides the MQTT protocol:
//! server-originated publishes (the `bind`, `cert` and `ota` downlinks) and
//! certificates issued by a renewal, which become current on first use.

use std::sync::atomic::Ordering::Relaxed;

use bytes::Bytes;
use rampart_broker::ServerPublishError;
use rampart_pki::RevocationReason;
use rampart_proto::DeviceId;
use rampart_store::{Actor, CertificateStatus, Store};

use crate::common::{Connect, Platform, eventually};

fn id(s: &str) -> DeviceId {
    DeviceId::parse(s).expect("valid id")
}

/// A server publish reaches the device's subscription without an ACL check
/// (no device may publish on a `down` topic itself) and is counted.
#[tokio::test]
async fn server_publish_reaches_the_subscribed_device() {
    let p = Platform::start().await;
    let dev = p.device("d1").await;
    let mut d = p.connected(&dev, Connect::v5("d1")).await;
    assert_eq!(d.subscribe("devices/d1/+/down", 1).await, 1);

    let reached = p
        .broker
        .publish_from_server(
            "devices/d1/bind/down",
            Bytes::from_static(b"{\"type\":\"claim\"}"),
            1,
        )
        .await
        .expect("published");
    assert_eq!(reached, 1);
    let got = d.recv_publish().await;
    assert_eq!(got.topic_name, "devices/d1/bind/down");
    assert_eq!(got.payload.as_ref(), b"{\"type\":\"claim\"}");
    assert_eq!(got.qos, mqtt5_protocol::QoS::AtLeastOnce);
    assert_eq!(p.metrics().server_publishes.load(Relaxed), 1);

    // The device itself may not publish there.
    let ack = d.publish_qos1("devices/d1/bind/down", b"forged").await;
    assert_eq!(u8::from(ack.reason_code), 0x87, "{ack:?}");

    // Nobody subscribed: delivered to no one, and that is said.
    let none = p
        .broker
        .publish_from_server("devices/d2/bind/down", Bytes::from_static(b"x"), 1)
        .await
        .expect("published");
    assert_eq!(none, 0);
}

/// Bad arguments are refused with their reason, not routed.
#[tokio::test]
async fn server_publish_refuses_invalid_topics_and_qos() {
    let p = Platform::start().await;
    for topic in ["", "devices/+/bind/down", "devices/#"] {
        let err = p
            .broker
            .publish_from_server(topic, Bytes::from_static(b"x"), 1)
            .await
            .expect_err("invalid topic");
        assert!(
            matches!(err, ServerPublishError::InvalidTopic { .. }),
            "{topic}: {err}"
        );
    }
    let err = p
        .broker
        .publish_from_server("devices/d1/bind/down", Bytes::from_static(b"x"), 3)
        .await
        .expect_err("invalid QoS");
    assert_eq!(err, ServerPublishError::InvalidQos(3));
    assert_eq!(p.metrics().server_publishes.load(Relaxed), 0);
}

/// A QoS 1 server publish for an offline persistent session is on disk
/// when the call returns, and delivered when the device comes back.
#[tokio::test]
async fn server_publish_is_queued_durably_for_an_offline_session() {
    let p = Platform::start().await;
    let dev = p.device("d1").await;
    let persistent = Connect {
        clean_start: false,
        session_expiry: Some(600),
        ..Connect::v5("d1")
    };
    let mut d = p.connected(&dev, persistent.clone()).await;
    assert_eq!(d.subscribe("devices/d1/+/down", 1).await, 1);
    d.disconnect().await;
    eventually("the session to go offline", || {
        p.broker.connected().is_empty()
    })
    .await;

    let reached = p
        .broker
        .publish_from_server(
            "devices/d1/cert/down",
            Bytes::from_static(b"{\"serial\":\"01\"}"),
            1,
        )
        .await
        .expect("published");
    assert_eq!(reached, 1);
    let snapshot = p.store.mqtt_load().await.expect("load broker state");
    let queued: Vec<_> = snapshot
        .sessions
        .iter()
        .filter(|s| s.client == "d1")
        .flat_map(|s| s.queue.iter().map(|(_, m)| m.topic.clone()))
        .collect();
    assert_eq!(queued, ["devices/d1/cert/down"]);

    let (mut d, ack) = p.connect(&dev, persistent).await;
    assert!(ack.session_present, "{ack:?}");
    let got = d.recv_publish().await;
    assert_eq!(
        (got.topic_name.as_str(), got.payload.as_ref()),
        ("devices/d1/cert/down", &b"{\"serial\":\"01\"}"[..])
    );
}

/// A renewed certificate is accepted at CONNECT while pending; that
/// connection makes it current, and the old certificate, now superseded
/// and revoked as `superseded`, is refused from then on.
#[tokio::test]
async fn pending_certificate_becomes_current_on_first_connect() {
    let p = Platform::start().await;
    let old = p.device("d1").await;
    // The old certificate still works while the new one waits.
    p.connected(&old, Connect::v5("d1"))
        .await
        .disconnect()
        .await;
    let new = p.renewed("d1").await;
    let pending = p
        .store
        .certificate(&new.serial)
        .await
        .expect("read")
        .expect("recorded");
    assert_eq!(pending.status, CertificateStatus::Pending);
    p.connected(&old, Connect::v5("d1"))
        .await
        .disconnect()
        .await;

    let mut d = p.connected(&new, Connect::v5("d1")).await;
    d.ping().await;
    let identity = p.broker.connected_identity("d1").expect("connected");
    assert_eq!(identity.serial, new.serial);
    assert_eq!(identity.public_key_sha256.len(), 64);

    let now_current = p
        .store
        .certificate(&new.serial)
        .await
        .expect("read")
        .expect("kept");
    assert_eq!(now_current.status, CertificateStatus::Current);
    let retired = p
        .store
        .certificate(&old.serial)
        .await
        .expect("read")
        .expect("kept");
    assert_eq!(retired.status, CertificateStatus::Superseded);
    assert_eq!(
        retired.revocation_reason,
        Some(RevocationReason::Superseded)
    );
    let device = p
        .store
        .device(&id("d1"))
        .await
        .expect("read")
        .expect("exists");
    assert_eq!(device.serial, new.serial);
    let crl: Vec<String> = p
        .store
        .revoked_certificates()
        .await
        .expect("CRL entries")
        .into_iter()
        .map(|r| r.serial)
        .collect();
    assert_eq!(crl, std::slice::from_ref(&old.serial));
    d.disconnect().await;

    let (mut c, ack) = p.connect(&old, Connect::v5("d1")).await;
    assert_eq!(ack.code, 0x87, "the superseded certificate: {ack:?}");
    c.expect_closed().await;
    // The new one keeps working (already current: no second activation).
    p.connected(&new, Connect::v5("d1")).await.ping().await;
    let activations = p
        .store
        .changes_since(0)
        .await
        .expect("feed")
        .into_iter()
        .filter(|c| c.kind == rampart_store::ChangeKind::CertificateActivated)
        .count();
    assert_eq!(activations, 1);
}

/// A pending certificate of a disabled device is refused and stays
/// pending; a second renewal retires the first pending certificate.
#[tokio::test]
async fn pending_certificate_of_a_disabled_device_is_refused_and_replaceable() {
    let p = Platform::start().await;
    p.device("d1").await;
    let first = p.renewed("d1").await;
    p.set_disabled("d1", true).await;
    let (mut c, ack) = p.connect(&first, Connect::v5("d1")).await;
    assert_eq!(ack.code, 0x87, "{ack:?}");
    c.expect_closed().await;
    let still = p
        .store
        .certificate(&first.serial)
        .await
        .expect("read")
        .expect("kept");
    assert_eq!(still.status, CertificateStatus::Pending);

    p.set_disabled("d1", false).await;
    let second = p.renewed("d1").await;
    let replaced = p
        .store
        .certificate(&first.serial)
        .await
        .expect("read")
        .expect("kept");
    assert_eq!(replaced.status, CertificateStatus::Superseded);
    let (mut c, ack) = p.connect(&first, Connect::v5("d1")).await;
    assert_eq!(ack.code, 0x87, "{ack:?}");
    c.expect_closed().await;
    p.connected(&second, Connect::v5("d1")).await.ping().await;

    // A revoked device's pending certificate is revoked with it.
    let third = p.renewed("d1").await;
    p.store
        .revoke_device(&id("d1"), RevocationReason::KeyCompromise, &Actor::system())
        .await
        .expect("revoke");
    let revoked = p
        .store
        .certificate(&third.serial)
        .await
        .expect("read")
        .expect("kept");
    assert_eq!(revoked.status, CertificateStatus::Revoked);
    assert_eq!(
        revoked.revocation_reason,
        Some(RevocationReason::KeyCompromise)
    );
}
