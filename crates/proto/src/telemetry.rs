//! Telemetry payloads on `devices/{id}/telemetry/up` (normative; examples
//! in `docs/payloads.md`).
//!
//! One reading: `{"seq": 42, "ts": 1732550000123, "m": {"temperature": 21.5}}`
//! (`ts` optional, Unix milliseconds), or a batch: `{"batch": [reading, ...]}`
//! where every reading has its own `seq`. The same shapes are accepted in
//! CBOR (MQTT 5 content type `application/cbor`, or a payload whose first
//! byte starts a CBOR map). Metric names are `[a-z0-9_.]{1,64}`; values are
//! finite numbers. Decoding is strict: unknown fields, duplicate metric
//! names, strings where numbers belong, NaN and infinities are refused with
//! a reason, never guessed at.

use std::borrow::Cow;
use std::collections::BTreeSet;
use std::fmt;

use compact_str::CompactString;
use serde::de::{MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

/// Limits applied while decoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest payload, in bytes.
    pub max_payload_bytes: usize,
    /// Most metrics in one reading.
    pub max_metrics: usize,
    /// Most readings in one batch.
    pub max_batch: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_payload_bytes: 64 * 1024,
            max_metrics: 64,
            max_batch: 1000,
        }
    }
}

/// A validated metric name: 1 to 64 characters of `[a-z0-9_.]`. Names of
/// up to 24 bytes (nearly all) are kept inline: every message carries a
/// few, and each is cloned for live listeners.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct MetricName(CompactString);

impl MetricName {
    /// Validates `s` as a metric name.
    pub fn parse(s: &str) -> Result<Self, PayloadError> {
        let ok = !s.is_empty()
            && s.len() <= 64
            && s.bytes()
                .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_' | b'.'));
        if ok {
            Ok(Self(CompactString::from(s)))
        } else {
            Err(PayloadError::BadMetricName(s.chars().take(80).collect()))
        }
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for MetricName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One decoded reading.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    /// The device's sequence number (strictly increasing per device).
    pub seq: u64,
    /// Device timestamp, Unix milliseconds, if it sent one.
    pub ts_ms: Option<i64>,
    /// Metric values, in the order sent.
    pub metrics: Vec<(MetricName, f64)>,
}

/// Wire encoding of a payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// JSON text.
    Json,
    /// CBOR (RFC 8949).
    Cbor,
}

/// Why a telemetry payload is refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PayloadError {
    /// Larger than [`Limits::max_payload_bytes`].
    #[error("payload is {size} bytes; at most {max} are accepted")]
    TooLarge {
        /// Its size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// Not valid JSON or CBOR of the expected shape.
    #[error("payload does not decode as {encoding:?}: {detail}")]
    Malformed {
        /// Which encoding was tried.
        encoding: Encoding,
        /// The decoder's message.
        detail: String,
    },
    /// Both a reading and a batch, or neither.
    #[error("payload must be a reading {{\"seq\", \"m\"}} or {{\"batch\": [...]}}, not {0}")]
    Shape(&'static str),
    /// A reading without `seq`.
    #[error("reading {index} has no \"seq\"")]
    MissingSeq {
        /// Position in the batch (0 for a single reading).
        index: usize,
    },
    /// A reading without metrics.
    #[error("reading {index} has no metrics")]
    NoMetrics {
        /// Position in the batch.
        index: usize,
    },
    /// A metric name outside `[a-z0-9_.]{1,64}`.
    #[error("metric name {0:?} is invalid: use 1 to 64 of a-z, 0-9, '_' and '.'")]
    BadMetricName(String),
    /// The same metric twice in one reading.
    #[error("metric {0:?} appears twice in one reading")]
    DuplicateMetric(String),
    /// NaN or an infinity.
    #[error("metric {0:?} is not a finite number")]
    NotFinite(String),
    /// More metrics than [`Limits::max_metrics`].
    #[error("reading has {count} metrics; at most {max} are accepted")]
    TooManyMetrics {
        /// How many.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// More readings than [`Limits::max_batch`].
    #[error("batch has {len} readings; at most {max} are accepted")]
    BatchTooLong {
        /// How many.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// `seq` repeated inside one batch.
    #[error("seq {0} appears twice in one batch")]
    DuplicateSeq(u64),
}

/// A metric name as sent: borrowed from a JSON payload when it holds no
/// escapes, owned otherwise (and always from CBOR). Decoding a payload so
/// allocates nothing per metric before its name is validated.
#[derive(Debug)]
struct Key<'a>(Cow<'a, str>);

impl AsRef<str> for Key<'_> {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Key<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Cow<'de, str>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a metric name")
            }
            fn visit_borrowed_str<E: serde::de::Error>(
                self,
                v: &'de str,
            ) -> Result<Self::Value, E> {
                Ok(Cow::Borrowed(v))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Cow::Owned(v.to_owned()))
            }
            fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(Cow::Owned(v))
            }
        }
        d.deserialize_str(V).map(Key)
    }
}

