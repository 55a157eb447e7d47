//! Tests of the codec: one per validation rule with hand-built packets,
//! framing, exact encodings, round trips and never-panic properties.
//!
//! The never-panic properties double as the bounded fuzz run of CI; set
//! `RAMPART_FUZZ_CASES` to run more cases (see `fuzz/README.md`).

use bytes::{Bytes, BytesMut};
use mqtt5_protocol::FixedHeader;
use proptest::prelude::*;

use super::*;

// ---------------------------------------------------------------------------
// Hand-built packets
// ---------------------------------------------------------------------------

/// A packet: first byte, remaining length, body.
fn frame(first: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![first];
    let mut len = body.len();
    loop {
        let mut byte = u8::try_from(len % 128).expect("below 128");
        len /= 128;
        if len > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if len == 0 {
            break;
        }
    }
    out.extend_from_slice(body);
    out
}

/// An MQTT UTF-8 string or binary field.
fn field(bytes: &[u8]) -> Vec<u8> {
    let mut out = u16::try_from(bytes.len())
        .expect("short field")
        .to_be_bytes()
        .to_vec();
    out.extend_from_slice(bytes);
    out
}

/// MQTT 5 properties: Property Length (one byte here) and the given bytes.
fn props(bytes: &[u8]) -> Vec<u8> {
    let mut out = vec![u8::try_from(bytes.len()).expect("short properties")];
    out.extend_from_slice(bytes);
    out
}

fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

/// A CONNECT with protocol name, level, flags, keep alive 60, MQTT 5
/// properties (ignored below level 5) and the payload after the client id
/// "dev-1".
fn connect_with(name: &str, level: u8, flags: u8, v5_props: &[u8], rest: &[u8]) -> Vec<u8> {
    let mut body = field(name.as_bytes());
    body.extend_from_slice(&[level, flags, 0x00, 0x3C]);
    if level == MQTT_5 {
        body.extend_from_slice(&props(v5_props));
    }
    body.extend_from_slice(&field(b"dev-1"));
    body.extend_from_slice(rest);
    frame(0x10, &body)
}

fn connect(level: u8) -> Vec<u8> {
    connect_with("MQTT", level, 0x02, &[], &[])
}

/// Feeds `bytes` to the decoder; a decoded packet must consume them all.
fn feed(decoder: &mut Decoder, bytes: &[u8]) -> Result<Option<Packet>, CodecError> {
    let mut buf = BytesMut::from(bytes);
    let result = decoder.decode(&mut buf);
    if let Ok(Some(_)) = &result {
        assert!(buf.is_empty(), "{} bytes left after a packet", buf.len());
    }
    result
}

fn decoded(decoder: &mut Decoder, bytes: &[u8]) -> Packet {
    match feed(decoder, bytes) {
        Ok(Some(packet)) => packet,
        other => panic!("expected a packet from {bytes:02x?}, got {other:?}"),
    }
}

fn refused(decoder: &mut Decoder, bytes: &[u8]) -> CodecError {
    match feed(decoder, bytes) {
        Err(e) => e,
        other => panic!("expected an error for {bytes:02x?}, got {other:?}"),
    }
}

const MAX_ALIAS: u16 = 10;

/// A decoder that has accepted a CONNECT of the given level.
fn connected(level: u8) -> Decoder {
    let mut decoder = Decoder::new(1 << 20, MAX_ALIAS);
    let packet = decoded(&mut decoder, &connect(level));
    assert!(matches!(packet, Packet::Connect(_)), "{packet:?}");
    decoder
}

/// Decodes after a CONNECT of `level`.
fn after_connect(level: u8, bytes: &[u8]) -> Result<Option<Packet>, CodecError> {
    feed(&mut connected(level), bytes)
}

fn refused_after_connect(level: u8, bytes: &[u8]) -> CodecError {
    refused(&mut connected(level), bytes)
}

fn assert_malformed(e: CodecError) {
    assert!(
        matches!(e, CodecError::Malformed(_)),
        "expected Malformed, got {e:?}"
    );
}

fn assert_protocol(e: CodecError) {
    assert!(
        matches!(e, CodecError::Protocol(_)),
        "expected Protocol, got {e:?}"
    );
}

/// A PUBLISH body: topic, packet identifier if QoS > 0, MQTT 5 properties
/// if `v5_props` is given, payload.
fn publish_body(
    topic: &str,
    packet_id: Option<u16>,
    v5_props: Option<&[u8]>,
    payload: &[u8],
) -> Vec<u8> {
    let mut body = field(topic.as_bytes());
    if let Some(id) = packet_id {
        body.extend_from_slice(&id.to_be_bytes());
    }
    if let Some(p) = v5_props {
        body.extend_from_slice(&props(p));
    }
    body.extend_from_slice(payload);
    body
}

// ---------------------------------------------------------------------------
// CONNECT and connection-level rules
// ---------------------------------------------------------------------------

#[test]
fn connect_v5_sets_version_and_decodes_fields() {
    let mut decoder = Decoder::new(1024, MAX_ALIAS);
    assert_eq!(decoder.version(), None);
    // Session Expiry Interval 300, Receive Maximum 20.
    let bytes = connect_with(
        "MQTT",
        MQTT_5,
        0x02,
        &[0x11, 0, 0, 0x01, 0x2C, 0x21, 0x00, 0x14],
        &[],
    );
    let Packet::Connect(c) = decoded(&mut decoder, &bytes) else {
        panic!("not a CONNECT");
    };
    assert_eq!(decoder.version(), Some(MQTT_5));
    assert_eq!(c.protocol_version, MQTT_5);
    assert_eq!(c.client_id, "dev-1");
    assert_eq!(c.keep_alive, 60);
    assert!(c.clean_start);
    assert_eq!(c.properties.get_session_expiry_interval(), Some(300));
    assert_eq!(c.properties.get_receive_maximum(), Some(20));
}

#[test]
fn connect_v4_sets_version() {
    let mut decoder = Decoder::new(1024, MAX_ALIAS);
    let Packet::Connect(c) = decoded(&mut decoder, &connect(MQTT_3_1_1)) else {
        panic!("not a CONNECT");
    };
    assert_eq!(decoder.version(), Some(MQTT_3_1_1));
    assert_eq!(c.client_id, "dev-1");
    assert!(c.properties.is_empty());
}

#[test]
fn connect_with_will_and_credentials_decodes() {
    // Will flag, will QoS 1, user name, password (MQTT 3.1.1 allows both).
    let rest = cat(&[
        &field(b"dev/1/will"),
        &field(b"gone"),
        &field(b"user"),
        &field(b"pw"),
    ]);
    let bytes = connect_with(
        "MQTT",
        MQTT_3_1_1,
        0x02 | 0x04 | 0x08 | 0x80 | 0x40,
        &[],
        &rest,
    );
    let Packet::Connect(c) = decoded(&mut Decoder::new(1024, 0), &bytes) else {
        panic!("not a CONNECT");
    };
    let will = c.will.as_ref().expect("will");
    assert_eq!(will.topic, "dev/1/will");
    assert_eq!(will.payload, b"gone");
    assert_eq!(will.qos, WireQoS::AtLeastOnce);
    assert_eq!(c.username.as_deref(), Some("user"));
    assert_eq!(c.password.as_deref(), Some(&b"pw"[..]));
}

#[test]
fn packet_before_connect_is_protocol_error() {
    for first in [
        frame(0xC0, &[]),                                  // PINGREQ
        frame(0x30, &publish_body("a", None, None, b"x")), // PUBLISH
        frame(0x82, &[0, 1, 0, 1, b'a', 0]),               // SUBSCRIBE
        frame(0xE0, &[]),                                  // DISCONNECT
    ] {
        let mut decoder = Decoder::new(1024, 0);
        assert_protocol(refused(&mut decoder, &first));
        assert_eq!(decoder.version(), None);
    }
}

#[test]
fn wrong_first_packet_is_refused_on_its_first_byte() {
    // Nothing but the type byte has arrived.
    assert_protocol(refused(&mut Decoder::new(1024, 0), &[0x30]));
}

#[test]
fn second_connect_is_protocol_error() {
    for level in [MQTT_3_1_1, MQTT_5] {
        assert_protocol(refused_after_connect(level, &connect(level)));
    }
}

#[test]
fn unsupported_protocol_levels() {
    for level in [0u8, 3, 6, 255] {
        let e = refused(
            &mut Decoder::new(1024, 0),
            &connect_with("MQTT", level, 0x02, &[], &[]),
        );
        assert!(
            matches!(e, CodecError::UnsupportedProtocolVersion(l) if l == level),
            "level {level}: {e:?}"
        );
    }
    // MQTT 3.1's protocol name.
    let e = refused(
        &mut Decoder::new(1024, 0),
        &connect_with("MQIsdp", 3, 0x02, &[], &[]),
    );
    assert!(
        matches!(e, CodecError::UnsupportedProtocolVersion(3)),
        "{e:?}"
    );
}

#[test]
fn wrong_protocol_name_is_protocol_error() {
    assert_protocol(refused(
        &mut Decoder::new(1024, 0),
        &connect_with("MQTX", MQTT_5, 0x02, &[], &[]),
    ));
}

#[test]
fn v5_password_without_user_name_is_refused_with_an_explanation() {
    let bytes = connect_with("MQTT", MQTT_5, 0x02 | 0x40, &[], &field(b"secret"));
    let mut decoder = Decoder::new(1024, 0);
    let e = refused(&mut decoder, &bytes);
    let CodecError::Protocol(msg) = &e else {
        panic!("expected Protocol, got {e:?}");
    };
    assert!(msg.contains("client certificate"), "{msg}");
    // The level is known, so the server can answer with an MQTT 5 CONNACK.
    assert_eq!(decoder.version(), Some(MQTT_5));
}

#[test]
fn v4_password_without_user_name_is_malformed() {
    // MQTT-3.1.2-22: forbidden in MQTT 3.1.1; the crate's check.
    let bytes = connect_with("MQTT", MQTT_3_1_1, 0x02 | 0x40, &[], &field(b"secret"));
    assert_malformed(refused(&mut Decoder::new(1024, 0), &bytes));
}

#[test]
fn connect_reserved_flag_is_malformed() {
    // Crate check (MQTT-3.1.2-3).
    let bytes = connect_with("MQTT", MQTT_5, 0x03, &[], &[]);
    assert_malformed(refused(&mut Decoder::new(1024, 0), &bytes));
}

