//! The offline buffer: a ring of [`Measurement`]s with a capacity fixed at
//! compile time. When full, a push overwrites the oldest reading and counts
//! it as dropped (the device reports drops; the newest data is the most
//! useful). Readings leave the ring only when the server acknowledged them:
//! the host peeks the oldest few for a batch, publishes, and on PUBACK drops
//! them by count or up to a `seq`.
//!
//! # Byte layout (version 1)
//!
//! The ring can live in RTC memory across deep sleep, or in flash, as
//! [`Ring::BYTE_LEN`] bytes, all integers little-endian:
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 4 | magic `RMPR` |
//! | 4 | 2 | layout version (1) |
//! | 6 | 2 | entry size (58) |
//! | 8 | 4 | capacity `N` |
//! | 12 | 4 | head: slot of the oldest entry |
//! | 16 | 4 | length: entries held |
//! | 20 | 8 | drops: readings overwritten since the counter was taken |
//! | 28 | 58 × N | slots; unused slots are zero |
//! | 28 + 58 × N | 4 | CRC-32 (IEEE) of all preceding bytes |
//!
//! An entry: `seq` u64, `ts` u64 (0 when absent), flags u8 (bit 0: has
//! `ts`), metric count u8, then [`MAX_METRICS`] metric slots of index u8,
//! kind u8 (1 = f32, 2 = f64, 0 = unused) and the value's IEEE bits in a u64.
//!
//! [`Ring::from_bytes`] checks magic, version, entry size, capacity,
//! checksum and every field and entry; bytes from a cold boot, a torn write
//! or another firmware are refused with a [`LayoutError`], never trusted.

use crate::layout::{Reader, Writer, check_crc, open};
use crate::measurement::{MAX_METRICS, Measurement, Metric, Value};
use crate::{BufferTooSmall, LayoutError};

/// Magic at the start of a persisted ring.
const MAGIC: [u8; 4] = *b"RMPR";
/// The layout version this build writes and reads.
pub const LAYOUT_VERSION: u16 = 1;
/// Bytes of one persisted entry.
pub const ENTRY_LEN: usize = 8 + 8 + 1 + 1 + MAX_METRICS * 10;
const HEADER_LEN: usize = 4 + 2 + 2 + 4 + 4 + 4 + 8;
const CRC_LEN: usize = 4;

const KIND_UNUSED: u8 = 0;
const KIND_F32: u8 = 1;
const KIND_F64: u8 = 2;

/// A ring buffer of at most `N` measurements, oldest first.
#[derive(Debug, Clone, PartialEq)]
pub struct Ring<const N: usize> {
    slots: [Measurement; N],
    head: usize,
    len: usize,
    drops: u64,
}

/// How a ring came back after a reboot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Restored {
    /// The persisted ring was valid and is resumed.
    Resumed,
    /// The bytes were not a valid ring (first boot, power loss, another
    /// layout): the ring starts empty, for this reason.
    ColdBoot(LayoutError),
}

impl<const N: usize> Default for Ring<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> Ring<N> {
    /// Bytes of the persisted form (see the module doc).
    #[allow(clippy::arithmetic_side_effects)] // evaluated at compile time; overflow is a build error
    pub const BYTE_LEN: usize = HEADER_LEN + ENTRY_LEN * N + CRC_LEN;

    /// An empty ring.
    pub const fn new() -> Self {
        Self {
            slots: [Measurement::EMPTY; N],
            head: 0,
            len: 0,
            drops: 0,
        }
    }

