//! Framing and decoding of the packets a client sends.

use bytes::{Buf, Bytes, BytesMut};
use mqtt5_protocol::packet::subscribe::SubscribePacket;
use mqtt5_protocol::{FixedHeader, Packet, PacketType, PropertyId, PropertyValue, QoS};

use super::wire::{HeaderScan, Reader, scan_fixed_header};
use super::{CodecError, MQTT_3_1_1, MQTT_5, from_crate, props};

/// The part of a shared subscription's filter before the group name
/// (MQTT 5 §4.8.2).
const SHARE_PREFIX: &str = "$share/";

/// Frames and decodes the packets of one client connection.
///
/// Holds the little state the wire format needs: whether CONNECT has been
/// seen and which protocol level it asked for. After any error the
/// connection must be closed; the decoder does not resynchronise.
#[derive(Debug)]
pub struct Decoder {
    max_packet_size: u32,
    version: Option<u8>,
    connected: bool,
    max_topic_alias: u16,
}

impl Decoder {
    /// A decoder refusing packets larger than `max_packet_size` bytes (whole
    /// packet, as MQTT 5 §3.1.2.11.4 and the CONNACK Maximum Packet Size count
    /// it) and topic aliases above `max_topic_alias` (0: aliases refused).
    pub fn new(max_packet_size: u32, max_topic_alias: u16) -> Self {
        Self {
            max_packet_size,
            version: None,
            connected: false,
            max_topic_alias,
        }
    }

    /// The protocol level the client's CONNECT asked for: 4 (MQTT 3.1.1) or
    /// 5 (MQTT 5.0).
    ///
    /// Set as soon as a CONNECT with level 4 or 5 has been read, even if the
    /// rest of that CONNECT was then refused, so that the server can answer a
    /// refused CONNECT with a CONNACK in the client's dialect.
    pub fn version(&self) -> Option<u8> {
        self.version
    }

    /// Frames and decodes one client packet from the front of `buf`,
    /// consuming its bytes. `Ok(None)`: more bytes are needed.
    ///
    /// The declared size is checked against the maximum as soon as the fixed
    /// header is complete, before the body is waited for: a client cannot
    /// make the server buffer more than the maximum. This method never
    /// reserves memory in `buf`. A PUBLISH payload is a zero-copy slice of
    /// `buf`'s memory.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Packet>, CodecError> {
        let Some(&first) = buf.first() else {
            return Ok(None);
        };
        let packet_type = self.check_packet_type(first)?;
        let (remaining, header_len) = match scan_fixed_header(buf) {
            HeaderScan::Incomplete => return Ok(None),
            HeaderScan::Invalid(why) => return Err(CodecError::Malformed(why.to_owned())),
            HeaderScan::Complete {
                remaining,
                header_len,
                ..
            } => (remaining, header_len),
        };
        let fixed_header = FixedHeader::new(packet_type, first & 0x0F, remaining);
        // MQTT 5 §2.1.3 / MQTT 3.1.1 §2.2.2: reserved flag bits; a PUBLISH's
        // flags are checked by the crate (QoS 3, DUP with QoS 0).
        if !fixed_header.validate_flags() {
            return Err(CodecError::Malformed(format!(
                "invalid fixed header flags 0x{:X} for {packet_type:?} (MQTT 5 §2.1.3)",
                first & 0x0F
            )));
        }
        // usize is at least 32 bits on every target tokio supports.
        let total = header_len.saturating_add(usize::try_from(remaining).unwrap_or(usize::MAX));
        if total > usize::try_from(self.max_packet_size).unwrap_or(usize::MAX) {
            return Err(CodecError::PacketTooLarge {
                size: total,
                max: self.max_packet_size,
            });
        }
        if buf.len() < total {
            return Ok(None);
        }
        let mut body = buf.split_to(total).freeze();
        body.advance(header_len);