#[test]
fn connect_will_qos_3_is_malformed() {
    // Crate check (MQTT-3.1.2-12).
    let rest = cat(&[&props(&[]), &field(b"w"), &field(b"x")]);
    let bytes = connect_with("MQTT", MQTT_5, 0x02 | 0x04 | 0x18, &[], &rest);
    assert_malformed(refused(&mut Decoder::new(1024, 0), &bytes));
}

#[test]
fn connect_will_topic_with_wildcard_is_protocol_error() {
    let rest = cat(&[&props(&[]), &field(b"dev/+/will"), &field(b"x")]);
    let bytes = connect_with("MQTT", MQTT_5, 0x02 | 0x04, &[], &rest);
    assert_protocol(refused(&mut Decoder::new(1024, 0), &bytes));
}

#[test]
fn v5_connect_receive_maximum_zero_is_protocol_error() {
    let bytes = connect_with("MQTT", MQTT_5, 0x02, &[0x21, 0x00, 0x00], &[]);
    assert_protocol(refused(&mut Decoder::new(1024, 0), &bytes));
}

#[test]
fn v5_connect_maximum_packet_size_zero_is_protocol_error() {
    let bytes = connect_with("MQTT", MQTT_5, 0x02, &[0x27, 0, 0, 0, 0], &[]);
    assert_protocol(refused(&mut Decoder::new(1024, 0), &bytes));
}

#[test]
fn v5_connect_request_problem_information_2_is_protocol_error() {
    let bytes = connect_with("MQTT", MQTT_5, 0x02, &[0x17, 0x02], &[]);
    assert_protocol(refused(&mut Decoder::new(1024, 0), &bytes));
}

#[test]
fn v5_connect_authentication_data_without_method_is_protocol_error() {
    let bytes = connect_with("MQTT", MQTT_5, 0x02, &[0x16, 0x00, 0x01, 0xAA], &[]);
    assert_protocol(refused(&mut Decoder::new(1024, 0), &bytes));
}

#[test]
fn property_not_valid_for_the_packet_is_malformed() {
    // Topic Alias (0x23) in a CONNECT.
    let bytes = connect_with("MQTT", MQTT_5, 0x02, &[0x23, 0x00, 0x01], &[]);
    assert_malformed(refused(&mut Decoder::new(1024, 0), &bytes));
    // Session Expiry Interval (0x11) in a PUBLISH.
    let body = publish_body("a/b", None, Some(&[0x11, 0, 0, 0, 1]), b"x");
    assert_malformed(refused_after_connect(MQTT_5, &frame(0x30, &body)));
}

#[test]
fn repeated_property_is_protocol_error() {
    // Message Expiry Interval twice: crate reports a duplicate.
    let body = publish_body(
        "a/b",
        None,
        Some(&[0x02, 0, 0, 0, 1, 0x02, 0, 0, 0, 2]),
        b"x",
    );
    assert_protocol(refused_after_connect(MQTT_5, &frame(0x30, &body)));
}

#[test]
fn trailing_bytes_inside_a_packet_are_malformed() {
    // CONNECT with one extra byte after the client id.
    let bytes = connect_with("MQTT", MQTT_5, 0x02, &[], &[0x00]);
    assert_malformed(refused(&mut Decoder::new(1024, 0), &bytes));
    // PINGREQ with a body.
    assert_malformed(refused_after_connect(MQTT_5, &frame(0xC0, &[0x00])));
    // PUBACK v5: id, reason, empty properties, then a stray byte.
    assert_malformed(refused_after_connect(
        MQTT_5,
        &frame(0x40, &[0, 1, 0x10, 0, 0xFF]),
    ));
    // UNSUBSCRIBE v5 with a dangling length byte after its filter.
    let body = cat(&[&[0, 1], &props(&[]), &field(b"a"), &[0x00]]);
    assert_malformed(refused_after_connect(MQTT_5, &frame(0xA2, &body)));
}

#[test]
fn server_packets_from_a_client_are_protocol_errors() {
    for bytes in [
        frame(0x20, &[0, 0, 0]),    // CONNACK
        frame(0x90, &[0, 1, 0, 0]), // SUBACK
        frame(0xB0, &[0, 1, 0, 0]), // UNSUBACK
        frame(0xD0, &[]),           // PINGRESP
    ] {
        assert_protocol(refused_after_connect(MQTT_5, &bytes));
    }
}

#[test]
fn auth_is_reserved_in_v4() {
    assert_malformed(refused_after_connect(MQTT_3_1_1, &frame(0xF0, &[])));
    // ...and decodes in MQTT 5.
    assert!(matches!(
        after_connect(MQTT_5, &frame(0xF0, &[])),
        Ok(Some(Packet::Auth(_)))
    ));
}

#[test]
fn reserved_fixed_header_flags_are_malformed() {
    // SUBSCRIBE must have flags 0b0010; PUBREL too; PINGREQ 0.
    assert_malformed(refused_after_connect(
        MQTT_5,
        &frame(0x80, &[0, 1, 0, 0, 1, b'a', 0]),
    ));
    assert_malformed(refused_after_connect(MQTT_5, &frame(0x60, &[0, 1])));
    assert_malformed(refused_after_connect(MQTT_5, &frame(0xC1, &[])));
    // And a CONNECT with flags.
    let mut bytes = connect(MQTT_5);
    bytes[0] = 0x11;
    assert_malformed(refused(&mut Decoder::new(1024, 0), &bytes));
}

#[test]
fn reserved_packet_type_zero_is_malformed() {
    assert_malformed(refused(&mut Decoder::new(1024, 0), &[0x00, 0x00]));
}

#[test]
fn v4_ack_with_extra_bytes_is_malformed() {
    assert_malformed(refused_after_connect(MQTT_3_1_1, &frame(0x40, &[0, 1, 0])));
    assert_malformed(refused_after_connect(MQTT_3_1_1, &frame(0xE0, &[0])));
}

#[test]
fn pingreq_and_disconnect_decode() {
    for level in [MQTT_3_1_1, MQTT_5] {
        assert!(matches!(
            after_connect(level, &[0xC0, 0x00]),
            Ok(Some(Packet::PingReq))
        ));
        assert!(matches!(
            after_connect(level, &[0xE0, 0x00]),
            Ok(Some(Packet::Disconnect(d))) if d.reason_code == ReasonCode::Success
        ));
    }
    // MQTT 5 DISCONNECT with Session Expiry Interval 0.
    let bytes = frame(0xE0, &cat(&[&[0x00], &props(&[0x11, 0, 0, 0, 0])]));
    assert!(matches!(
        after_connect(MQTT_5, &bytes),
        Ok(Some(Packet::Disconnect(d))) if d.properties.get_session_expiry_interval() == Some(0)
    ));
}

// ---------------------------------------------------------------------------
// PUBLISH
// ---------------------------------------------------------------------------

#[test]
fn publish_decodes_in_both_versions() {
    let v4 = frame(0x33, &publish_body("dev/1/t", Some(7), None, b"hello"));
    let Ok(Some(Packet::Publish(p))) = after_connect(MQTT_3_1_1, &v4) else {
        panic!("v4 PUBLISH");
    };
    assert_eq!(
        (p.topic_name.as_str(), p.packet_id, p.qos, p.retain),
        ("dev/1/t", Some(7), WireQoS::AtLeastOnce, true)
    );
    assert_eq!(&p.payload[..], b"hello");

    // MQTT 5, QoS 2, Message Expiry Interval 9, User Property (k, v).
    let p5 = [&[0x02u8, 0, 0, 0, 9, 0x26][..], &field(b"k"), &field(b"v")].concat();
    let v5 = frame(0x34, &publish_body("dev/1/t", Some(8), Some(&p5), b"x"));
    let Ok(Some(Packet::Publish(p))) = after_connect(MQTT_5, &v5) else {
        panic!("v5 PUBLISH");
    };
    assert_eq!(p.qos, WireQoS::ExactlyOnce);
    assert_eq!(p.message_expiry_interval(), Some(9));
    assert_eq!(p.properties.get_user_property_value("k"), Some("v"));
}

#[test]
fn publish_topic_with_wildcards_is_protocol_error() {
    for topic in ["a/+/b", "a/#", "#", "+"] {
        for level in [MQTT_3_1_1, MQTT_5] {
            let v5_props: Option<&[u8]> = (level == MQTT_5).then_some(&[]);
            let bytes = frame(0x30, &publish_body(topic, None, v5_props, b"x"));
            assert_protocol(refused_after_connect(level, &bytes));
        }
    }
}

#[test]
fn publish_empty_topic_without_alias_is_protocol_error() {
    assert_protocol(refused_after_connect(
        MQTT_3_1_1,
        &frame(0x30, &publish_body("", None, None, b"x")),
    ));
    assert_protocol(refused_after_connect(
        MQTT_5,
        &frame(0x30, &publish_body("", None, Some(&[]), b"x")),
    ));
}

#[test]
fn publish_empty_topic_with_alias_is_accepted_unresolved() {
    let bytes = frame(
        0x30,
        &publish_body("", None, Some(&[0x23, 0x00, 0x03]), b"x"),
    );
    let Ok(Some(Packet::Publish(p))) = after_connect(MQTT_5, &bytes) else {
        panic!("PUBLISH with alias");
    };
    // Resolving the alias is the session's job.
    assert_eq!(p.topic_name, "");
    assert_eq!(p.topic_alias(), Some(3));
}

#[test]
fn publish_topic_alias_out_of_range_is_topic_alias_invalid() {
    for alias in [0u16, MAX_ALIAS + 1, u16::MAX] {
        let [hi, lo] = alias.to_be_bytes();
        let bytes = frame(0x30, &publish_body("a", None, Some(&[0x23, hi, lo]), b"x"));
        let e = refused_after_connect(MQTT_5, &bytes);
        assert!(
            matches!(e, CodecError::TopicAliasInvalid(_)),
            "alias {alias}: {e:?}"
        );
    }
    // With a maximum of 0, every alias is refused.
    let mut decoder = Decoder::new(1024, 0);
    decoded(&mut decoder, &connect(MQTT_5));
    let bytes = frame(0x30, &publish_body("a", None, Some(&[0x23, 0, 1]), b"x"));
    assert!(matches!(
        refused(&mut decoder, &bytes),
        CodecError::TopicAliasInvalid(_)
    ));
    // MAX_ALIAS itself is fine.
    let [hi, lo] = MAX_ALIAS.to_be_bytes();
    let bytes = frame(0x30, &publish_body("a", None, Some(&[0x23, hi, lo]), b"x"));
    assert!(matches!(
        after_connect(MQTT_5, &bytes),
        Ok(Some(Packet::Publish(_)))
    ));
}

