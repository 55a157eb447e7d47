//! Encoding of the packets a server sends, straight into the connection's
//! output buffer.
//!
//! The crate's own encoders build each packet (and each string) in a
//! temporary `Vec` before copying it out; on the fan-out path that is an
//! allocation per subscriber. Here every packet is measured first (which
//! also validates every field), then written once into `out` after a single
//! `reserve`.

use bytes::{BufMut, BytesMut};
use mqtt5_protocol::packet::connack::ConnAckPacket;
use mqtt5_protocol::packet::publish::PublishPacket;
use mqtt5_protocol::packet::suback::{SubAckPacket, SubAckReasonCode};
use mqtt5_protocol::packet::unsuback::UnsubAckPacket;
use mqtt5_protocol::{Packet, Properties, PropertyId, QoS, ReasonCode};

use super::props::{self, Selection};
use super::wire::{PACKET_MAX, VARINT_MAX, put_varint, varint_len};
use super::{CodecError, MQTT_3_1_1, MQTT_5};

/// Encodes a server packet for a client of protocol level `version` (4: MQTT
/// 3.1.1, 5: MQTT 5.0) at the end of `out`. On error nothing is written.
///
/// - MQTT 3.1.1 clients never get MQTT 5 fields: properties are left out,
///   and a packet that only MQTT 5 can express is refused with
///   [`CodecError::Protocol`] — a server DISCONNECT or AUTH, a PUBACK /
///   PUBREC / PUBREL / PUBCOMP with a reason code other than Success, a
///   CONNACK whose reason has no 3.1.1 return code. The caller then just
///   closes the connection (MQTT 3.1.1 §4.8: "close the Network Connection").
/// - `client_max_packet_size` is the Maximum Packet Size of the client's
///   CONNECT (MQTT 5 §3.1.2.11.4). A packet that would exceed it is sent
///   without Reason String and User Properties where the spec allows a
///   sender to drop them (acknowledgements, CONNACK, SUBACK, UNSUBACK,
///   DISCONNECT, AUTH), else refused with [`CodecError::PacketTooLarge`].
///   A PUBLISH is never altered (MQTT-3.3.2-17/18: its User Properties are
///   forwarded unaltered); MQTT-3.1.2-25 says to drop it and act as if it had
///   been delivered.
/// - Packets only clients send (CONNECT, SUBSCRIBE, UNSUBSCRIBE, PINGREQ)
///   are refused with [`CodecError::Protocol`].
///
/// The `protocol_version` fields inside the packet structs are ignored;
/// `version` decides. A QoS 0 PUBLISH is written without packet identifier
/// and with DUP 0 (MQTT-3.3.1-2) whatever the struct holds.
pub fn encode(
    packet: &Packet,
    version: u8,
    client_max_packet_size: Option<u32>,
    out: &mut BytesMut,
) -> Result<(), CodecError> {
    let v5 = is_v5(version)?;
    let max = client_max_packet_size;
    match packet {
        Packet::Publish(p) => publish(&Outgoing::verbatim(p), v5, max, out),
        Packet::ConnAck(p) => connack(p, v5, max, out),
        Packet::PubAck(p) => ack(
            Ack::PUBACK,
            p.packet_id,
            p.reason_code,
            &p.properties,
            v5,
            max,
            out,
        ),
        Packet::PubRec(p) => ack(
            Ack::PUBREC,
            p.packet_id,
            p.reason_code,
            &p.properties,
            v5,
            max,
            out,
        ),
        Packet::PubRel(p) => ack(
            Ack::PUBREL,
            p.packet_id,
            p.reason_code,
            &p.properties,
            v5,
            max,
            out,
        ),
        Packet::PubComp(p) => ack(
            Ack::PUBCOMP,
            p.packet_id,
            p.reason_code,
            &p.properties,
            v5,
            max,
            out,
        ),
        Packet::SubAck(p) => suback(p, v5, max, out),
        Packet::UnsubAck(p) => unsuback(p, v5, max, out),
        Packet::PingResp => emit(out, 0xD0, 0, max, |_| Ok(())),
        Packet::Disconnect(p) => {
            if !v5 {
                // MQTT 3.1.1 §3.14: DISCONNECT is sent only by clients.
                return Err(CodecError::Protocol(
                    "MQTT 3.1.1 has no server DISCONNECT: close the connection instead".into(),
                ));
            }
            reason_and_properties(
                0xE0,
                "DISCONNECT",
                p.reason_code,
                &p.properties,
                valid_disconnect_reason,
                max,
                out,
            )
        }
        Packet::Auth(p) => {
            if !v5 {
                return Err(CodecError::Protocol(
                    "AUTH does not exist in MQTT 3.1.1: close the connection instead".into(),
                ));
            }
            reason_and_properties(
                0xF0,
                "AUTH",
                p.reason_code,
                &p.properties,
                valid_auth_reason,
                max,
                out,
            )
        }
        Packet::Connect(_) | Packet::Subscribe(_) | Packet::Unsubscribe(_) | Packet::PingReq => {
            Err(CodecError::Protocol(format!(
                "{} is a client packet; a server never sends it",
                packet.packet_type_name()
            )))
        }
    }
}