/// Metrics as sent: an object of name → number, and the first name sent
/// twice, if any.
#[derive(Debug)]
struct RawMetrics<K>(Vec<(K, f64)>, Option<String>);

impl<'de, K: Deserialize<'de> + AsRef<str>> Deserialize<'de> for RawMetrics<K> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<K>(std::marker::PhantomData<K>);
        impl<'de, K: Deserialize<'de> + AsRef<str>> Visitor<'de> for V<K> {
            type Value = RawMetrics<K>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object of metric name to number")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut metrics = Vec::with_capacity(map.size_hint().unwrap_or(4).min(64));
                while let Some(entry) = map.next_entry::<K, f64>()? {
                    metrics.push(entry);
                }
                let twice = first_repeated(&metrics).map(str::to_owned);
                Ok(RawMetrics(metrics, twice))
            }
        }
        d.deserialize_map(V(std::marker::PhantomData))
    }
}

/// The first name, in the order sent, that an earlier entry already had.
/// A handful of names are compared pairwise; a long list (hostile, or a
/// payload past `max_metrics` that is refused later) is sorted instead,
/// so the cost stays `n log n`.
fn first_repeated<K: AsRef<str>>(metrics: &[(K, f64)]) -> Option<&str> {
    const PAIRWISE: usize = 16;
    let name = |i: usize| metrics.get(i).map(|(k, _)| k.as_ref());
    if metrics.len() <= PAIRWISE {
        return (1..metrics.len())
            .find(|&i| (0..i).any(|j| name(j) == name(i)))
            .and_then(name);
    }
    let mut order: Vec<usize> = (0..metrics.len()).collect();
    // Stable: equal names keep the order they were sent in.
    order.sort_by_key(|&i| name(i));
    order
        .windows(2)
        .filter(|w| name(w[0]) == name(w[1]))
        .map(|w| w[1])
        .min()
        .and_then(name)
}

#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    bound(deserialize = "K: Deserialize<'de> + AsRef<str>")
)]
struct RawReading<K> {
    seq: Option<u64>,
    ts: Option<i64>,
    m: Option<RawMetrics<K>>,
}

#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    bound(deserialize = "K: Deserialize<'de> + AsRef<str>")
)]
struct RawPayload<K> {
    seq: Option<u64>,
    ts: Option<i64>,
    m: Option<RawMetrics<K>>,
    batch: Option<Vec<RawReading<K>>>,
}

/// Which encoding a payload uses: the MQTT 5 content type when given,
/// else a first byte that starts a CBOR map (major type 5).
pub fn detect(payload: &[u8], content_type: Option<&str>) -> Encoding {
    match content_type {
        Some(ct) if ct.eq_ignore_ascii_case("application/cbor") => Encoding::Cbor,
        Some(ct) if ct.to_ascii_lowercase().starts_with("application/json") => Encoding::Json,
        _ => match payload.first() {
            Some(0xa0..=0xbf) => Encoding::Cbor,
            _ => Encoding::Json,
        },
    }
}

