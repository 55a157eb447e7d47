//! One measurement as the device buffers it: a sequence number, an optional
//! device timestamp and up to [`MAX_METRICS`] values, each naming its metric
//! by index into the device's metric-name table
//! ([`crate::payload::MetricNames`], e.g. `["temperature", "humidity"]`).
//!
//! The entry has a fixed size so the ring buffer has a fixed byte layout.
//! Construction checks what the server would refuse (`docs/payloads.md`):
//! `seq` and `ts` at most 2⁶³−1, at least one metric, no metric twice, only
//! finite values. A `Measurement` therefore always encodes to a payload the
//! server accepts (given a valid name table).

use core::fmt;

/// Most metric values in one measurement.
pub const MAX_METRICS: usize = 4;

/// Largest `seq` and `ts` the server accepts (2⁶³−1, `docs/payloads.md`).
pub const MAX_WIRE_INT: u64 = i64::MAX as u64;

/// A metric value, kept at the precision the sensor produced.
///
/// An `F32` goes on the wire as the shortest decimal (JSON) or the smallest
/// exact CBOR float; the server reads it back as the same `f32`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value {
    /// Single precision (most sensors).
    F32(f32),
    /// Double precision.
    F64(f64),
}

impl Value {
    /// Whether the value is a finite number (the only kind sent).
    pub fn is_finite(self) -> bool {
        match self {
            Value::F32(v) => v.is_finite(),
            Value::F64(v) => v.is_finite(),
        }
    }

    /// The value widened to `f64`.
    pub fn as_f64(self) -> f64 {
        match self {
            Value::F32(v) => f64::from(v),
            Value::F64(v) => v,
        }
    }
}

/// One metric value: which metric (index into the name table) and its value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Metric {
    /// Index into the device's metric-name table.
    pub index: u8,
    /// The value.
    pub value: Value,
}

impl Metric {
    /// A metric value for table entry `index`.
    pub const fn new(index: u8, value: Value) -> Self {
        Self { index, value }
    }
}

/// Why a measurement cannot be made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MeasurementError {
    /// `seq` above 2⁶³−1.
    SeqTooLarge,
    /// Timestamp above 2⁶³−1 ms.
    TimestampTooLarge,
    /// No metric values.
    NoMetrics,
    /// More than [`MAX_METRICS`] values.
    TooManyMetrics,
    /// The same metric index twice.
    DuplicateMetric(u8),
    /// A NaN or infinite value (for the metric with this index).
    NotFinite(u8),
}

impl fmt::Display for MeasurementError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MeasurementError::SeqTooLarge => {
                f.write_str("seq is above 2^63-1, which the server refuses")
            }
            MeasurementError::TimestampTooLarge => {
                f.write_str("timestamp is above 2^63-1 ms, which the server refuses")
            }
            MeasurementError::NoMetrics => {
                f.write_str("a measurement needs at least one metric value")
            }
            MeasurementError::TooManyMetrics => {
                write!(f, "a measurement holds at most {MAX_METRICS} metric values")
            }
            MeasurementError::DuplicateMetric(i) => {
                write!(f, "metric {i} appears twice in one measurement")
            }
            MeasurementError::NotFinite(i) => {
                write!(
                    f,
                    "metric {i} is NaN or infinite; only finite values are sent (skip failed reads)"
                )
            }
        }
    }
}

impl core::error::Error for MeasurementError {}

/// One buffered reading; always valid for the wire (see the module doc).
///
/// Stored compactly (56 bytes) because a simulator holds a ring of these
/// for each of thousands of devices; [`Measurement::metrics`] yields the
/// values as [`Metric`]s.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Measurement {
    seq: u64,
    /// Valid only when `has_ts`.
    ts_ms: u64,
    /// IEEE bits of each value (an f32's bits in the low half).
    bits: [u64; MAX_METRICS],
    indices: [u8; MAX_METRICS],
    /// Bit `i` set: value `i` is an f64.
    wide: u8,
    count: u8,
    has_ts: bool,
}

impl Measurement {
    /// An unused ring slot (never handed out).
    pub(crate) const EMPTY: Measurement = Measurement {
        seq: 0,
        ts_ms: 0,
        bits: [0; MAX_METRICS],
        indices: [0; MAX_METRICS],
        wide: 0,
        count: 0,
        has_ts: false,
    };

