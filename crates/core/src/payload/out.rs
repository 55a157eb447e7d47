//! The output side of the codecs: a cursor over the caller's buffer (or a
//! counter that only measures), JSON text pieces and CBOR items.
//!
//! Every writer is deterministic: the same input gives the same bytes, which
//! the server relies on when a device resends after a reconnect.

use crate::BufferTooSmall;

/// Where encoded bytes go: the caller's buffer, or nowhere while measuring.
pub(crate) struct Out<'a> {
    buf: &'a mut [u8],
    pos: usize,
    counting: bool,
}

impl<'a> Out<'a> {
    /// Writes into `buf`.
    pub(crate) fn new(buf: &'a mut [u8]) -> Self {
        Self {
            buf,
            pos: 0,
            counting: false,
        }
    }

    /// Bytes written (or counted) so far.
    pub(crate) fn len(&self) -> usize {
        self.pos
    }

    pub(crate) fn put(&mut self, bytes: &[u8]) -> Result<(), BufferTooSmall> {
        let end = self.pos.checked_add(bytes.len()).ok_or(BufferTooSmall)?;
        if !self.counting {
            let dst = self.buf.get_mut(self.pos..end).ok_or(BufferTooSmall)?;
            dst.copy_from_slice(bytes);
        }
        self.pos = end;
        Ok(())
    }

    pub(crate) fn byte(&mut self, b: u8) -> Result<(), BufferTooSmall> {
        self.put(&[b])
    }
}

impl Out<'static> {
    /// Only counts: for sizing a batch before writing it.
    pub(crate) fn counter() -> Self {
        Self {
            buf: &mut [],
            pos: 0,
            counting: true,
        }
    }
}

/// Decimal digits of `v`, into the tail of `buf`; returns the digits.
fn digits(mut v: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i = i.saturating_sub(1);
        if let Some(d) = buf.get_mut(i) {
            // `v % 10` is below 10, so the cast and the addition are exact.
            *d = b'0'.saturating_add((v.checked_rem(10).unwrap_or(0)) as u8);
        }
        v = v.checked_div(10).unwrap_or(0);
        if v == 0 || i == 0 {
            break;
        }
    }
    buf.get(i..).unwrap_or(&[])
}

/// JSON (and plain decimal) output.
pub(crate) mod json {
    use super::*;

    pub(crate) fn uint(out: &mut Out<'_>, v: u64) -> Result<(), BufferTooSmall> {
        let mut buf = [0u8; 20];
        out.put(digits(v, &mut buf))
    }

    pub(crate) fn int(out: &mut Out<'_>, v: i64) -> Result<(), BufferTooSmall> {
        if v < 0 {
            out.byte(b'-')?;
        }
        uint(out, v.unsigned_abs())
    }

    /// A finite `f64` as its shortest round-trip decimal (ryu): the server's
    /// parser reads back exactly `v`.
    pub(crate) fn f64(out: &mut Out<'_>, v: f64) -> Result<(), BufferTooSmall> {
        let mut b = ryu::Buffer::new();
        out.put(b.format_finite(v).as_bytes())
    }

    /// A finite `f32` as its shortest decimal that reads back as the same `f32`.
    pub(crate) fn f32(out: &mut Out<'_>, v: f32) -> Result<(), BufferTooSmall> {
        let mut b = ryu::Buffer::new();
        out.put(b.format_finite(v).as_bytes())
    }

    /// A JSON string with `"`, `\` and control characters escaped (RFC 8259 §7).
    pub(crate) fn string(out: &mut Out<'_>, s: &str) -> Result<(), BufferTooSmall> {
        out.byte(b'"')?;
        string_body(out, s)?;
        out.byte(b'"')
    }

    /// The inside of a JSON string, escaped.
    pub(crate) fn string_body(out: &mut Out<'_>, s: &str) -> Result<(), BufferTooSmall> {
        let bytes = s.as_bytes();
        let mut start = 0;
        for (i, &b) in bytes.iter().enumerate() {
            let esc: &[u8] = match b {
                b'"' => b"\\\"",
                b'\\' => b"\\\\",
                b'\n' => b"\\n",
                b'\r' => b"\\r",
                b'\t' => b"\\t",
                0x08 => b"\\b",
                0x0c => b"\\f",
                0x00..=0x1f => b"",
                _ => continue,
            };
            out.put(bytes.get(start..i).unwrap_or(&[]))?;
            if esc.is_empty() {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                let hi = HEX.get(usize::from(b >> 4)).copied().unwrap_or(b'0');
                let lo = HEX.get(usize::from(b & 0x0f)).copied().unwrap_or(b'0');
                out.put(&[b'\\', b'u', b'0', b'0', hi, lo])?;
            } else {
                out.put(esc)?;
            }
            start = i.saturating_add(1);
        }
        out.put(bytes.get(start..).unwrap_or(&[]))
    }

