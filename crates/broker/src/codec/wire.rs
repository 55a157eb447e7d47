//! Wire primitives shared by the decoder's pre-checks and the encoder:
//! a bounds-checked reader over a byte slice and Variable Byte Integers
//! (MQTT 5 §1.5.5, MQTT 3.1.1 §2.2.3).

use bytes::BufMut;

/// Largest value a Variable Byte Integer can hold (MQTT 5 §1.5.5).
pub(crate) const VARINT_MAX: u32 = 268_435_455;

/// Largest possible MQTT packet: type byte, 4-byte remaining length, body.
pub(crate) const PACKET_MAX: u32 = 1 + 4 + VARINT_MAX;

/// A cursor over a byte slice whose reads return `None` instead of panicking
/// when the input is too short.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Self {
        Self { rest: bytes }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }

    pub(crate) fn u8(&mut self) -> Option<u8> {
        let (&first, rest) = self.rest.split_first()?;
        self.rest = rest;
        Some(first)
    }

    pub(crate) fn u16(&mut self) -> Option<u16> {
        let bytes = self.take(2)?;
        let (&hi, lo) = bytes.split_first()?;
        let &lo = lo.first()?;
        Some(u16::from_be_bytes([hi, lo]))
    }

    pub(crate) fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (taken, rest) = self.rest.split_at_checked(n)?;
        self.rest = rest;
        Some(taken)
    }

    /// A length-prefixed field (UTF-8 string or binary data), unvalidated.
    pub(crate) fn prefixed(&mut self) -> Option<&'a [u8]> {
        let len = self.u16()?;
        self.take(usize::from(len))
    }

    /// A Variable Byte Integer; `None` if truncated or longer than 4 bytes.
    pub(crate) fn varint(&mut self) -> Option<u32> {
        let mut value = 0u32;
        for shift in [0u32, 7, 14, 21] {
            let byte = self.u8()?;
            value |= u32::from(byte & 0x7F) << shift;
            if byte & 0x80 == 0 {
                return Some(value);
            }
        }
        None
    }
}

/// What the start of a read buffer says about the next packet's fixed header.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum HeaderScan {
    /// More bytes are needed to read the remaining length.
    Incomplete,
    /// The header is complete.
    Complete {
        /// First byte: packet type and flags.
        first: u8,
        /// Declared remaining length.
        remaining: u32,
        /// Bytes taken by the fixed header (2 to 5).
        header_len: usize,
    },
    /// The remaining length is not a valid Variable Byte Integer.
    Invalid(&'static str),
}

/// Reads a fixed header from the start of `buf` without consuming it.
///
/// MQTT 5 §1.5.5 and MQTT 3.1.1 §2.2.3: at most 4 bytes, and (MQTT-1.5.5-1)
/// the minimum number of bytes for the value, so a trailing `0x00` after a
/// continuation byte is refused.
pub(crate) fn scan_fixed_header(buf: &[u8]) -> HeaderScan {
    let Some((&first, length_bytes)) = buf.split_first() else {
        return HeaderScan::Incomplete;
    };
    let mut remaining = 0u32;
    for (index, &byte) in length_bytes.iter().take(4).enumerate() {
        if index > 0 && byte == 0 {
            return HeaderScan::Invalid(
                "remaining length not encoded in the minimum number of bytes (MQTT-1.5.5-1)",
            );
        }
        // index < 4, so the shift is at most 21 and 7 bits fit below bit 28.
        remaining |= u32::from(byte & 0x7F) << (7 * index as u32);
        if byte & 0x80 == 0 {
            return HeaderScan::Complete {
                first,
                remaining,
                header_len: 2 + index,
            };
        }
    }
    if length_bytes.len() >= 4 {
        HeaderScan::Invalid("remaining length longer than 4 bytes (MQTT 5 §1.5.5)")
    } else {
        HeaderScan::Incomplete
    }
}

/// Bytes a Variable Byte Integer of `value` takes on the wire.
pub(crate) fn varint_len(value: u32) -> usize {
    match value {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

/// Writes a Variable Byte Integer; the caller has checked `value <= VARINT_MAX`.
pub(crate) fn put_varint(out: &mut impl BufMut, mut value: u32) {
    loop {
        // Truncation intended: the low 7 bits.
        let low = (value & 0x7F) as u8;
        value >>= 7;
        if value == 0 {
            out.put_u8(low);
            return;
        }
        out.put_u8(low | 0x80);
    }
}
