//! The broker's MQTT protocol, driven in-process over real TLS.
//!
//! Each test starts its own [`Platform`] (CA, registry, recording pipeline,
//! broker on a loopback port) and talks to it with raw clients, so it can
//! send what no client library would and see every byte the broker sends.
//! Durations are shortened through `BrokerConfig` where a test needs them;
//! waits are bounded by `common::WAIT` and only as failure bounds.
//!
//! Absence ("this was not routed", "no retained message was sent") is shown
//! without waiting where the broker's ordering allows it: a marker message is
//! published afterwards, and the subscriber's next PUBLISH must be the
//! marker. The broker handles one connection's packets in order and queues
//! deliveries per session in order, so anything routed before the marker
//! arrives before it.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use crate::common::{
    Client, Connect, Credentials, Event, Platform, REJECT_DETAIL, STORE_FAILED_DETAIL, V5, WAIT,
    encode, eventually, reason_string, up,
};
use bytes::Bytes;
use mqtt5_protocol::packet::disconnect::DisconnectPacket;
use mqtt5_protocol::packet::puback::PubAckPacket;
use mqtt5_protocol::packet::publish::PublishPacket;
use mqtt5_protocol::packet::pubrel::PubRelPacket;
use mqtt5_protocol::packet::subscribe::{RetainHandling, SubscriptionOptions};
use mqtt5_protocol::{Packet, QoS, ReasonCode, WillMessage};
use rampart_proto::ingest::{DisconnectReason, PresenceEvent};
use rampart_proto::topic::Category;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Service "svc" (MQTT 5) subscribed to `devices/#` at `qos`, and device
/// "d1" (MQTT 5) connected: the publisher and the one who watches.
async fn subscriber_and_device(p: &Platform, qos: u8) -> (Client, Client) {
    let dev = p.device("d1").await;
    let svc = p.service("svc").await;
    let mut s = p.connected(&svc, Connect::v5("svc")).await;
    assert_eq!(s.subscribe("devices/#", qos).await, qos);
    (s, p.connected(&dev, Connect::v5("d1")).await)
}

/// Reads the next PUBLISH and checks its topic and payload.
async fn expect_publish(client: &mut Client, topic: &str, payload: &[u8]) -> Bytes {
    let p = client.recv_publish().await;
    assert_eq!(
        (p.topic_name.as_str(), p.payload.as_ref()),
        (topic, payload),
        "unexpected PUBLISH {p:?}"
    );
    p.payload
}

/// A PUBLISH built byte by byte, for what the crate's encoder refuses to
/// write: `first` is the fixed header's first byte, `topic` raw bytes.
fn raw_publish(first: u8, topic: &[u8], packet_id: Option<u16>, payload: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(
        &u16::try_from(topic.len())
            .expect("short topic")
            .to_be_bytes(),
    );
    body.extend_from_slice(topic);
    if let Some(id) = packet_id {
        body.extend_from_slice(&id.to_be_bytes());
    }
    body.push(0); // MQTT 5: no properties
    body.extend_from_slice(payload);
    let mut packet = vec![first, u8::try_from(body.len()).expect("under 128 bytes")];
    packet.extend_from_slice(&body);
    packet
}

fn sub_options(qos: QoS, retain_handling: RetainHandling) -> SubscriptionOptions {
    SubscriptionOptions {
        qos,
        no_local: false,
        retain_as_published: false,
        retain_handling,
    }
}

// ---------------------------------------------------------------------------
// 1-2. Who may connect
// ---------------------------------------------------------------------------

/// DESIGN "Identity and trust": the client id must equal the certificate CN.
/// Refused with MQTT 5 §3.2.2.2 0x85 "Client Identifier not valid", or MQTT
/// 3.1.1 §3.2.2.3 return code 2 "identifier rejected", then closed.
#[tokio::test]
async fn client_id_other_than_the_certificate_cn_is_refused() {
    let p = Platform::start().await;
    let dev = p.device("sensor-1").await;

    let (mut c, ack) = p.connect(&dev, Connect::v5("sensor-2")).await;
    assert_eq!(ack.code, 0x85, "{ack:?}");
    assert!(!ack.session_present);
    c.expect_closed().await;

    let (mut c, ack) = p.connect(&dev, Connect::v3("sensor-2")).await;
    assert_eq!(ack.code, 0x02, "{ack:?}");
    c.expect_closed().await;

    assert_eq!(p.metrics().client_id_mismatch.load(Relaxed), 2);
    assert_eq!(
        p.sink.presence_count("sensor-1"),
        0,
        "no presence for a refused CONNECT"
    );
    // The same certificate with its own id is accepted: the refusals were about the id.
    p.connected(&dev, Connect::v5("sensor-1"))
        .await
        .ping()
        .await;
}

/// Only a registered, current certificate of an identity allowed to connect
/// gets in (DESIGN "Identity and trust"): MQTT 5 0x87 "Not authorized",
/// MQTT 3.1.1 return code 5, then closed.
#[tokio::test]
async fn unregistered_revoked_and_disabled_certificates_are_not_authorized() {
    let p = Platform::start().await;
    let stray = p.unregistered_device("stray");
    let revoked = p.device("revoked").await;
    let disabled = p.device("disabled").await;
    p.revoke_device("revoked").await;
    p.set_disabled("disabled", true).await;

    for creds in [&stray, &revoked, &disabled] {
        let name = creds.id.as_str();
        for (connect, code) in [(Connect::v5(name), 0x87), (Connect::v3(name), 0x05)] {
            let version = connect.version;
            let (mut c, ack) = p.connect(creds, connect).await;
            assert_eq!(ack.code, code, "{name} over protocol {version}: {ack:?}");
            c.expect_closed().await;
        }
        assert_eq!(p.sink.presence_count(name), 0, "no presence for {name}");
    }
    assert_eq!(p.metrics().identity_refused.load(Relaxed), 6);

    // Enabling the device again lets it in: the refusal was the registry's.
    p.set_disabled("disabled", false).await;
    p.connected(&disabled, Connect::v5("disabled"))
        .await
        .ping()
        .await;
}

/// A device that reconnects resumes its TLS session from a ticket (the
/// broker keeps nothing per device for it), is still identified by its
/// certificate, and is still checked against the registry at CONNECT:
/// once revoked, a resumed session is refused like a full handshake.
#[tokio::test]
async fn a_reconnecting_device_resumes_its_tls_session_and_is_still_checked() {
    let p = Platform::start().await;
    let dev = p.device("sensor-r").await;
    let config = p.client_config(Some(&dev));
    let session = |expected: rustls::HandshakeKind| {
        let p = &p;
        let config = Arc::clone(&config);
        async move {
            let stream = tokio::time::timeout(WAIT, p.tls_with(config))
                .await
                .expect("TLS handshake timed out")
                .expect("TLS handshake");
            let c = Client::over(stream, V5);
            assert_eq!(c.tls().handshake_kind(), Some(expected));
            c
        }
    };
    // The first session is a full handshake; its CONNACK comes after the
    // broker's tickets, so reading it stores them in the client's config.
    let mut c = session(rustls::HandshakeKind::Full).await;
    c.send(&Connect::v5("sensor-r").packet()).await;
    assert_eq!(c.recv_connack().await.code, 0);
    drop(c);
    for _ in 0..2 {
        let mut c = session(rustls::HandshakeKind::Resumed).await;
        c.send(&Connect::v5("sensor-r").packet()).await;
        assert_eq!(
            c.recv_connack().await.code,
            0,
            "a resumed session carries the certificate"
        );
        c.ping().await;
        drop(c);
    }
    p.revoke_device("sensor-r").await;
    let mut c = session(rustls::HandshakeKind::Resumed).await;
    c.send(&Connect::v5("sensor-r").packet()).await;
    assert_eq!(c.recv_connack().await.code, 0x87, "revoked, resumed or not");
    c.expect_closed().await;
}

/// TLS 1.2 is offered only when `broker.tls12` is on; a TLS 1.2 device
/// then gets the same identity checks and the same service, records
/// larger than one TLS fragment included.
#[tokio::test]
async fn tls12_is_offered_only_when_enabled() {
    let p = Platform::start().await;
    let dev = p.device("legacy-1").await;
    let tls12 = [&rustls::version::TLS12];
    let refused = tokio::time::timeout(WAIT, p.tls_with(p.client_config_for(Some(&dev), &tls12)))
        .await
        .expect("handshake finished");
    assert!(refused.is_err(), "TLS 1.2 accepted with broker.tls12 off");

    p.reload_tls(true);
    let (mut svc, _) = subscriber_and_device(&p, 1).await;
    let stream = tokio::time::timeout(WAIT, p.tls_with(p.client_config_for(Some(&dev), &tls12)))
        .await
        .expect("handshake finished")
        .expect("TLS 1.2 handshake");
    let mut c = Client::over(stream, V5);
    assert_eq!(
        c.tls().protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_2)
    );
    c.send(&Connect::v5("legacy-1").packet()).await;
    assert_eq!(c.recv_connack().await.code, 0);
    // Larger than one record (16 KiB of plaintext) each way.
    let payload = vec![b'7'; 40_000];
    c.publish_ok("devices/legacy-1/cmd/up", &payload).await;
    expect_publish(&mut svc, "devices/legacy-1/cmd/up", &payload).await;

    // A certificate the registry does not know is refused over TLS 1.2 too.
    let stray = p.unregistered_device("legacy-2");
    let stream = tokio::time::timeout(WAIT, p.tls_with(p.client_config_for(Some(&stray), &tls12)))
        .await
        .expect("handshake finished")
        .expect("TLS 1.2 handshake");
    let mut c = Client::over(stream, V5);
    c.send(&Connect::v5("legacy-2").packet()).await;
    assert_eq!(c.recv_connack().await.code, 0x87);
}