#[test]
fn client_publish_with_subscription_identifier_is_protocol_error() {
    let bytes = frame(0x30, &publish_body("a", None, Some(&[0x0B, 0x05]), b"x"));
    assert_protocol(refused_after_connect(MQTT_5, &bytes));
}

#[test]
fn publish_qos1_with_packet_id_zero_is_protocol_error() {
    for level in [MQTT_3_1_1, MQTT_5] {
        let v5_props: Option<&[u8]> = (level == MQTT_5).then_some(&[]);
        let bytes = frame(0x32, &publish_body("a", Some(0), v5_props, b"x"));
        assert_protocol(refused_after_connect(level, &bytes));
    }
}

#[test]
fn publish_qos3_and_dup_with_qos0_are_malformed() {
    // Crate checks (MQTT-3.3.1-4, MQTT-3.3.1-2).
    let body = publish_body("a", Some(1), Some(&[]), b"x");
    assert_malformed(refused_after_connect(MQTT_5, &frame(0x36, &body)));
    let body = publish_body("a", None, Some(&[]), b"x");
    assert_malformed(refused_after_connect(MQTT_5, &frame(0x38, &body)));
}

#[test]
fn publish_payload_format_indicator_2_is_protocol_error() {
    let bytes = frame(0x30, &publish_body("a", None, Some(&[0x01, 0x02]), b"x"));
    assert_protocol(refused_after_connect(MQTT_5, &bytes));
}

#[test]
fn publish_response_topic_with_wildcard_is_protocol_error() {
    let p = cat(&[&[0x08], &field(b"reply/#")]);
    let bytes = frame(0x30, &publish_body("a", None, Some(&p), b"x"));
    assert_protocol(refused_after_connect(MQTT_5, &bytes));
}

#[test]
fn publish_topic_with_nul_or_bad_utf8_is_malformed() {
    // Crate checks (MQTT-1.5.4-1/2).
    let body = cat(&[&field(b"a\0b"), &props(&[]), b"x"]);
    assert_malformed(refused_after_connect(MQTT_5, &frame(0x30, &body)));
    let body = cat(&[&field(&[0xC3, 0x28]), &props(&[]), b"x"]);
    assert_malformed(refused_after_connect(MQTT_5, &frame(0x30, &body)));
}

// ---------------------------------------------------------------------------
// Acknowledgements
// ---------------------------------------------------------------------------

#[test]
fn acks_with_packet_id_zero_are_protocol_errors() {
    for first in [0x40u8, 0x50, 0x62, 0x70] {
        for level in [MQTT_3_1_1, MQTT_5] {
            assert_protocol(refused_after_connect(level, &frame(first, &[0, 0])));
        }
    }
}

#[test]
fn acks_decode() {
    let Ok(Some(Packet::PubRel(p))) = after_connect(MQTT_3_1_1, &frame(0x62, &[0x12, 0x34])) else {
        panic!("PUBREL");
    };
    assert_eq!(p.packet_id, 0x1234);
    // MQTT 5 PUBACK "No matching subscribers" with a reason string.
    let body = cat(&[&[0, 9, 0x10], &props(&cat(&[&[0x1F], &field(b"why")]))]);
    let Ok(Some(Packet::PubAck(p))) = after_connect(MQTT_5, &frame(0x40, &body)) else {
        panic!("PUBACK");
    };
    assert_eq!(p.reason_code, ReasonCode::NoMatchingSubscribers);
    assert!(p.properties.contains(PropertyId::ReasonString));
}

#[test]
fn ack_with_invalid_reason_code_is_malformed() {
    // Crate check: 0x92 is not a PUBACK reason code.
    assert_malformed(refused_after_connect(MQTT_5, &frame(0x40, &[0, 1, 0x92])));
}

// ---------------------------------------------------------------------------
// SUBSCRIBE and UNSUBSCRIBE
// ---------------------------------------------------------------------------

fn subscribe_v4(packet_id: u16, entries: &[(&str, u8)]) -> Vec<u8> {
    let mut body = packet_id.to_be_bytes().to_vec();
    for (filter, options) in entries {
        body.extend_from_slice(&field(filter.as_bytes()));
        body.push(*options);
    }
    frame(0x82, &body)
}

fn subscribe_v5(packet_id: u16, p: &[u8], entries: &[(&str, u8)]) -> Vec<u8> {
    let mut body = packet_id.to_be_bytes().to_vec();
    body.extend_from_slice(&props(p));
    for (filter, options) in entries {
        body.extend_from_slice(&field(filter.as_bytes()));
        body.push(*options);
    }
    frame(0x82, &body)
}

#[test]
fn subscribe_decodes() {
    let Ok(Some(Packet::Subscribe(s))) =
        after_connect(MQTT_3_1_1, &subscribe_v4(5, &[("a/+", 1), ("b/#", 2)]))
    else {
        panic!("SUBSCRIBE");
    };
    assert_eq!(s.packet_id, 5);
    assert_eq!(s.filters.len(), 2);
    assert_eq!(s.filters[1].filter, "b/#");
    assert_eq!(s.filters[1].options.qos, WireQoS::ExactlyOnce);

    // MQTT 5 with Subscription Identifier 300 and No Local.
    let bytes = subscribe_v5(6, &[0x0B, 0xAC, 0x02], &[("a", 0x05)]);
    let Ok(Some(Packet::Subscribe(s))) = after_connect(MQTT_5, &bytes) else {
        panic!("SUBSCRIBE v5");
    };
    assert_eq!(s.properties.get_subscription_identifier(), Some(300));
    assert!(s.filters[0].options.no_local);
}

#[test]
fn subscribe_without_filters_is_protocol_error() {
    assert_protocol(refused_after_connect(MQTT_3_1_1, &subscribe_v4(1, &[])));
    assert_protocol(refused_after_connect(MQTT_5, &subscribe_v5(1, &[], &[])));
}

#[test]
fn subscribe_with_packet_id_zero_is_protocol_error() {
    assert_protocol(refused_after_connect(
        MQTT_3_1_1,
        &subscribe_v4(0, &[("a", 0)]),
    ));
    assert_protocol(refused_after_connect(
        MQTT_5,
        &subscribe_v5(0, &[], &[("a", 0)]),
    ));
}

#[test]
fn v4_subscribe_options_reserved_bits_and_qos3_are_malformed() {
    assert_malformed(refused_after_connect(
        MQTT_3_1_1,
        &subscribe_v4(1, &[("a", 0x04)]),
    ));
    assert_malformed(refused_after_connect(
        MQTT_3_1_1,
        &subscribe_v4(1, &[("a", 0x80)]),
    ));
    assert_malformed(refused_after_connect(
        MQTT_3_1_1,
        &subscribe_v4(1, &[("a", 0), ("b", 0x03)]),
    ));
}

#[test]
fn v5_subscribe_options_reserved_bits_and_qos3_are_malformed() {
    // Crate checks (MQTT-3.8.3-5).
    assert_malformed(refused_after_connect(
        MQTT_5,
        &subscribe_v5(1, &[], &[("a", 0xC0)]),
    ));
    assert_malformed(refused_after_connect(
        MQTT_5,
        &subscribe_v5(1, &[], &[("a", 0x03)]),
    ));
    assert_malformed(refused_after_connect(
        MQTT_5,
        &subscribe_v5(1, &[], &[("a", 0x30)]),
    ));
}

#[test]
fn v5_subscription_identifier_zero_or_repeated_is_protocol_error() {
    assert_protocol(refused_after_connect(
        MQTT_5,
        &subscribe_v5(1, &[0x0B, 0x00], &[("a", 0)]),
    ));
    assert_protocol(refused_after_connect(
        MQTT_5,
        &subscribe_v5(1, &[0x0B, 0x01, 0x0B, 0x02], &[("a", 0)]),
    ));
}

#[test]
fn v5_no_local_on_shared_subscription_is_protocol_error() {
    assert_protocol(refused_after_connect(
        MQTT_5,
        &subscribe_v5(1, &[], &[("$share/g/a", 0x04)]),
    ));
}

#[test]
fn unsubscribe_rules() {
    let v4 = |id: u16, filters: &[&str]| {
        let mut body = id.to_be_bytes().to_vec();
        for f in filters {
            body.extend_from_slice(&field(f.as_bytes()));
        }
        frame(0xA2, &body)
    };
    let Ok(Some(Packet::Unsubscribe(u))) = after_connect(MQTT_3_1_1, &v4(3, &["a", "b/#"])) else {
        panic!("UNSUBSCRIBE");
    };
    assert_eq!((u.packet_id, u.filters.len()), (3, 2));
    assert_protocol(refused_after_connect(MQTT_3_1_1, &v4(3, &[])));
    assert_protocol(refused_after_connect(MQTT_3_1_1, &v4(0, &["a"])));
    // MQTT 5: empty payload after the properties.
    assert_protocol(refused_after_connect(MQTT_5, &frame(0xA2, &[0, 1, 0])));
}

// ---------------------------------------------------------------------------
// Framing
// ---------------------------------------------------------------------------

#[test]
fn split_packet_decodes_only_when_complete() {
    let body = publish_body("dev/1/t", Some(3), Some(&[0x02, 0, 0, 0, 9]), &[7u8; 200]);
    let bytes = frame(0x32, &body);
    assert!(bytes.len() > 130, "remaining length takes two bytes");
    for split in 0..bytes.len() {
        let mut decoder = connected(MQTT_5);
        let mut buf = BytesMut::from(&bytes[..split]);
        assert!(
            matches!(decoder.decode(&mut buf), Ok(None)),
            "decoded from {split} of {} bytes",
            bytes.len()
        );
        assert_eq!(
            buf.len(),
            split,
            "nothing is consumed before the packet is complete"
        );
        buf.extend_from_slice(&bytes[split..]);
        let Ok(Some(Packet::Publish(p))) = decoder.decode(&mut buf) else {
            panic!("split at {split}");
        };
        assert_eq!(p.payload.len(), 200);
        assert!(buf.is_empty());
    }
}