        let packet = match self.version {
            Some(version) if self.connected => {
                self.decode_after_connect(&fixed_header, body, version)?
            }
            _ => self.decode_connect(&fixed_header, body)?,
        };
        Ok(Some(packet))
    }

    /// Checks the packet type in the first byte, before anything else is
    /// read: a client gets no further than one byte with a wrong type.
    fn check_packet_type(&self, first: u8) -> Result<PacketType, CodecError> {
        let number = first >> 4;
        let Some(packet_type) = PacketType::from_u8(number) else {
            // Type 0 is reserved (MQTT 5 §2.1.2, MQTT 3.1.1 §2.2.1).
            return Err(CodecError::Malformed(format!(
                "reserved packet type {number}"
            )));
        };
        match (self.connected, packet_type) {
            // MQTT-3.1.0-1: the first packet from the client MUST be CONNECT.
            (false, PacketType::Connect) => Ok(packet_type),
            (false, other) => Err(CodecError::Protocol(format!(
                "the first packet must be CONNECT, got {other:?} (MQTT-3.1.0-1)"
            ))),
            // MQTT-3.1.0-2: a second CONNECT is a Protocol Error.
            (true, PacketType::Connect) => Err(CodecError::Protocol(
                "a second CONNECT on the same connection (MQTT-3.1.0-2)".to_owned(),
            )),
            // MQTT 3.1.1 §2.2.1: type 15 is reserved there.
            (true, PacketType::Auth) if self.version == Some(MQTT_3_1_1) => Err(
                CodecError::Malformed("AUTH (type 15) is reserved in MQTT 3.1.1".to_owned()),
            ),
            // Packets only a server sends (MQTT 5 §2.1.2 "Direction of flow").
            (
                true,
                PacketType::ConnAck
                | PacketType::SubAck
                | PacketType::UnsubAck
                | PacketType::PingResp,
            ) => Err(CodecError::Protocol(format!(
                "{packet_type:?} is sent by a server, not by a client (MQTT 5 §2.1.2)"
            ))),
            (true, _) => Ok(packet_type),
        }
    }

    fn decode_connect(
        &mut self,
        fixed_header: &FixedHeader,
        mut body: Bytes,
    ) -> Result<Packet, CodecError> {
        let version = self.connect_preamble(&body)?;
        let packet = Packet::decode_from_body_with_version(
            PacketType::Connect,
            fixed_header,
            &mut body,
            version,
        )
        .map_err(from_crate)?;
        no_trailing_bytes(&body, "CONNECT")?;
        let Packet::Connect(connect) = &packet else {
            return Err(CodecError::Malformed("expected a CONNECT".to_owned()));
        };
        if version == MQTT_5 {
            check_connect_v5(connect)?;
        }
        if let Some(will) = &connect.will {
            // MQTT 5 §3.1.3.3: the Will Topic is a topic name (§4.7: at least
            // one character, no wildcards).
            check_topic_name(&will.topic, "will topic")?;
        }
        self.connected = true;
        Ok(packet)
    }

    /// Reads protocol name, level and flags of a CONNECT before the crate
    /// decodes it, for the checks that must come first or that the crate
    /// gets wrong.
    fn connect_preamble(&mut self, body: &[u8]) -> Result<u8, CodecError> {
        let mut r = Reader::new(body);
        let truncated =
            || CodecError::Malformed("CONNECT too short for its variable header".into());
        let name = r.prefixed().ok_or_else(truncated)?;
        let level = r.u8().ok_or_else(truncated)?;
        if name == b"MQIsdp" {
            // MQTT 3.1 (protocol level 3) used this name.
            return Err(CodecError::UnsupportedProtocolVersion(level));
        }
        if name != b"MQTT" {
            // MQTT-3.1.2-1: a protocol name other than "MQTT".
            return Err(CodecError::Protocol(format!(
                "protocol name must be \"MQTT\", got {:?} (MQTT-3.1.2-1)",
                String::from_utf8_lossy(name)
            )));
        }
        // MQTT 5 §3.1.2.2, MQTT 3.1.1 §3.1.2.2 (MQTT-3.1.2-2): other levels
        // are answered with "unsupported protocol version".
        if level != MQTT_3_1_1 && level != MQTT_5 {
            return Err(CodecError::UnsupportedProtocolVersion(level));
        }
        self.version = Some(level);
        let flags = r.u8().ok_or_else(truncated)?;
        let user_name = flags & 0x80 != 0;
        let password = flags & 0x40 != 0;
        // MQTT 5 §3.1.2.9 allows a password without a user name, but the
        // crate refuses it as malformed. Rampart authenticates by client
        // certificate and never uses passwords, so it refuses it too, with a
        // message that says why. (MQTT 3.1.1 forbids it, MQTT-3.1.2-22: the
        // crate's "malformed" is right there.)
        if level == MQTT_5 && password && !user_name {
            return Err(CodecError::Protocol(
                "password without user name is not supported: Rampart authenticates by client certificate"
                    .to_owned(),
            ));
        }
        Ok(level)
    }

    fn decode_after_connect(
        &self,
        fixed_header: &FixedHeader,
        mut body: Bytes,
        version: u8,
    ) -> Result<Packet, CodecError> {
        let packet_type = fixed_header.packet_type;
        let v5 = version == MQTT_5;
        match packet_type {
            // MQTT 3.1.1 §3.4.1, §3.5.1, §3.6.1, §3.7.1: remaining length 2.
            PacketType::PubAck | PacketType::PubRec | PacketType::PubRel | PacketType::PubComp
                if !v5 && body.len() != 2 =>
            {
                return Err(CodecError::Malformed(format!(
                    "{packet_type:?} must have a remaining length of 2 in MQTT 3.1.1, got {}",
                    body.len()
                )));
            }
            // MQTT 3.1.1 §3.14.1: DISCONNECT has no variable header.
            PacketType::Disconnect if !v5 && !body.is_empty() => {
                return Err(CodecError::Malformed(
                    "DISCONNECT must have a remaining length of 0 in MQTT 3.1.1".to_owned(),
                ));
            }
            PacketType::Subscribe => check_subscribe_payload(&body, version)?,
            PacketType::Unsubscribe => check_unsubscribe_payload(&body, version)?,
            _ => {}
        }

        let packet =
            Packet::decode_from_body_with_version(packet_type, fixed_header, &mut body, version)
                .map_err(from_crate)?;
        // The crate stops where the packet's fields end; anything left inside
        // the frame means the length and the fields disagree. (PINGREQ's body
        // is never read, so this also enforces its remaining length of 0.)
        no_trailing_bytes(&body, packet.packet_type_name())?;

        match &packet {
            Packet::Publish(publish) => self.check_publish(publish, v5)?,
            Packet::PubAck(ack) => check_ack(ack.packet_id, &ack.properties, "PUBACK")?,
            Packet::PubRec(ack) => check_ack(ack.packet_id, &ack.properties, "PUBREC")?,
            Packet::PubRel(ack) => check_ack(ack.packet_id, &ack.properties, "PUBREL")?,
            Packet::PubComp(ack) => check_ack(ack.packet_id, &ack.properties, "PUBCOMP")?,
            Packet::Subscribe(subscribe) => check_subscribe(subscribe)?,
            Packet::Unsubscribe(unsubscribe) => {
                check_packet_id(unsubscribe.packet_id, "UNSUBSCRIBE")?;
                props::check_allowed(&unsubscribe.properties, props::UNSUBSCRIBE, "UNSUBSCRIBE")?;
            }
            Packet::Disconnect(disconnect) => {
                props::check_allowed(&disconnect.properties, props::DISCONNECT, "DISCONNECT")?;
            }
            Packet::Auth(auth) => props::check_allowed(&auth.properties, props::AUTH, "AUTH")?,
            _ => {}
        }
        Ok(packet)
    }

    fn check_publish(
        &self,
        publish: &mqtt5_protocol::packet::publish::PublishPacket,
        v5: bool,
    ) -> Result<(), CodecError> {
        // MQTT-2.2.1-3 (MQTT 3.1.1: MQTT-2.3.1-1): non-zero packet identifier.
        if publish.qos != QoS::AtMostOnce && publish.packet_id == Some(0) {
            return Err(CodecError::Protocol(
                "PUBLISH with QoS > 0 has packet identifier 0 (MQTT-2.2.1-3)".to_owned(),
            ));
        }
        let alias = if v5 {
            props::check_allowed(&publish.properties, props::PUBLISH, "PUBLISH")?;
            // MQTT-3.3.4-6: a client PUBLISH must not carry a Subscription
            // Identifier.
            if publish
                .properties
                .contains(PropertyId::SubscriptionIdentifier)
            {
                return Err(CodecError::Protocol(
                    "a client PUBLISH must not contain a Subscription Identifier (MQTT-3.3.4-6)"
                        .to_owned(),
                ));
            }
            props::check_boolean(&publish.properties, PropertyId::PayloadFormatIndicator)?;
            if let Some(PropertyValue::Utf8String(topic)) =
                publish.properties.get(PropertyId::ResponseTopic)
            {
                // MQTT-3.3.2-14: the Response Topic is a topic name.
                check_topic_name(topic, "response topic")?;
            }
            publish.topic_alias()
        } else {
            None
        };
        if let Some(alias) = alias {
            // MQTT 5 §3.3.2.3.4: 0, or more than the Topic Alias Maximum the
            // server sent in CONNACK, is an error (reason 0x94).
            if alias == 0 || alias > self.max_topic_alias {
                return Err(CodecError::TopicAliasInvalid(format!(
                    "topic alias {alias} is outside 1..={} (MQTT 5 §3.3.2.3.4)",
                    self.max_topic_alias
                )));
            }
        }
        if publish.topic_name.is_empty() {
            // MQTT-4.7.3-1: topic names have at least one character; MQTT 5
            // §3.3.2.1 lets a PUBLISH leave it empty when it carries a Topic
            // Alias, and calls it a Protocol Error otherwise.
            if alias.is_none() {
                return Err(CodecError::Protocol(
                    "PUBLISH with an empty topic name and no topic alias (MQTT-4.7.3-1, MQTT 5 §3.3.2.1)"
                        .to_owned(),
                ));
            }
        } else if publish.topic_name.contains(['+', '#']) {
            // MQTT-3.3.2-2: no wildcards in the topic name of a PUBLISH.
            return Err(CodecError::Protocol(format!(
                "PUBLISH topic name {:?} contains a wildcard (MQTT-3.3.2-2)",
                publish.topic_name
            )));
        }
        Ok(())
    }
}