/// The broker requires a client certificate at the TLS layer; without one
/// no MQTT byte is exchanged.
#[tokio::test]
async fn connection_without_client_certificate_fails_the_handshake() {
    let p = Platform::start().await;
    let handshake = tokio::time::timeout(WAIT, p.tls(None))
        .await
        .expect("handshake finished");
    let failure = match handshake {
        Err(e) => e.to_string(),
        // TLS 1.3: the client completes its side before the server checks
        // the (missing) certificate; the server's alert comes on the first read.
        Ok(mut stream) => {
            let _ = stream
                .write_all(&encode(&Connect::v5("anon").packet()))
                .await;
            let mut received = Vec::new();
            let read = tokio::time::timeout(WAIT, stream.read_to_end(&mut received))
                .await
                .expect("the broker ends the connection");
            assert!(
                received.is_empty(),
                "the broker sent {received:02X?} to a client without certificate"
            );
            match read {
                Err(e) => e.to_string(),
                Ok(_) => "closed without alert".to_owned(),
            }
        }
    };
    assert!(
        failure.contains("CertificateRequired"),
        "expected the TLS 1.3 certificate_required alert, got: {failure}"
    );
    eventually("the failed handshake to be counted", || {
        p.metrics().handshake_failures.load(Relaxed) == 1
    })
    .await;
    assert_eq!(p.metrics().connections.load(Relaxed), 0);
}

// ---------------------------------------------------------------------------
// 3-4. Inbound QoS and the pipeline
// ---------------------------------------------------------------------------

/// DESIGN "Delivery guarantees": a QoS 1 publish is acknowledged only after
/// the pipeline committed it; while the pipeline holds it the broker reads
/// nothing more from that client (back-pressure), and PUBACKs follow the
/// order of the publishes (MQTT 5 §4.6).
#[tokio::test]
async fn qos1_puback_waits_for_the_pipeline_and_keeps_order() {
    let p = Platform::start().await;
    let dev = p.device("d1").await;
    let mut c = p.connected(&dev, Connect::v5("d1")).await;
    let topic = up("d1", "telemetry");
    p.sink.hold();

    let first = c.publish_packet(&topic, b"{\"seq\":1}", 1);
    let second = c.publish_packet(&topic, b"{\"seq\":2}", 1);
    let (id1, id2) = (
        first.packet_id.expect("QoS 1"),
        second.packet_id.expect("QoS 1"),
    );
    c.send(&Packet::Publish(first)).await;
    c.send(&Packet::Publish(second)).await;
    p.sink.wait_held(1).await;

    // Failure bound, not synchronisation: a message is at the pipeline's
    // gate (waited for above), so any PUBACK now is premature. Publishes
    // that arrived together are offered together; one read later is not
    // read at all while these wait.
    c.expect_silence(Duration::from_millis(300)).await;
    assert!(p.sink.committed().is_empty());

    // Once the pipeline answers, the PUBACKs come in publish order, each
    // after its message was committed.
    p.sink.release(2);
    let ack = c.recv_puback(id1).await;
    assert_eq!(u8::from(ack.reason_code), 0, "{ack:?}");
    assert!(
        p.sink
            .committed_payloads()
            .contains(&Bytes::from_static(b"{\"seq\":1}")),
        "the pipeline had the message when it was acknowledged"
    );
    let ack = c.recv_puback(id2).await;
    assert_eq!(u8::from(ack.reason_code), 0, "{ack:?}");

    let committed = p.sink.committed();
    assert_eq!(committed.len(), 2);
    for (m, seq) in committed.iter().zip([1, 2]) {
        assert_eq!(m.device.as_str(), "d1");
        assert_eq!(m.category, Category::Telemetry);
        assert_eq!(m.qos, rampart_proto::ingest::QoS::AtLeastOnce);
        assert_eq!(m.payload, format!("{{\"seq\":{seq}}}").as_bytes());
    }
    assert_eq!(p.metrics().messages_in_qos1.load(Relaxed), 2);
}

/// Decision 0016: a message is routed as soon as the pipeline has admitted
/// it (checked and queued for its commit), and acknowledged only once the
/// commit is in: the subscriber has it while the publisher still waits.
#[tokio::test]
async fn a_publish_is_routed_while_its_commit_is_pending_and_acknowledged_after() {
    let p = Platform::start().await;
    let (mut s, mut c) = subscriber_and_device(&p, 1).await;
    let topic = up("d1", "telemetry");
    p.sink.hold_commits();

    let publish = c.publish_packet(&topic, b"{\"seq\":1}", 1);
    let id = publish.packet_id.expect("QoS 1");
    c.send(&Packet::Publish(publish)).await;
    expect_publish(&mut s, &topic, b"{\"seq\":1}").await;
    p.sink.wait_commits_held(1).await;
    // Failure bound, not synchronisation: the commit is held (waited for
    // above), so any PUBACK now is premature.
    c.expect_silence(Duration::from_millis(300)).await;
    assert!(p.sink.committed().is_empty());

    p.sink.release_commits(1);
    let ack = c.recv_puback(id).await;
    assert_eq!(u8::from(ack.reason_code), 0, "{ack:?}");
    assert_eq!(p.sink.committed().len(), 1, "acknowledged once committed");
}

/// While commits are pending the connection reads on: later publishes are
/// routed and a PINGREQ answered before the first commit is in; the
/// PUBACKs then follow in publish order (MQTT 5 §4.6). A QoS 2
/// retransmission of a publish still waiting for its commit is not routed
/// again.
#[tokio::test]
async fn reading_goes_on_while_commits_are_pending_and_pubacks_keep_order() {
    let p = Platform::start().await;
    let (mut s, mut c) = subscriber_and_device(&p, 1).await;
    let topic = up("d1", "telemetry");
    p.sink.hold_commits();

    let first = c.publish_packet(&topic, b"{\"seq\":1}", 1);
    let id1 = first.packet_id.expect("QoS 1");
    c.send(&Packet::Publish(first)).await;
    expect_publish(&mut s, &topic, b"{\"seq\":1}").await;
    p.sink.wait_commits_held(1).await;
    // Read and answered while the first commit is held.
    c.ping().await;
    let second = c.publish_packet(&topic, b"{\"seq\":2}", 1);
    let id2 = second.packet_id.expect("QoS 1");
    c.send(&Packet::Publish(second)).await;
    expect_publish(&mut s, &topic, b"{\"seq\":2}").await;
    let third = c.publish_packet(&topic, b"{\"seq\":3}", 2);
    let id3 = third.packet_id.expect("QoS 2");
    let mut again = third.clone();
    again.dup = true;
    c.send(&Packet::Publish(third)).await;
    expect_publish(&mut s, &topic, b"{\"seq\":3}").await;
    c.send(&Packet::Publish(again)).await;
    c.ping().await;
    assert!(p.sink.committed().is_empty(), "no commit is through yet");

    p.sink.release_commits(3);
    assert_eq!(u8::from(c.recv_puback(id1).await.reason_code), 0);
    assert_eq!(u8::from(c.recv_puback(id2).await.reason_code), 0);
    let frame = c.recv_frame().await;
    assert_eq!(frame.first >> 4, 5, "a PUBREC for the QoS 2 publish");
    assert_eq!(frame.body.get(..2), Some(&id3.to_be_bytes()[..]));
    // The retransmission was answered, not routed: the subscriber has
    // nothing more, and the pipeline took the message once.
    s.expect_silence(Duration::from_millis(300)).await;
    assert_eq!(p.sink.committed().len(), 3);
}