fn is_v5(version: u8) -> Result<bool, CodecError> {
    match version {
        MQTT_5 => Ok(true),
        MQTT_3_1_1 => Ok(false),
        other => Err(CodecError::UnsupportedProtocolVersion(other)),
    }
}

/// Size of a whole packet with this remaining length.
fn packet_size(remaining: usize) -> Result<usize, CodecError> {
    match u32::try_from(remaining) {
        Ok(r) if r <= VARINT_MAX => Ok(1 + varint_len(r) + remaining),
        _ => Err(CodecError::PacketTooLarge {
            size: remaining.saturating_add(5),
            max: PACKET_MAX,
        }),
    }
}

/// Refuses a packet larger than the client accepts.
fn check_fits(size: usize, max: Option<u32>) -> Result<(), CodecError> {
    match max {
        Some(max) if size > usize::try_from(max).unwrap_or(usize::MAX) => {
            Err(CodecError::PacketTooLarge { size, max })
        }
        _ => Ok(()),
    }
}

/// Writes the fixed header and then the body through `body`, which must
/// write exactly `remaining` bytes. On error, `out` is restored.
fn emit(
    out: &mut BytesMut,
    first_byte: u8,
    remaining: usize,
    max: Option<u32>,
    body: impl FnOnce(&mut BytesMut) -> Result<(), CodecError>,
) -> Result<(), CodecError> {
    let size = packet_size(remaining)?;
    check_fits(size, max)?;
    let mark = out.len();
    out.reserve(size);
    out.put_u8(first_byte);
    // packet_size checked remaining <= VARINT_MAX.
    put_varint(out, u32::try_from(remaining).unwrap_or(VARINT_MAX));
    if let Err(e) = body(out) {
        out.truncate(mark);
        return Err(e);
    }
    debug_assert_eq!(
        out.len() - mark,
        size,
        "encoded length differs from measured"
    );
    Ok(())
}

/// Remaining length and property length of one layout of a packet.
#[derive(Debug, Clone, Copy)]
struct Layout {
    remaining: usize,
    props_len: usize,
}

/// Measures a packet with all its properties and, if that exceeds the
/// client's maximum, without Reason String and User Properties.
fn choose_layout(
    max: Option<u32>,
    measure: impl Fn(Selection) -> Result<Layout, CodecError>,
) -> Result<(Selection, Layout), CodecError> {
    let full = measure(Selection::All)?;
    let size = packet_size(full.remaining)?;
    if check_fits(size, max).is_ok() {
        return Ok((Selection::All, full));
    }
    // E.g. MQTT-3.4.2-2/3 for PUBACK: the sender MUST NOT send the Reason
    // String or User Properties if they would make the packet too large.
    let lean = measure(Selection::WithoutDiagnostics)?;
    check_fits(packet_size(lean.remaining)?, max)?;
    Ok((Selection::WithoutDiagnostics, lean))
}

/// The per-subscriber fields of an outgoing PUBLISH, for
/// [`encode_publish`].
///
/// MQTT 5 §3.3.4: the server picks QoS (at most the subscription's), packet
/// identifier, DUP (MQTT-3.3.1-3: only for its own retransmissions) and
/// RETAIN (§3.3.1.3) per subscriber, and adds the Subscription Identifiers
/// of the matching subscriptions (§3.3.4) and, if it uses one, a Topic
/// Alias of that client's connection (§3.3.2.3.4).
#[derive(Debug, Clone, Copy)]
pub struct PublishDelivery<'a> {
    /// QoS of this delivery.
    pub qos: QoS,
    /// Packet identifier, required for QoS 1 and 2, ignored for QoS 0.
    pub packet_id: Option<u16>,
    /// A retransmission (written only for QoS 1 and 2, MQTT-3.3.1-2).
    pub dup: bool,
    /// RETAIN flag as delivered to this subscriber.
    pub retain: bool,
    /// Subscription Identifiers of the matching subscriptions (MQTT 5 only).
    pub subscription_ids: &'a [u32],
    /// Topic Alias for this client (MQTT 5 only).
    pub topic_alias: Option<u16>,
    /// Send an empty topic name: the client already knows `topic_alias`.
    /// Ignored unless a topic alias is given and the client speaks MQTT 5.
    pub omit_topic: bool,
}