/// Decodes and validates a telemetry payload into its readings.
pub fn decode(
    payload: &[u8],
    content_type: Option<&str>,
    limits: &Limits,
) -> Result<Vec<Reading>, PayloadError> {
    if payload.len() > limits.max_payload_bytes {
        return Err(PayloadError::TooLarge {
            size: payload.len(),
            max: limits.max_payload_bytes,
        });
    }
    let encoding = detect(payload, content_type);
    let malformed = |detail: String| PayloadError::Malformed { encoding, detail };
    match encoding {
        Encoding::Json => readings_of(
            serde_json::from_slice::<RawPayload<Key<'_>>>(payload)
                .map_err(|e| malformed(e.to_string()))?,
            limits,
        ),
        Encoding::Cbor => readings_of(
            ciborium::from_reader::<RawPayload<String>, _>(payload)
                .map_err(|e| malformed(e.to_string()))?,
            limits,
        ),
    }
}

/// Checks a decoded payload's shape and limits and validates its readings.
fn readings_of<K: AsRef<str>>(
    raw: RawPayload<K>,
    limits: &Limits,
) -> Result<Vec<Reading>, PayloadError> {
    let single = raw.seq.is_some() || raw.m.is_some() || raw.ts.is_some();
    match (raw.batch, single) {
        (Some(_), true) => Err(PayloadError::Shape("both")),
        (None, false) => Err(PayloadError::Shape("an empty object")),
        (Some(batch), false) => {
            if batch.is_empty() {
                return Err(PayloadError::Shape("an empty batch"));
            }
            if batch.len() > limits.max_batch {
                return Err(PayloadError::BatchTooLong {
                    len: batch.len(),
                    max: limits.max_batch,
                });
            }
            let mut seqs = BTreeSet::new();
            batch
                .into_iter()
                .enumerate()
                .map(|(index, r)| {
                    let seq = r.seq.ok_or(PayloadError::MissingSeq { index })?;
                    if !seqs.insert(seq) {
                        return Err(PayloadError::DuplicateSeq(seq));
                    }
                    reading_of(index, seq, r.ts, r.m, limits)
                })
                .collect()
        }
        (None, true) => {
            let seq = raw.seq.ok_or(PayloadError::MissingSeq { index: 0 })?;
            Ok(vec![reading_of(0, seq, raw.ts, raw.m, limits)?])
        }
    }
}

/// Validates the metrics of one reading (`index`: its position in a
/// batch) whose `seq` is known.
fn reading_of<K: AsRef<str>>(
    index: usize,
    seq: u64,
    ts_ms: Option<i64>,
    m: Option<RawMetrics<K>>,
    limits: &Limits,
) -> Result<Reading, PayloadError> {
    let m = m.ok_or(PayloadError::NoMetrics { index })?;
    if let Some(dup) = m.1 {
        return Err(PayloadError::DuplicateMetric(dup));
    }
    if m.0.is_empty() {
        return Err(PayloadError::NoMetrics { index });
    }
    if m.0.len() > limits.max_metrics {
        return Err(PayloadError::TooManyMetrics {
            count: m.0.len(),
            max: limits.max_metrics,
        });
    }
    let metrics =
        m.0.into_iter()
            .map(|(name, value)| {
                let name = name.as_ref();
                if !value.is_finite() {
                    return Err(PayloadError::NotFinite(name.to_owned()));
                }
                Ok((MetricName::parse(name)?, value))
            })
            .collect::<Result<_, _>>()?;
    Ok(Reading {
        seq,
        ts_ms,
        metrics,
    })
}

/// Earliest device timestamp believed: 2020-01-01T00:00:00Z.
pub const EARLIEST_TS_MS: i64 = 1_577_836_800_000;
/// How far in the future a device clock may run.
pub const MAX_FUTURE_MS: i64 = 5 * 60 * 1000;

