//! MQTT 5 properties: which identifiers each packet may carry (decoding), and
//! an encoder that writes them in identifier order straight into the output.

use bytes::BufMut;
use mqtt5_protocol::{Properties, PropertyId, PropertyValue};

use super::CodecError;
use super::wire::{VARINT_MAX, put_varint, varint_len};

/// Every property identifier, in ascending order (MQTT 5 §2.2.2.2, table 2-4).
const ALL_IDS: [PropertyId; 27] = [
    PropertyId::PayloadFormatIndicator,
    PropertyId::MessageExpiryInterval,
    PropertyId::ContentType,
    PropertyId::ResponseTopic,
    PropertyId::CorrelationData,
    PropertyId::SubscriptionIdentifier,
    PropertyId::SessionExpiryInterval,
    PropertyId::AssignedClientIdentifier,
    PropertyId::ServerKeepAlive,
    PropertyId::AuthenticationMethod,
    PropertyId::AuthenticationData,
    PropertyId::RequestProblemInformation,
    PropertyId::WillDelayInterval,
    PropertyId::RequestResponseInformation,
    PropertyId::ResponseInformation,
    PropertyId::ServerReference,
    PropertyId::ReasonString,
    PropertyId::ReceiveMaximum,
    PropertyId::TopicAliasMaximum,
    PropertyId::TopicAlias,
    PropertyId::MaximumQoS,
    PropertyId::RetainAvailable,
    PropertyId::UserProperty,
    PropertyId::MaximumPacketSize,
    PropertyId::WildcardSubscriptionAvailable,
    PropertyId::SubscriptionIdentifierAvailable,
    PropertyId::SharedSubscriptionAvailable,
];

/// Properties a CONNECT may carry (MQTT 5 §3.1.2.11).
pub(crate) const CONNECT: &[PropertyId] = &[
    PropertyId::SessionExpiryInterval,
    PropertyId::ReceiveMaximum,
    PropertyId::MaximumPacketSize,
    PropertyId::TopicAliasMaximum,
    PropertyId::RequestResponseInformation,
    PropertyId::RequestProblemInformation,
    PropertyId::UserProperty,
    PropertyId::AuthenticationMethod,
    PropertyId::AuthenticationData,
];

/// Will properties of a CONNECT (MQTT 5 §3.1.3.2).
pub(crate) const WILL: &[PropertyId] = &[
    PropertyId::WillDelayInterval,
    PropertyId::PayloadFormatIndicator,
    PropertyId::MessageExpiryInterval,
    PropertyId::ContentType,
    PropertyId::ResponseTopic,
    PropertyId::CorrelationData,
    PropertyId::UserProperty,
];

/// PUBLISH (MQTT 5 §3.3.2.3). Subscription Identifier is valid for the
/// packet type but not from a client; the decoder reports that separately.
pub(crate) const PUBLISH: &[PropertyId] = &[
    PropertyId::PayloadFormatIndicator,
    PropertyId::MessageExpiryInterval,
    PropertyId::TopicAlias,
    PropertyId::ResponseTopic,
    PropertyId::CorrelationData,
    PropertyId::UserProperty,
    PropertyId::SubscriptionIdentifier,
    PropertyId::ContentType,
];

/// PUBACK, PUBREC, PUBREL, PUBCOMP (MQTT 5 §3.4.2.2, §3.5.2.2, §3.6.2.2, §3.7.2.2).
pub(crate) const ACK: &[PropertyId] = &[PropertyId::ReasonString, PropertyId::UserProperty];

/// SUBSCRIBE (MQTT 5 §3.8.2.1).
pub(crate) const SUBSCRIBE: &[PropertyId] =
    &[PropertyId::SubscriptionIdentifier, PropertyId::UserProperty];

/// UNSUBSCRIBE (MQTT 5 §3.10.2.1).
pub(crate) const UNSUBSCRIBE: &[PropertyId] = &[PropertyId::UserProperty];

/// DISCONNECT (MQTT 5 §3.14.2.2).
pub(crate) const DISCONNECT: &[PropertyId] = &[
    PropertyId::SessionExpiryInterval,
    PropertyId::ReasonString,
    PropertyId::UserProperty,
    PropertyId::ServerReference,
];