/// Encodes one delivery of `message` to a subscriber without cloning it:
/// topic, payload and properties come from `message`, everything that
/// differs per subscriber from `delivery`. The message's own Topic Alias and
/// Subscription Identifiers, which belong to the hop it arrived on, are
/// never copied. Otherwise behaves like [`encode`] for a PUBLISH (which is
/// never trimmed to fit `client_max_packet_size`).
pub fn encode_publish(
    message: &PublishPacket,
    delivery: &PublishDelivery<'_>,
    version: u8,
    client_max_packet_size: Option<u32>,
    out: &mut BytesMut,
) -> Result<(), CodecError> {
    let v5 = is_v5(version)?;
    let alias = if v5 { delivery.topic_alias } else { None };
    let outgoing = Outgoing {
        topic: if alias.is_some() && delivery.omit_topic {
            ""
        } else {
            &message.topic_name
        },
        qos: delivery.qos,
        packet_id: delivery.packet_id,
        dup: delivery.dup,
        retain: delivery.retain,
        properties: &message.properties,
        selection: Selection::WithoutHopFields,
        subscription_ids: if v5 { delivery.subscription_ids } else { &[] },
        topic_alias: alias,
        payload: &message.payload,
    };
    publish(&outgoing, v5, client_max_packet_size, out)
}

/// Everything an encoded PUBLISH is made of.
struct Outgoing<'a> {
    topic: &'a str,
    qos: QoS,
    packet_id: Option<u16>,
    dup: bool,
    retain: bool,
    properties: &'a Properties,
    selection: Selection,
    subscription_ids: &'a [u32],
    topic_alias: Option<u16>,
    payload: &'a [u8],
}

impl<'a> Outgoing<'a> {
    /// The PUBLISH exactly as the struct holds it.
    fn verbatim(p: &'a PublishPacket) -> Self {
        Self {
            topic: &p.topic_name,
            qos: p.qos,
            packet_id: p.packet_id,
            dup: p.dup,
            retain: p.retain,
            properties: &p.properties,
            selection: Selection::All,
            subscription_ids: &[],
            topic_alias: None,
            payload: &p.payload,
        }
    }

    /// Length of the properties beyond those taken from `properties`.
    fn extra_props_len(&self) -> Result<usize, CodecError> {
        let mut len = self.topic_alias.map_or(0, |_| 3);
        for &id in self.subscription_ids {
            // MQTT 5 §3.3.2.3.8: 1 to 268,435,455.
            if id == 0 || id > VARINT_MAX {
                return Err(CodecError::Protocol(format!(
                    "subscription identifier {id} is outside 1..=268435455"
                )));
            }
            len += 1 + varint_len(id);
        }
        Ok(len)
    }
}