    /// Checks and builds a measurement.
    pub fn new(seq: u64, ts_ms: Option<u64>, metrics: &[Metric]) -> Result<Self, MeasurementError> {
        if seq > MAX_WIRE_INT {
            return Err(MeasurementError::SeqTooLarge);
        }
        if ts_ms.is_some_and(|t| t > MAX_WIRE_INT) {
            return Err(MeasurementError::TimestampTooLarge);
        }
        if metrics.is_empty() {
            return Err(MeasurementError::NoMetrics);
        }
        if metrics.len() > MAX_METRICS {
            return Err(MeasurementError::TooManyMetrics);
        }
        let mut out = Self {
            seq,
            ts_ms: ts_ms.unwrap_or(0),
            has_ts: ts_ms.is_some(),
            ..Self::EMPTY
        };
        for (i, m) in metrics.iter().enumerate() {
            if !m.value.is_finite() {
                return Err(MeasurementError::NotFinite(m.index));
            }
            if metrics
                .iter()
                .take(i)
                .any(|earlier| earlier.index == m.index)
            {
                return Err(MeasurementError::DuplicateMetric(m.index));
            }
            let (bits, wide) = match m.value {
                Value::F32(v) => (u64::from(v.to_bits()), 0u8),
                Value::F64(v) => (v.to_bits(), 1u8),
            };
            if let (Some(b), Some(x)) = (out.bits.get_mut(i), out.indices.get_mut(i)) {
                *b = bits;
                *x = m.index;
            }
            // i < MAX_METRICS ≤ 8, so the shift stays inside the byte.
            out.wide |= wide.checked_shl(u32::try_from(i).unwrap_or(0)).unwrap_or(0);
            out.count = out.count.saturating_add(1);
        }
        Ok(out)
    }

    /// The sequence number.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// The device timestamp (Unix milliseconds), if the device had a clock.
    pub fn ts_ms(&self) -> Option<u64> {
        self.has_ts.then_some(self.ts_ms)
    }

    /// How many metric values it holds (1 to [`MAX_METRICS`]).
    pub fn metric_count(&self) -> usize {
        usize::from(self.count)
    }

    /// The metric values, in the order given.
    pub fn metrics(&self) -> Metrics<'_> {
        Metrics { m: self, next: 0 }
    }

    /// Value `i`, if there is one.
    fn metric(&self, i: usize) -> Option<Metric> {
        if i >= self.metric_count() {
            return None;
        }
        let bits = *self.bits.get(i)?;
        let index = *self.indices.get(i)?;
        let wide = self.wide.checked_shr(u32::try_from(i).ok()?).unwrap_or(0) & 1 == 1;
        let value = if wide {
            Value::F64(f64::from_bits(bits))
        } else {
            Value::F32(f32::from_bits(u32::try_from(bits).ok()?))
        };
        Some(Metric { index, value })
    }
}

/// The metric values of a [`Measurement`], in order.
#[derive(Debug, Clone)]
pub struct Metrics<'a> {
    m: &'a Measurement,
    next: usize,
}

impl Iterator for Metrics<'_> {
    type Item = Metric;

    fn next(&mut self) -> Option<Metric> {
        let item = self.m.metric(self.next)?;
        self.next = self.next.saturating_add(1);
        Some(item)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = self.m.metric_count().saturating_sub(self.next);
        (left, Some(left))
    }
}

impl ExactSizeIterator for Metrics<'_> {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_what_the_server_would_refuse() {
        let t = Metric::new(0, Value::F32(21.0));
        let h = Metric::new(1, Value::F64(40.5));
        assert_eq!(
            Measurement::new(MAX_WIRE_INT + 1, None, &[t]),
            Err(MeasurementError::SeqTooLarge)
        );
        assert_eq!(
            Measurement::new(1, Some(u64::MAX), &[t]),
            Err(MeasurementError::TimestampTooLarge)
        );
        assert_eq!(
            Measurement::new(1, None, &[]),
            Err(MeasurementError::NoMetrics)
        );
        assert_eq!(
            Measurement::new(1, None, &[t, h, t]),
            Err(MeasurementError::DuplicateMetric(0))
        );
        assert_eq!(
            Measurement::new(
                1,
                None,
                &[
                    t,
                    h,
                    Metric::new(2, Value::F32(0.0)),
                    Metric::new(3, Value::F32(0.0)),
                    Metric::new(4, Value::F32(0.0))
                ]
            ),
            Err(MeasurementError::TooManyMetrics)
        );
        assert_eq!(
            Measurement::new(1, None, &[Metric::new(5, Value::F64(f64::NAN))]),
            Err(MeasurementError::NotFinite(5))
        );
        assert_eq!(
            Measurement::new(1, None, &[Metric::new(2, Value::F32(f32::NEG_INFINITY))]),
            Err(MeasurementError::NotFinite(2))
        );
    }

    #[test]
    fn keeps_what_it_was_given() {
        let t = Metric::new(0, Value::F32(21.0));
        let h = Metric::new(1, Value::F64(40.5));
        let m = Measurement::new(MAX_WIRE_INT, Some(1_732_550_000_123), &[t, h]).expect("valid");
        assert_eq!(m.seq(), MAX_WIRE_INT);
        assert_eq!(m.ts_ms(), Some(1_732_550_000_123));
        assert_eq!(m.metrics().collect::<std::vec::Vec<_>>(), [t, h]);
        assert_eq!(m.metric_count(), 2);
        assert_eq!(core::mem::size_of::<Measurement>(), 56);
    }
}