/// A commit that fails after the message was routed is still answered:
/// MQTT 5 gets PUBACK 0x83 with the pipeline's reason; MQTT 3.1.1, which
/// has no negative acknowledgement, is closed unacknowledged so that the
/// client sends the message again.
#[tokio::test]
async fn a_commit_that_fails_after_routing_is_refused_to_the_publisher() {
    let p = Platform::start().await;
    let dev = p.device("d1").await;
    let svc = p.service("svc").await;
    let mut s = p.connected(&svc, Connect::v5("svc")).await;
    assert_eq!(s.subscribe("devices/#", 0).await, 0);
    let topic = up("d1", "telemetry");
    p.sink.fail_commits();

    let mut c = p.connected(&dev, Connect::v5("d1")).await;
    let ack = c.publish_qos1(&topic, b"{\"seq\":1}").await;
    assert_eq!(u8::from(ack.reason_code), 0x83, "{ack:?}");
    assert_eq!(
        reason_string(&ack.properties).as_deref(),
        Some(STORE_FAILED_DETAIL)
    );
    expect_publish(&mut s, &topic, b"{\"seq\":1}").await;
    assert_eq!(p.metrics().ingest_rejected.load(Relaxed), 1);
    c.ping().await;
    drop(c);

    let mut c = p.connected(&dev, Connect::v3("d1")).await;
    let publish = c.publish_packet(&topic, b"{\"seq\":2}", 1);
    c.send(&Packet::Publish(publish)).await;
    expect_publish(&mut s, &topic, b"{\"seq\":2}").await;
    c.expect_closed().await;
    assert!(p.sink.committed().is_empty());
}

/// d1's persistent session (MQTT 5, expiry 10 minutes).
fn persistent_d1() -> Connect {
    Connect {
        session_expiry: Some(600),
        clean_start: false,
        ..Connect::v5("d1")
    }
}

/// d1 sends a QoS 2 telemetry publish whose commit the sink holds, and its
/// connection ends before the answer: returns the publish (to retransmit)
/// and its packet id. Commits stay held.
async fn qos2_publish_left_uncommitted(p: &Platform, dev: &Credentials) -> (PublishPacket, u16) {
    p.sink.hold_commits();
    let mut c = p.connected(dev, persistent_d1()).await;
    let publish = c.publish_packet(&up("d1", "telemetry"), b"{\"seq\":1}", 2);
    let id = publish.packet_id.expect("QoS 2");
    c.send(&Packet::Publish(publish.clone())).await;
    p.sink.wait_commits_held(1).await;
    drop(c);
    p.sink.wait_disconnects("d1", 1).await;
    (publish, id)
}

/// A QoS 2 publish whose commit fails after its connection ended is not
/// left marked as taken: its retransmission on the next connection of the
/// persistent session goes to the pipeline again and is stored, instead of
/// being answered with PUBREC as if it had been.
#[tokio::test]
async fn a_qos2_publish_whose_commit_fails_after_its_connection_ended_is_offered_again() {
    let p = Platform::start().await;
    let dev = p.device("d1").await;
    let (publish, id) = qos2_publish_left_uncommitted(&p, &dev).await;
    // The store fails the commit after the connection is gone.
    p.sink.fail_commits();
    p.sink.release_commits(1);
    p.sink.wait_commits_failed(1).await;
    p.sink.succeed_commits();
    p.sink.release_commits(1);

    let mut c = p.connected(&dev, persistent_d1()).await;
    c.resend(publish).await;
    c.recv_pubrec_ok(id).await;
    assert_eq!(p.sink.committed_payloads(), [&b"{\"seq\":1}"[..]]);
}

/// The same, but the device retransmits while the first commit is still
/// in flight: the retransmission waits for that outcome instead of being
/// answered as taken, then (the commit failed) is offered to the pipeline
/// and stored once.
#[tokio::test]
async fn a_qos2_retransmission_waits_for_the_outcome_of_the_earlier_commit() {
    let p = Platform::start().await;
    let dev = p.device("d1").await;
    let (publish, id) = qos2_publish_left_uncommitted(&p, &dev).await;

    // The retransmission arrives while the first commit is held.
    let mut c = p.connected(&dev, persistent_d1()).await;
    c.resend(publish).await;
    eventually("the retransmission to be received", || {
        p.metrics().messages_in_qos2.load(Relaxed) == 2
    })
    .await;
    // Now the first commit fails; the retransmission is offered again.
    p.sink.fail_commits();
    p.sink.release_commits(1);
    p.sink.wait_commits_failed(1).await;
    p.sink.succeed_commits();
    p.sink.wait_commits_held(1).await;
    p.sink.release_commits(1);
    c.recv_pubrec_ok(id).await;
    assert_eq!(p.sink.committed_payloads(), [&b"{\"seq\":1}"[..]]);
}

/// A rejected payload gets MQTT 5 PUBACK 0x99 "Payload format invalid" with
/// the pipeline's reason string, and is never routed (ingest contract:
/// "never routed, never a disconnect").
#[tokio::test]
async fn rejected_payload_gets_puback_0x99_and_is_not_routed() {
    let p = Platform::start().await;
    let dev = p.device("d1").await;
    let svc = p.service("svc").await;
    let mut s = p.connected(&svc, Connect::v5("svc")).await;
    assert_eq!(s.subscribe("devices/#", 0).await, 0);
    p.sink.reject_payloads_starting_with(b"garbage");
    let mut c = p.connected(&dev, Connect::v5("d1")).await;
    let topic = up("d1", "telemetry");

    let ack = c.publish_qos1(&topic, b"garbage{").await;
    assert_eq!(u8::from(ack.reason_code), 0x99, "{ack:?}");
    assert_eq!(
        reason_string(&ack.properties).as_deref(),
        Some(REJECT_DETAIL)
    );

    c.publish_ok(&topic, b"{\"seq\":1}").await;
    expect_publish(&mut s, &topic, b"{\"seq\":1}").await;
    assert_eq!(p.sink.rejected().len(), 1);
    assert_eq!(p.metrics().ingest_rejected.load(Relaxed), 1);
    // Still connected.
    c.ping().await;
}

/// MQTT 3.1.1 has no reason codes: a rejected payload is acknowledged with a
/// plain PUBACK and dropped.
#[tokio::test]
async fn rejected_payload_over_mqtt_3_is_acknowledged_and_dropped() {
    let p = Platform::start().await;
    let dev = p.device("d1").await;
    let svc = p.service("svc").await;
    let mut s = p.connected(&svc, Connect::v5("svc")).await;
    assert_eq!(s.subscribe("devices/#", 0).await, 0);
    p.sink.reject_payloads_starting_with(b"garbage");
    let mut c = p.connected(&dev, Connect::v3("d1")).await;
    let topic = up("d1", "telemetry");

    let publish = c.publish_packet(&topic, b"garbage{", 1);
    let id = publish.packet_id.expect("QoS 1");
    c.send(&Packet::Publish(publish)).await;
    let frame = c.recv_frame().await;
    assert_eq!(
        (frame.first, frame.body.as_ref()),
        (0x40, &id.to_be_bytes()[..]),
        "MQTT 3.1.1 PUBACK is exactly type and packet id (§3.4)"
    );

    c.publish_ok(&topic, b"{\"seq\":1}").await;
    expect_publish(&mut s, &topic, b"{\"seq\":1}").await;
    assert_eq!(p.sink.rejected().len(), 1);
    assert_eq!(p.sink.committed().len(), 1);
}

/// MQTT 5 §4.3.3: PUBLISH → PUBREC, PUBREL → PUBCOMP. A PUBLISH resent with
/// DUP=1 and the same packet id before PUBREL is the same message: it is
/// acknowledged again but not ingested or routed twice.
#[tokio::test]
async fn qos2_inbound_flow_ingests_a_duplicate_publish_once() {
    let p = Platform::start().await;
    let (mut s, mut c) = subscriber_and_device(&p, 0).await;
    let topic = up("d1", "telemetry");

    let publish = c.publish_packet(&topic, b"exactly-once", 2);
    let id = publish.packet_id.expect("QoS 2");
    c.send(&Packet::Publish(publish.clone())).await;
    c.recv_pubrec_ok(id).await;

    c.resend(publish).await;
    c.recv_pubrec_ok(id).await;

    c.send(&Packet::PubRel(PubRelPacket::new(id))).await;
    match c.recv().await {
        Packet::PubComp(r) => assert_eq!((r.packet_id, u8::from(r.reason_code)), (id, 0)),
        other => panic!("expected PUBCOMP, got {other:?}"),
    }
    // The flow is over: a second PUBREL names an unknown id (MQTT 5 §3.7.2.1, 0x92).
    c.send(&Packet::PubRel(PubRelPacket::new(id))).await;
    match c.recv().await {
        Packet::PubComp(r) => assert_eq!((r.packet_id, u8::from(r.reason_code)), (id, 0x92)),
        other => panic!("expected PUBCOMP, got {other:?}"),
    }

    c.publish_ok(&topic, b"after").await;
    assert_eq!(
        p.sink.committed_payloads(),
        [&b"exactly-once"[..], &b"after"[..]]
    );
    expect_publish(&mut s, &topic, b"exactly-once").await;
    expect_publish(&mut s, &topic, b"after").await;
}