    /// `"key":`
    pub(crate) fn key(out: &mut Out<'_>, k: &str) -> Result<(), BufferTooSmall> {
        string(out, k)?;
        out.byte(b':')
    }
}

/// CBOR output (RFC 8949), preferred serialization (§4.2.2): shortest
/// argument encodings and the smallest float width that keeps the value.
pub(crate) mod cbor {
    use super::*;

    pub(crate) const MAJOR_UINT: u8 = 0;
    pub(crate) const MAJOR_TEXT: u8 = 3;
    pub(crate) const MAJOR_ARRAY: u8 = 4;
    pub(crate) const MAJOR_MAP: u8 = 5;

    /// An item head: major type and argument, shortest form (RFC 8949 §3).
    pub(crate) fn head(out: &mut Out<'_>, major: u8, arg: u64) -> Result<(), BufferTooSmall> {
        let m = major << 5;
        if arg < 24 {
            out.byte(m | arg as u8)
        } else if let Ok(a) = u8::try_from(arg) {
            out.put(&[m | 24, a])
        } else if let Ok(a) = u16::try_from(arg) {
            out.byte(m | 25)?;
            out.put(&a.to_be_bytes())
        } else if let Ok(a) = u32::try_from(arg) {
            out.byte(m | 26)?;
            out.put(&a.to_be_bytes())
        } else {
            out.byte(m | 27)?;
            out.put(&arg.to_be_bytes())
        }
    }

    /// Bytes a head with this argument takes.
    pub(crate) fn head_len(arg: u64) -> usize {
        match arg {
            0..=23 => 1,
            24..=0xff => 2,
            0x100..=0xffff => 3,
            0x1_0000..=0xffff_ffff => 5,
            _ => 9,
        }
    }

    pub(crate) fn text(out: &mut Out<'_>, s: &str) -> Result<(), BufferTooSmall> {
        head(out, MAJOR_TEXT, s.len() as u64)?;
        out.put(s.as_bytes())
    }

    /// A finite `f64`, in the narrowest width that holds it exactly.
    pub(crate) fn f64(out: &mut Out<'_>, v: f64) -> Result<(), BufferTooSmall> {
        let narrow = v as f32;
        if f64::from(narrow) == v {
            f32(out, narrow)
        } else {
            out.byte(0xfb)?;
            out.put(&v.to_bits().to_be_bytes())
        }
    }

    /// A finite `f32`, as a half float when that is exact.
    pub(crate) fn f32(out: &mut Out<'_>, v: f32) -> Result<(), BufferTooSmall> {
        match f16_bits(v) {
            Some(h) => {
                out.byte(0xf9)?;
                out.put(&h.to_be_bytes())
            }
            None => {
                out.byte(0xfa)?;
                out.put(&v.to_bits().to_be_bytes())
            }
        }
    }

