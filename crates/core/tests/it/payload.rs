//! What the core encodes is exactly what the server's decoder
//! (`rampart_proto::telemetry::decode`) accepts and reads back.

use proptest::prelude::*;

use crate::strategies;
use rampart_core::measurement::{Measurement, Metric, Value};
use rampart_core::payload::{Format, MetricNames, encode_batch, encode_reading};
use rampart_proto::telemetry::{self, Limits, Reading};

const NAMES: &[&str] = &["temperature", "humidity", "pressure", "vbat.mv", "rssi_dbm"];

fn names() -> MetricNames<'static> {
    MetricNames::new(NAMES).expect("valid table")
}

fn measurement() -> impl Strategy<Value = Measurement> {
    strategies::measurement(NAMES.len() as u8)
}

/// The server's reading matches the device's: same seq, ts, names, order,
/// and values (an f32 reads back as exactly that f32).
fn assert_same(device: &Measurement, server: &Reading) -> Result<(), TestCaseError> {
    prop_assert_eq!(server.seq, device.seq());
    prop_assert_eq!(server.ts_ms, device.ts_ms().map(|t| t as i64));
    prop_assert_eq!(server.metrics.len(), device.metric_count());
    for (m, (name, v)) in device.metrics().zip(&server.metrics) {
        prop_assert_eq!(name.as_str(), NAMES[usize::from(m.index)]);
        match m.value {
            Value::F32(x) => prop_assert_eq!(
                (*v as f32).to_bits(),
                x.to_bits(),
                "f32 {} came back as {}",
                x,
                v
            ),
            Value::F64(x) => {
                prop_assert_eq!(v.to_bits(), x.to_bits(), "f64 {} came back as {}", x, v)
            }
        }
    }
    Ok(())
}

fn decode(bytes: &[u8]) -> Vec<Reading> {
    telemetry::decode(bytes, None, &Limits::default())
        .unwrap_or_else(|e| panic!("server refused {:?}: {e}", String::from_utf8_lossy(bytes)))
}

proptest! {
    #[test]
    fn server_reads_back_a_single_reading(m in measurement(), cbor in any::<bool>()) {
        let format = if cbor { Format::Cbor } else { Format::Json };
        let mut buf = [0u8; 1024];
        let n = encode_reading(&m, &names(), format, &mut buf).expect("fits");
        let back = decode(&buf[..n]);
        prop_assert_eq!(back.len(), 1);
        assert_same(&m, &back[0])?;
        prop_assert_eq!(telemetry::detect(&buf[..n], None), if cbor { telemetry::Encoding::Cbor } else { telemetry::Encoding::Json });
    }

    #[test]
    fn server_reads_back_a_batch(
        ms in prop::collection::vec(measurement(), 1..20),
        cbor in any::<bool>(),
        room in 100usize..4096,
    ) {
        // A batch is in increasing seq order, as the ring holds it.
        let mut ms = ms;
        ms.sort_by_key(Measurement::seq);
        ms.dedup_by_key(|m| m.seq());
        let format = if cbor { Format::Cbor } else { Format::Json };
        let mut buf = vec![0u8; room];
        match encode_batch(&ms, &names(), format, usize::MAX, &mut buf) {
            Ok(e) => {
                prop_assert!(e.readings >= 1 && e.readings <= ms.len());
                let back = decode(&buf[..e.len]);
                prop_assert_eq!(back.len(), e.readings);
                for (m, r) in ms.iter().zip(&back) {
                    assert_same(m, r)?;
                }
                // It took as many as fit: one more would not have.
                if e.readings < ms.len() {
                    let mut bigger = vec![0u8; 64 * 1024];
                    let all = encode_batch(&ms[..=e.readings], &names(), format, usize::MAX, &mut bigger).expect("fits");
                    prop_assert!(all.len > room, "{} readings fit in {} bytes but only {} were taken", e.readings + 1, room, e.readings);
                }
            }
            Err(rampart_core::payload::EncodeError::BufferTooSmall) => {
                let mut one = vec![0u8; 1024];
                let single = encode_reading(&ms[0], &names(), format, &mut one).expect("fits");
                // The first reading inside the batch wrapper (`{"batch":[…]}`,
                // or the CBOR map, key and one-byte array head) does not fit.
                let wrapper = if cbor { 8 } else { 12 };
                prop_assert!(single + wrapper > room, "{single} byte reading did not fit in {room}");
            }
            Err(e) => prop_assert!(false, "unexpected {e}"),
        }
    }

    #[test]
    fn a_resend_is_byte_identical(ms in prop::collection::vec(measurement(), 1..5), cbor in any::<bool>()) {
        let format = if cbor { Format::Cbor } else { Format::Json };
        let (mut a, mut b) = ([0u8; 2048], [0u8; 2048]);
        for m in &ms {
            let na = encode_reading(m, &names(), format, &mut a).expect("fits");
            let nb = encode_reading(m, &names(), format, &mut b).expect("fits");
            prop_assert_eq!(&a[..na], &b[..nb]);
        }
    }
}

#[test]
fn the_documented_examples_decode_as_documented() {
    let m = Measurement::new(
        42,
        Some(1_732_550_000_123),
        &[
            Metric::new(0, Value::F64(21.5)),
            Metric::new(1, Value::F64(40.2)),
        ],
    )
    .expect("valid");
    let mut buf = [0u8; 256];
    let n = encode_reading(&m, &names(), Format::Json, &mut buf).expect("fits");
    assert_eq!(
        &buf[..n],
        br#"{"seq":42,"ts":1732550000123,"m":{"temperature":21.5,"humidity":40.2}}"#
    );
    // The server's own encoder gives the same CBOR bytes.
    let n = encode_reading(&m, &names(), Format::Cbor, &mut buf).expect("fits");
    let server = telemetry::encode(&decode(&buf[..n]), telemetry::Encoding::Cbor);
    assert_eq!(&buf[..n], &server[..]);
}
