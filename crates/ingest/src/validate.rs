//! Step 2, validate: decide each reading's timestamp and check what the
//! decoder cannot (sequence numbers fit the store's signed 64-bit column).

use rampart_proto::ingest::{Rejection, RejectionKind};
use rampart_proto::telemetry::{Reading, Timestamp};
use rampart_store::telemetry::FLAG_TS_REPLACED;

/// A reading with its timestamp decided.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidReading {
    /// The decoded reading, as the device sent it.
    pub reading: Reading,
    /// The timestamp to store.
    pub ts_ms: i64,
    /// Flags to store ([`FLAG_TS_REPLACED`]).
    pub flags: u32,
}

/// Largest accepted `seq`: 2^63 - 1.
pub const MAX_SEQ: u64 = i64::MAX as u64;

/// Validates decoded readings received at `received_ms`.
pub fn validate(readings: Vec<Reading>, received_ms: i64) -> Result<Vec<ValidReading>, Rejection> {
    readings
        .into_iter()
        .map(|reading| {
            if reading.seq > MAX_SEQ {
                return Err(Rejection {
                    kind: RejectionKind::PayloadFormatInvalid,
                    detail: format!("seq {} is larger than 2^63-1", reading.seq),
                });
            }
            let ts = Timestamp::resolve(reading.ts_ms, received_ms);
            let flags = match ts {
                Timestamp::Replaced { .. } => FLAG_TS_REPLACED,
                _ => 0,
            };
            Ok(ValidReading {
                ts_ms: ts.millis(),
                flags,
                reading,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rampart_proto::telemetry::{EARLIEST_TS_MS, MetricName};

    fn r(seq: u64, ts: Option<i64>) -> Reading {
        Reading {
            seq,
            ts_ms: ts,
            metrics: vec![(MetricName::parse("t").expect("name"), 1.0)],
        }
    }

    #[test]
    fn implausible_timestamps_are_replaced_and_flagged() {
        let now = 1_800_000_000_000;
        let v = validate(
            vec![
                r(1, Some(now - 1000)),
                r(2, None),
                r(3, Some(EARLIEST_TS_MS - 1)),
                r(4, Some(now + 6 * 60_000)),
            ],
            now,
        )
        .expect("valid");
        let got: Vec<_> = v.iter().map(|v| (v.ts_ms, v.flags)).collect();
        assert_eq!(
            got,
            vec![
                (now - 1000, 0),
                (now, 0),
                (now, FLAG_TS_REPLACED),
                (now, FLAG_TS_REPLACED)
            ]
        );
    }

    #[test]
    fn sequence_numbers_beyond_i64_are_refused() {
        assert!(validate(vec![r(MAX_SEQ, None)], 0).is_ok());
        let e = validate(vec![r(MAX_SEQ + 1, None)], 0).expect_err("too big");
        assert_eq!(e.kind, RejectionKind::PayloadFormatInvalid);
    }
}