// ---------------------------------------------------------------------------
// 5-7. Sessions
// ---------------------------------------------------------------------------

/// MQTT 5 §4.4: unacknowledged QoS 1 deliveries of a persistent session are
/// resent on reconnection with DUP=1 and their original packet id, and
/// CONNACK says the session is present (§3.2.2.1.1). Once acknowledged they
/// are not resent again.
#[tokio::test]
async fn unacknowledged_qos1_delivery_is_resent_after_reconnect() {
    let p = Platform::start().await;
    let dev = p.device("d1").await;
    let svc = p.service("svc").await;
    let persistent = Connect {
        clean_start: false,
        session_expiry: Some(300),
        ..Connect::v5("svc")
    };
    let (mut s, ack) = p.connect(&svc, persistent.clone()).await;
    assert_eq!((ack.code, ack.session_present), (0, false), "{ack:?}");
    assert_eq!(s.subscribe("devices/+/telemetry/up", 1).await, 1);

    let mut d = p.connected(&dev, Connect::v5("d1")).await;
    let topic = up("d1", "telemetry");
    d.publish_ok(&topic, b"m1").await;
    let first = s.recv_publish().await;
    assert_eq!(
        (first.qos, first.dup, first.payload.as_ref()),
        (QoS::AtLeastOnce, false, &b"m1"[..])
    );
    let id = first.packet_id.expect("QoS 1 delivery has an id");
    s.disconnect().await; // without PUBACK
    // Published while the subscriber is away: queued in its session.
    d.publish_ok(&topic, b"m2").await;

    let (mut s, ack) = p.connect(&svc, persistent.clone()).await;
    assert_eq!((ack.code, ack.session_present), (0, true), "{ack:?}");
    let again = s.recv_publish().await;
    assert_eq!(
        (
            again.topic_name.as_str(),
            again.payload.as_ref(),
            again.qos,
            again.dup,
            again.packet_id
        ),
        (topic.as_str(), &b"m1"[..], QoS::AtLeastOnce, true, Some(id)),
        "resent delivery: {again:?}"
    );
    let queued = s.recv_publish().await;
    assert_eq!(
        (queued.payload.as_ref(), queued.qos, queued.dup),
        (&b"m2"[..], QoS::AtLeastOnce, false),
        "message queued while offline: {queued:?}"
    );
    let queued_id = queued.packet_id.expect("QoS 1 delivery has an id");
    assert_ne!(queued_id, id, "a packet id still in flight was reused");
    for ack in [id, queued_id] {
        s.send(&Packet::PubAck(PubAckPacket::new(ack))).await;
    }
    s.ping().await;
    s.disconnect().await;

    let (mut s, ack) = p.connect(&svc, persistent).await;
    assert!(ack.session_present, "{ack:?}");
    // A resend would be written before the broker reads our PINGREQ.
    s.ping().await;
}

/// MQTT 5 §3.14.2.2.2: a client whose CONNECT had Session Expiry Interval
/// 0 may not set a non-zero one in DISCONNECT. The server does not treat it
/// as a valid DISCONNECT: it answers DISCONNECT 0x82 "Protocol Error"
/// (§4.13), so the session still ends with the connection (and, the
/// disconnect not being normal, the will is published, §3.1.2.5).
#[tokio::test]

async fn disconnect_may_not_raise_a_zero_session_expiry() {
    let p = Platform::start().await;
    let svc = p.service("svc").await;
    let dev = p.device("d1").await;
    let mut watcher = p.connected(&svc, Connect::v5("svc")).await;
    assert_eq!(watcher.subscribe("devices/+/state/up", 0).await, 0);
    let (mut c, ack) = p
        .connect(
            &dev,
            Connect {
                clean_start: false,
                session_expiry: Some(0),
                will: Some(offline_will("d1")),
                ..Connect::v5("d1")
            },
        )
        .await;
    assert_eq!((ack.code, ack.session_present), (0, false));
    c.send(&Packet::Disconnect(
        DisconnectPacket::normal().with_session_expiry_interval(300),
    ))
    .await;
    let answer = c.next_event().await;
    let (mut again, ack) = p
        .connect(
            &dev,
            Connect {
                clean_start: false,
                ..Connect::v5("d1")
            },
        )
        .await;
    again.publish_ok(&up("d1", "state"), b"marker").await;
    let first_seen = watcher.recv_publish().await;

    let mut problems = Vec::new();
    if !matches!(&answer, Event::Frame(f) if f.first == 0xE0 && f.body.first() == Some(&0x82)) {
        problems.push(format!("expected DISCONNECT 0x82, got {answer:?}"));
    }
    if ack.session_present {
        problems
            .push("the session outlived a connection whose CONNECT said it ends with it".into());
    }
    if first_seen.payload.as_ref() != b"offline" {
        problems.push(format!(
            "no will published; first PUBLISH seen: {first_seen:?}"
        ));
    }
    assert!(problems.is_empty(), "{problems:#?}");
}

/// MQTT-3.1.2-25: a message larger than the Maximum Packet Size the client
/// gave is discarded for that client as if it had been delivered, so it
/// holds no in-flight slot (Receive Maximum 1 here) and later messages flow.
#[tokio::test]
async fn delivery_larger_than_the_client_maximum_packet_size_is_skipped() {
    let p = Platform::start().await;
    let dev = p.device("d1").await;
    let svc = p.service("svc").await;
    let small_client = Connect {
        maximum_packet_size: Some(128),
        receive_maximum: Some(1),
        ..Connect::v5("svc")
    };
    let mut s = p.connected(&svc, small_client).await;
    assert_eq!(s.subscribe("devices/+/telemetry/up", 1).await, 1);
    let mut d = p.connected(&dev, Connect::v5("d1")).await;
    let topic = up("d1", "telemetry");

    d.publish_ok(&topic, &[b'x'; 300]).await;
    eventually("the oversized delivery to be dropped", || {
        p.metrics().dropped_too_large.load(Relaxed) == 1
    })
    .await;
    d.publish_ok(&topic, b"small").await;
    let got = s.recv_publish().await;
    assert_eq!(got.payload.as_ref(), b"small", "{got:?}");
    assert!(!got.dup);
}

/// The same with both messages already queued when the subscriber comes
/// back: dropping the oversized one frees its in-flight slot, and the next
/// queued message must go out without waiting for the client to send
/// anything (MQTT-3.1.2-25: behave as if the message had been delivered).
#[tokio::test]
async fn dropped_oversized_delivery_does_not_stall_the_queue() {
    let p = Platform::start().await;
    let dev = p.device("d1").await;
    let svc = p.service("svc").await;
    let small_client = Connect {
        clean_start: false,
        session_expiry: Some(300),
        maximum_packet_size: Some(128),
        receive_maximum: Some(1),
        ..Connect::v5("svc")
    };
    let mut s = p.connected(&svc, small_client.clone()).await;
    assert_eq!(s.subscribe("devices/+/telemetry/up", 1).await, 1);
    s.disconnect().await;

    let mut d = p.connected(&dev, Connect::v5("d1")).await;
    let topic = up("d1", "telemetry");
    d.publish_ok(&topic, &[b'x'; 300]).await;
    d.publish_ok(&topic, b"small").await;

    let (mut s, ack) = p.connect(&svc, small_client).await;
    assert!(ack.session_present, "{ack:?}");
    // Nothing is sent to the broker here: the small message must come on
    // its own (a PINGREQ would wake the connection and hide the stall).
    let got = s.recv_publish().await;
    assert_eq!(got.payload.as_ref(), b"small", "{got:?}");
    assert_eq!(p.metrics().dropped_too_large.load(Relaxed), 1);
}

/// MQTT 5 §3.1.4: a second connection with the same client id takes the
/// session over; the first gets DISCONNECT 0x8E "Session taken over".
#[tokio::test]
async fn second_connection_with_the_same_id_takes_the_session_over() {
    let p = Platform::start().await;
    let dev = p.device("d1").await;
    let mut first = p.connected(&dev, Connect::v5("d1")).await;
    let mut second = p.connected(&dev, Connect::v5("d1")).await;
    first.expect_disconnect(0x8E).await;
    second.ping().await;
    second
        .publish_ok(&up("d1", "telemetry"), b"still here")
        .await;
    assert_eq!(p.metrics().taken_over.load(Relaxed), 1);
    assert_eq!(
        p.sink.wait_disconnects("d1", 1).await,
        [DisconnectReason::TakenOver]
    );
    // The pipeline sees the old connection end before the new one starts,
    // so the device ends up online.
    let order: Vec<&str> = p
        .sink
        .presence_of("d1")
        .iter()
        .map(|e| match e {
            PresenceEvent::Connected { .. } => "connected",
            PresenceEvent::Disconnected { .. } => "disconnected",
        })
        .collect();
    assert_eq!(order, ["connected", "disconnected", "connected"]);
}