#[test]
fn two_packets_in_one_buffer_decode_in_order() {
    let mut decoder = Decoder::new(1024, 0);
    let mut buf = BytesMut::new();
    buf.extend_from_slice(&connect(MQTT_3_1_1));
    buf.extend_from_slice(&[0xC0, 0x00]);
    buf.extend_from_slice(&frame(0x30, &publish_body("a", None, None, b"p")));
    buf.extend_from_slice(&[0xE0]); // first byte of a DISCONNECT
    assert!(matches!(
        decoder.decode(&mut buf),
        Ok(Some(Packet::Connect(_)))
    ));
    assert!(matches!(
        decoder.decode(&mut buf),
        Ok(Some(Packet::PingReq))
    ));
    assert!(matches!(
        decoder.decode(&mut buf),
        Ok(Some(Packet::Publish(_)))
    ));
    assert!(matches!(decoder.decode(&mut buf), Ok(None)));
    assert_eq!(&buf[..], &[0xE0]);
}

#[test]
fn five_byte_remaining_length_is_malformed() {
    let mut decoder = connected(MQTT_5);
    let e = refused(&mut decoder, &[0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01]);
    assert_malformed(e);
    // Known as soon as the fifth length byte is there...
    let e = refused(&mut connected(MQTT_5), &[0x30, 0x80, 0x80, 0x80, 0x80]);
    assert_malformed(e);
    // ...and not before.
    assert!(matches!(
        after_connect(MQTT_5, &[0x30, 0x80, 0x80, 0x80]),
        Ok(None)
    ));
}

#[test]
fn non_minimal_remaining_length_is_malformed() {
    // PINGREQ with remaining length 0 written as two bytes.
    assert_malformed(refused_after_connect(MQTT_5, &[0xC0, 0x80, 0x00]));
}

#[test]
fn declared_length_over_the_maximum_is_refused_before_the_body() {
    let mut decoder = Decoder::new(100, 0);
    decoded(&mut decoder, &connect(MQTT_5));
    // Remaining length 98 + 2 header bytes = 100: allowed, waits for the body.
    assert!(matches!(feed(&mut decoder, &[0x30, 98]), Ok(None)));
    // 99 + 2 = 101: refused with only the header in the buffer.
    let e = refused(&mut decoder, &[0x30, 99]);
    assert!(
        matches!(
            e,
            CodecError::PacketTooLarge {
                size: 101,
                max: 100
            }
        ),
        "{e:?}"
    );
    // The largest length MQTT can declare.
    let e = refused(&mut decoder, &[0x30, 0xFF, 0xFF, 0xFF, 0x7F]);
    assert!(
        matches!(
            e,
            CodecError::PacketTooLarge {
                size: 268_435_460,
                max: 100
            }
        ),
        "{e:?}"
    );
}

#[test]
fn oversized_connect_is_refused_too() {
    let bytes = connect(MQTT_5);
    let size = bytes.len();
    let max = u32::try_from(size - 1).expect("small");
    let e = refused(&mut Decoder::new(max, 0), &bytes);
    assert!(
        matches!(e, CodecError::PacketTooLarge { size: s, max: m } if s == size && m == max),
        "{e:?}"
    );
    assert!(matches!(
        feed(&mut Decoder::new(max + 1, 0), &bytes),
        Ok(Some(Packet::Connect(_)))
    ));
}

#[test]
fn publish_payload_shares_the_read_buffer() {
    let mut decoder = connected(MQTT_5);
    let mut buf = BytesMut::from(&frame(0x30, &publish_body("a", None, Some(&[]), &[1u8; 64]))[..]);
    let start = buf.as_ptr() as usize;
    let Ok(Some(Packet::Publish(p))) = decoder.decode(&mut buf) else {
        panic!("PUBLISH");
    };
    let at = p.payload.as_ptr() as usize;
    assert!(at > start && at < start + 80, "payload was copied");
}

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------

#[test]
fn errors_map_to_reason_codes_and_labels() {
    let cases = [
        (CodecError::Malformed(String::new()), 0x81, "malformed"),
        (CodecError::Protocol(String::new()), 0x82, "protocol_error"),
        (
            CodecError::UnsupportedProtocolVersion(3),
            0x84,
            "unsupported_protocol_version",
        ),
        (
            CodecError::TopicAliasInvalid(String::new()),
            0x94,
            "topic_alias_invalid",
        ),
        (
            CodecError::PacketTooLarge { size: 2, max: 1 },
            0x95,
            "packet_too_large",
        ),
    ];
    for (e, code, label) in cases {
        assert_eq!((e.reason_code(), e.label()), (code, label), "{e}");
    }
    assert_eq!(
        CodecError::PacketTooLarge {
            size: 101,
            max: 100
        }
        .to_string(),
        "packet of 101 bytes is larger than the maximum packet size of 100 bytes"
    );
}

// ---------------------------------------------------------------------------
// Encoding: exact bytes
// ---------------------------------------------------------------------------

fn encoded(packet: &Packet, version: u8) -> Vec<u8> {
    let mut out = BytesMut::new();
    encode(packet, version, None, &mut out).expect("encodes");
    out.to_vec()
}

fn encode_error(packet: &Packet, version: u8, max: Option<u32>) -> CodecError {
    let mut out = BytesMut::from(&b"kept"[..]);
    let e = encode(packet, version, max, &mut out).expect_err("refused");
    assert_eq!(&out[..], b"kept", "nothing written on error");
    e
}

fn suback(codes: Vec<SubAckReasonCode>, properties: Properties) -> Packet {
    Packet::SubAck(SubAckPacket {
        packet_id: 1,
        reason_codes: codes,
        properties,
        protocol_version: MQTT_5,
    })
}

fn reason_string(text: &str) -> Properties {
    let mut p = Properties::new();
    p.set_reason_string(text.to_owned());
    p
}

#[test]
fn v4_suback_is_exact() {
    let packet = suback(
        vec![SubAckReasonCode::GrantedQoS0],
        reason_string("dropped in 3.1.1"),
    );
    assert_eq!(encoded(&packet, MQTT_3_1_1), [0x90, 0x03, 0x00, 0x01, 0x00]);
    // MQTT 5-only failure codes become 0x80.
    let packet = suback(
        vec![
            SubAckReasonCode::GrantedQoS2,
            SubAckReasonCode::NotAuthorized,
        ],
        Properties::new(),
    );
    assert_eq!(
        encoded(&packet, MQTT_3_1_1),
        [0x90, 0x04, 0x00, 0x01, 0x02, 0x80]
    );
}

#[test]
fn v5_suback_is_exact() {
    let packet = suback(vec![SubAckReasonCode::NotAuthorized], reason_string("no"));
    assert_eq!(
        encoded(&packet, MQTT_5),
        [
            0x90, 0x09, 0x00, 0x01, 0x05, 0x1F, 0x00, 0x02, b'n', b'o', 0x87
        ]
    );
}

#[test]
fn empty_suback_is_refused() {
    assert_protocol(encode_error(
        &suback(vec![], Properties::new()),
        MQTT_5,
        None,
    ));
}

#[test]
fn v4_acks_are_exact_and_never_carry_reason_codes() {
    let mut puback = PubAckPacket::new(7);
    puback.properties = reason_string("not in 3.1.1");
    assert_eq!(
        encoded(&Packet::PubAck(puback), MQTT_3_1_1),
        [0x40, 0x02, 0x00, 0x07]
    );
    assert_eq!(
        encoded(&Packet::PubRec(PubRecPacket::new(8)), MQTT_3_1_1),
        [0x50, 0x02, 0x00, 0x08]
    );
    assert_eq!(
        encoded(&Packet::PubRel(PubRelPacket::new(9)), MQTT_3_1_1),
        [0x62, 0x02, 0x00, 0x09]
    );
    assert_eq!(
        encoded(&Packet::PubComp(PubCompPacket::new(10)), MQTT_3_1_1),
        [0x70, 0x02, 0x00, 0x0A]
    );
    // A refusal cannot be said in 3.1.1: the caller closes instead.
    let refusal = PubAckPacket::new_with_reason(7, ReasonCode::NotAuthorized);
    assert_protocol(encode_error(&Packet::PubAck(refusal), MQTT_3_1_1, None));
}

#[test]
fn v5_acks_use_the_short_forms() {
    assert_eq!(
        encoded(&Packet::PubAck(PubAckPacket::new(7)), MQTT_5),
        [0x40, 0x02, 0x00, 0x07]
    );
    let no_subscribers = PubAckPacket::new_with_reason(7, ReasonCode::NoMatchingSubscribers);
    assert_eq!(
        encoded(&Packet::PubAck(no_subscribers), MQTT_5),
        [0x40, 0x03, 0x00, 0x07, 0x10]
    );
    let mut with_reason = PubAckPacket::new(7);
    with_reason.properties = reason_string("ok");
    assert_eq!(
        encoded(&Packet::PubAck(with_reason), MQTT_5),
        [
            0x40, 0x09, 0x00, 0x07, 0x00, 0x05, 0x1F, 0x00, 0x02, b'o', b'k'
        ]
    );
    let not_found = PubCompPacket::new_with_reason(3, ReasonCode::PacketIdentifierNotFound);
    assert_eq!(
        encoded(&Packet::PubComp(not_found), MQTT_5),
        [0x70, 0x03, 0x00, 0x03, 0x92]
    );
}

#[test]
fn ack_reason_codes_are_checked_per_packet() {
    let wrong = PubRelPacket::new_with_reason(3, ReasonCode::QuotaExceeded);
    assert_protocol(encode_error(&Packet::PubRel(wrong), MQTT_5, None));
    assert_protocol(encode_error(
        &Packet::PubAck(PubAckPacket::new(0)),
        MQTT_5,
        None,
    ));
}

#[test]
fn connack_is_exact() {
    let ok = ConnAckPacket::new(true, ReasonCode::Success);
    assert_eq!(
        encoded(&Packet::ConnAck(ok.clone()), MQTT_3_1_1),
        [0x20, 0x02, 0x01, 0x00]
    );
    assert_eq!(
        encoded(&Packet::ConnAck(ok), MQTT_5),
        [0x20, 0x03, 0x01, 0x00, 0x00]
    );
    // Session Present is forced to 0 on refusal (MQTT-3.2.2-6).
    let refused = ConnAckPacket::new(true, ReasonCode::UnsupportedProtocolVersion);
    assert_eq!(
        encoded(&Packet::ConnAck(refused.clone()), MQTT_3_1_1),
        [0x20, 0x02, 0x00, 0x01]
    );
    assert_eq!(
        encoded(&Packet::ConnAck(refused), MQTT_5),
        [0x20, 0x03, 0x00, 0x84, 0x00]
    );
    let p = ConnAckPacket::new(false, ReasonCode::Success).with_topic_alias_maximum(10);
    assert_eq!(
        encoded(&Packet::ConnAck(p), MQTT_5),
        [0x20, 0x06, 0x00, 0x00, 0x03, 0x22, 0x00, 0x0A]
    );
}