fn publish(
    p: &Outgoing<'_>,
    v5: bool,
    max: Option<u32>,
    out: &mut BytesMut,
) -> Result<(), CodecError> {
    let topic_len = props::string_len(p.topic, "topic name")?;
    let has_alias = p.topic_alias.is_some()
        || (p.selection == Selection::All && p.properties.contains(PropertyId::TopicAlias));
    if p.topic.is_empty() && !(v5 && has_alias) {
        // MQTT-4.7.3-1; MQTT 5 §3.3.2.1 allows it only with a Topic Alias.
        return Err(CodecError::Protocol(
            "PUBLISH with an empty topic name needs a topic alias (MQTT 5 only)".into(),
        ));
    }
    if p.topic_alias == Some(0) {
        // MQTT 5 §3.3.2.3.4: a Topic Alias of 0 is not permitted.
        return Err(CodecError::Protocol(
            "topic alias 0 is not permitted".into(),
        ));
    }
    let packet_id = match p.qos {
        QoS::AtMostOnce => None,
        QoS::AtLeastOnce | QoS::ExactlyOnce => match p.packet_id {
            Some(id) if id != 0 => Some(id),
            _ => {
                return Err(CodecError::Protocol(
                    "PUBLISH with QoS > 0 needs a non-zero packet identifier (MQTT-2.2.1-3)".into(),
                ));
            }
        },
    };
    let props_len = if v5 {
        let len = props::content_len(p.properties, p.selection)? + p.extra_props_len()?;
        if len > VARINT_MAX as usize {
            return Err(CodecError::Malformed(format!(
                "properties of {len} bytes do not fit a Variable Byte Integer"
            )));
        }
        Some(len)
    } else {
        None
    };
    let remaining = topic_len
        + packet_id.map_or(0, |_| 2)
        + props_len.map_or(0, props::with_prefix)
        + p.payload.len();

    // MQTT 5 §3.3.1: DUP (bit 3), QoS (bits 2-1), RETAIN (bit 0).
    let qos_bits = (p.qos as u8) << 1;
    let dup = if p.dup && packet_id.is_some() {
        0x08
    } else {
        0
    };
    let first_byte = 0x30 | dup | qos_bits | u8::from(p.retain);

    emit(out, first_byte, remaining, max, |out| {
        props::put_prefixed(out, p.topic.as_bytes());
        if let Some(id) = packet_id {
            out.put_u16(id);
        }
        if let Some(len) = props_len {
            props::put(out, p.properties, p.selection, len)?;
            for &id in p.subscription_ids {
                out.put_u8(PropertyId::SubscriptionIdentifier as u8);
                put_varint(out, id);
            }
            if let Some(alias) = p.topic_alias {
                out.put_u8(PropertyId::TopicAlias as u8);
                out.put_u16(alias);
            }
        }
        out.put_slice(p.payload);
        Ok(())
    })
}

/// MQTT 3.1.1 §3.2.2.3 return code for a CONNACK reason, if there is one.
fn v311_return_code(reason: ReasonCode) -> Option<u8> {
    match reason {
        ReasonCode::Success => Some(0x00),
        ReasonCode::UnsupportedProtocolVersion => Some(0x01),
        ReasonCode::ClientIdentifierNotValid => Some(0x02),
        ReasonCode::ServerUnavailable
        | ReasonCode::ServerBusy
        | ReasonCode::UseAnotherServer
        | ReasonCode::ServerMoved
        | ReasonCode::ConnectionRateExceeded => Some(0x03),
        ReasonCode::BadUsernameOrPassword | ReasonCode::BadAuthenticationMethod => Some(0x04),
        ReasonCode::NotAuthorized | ReasonCode::Banned => Some(0x05),
        _ => None,
    }
}

/// MQTT 5 §3.2.2.2, table 3-1.
fn valid_connack_reason(code: ReasonCode) -> bool {
    matches!(
        u8::from(code),
        0x00 | 0x80..=0x8A | 0x8C | 0x90 | 0x95 | 0x97 | 0x99..=0x9D | 0x9F
    )
}

fn connack(
    p: &ConnAckPacket,
    v5: bool,
    max: Option<u32>,
    out: &mut BytesMut,
) -> Result<(), CodecError> {
    // MQTT-3.2.2-6 (MQTT 3.1.1: MQTT-3.2.2-4): Session Present is 0 when the
    // connection is refused.
    let session_present = u8::from(p.session_present && p.reason_code == ReasonCode::Success);
    if !v5 {
        let Some(code) = v311_return_code(p.reason_code) else {
            // MQTT-3.2.2-6 (3.1.1): no applicable return code, so close
            // without CONNACK.
            return Err(CodecError::Protocol(format!(
                "MQTT 3.1.1 has no CONNACK return code for {:?}: close the connection instead",
                p.reason_code
            )));
        };
        return emit(out, 0x20, 2, max, |out| {
            out.put_u8(session_present);
            out.put_u8(code);
            Ok(())
        });
    }
    if !valid_connack_reason(p.reason_code) {
        return Err(CodecError::Protocol(format!(
            "{:?} is not a CONNACK reason code (MQTT 5 §3.2.2.2)",
            p.reason_code
        )));
    }
    let (selection, layout) = choose_layout(max, |selection| {
        let props_len = props::content_len(&p.properties, selection)?;
        Ok(Layout {
            remaining: 2 + props::with_prefix(props_len),
            props_len,
        })
    })?;
    emit(out, 0x20, layout.remaining, None, |out| {
        out.put_u8(session_present);
        out.put_u8(u8::from(p.reason_code));
        props::put(out, &p.properties, selection, layout.props_len)
    })
}