/// MQTT 5 §3.1.2.10 (MQTT 3.1.1 §3.1.2.10): with no packet for 1.5 ×
/// keepalive the server closes the connection; MQTT 5 says why with
/// DISCONNECT 0x8D "Keep Alive timeout".
#[tokio::test]
async fn silent_client_is_closed_after_one_and_a_half_keepalives() {
    let p = Platform::start().await;
    let d5 = p.device("quiet-5").await;
    let d3 = p.device("quiet-3").await;
    let mut c5 = p
        .connected(
            &d5,
            Connect {
                keep_alive: 1,
                ..Connect::v5("quiet-5")
            },
        )
        .await;
    let start5 = Instant::now();
    let mut c3 = p
        .connected(
            &d3,
            Connect {
                keep_alive: 1,
                ..Connect::v3("quiet-3")
            },
        )
        .await;
    let start3 = Instant::now();

    let (after5, after3) = tokio::join!(
        async {
            c5.expect_disconnect(0x8D).await;
            start5.elapsed()
        },
        async {
            c3.expect_closed().await;
            start3.elapsed()
        }
    );
    // Not a speed check: closing before 1.5 × keepalive breaks the rule.
    // (The broker's clock starts a little before the client sees CONNACK.)
    for after in [after5, after3] {
        assert!(
            after >= Duration::from_millis(1400),
            "closed {after:?} after CONNACK, before 1.5 × keepalive"
        );
    }
    assert_eq!(p.metrics().keepalive_timeouts.load(Relaxed), 2);
    for name in ["quiet-5", "quiet-3"] {
        assert_eq!(
            p.sink.wait_disconnects(name, 1).await,
            [DisconnectReason::KeepaliveTimeout]
        );
    }
}

/// `max_keepalive_secs` is the keepalive the server imposes on a client
/// that asks for none (0) or more. An MQTT 5 client is told in CONNACK
/// (Server Keep Alive, §3.2.2.3.14) and held to it.
#[tokio::test]
async fn server_keep_alive_replaces_a_keepalive_of_zero() {
    let p = Platform::start_with(|c| c.max_keepalive_secs = 1).await;
    let dev = p.device("d1").await;
    let (mut c, ack) = p
        .connect(
            &dev,
            Connect {
                keep_alive: 0,
                ..Connect::v5("d1")
            },
        )
        .await;
    assert_eq!(ack.code, 0);
    assert_eq!(ack.properties.get_server_keep_alive(), Some(1));
    c.expect_disconnect(0x8D).await;
}

/// The same limit for MQTT 3.1.1, which has no Server Keep Alive: the
/// server may close an inactive client at any time whatever keepalive it
/// asked for (MQTT 3.1.1 §3.1.2.10), and the config promises the limit for
/// clients that ask for none. Without it a v3 client holds a connection
/// slot forever by sending nothing after CONNECT.
#[tokio::test]

async fn keepalive_limit_applies_to_mqtt_3_clients_that_ask_for_none() {
    let p = Platform::start_with(|c| c.max_keepalive_secs = 1).await;
    let dev = p.device("d1").await;
    let mut c = p
        .connected(
            &dev,
            Connect {
                keep_alive: 0,
                ..Connect::v3("d1")
            },
        )
        .await;
    c.expect_closed().await;
    assert_eq!(
        p.sink.wait_disconnects("d1", 1).await,
        [DisconnectReason::KeepaliveTimeout]
    );
}

// ---------------------------------------------------------------------------
// 8. Protocol violations
// ---------------------------------------------------------------------------

/// Each violation closes that connection with MQTT 5 DISCONNECT and the
/// reason the spec gives (before CONNECT: closed without a packet, MQTT 5
/// §4.13.1), is counted, and leaves another client unharmed.
#[tokio::test]
async fn protocol_violations_close_only_the_offending_connection() {
    let p = Platform::start_with(|c| c.max_packet_size = 1024).await;
    let calm = p.device("calm").await;
    let bad = p.device("bad").await;
    let mut bystander = p.connected(&calm, Connect::v5("calm")).await;
    let topic = up("bad", "telemetry");

    let cases: Vec<(&str, Vec<u8>, Option<u8>)> = vec![
        // MQTT-3.1.0-2: a second CONNECT is a Protocol Error.
        (
            "second CONNECT",
            encode(&Connect::v5("bad").packet()).to_vec(),
            Some(0x82),
        ),
        // MQTT-3.3.1-4: QoS 3 is a Malformed Packet.
        (
            "PUBLISH with QoS 3",
            raw_publish(0x36, topic.as_bytes(), Some(1), b"x"),
            Some(0x81),
        ),
        // MQTT 5 §2.1.3: reserved flag bits must be as specified.
        ("PINGREQ with flags 0x1", vec![0xC1, 0x00], Some(0x81)),
        (
            "PUBREL with flags 0x0",
            vec![0x60, 0x02, 0x00, 0x01],
            Some(0x81),
        ),
        // MQTT-3.3.1-2: DUP must be 0 at QoS 0.
        (
            "PUBLISH QoS 0 with DUP",
            raw_publish(0x38, topic.as_bytes(), None, b"x"),
            Some(0x81),
        ),
        // MQTT-2.2.1-3: QoS > 0 needs a non-zero packet identifier.
        (
            "PUBLISH QoS 1 with packet id 0",
            raw_publish(0x32, topic.as_bytes(), Some(0), b"x"),
            Some(0x82),
        ),
        // MQTT-1.5.4-1: ill-formed UTF-8 is a Malformed Packet.
        (
            "PUBLISH topic with invalid UTF-8",
            raw_publish(0x30, b"devices/\xC3\x28/telemetry/up", None, b"x"),
            Some(0x81),
        ),
        // MQTT-3.3.2-2: no wildcards in a PUBLISH topic.
        (
            "PUBLISH topic with a wildcard",
            raw_publish(0x30, b"devices/bad/+/up", None, b"x"),
            Some(0x82),
        ),
        // MQTT 5 §3.2.2.3.6: over the Maximum Packet Size the server sent
        // (1024; the header alone announces 2000 bytes) is 0x95.
        (
            "remaining length over max_packet_size",
            vec![0x30, 0xD0, 0x0F],
            Some(0x95),
        ),
        // MQTT 5 §2.1.2: packet type 0 is reserved (Malformed Packet).
        (
            "garbage after CONNECT",
            vec![0x00, 0xFF, 0x13, 0x37],
            Some(0x81),
        ),
        // MQTT-3.1.0-1: the first packet must be CONNECT; no CONNACK, no DISCONNECT.
        (
            "garbage instead of CONNECT",
            b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n".to_vec(),
            None,
        ),
    ];
    let mut connected = 0;
    for (n, (what, bytes, code)) in cases.iter().enumerate() {
        let mut c = match code {
            Some(_) => {
                connected += 1;
                p.connected(&bad, Connect::v5("bad")).await
            }
            None => p.open(&bad, V5).await,
        };
        c.send_raw(bytes).await;
        if let Some(code) = code {
            match c.recv().await {
                Packet::Disconnect(d) => assert_eq!(
                    u8::from(d.reason_code),
                    *code,
                    "{what}: DISCONNECT {:?}",
                    d.reason_code
                ),
                other => panic!("{what}: expected DISCONNECT 0x{code:02X}, got {other:?}"),
            }
        }
        match c.next_event().await {
            Event::Closed(_) => {}
            Event::Frame(f) => panic!("{what}: expected the close, got {f:?}"),
        }
        assert_eq!(
            p.metrics().protocol_errors.load(Relaxed),
            n as u64 + 1,
            "{what} counted"
        );
        bystander.ping().await;
    }
    let reasons = p.sink.wait_disconnects("bad", connected).await;
    assert!(
        reasons
            .iter()
            .all(|r| *r == DisconnectReason::ProtocolError),
        "{reasons:?}"
    );
    assert!(
        p.sink.committed().is_empty(),
        "nothing malformed was ingested"
    );
}