fn no_trailing_bytes(rest: &Bytes, packet: &str) -> Result<(), CodecError> {
    if rest.is_empty() {
        Ok(())
    } else {
        Err(CodecError::Malformed(format!(
            "{} bytes after the end of the {packet} fields",
            rest.len()
        )))
    }
}

/// MQTT-2.2.1-3 (MQTT 3.1.1: MQTT-2.3.1-1): packets that carry a packet
/// identifier must use a non-zero one.
fn check_packet_id(id: u16, packet: &str) -> Result<(), CodecError> {
    if id == 0 {
        Err(CodecError::Protocol(format!(
            "{packet} has packet identifier 0 (MQTT-2.2.1-3)"
        )))
    } else {
        Ok(())
    }
}

fn check_ack(
    packet_id: u16,
    properties: &mqtt5_protocol::Properties,
    packet: &str,
) -> Result<(), CodecError> {
    check_packet_id(packet_id, packet)?;
    props::check_allowed(properties, props::ACK, packet)
}

/// A topic name outside a PUBLISH's topic field (will topic, response
/// topic): at least one character (MQTT-4.7.3-1) and no wildcards
/// (MQTT 5 §4.7.1).
fn check_topic_name(topic: &str, what: &str) -> Result<(), CodecError> {
    if topic.is_empty() {
        return Err(CodecError::Protocol(format!(
            "{what} is empty (MQTT-4.7.3-1)"
        )));
    }
    if topic.contains(['+', '#']) {
        return Err(CodecError::Protocol(format!(
            "{what} {topic:?} contains a wildcard (MQTT 5 §4.7.1)"
        )));
    }
    Ok(())
}