/// What happened to a reading's timestamp.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timestamp {
    /// The device's timestamp, believed.
    Device(i64),
    /// No timestamp sent: the receive time.
    Received(i64),
    /// The device's timestamp was implausible (before 2020 or more than 5
    /// minutes ahead): replaced by the receive time, and flagged.
    Replaced {
        /// The receive time now used.
        at: i64,
        /// What the device said.
        claimed: i64,
    },
}

impl Timestamp {
    /// Decides the timestamp of a reading received at `received_ms`.
    pub fn resolve(ts_ms: Option<i64>, received_ms: i64) -> Self {
        match ts_ms {
            None => Timestamp::Received(received_ms),
            Some(t) if t < EARLIEST_TS_MS || t > received_ms.saturating_add(MAX_FUTURE_MS) => {
                Timestamp::Replaced {
                    at: received_ms,
                    claimed: t,
                }
            }
            Some(t) => Timestamp::Device(t),
        }
    }

    /// The timestamp to store.
    pub fn millis(self) -> i64 {
        match self {
            Timestamp::Device(t) | Timestamp::Received(t) | Timestamp::Replaced { at: t, .. } => t,
        }
    }
}

#[derive(Serialize)]
struct OutReading<'a> {
    seq: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    ts: Option<i64>,
    m: OutMetrics<'a>,
}

struct OutMetrics<'a>(&'a [(MetricName, f64)]);

impl Serialize for OutMetrics<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in self.0 {
            map.serialize_entry(k.as_str(), v)?;
        }
        map.end()
    }
}

#[derive(Serialize)]
struct OutBatch<'a> {
    batch: Vec<OutReading<'a>>,
}

fn out(r: &Reading) -> OutReading<'_> {
    OutReading {
        seq: r.seq,
        ts: r.ts_ms,
        m: OutMetrics(&r.metrics),
    }
}