/// AUTH (MQTT 5 §3.15.2.2).
pub(crate) const AUTH: &[PropertyId] = &[
    PropertyId::AuthenticationMethod,
    PropertyId::AuthenticationData,
    PropertyId::ReasonString,
    PropertyId::UserProperty,
];

/// MQTT 5 §2.2.2.2: "A Control Packet which contains an Identifier which is
/// not valid for its packet type […] is a Malformed Packet."
pub(crate) fn check_allowed(
    props: &Properties,
    allowed: &[PropertyId],
    packet: &str,
) -> Result<(), CodecError> {
    for (id, _) in props.iter() {
        if !allowed.contains(&id) {
            return Err(CodecError::Malformed(format!(
                "property {id:?} (0x{:02X}) is not valid in {packet} (MQTT 5 §2.2.2.2)",
                id as u8
            )));
        }
    }
    Ok(())
}

/// A Byte property that may only be 0 or 1 (e.g. MQTT 5 §3.1.2.11.6,
/// §3.1.2.11.7, §3.3.2.3.2): anything else is a Protocol Error.
pub(crate) fn check_boolean(props: &Properties, id: PropertyId) -> Result<(), CodecError> {
    match props.get(id) {
        Some(PropertyValue::Byte(0 | 1)) | None => Ok(()),
        Some(other) => Err(CodecError::Protocol(format!(
            "property {id:?} must be 0 or 1, got {other:?}"
        ))),
    }
}

/// Which properties the encoder writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Selection {
    /// All of them.
    All,
    /// All but Reason String and User Property: what a sender drops before
    /// giving up on a packet that exceeds the receiver's Maximum Packet Size
    /// (e.g. MQTT-3.2.2-19/20, MQTT-3.4.2-2/3, MQTT-3.14.2-3/4).
    WithoutDiagnostics,
    /// All but Topic Alias and Subscription Identifier: a PUBLISH forwarded
    /// to a subscriber, whose alias and identifiers are its own.
    WithoutHopFields,
}

impl Selection {
    fn keeps(self, id: PropertyId) -> bool {
        match self {
            Self::All => true,
            Self::WithoutDiagnostics => {
                !matches!(id, PropertyId::ReasonString | PropertyId::UserProperty)
            }
            Self::WithoutHopFields => !matches!(
                id,
                PropertyId::TopicAlias | PropertyId::SubscriptionIdentifier
            ),
        }
    }
}

/// The identifiers present in `props`, as a bit set indexed by identifier
/// (all identifiers are below 64).
fn present_ids(props: &Properties) -> u64 {
    props
        .iter()
        .fold(0u64, |mask, (id, _)| mask | 1u64 << (id as u8 & 63))
}

/// Calls `f` for each selected property, ordered by identifier so that the
/// output is deterministic (the crate keeps properties in a hash map).
fn for_each_selected(
    props: &Properties,
    selection: Selection,
    mut f: impl FnMut(PropertyId, &PropertyValue) -> Result<(), CodecError>,
) -> Result<(), CodecError> {
    if props.is_empty() {
        return Ok(());
    }
    let present = present_ids(props);
    for id in ALL_IDS {
        if present & (1u64 << (id as u8 & 63)) == 0 || !selection.keeps(id) {
            continue;
        }
        let values = props.get_all(id).unwrap_or_default();
        // The crate's `Properties::set_*` append: setting a property twice
        // (say a topic alias on a forwarded PUBLISH that still carries the
        // publisher's) would put it on the wire twice, a Protocol Error for
        // the receiver (MQTT 5 §2.2.2.2).
        if values.len() > 1 && !id.allows_multiple() {
            return Err(CodecError::Protocol(format!(
                "property {id:?} is set {} times; remove it before setting it again",
                values.len()
            )));
        }
        for value in values {
            f(id, value)?;
        }
    }
    Ok(())
}