fn check_connect_v5(
    connect: &mqtt5_protocol::packet::connect::ConnectPacket,
) -> Result<(), CodecError> {
    let p = &connect.properties;
    props::check_allowed(p, props::CONNECT, "CONNECT")?;
    props::check_allowed(
        &connect.will_properties,
        props::WILL,
        "CONNECT will properties",
    )?;
    // MQTT 5 §3.1.2.11.3: "It is a Protocol Error to include the Receive
    // Maximum value more than once or for it to have the value 0."
    if let Some(PropertyValue::TwoByteInteger(0)) = p.get(PropertyId::ReceiveMaximum) {
        return Err(CodecError::Protocol(
            "CONNECT Receive Maximum is 0 (MQTT 5 §3.1.2.11.3)".to_owned(),
        ));
    }
    // MQTT 5 §3.1.2.11.4: "It is a Protocol Error to include the Maximum
    // Packet Size more than once, or for the value to be set to zero."
    if let Some(PropertyValue::FourByteInteger(0)) = p.get(PropertyId::MaximumPacketSize) {
        return Err(CodecError::Protocol(
            "CONNECT Maximum Packet Size is 0 (MQTT 5 §3.1.2.11.4)".to_owned(),
        ));
    }
    // MQTT 5 §3.1.2.11.6 and §3.1.2.11.7: 0 or 1.
    props::check_boolean(p, PropertyId::RequestResponseInformation)?;
    props::check_boolean(p, PropertyId::RequestProblemInformation)?;
    // MQTT 5 §3.1.2.11.10: Authentication Data without Authentication
    // Method is a Protocol Error.
    if p.contains(PropertyId::AuthenticationData) && !p.contains(PropertyId::AuthenticationMethod) {
        return Err(CodecError::Protocol(
            "CONNECT has Authentication Data but no Authentication Method (MQTT 5 §3.1.2.11.10)"
                .to_owned(),
        ));
    }
    // MQTT 5 §3.1.3.2.3.
    props::check_boolean(&connect.will_properties, PropertyId::PayloadFormatIndicator)?;
    Ok(())
}