/// Packets arriving in pieces (each piece its own TLS record) are put
/// together whatever their size: a small PUBLISH cut inside its fixed
/// header and inside its body (the connection reads the rest of such a
/// packet into a buffer of exactly its size), one larger than a bulk read,
/// and several packets in one record after them. Each is acknowledged in
/// order and stored with its payload intact.
#[tokio::test]
async fn packets_split_across_records_are_reassembled() {
    let p = Platform::start().await;
    let dev = p.device("pieces").await;
    let mut c = p.connected(&dev, Connect::v5("pieces")).await;
    let topic = up("pieces", "telemetry");
    let payloads: Vec<Vec<u8>> = vec![
        vec![b'a'; 100],
        vec![b'b'; 70],
        vec![b'c'; 3000],
        vec![b'd'; 10],
        vec![b'e'; 200],
        vec![b'f'; 1],
    ];
    let mut ids = Vec::new();
    let mut wire = Vec::new();
    for payload in &payloads {
        let publish = c.publish_packet(&topic, payload, 1);
        ids.push(publish.packet_id.expect("QoS 1 has an id"));
        wire.push(encode(&Packet::Publish(publish)).to_vec());
    }
    // The small one: its first byte, then into the body, then the rest.
    c.send_raw(&wire[0][..1]).await;
    c.send_raw(&wire[0][1..40]).await;
    c.send_raw(&wire[0][40..]).await;
    // Past the first read of a pause (64 bytes), then the rest.
    c.send_raw(&wire[1][..65]).await;
    c.send_raw(&wire[1][65..]).await;
    // Larger than a bulk read, in three pieces.
    c.send_raw(&wire[2][..64]).await;
    c.send_raw(&wire[2][64..1500]).await;
    c.send_raw(&wire[2][1500..]).await;
    // The last three in one record.
    c.send_raw(&wire[3..].concat()).await;
    for id in &ids {
        let ack = c.recv_puback(*id).await;
        assert_eq!(u8::from(ack.reason_code), 0x00, "{ack:?}");
    }
    let stored: Vec<Vec<u8>> = p
        .sink
        .committed_payloads()
        .iter()
        .map(|b| b.to_vec())
        .collect();
    assert_eq!(stored, payloads);
}

// ---------------------------------------------------------------------------
// 9-10. Access control and revocation
// ---------------------------------------------------------------------------

/// DESIGN "Topics": a device subscribes only to `devices/{its id}/+/down`.
/// Others are refused per filter: MQTT 5 SUBACK 0x87, MQTT 3.1.1 0x80.
#[tokio::test]
async fn acl_refuses_a_foreign_subscription_per_filter() {
    let p = Platform::start().await;
    let d1 = p.device("d1").await;
    let d2 = p.device("d2").await;
    let mut c1 = p.connected(&d1, Connect::v5("d1")).await;
    let qos1 = SubscriptionOptions::new(QoS::AtLeastOnce);
    let codes = c1
        .subscribe_with(&[("devices/d2/+/down", qos1), ("devices/d1/+/down", qos1)])
        .await;
    assert_eq!(codes, [0x87, 0x01]);
    assert_eq!(c1.subscribe("devices/#", 0).await, 0x87);

    let mut c2 = p.connected(&d2, Connect::v3("d2")).await;
    assert_eq!(c2.subscribe("devices/d1/+/down", 1).await, 0x80);
    assert_eq!(c2.subscribe("devices/d2/cmd/down", 1).await, 0x01);

    assert_eq!(p.metrics().acl_denied_subscribe.load(Relaxed), 3);
    c1.ping().await;
    c2.ping().await;
}

/// DESIGN "Topics": a device publishes only to `devices/{its id}/+/up`.
/// MQTT 5: PUBACK 0x87; MQTT 3.1.1: PUBACK and dropped. Neither is ingested
/// nor routed.
#[tokio::test]
async fn acl_refuses_a_foreign_publish() {
    let p = Platform::start().await;
    let d1 = p.device("d1").await;
    let d3 = p.device("d3").await;
    let svc = p.service("svc").await;
    let mut s = p.connected(&svc, Connect::v5("svc")).await;
    assert_eq!(s.subscribe("devices/#", 0).await, 0);
    let mut c1 = p.connected(&d1, Connect::v5("d1")).await;
    let mut c3 = p.connected(&d3, Connect::v3("d3")).await;

    for topic in [up("d2", "telemetry"), "devices/d1/cmd/down".to_owned()] {
        let ack = c1.publish_qos1(&topic, b"spoof").await;
        assert_eq!(u8::from(ack.reason_code), 0x87, "{topic}: {ack:?}");
    }
    let publish = c3.publish_packet(&up("d2", "telemetry"), b"spoof", 1);
    let id = publish.packet_id.expect("QoS 1");
    c3.send(&Packet::Publish(publish)).await;
    let frame = c3.recv_frame().await;
    assert_eq!(
        (frame.first, frame.body.as_ref()),
        (0x40, &id.to_be_bytes()[..])
    );

    c1.publish_ok(&up("d1", "telemetry"), b"mine").await;
    expect_publish(&mut s, &up("d1", "telemetry"), b"mine").await;
    assert_eq!(p.sink.committed_payloads(), [&b"mine"[..]]);
    assert_eq!(p.metrics().acl_denied_publish.load(Relaxed), 3);
}

/// DESIGN "Identity and trust": revocation (and disabling) is immediate; the
/// live session is closed with MQTT 5 DISCONNECT 0x98 "Administrative
/// action" (MQTT 3.1.1: closed) and the identity cannot reconnect.
#[tokio::test]
async fn revoked_or_disabled_identity_is_cut_off_while_connected() {
    let p = Platform::start().await;
    let rev = p.device("rev").await;
    let rev3 = p.device("rev3").await;
    let dis = p.device("dis").await;
    let other = p.device("other").await;
    let mut c_rev = p.connected(&rev, Connect::v5("rev")).await;
    let mut c_rev3 = p.connected(&rev3, Connect::v3("rev3")).await;
    let mut c_dis = p.connected(&dis, Connect::v5("dis")).await;
    let mut c_other = p.connected(&other, Connect::v5("other")).await;

    p.revoke_device("rev").await;
    c_rev.expect_disconnect(0x98).await;
    p.revoke_device("rev3").await;
    c_rev3.expect_closed().await;
    p.set_disabled("dis", true).await;
    c_dis.expect_disconnect(0x98).await;
    c_other.ping().await;

    assert_eq!(p.metrics().kicked_revoked.load(Relaxed), 3);
    for (name, reason) in [
        ("rev", DisconnectReason::Revoked),
        ("rev3", DisconnectReason::Revoked),
        ("dis", DisconnectReason::Disabled),
    ] {
        assert_eq!(p.sink.wait_disconnects(name, 1).await, [reason], "{name}");
    }

    let (mut c, ack) = p.connect(&rev, Connect::v5("rev")).await;
    assert_eq!(ack.code, 0x87, "{ack:?}");
    c.expect_closed().await;
    let (mut c, ack) = p.connect(&rev3, Connect::v3("rev3")).await;
    assert_eq!(ack.code, 0x05, "{ack:?}");
    c.expect_closed().await;
    let (mut c, ack) = p.connect(&dis, Connect::v5("dis")).await;
    assert_eq!(ack.code, 0x87, "{ack:?}");
    c.expect_closed().await;
}

/// DESIGN "Identity and trust": the live session of a revoked device is
/// closed within a second, also while the pipeline is holding one of its
/// publishes (back-pressure). The held message is not acknowledged.
#[tokio::test]

async fn revocation_cuts_a_session_whose_publish_the_pipeline_holds() {
    let p = Platform::start().await;
    let dev = p.device("d1").await;
    let mut c = p.connected(&dev, Connect::v5("d1")).await;
    p.sink.hold();
    let publish = c.publish_packet(&up("d1", "telemetry"), b"{\"seq\":1}", 1);
    c.send(&Packet::Publish(publish)).await;
    p.sink.wait_held(1).await;

    p.revoke_device("d1").await;
    c.expect_disconnect(0x98).await;
    assert_eq!(
        p.sink.wait_disconnects("d1", 1).await,
        [DisconnectReason::Revoked]
    );
    p.sink.release(1);
}

// ---------------------------------------------------------------------------
// 11. Retained messages
// ---------------------------------------------------------------------------

/// MQTT 5 §3.3.1.3 and §3.8.3.1 Retain Handling: 0 sends retained messages
/// at every subscribe, 1 only if the subscription is new, 2 never. Retained
/// messages sent because of a subscription carry RETAIN=1.
#[tokio::test]
async fn retained_message_is_sent_according_to_retain_handling() {
    let p = Platform::start().await;
    let dev = p.device("d1").await;
    let svc = p.service("svc").await;
    let state = up("d1", "state");
    let telemetry = up("d1", "telemetry");
    let mut d = p.connected(&dev, Connect::v5("d1")).await;
    let mut retained = d.publish_packet(&state, b"fw=1.2", 1);
    retained.retain = true;
    let id = retained.packet_id.expect("QoS 1");
    d.send(&Packet::Publish(retained)).await;
    assert_eq!(u8::from(d.recv_puback(id).await.reason_code), 0);

    let mut s = p.connected(&svc, Connect::v5("svc")).await;
    // The marker channel: nothing is retained there.
    assert_eq!(s.subscribe(&telemetry, 0).await, 0);
    let qos0 = QoS::AtMostOnce;

    // 2: do not send.
    let codes = s
        .subscribe_with(&[(&state, sub_options(qos0, RetainHandling::DoNotSend))])
        .await;
    assert_eq!(codes, [0]);
    d.publish_ok(&telemetry, b"marker-1").await;
    let next = s.recv_publish().await;
    assert_eq!(
        next.payload.as_ref(),
        b"marker-1",
        "retain handling 2 sent {next:?}"
    );

    // 1 on a new subscription: sent, with RETAIN=1.
    let wildcard = "devices/d1/+/up";
    let if_new = sub_options(qos0, RetainHandling::SendAtSubscribeIfNew);
    assert_eq!(s.subscribe_with(&[(wildcard, if_new)]).await, [0]);
    let sent = s.recv_publish().await;
    assert_eq!(
        (sent.topic_name.as_str(), sent.payload.as_ref(), sent.retain),
        (state.as_str(), &b"fw=1.2"[..], true),
        "{sent:?}"
    );

    // 1 on an existing subscription: not sent.
    assert_eq!(s.subscribe_with(&[(wildcard, if_new)]).await, [0]);
    d.publish_ok(&telemetry, b"marker-2").await;
    let next = s.recv_publish().await;
    assert_eq!(
        next.payload.as_ref(),
        b"marker-2",
        "retain handling 1 resent to an existing subscription: {next:?}"
    );

    // 0 on an existing subscription: sent again.
    let always = sub_options(qos0, RetainHandling::SendAtSubscribe);
    assert_eq!(s.subscribe_with(&[(&state, always)]).await, [0]);
    let sent = s.recv_publish().await;
    assert_eq!((sent.payload.as_ref(), sent.retain), (&b"fw=1.2"[..], true));
    d.publish_ok(&telemetry, b"marker-3").await;
    expect_publish(&mut s, &telemetry, b"marker-3").await;
}