/// Length of an encoded UTF-8 string or binary field, checking the limits
/// the receiver enforces (MQTT 5 §1.5.4, §1.5.6: at most 65,535 bytes;
/// MQTT-1.5.4-2: no U+0000).
pub(crate) fn string_len(s: &str, what: &str) -> Result<usize, CodecError> {
    if s.contains('\0') {
        return Err(CodecError::Malformed(format!(
            "{what} contains U+0000 (MQTT-1.5.4-2)"
        )));
    }
    binary_len(s.as_bytes(), what)
}

/// Length of an encoded binary field (MQTT 5 §1.5.6).
pub(crate) fn binary_len(b: &[u8], what: &str) -> Result<usize, CodecError> {
    if b.len() > usize::from(u16::MAX) {
        return Err(CodecError::Malformed(format!(
            "{what} is {} bytes, more than the 65,535 an MQTT string or binary field holds",
            b.len()
        )));
    }
    Ok(2 + b.len())
}

fn value_len(id: PropertyId, value: &PropertyValue) -> Result<usize, CodecError> {
    let what = "property value";
    Ok(match value {
        PropertyValue::Byte(_) => 1,
        PropertyValue::TwoByteInteger(_) => 2,
        PropertyValue::FourByteInteger(_) => 4,
        PropertyValue::VariableByteInteger(v) => {
            if *v > VARINT_MAX {
                return Err(CodecError::Malformed(format!(
                    "property {id:?} value {v} does not fit a Variable Byte Integer"
                )));
            }
            varint_len(*v)
        }
        PropertyValue::BinaryData(b) => binary_len(b, what)?,
        PropertyValue::Utf8String(s) => string_len(s, what)?,
        PropertyValue::Utf8StringPair(k, v) => string_len(k, what)? + string_len(v, what)?,
    })
}

/// Length of the selected properties, without the Property Length prefix.
/// Checks every value, so that writing them afterwards cannot fail.
pub(crate) fn content_len(props: &Properties, selection: Selection) -> Result<usize, CodecError> {
    let mut len = 0usize;
    for_each_selected(props, selection, |id, value| {
        // Every identifier is below 128: a one-byte Variable Byte Integer.
        len += 1 + value_len(id, value)?;
        Ok(())
    })?;
    if len > VARINT_MAX as usize {
        return Err(CodecError::Malformed(format!(
            "properties of {len} bytes do not fit a Variable Byte Integer"
        )));
    }
    Ok(len)
}

/// Length of the Property Length prefix plus `content_len` bytes.
pub(crate) fn with_prefix(content_len: usize) -> usize {
    // content_len was checked against VARINT_MAX by `content_len`.
    varint_len(u32::try_from(content_len).unwrap_or(u32::MAX)) + content_len
}

/// Writes Property Length and the selected properties. `content_len` must be
/// the value [`content_len`] returned for the same arguments.
pub(crate) fn put(
    out: &mut impl BufMut,
    props: &Properties,
    selection: Selection,
    content_len: usize,
) -> Result<(), CodecError> {
    put_varint(out, u32::try_from(content_len).unwrap_or(u32::MAX));
    for_each_selected(props, selection, |id, value| {
        out.put_u8(id as u8);
        match value {
            PropertyValue::Byte(v) => out.put_u8(*v),
            PropertyValue::TwoByteInteger(v) => out.put_u16(*v),
            PropertyValue::FourByteInteger(v) => out.put_u32(*v),
            PropertyValue::VariableByteInteger(v) => put_varint(out, *v),
            PropertyValue::BinaryData(b) => put_prefixed(out, b),
            PropertyValue::Utf8String(s) => put_prefixed(out, s.as_bytes()),
            PropertyValue::Utf8StringPair(k, v) => {
                put_prefixed(out, k.as_bytes());
                put_prefixed(out, v.as_bytes());
            }
        }
        Ok(())
    })
}

/// Writes a 2-byte length and the bytes; the length was checked by
/// [`string_len`] or [`binary_len`].
pub(crate) fn put_prefixed(out: &mut impl BufMut, bytes: &[u8]) {
    out.put_u16(u16::try_from(bytes.len()).unwrap_or(u16::MAX));
    out.put_slice(bytes);
}