/// Skips the packet identifier and (MQTT 5) the properties of a SUBSCRIBE or
/// UNSUBSCRIBE body; `None` if they are truncated, which the crate reports.
fn payload_after_header(body: &[u8], version: u8) -> Option<Reader<'_>> {
    let mut r = Reader::new(body);
    r.u16()?;
    if version == MQTT_5 {
        let len = r.varint()?;
        r.take(usize::try_from(len).ok()?)?;
    }
    Some(r)
}

/// Checks of a SUBSCRIBE's raw payload that the decoded packet can no longer
/// show.
fn check_subscribe_payload(body: &[u8], version: u8) -> Result<(), CodecError> {
    let Some(mut r) = payload_after_header(body, version) else {
        return Ok(());
    };
    // MQTT-3.8.3-2 (MQTT 3.1.1: MQTT-3.8.3-3): at least one topic filter;
    // MQTT 5 §3.8.3 calls a SUBSCRIBE without payload a Protocol Error.
    if r.is_empty() {
        return Err(CodecError::Protocol(
            "SUBSCRIBE without any topic filter (MQTT-3.8.3-2)".to_owned(),
        ));
    }
    if version == MQTT_3_1_1 {
        // MQTT 3.1.1 §3.8.3.1: the byte after each filter is the requested
        // QoS; its upper 6 bits are reserved and must be 0 (MQTT-3-8.3-4), and
        // QoS 3 does not exist. The crate masks both away.
        while !r.is_empty() {
            let (Some(_), Some(options)) = (r.prefixed(), r.u8()) else {
                return Ok(()); // truncated: the crate reports it
            };
            if options & 0xFC != 0 {
                return Err(CodecError::Malformed(format!(
                    "SUBSCRIBE requested-QoS byte 0x{options:02X} has reserved bits set (MQTT 3.1.1 MQTT-3-8.3-4)"
                )));
            }
            if options & 0x03 == 3 {
                return Err(CodecError::Malformed(
                    "SUBSCRIBE requests QoS 3 (MQTT 3.1.1 MQTT-3-8.3-4)".to_owned(),
                ));
            }
        }
    }
    Ok(())
}

fn check_unsubscribe_payload(body: &[u8], version: u8) -> Result<(), CodecError> {
    match payload_after_header(body, version) {
        // MQTT-3.10.3-2: at least one topic filter; MQTT 5 §3.10.3 calls an
        // UNSUBSCRIBE without payload a Protocol Error.
        Some(r) if r.is_empty() => Err(CodecError::Protocol(
            "UNSUBSCRIBE without any topic filter (MQTT-3.10.3-2)".to_owned(),
        )),
        _ => Ok(()),
    }
}

fn check_subscribe(subscribe: &SubscribePacket) -> Result<(), CodecError> {
    check_packet_id(subscribe.packet_id, "SUBSCRIBE")?;
    let p = &subscribe.properties;
    props::check_allowed(p, props::SUBSCRIBE, "SUBSCRIBE")?;
    if let Some(ids) = p.get_all(PropertyId::SubscriptionIdentifier) {
        // MQTT 5 §3.8.2.1.2: at most one, and not 0.
        if ids.len() > 1 {
            return Err(CodecError::Protocol(
                "SUBSCRIBE has more than one Subscription Identifier (MQTT 5 §3.8.2.1.2)"
                    .to_owned(),
            ));
        }
        if ids.contains(&PropertyValue::VariableByteInteger(0)) {
            return Err(CodecError::Protocol(
                "SUBSCRIBE Subscription Identifier is 0 (MQTT 5 §3.8.2.1.2)".to_owned(),
            ));
        }
    }
    for filter in &subscribe.filters {
        // MQTT-3.8.3-4: No Local on a shared subscription is a Protocol Error.
        if filter.options.no_local && filter.filter.starts_with(SHARE_PREFIX) {
            return Err(CodecError::Protocol(format!(
                "No Local set on shared subscription {:?} (MQTT-3.8.3-4)",
                filter.filter
            )));
        }
    }
    Ok(())
}