/// MQTT 5 §3.3.1.3: a retained PUBLISH with an empty payload removes the
/// retained message (and is delivered to current subscribers as usual).
#[tokio::test]
async fn empty_retained_payload_clears_the_retained_message() {
    let p = Platform::start().await;
    let dev = p.device("d1").await;
    let svc1 = p.service("svc-1").await;
    let svc2 = p.service("svc-2").await;
    let state = up("d1", "state");
    let telemetry = up("d1", "telemetry");
    let mut d = p.connected(&dev, Connect::v5("d1")).await;
    let publish_retained = async |d: &mut Client, payload: &[u8]| {
        let mut r = d.publish_packet(&state, payload, 1);
        r.retain = true;
        let id = r.packet_id.expect("QoS 1");
        d.send(&Packet::Publish(r)).await;
        assert_eq!(u8::from(d.recv_puback(id).await.reason_code), 0);
    };

    publish_retained(&mut d, b"fw=1.2").await;
    let mut s1 = p.connected(&svc1, Connect::v5("svc-1")).await;
    assert_eq!(s1.subscribe(&state, 0).await, 0);
    let sent = s1.recv_publish().await;
    assert_eq!((sent.payload.as_ref(), sent.retain), (&b"fw=1.2"[..], true));

    publish_retained(&mut d, b"").await;
    let live = s1.recv_publish().await;
    assert_eq!(
        (live.topic_name.as_str(), live.payload.len()),
        (state.as_str(), 0)
    );

    let mut s2 = p.connected(&svc2, Connect::v5("svc-2")).await;
    let qos0 = SubscriptionOptions::new(QoS::AtMostOnce);
    assert_eq!(
        s2.subscribe_with(&[(&telemetry, qos0), (&state, qos0)])
            .await,
        [0, 0]
    );
    d.publish_ok(&telemetry, b"marker").await;
    let next = s2.recv_publish().await;
    assert_eq!(
        next.payload.as_ref(),
        b"marker",
        "a cleared retained message was sent: {next:?}"
    );
}

// ---------------------------------------------------------------------------
// 12. Wills
// ---------------------------------------------------------------------------

fn offline_will(id: &str) -> WillMessage {
    let mut will = WillMessage::new(up(id, "state"), b"offline".to_vec());
    will.qos = QoS::AtLeastOnce;
    will
}

/// MQTT 5 §3.1.2.5: when the network connection closes without DISCONNECT
/// the will is published.
#[tokio::test]
async fn will_is_published_when_the_connection_drops() {
    let p = Platform::start().await;
    let d5 = p.device("d5").await;
    let d3 = p.device("d3").await;
    let svc = p.service("svc").await;
    let mut s = p.connected(&svc, Connect::v5("svc")).await;
    assert_eq!(s.subscribe("devices/+/state/up", 1).await, 1);

    for (creds, connect) in [(&d5, Connect::v5("d5")), (&d3, Connect::v3("d3"))] {
        let name = connect.client_id.clone();
        let mut c = p
            .connected(
                creds,
                Connect {
                    will: Some(offline_will(&name)),
                    ..connect
                },
            )
            .await;
        c.ping().await;
        drop(c); // TCP close, no DISCONNECT, no TLS close_notify

        let will = s.recv_publish().await;
        assert_eq!(
            (will.topic_name.as_str(), will.payload.as_ref()),
            (up(&name, "state").as_str(), &b"offline"[..]),
            "{will:?}"
        );
        if let Some(id) = will.packet_id {
            s.send(&Packet::PubAck(PubAckPacket::new(id))).await;
        }
        assert_eq!(
            p.sink.wait_disconnects(&name, 1).await,
            [DisconnectReason::ConnectionLost]
        );
    }
}

/// MQTT 5 §3.14.2.1: DISCONNECT 0x04 "Disconnect with Will Message" ends
/// the connection cleanly but asks for the will.
#[tokio::test]
async fn will_is_published_after_disconnect_with_will_message() {
    let p = Platform::start().await;
    let dev = p.device("d1").await;
    let svc = p.service("svc").await;
    let mut s = p.connected(&svc, Connect::v5("svc")).await;
    assert_eq!(s.subscribe("devices/+/state/up", 0).await, 0);
    let mut c = p
        .connected(
            &dev,
            Connect {
                will: Some(offline_will("d1")),
                ..Connect::v5("d1")
            },
        )
        .await;
    c.send(&Packet::Disconnect(DisconnectPacket::new(
        ReasonCode::DisconnectWithWillMessage,
    )))
    .await;
    c.expect_closed().await;
    expect_publish(&mut s, &up("d1", "state"), b"offline").await;
    assert_eq!(
        p.sink.wait_disconnects("d1", 1).await,
        [DisconnectReason::Clean]
    );
}

/// MQTT 5 §3.1.2.5 / §3.14.4: a normal DISCONNECT discards the will.
#[tokio::test]
async fn will_is_not_published_after_a_clean_disconnect() {
    let p = Platform::start().await;
    let dev = p.device("d1").await;
    let other = p.device("d2").await;
    let svc = p.service("svc").await;
    let mut s = p.connected(&svc, Connect::v5("svc")).await;
    assert_eq!(s.subscribe("devices/#", 0).await, 0);

    for connect in [Connect::v5("d1"), Connect::v3("d1")] {
        let c = p
            .connected(
                &dev,
                Connect {
                    will: Some(offline_will("d1")),
                    ..connect
                },
            )
            .await;
        c.disconnect().await;
    }
    // The disconnect events are recorded after the will would have been routed.
    assert_eq!(
        p.sink.wait_disconnects("d1", 2).await,
        [DisconnectReason::Clean, DisconnectReason::Clean]
    );
    let mut marker = p.connected(&other, Connect::v5("d2")).await;
    marker.publish_ok(&up("d2", "telemetry"), b"marker").await;
    let next = s.recv_publish().await;
    assert_eq!(
        next.payload.as_ref(),
        b"marker",
        "a will was published after a clean disconnect: {next:?}"
    );
}

// ---------------------------------------------------------------------------
// 13. Topic aliases
// ---------------------------------------------------------------------------

/// MQTT 5 §3.3.2.3.4: a PUBLISH with topic and alias sets the alias; one
/// with the alias and an empty topic uses it; setting it again remaps it.
/// Subscribers get the real topic.
#[tokio::test]
async fn topic_alias_resolves_to_the_topic_it_was_set_for() {
    let p = Platform::start().await;
    let dev = p.device("d1").await;
    let svc = p.service("svc").await;
    let mut s = p.connected(&svc, Connect::v5("svc")).await;
    assert_eq!(s.subscribe("devices/#", 0).await, 0);
    let (mut d, ack) = p.connect(&dev, Connect::v5("d1")).await;
    assert_eq!(ack.code, 0);
    assert_eq!(ack.properties.get_topic_alias_maximum(), Some(32));
    let telemetry = up("d1", "telemetry");
    let state = up("d1", "state");

    let steps: [(&str, u16, &[u8], &str); 6] = [
        (&telemetry, 1, b"a", &telemetry),
        ("", 1, b"b", &telemetry),
        (&state, 2, b"c", &state),
        ("", 2, b"d", &state),
        ("", 1, b"e", &telemetry),
        (&state, 1, b"f", &state),
    ];
    for (topic, alias, payload, _) in steps {
        let mut publish = d.publish_packet(topic, payload, 1);
        publish.properties.set_topic_alias(alias);
        let id = publish.packet_id.expect("QoS 1");
        d.send(&Packet::Publish(publish)).await;
        let ack = d.recv_puback(id).await;
        assert_eq!(u8::from(ack.reason_code), 0, "alias {alias}: {ack:?}");
    }
    let mut alias_only = d.publish_packet("", b"g", 1);
    alias_only.properties.set_topic_alias(1);
    let id = alias_only.packet_id.expect("QoS 1");
    d.send(&Packet::Publish(alias_only)).await;
    d.recv_puback(id).await;

    for (_, _, payload, topic) in steps {
        let got = s.recv_publish().await;
        assert_eq!(
            (got.topic_name.as_str(), got.payload.as_ref()),
            (topic, payload),
            "{got:?}"
        );
        assert_eq!(got.properties.get_topic_alias(), None, "alias forwarded");
    }
    expect_publish(&mut s, &state, b"g").await;
    let categories: Vec<Category> = p.sink.committed().iter().map(|m| m.category).collect();
    use Category::{State, Telemetry};
    assert_eq!(
        categories,
        [Telemetry, Telemetry, State, State, Telemetry, State, State]
    );
}