    /// The most entries it holds.
    pub const fn capacity(&self) -> usize {
        N
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether the next push overwrites the oldest entry.
    pub fn is_full(&self) -> bool {
        self.len >= N
    }

    /// Readings overwritten before they were acknowledged, since the counter
    /// was last taken.
    pub fn drops(&self) -> u64 {
        self.drops
    }

    /// Returns the drop counter and resets it (after reporting it).
    pub fn take_drops(&mut self) -> u64 {
        core::mem::take(&mut self.drops)
    }

    /// Slot of the `k`-th oldest entry.
    fn slot(&self, k: usize) -> usize {
        // head < N and k < N, so the sum cannot wrap for any real N.
        self.head.wrapping_add(k).checked_rem(N).unwrap_or(0)
    }

    /// Adds a reading as the newest; when full, the oldest is overwritten,
    /// counted as a drop and returned.
    pub fn push(&mut self, m: Measurement) -> Option<Measurement> {
        if N == 0 {
            self.drops = self.drops.saturating_add(1);
            return Some(m);
        }
        if self.len < N {
            let at = self.slot(self.len);
            if let Some(slot) = self.slots.get_mut(at) {
                *slot = m;
            }
            self.len = self.len.saturating_add(1);
            None
        } else {
            let at = self.head;
            let evicted = self
                .slots
                .get_mut(at)
                .map(|slot| core::mem::replace(slot, m));
            self.head = self.slot(1);
            self.drops = self.drops.saturating_add(1);
            evicted
        }
    }

    /// The `k`-th oldest entry (0 = oldest).
    pub fn get(&self, k: usize) -> Option<&Measurement> {
        if k >= self.len {
            return None;
        }
        self.slots.get(self.slot(k))
    }

    /// The oldest entry.
    pub fn oldest(&self) -> Option<&Measurement> {
        self.get(0)
    }

    /// The newest entry.
    pub fn newest(&self) -> Option<&Measurement> {
        self.len.checked_sub(1).and_then(|k| self.get(k))
    }

    /// All entries, oldest first.
    pub fn iter(&self) -> Iter<'_, N> {
        Iter {
            ring: self,
            next: 0,
        }
    }

    /// The oldest `k` entries (fewer if it holds fewer): the next batch.
    pub fn peek(&self, k: usize) -> core::iter::Take<Iter<'_, N>> {
        self.iter().take(k)
    }

    /// Drops the oldest `k` entries (once acknowledged); returns how many went.
    pub fn ack(&mut self, k: usize) -> usize {
        let k = k.min(self.len);
        for i in 0..k {
            let at = self.slot(i);
            if let Some(slot) = self.slots.get_mut(at) {
                *slot = Measurement::EMPTY;
            }
        }
        self.head = self.slot(k);
        self.len = self.len.saturating_sub(k);
        if self.len == 0 {
            self.head = 0;
        }
        k
    }

    /// Drops the oldest entries whose `seq` is at most `seq` (acknowledged
    /// up to it); stops at the first newer one. Returns how many went.
    pub fn ack_through(&mut self, seq: u64) -> usize {
        let k = self.iter().take_while(|m| m.seq() <= seq).count();
        self.ack(k)
    }

    /// Drops everything (the drop counter is kept).
    pub fn clear(&mut self) {
        self.ack(self.len);
    }

    /// Writes the persisted form (see the module doc) into `out`, which must
    /// hold [`Self::BYTE_LEN`] bytes; returns that length.
    pub fn to_bytes(&self, out: &mut [u8]) -> Result<usize, BufferTooSmall> {
        let out = out.get_mut(..Self::BYTE_LEN).ok_or(BufferTooSmall)?;
        let mut w = Writer::new(out);
        let head = u32::try_from(self.head).map_err(|_| BufferTooSmall)?;
        let len = u32::try_from(self.len).map_err(|_| BufferTooSmall)?;
        let cap = u32::try_from(N).map_err(|_| BufferTooSmall)?;
        let mut ok = w.put(&MAGIC)
            && w.u16(LAYOUT_VERSION)
            && w.u16(ENTRY_LEN as u16)
            && w.u32(cap)
            && w.u32(head)
            && w.u32(len)
            && w.u64(self.drops);
        for (i, slot) in self.slots.iter().enumerate() {
            ok = ok
                && if self.is_live(i) {
                    write_entry(&mut w, slot)
                } else {
                    w.put(&[0u8; ENTRY_LEN])
                };
        }
        if ok && w.finish_with_crc() {
            Ok(w.pos())
        } else {
            Err(BufferTooSmall)
        }
    }

    /// Whether slot `i` holds a live entry.
    fn is_live(&self, i: usize) -> bool {
        // Distance from head to i going forward, modulo N.
        let dist = if i >= self.head {
            i.wrapping_sub(self.head)
        } else {
            i.wrapping_add(N).wrapping_sub(self.head)
        };
        dist < self.len
    }

    /// Reads a persisted ring, checking everything (see the module doc).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, LayoutError> {
        let needed = Self::BYTE_LEN;
        let short = LayoutError::TooShort {
            needed,
            got: bytes.len(),
        };
        let mut r = open(bytes, needed, MAGIC, LAYOUT_VERSION)?;
        let entry_len = r.u16().ok_or(short)?;
        if usize::from(entry_len) != ENTRY_LEN {
            return Err(LayoutError::Shape {
                found: u32::from(entry_len),
                expected: ENTRY_LEN as u32,
            });
        }
        let cap = r.u32().ok_or(short)?;
        if usize::try_from(cap).ok() != Some(N) {
            return Err(LayoutError::Shape {
                found: cap,
                expected: u32::try_from(N).unwrap_or(u32::MAX),
            });
        }
        check_crc(bytes, needed)?;
        let head =
            usize::try_from(r.u32().ok_or(short)?).map_err(|_| LayoutError::Corrupt("head"))?;
        let len =
            usize::try_from(r.u32().ok_or(short)?).map_err(|_| LayoutError::Corrupt("length"))?;
        let drops = r.u64().ok_or(short)?;
        if len > N || (N > 0 && head >= N) || (N == 0 && head != 0) {
            return Err(LayoutError::Corrupt("head or length out of range"));
        }
        let mut ring = Self {
            slots: [Measurement::EMPTY; N],
            head,
            len,
            drops,
        };
        for i in 0..N {
            let raw = r.take::<ENTRY_LEN>().ok_or(short)?;
            if ring.is_live(i) {
                let m = read_entry(&raw)?;
                if let Some(slot) = ring.slots.get_mut(i) {
                    *slot = m;
                }
            } else if raw != [0u8; ENTRY_LEN] {
                return Err(LayoutError::Corrupt("unused slot is not zero"));
            }
        }
        Ok(ring)
    }

    /// Restores a persisted ring, or starts empty when the bytes are not a
    /// valid ring (cold boot), saying which.
    pub fn restore(bytes: &[u8]) -> (Self, Restored) {
        match Self::from_bytes(bytes) {
            Ok(ring) => (ring, Restored::Resumed),
            Err(e) => (Self::new(), Restored::ColdBoot(e)),
        }
    }
}

