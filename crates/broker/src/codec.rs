//! The MQTT wire codec: frames and decodes client packets, encodes server
//! packets, for MQTT 3.1.1 (protocol level 4) and MQTT 5.0 (level 5).
//!
//! Packet parsing is done by the `mqtt5-protocol` crate (pinned, see
//! `docs/decisions/0005-mqtt-codec.md`). This module adds what the crate
//! leaves out and a server needs:
//!
//! - framing with the size limit checked on the fixed header, before the body
//!   is buffered ([`Decoder::decode`]);
//! - the connection-level rules (CONNECT first and only once, protocol level 4
//!   or 5, later packets decoded in that level's dialect);
//! - the rules the crate does not enforce on client packets (wildcards in a
//!   PUBLISH topic, topic alias range, packet identifier 0, properties not
//!   valid for a packet type, …), each citing the spec;
//! - an encoder for server packets that writes straight into the connection's
//!   output buffer, never emits MQTT 5 fields to a 3.1.1 client, and honours
//!   the client's Maximum Packet Size ([`encode`]; [`encode_publish`] for
//!   the fan-out, without cloning the message per subscriber).
//!
//! It does no I/O and keeps no session state: resolving topic aliases,
//! checking topic filters against the ACL and packet-identifier bookkeeping
//! belong to the session.

mod decode;
mod encode;
mod props;
mod wire;

#[cfg(test)]
mod tests;

pub use decode::Decoder;
pub use encode::{PublishDelivery, encode, encode_publish};

/// How many more bytes the packet at the front of `buf` needs, once its
/// fixed header is complete (0 when the whole packet is there); `None`
/// while the header itself is incomplete or invalid (the decoder reports
/// that). The size limit is the decoder's to check.
pub fn missing(buf: &[u8]) -> Option<usize> {
    match wire::scan_fixed_header(buf) {
        wire::HeaderScan::Complete {
            remaining,
            header_len,
            ..
        } => {
            let total = header_len.saturating_add(usize::try_from(remaining).ok()?);
            Some(total.saturating_sub(buf.len()))
        }
        wire::HeaderScan::Incomplete | wire::HeaderScan::Invalid(_) => None,
    }
}

/// Any packet, the unit the decoder returns and the encoder takes.
pub use mqtt5_protocol::Packet;
/// QoS as it appears on the wire.
pub use mqtt5_protocol::QoS as WireQoS;
/// MQTT 5 reason codes (also used to pick MQTT 3.1.1 return codes).
pub use mqtt5_protocol::ReasonCode;
/// The will message of a CONNECT (its raw MQTT 5 properties are in
/// [`ConnectPacket::will_properties`]).
pub use mqtt5_protocol::WillMessage;
/// AUTH (MQTT 5 enhanced authentication; Rampart does not offer any method).
pub use mqtt5_protocol::packet::auth::AuthPacket;
/// The CONNACK packet the server sends.
pub use mqtt5_protocol::packet::connack::ConnAckPacket;
/// The decoded CONNECT packet.
pub use mqtt5_protocol::packet::connect::ConnectPacket;
/// DISCONNECT, in both directions (MQTT 5 only from the server).
pub use mqtt5_protocol::packet::disconnect::DisconnectPacket;
/// QoS 1 acknowledgement, in both directions.
pub use mqtt5_protocol::packet::puback::PubAckPacket;
/// QoS 2 completion, in both directions.
pub use mqtt5_protocol::packet::pubcomp::PubCompPacket;
/// PUBLISH, in both directions.
pub use mqtt5_protocol::packet::publish::PublishPacket;
/// QoS 2 step 1 acknowledgement, in both directions.
pub use mqtt5_protocol::packet::pubrec::PubRecPacket;
/// QoS 2 release, in both directions.
pub use mqtt5_protocol::packet::pubrel::PubRelPacket;
/// SUBACK and its per-filter reason codes.
pub use mqtt5_protocol::packet::suback::{SubAckPacket, SubAckReasonCode};
/// SUBSCRIBE and its parts.
pub use mqtt5_protocol::packet::subscribe::{
    RetainHandling, SubscribePacket, SubscriptionOptions, TopicFilter,
};
/// UNSUBACK and its per-filter reason codes.
pub use mqtt5_protocol::packet::unsuback::{UnsubAckPacket, UnsubAckReasonCode};
/// UNSUBSCRIBE.
pub use mqtt5_protocol::packet::unsubscribe::UnsubscribePacket;
/// MQTT 5 properties of a packet, and their identifiers and values.
pub use mqtt5_protocol::{Properties, PropertyId, PropertyValue};

