//! Fixed byte layouts for state kept across reboots and deep sleep (RTC
//! memory, flash): little-endian fields, a magic, a version and a CRC-32 at
//! the end, so that garbage, a torn write or another firmware's layout is
//! detected instead of trusted.

use core::fmt;

/// Why persisted bytes were not accepted (the host starts from a cold,
/// empty state instead).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayoutError {
    /// Fewer bytes than the layout needs.
    TooShort {
        /// Bytes the layout needs.
        needed: usize,
        /// Bytes given.
        got: usize,
    },
    /// The magic does not match: never written, or written by something else.
    BadMagic,
    /// Written by another layout version.
    Version {
        /// The version found.
        found: u16,
        /// The version this build reads.
        supported: u16,
    },
    /// Written for another capacity or entry size.
    Shape {
        /// What the bytes say (capacity or entry size).
        found: u32,
        /// What this build expects.
        expected: u32,
    },
    /// The checksum does not match: torn write or memory corruption.
    Checksum,
    /// The checksum matches but a field is out of range.
    Corrupt(&'static str),
}

impl fmt::Display for LayoutError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LayoutError::TooShort { needed, got } => {
                write!(
                    f,
                    "persisted state is {got} bytes; the layout needs {needed}"
                )
            }
            LayoutError::BadMagic => {
                f.write_str("persisted state has no valid magic (never written or foreign data)")
            }
            LayoutError::Version { found, supported } => write!(
                f,
                "persisted state has layout version {found}; this build reads version {supported}"
            ),
            LayoutError::Shape { found, expected } => write!(
                f,
                "persisted state was written for size {found}; this build uses {expected}"
            ),
            LayoutError::Checksum => {
                f.write_str("persisted state fails its checksum (torn write or corruption)")
            }
            LayoutError::Corrupt(what) => write!(f, "persisted state is corrupt: {what}"),
        }
    }
}

impl core::error::Error for LayoutError {}

/// The caller's buffer is too small for what was to be written into it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BufferTooSmall;

impl fmt::Display for BufferTooSmall {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the output buffer is too small; give a larger one or send fewer readings")
    }
}

impl core::error::Error for BufferTooSmall {}

/// CRC-32 (IEEE 802.3, reflected, polynomial 0xEDB88320), table built at
/// compile time.
// Evaluated at compile time: an out-of-range index or overflow here is a
// build error, not a runtime panic.
#[allow(clippy::indexing_slicing, clippy::arithmetic_side_effects)]
const CRC_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 == 1 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
            k += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
};

/// CRC-32 of `bytes` (the common zlib/Ethernet CRC).
pub(crate) fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        let idx = usize::from((crc as u8) ^ b);
        // `idx` is below 256, the table's length.
        let t = CRC_TABLE.get(idx).copied().unwrap_or(0);
        crc = t ^ (crc >> 8);
    }
    !crc
}

/// Writes little-endian fields into a slice whose length was checked first.
pub(crate) struct Writer<'a> {
    buf: &'a mut [u8],
    pos: usize,
}

impl<'a> Writer<'a> {
    pub(crate) fn new(buf: &'a mut [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    /// Bytes written so far.
    pub(crate) fn pos(&self) -> usize {
        self.pos
    }

    /// Copies `bytes`; returns false when they do not fit (the caller sized
    /// the buffer from the layout's constant, so this does not happen).
    pub(crate) fn put(&mut self, bytes: &[u8]) -> bool {
        let Some(end) = self.pos.checked_add(bytes.len()) else {
            return false;
        };
        match self.buf.get_mut(self.pos..end) {
            Some(dst) => {
                dst.copy_from_slice(bytes);
                self.pos = end;
                true
            }
            None => false,
        }
    }

    pub(crate) fn u8(&mut self, v: u8) -> bool {
        self.put(&[v])
    }
    pub(crate) fn u16(&mut self, v: u16) -> bool {
        self.put(&v.to_le_bytes())
    }
    pub(crate) fn u32(&mut self, v: u32) -> bool {
        self.put(&v.to_le_bytes())
    }
    pub(crate) fn u64(&mut self, v: u64) -> bool {
        self.put(&v.to_le_bytes())
    }

    /// Appends the CRC-32 of everything written so far.
    pub(crate) fn finish_with_crc(&mut self) -> bool {
        let crc = match self.buf.get(..self.pos) {
            Some(written) => crc32(written),
            None => return false,
        };
        self.u32(crc)
    }
}

/// Reads little-endian fields; running past the end yields `None`.
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    pub(crate) fn take<const K: usize>(&mut self) -> Option<[u8; K]> {
        let end = self.pos.checked_add(K)?;
        let slice = self.buf.get(self.pos..end)?;
        let mut out = [0u8; K];
        out.copy_from_slice(slice);
        self.pos = end;
        Some(out)
    }

