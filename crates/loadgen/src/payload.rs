//! The benchmark payload: which run and device sent it, its sequence number
//! and when it was meant to be sent, as a telemetry reading padded up to
//! the configured size.

use std::sync::atomic::{AtomicU64, Ordering};

/// Smallest payload: the JSON of a stamp never needs more.
pub const HEADER_LEN: usize = 120;

/// What a benchmark payload carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// Run id: tells this run's messages from late ones of an earlier run
    /// that a broker still delivers.
    pub run: u32,
    /// Index of the publishing device in the scenario.
    pub device: u32,
    /// Per-device sequence number, from 0.
    pub seq: u64,
    /// Intended send time, nanoseconds since the run's epoch.
    pub intended_ns: u64,
}

/// The telemetry `seq` of the current run's first message. Each run id
/// ([`new_run_id`]) starts a new block at Unix ms × 10⁶ (and past the
/// previous block), so that every run's sequence numbers are new to
/// Rampart's dedupe, within one process (a fan-out run measures several
/// phases on the same connections) as across processes: a rerun must be
/// stored, not acknowledged as a replay or refused as a conflict.
static SEQ_BASE: AtomicU64 = AtomicU64::new(0);

/// Room a block leaves for one run's per-device sequence numbers.
const SEQ_BLOCK: u64 = 1 << 32;

fn start_seq_block() {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
        .saturating_mul(1_000_000);
    let _ = SEQ_BASE.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |prev| {
        Some(if prev == 0 {
            now
        } else {
            now.max(prev.saturating_add(SEQ_BLOCK))
        })
    });
}

fn seq_base() -> u64 {
    match SEQ_BASE.load(Ordering::SeqCst) {
        0 => {
            start_seq_block();
            SEQ_BASE.load(Ordering::SeqCst)
        }
        base => base,
    }
}

#[derive(serde::Deserialize)]
struct Wire {
    m: WireMetrics,
}

#[derive(serde::Deserialize)]
struct WireMetrics {
    run: f64,
    dev: f64,
    n: f64,
    t: f64,
}

impl Stamp {
    /// Encode as a valid Rampart telemetry reading (`docs/payloads.md`),
    /// padded with JSON whitespace to `size` bytes: brokers route it and
    /// Rampart's pipeline stores it, as it would a device's.
    pub fn encode(&self, size: usize) -> Vec<u8> {
        let mut out = format!(
            r#"{{"seq":{},"m":{{"run":{},"dev":{},"n":{},"t":{}}}}}"#,
            seq_base() + self.seq,
            self.run,
            self.device,
            self.seq,
            self.intended_ns
        )
        .into_bytes();
        if out.len() < size {
            out.resize(size, b' ');
        }
        out
    }

    /// Decode a payload made by [`Stamp::encode`]; `None` otherwise.
    pub fn decode(payload: &[u8]) -> Option<Stamp> {
        let w: Wire = serde_json::from_slice(payload).ok()?;
        Some(Stamp {
            run: w.m.run as u32,
            device: w.m.dev as u32,
            seq: w.m.n as u64,
            intended_ns: w.m.t as u64,
        })
    }
}

/// A run id that differs between runs: the low 32 bits of the wall-clock
/// nanoseconds at start. Also starts a new block of telemetry sequence
/// numbers for the run's payloads.
pub fn new_run_id() -> u32 {
    start_seq_block();
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos() ^ (d.as_secs() & 0xffff_ffff) as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_padding() {
        let s = Stamp {
            run: 0xdead_beef,
            device: 7,
            seq: 1 << 40,
            intended_ns: 123_456_789,
        };
        let bytes = s.encode(150);
        assert_eq!(bytes.len(), 150);
        assert_eq!(Stamp::decode(&bytes), Some(s));
        assert!(s.encode(3).len() <= HEADER_LEN);
        let reading = rampart_proto::telemetry::decode(
            &bytes,
            None,
            &rampart_proto::telemetry::Limits::default(),
        )
        .expect("a valid telemetry payload");
        assert_eq!(reading.len(), 1);
    }

    /// The telemetry `seq` a payload carries.
    fn telemetry_seq(s: &Stamp) -> Option<u64> {
        let v: serde_json::Value = serde_json::from_slice(&s.encode(100)).ok()?;
        v.get("seq")?.as_u64()
    }

    #[test]
    fn each_run_id_starts_new_telemetry_sequence_numbers() {
        let stamp = |run| Stamp {
            run,
            device: 0,
            seq: 5,
            intended_ns: 0,
        };
        let first_run = new_run_id();
        let first = telemetry_seq(&stamp(first_run));
        let second = telemetry_seq(&stamp(new_run_id()));
        let (Some(first), Some(second)) = (first, second) else {
            panic!("no telemetry seq: {first:?} {second:?}");
        };
        // The same per-run seq in the next run lands past everything the
        // first run could have used.
        assert!(second >= first - 5 + SEQ_BLOCK, "{first} {second}");
    }

    #[test]
    fn short_payload_is_none() {
        assert_eq!(Stamp::decode(&[0u8; 10]), None);
        assert_eq!(Stamp::decode(b"{}"), None);
    }
}