#[test]
fn connack_without_a_v4_return_code_is_refused() {
    let malformed = ConnAckPacket::new(false, ReasonCode::MalformedPacket);
    assert_protocol(encode_error(
        &Packet::ConnAck(malformed.clone()),
        MQTT_3_1_1,
        None,
    ));
    assert_eq!(
        encoded(&Packet::ConnAck(malformed), MQTT_5),
        [0x20, 0x03, 0x00, 0x81, 0x00]
    );
    let not_connack = ConnAckPacket::new(false, ReasonCode::NoMatchingSubscribers);
    assert_protocol(encode_error(&Packet::ConnAck(not_connack), MQTT_5, None));
}

#[test]
fn disconnect_and_auth_are_mqtt5_only() {
    let normal = Packet::Disconnect(DisconnectPacket::normal());
    assert_eq!(encoded(&normal, MQTT_5), [0xE0, 0x00]);
    assert_protocol(encode_error(&normal, MQTT_3_1_1, None));
    let taken_over = Packet::Disconnect(DisconnectPacket::new(ReasonCode::SessionTakenOver));
    assert_eq!(encoded(&taken_over, MQTT_5), [0xE0, 0x01, 0x8E]);
    let with_will =
        Packet::Disconnect(DisconnectPacket::new(ReasonCode::DisconnectWithWillMessage));
    assert_protocol(encode_error(&with_will, MQTT_5, None));
    let auth = Packet::Auth(AuthPacket::new(ReasonCode::Success));
    assert_eq!(encoded(&auth, MQTT_5), [0xF0, 0x00]);
    assert_protocol(encode_error(&auth, MQTT_3_1_1, None));
}

#[test]
fn pingresp_and_unsuback_are_exact() {
    assert_eq!(encoded(&Packet::PingResp, MQTT_3_1_1), [0xD0, 0x00]);
    assert_eq!(encoded(&Packet::PingResp, MQTT_5), [0xD0, 0x00]);
    let u = UnsubAckPacket::new(4).add_reason_code(UnsubAckReasonCode::NoSubscriptionExisted);
    assert_eq!(
        encoded(&Packet::UnsubAck(u.clone()), MQTT_3_1_1),
        [0xB0, 0x02, 0x00, 0x04]
    );
    assert_eq!(
        encoded(&Packet::UnsubAck(u), MQTT_5),
        [0xB0, 0x04, 0x00, 0x04, 0x00, 0x11]
    );
}

#[test]
fn client_packets_and_unknown_versions_are_refused() {
    assert_protocol(encode_error(&Packet::PingReq, MQTT_5, None));
    let sub = Packet::Subscribe(SubscribePacket::new(1).add_filter("a", WireQoS::AtMostOnce));
    assert_protocol(encode_error(&sub, MQTT_5, None));
    assert!(matches!(
        encode_error(&Packet::PingResp, 3, None),
        CodecError::UnsupportedProtocolVersion(3)
    ));
}

fn publish(
    topic: &str,
    qos: WireQoS,
    packet_id: Option<u16>,
    payload: &'static [u8],
) -> PublishPacket {
    let mut p = PublishPacket::new(topic, Bytes::from_static(payload), qos);
    p.packet_id = packet_id;
    p
}

#[test]
fn publish_is_exact() {
    let mut p = publish("a/b", WireQoS::AtLeastOnce, Some(5), b"hi");
    p.retain = true;
    p.dup = true;
    p.properties.set_message_expiry_interval(60);
    let packet = Packet::Publish(p);
    assert_eq!(
        encoded(&packet, MQTT_3_1_1),
        [
            0x3B, 0x09, 0x00, 0x03, b'a', b'/', b'b', 0x00, 0x05, b'h', b'i'
        ]
    );
    assert_eq!(
        encoded(&packet, MQTT_5),
        [
            0x3B, 0x0F, 0x00, 0x03, b'a', b'/', b'b', 0x00, 0x05, 0x05, 0x02, 0x00, 0x00, 0x00,
            0x3C, b'h', b'i'
        ]
    );
    // QoS 0: no packet identifier, DUP cleared (MQTT-3.3.1-2).
    let mut p = publish("t", WireQoS::AtMostOnce, Some(9), b"");
    p.dup = true;
    assert_eq!(
        encoded(&Packet::Publish(p), MQTT_3_1_1),
        [0x30, 0x03, 0x00, 0x01, b't']
    );
}

#[test]
fn publish_encoding_refuses_what_a_client_would_reject() {
    let no_id = Packet::Publish(publish("t", WireQoS::ExactlyOnce, None, b""));
    assert_protocol(encode_error(&no_id, MQTT_5, None));
    let zero_id = Packet::Publish(publish("t", WireQoS::AtLeastOnce, Some(0), b""));
    assert_protocol(encode_error(&zero_id, MQTT_5, None));
    let empty = Packet::Publish(publish("", WireQoS::AtMostOnce, None, b""));
    assert_protocol(encode_error(&empty, MQTT_5, None));
    let nul = Packet::Publish(publish("a\0b", WireQoS::AtMostOnce, None, b""));
    assert_malformed(encode_error(&nul, MQTT_3_1_1, None));
    let long = Packet::Publish(PublishPacket::new(
        "x".repeat(70_000),
        Bytes::new(),
        WireQoS::AtMostOnce,
    ));
    assert_malformed(encode_error(&long, MQTT_5, None));
    // Alias only: MQTT 5 fine, 3.1.1 impossible.
    let mut alias_only = publish("", WireQoS::AtMostOnce, None, b"x");
    alias_only.properties.set_topic_alias(2);
    let alias_only = Packet::Publish(alias_only);
    assert_eq!(
        encoded(&alias_only, MQTT_5),
        [0x30, 0x07, 0x00, 0x00, 0x03, 0x23, 0x00, 0x02, b'x']
    );
    assert_protocol(encode_error(&alias_only, MQTT_3_1_1, None));
}

#[test]
fn property_set_twice_is_refused_on_encode() {
    // The forwarding mistake: the publisher's alias is still there.
    let mut p = publish("t", WireQoS::AtMostOnce, None, b"");
    p.properties.set_topic_alias(1);
    p.properties.set_topic_alias(2);
    assert_protocol(encode_error(&Packet::Publish(p.clone()), MQTT_5, None));
    p.properties.remove_topic_alias();
    p.properties.set_topic_alias(2);
    assert!(encode(&Packet::Publish(p), MQTT_5, None, &mut BytesMut::new()).is_ok());
}

#[test]
fn encode_appends_to_out() {
    let mut out = BytesMut::from(&b"\xD0\x00"[..]);
    encode(&Packet::PingResp, MQTT_5, None, &mut out).expect("encodes");
    assert_eq!(&out[..], [0xD0, 0x00, 0xD0, 0x00]);
}

fn delivery(qos: WireQoS, packet_id: Option<u16>) -> PublishDelivery<'static> {
    PublishDelivery {
        qos,
        packet_id,
        dup: false,
        retain: false,
        subscription_ids: &[],
        topic_alias: None,
        omit_topic: false,
    }
}

/// A message as received from a publisher: with its own alias and (wrongly
/// kept) subscription identifier, which must not reach subscribers.
fn inbound_message() -> PublishPacket {
    let mut m = publish("dev/1/t", WireQoS::ExactlyOnce, Some(77), b"data");
    m.retain = true;
    m.properties.set_topic_alias(3);
    m.properties.set_subscription_identifier(9);
    m.properties.add_user_property("k".into(), "v".into());
    m
}

#[test]
fn encode_publish_takes_per_subscriber_fields_from_the_delivery() {
    let message = inbound_message();
    let d = PublishDelivery {
        subscription_ids: &[1, 300],
        topic_alias: Some(2),
        ..delivery(WireQoS::AtLeastOnce, Some(5))
    };
    let mut out = BytesMut::new();
    encode_publish(&message, &d, MQTT_5, None, &mut out).expect("encodes");
    let Packet::Publish(got) = client_decode(&out, MQTT_5) else {
        panic!("not a PUBLISH");
    };
    assert_eq!(got.topic_name, "dev/1/t");
    assert_eq!(
        (got.qos, got.packet_id, got.retain),
        (WireQoS::AtLeastOnce, Some(5), false)
    );
    assert_eq!(got.topic_alias(), Some(2));
    assert_eq!(got.properties.subscription_identifiers(), [1, 300]);
    assert_eq!(got.properties.get_user_property_value("k"), Some("v"));
    assert_eq!(&got.payload[..], b"data");

    // The client knows alias 2 already: no topic name.
    let mut out = BytesMut::new();
    encode_publish(
        &message,
        &PublishDelivery {
            omit_topic: true,
            ..d
        },
        MQTT_5,
        None,
        &mut out,
    )
    .expect("encodes");
    let Packet::Publish(got) = client_decode(&out, MQTT_5) else {
        panic!("not a PUBLISH");
    };
    assert_eq!((got.topic_name.as_str(), got.topic_alias()), ("", Some(2)));
}

#[test]
fn encode_publish_for_v4_has_no_mqtt5_fields() {
    let d = PublishDelivery {
        subscription_ids: &[1],
        topic_alias: Some(2),
        omit_topic: true,
        ..delivery(WireQoS::AtMostOnce, None)
    };
    let mut out = BytesMut::new();
    encode_publish(&inbound_message(), &d, MQTT_3_1_1, None, &mut out).expect("encodes");
    assert_eq!(
        &out[..],
        [
            0x30, 0x0D, 0x00, 0x07, b'd', b'e', b'v', b'/', b'1', b'/', b't', b'd', b'a', b't',
            b'a'
        ]
    );
}

