//! What the fuzz targets check, kept out of the `fuzz_target!` bodies so it
//! reads as ordinary code.

use bytes::BytesMut;
use rampart_broker::codec::{self, Decoder, Packet};

/// Largest packet the fuzzed decoders accept; small, so that size checks are
/// exercised too.
const MAX_PACKET_SIZE: u32 = 64 * 1024;
/// Topic Alias Maximum of the fuzzed decoders.
const MAX_TOPIC_ALIAS: u16 = 16;

/// A CONNECT for protocol level `level`: clean start, keep alive 60, client
/// id "fuzz", no MQTT 5 properties.
pub fn connect(level: u8) -> Vec<u8> {
    let mut body = vec![0x00, 0x04, b'M', b'Q', b'T', b'T', level, 0x02, 0x00, 0x3C];
    if level == codec::MQTT_5 {
        body.push(0x00);
    }
    body.extend_from_slice(&[0x00, 0x04, b'f', b'u', b'z', b'z']);
    let mut packet = vec![0x10, u8::try_from(body.len()).unwrap_or(u8::MAX)];
    packet.extend_from_slice(&body);
    packet
}

/// Feeds `data` to a fresh decoder (so it must start with a CONNECT), and to
/// decoders that already accepted an MQTT 5 and an MQTT 3.1.1 CONNECT.
pub fn decode_three_ways(data: &[u8]) {
    drain(Decoder::new(MAX_PACKET_SIZE, MAX_TOPIC_ALIAS), None, data);
    for level in [codec::MQTT_5, codec::MQTT_3_1_1] {
        let mut decoder = Decoder::new(MAX_PACKET_SIZE, MAX_TOPIC_ALIAS);
        let mut hello = BytesMut::from(&connect(level)[..]);
        match decoder.decode(&mut hello) {
            Ok(Some(Packet::Connect(_))) => {}
            other => panic!("the fixed CONNECT {level} did not decode: {other:?}"),
        }
        drain(decoder, Some(level), data);
    }
}

/// Decodes until an error or a need for more bytes, checking the buffer
/// contract and that every PUBLISH survives an encode/decode round trip.
fn drain(mut decoder: Decoder, level: Option<u8>, data: &[u8]) {
    let mut buf = BytesMut::from(data);
    loop {
        let before = buf.len();
        match decoder.decode(&mut buf) {
            Ok(Some(packet)) => {
                assert!(buf.len() < before, "a decoded packet consumed nothing");
                if let (Some(level), Packet::Publish(_)) = (level.or(decoder.version()), &packet) {
                    round_trip(&packet, level);
                }
            }
            Ok(None) => {
                assert_eq!(buf.len(), before, "Ok(None) consumed bytes");
                return;
            }
            Err(e) => {
                assert!(
                    matches!(e.reason_code(), 0x81 | 0x82 | 0x84 | 0x94 | 0x95),
                    "unexpected reason code for {e}"
                );
                return;
            }
        }
    }
}

/// A PUBLISH the decoder accepted is re-encoded for the same protocol level
/// and decoded again: it must come back unchanged.
fn round_trip(packet: &Packet, level: u8) {
    let Packet::Publish(original) = packet else {
        return;
    };
    let mut wire = BytesMut::from(&connect(level)[..]);
    let hello_len = wire.len();
    if let Err(e) = codec::encode(packet, level, None, &mut wire) {
        panic!("a decoded PUBLISH does not encode: {e}: {original:?}");
    }
    assert!(wire.len() > hello_len);
    let mut decoder = Decoder::new(u32::MAX, MAX_TOPIC_ALIAS);
    let again = decoder
        .decode(&mut wire)
        .and_then(|_| decoder.decode(&mut wire));
    let Ok(Some(Packet::Publish(again))) = again else {
        panic!("re-encoded PUBLISH does not decode: {again:?}");
    };
    assert_eq!(again.topic_name, original.topic_name);
    assert_eq!(again.packet_id, original.packet_id);
    assert_eq!(again.qos, original.qos);
    assert_eq!((again.retain, again.dup), (original.retain, original.dup));
    assert_eq!(again.payload, original.payload);
    assert_eq!(again.properties, original.properties);
}

/// Feeds `data` to every decoder of the control topics (`cert/up`,
/// `cert/down`, `bind/up`, `bind/down`): whatever decodes must come back
/// unchanged through its encoder.
pub fn control_round_trips(data: &[u8]) {
    use rampart_proto::control::{BindMessage, ClaimConfirmation, RenewalAnswer, RenewalRequest};
    if let Ok(r) = RenewalRequest::decode(data) {
        assert_eq!(RenewalRequest::decode(&r.encode()), Ok(r));
    }
    if let Ok(a) = RenewalAnswer::decode(data) {
        assert_eq!(RenewalAnswer::decode(&a.encode()), Ok(a));
    }
    if let Ok(c) = ClaimConfirmation::decode(data) {
        assert_eq!(ClaimConfirmation::decode(&c.encode()), Ok(c));
    }
    if let Ok(m) = BindMessage::decode(data) {
        assert_eq!(BindMessage::decode(&m.encode()), Ok(m));
    }
}

/// Feeds `data` to the device core's downlink parsers (`bind/down`,
/// `cert/down`, `state/down`, `cmd/down`, `ota/down`), as a device receives
/// them: no panic, and an `ota/down` offer keeps its decoded sizes within
/// what the parser promises.
pub fn device_downlinks(data: &[u8]) {
    use rampart_core::ota::manifest::MAX_MANIFEST_LEN;
    use rampart_core::payload::{
        OtaMessage, parse_bind, parse_certificate, parse_command, parse_ota, parse_state_request,
    };
    let _ = parse_bind(data);
    let _ = parse_certificate(data);
    let _ = parse_state_request(data);
    let _ = parse_command(data);
    let mut manifest = [0u8; MAX_MANIFEST_LEN];
    if let Ok(OtaMessage::Offer(offer)) = parse_ota(data, &mut manifest) {
        assert!(!offer.manifest.is_empty() && offer.manifest.len() <= MAX_MANIFEST_LEN);
    }
}

/// Feeds `data` to the firmware bundle decoders of `rampart_core::ota`: the
/// bundle head, full verification against a fixed trusted key, and the
/// persisted update state. Whatever decodes must re-encode unchanged.
pub fn ota_bundle_checks(data: &[u8]) {
    use rampart_core::ota::manifest::MAX_MANIFEST_LEN;
    use rampart_core::ota::update::{OtaState, STATE_LEN};
    use rampart_core::ota::{Limits, TrustedKey, parse_head, verify_bundle};

    // The Ed25519 public key of the all-7 seed: any valid key will do.
    let public = ed25519_dalek::SigningKey::from_bytes(&[7; 32])
        .verifying_key()
        .to_bytes();
    let keys = [TrustedKey::new(public)];
    let limits = Limits {
        max_image_size: 1 << 20,
        device_type: None,
    };
    if let Ok(head) = parse_head(data) {
        let mut buf = [0u8; MAX_MANIFEST_LEN];
        let n = head
            .manifest
            .encode(&mut buf)
            .expect("a decoded manifest encodes");
        assert_eq!(buf.get(..n), Some(head.manifest_bytes));
    }
    if let Ok(v) = verify_bundle(data, &keys, &limits) {
        assert_eq!(v.manifest().image_size, v.image().len() as u64);
    }
    if let Ok(state) = OtaState::from_bytes(data) {
        let mut buf = [0u8; STATE_LEN];
        state.to_bytes(&mut buf).expect("fits");
        assert_eq!(data.get(..STATE_LEN), Some(&buf[..]));
    }
}