/// What differs between PUBACK, PUBREC, PUBREL and PUBCOMP.
struct Ack {
    name: &'static str,
    first_byte: u8,
    valid_reason: fn(ReasonCode) -> bool,
}

impl Ack {
    /// MQTT 5 §3.4.2.1.
    const PUBACK: Self = Self {
        name: "PUBACK",
        first_byte: 0x40,
        valid_reason: valid_publish_ack_reason,
    };
    /// MQTT 5 §3.5.2.1.
    const PUBREC: Self = Self {
        name: "PUBREC",
        first_byte: 0x50,
        valid_reason: valid_publish_ack_reason,
    };
    /// MQTT 5 §3.6.2.1; fixed header flags 0b0010 (MQTT-3.6.1-1).
    const PUBREL: Self = Self {
        name: "PUBREL",
        first_byte: 0x62,
        valid_reason: valid_release_reason,
    };
    /// MQTT 5 §3.7.2.1.
    const PUBCOMP: Self = Self {
        name: "PUBCOMP",
        first_byte: 0x70,
        valid_reason: valid_release_reason,
    };
}

/// PUBACK and PUBREC reason codes (MQTT 5 §3.4.2.1, §3.5.2.1).
fn valid_publish_ack_reason(code: ReasonCode) -> bool {
    matches!(
        u8::from(code),
        0x00 | 0x10 | 0x80 | 0x83 | 0x87 | 0x90 | 0x91 | 0x97 | 0x99
    )
}

/// PUBREL and PUBCOMP reason codes (MQTT 5 §3.6.2.1, §3.7.2.1).
fn valid_release_reason(code: ReasonCode) -> bool {
    matches!(u8::from(code), 0x00 | 0x92)
}

fn nonzero_packet_id(id: u16, packet: &str) -> Result<(), CodecError> {
    if id == 0 {
        return Err(CodecError::Protocol(format!(
            "{packet} needs a non-zero packet identifier (MQTT-2.2.1-3)"
        )));
    }
    Ok(())
}

fn ack(
    kind: Ack,
    packet_id: u16,
    reason: ReasonCode,
    properties: &Properties,
    v5: bool,
    max: Option<u32>,
    out: &mut BytesMut,
) -> Result<(), CodecError> {
    nonzero_packet_id(packet_id, kind.name)?;
    if !v5 {
        if reason != ReasonCode::Success {
            // A 3.1.1 acknowledgement always means success; sending one for
            // a refused message would lie to the client.
            return Err(CodecError::Protocol(format!(
                "MQTT 3.1.1 {} cannot carry reason code {reason:?}: close the connection instead",
                kind.name
            )));
        }
        return emit(out, kind.first_byte, 2, max, |out| {
            out.put_u16(packet_id);
            Ok(())
        });
    }
    if !(kind.valid_reason)(reason) {
        return Err(CodecError::Protocol(format!(
            "{reason:?} is not a {} reason code",
            kind.name
        )));
    }
    let (selection, layout) = choose_layout(max, |selection| {
        let props_len = props::content_len(properties, selection)?;
        // MQTT 5 §3.4.2.1: Reason Code and Property Length can be left out
        // for Success without properties; Property Length alone when there
        // are no properties (remaining length 3).
        let remaining = match (props_len, reason) {
            (0, ReasonCode::Success) => 2,
            (0, _) => 3,
            (len, _) => 3 + props::with_prefix(len),
        };
        Ok(Layout {
            remaining,
            props_len,
        })
    })?;
    emit(out, kind.first_byte, layout.remaining, None, |out| {
        out.put_u16(packet_id);
        if layout.remaining > 2 {
            out.put_u8(u8::from(reason));
        }
        if layout.remaining > 3 {
            props::put(out, properties, selection, layout.props_len)?;
        }
        Ok(())
    })
}