/// MQTT 3.1.1 (protocol level 4).
pub const MQTT_3_1_1: u8 = 4;
/// MQTT 5.0 (protocol level 5).
pub const MQTT_5: u8 = 5;

/// Why a packet could not be decoded or encoded.
///
/// Decoding errors are the client's fault: the connection is closed (after a
/// DISCONNECT, or a CONNACK for a refused CONNECT, carrying
/// [`CodecError::reason_code`] when the client speaks MQTT 5). Encoding errors
/// mean the packet cannot be sent to this client as it is; see [`encode`].
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The bytes do not form a valid packet (MQTT 5 reason code 0x81).
    #[error("malformed packet: {0}")]
    Malformed(String),
    /// A well-formed packet that breaks a protocol rule (0x82).
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The packet is larger than the receiver accepts (0x95). `size` is the
    /// whole packet, fixed header included, as MQTT 5 §3.1.2.11.4 counts it.
    #[error("packet of {size} bytes is larger than the maximum packet size of {max} bytes")]
    PacketTooLarge {
        /// Size of the whole packet in bytes.
        size: usize,
        /// The limit it exceeds.
        max: u32,
    },
    /// A CONNECT with a protocol level other than 4 (3.1.1) or 5 (5.0):
    /// answered with CONNACK 0x84 (MQTT 5) or return code 0x01 (3.1.1).
    #[error(
        "unsupported MQTT protocol level {0}: Rampart speaks MQTT 3.1.1 (level 4) and MQTT 5.0 (level 5)"
    )]
    UnsupportedProtocolVersion(u8),
    /// A PUBLISH with a topic alias of 0 or above the maximum the server
    /// announced (0x94).
    #[error("invalid topic alias: {0}")]
    TopicAliasInvalid(String),
}

impl CodecError {
    /// The MQTT 5 reason code for the CONNACK or DISCONNECT that reports it.
    pub fn reason_code(&self) -> u8 {
        match self {
            Self::Malformed(_) => 0x81,
            Self::Protocol(_) => 0x82,
            Self::UnsupportedProtocolVersion(_) => 0x84,
            Self::TopicAliasInvalid(_) => 0x94,
            Self::PacketTooLarge { .. } => 0x95,
        }
    }

    /// A short, stable name for metrics labels and structured logs.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Malformed(_) => "malformed",
            Self::Protocol(_) => "protocol_error",
            Self::PacketTooLarge { .. } => "packet_too_large",
            Self::UnsupportedProtocolVersion(_) => "unsupported_protocol_version",
            Self::TopicAliasInvalid(_) => "topic_alias_invalid",
        }
    }
}

/// Maps an error of the parsing crate onto ours.
///
/// The crate reports most MQTT 5 "Protocol Error" cases it detects as
/// `ProtocolError`, except a repeated property, which MQTT 5 §2.2.2.2 and each
/// property's section call a Protocol Error too.
fn from_crate(err: mqtt5_protocol::MqttError) -> CodecError {
    use mqtt5_protocol::MqttError as E;
    match err {
        E::ProtocolError(msg) => CodecError::Protocol(msg),
        E::DuplicatePropertyId(id) => CodecError::Protocol(format!(
            "property 0x{id:02X} appears more than once (MQTT 5 §2.2.2.2)"
        )),
        // MQTT-3.3.1-4: both QoS bits set is a Malformed Packet.
        E::InvalidQoS(qos) => CodecError::Malformed(format!("QoS {qos} does not exist")),
        other => CodecError::Malformed(other.to_string()),
    }
}