fn write_entry(w: &mut Writer<'_>, m: &Measurement) -> bool {
    let mut ok = w.u64(m.seq())
        && w.u64(m.ts_ms().unwrap_or(0))
        && w.u8(u8::from(m.ts_ms().is_some()))
        && w.u8(u8::try_from(m.metric_count()).unwrap_or(0));
    let mut metrics = m.metrics();
    for _ in 0..MAX_METRICS {
        ok = ok
            && match metrics.next() {
                Some(Metric {
                    index,
                    value: Value::F32(v),
                }) => w.u8(index) && w.u8(KIND_F32) && w.u64(u64::from(v.to_bits())),
                Some(Metric {
                    index,
                    value: Value::F64(v),
                }) => w.u8(index) && w.u8(KIND_F64) && w.u64(v.to_bits()),
                None => w.u8(0) && w.u8(KIND_UNUSED) && w.u64(0),
            };
    }
    ok
}

fn read_entry(raw: &[u8; ENTRY_LEN]) -> Result<Measurement, LayoutError> {
    let short = LayoutError::Corrupt("entry truncated");
    let mut r = Reader::new(raw);
    let seq = r.u64().ok_or(short)?;
    let ts = r.u64().ok_or(short)?;
    let flags = r.u8().ok_or(short)?;
    let count = usize::from(r.u8().ok_or(short)?);
    if flags > 1 {
        return Err(LayoutError::Corrupt("entry flags"));
    }
    if count == 0 || count > MAX_METRICS {
        return Err(LayoutError::Corrupt("entry metric count"));
    }
    let mut metrics = [Metric::new(0, Value::F32(0.0)); MAX_METRICS];
    for (i, slot) in metrics.iter_mut().enumerate() {
        let index = r.u8().ok_or(short)?;
        let kind = r.u8().ok_or(short)?;
        let bits = r.u64().ok_or(short)?;
        let live = i < count;
        *slot = match (live, kind) {
            (true, KIND_F32) => Metric::new(
                index,
                Value::F32(f32::from_bits(
                    u32::try_from(bits).map_err(|_| LayoutError::Corrupt("f32 value"))?,
                )),
            ),
            (true, KIND_F64) => Metric::new(index, Value::F64(f64::from_bits(bits))),
            (false, KIND_UNUSED) if index == 0 && bits == 0 => *slot,
            _ => return Err(LayoutError::Corrupt("entry metric kind")),
        };
    }
    if flags == 0 && ts != 0 {
        return Err(LayoutError::Corrupt("entry timestamp without flag"));
    }
    let ts_ms = (flags == 1).then_some(ts);
    Measurement::new(seq, ts_ms, metrics.get(..count).unwrap_or(&[]))
        .map_err(|_| LayoutError::Corrupt("entry is not a valid measurement"))
}