    /// The IEEE 754 half-precision bits of a finite `v`, if it has an exact
    /// half-precision representation.
    pub(crate) fn f16_bits(v: f32) -> Option<u16> {
        let bits = v.to_bits();
        let sign = ((bits >> 16) & 0x8000) as u16;
        let exp_field = (bits >> 23) & 0xff;
        let mant = bits & 0x7f_ffff;
        if exp_field == 0 {
            // Zero is exact; f32 subnormals are far below half's range.
            return (mant == 0).then_some(sign);
        }
        if exp_field == 0xff {
            return None;
        }
        // Unbiased exponent, in -126..=127.
        let exp = i32::try_from(exp_field).ok()?.checked_sub(127)?;
        if (-14..=15).contains(&exp) {
            // Normal half: 10 mantissa bits, the low 13 must be zero.
            if mant & 0x1fff != 0 {
                return None;
            }
            let e = u16::try_from(exp.checked_add(15)?).ok()?;
            let m = u16::try_from(mant >> 13).ok()?;
            return Some(sign | (e << 10) | m);
        }
        if (-24..=-15).contains(&exp) {
            // Subnormal half: value = full × 2^(exp − 23) = m × 2^−24, so
            // m = full >> (−exp − 1), exact only if no set bit is shifted out.
            let full = mant | 0x80_0000;
            let shift = u32::try_from(exp.checked_add(1)?.checked_neg()?).ok()?;
            let lost = full & (1u32.checked_shl(shift)?.checked_sub(1)?);
            if lost != 0 {
                return None;
            }
            let m = u16::try_from(full.checked_shr(shift)?).ok()?;
            return Some(sign | m);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::string::String;

    fn run(f: impl FnOnce(&mut Out<'_>) -> Result<(), BufferTooSmall>) -> std::vec::Vec<u8> {
        let mut buf = [0u8; 128];
        let mut out = Out::new(&mut buf);
        f(&mut out).expect("fits");
        let n = out.len();
        buf[..n].to_vec()
    }

    #[test]
    fn integers_and_floats_as_json() {
        assert_eq!(run(|o| json::uint(o, 0)), b"0");
        assert_eq!(run(|o| json::uint(o, u64::MAX)), b"18446744073709551615");
        assert_eq!(run(|o| json::int(o, i64::MIN)), b"-9223372036854775808");
        assert_eq!(run(|o| json::int(o, -61)), b"-61");
        assert_eq!(run(|o| json::f64(o, 21.5)), b"21.5");
        assert_eq!(run(|o| json::f32(o, 0.1)), b"0.1");
        assert_eq!(run(|o| json::f64(o, 1e300)), b"1e300");
    }

    #[test]
    fn strings_are_escaped() {
        assert_eq!(
            run(|o| json::string(o, "a\"b\\c\nd\u{1}é")),
            "\"a\\\"b\\\\c\\nd\\u0001é\"".as_bytes()
        );
    }

    #[test]
    fn a_full_buffer_is_an_error_and_a_counter_only_counts() {
        let mut buf = [0u8; 3];
        let mut out = Out::new(&mut buf);
        assert_eq!(json::string(&mut out, "abcd"), Err(BufferTooSmall));
        let mut c = Out::counter();
        json::string(&mut c, "abcd").expect("counting never fails");
        assert_eq!(c.len(), 6);
    }

    #[test]
    fn cbor_heads_and_floats_use_the_shortest_form() {
        assert_eq!(run(|o| cbor::head(o, cbor::MAJOR_UINT, 23)), [0x17]);
        assert_eq!(run(|o| cbor::head(o, cbor::MAJOR_UINT, 24)), [0x18, 24]);
        assert_eq!(
            run(|o| cbor::head(o, cbor::MAJOR_UINT, 0x1_0000)),
            [0x1a, 0, 1, 0, 0]
        );
        assert_eq!(run(|o| cbor::head(o, cbor::MAJOR_UINT, 1 << 40)).len(), 9);
        // docs/payloads.md: 21.5 → f9 4d60.
        assert_eq!(run(|o| cbor::f64(o, 21.5)), [0xf9, 0x4d, 0x60]);
        assert_eq!(run(|o| cbor::f32(o, 0.1)), [0xfa, 0x3d, 0xcc, 0xcc, 0xcd]);
        assert_eq!(run(|o| cbor::f64(o, 0.1))[0], 0xfb);
        assert_eq!(run(|o| cbor::f64(o, -0.0)), [0xf9, 0x80, 0x00]);
        // Smallest half subnormal, 2^-24.
        assert_eq!(cbor::f16_bits(5.960_464_5e-8), Some(0x0001));
        assert_eq!(cbor::f16_bits(65504.0), Some(0x7bff));
        assert_eq!(cbor::f16_bits(65520.0), None);
        assert_eq!(cbor::head_len(0xffff_ffff), 5);
    }

    proptest! {
        #[test]
        fn f16_bits_are_exact(v in any::<f32>().prop_filter("finite", |v| v.is_finite())) {
            if let Some(h) = cbor::f16_bits(v) {
                prop_assert_eq!(half_to_f32(h), v);
            }
        }

        #[test]
        fn every_half_value_is_found(h in 0u16..0x7c00, neg in any::<bool>()) {
            let h = if neg { h | 0x8000 } else { h };
            let v = half_to_f32(h);
            prop_assert_eq!(cbor::f16_bits(v), Some(h));
        }

        #[test]
        fn escaped_strings_read_back(s in ".*") {
            let mut buf = std::vec![0u8; s.len() * 6 + 2];
            let mut out = Out::new(&mut buf);
            json::string(&mut out, &s).expect("sized");
            let n = out.len();
            let back: String = serde_json_like_unescape(&buf[..n]);
            prop_assert_eq!(back, s);
        }
    }

    /// Reference half → f32 conversion, written from the IEEE 754 definition.
    fn half_to_f32(h: u16) -> f32 {
        let sign = if h & 0x8000 != 0 { -1.0 } else { 1.0 };
        let e = i32::from((h >> 10) & 0x1f);
        let m = f32::from(h & 0x3ff);
        let mag = if e == 0 {
            m * 2f32.powi(-24)
        } else {
            (1.0 + m / 1024.0) * 2f32.powi(e - 15)
        };
        sign * mag
    }

    /// Reads a JSON string back with this crate's own parser.
    fn serde_json_like_unescape(bytes: &[u8]) -> String {
        match crate::payload::json::parse(bytes).expect("valid JSON") {
            crate::payload::json::JsonValue::Str(s) => s.chars().collect(),
            other => panic!("not a string: {other:?}"),
        }
    }
}
