//! Telemetry uplinks (`devices/{id}/telemetry/up`), exactly the shapes the
//! server decodes (`rampart_proto::telemetry`):
//!
//! - one reading: `{"seq":42,"ts":1732550000123,"m":{"temperature":21.5}}`
//!   (`ts` only when the device had a clock);
//! - a batch: `{"batch":[reading, ...]}`.
//!
//! In CBOR the same maps, keys in the same order (`seq`, `ts`, `m`),
//! definite lengths and the narrowest exact float width (RFC 8949 §4.2.2).
//! Metric values are written in the measurement's order.

use core::fmt;

use super::out::{Out, cbor, json};
use super::{EncodeError, Format, MAX_BATCH, MAX_PAYLOAD};
use crate::measurement::{Measurement, Value};

/// Longest metric name the server accepts.
pub const MAX_NAME_LEN: usize = 64;

/// Why a metric-name table is not valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameTableError {
    /// The name at this index is not 1 to 64 of `a-z`, `0-9`, `_`, `.`.
    InvalidName(usize),
    /// The name at this index repeats an earlier one.
    DuplicateName(usize),
    /// More than 256 names (a measurement indexes them with a `u8`).
    TooMany,
}

impl fmt::Display for NameTableError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NameTableError::InvalidName(i) => write!(
                f,
                "metric name {i} is invalid: use 1 to 64 of a-z, 0-9, '_' and '.'"
            ),
            NameTableError::DuplicateName(i) => {
                write!(f, "metric name {i} repeats an earlier name")
            }
            NameTableError::TooMany => f.write_str("a device has at most 256 metric names"),
        }
    }
}

impl core::error::Error for NameTableError {}

/// The device's metric-name table, validated against the server's rules,
/// e.g. `["temperature", "humidity"]`; measurements refer to names by index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetricNames<'a>(&'a [&'a str]);

impl<'a> MetricNames<'a> {
    /// Checks every name (`[a-z0-9_.]{1,64}`, no repeats).
    pub fn new(names: &'a [&'a str]) -> Result<Self, NameTableError> {
        if names.len() > 256 {
            return Err(NameTableError::TooMany);
        }
        for (i, name) in names.iter().enumerate() {
            let valid = !name.is_empty()
                && name.len() <= MAX_NAME_LEN
                && name
                    .bytes()
                    .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_' | b'.'));
            if !valid {
                return Err(NameTableError::InvalidName(i));
            }
            if names.iter().take(i).any(|earlier| earlier == name) {
                return Err(NameTableError::DuplicateName(i));
            }
        }
        Ok(Self(names))
    }

    /// The name at `index`.
    pub fn get(&self, index: u8) -> Option<&'a str> {
        self.0.get(usize::from(index)).copied()
    }

    /// The index of `name`.
    pub fn index_of(&self, name: &str) -> Option<u8> {
        self.0
            .iter()
            .position(|n| *n == name)
            .and_then(|i| u8::try_from(i).ok())
    }

    /// How many names.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// What [`encode_batch`] wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Encoded {
    /// Bytes written.
    pub len: usize,
    /// Readings in the batch (the oldest ones given); acknowledge these.
    pub readings: usize,
}

fn write_reading(
    out: &mut Out<'_>,
    m: &Measurement,
    names: &MetricNames<'_>,
    format: Format,
) -> Result<(), EncodeError> {
    match format {
        Format::Json => {
            out.put(b"{\"seq\":")?;
            json::uint(out, m.seq())?;
            if let Some(ts) = m.ts_ms() {
                out.put(b",\"ts\":")?;
                json::uint(out, ts)?;
            }
            out.put(b",\"m\":{")?;
            for (i, metric) in m.metrics().enumerate() {
                let name = names
                    .get(metric.index)
                    .ok_or(EncodeError::UnknownMetric(metric.index))?;
                if i > 0 {
                    out.byte(b',')?;
                }
                // Valid metric names need no escaping.
                json::key(out, name)?;
                match metric.value {
                    Value::F32(v) => json::f32(out, v)?,
                    Value::F64(v) => json::f64(out, v)?,
                }
            }
            out.put(b"}}")?;
        }
        Format::Cbor => {
            let fields = if m.ts_ms().is_some() { 3 } else { 2 };
            cbor::head(out, cbor::MAJOR_MAP, fields)?;
            cbor::text(out, "seq")?;
            cbor::head(out, cbor::MAJOR_UINT, m.seq())?;
            if let Some(ts) = m.ts_ms() {
                cbor::text(out, "ts")?;
                cbor::head(out, cbor::MAJOR_UINT, ts)?;
            }
            cbor::text(out, "m")?;
            cbor::head(out, cbor::MAJOR_MAP, m.metric_count() as u64)?;
            for metric in m.metrics() {
                let name = names
                    .get(metric.index)
                    .ok_or(EncodeError::UnknownMetric(metric.index))?;
                cbor::text(out, name)?;
                match metric.value {
                    Value::F32(v) => cbor::f32(out, v)?,
                    Value::F64(v) => cbor::f64(out, v)?,
                }
            }
        }
    }
    Ok(())
}