/// Entries of a [`Ring`], oldest first.
#[derive(Debug, Clone)]
pub struct Iter<'a, const N: usize> {
    ring: &'a Ring<N>,
    next: usize,
}

impl<'a, const N: usize> Iterator for Iter<'a, N> {
    type Item = &'a Measurement;

    fn next(&mut self) -> Option<Self::Item> {
        let item = self.ring.get(self.next)?;
        self.next = self.next.saturating_add(1);
        Some(item)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = self.ring.len.saturating_sub(self.next);
        (left, Some(left))
    }
}

impl<const N: usize> ExactSizeIterator for Iter<'_, N> {}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::vec::Vec;

    fn m(seq: u64) -> Measurement {
        Measurement::new(
            seq,
            Some(1_732_550_000_000 + seq),
            &[
                Metric::new(0, Value::F32(20.0 + seq as f32)),
                Metric::new(1, Value::F64(40.25)),
            ],
        )
        .expect("valid")
    }

    fn seqs<const N: usize>(r: &Ring<N>) -> Vec<u64> {
        r.iter().map(Measurement::seq).collect()
    }

    #[test]
    fn push_overwrites_the_oldest_and_counts_drops() {
        let mut r = Ring::<3>::new();
        assert_eq!(r.push(m(1)), None);
        assert_eq!(r.push(m(2)), None);
        assert_eq!(r.push(m(3)), None);
        assert!(r.is_full());
        assert_eq!(r.push(m(4)), Some(m(1)));
        assert_eq!(r.push(m(5)), Some(m(2)));
        assert_eq!(seqs(&r), [3, 4, 5]);
        assert_eq!(r.drops(), 2);
        assert_eq!(r.take_drops(), 2);
        assert_eq!(r.drops(), 0);
        assert_eq!(r.oldest().map(Measurement::seq), Some(3));
        assert_eq!(r.newest().map(Measurement::seq), Some(5));
    }

    #[test]
    fn peek_then_ack_by_count_or_seq() {
        let mut r = Ring::<4>::new();
        for s in 10..14 {
            r.push(m(s));
        }
        assert_eq!(
            r.peek(2).map(Measurement::seq).collect::<Vec<_>>(),
            [10, 11]
        );
        assert_eq!(r.peek(9).len(), 4);
        assert_eq!(r.ack(2), 2);
        assert_eq!(seqs(&r), [12, 13]);
        r.push(m(14));
        r.push(m(15));
        assert_eq!(seqs(&r), [12, 13, 14, 15]);
        assert_eq!(r.ack_through(13), 2);
        assert_eq!(seqs(&r), [14, 15]);
        assert_eq!(r.ack_through(1), 0);
        assert_eq!(r.ack(10), 2);
        assert!(r.is_empty());
        assert_eq!(r.oldest(), None);
    }

    #[test]
    fn zero_capacity_drops_everything_without_panicking() {
        let mut r = Ring::<0>::new();
        assert_eq!(r.push(m(1)), Some(m(1)));
        assert_eq!(r.drops(), 1);
        assert_eq!(r.len(), 0);
        let mut buf = [0u8; Ring::<0>::BYTE_LEN];
        r.to_bytes(&mut buf).expect("fits");
        assert_eq!(Ring::<0>::from_bytes(&buf), Ok(r));
    }

    #[test]
    fn round_trips_through_its_bytes() {
        let mut r = Ring::<5>::new();
        for s in 1..=7 {
            r.push(m(s));
        }
        r.ack(1);
        r.push(Measurement::new(8, None, &[Metric::new(3, Value::F64(-0.5))]).expect("valid"));
        let mut buf = [0u8; Ring::<5>::BYTE_LEN];
        assert_eq!(r.to_bytes(&mut buf), Ok(Ring::<5>::BYTE_LEN));
        assert_eq!(&buf[..4], b"RMPR");
        let back = Ring::<5>::from_bytes(&buf).expect("valid layout");
        assert_eq!(back, r);
        assert_eq!(seqs(&back), [4, 5, 6, 7, 8]);
        assert_eq!(back.drops(), 2);
        // Writing it again gives the same bytes: the layout is canonical.
        let mut again = [0u8; Ring::<5>::BYTE_LEN];
        back.to_bytes(&mut again).expect("fits");
        assert_eq!(buf, again);
    }

    #[test]
    fn refuses_foreign_or_damaged_layouts() {
        let mut r = Ring::<4>::new();
        r.push(m(1));
        let mut buf = [0u8; Ring::<4>::BYTE_LEN];
        r.to_bytes(&mut buf).expect("fits");
        let mut small = [0u8; 10];
        assert_eq!(r.to_bytes(&mut small), Err(BufferTooSmall));

        assert!(matches!(
            Ring::<4>::from_bytes(&buf[..20]),
            Err(LayoutError::TooShort { .. })
        ));
        assert!(matches!(
            Ring::<5>::from_bytes(&buf),
            Err(LayoutError::TooShort { .. })
        ));
        assert_eq!(
            Ring::<3>::from_bytes(&buf),
            Err(LayoutError::Shape {
                found: 4,
                expected: 3
            })
        );
        assert_eq!(
            Ring::<4>::from_bytes(&[0u8; Ring::<4>::BYTE_LEN]),
            Err(LayoutError::BadMagic)
        );

        let mut other_version = buf;
        other_version[4] = 2;
        assert_eq!(
            Ring::<4>::from_bytes(&other_version),
            Err(LayoutError::Version {
                found: 2,
                supported: 1
            })
        );
        let mut flipped = buf;
        flipped[40] ^= 1;
        assert_eq!(Ring::<4>::from_bytes(&flipped), Err(LayoutError::Checksum));

        // A valid checksum over nonsense (e.g. another program wrote the
        // region with its own CRC) is still refused field by field.
        let mut bad_len = buf;
        bad_len[16] = 9;
        reseal(&mut bad_len);
        assert!(matches!(
            Ring::<4>::from_bytes(&bad_len),
            Err(LayoutError::Corrupt(_))
        ));
        let mut nan = buf;
        // First metric's value of the first entry: make it an f32 NaN.
        let value_at = HEADER_LEN + 18 + 2;
        nan[value_at..value_at + 8].copy_from_slice(&u64::from(f32::NAN.to_bits()).to_le_bytes());
        reseal(&mut nan);
        assert!(matches!(
            Ring::<4>::from_bytes(&nan),
            Err(LayoutError::Corrupt(_))
        ));

        let (ring, how) = Ring::<4>::restore(&flipped);
        assert!(ring.is_empty());
        assert_eq!(how, Restored::ColdBoot(LayoutError::Checksum));
        let (ring, how) = Ring::<4>::restore(&buf);
        assert_eq!((ring, how), (r, Restored::Resumed));
    }

    fn reseal(buf: &mut [u8]) {
        let n = buf.len() - 4;
        let crc = crate::layout::crc32(&buf[..n]);
        buf[n..].copy_from_slice(&crc.to_le_bytes());
    }

    proptest! {
        #[test]
        fn random_bytes_are_refused_not_trusted(bytes in prop::collection::vec(any::<u8>(), 0..Ring::<3>::BYTE_LEN + 8)) {
            // Random bytes almost never carry the magic and a valid CRC;
            // whatever they are, reading them must not panic, and anything
            // accepted must write back to the same bytes.
            if let Ok(r) = Ring::<3>::from_bytes(&bytes) {
                let mut buf = [0u8; Ring::<3>::BYTE_LEN];
                r.to_bytes(&mut buf).expect("fits");
                prop_assert_eq!(&buf[..], &bytes[..Ring::<3>::BYTE_LEN]);
            }
        }

        #[test]
        fn sealed_random_bodies_never_panic(mut bytes in prop::collection::vec(any::<u8>(), Ring::<3>::BYTE_LEN), head in 0u32..5, len in 0u32..5) {
            // Valid magic, version, shape and checksum around random fields:
            // the field checks alone must hold the line.
            bytes[..4].copy_from_slice(b"RMPR");
            bytes[4..6].copy_from_slice(&LAYOUT_VERSION.to_le_bytes());
            bytes[6..8].copy_from_slice(&(ENTRY_LEN as u16).to_le_bytes());
            bytes[8..12].copy_from_slice(&3u32.to_le_bytes());
            bytes[12..16].copy_from_slice(&head.to_le_bytes());
            bytes[16..20].copy_from_slice(&len.to_le_bytes());
            reseal(&mut bytes);
            if let Ok(r) = Ring::<3>::from_bytes(&bytes) {
                prop_assert!(r.len() <= 3);
                prop_assert!(r.iter().all(|m| m.metric_count() > 0));
            }
        }
    }
}