/// MQTT 5 §3.3.2.3.4: alias 0, or above the Topic Alias Maximum the server
/// sent, closes the connection with DISCONNECT 0x94 "Topic Alias invalid".
#[tokio::test]
async fn topic_alias_outside_the_announced_range_is_disconnected() {
    let p = Platform::start_with(|c| c.topic_alias_maximum = 4).await;
    let dev = p.device("d1").await;
    for alias in [0, 5] {
        let (mut d, ack) = p.connect(&dev, Connect::v5("d1")).await;
        assert_eq!(ack.properties.get_topic_alias_maximum(), Some(4));
        let mut publish = d.publish_packet(&up("d1", "telemetry"), b"x", 1);
        publish.properties.set_topic_alias(alias);
        d.send(&Packet::Publish(publish)).await;
        match d.recv().await {
            Packet::Disconnect(r) => assert_eq!(u8::from(r.reason_code), 0x94, "alias {alias}"),
            other => panic!("alias {alias}: expected DISCONNECT 0x94, got {other:?}"),
        }
        d.expect_closed().await;
    }
    assert_eq!(p.metrics().protocol_errors.load(Relaxed), 2);
    assert!(p.sink.committed().is_empty());
}

// ---------------------------------------------------------------------------
// 14-15. Shared subscriptions, floods
// ---------------------------------------------------------------------------

/// MQTT 5 §4.8.2: a message matching a shared subscription goes to exactly
/// one member of the group (this broker: round-robin, so both get some).
#[tokio::test]
async fn shared_subscription_delivers_each_message_to_one_member() {
    let p = Platform::start().await;
    let dev = p.device("d1").await;
    let marker_topic = up("d1", "state");
    let mut members = Vec::new();
    for name in ["svc-a", "svc-b"] {
        let creds = p.service(name).await;
        let mut s = p.connected(&creds, Connect::v5(name)).await;
        let qos0 = SubscriptionOptions::new(QoS::AtMostOnce);
        let codes = s
            .subscribe_with(&[
                ("$share/g/devices/+/telemetry/up", qos0),
                (&marker_topic, qos0),
            ])
            .await;
        assert_eq!(codes, [0, 0], "{name}");
        members.push(s);
    }
    let mut d = p.connected(&dev, Connect::v5("d1")).await;
    let sent: Vec<String> = (0..10).map(|i| format!("m{i}")).collect();
    for m in &sent {
        d.publish_ok(&up("d1", "telemetry"), m.as_bytes()).await;
    }
    // Not shared: both members get it, after everything routed before it.
    d.publish_ok(&marker_topic, b"marker").await;

    let mut received = Vec::new();
    for s in &mut members {
        let mut mine = Vec::new();
        loop {
            let got = s.recv_publish().await;
            if got.topic_name == marker_topic {
                break;
            }
            mine.push(String::from_utf8(got.payload.to_vec()).expect("UTF-8 payload"));
        }
        assert!(
            !mine.is_empty(),
            "round-robin left a member without messages"
        );
        received.extend(mine);
    }
    received.sort();
    let mut expected = sent.clone();
    expected.sort();
    assert_eq!(
        received, expected,
        "each message exactly once across the group"
    );
}

/// 200 SUBSCRIBEs in one burst: each answered with its SUBACK (or the
/// client closed), and another client is served meanwhile.
#[tokio::test]
async fn subscribe_flood_is_answered_without_harming_others() {
    let p = Platform::start().await;
    let flooder = p.device("flooder").await;
    let calm = p.device("calm").await;
    let mut bystander = p.connected(&calm, Connect::v5("calm")).await;
    let mut f = p.connected(&flooder, Connect::v5("flooder")).await;

    let mut burst = Vec::new();
    let mut ids = Vec::new();
    for _ in 0..200 {
        let id = f.packet_id();
        ids.push(id);
        let s = mqtt5_protocol::packet::subscribe::SubscribePacket::new(id)
            .add_filter("devices/flooder/+/down", QoS::AtLeastOnce);
        burst.extend_from_slice(&encode(&Packet::Subscribe(s)));
    }
    f.send_raw(&burst).await;

    let flood = async {
        let mut acked = Vec::new();
        loop {
            if acked.len() == ids.len() {
                return (acked, false);
            }
            match f.next_event().await {
                Event::Closed(_) => return (acked, true),
                Event::Frame(frame) => match frame.decode(V5) {
                    Packet::SubAck(a) => {
                        assert_eq!(
                            a.reason_codes.iter().map(|c| *c as u8).collect::<Vec<_>>(),
                            [1]
                        );
                        acked.push(a.packet_id);
                    }
                    other => panic!("expected SUBACK, got {other:?}"),
                },
            }
        }
    };
    let ((mut acked, closed), ()) = tokio::join!(flood, bystander.ping());
    if closed {
        assert!(acked.len() < ids.len(), "closed after answering everything");
    } else {
        acked.sort_unstable();
        assert_eq!(acked, ids, "every SUBSCRIBE answered once");
        f.ping().await;
    }
    bystander.ping().await;
}

// ---------------------------------------------------------------------------
// Shutdown
// ---------------------------------------------------------------------------

/// STYLE "servers you can test": shutdown closes every session (MQTT 5:
/// DISCONNECT 0x8B "Server shutting down") and `run` returns.
#[tokio::test]
async fn shutdown_disconnects_every_client_and_returns() {
    let mut p = Platform::start().await;
    let d5 = p.device("d5").await;
    let d3 = p.device("d3").await;
    let mut c5 = p.connected(&d5, Connect::v5("d5")).await;
    let mut c3 = p.connected(&d3, Connect::v3("d3")).await;
    c5.ping().await;
    c3.ping().await;

    p.stop().await.expect("run() returns Ok");
    c5.expect_disconnect(0x8B).await;
    c3.expect_closed().await;
    for name in ["d5", "d3"] {
        assert_eq!(
            p.sink.disconnects(name),
            [DisconnectReason::ServerShutdown],
            "{name}: presence recorded before run() returned"
        );
    }
    assert_eq!(p.metrics().connections.load(Relaxed), 0);
    let refused = tokio::time::timeout(WAIT, p.tls(Some(&d5)))
        .await
        .expect("connect attempt finished");
    assert!(refused.is_err(), "the listener is closed after shutdown");
}

/// A will on the device's own uplink goes through the pipeline like any
/// other device message: stored when accepted, never routed when rejected.
#[tokio::test]
async fn will_on_the_device_uplink_is_offered_to_the_pipeline() {
    let p = Platform::start().await;
    let dev = p.device("willful").await;
    let svc = p.service("watcher").await;
    let mut s = p.connected(&svc, Connect::v5("watcher")).await;
    assert_eq!(s.subscribe("devices/+/state/up", 1).await, 1);

    let c = p
        .connected(
            &dev,
            Connect {
                will: Some(offline_will("willful")),
                ..Connect::v5("willful")
            },
        )
        .await;
    drop(c);
    let will = s.recv_publish().await;
    assert_eq!(will.payload.as_ref(), b"offline");
    assert!(
        p.sink
            .committed_payloads()
            .iter()
            .any(|b| b.as_ref() == b"offline"),
        "the pipeline stored the will before it was routed"
    );
    if let Some(id) = will.packet_id {
        s.send(&Packet::PubAck(PubAckPacket::new(id))).await;
    }

    // Rejected by the pipeline: not routed.
    p.sink.reject_payloads_starting_with(b"off");
    let c = p
        .connected(
            &dev,
            Connect {
                will: Some(offline_will("willful")),
                ..Connect::v5("willful")
            },
        )
        .await;
    drop(c);
    p.sink
        .wait_until("the rejected will", |log| !log.rejected.is_empty())
        .await;
    s.ping().await;
    s.expect_silence(std::time::Duration::from_millis(200))
        .await;
}
