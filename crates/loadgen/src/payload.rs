//! The benchmark payload: which run and device sent it, its sequence number
//! and when it was meant to be sent, followed by padding up to the
//! configured size.

/// Bytes the header takes: run id (u32), device index (u32), sequence (u64),
/// intended send time in nanoseconds since the run's epoch (u64), all
/// big-endian.
pub const HEADER_LEN: usize = 4 + 4 + 8 + 8;

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

impl Stamp {
    /// Encode into a payload of `size` bytes (at least [`HEADER_LEN`]).
    pub fn encode(&self, size: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(size.max(HEADER_LEN));
        out.extend_from_slice(&self.run.to_be_bytes());
        out.extend_from_slice(&self.device.to_be_bytes());
        out.extend_from_slice(&self.seq.to_be_bytes());
        out.extend_from_slice(&self.intended_ns.to_be_bytes());
        out.resize(size.max(HEADER_LEN), b'x');
        out
    }

    /// Decode the header of a payload; `None` when it is too short.
    pub fn decode(payload: &[u8]) -> Option<Stamp> {
        let run = u32::from_be_bytes(payload.get(0..4)?.try_into().ok()?);
        let device = u32::from_be_bytes(payload.get(4..8)?.try_into().ok()?);
        let seq = u64::from_be_bytes(payload.get(8..16)?.try_into().ok()?);
        let intended_ns = u64::from_be_bytes(payload.get(16..24)?.try_into().ok()?);
        Some(Stamp {
            run,
            device,
            seq,
            intended_ns,
        })
    }
}

/// A run id that differs between runs: the low 32 bits of the wall-clock
/// nanoseconds at start.
pub fn new_run_id() -> u32 {
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
        let bytes = s.encode(100);
        assert_eq!(bytes.len(), 100);
        assert_eq!(Stamp::decode(&bytes), Some(s));
        assert_eq!(s.encode(3).len(), HEADER_LEN);
    }

    #[test]
    fn short_payload_is_none() {
        assert_eq!(Stamp::decode(&[0u8; HEADER_LEN - 1]), None);
    }
}