/// Encodes one reading as `{"seq":…,"ts":…,"m":{…}}`; returns the length.
pub fn encode_reading(
    m: &Measurement,
    names: &MetricNames<'_>,
    format: Format,
    buf: &mut [u8],
) -> Result<usize, EncodeError> {
    let mut out = Out::new(buf);
    write_reading(&mut out, m, names, format)?;
    Ok(out.len())
}

/// Bytes around the readings of a batch of `k`.
fn batch_overhead(format: Format, k: usize) -> usize {
    match format {
        // `{"batch":[` + `]}` + the commas between readings.
        Format::Json => 12usize.saturating_add(k.saturating_sub(1)),
        // Map head, text "batch", array head.
        Format::Cbor => 7usize.saturating_add(cbor::head_len(k as u64)),
    }
}

/// Encodes the oldest readings as `{"batch":[…]}`: as many as fit in `buf`
/// (and in the server's 64 KiB limit), at most `max` (and at most 1,000);
/// returns the length and how many readings went in.
///
/// Readings must come in strictly increasing `seq` order (as from a
/// [`crate::ring::Ring`]); the batch ends before the first that is not, as
/// the server refuses a batch with a repeated `seq`. At least the first
/// reading must fit, else [`EncodeError::BufferTooSmall`].
pub fn encode_batch<'m, I>(
    readings: I,
    names: &MetricNames<'_>,
    format: Format,
    max: usize,
    buf: &mut [u8],
) -> Result<Encoded, EncodeError>
where
    I: IntoIterator<Item = &'m Measurement>,
    I::IntoIter: Clone,
{
    let readings = readings.into_iter();
    let budget = buf.len().min(MAX_PAYLOAD);
    let max = max.min(MAX_BATCH);

    // Pass 1: measure, to know how many fit (CBOR's array head comes first).
    let mut count = 0usize;
    let mut body = 0usize;
    let mut last_seq: Option<u64> = None;
    for m in readings.clone() {
        if count >= max || last_seq.is_some_and(|s| m.seq() <= s) {
            break;
        }
        let mut counter = Out::counter();
        write_reading(&mut counter, m, names, format)?;
        let body_next = body.saturating_add(counter.len());
        let next = count.saturating_add(1);
        if body_next.saturating_add(batch_overhead(format, next)) > budget {
            break;
        }
        body = body_next;
        count = next;
        last_seq = Some(m.seq());
    }
    if count == 0 {
        return Err(if readings.clone().next().is_none() || max == 0 {
            EncodeError::NoReadings
        } else {
            EncodeError::BufferTooSmall
        });
    }

    // Pass 2: write exactly those.
    let mut out = Out::new(buf);
    match format {
        Format::Json => out.put(b"{\"batch\":[")?,
        Format::Cbor => {
            cbor::head(&mut out, cbor::MAJOR_MAP, 1)?;
            cbor::text(&mut out, "batch")?;
            cbor::head(&mut out, cbor::MAJOR_ARRAY, count as u64)?;
        }
    }
    for (i, m) in readings.take(count).enumerate() {
        if i > 0 && format == Format::Json {
            out.byte(b',')?;
        }
        write_reading(&mut out, m, names, format)?;
    }
    if format == Format::Json {
        out.put(b"]}")?;
    }
    Ok(Encoded {
        len: out.len(),
        readings: count,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::measurement::Metric;
    use std::vec::Vec;

    const NAMES: &[&str] = &["temperature", "humidity"];

    fn names() -> MetricNames<'static> {
        MetricNames::new(NAMES).expect("valid")
    }

    fn reading(seq: u64, ts: Option<u64>) -> Measurement {
        Measurement::new(
            seq,
            ts,
            &[
                Metric::new(0, Value::F32(21.5)),
                Metric::new(1, Value::F64(40.2)),
            ],
        )
        .expect("valid")
    }

    fn json_of(m: &Measurement) -> std::string::String {
        let mut buf = [0u8; 256];
        let n = encode_reading(m, &names(), Format::Json, &mut buf).expect("fits");
        std::string::String::from_utf8(buf[..n].to_vec()).expect("utf-8")
    }

    #[test]
    fn single_reading_matches_the_documented_shape() {
        assert_eq!(
            json_of(&reading(42, Some(1_732_550_000_123))),
            r#"{"seq":42,"ts":1732550000123,"m":{"temperature":21.5,"humidity":40.2}}"#
        );
        assert_eq!(
            json_of(&reading(1, None)),
            r#"{"seq":1,"m":{"temperature":21.5,"humidity":40.2}}"#
        );
    }

    #[test]
    fn cbor_matches_the_documented_example() {
        // docs/payloads.md: {"seq": 42, "m": {"temperature": 21.5}}
        let m = Measurement::new(42, None, &[Metric::new(0, Value::F64(21.5))]).expect("valid");
        let mut buf = [0u8; 64];
        let n = encode_reading(&m, &names(), Format::Cbor, &mut buf).expect("fits");
        let mut expected = Vec::from([0xa2, 0x63]);
        expected.extend_from_slice(b"seq");
        expected.extend_from_slice(&[0x18, 0x2a, 0x61, b'm', 0xa1, 0x6b]);
        expected.extend_from_slice(b"temperature");
        expected.extend_from_slice(&[0xf9, 0x4d, 0x60]);
        assert_eq!(&buf[..n], &expected[..]);
    }

    #[test]
    fn batch_takes_what_fits_and_stops_at_a_repeated_seq() {
        let rs = [
            reading(1, None),
            reading(2, None),
            reading(3, None),
            reading(3, None),
        ];
        let mut buf = [0u8; 512];
        let e = encode_batch(&rs, &names(), Format::Json, 10, &mut buf).expect("fits");
        assert_eq!(e.readings, 3);
        let text = core::str::from_utf8(&buf[..e.len]).expect("utf-8");
        assert!(text.starts_with(r#"{"batch":[{"seq":1,"#), "{text}");
        assert!(text.ends_with(r#"}}]}"#), "{text}");

        let one = json_of(&rs[0]).len();
        // Room for exactly two readings plus the batch wrapper.
        let mut tight = std::vec![0u8; 12 + 2 * one + 1];
        let e = encode_batch(&rs, &names(), Format::Json, 10, &mut tight).expect("fits");
        assert_eq!((e.readings, e.len), (2, tight.len()));
        let e = encode_batch(&rs, &names(), Format::Cbor, 2, &mut buf).expect("fits");
        assert_eq!(e.readings, 2);
        assert_eq!(&buf[..7], &[0xa1, 0x65, b'b', b'a', b't', b'c', b'h']);
        assert_eq!(buf[7], 0x82);

        assert_eq!(
            encode_batch(&rs, &names(), Format::Json, 10, &mut [0u8; 20]),
            Err(EncodeError::BufferTooSmall)
        );
        assert_eq!(
            encode_batch(&rs[..0], &names(), Format::Json, 10, &mut buf),
            Err(EncodeError::NoReadings)
        );
        assert_eq!(
            encode_batch(&rs, &names(), Format::Json, 0, &mut buf),
            Err(EncodeError::NoReadings)
        );
    }

    #[test]
    fn output_is_deterministic() {
        let rs = [reading(7, Some(1_800_000_000_000)), reading(8, None)];
        for format in [Format::Json, Format::Cbor] {
            let (mut a, mut b) = ([0u8; 256], [0xffu8; 256]);
            let ea = encode_batch(&rs, &names(), format, 10, &mut a).expect("fits");
            let eb = encode_batch(&rs, &names(), format, 10, &mut b).expect("fits");
            assert_eq!(ea, eb);
            assert_eq!(a[..ea.len], b[..eb.len]);
        }
    }

    #[test]
    fn unknown_metric_index_is_an_error() {
        let m = Measurement::new(1, None, &[Metric::new(2, Value::F32(1.0))]).expect("valid");
        let mut buf = [0u8; 64];
        assert_eq!(
            encode_reading(&m, &names(), Format::Json, &mut buf),
            Err(EncodeError::UnknownMetric(2))
        );
        assert_eq!(
            encode_batch([&m], &names(), Format::Cbor, 1, &mut buf),
            Err(EncodeError::UnknownMetric(2))
        );
    }

    #[test]
    fn name_table_follows_the_server_rules() {
        assert_eq!(
            MetricNames::new(&["temperature", "Temp"]),
            Err(NameTableError::InvalidName(1))
        );
        assert_eq!(MetricNames::new(&[""]), Err(NameTableError::InvalidName(0)));
        let long = "a".repeat(65);
        assert_eq!(
            MetricNames::new(&[long.as_str()]),
            Err(NameTableError::InvalidName(0))
        );
        assert_eq!(
            MetricNames::new(&["a", "b", "a"]),
            Err(NameTableError::DuplicateName(2))
        );
        let n = names();
        assert_eq!(n.index_of("humidity"), Some(1));
        assert_eq!(n.get(1), Some("humidity"));
        assert_eq!(n.get(2), None);
        assert_eq!(n.len(), 2);
    }
}