#[test]
fn encode_publish_refuses_invalid_delivery_fields() {
    let message = inbound_message();
    for d in [
        PublishDelivery {
            subscription_ids: &[0],
            ..delivery(WireQoS::AtMostOnce, None)
        },
        PublishDelivery {
            subscription_ids: &[268_435_456],
            ..delivery(WireQoS::AtMostOnce, None)
        },
        PublishDelivery {
            topic_alias: Some(0),
            ..delivery(WireQoS::AtMostOnce, None)
        },
        delivery(WireQoS::AtLeastOnce, None),
        PublishDelivery {
            omit_topic: true,
            ..delivery(WireQoS::AtMostOnce, None)
        },
    ] {
        let mut out = BytesMut::new();
        let result = encode_publish(&message, &d, MQTT_5, None, &mut out);
        if d.omit_topic {
            // Without an alias the topic is sent anyway.
            assert!(result.is_ok(), "{d:?}: {result:?}");
        } else {
            assert!(
                matches!(result, Err(CodecError::Protocol(_))),
                "{d:?}: {result:?}"
            );
            assert!(out.is_empty());
        }
    }
}

// ---------------------------------------------------------------------------
// Encoding: the client's Maximum Packet Size
// ---------------------------------------------------------------------------

#[test]
fn oversized_ack_drops_reason_string_and_user_properties_first() {
    let mut puback = PubAckPacket::new_with_reason(7, ReasonCode::QuotaExceeded);
    puback.properties.set_reason_string("x".repeat(100));
    puback.properties.add_user_property("k".into(), "v".into());
    let packet = Packet::PubAck(puback);
    let full = encoded(&packet, MQTT_5).len();
    let mut out = BytesMut::new();
    encode(&packet, MQTT_5, Some(10), &mut out).expect("fits without diagnostics");
    assert_eq!(&out[..], [0x40, 0x03, 0x00, 0x07, 0x97]);
    let mut out = BytesMut::new();
    encode(&packet, MQTT_5, u32::try_from(full).ok(), &mut out).expect("fits");
    assert_eq!(out.len(), full);
    let e = encode_error(&packet, MQTT_5, Some(4));
    assert!(
        matches!(e, CodecError::PacketTooLarge { size: 5, max: 4 }),
        "{e:?}"
    );
}

#[test]
fn oversized_publish_is_refused_unaltered() {
    let mut p = publish("a", WireQoS::AtMostOnce, None, b"0123456789");
    p.properties.add_user_property("k".into(), "v".into());
    let packet = Packet::Publish(p);
    let size = encoded(&packet, MQTT_5).len();
    let max = u32::try_from(size - 1).expect("small");
    let e = encode_error(&packet, MQTT_5, Some(max));
    assert!(
        matches!(e, CodecError::PacketTooLarge { size: s, max: m } if s == size && m == max),
        "{e:?}"
    );
}

#[test]
fn maximum_packet_size_applies_to_v4_too() {
    let packet = Packet::Publish(publish("a", WireQoS::AtMostOnce, None, b"0123456789"));
    assert!(matches!(
        encode_error(&packet, MQTT_3_1_1, Some(10)),
        CodecError::PacketTooLarge { size: 15, max: 10 }
    ));
}

// ---------------------------------------------------------------------------
// Round trips (proptest): our encoder, decoded by the crate as a client
// would, and PUBLISH also by our own decoder.
// ---------------------------------------------------------------------------

/// Decodes a server packet the way a client does, with the crate.
fn client_decode(bytes: &[u8], version: u8) -> Packet {
    let mut buf = Bytes::copy_from_slice(bytes);
    let header = FixedHeader::decode(&mut buf).expect("fixed header");
    assert_eq!(
        usize::try_from(header.remaining_length).ok(),
        Some(buf.len()),
        "remaining length"
    );
    let packet =
        Packet::decode_from_body_with_version(header.packet_type, &header, &mut buf, version)
            .expect("decodes as a client");
    assert!(buf.is_empty(), "{} bytes left over", buf.len());
    packet
}

fn qos() -> impl Strategy<Value = WireQoS> {
    prop_oneof![
        Just(WireQoS::AtMostOnce),
        Just(WireQoS::AtLeastOnce),
        Just(WireQoS::ExactlyOnce)
    ]
}

/// Topic names: any characters but wildcards and U+0000.
fn topic() -> impl Strategy<Value = String> {
    "[^+#\u{0}]{1,40}"
}

fn text() -> impl Strategy<Value = String> {
    "[^\u{0}]{0,20}"
}

fn user_properties() -> impl Strategy<Value = Vec<(String, String)>> {
    prop::collection::vec((text(), text()), 0..4)
}

/// PUBLISH properties a client may send.
fn client_publish_properties() -> impl Strategy<Value = Properties> {
    (
        prop::option::of(any::<bool>()),
        prop::option::of(any::<u32>()),
        prop::option::of(text()),
        prop::option::of(topic()),
        prop::option::of(prop::collection::vec(any::<u8>(), 0..16)),
        user_properties(),
    )
        .prop_map(
            |(utf8, expiry, content_type, response, correlation, users)| {
                let mut p = Properties::new();
                if let Some(v) = utf8 {
                    p.set_payload_format_indicator(v);
                }
                if let Some(v) = expiry {
                    p.set_message_expiry_interval(v);
                }
                if let Some(v) = content_type {
                    p.set_content_type(v);
                }
                if let Some(v) = response {
                    p.set_response_topic(v);
                }
                if let Some(v) = correlation {
                    p.set_correlation_data(v.into());
                }
                for (k, v) in users {
                    p.add_user_property(k, v);
                }
                p
            },
        )
}

/// PUBLISH properties a server may send: adds subscription identifiers and
/// a topic alias.
fn server_publish_properties() -> impl Strategy<Value = Properties> {
    (
        client_publish_properties(),
        prop::collection::vec(1u32..=268_435_455, 0..3),
        prop::option::of(1u16..),
    )
        .prop_map(|(mut p, ids, alias)| {
            for id in ids {
                p.set_subscription_identifier(id);
            }
            if let Some(a) = alias {
                p.set_topic_alias(a);
            }
            p
        })
}

fn publish_packet(
    properties: impl Strategy<Value = Properties>,
) -> impl Strategy<Value = PublishPacket> {
    (
        topic(),
        qos(),
        1u16..,
        prop::collection::vec(any::<u8>(), 0..300),
        any::<bool>(),
        any::<bool>(),
        properties,
    )
        .prop_map(|(topic, qos, id, payload, retain, dup, properties)| {
            let mut p = PublishPacket::new(topic, payload, qos);
            p.packet_id = (qos != WireQoS::AtMostOnce).then_some(id);
            p.retain = retain;
            p.dup = dup && qos != WireQoS::AtMostOnce;
            p.properties = properties;
            p
        })
}

fn assert_same_publish(got: &PublishPacket, want: &PublishPacket, version: u8) {
    assert_eq!(got.topic_name, want.topic_name);
    assert_eq!(got.qos, want.qos);
    assert_eq!(got.packet_id, want.packet_id);
    assert_eq!((got.retain, got.dup), (want.retain, want.dup));
    assert_eq!(got.payload, want.payload);
    if version == MQTT_5 {
        assert_eq!(got.properties, want.properties);
    } else {
        assert!(got.properties.is_empty());
    }
}

fn ack_properties() -> impl Strategy<Value = Properties> {
    (prop::option::of(text()), user_properties()).prop_map(|(reason, users)| {
        let mut p = Properties::new();
        if let Some(r) = reason {
            p.set_reason_string(r);
        }
        for (k, v) in users {
            p.add_user_property(k, v);
        }
        p
    })
}

fn suback_code() -> impl Strategy<Value = SubAckReasonCode> {
    prop::sample::select(vec![
        SubAckReasonCode::GrantedQoS0,
        SubAckReasonCode::GrantedQoS1,
        SubAckReasonCode::GrantedQoS2,
        SubAckReasonCode::UnspecifiedError,
        SubAckReasonCode::ImplementationSpecificError,
        SubAckReasonCode::NotAuthorized,
        SubAckReasonCode::TopicFilterInvalid,
        SubAckReasonCode::PacketIdentifierInUse,
        SubAckReasonCode::QuotaExceeded,
        SubAckReasonCode::SharedSubscriptionsNotSupported,
        SubAckReasonCode::SubscriptionIdentifiersNotSupported,
        SubAckReasonCode::WildcardSubscriptionsNotSupported,
    ])
}

fn connack_reason() -> impl Strategy<Value = ReasonCode> {
    prop::sample::select(
        [
            0x00u8, 0x80, 0x81, 0x82, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89, 0x8A, 0x8C, 0x90,
            0x95, 0x97, 0x99, 0x9A, 0x9B, 0x9C, 0x9D, 0x9F,
        ]
        .iter()
        .filter_map(|&c| ReasonCode::from_u8(c))
        .collect::<Vec<_>>(),
    )
}

fn connack_properties() -> impl Strategy<Value = Properties> {
    (
        prop::option::of(any::<u32>()),
        prop::option::of(1u16..),
        prop::option::of(0u8..=1),
        prop::option::of(any::<bool>()),
        prop::option::of(1u32..),
        prop::option::of(text()),
        prop::option::of(any::<u16>()),
        prop::option::of(text()),
        prop::option::of(any::<u16>()),
        user_properties(),
    )
        .prop_map(
            |(
                expiry,
                receive_max,
                max_qos,
                retain,
                max_size,
                assigned,
                alias_max,
                reason,
                keep_alive,
                users,
            )| {
                let mut p = Properties::new();
                if let Some(v) = expiry {
                    p.set_session_expiry_interval(v);
                }
                if let Some(v) = receive_max {
                    p.set_receive_maximum(v);
                }
                if let Some(v) = max_qos {
                    p.set_maximum_qos(v);
                }
                if let Some(v) = retain {
                    p.set_retain_available(v);
                }
                if let Some(v) = max_size {
                    p.set_maximum_packet_size(v);
                }
                if let Some(v) = assigned {
                    p.set_assigned_client_identifier(v);
                }
                if let Some(v) = alias_max {
                    p.set_topic_alias_maximum(v);
                }
                if let Some(v) = reason {
                    p.set_reason_string(v);
                }
                if let Some(v) = keep_alive {
                    p.set_server_keep_alive(v);
                }
                for (k, v) in users {
                    p.add_user_property(k, v);
                }
                p.set_wildcard_subscription_available(true);
                p.set_shared_subscription_available(false);
                p.set_subscription_identifier_available(true);
                p
            },
        )
}