    pub(crate) fn u8(&mut self) -> Option<u8> {
        self.take::<1>().map(|[b]| b)
    }
    /// Bytes read so far.
    pub(crate) fn pos(&self) -> usize {
        self.pos
    }
    /// Skips `n` bytes; `None` (and nothing skipped) past the end.
    pub(crate) fn skip(&mut self, n: usize) -> Option<()> {
        let end = self.pos.checked_add(n)?;
        if end > self.buf.len() {
            return None;
        }
        self.pos = end;
        Some(())
    }
    pub(crate) fn u16(&mut self) -> Option<u16> {
        self.take().map(u16::from_le_bytes)
    }
    pub(crate) fn u32(&mut self) -> Option<u32> {
        self.take().map(u32::from_le_bytes)
    }
    pub(crate) fn u64(&mut self) -> Option<u64> {
        self.take().map(u64::from_le_bytes)
    }
}

/// Starts reading a persisted layout: checks its length, magic and version,
/// and returns a reader positioned after the version.
pub(crate) fn open(
    bytes: &[u8],
    needed: usize,
    magic: [u8; 4],
    version: u16,
) -> Result<Reader<'_>, LayoutError> {
    if bytes.len() < needed {
        return Err(LayoutError::TooShort {
            needed,
            got: bytes.len(),
        });
    }
    let mut r = Reader::new(bytes);
    if r.take::<4>() != Some(magic) {
        return Err(LayoutError::BadMagic);
    }
    match r.u16() {
        Some(found) if found == version => Ok(r),
        Some(found) => Err(LayoutError::Version {
            found,
            supported: version,
        }),
        None => Err(LayoutError::TooShort {
            needed,
            got: bytes.len(),
        }),
    }
}

/// Checks the trailing CRC-32 of `bytes[..len]` (the last 4 bytes of that
/// prefix hold the CRC of what precedes them).
pub(crate) fn check_crc(bytes: &[u8], len: usize) -> Result<(), LayoutError> {
    let body_len = len.checked_sub(4).ok_or(LayoutError::TooShort {
        needed: 4,
        got: bytes.len(),
    })?;
    let body = bytes.get(..body_len).ok_or(LayoutError::TooShort {
        needed: len,
        got: bytes.len(),
    })?;
    let stored = bytes
        .get(body_len..len)
        .and_then(|s| <[u8; 4]>::try_from(s).ok())
        .map(u32::from_le_bytes)
        .ok_or(LayoutError::TooShort {
            needed: len,
            got: bytes.len(),
        })?;
    if crc32(body) == stored {
        Ok(())
    } else {
        Err(LayoutError::Checksum)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_matches_the_standard_check_value() {
        // The CRC-32 catalogue's check value for "123456789".
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(b""), 0);
    }

    #[test]
    fn writer_refuses_overflow_and_reader_stops_at_the_end() {
        let mut buf = [0u8; 3];
        let mut w = Writer::new(&mut buf);
        assert!(w.u16(0x0201));
        assert!(!w.u16(0x0403));
        assert_eq!(w.pos(), 2);
        let mut r = Reader::new(&buf);
        assert_eq!(r.u16(), Some(0x0201));
        assert_eq!(r.u16(), None);
        assert_eq!(r.u8(), Some(0));
        assert_eq!(r.u8(), None);
    }

    #[test]
    fn crc_check_detects_a_flipped_bit() {
        let mut buf = [0u8; 12];
        let mut w = Writer::new(&mut buf);
        assert!(w.u64(0xdead_beef));
        assert!(w.finish_with_crc());
        assert_eq!(check_crc(&buf, 12), Ok(()));
        buf[3] ^= 0x10;
        assert_eq!(check_crc(&buf, 12), Err(LayoutError::Checksum));
        assert!(matches!(
            check_crc(&buf, 2),
            Err(LayoutError::TooShort { .. })
        ));
    }
}