/// Encodes readings: one reading as itself, several as a batch.
pub fn encode(readings: &[Reading], encoding: Encoding) -> Vec<u8> {
    let mut buf = Vec::new();
    let _ = match (readings, encoding) {
        ([one], Encoding::Json) => serde_json::to_writer(&mut buf, &out(one)).map_err(|_| ()),
        ([one], Encoding::Cbor) => ciborium::into_writer(&out(one), &mut buf).map_err(|_| ()),
        (many, Encoding::Json) => serde_json::to_writer(
            &mut buf,
            &OutBatch {
                batch: many.iter().map(out).collect(),
            },
        )
        .map_err(|_| ()),
        (many, Encoding::Cbor) => ciborium::into_writer(
            &OutBatch {
                batch: many.iter().map(out).collect(),
            },
            &mut buf,
        )
        .map_err(|_| ()),
    };
    buf
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn limits() -> Limits {
        Limits::default()
    }

    fn name(s: &str) -> MetricName {
        MetricName::parse(s).expect("valid name")
    }

    #[test]
    fn decodes_the_design_examples() {
        let one = decode(
            br#"{"seq":42,"ts":1732550000123,"m":{"temperature":21.5,"humidity":40.2}}"#,
            None,
            &limits(),
        )
        .expect("valid");
        assert_eq!(
            one,
            [Reading {
                seq: 42,
                ts_ms: Some(1_732_550_000_123),
                metrics: vec![(name("temperature"), 21.5), (name("humidity"), 40.2)],
            }]
        );
        let batch = decode(
            br#"{"batch":[{"seq":1,"m":{"t":1}},{"seq":2,"ts":5,"m":{"t":2}}]}"#,
            None,
            &limits(),
        )
        .expect("valid batch");
        assert_eq!(batch.len(), 2);
        assert_eq!(batch[1].ts_ms, Some(5));
        assert_eq!(batch[0].ts_ms, None);
    }

    #[test]
    fn refuses_bad_payloads_with_their_reason() {
        let cases: &[(&[u8], &str)] = &[
            (b"", "does not decode"),
            (b"not json", "does not decode"),
            (br#"{"seq":1,"m":{"t":NaN}}"#, "does not decode"),
            (br#"{"seq":1,"m":{"t":1e999}}"#, "does not decode"),
            (br#"{"seq":1,"m":{"t":"21.5"}}"#, "does not decode"),
            (br#"{"seq":-1,"m":{"t":1}}"#, "does not decode"),
            (br#"{"seq":1,"m":{"t":1},"extra":true}"#, "does not decode"),
            (br#"{"m":{"t":1}}"#, "no \"seq\""),
            (br#"{"seq":1}"#, "no metrics"),
            (br#"{"seq":1,"m":{}}"#, "no metrics"),
            (br#"{"seq":1,"m":{"Temp":1}}"#, "metric name"),
            (br#"{"seq":1,"m":{"t; DROP TABLE x":1}}"#, "metric name"),
            (br#"{"seq":1,"m":{"t\u0000":1}}"#, "metric name"),
            (br#"{"seq":1,"m":{"t":1,"t":2}}"#, "twice"),
            (br#"{"seq":1,"m":{"t":1},"batch":[]}"#, "not both"),
            (br#"{}"#, "empty object"),
            (br#"{"batch":[]}"#, "empty batch"),
            (
                br#"{"batch":[{"seq":1,"m":{"t":1}},{"seq":1,"m":{"t":2}}]}"#,
                "seq 1 appears twice",
            ),
        ];
        for (payload, expect) in cases {
            let err = decode(payload, None, &limits())
                .expect_err("refused")
                .to_string();
            assert!(
                err.contains(expect),
                "{:?}: {err}",
                String::from_utf8_lossy(payload)
            );
        }
    }

    #[test]
    fn a_name_sent_twice_is_found_in_long_readings_and_escaped_names() {
        // More names than are compared pairwise: "m3" is sent again at
        // position 18, "m5" at 17, so "m5" is reported.
        let mut names: Vec<String> = (0..17).map(|i| format!("m{i}")).collect();
        names.push("m5".into());
        names.push("m3".into());
        let body: Vec<String> = names.iter().map(|n| format!("\"{n}\":1")).collect();
        let json = format!(r#"{{"seq":1,"m":{{{}}}}}"#, body.join(","));
        assert_eq!(
            decode(json.as_bytes(), None, &limits()),
            Err(PayloadError::DuplicateMetric("m5".into()))
        );
        // An escaped name is the same name as its plain spelling.
        assert_eq!(
            decode(
                br#"{"seq":1,"m":{"temp":1,"t\u0065mp":2}}"#,
                None,
                &limits()
            ),
            Err(PayloadError::DuplicateMetric("temp".into()))
        );
        let ok = decode(br#"{"seq":1,"m":{"t\u0065mp":2}}"#, None, &limits())
            .expect("an escaped name decodes");
        assert_eq!(ok[0].metrics, vec![(name("temp"), 2.0)]);
    }

    #[test]
    fn enforces_limits() {
        let big = vec![b' '; 70 * 1024];
        assert!(matches!(
            decode(&big, None, &limits()),
            Err(PayloadError::TooLarge { .. })
        ));
        let many: String = (0..65)
            .map(|i| format!("\"m{i}\":1"))
            .collect::<Vec<_>>()
            .join(",");
        let err = decode(
            format!(r#"{{"seq":1,"m":{{{many}}}}}"#).as_bytes(),
            None,
            &limits(),
        );
        assert!(matches!(
            err,
            Err(PayloadError::TooManyMetrics { count: 65, .. })
        ));
        let small = Limits {
            max_batch: 2,
            ..limits()
        };
        let err = decode(
            br#"{"batch":[{"seq":1,"m":{"t":1}},{"seq":2,"m":{"t":1}},{"seq":3,"m":{"t":1}}]}"#,
            None,
            &small,
        );
        assert!(matches!(
            err,
            Err(PayloadError::BatchTooLong { len: 3, max: 2 })
        ));
        let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        assert!(matches!(
            decode(deep.as_bytes(), None, &limits()),
            Err(PayloadError::Malformed { .. })
        ));
    }

    #[test]
    fn cbor_is_detected_by_content_type_or_first_byte() {
        let r = Reading {
            seq: 7,
            ts_ms: Some(1_800_000_000_000),
            metrics: vec![(name("humidity"), 40.5)],
        };
        let cbor = encode(std::slice::from_ref(&r), Encoding::Cbor);
        assert_eq!(detect(&cbor, None), Encoding::Cbor);
        assert_eq!(
            decode(&cbor, None, &limits()).expect("cbor"),
            std::slice::from_ref(&r)
        );
        assert_eq!(
            decode(&cbor, Some("application/cbor"), &limits()).expect("cbor"),
            [r]
        );
        // Truncated CBOR is refused, not guessed.
        let err = decode(&cbor[..cbor.len() - 3], Some("application/cbor"), &limits());
        assert!(matches!(
            err,
            Err(PayloadError::Malformed {
                encoding: Encoding::Cbor,
                ..
            })
        ));
        // NaN can be written in CBOR; it is still refused.
        let mut raw = Vec::new();
        #[derive(Serialize)]
        struct N {
            seq: u64,
            m: std::collections::BTreeMap<String, f64>,
        }
        ciborium::into_writer(
            &N {
                seq: 1,
                m: [("t".to_owned(), f64::NAN)].into(),
            },
            &mut raw,
        )
        .expect("cbor");
        assert!(matches!(
            decode(&raw, None, &limits()),
            Err(PayloadError::NotFinite(_))
        ));
    }

    #[test]
    fn implausible_timestamps_are_replaced_and_flagged() {
        let now = 1_800_000_000_000;
        assert_eq!(Timestamp::resolve(None, now), Timestamp::Received(now));
        assert_eq!(
            Timestamp::resolve(Some(now - 1000), now),
            Timestamp::Device(now - 1000)
        );
        assert_eq!(
            Timestamp::resolve(Some(now + MAX_FUTURE_MS), now),
            Timestamp::Device(now + MAX_FUTURE_MS)
        );
        assert_eq!(
            Timestamp::resolve(Some(now + MAX_FUTURE_MS + 1), now),
            Timestamp::Replaced {
                at: now,
                claimed: now + MAX_FUTURE_MS + 1
            }
        );
        assert_eq!(Timestamp::resolve(Some(1000), now).millis(), now);
    }

    fn reading() -> impl Strategy<Value = Reading> {
        (
            any::<u64>(),
            prop::option::of(EARLIEST_TS_MS..4_000_000_000_000i64),
            prop::collection::btree_map("[a-z0-9_.]{1,20}", -1e12f64..1e12, 1..8),
        )
            .prop_map(|(seq, ts_ms, m)| Reading {
                seq,
                ts_ms,
                metrics: m.into_iter().map(|(k, v)| (name(&k), v)).collect(),
            })
    }

    proptest! {
        #[test]
        fn decode_inverts_encode(
            readings in prop::collection::vec(reading(), 1..5),
            cbor in any::<bool>(),
        ) {
            let mut seen = BTreeSet::new();
            let readings: Vec<Reading> = readings.into_iter().filter(|r| seen.insert(r.seq)).collect();
            let enc = if cbor { Encoding::Cbor } else { Encoding::Json };
            let bytes = encode(&readings, enc);
            prop_assert_eq!(decode(&bytes, None, &limits()).expect("round trip"), readings);
        }

        #[test]
        fn the_first_repeated_name_is_the_first_sent_again(
            names in prop::collection::vec(0u8..24, 0..40),
        ) {
            let metrics: Vec<(String, f64)> =
                names.iter().map(|n| (format!("m{n}"), 1.0)).collect();
            let expected = (0..metrics.len())
                .find(|&i| metrics[..i].iter().any(|(k, _)| *k == metrics[i].0))
                .map(|i| metrics[i].0.as_str());
            prop_assert_eq!(first_repeated(&metrics), expected);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode(&bytes, None, &limits());
            let _ = decode(&bytes, Some("application/cbor"), &limits());
        }
    }
}