proptest! {
    #[test]
    fn publish_round_trips_through_a_client_decoder(
        p in publish_packet(server_publish_properties()),
        v5 in any::<bool>(),
    ) {
        let version = if v5 { MQTT_5 } else { MQTT_3_1_1 };
        let bytes = encoded(&Packet::Publish(p.clone()), version);
        let Packet::Publish(got) = client_decode(&bytes, version) else {
            panic!("not a PUBLISH");
        };
        assert_same_publish(&got, &p, version);
    }

    #[test]
    fn publish_round_trips_through_our_decoder(
        p in publish_packet(client_publish_properties()),
        v5 in any::<bool>(),
    ) {
        let version = if v5 { MQTT_5 } else { MQTT_3_1_1 };
        let bytes = encoded(&Packet::Publish(p.clone()), version);
        let Ok(Some(Packet::Publish(got))) = after_connect(version, &bytes) else {
            panic!("our decoder refused {bytes:02x?}");
        };
        assert_same_publish(&got, &p, version);
    }

    #[test]
    fn suback_round_trips(
        packet_id in 1u16..,
        codes in prop::collection::vec(suback_code(), 1..8),
        properties in ack_properties(),
        v5 in any::<bool>(),
    ) {
        let version = if v5 { MQTT_5 } else { MQTT_3_1_1 };
        let packet = Packet::SubAck(SubAckPacket {
            packet_id,
            reason_codes: codes.clone(),
            properties: properties.clone(),
            protocol_version: version,
        });
        let Packet::SubAck(got) = client_decode(&encoded(&packet, version), version) else {
            panic!("not a SUBACK");
        };
        prop_assert_eq!(got.packet_id, packet_id);
        if v5 {
            prop_assert_eq!(got.reason_codes, codes);
            prop_assert_eq!(got.properties, properties);
        } else {
            // 3.1.1 knows granted QoS and one failure code.
            let want: Vec<_> = codes
                .iter()
                .map(|c| if c.is_success() { *c } else { SubAckReasonCode::UnspecifiedError })
                .collect();
            prop_assert_eq!(got.reason_codes, want);
            prop_assert!(got.properties.is_empty());
        }
    }

    #[test]
    fn connack_round_trips(
        session_present in any::<bool>(),
        reason in connack_reason(),
        properties in connack_properties(),
    ) {
        let packet = Packet::ConnAck(ConnAckPacket {
            session_present,
            reason_code: reason,
            properties: properties.clone(),
            protocol_version: MQTT_5,
        });
        let Packet::ConnAck(got) = client_decode(&encoded(&packet, MQTT_5), MQTT_5) else {
            panic!("not a CONNACK");
        };
        prop_assert_eq!(got.session_present, session_present && reason == ReasonCode::Success);
        prop_assert_eq!(got.reason_code, reason);
        prop_assert_eq!(got.properties, properties);
    }

    #[test]
    fn acks_round_trip(
        kind in 0u8..4,
        packet_id in 1u16..,
        properties in ack_properties(),
        reason_pick in any::<prop::sample::Index>(),
    ) {
        let publish_acks = [0x00u8, 0x10, 0x80, 0x83, 0x87, 0x90, 0x91, 0x97, 0x99];
        let releases = [0x00u8, 0x92];
        let codes: &[u8] = if kind < 2 { &publish_acks } else { &releases };
        let reason = ReasonCode::from_u8(codes[reason_pick.index(codes.len())]).expect("known code");
        let packet = match kind {
            0 => Packet::PubAck(PubAckPacket { packet_id, reason_code: reason, properties: properties.clone() }),
            1 => Packet::PubRec(PubRecPacket { packet_id, reason_code: reason, properties: properties.clone() }),
            2 => Packet::PubRel(PubRelPacket { packet_id, reason_code: reason, properties: properties.clone() }),
            _ => Packet::PubComp(PubCompPacket { packet_id, reason_code: reason, properties: properties.clone() }),
        };
        let (got_id, got_reason, got_props) = match client_decode(&encoded(&packet, MQTT_5), MQTT_5) {
            Packet::PubAck(a) => (a.packet_id, a.reason_code, a.properties),
            Packet::PubRec(a) => (a.packet_id, a.reason_code, a.properties),
            Packet::PubRel(a) => (a.packet_id, a.reason_code, a.properties),
            Packet::PubComp(a) => (a.packet_id, a.reason_code, a.properties),
            other => panic!("not an ack: {other:?}"),
        };
        prop_assert_eq!(got_id, packet_id);
        prop_assert_eq!(got_reason, reason);
        prop_assert_eq!(got_props, properties);
    }

    #[test]
    fn unsuback_and_disconnect_round_trip(
        packet_id in 1u16..,
        properties in ack_properties(),
        codes in prop::collection::vec(
            prop::sample::select(vec![
                UnsubAckReasonCode::Success,
                UnsubAckReasonCode::NoSubscriptionExisted,
                UnsubAckReasonCode::NotAuthorized,
                UnsubAckReasonCode::TopicFilterInvalid,
            ]),
            1..5,
        ),
    ) {
        let packet = Packet::UnsubAck(UnsubAckPacket {
            packet_id,
            reason_codes: codes.clone(),
            properties: properties.clone(),
            protocol_version: MQTT_5,
        });
        let Packet::UnsubAck(got) = client_decode(&encoded(&packet, MQTT_5), MQTT_5) else {
            panic!("not an UNSUBACK");
        };
        prop_assert_eq!((got.packet_id, got.reason_codes, got.properties), (packet_id, codes, properties.clone()));

        let packet = Packet::Disconnect(DisconnectPacket {
            reason_code: ReasonCode::ServerShuttingDown,
            properties: properties.clone(),
        });
        let Packet::Disconnect(got) = client_decode(&encoded(&packet, MQTT_5), MQTT_5) else {
            panic!("not a DISCONNECT");
        };
        prop_assert_eq!(got.reason_code, ReasonCode::ServerShuttingDown);
        prop_assert_eq!(got.properties, properties);
    }

    /// Without per-subscriber fields, `encode_publish` writes what `encode`
    /// writes for the same message.
    #[test]
    fn encode_publish_matches_encode(
        p in publish_packet(client_publish_properties()),
        v5 in any::<bool>(),
    ) {
        let version = if v5 { MQTT_5 } else { MQTT_3_1_1 };
        let d = PublishDelivery {
            dup: p.dup,
            retain: p.retain,
            ..delivery(p.qos, p.packet_id)
        };
        let mut out = BytesMut::new();
        encode_publish(&p, &d, version, None, &mut out).expect("encodes");
        prop_assert_eq!(&out[..], &encoded(&Packet::Publish(p), version)[..]);
    }

    /// Whatever the limit: either the packet fits, or nothing is written and
    /// the error says by how much; diagnostics are dropped only when needed.
    #[test]
    fn encoded_packets_respect_the_client_maximum(
        properties in ack_properties(),
        p in publish_packet(server_publish_properties()),
        max in 1u32..400,
    ) {
        let ack = Packet::PubAck(PubAckPacket { packet_id: 1, reason_code: ReasonCode::QuotaExceeded, properties: properties.clone() });
        for packet in [ack, Packet::Publish(p)] {
            let full = encoded(&packet, MQTT_5);
            let mut out = BytesMut::new();
            match encode(&packet, MQTT_5, Some(max), &mut out) {
                Ok(()) => {
                    prop_assert!(out.len() <= max as usize);
                    if full.len() <= max as usize {
                        prop_assert_eq!(&out[..], &full[..]);
                    } else {
                        let Packet::PubAck(got) = client_decode(&out, MQTT_5) else {
                            panic!("only acknowledgements are trimmed");
                        };
                        prop_assert!(!got.properties.contains(PropertyId::ReasonString));
                        prop_assert!(!got.properties.contains(PropertyId::UserProperty));
                    }
                }
                Err(CodecError::PacketTooLarge { size, max: m }) => {
                    prop_assert!(out.is_empty());
                    prop_assert_eq!(m, max);
                    prop_assert!(size > max as usize);
                }
                Err(other) => panic!("unexpected {other:?}"),
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Never panic (the bounded fuzz run)
// ---------------------------------------------------------------------------

fn fuzz_cases() -> u32 {
    std::env::var("RAMPART_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000)
}

/// Feeds `input` to `decoder` until it errors or needs more bytes, checking
/// the buffer contract on the way; returns the number of packets decoded.
fn drain(decoder: &mut Decoder, input: &[u8]) -> usize {
    let mut buf = BytesMut::from(input);
    let mut packets = 0;
    loop {
        let before = buf.len();
        match decoder.decode(&mut buf) {
            Ok(Some(packet)) => {
                assert!(buf.len() < before, "a packet consumed nothing");
                if let (Packet::Publish(p), Some(level)) = (&packet, decoder.version()) {
                    reencodes_unchanged(p, level);
                }
                packets += 1;
            }
            Ok(None) => {
                assert_eq!(buf.len(), before, "Ok(None) consumed bytes");
                return packets;
            }
            Err(e) => {
                assert!(matches!(e.reason_code(), 0x81 | 0x82 | 0x84 | 0x94 | 0x95));
                return packets;
            }
        }
    }
}

/// A PUBLISH the decoder accepted, encoded for the same level and decoded
/// again, comes back unchanged.
fn reencodes_unchanged(p: &PublishPacket, level: u8) {
    let bytes = encoded(&Packet::Publish(p.clone()), level);
    let mut decoder = Decoder::new(u32::MAX, MAX_ALIAS);
    decoded(&mut decoder, &connect(level));
    let Packet::Publish(again) = decoded(&mut decoder, &bytes) else {
        panic!("not a PUBLISH");
    };
    assert_same_publish(&again, p, level);
}

/// Valid client packets to mutate.
fn seeds() -> Vec<Vec<u8>> {
    vec![
        frame(
            0x32,
            &publish_body("dev/1/t", Some(1), Some(&[0x23, 0, 1, 0x01, 1]), b"payload"),
        ),
        frame(0x30, &publish_body("", None, Some(&[0x23, 0, 2]), b"")),
        subscribe_v5(1, &[0x0B, 0x01], &[("a/+", 0x01), ("$share/g/b", 0x22)]),
        frame(0xA2, &cat(&[&[0, 1], &props(&[]), &field(b"a")])),
        frame(0x40, &[0, 1, 0x10, 3, 0x1F, 0, 0]),
        frame(0x62, &[0, 1]),
        frame(0xE0, &cat(&[&[0x04], &props(&[0x11, 0, 0, 0, 1])])),
        frame(
            0xF0,
            &cat(&[&[0x18], &props(&cat(&[&[0x15], &field(b"m")]))]),
        ),
        vec![0xC0, 0x00],
    ]
}

fn mutated(seed: Vec<u8>, edits: Vec<(prop::sample::Index, u8)>) -> Vec<u8> {
    let mut bytes = seed;
    for (at, value) in edits {
        if bytes.is_empty() {
            bytes.push(value);
            continue;
        }
        let i = at.index(bytes.len());
        match value % 4 {
            0 => bytes[i] = value,
            1 => bytes.insert(i, value),
            2 => {
                bytes.remove(i);
            }
            _ => bytes[i] ^= 1 << (value % 8),
        }
    }
    bytes
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(fuzz_cases()))]

    #[test]
    fn arbitrary_bytes_before_connect_never_panic(input in prop::collection::vec(any::<u8>(), 0..512)) {
        let packets = drain(&mut Decoder::new(4096, 10), &input);
        // Without a valid CONNECT at the front nothing decodes.
        if input.first().is_none_or(|b| b >> 4 != 1) {
            prop_assert_eq!(packets, 0);
        }
    }

    #[test]
    fn arbitrary_bytes_after_connect_never_panic(
        input in prop::collection::vec(any::<u8>(), 0..512),
        v5 in any::<bool>(),
    ) {
        let mut decoder = connected(if v5 { MQTT_5 } else { MQTT_3_1_1 });
        drain(&mut decoder, &input);
    }

    #[test]
    fn mutated_packets_never_panic(
        seed in prop::sample::select(seeds()),
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
        v5 in any::<bool>(),
    ) {
        let input = mutated(seed, edits);
        let mut decoder = connected(if v5 { MQTT_5 } else { MQTT_3_1_1 });
        drain(&mut decoder, &input);
        let mut fresh = Decoder::new(4096, 10);
        drain(&mut fresh, &cat(&[&connect(MQTT_5), &input]));
    }

    #[test]
    fn mutated_connects_never_panic(
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
        level in prop::sample::select(vec![MQTT_3_1_1, MQTT_5]),
    ) {
        let rest = if level == MQTT_5 {
            cat(&[&props(&[0x18, 0, 0, 0, 5]), &field(b"w/t"), &field(b"bye"), &field(b"u"), &field(b"p")])
        } else {
            cat(&[&field(b"w/t"), &field(b"bye"), &field(b"u"), &field(b"p")])
        };
        let seed = connect_with("MQTT", level, 0xC0 | 0x2C | 0x02, &[0x11, 0, 0, 0, 9, 0x21, 0, 5], &rest);
        let mut decoder = Decoder::new(4096, 10);
        prop_assert!(matches!(feed(&mut Decoder::new(4096, 10), &seed), Ok(Some(Packet::Connect(_)))));
        drain(&mut decoder, &mutated(seed, edits));
    }
}

// ---------------------------------------------------------------------------
// What the crate alone accepts: the reasons for the wrapper's checks. If an
// upgrade of mqtt5-protocol starts refusing one of these, the test fails and
// the wrapper's check can be reconsidered (docs/decisions/0005-mqtt-codec.md).
// ---------------------------------------------------------------------------

/// Decodes one framed packet with the crate alone; returns the packet and
/// how many body bytes it left unread.
fn crate_decode(bytes: &[u8], version: u8) -> Result<(Packet, usize), mqtt5_protocol::MqttError> {
    let mut buf = Bytes::copy_from_slice(bytes);
    let header = FixedHeader::decode(&mut buf)?;
    let packet =
        Packet::decode_from_body_with_version(header.packet_type, &header, &mut buf, version)?;
    Ok((packet, buf.len()))
}

fn crate_accepts(bytes: &[u8], version: u8) -> bool {
    crate_decode(bytes, version).is_ok_and(|(_, left)| left == 0)
}

#[test]
fn crate_alone_accepts_what_the_wrapper_refuses() {
    let v5_publish =
        |topic: &str, id: Option<u16>, p: &[u8]| publish_body(topic, id, Some(p), b"x");
    let cases: Vec<(&str, Vec<u8>, u8)> = vec![
        (
            "wildcard topic",
            frame(0x30, &v5_publish("a/#", None, &[])),
            MQTT_5,
        ),
        (
            "empty topic in 3.1.1",
            frame(0x30, &publish_body("", None, None, b"x")),
            MQTT_3_1_1,
        ),
        (
            "empty topic without alias",
            frame(0x30, &v5_publish("", None, &[])),
            MQTT_5,
        ),
        (
            "topic alias 0",
            frame(0x30, &v5_publish("a", None, &[0x23, 0, 0])),
            MQTT_5,
        ),
        (
            "subscription id from client",
            frame(0x30, &v5_publish("a", None, &[0x0B, 1])),
            MQTT_5,
        ),
        (
            "QoS 1 with packet id 0",
            frame(0x32, &v5_publish("a", Some(0), &[])),
            MQTT_5,
        ),
        (
            "property invalid for PUBLISH",
            frame(0x30, &v5_publish("a", None, &[0x11, 0, 0, 0, 1])),
            MQTT_5,
        ),
        ("PUBACK with packet id 0", frame(0x40, &[0, 0]), MQTT_5),
        (
            "3.1.1 PUBACK with a reason code",
            frame(0x40, &[0, 1, 0x10]),
            MQTT_3_1_1,
        ),
        (
            "SUBSCRIBE with packet id 0",
            subscribe_v5(0, &[], &[("a", 0)]),
            MQTT_5,
        ),
        (
            "3.1.1 SUBSCRIBE reserved bits",
            subscribe_v4(1, &[("a", 0x84)]),
            MQTT_3_1_1,
        ),
        (
            "3.1.1 SUBSCRIBE QoS 3",
            subscribe_v4(1, &[("a", 0x03)]),
            MQTT_3_1_1,
        ),
        (
            "subscription id 0",
            subscribe_v5(1, &[0x0B, 0], &[("a", 0)]),
            MQTT_5,
        ),
        (
            "No Local on shared",
            subscribe_v5(1, &[], &[("$share/g/a", 0x04)]),
            MQTT_5,
        ),
        (
            "CONNECT level 3",
            connect_with("MQTT", 3, 0x02, &[], &[]),
            MQTT_5,
        ),
        (
            "CONNECT level 6",
            connect_with("MQTT", 6, 0x02, &[], &[]),
            MQTT_5,
        ),
        (
            "Receive Maximum 0",
            connect_with("MQTT", MQTT_5, 0x02, &[0x21, 0, 0], &[]),
            MQTT_5,
        ),
        (
            "Maximum Packet Size 0",
            connect_with("MQTT", MQTT_5, 0x02, &[0x27, 0, 0, 0, 0], &[]),
            MQTT_5,
        ),
        ("CONNACK from a client", frame(0x20, &[0, 0, 0]), MQTT_5),
        (
            "3.1.1 DISCONNECT with a body",
            frame(0xE0, &[0x00]),
            MQTT_3_1_1,
        ),
    ];
    for (what, bytes, version) in cases {
        assert!(
            crate_accepts(&bytes, version),
            "the crate now refuses: {what}"
        );
    }
    // Non-minimal remaining length.
    let mut header = Bytes::from_static(&[0xC0, 0x80, 0x00]);
    assert!(
        FixedHeader::decode(&mut header).is_ok(),
        "the crate now refuses a non-minimal length"
    );
}

#[test]
fn crate_alone_leaves_trailing_bytes_unread() {
    // PINGREQ's body is never read; a CONNECT stops after its last field.
    assert!(matches!(
        crate_decode(&frame(0xC0, &[1, 2]), MQTT_5),
        Ok((Packet::PingReq, 2))
    ));
    let connect_plus_one = connect_with("MQTT", MQTT_5, 0x02, &[], &[0xFF]);
    assert!(matches!(
        crate_decode(&connect_plus_one, MQTT_5),
        Ok((Packet::Connect(_), 1))
    ));
}

#[test]
fn crate_alone_refuses_a_v5_password_without_user_name() {
    let bytes = connect_with("MQTT", MQTT_5, 0x02 | 0x40, &[], &field(b"secret"));
    assert!(matches!(
        crate_decode(&bytes, MQTT_5),
        Err(mqtt5_protocol::MqttError::MalformedPacket(_))
    ));
}

#[test]
fn crate_alone_refuses_these_itself() {
    // Checks the wrapper leaves to the crate, proven by its own refusal.
    let cases: Vec<(&str, Vec<u8>, u8)> = vec![
        (
            "QoS 3 PUBLISH",
            frame(0x36, &publish_body("a", Some(1), Some(&[]), b"x")),
            MQTT_5,
        ),
        (
            "DUP on QoS 0",
            frame(0x38, &publish_body("a", None, Some(&[]), b"x")),
            MQTT_5,
        ),
        (
            "NUL in topic",
            frame(0x30, &cat(&[&field(b"a\0"), &props(&[])])),
            MQTT_5,
        ),
        (
            "invalid UTF-8",
            frame(0x30, &cat(&[&field(&[0xFF]), &props(&[])])),
            MQTT_5,
        ),
        (
            "duplicate property",
            frame(
                0x30,
                &publish_body("a", None, Some(&[0x01, 0, 0x01, 0]), b""),
            ),
            MQTT_5,
        ),
        (
            "unknown property",
            frame(0x30, &publish_body("a", None, Some(&[0x7F, 0]), b"")),
            MQTT_5,
        ),
        (
            "SUBSCRIBE without filters",
            subscribe_v5(1, &[], &[]),
            MQTT_5,
        ),
        (
            "v5 options reserved bits",
            subscribe_v5(1, &[], &[("a", 0xC0)]),
            MQTT_5,
        ),
        ("PUBREL flags 0", frame(0x60, &[0, 1]), MQTT_5),
        ("PUBACK reason 0x92", frame(0x40, &[0, 1, 0x92]), MQTT_5),
        (
            "CONNECT reserved flag",
            connect_with("MQTT", MQTT_5, 0x03, &[], &[]),
            MQTT_5,
        ),
        (
            "CONNECT protocol name",
            connect_with("MQTX", MQTT_5, 0x02, &[], &[]),
            MQTT_5,
        ),
        (
            "3.1.1 password without user",
            connect_with("MQTT", MQTT_3_1_1, 0x42, &[], &field(b"p")),
            MQTT_3_1_1,
        ),
    ];
    for (what, bytes, version) in cases {
        assert!(
            crate_decode(&bytes, version).is_err(),
            "the crate accepts: {what}"
        );
    }
}