fn suback(
    p: &SubAckPacket,
    v5: bool,
    max: Option<u32>,
    out: &mut BytesMut,
) -> Result<(), CodecError> {
    nonzero_packet_id(p.packet_id, "SUBACK")?;
    // MQTT-3.9.3-1: one reason code per topic filter of the SUBSCRIBE.
    if p.reason_codes.is_empty() {
        return Err(CodecError::Protocol(
            "SUBACK needs one reason code per topic filter (MQTT-3.9.3-1)".into(),
        ));
    }
    let codes = p.reason_codes.len();
    if !v5 {
        // MQTT 3.1.1 §3.9.3: 0x00-0x02 granted QoS, 0x80 failure.
        return emit(out, 0x90, 2 + codes, max, |out| {
            out.put_u16(p.packet_id);
            for code in &p.reason_codes {
                out.put_u8(match code {
                    SubAckReasonCode::GrantedQoS0 => 0x00,
                    SubAckReasonCode::GrantedQoS1 => 0x01,
                    SubAckReasonCode::GrantedQoS2 => 0x02,
                    _ => 0x80,
                });
            }
            Ok(())
        });
    }
    let (selection, layout) = choose_layout(max, |selection| {
        let props_len = props::content_len(&p.properties, selection)?;
        Ok(Layout {
            remaining: 2 + props::with_prefix(props_len) + codes,
            props_len,
        })
    })?;
    emit(out, 0x90, layout.remaining, None, |out| {
        out.put_u16(p.packet_id);
        props::put(out, &p.properties, selection, layout.props_len)?;
        for code in &p.reason_codes {
            out.put_u8(*code as u8);
        }
        Ok(())
    })
}

fn unsuback(
    p: &UnsubAckPacket,
    v5: bool,
    max: Option<u32>,
    out: &mut BytesMut,
) -> Result<(), CodecError> {
    nonzero_packet_id(p.packet_id, "UNSUBACK")?;
    if !v5 {
        // MQTT 3.1.1 §3.11: packet identifier only; reason codes are MQTT 5.
        return emit(out, 0xB0, 2, max, |out| {
            out.put_u16(p.packet_id);
            Ok(())
        });
    }
    // MQTT-3.11.3-1: one reason code per topic filter of the UNSUBSCRIBE.
    if p.reason_codes.is_empty() {
        return Err(CodecError::Protocol(
            "UNSUBACK needs one reason code per topic filter (MQTT-3.11.3-1)".into(),
        ));
    }
    let codes = p.reason_codes.len();
    let (selection, layout) = choose_layout(max, |selection| {
        let props_len = props::content_len(&p.properties, selection)?;
        Ok(Layout {
            remaining: 2 + props::with_prefix(props_len) + codes,
            props_len,
        })
    })?;
    emit(out, 0xB0, layout.remaining, None, |out| {
        out.put_u16(p.packet_id);
        props::put(out, &p.properties, selection, layout.props_len)?;
        for code in &p.reason_codes {
            out.put_u8(*code as u8);
        }
        Ok(())
    })
}

/// Reason codes a server may put in DISCONNECT (MQTT 5 §3.14.2.1; 0x04
/// "Disconnect with Will Message" is for clients only).
fn valid_disconnect_reason(code: ReasonCode) -> bool {
    matches!(
        u8::from(code),
        0x00 | 0x80..=0x83 | 0x87 | 0x89 | 0x8B | 0x8D..=0x90 | 0x93..=0xA2
    )
}

/// MQTT 5 §3.15.2.1.
fn valid_auth_reason(code: ReasonCode) -> bool {
    matches!(u8::from(code), 0x00 | 0x18 | 0x19)
}

/// DISCONNECT and AUTH: an optional reason code and optional properties.
fn reason_and_properties(
    first_byte: u8,
    name: &str,
    reason: ReasonCode,
    properties: &Properties,
    valid_reason: fn(ReasonCode) -> bool,
    max: Option<u32>,
    out: &mut BytesMut,
) -> Result<(), CodecError> {
    if !valid_reason(reason) {
        return Err(CodecError::Protocol(format!(
            "{reason:?} is not a {name} reason code"
        )));
    }
    let (selection, layout) = choose_layout(max, |selection| {
        let props_len = props::content_len(properties, selection)?;
        // MQTT 5 §3.14.2.1, §3.15.2.1: both can be left out for Success
        // without properties; Property Length alone without properties.
        let remaining = match (props_len, reason) {
            (0, ReasonCode::Success) => 0,
            (0, _) => 1,
            (len, _) => 1 + props::with_prefix(len),
        };
        Ok(Layout {
            remaining,
            props_len,
        })
    })?;
    emit(out, first_byte, layout.remaining, None, |out| {
        if layout.remaining > 0 {
            out.put_u8(u8::from(reason));
        }
        if layout.remaining > 1 {
            props::put(out, properties, selection, layout.props_len)?;
        }
        Ok(())
    })
}
