//! What a firmware download answers, decided without I/O: `Range`,
//! `If-Range` and `If-None-Match` against the image's size and ETag
//! (RFC 9110 §13 and §14; docs/ota.md §4).
//!
//! The ETag of an image is its SHA-256 in quotes: the content address
//! never names other bytes, so it is a strong validator.

/// What to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    /// `304 Not Modified`: the client holds this image already.
    NotModified,
    /// `200` with the whole image.
    Full,
    /// `206` with bytes `start..=end`.
    Partial {
        /// First byte sent.
        start: u64,
        /// Last byte sent (inclusive, `< size`).
        end: u64,
    },
    /// `416`: no byte of the asked range exists.
    Unsatisfiable,
}

/// The request headers that decide the answer (`None` when absent).
#[derive(Debug, Clone, Copy, Default)]
pub struct Conditions<'a> {
    /// `Range`.
    pub range: Option<&'a str>,
    /// `If-Range`.
    pub if_range: Option<&'a str>,
    /// `If-None-Match`.
    pub if_none_match: Option<&'a str>,
}

/// The ETag of the image with SHA-256 `sha256_hex`: `"<hex>"`.
pub fn etag(sha256_hex: &str) -> String {
    format!("\"{sha256_hex}\"")
}

/// Decides the answer for an image of `size` bytes whose ETag is `etag`
/// (quoted).
///
/// RFC 9110 §13.2.2 order: `If-None-Match` first (a match is `304` for a
/// GET); then `Range`, used only if `If-Range` is absent or names this
/// ETag by strong comparison (§13.1.5; a date never matches, as no
/// `Last-Modified` is sent). A `Range` that does not parse, asks for
/// another unit or for several ranges is ignored (§14.2 lets a server
/// ignore it) and the whole image is sent.
pub fn plan(size: u64, etag: &str, c: Conditions<'_>) -> Plan {
    if let Some(inm) = c.if_none_match
        && none_match_hits(inm, etag)
    {
        return Plan::NotModified;
    }
    let Some(range) = c.range else {
        return Plan::Full;
    };
    if let Some(validator) = c.if_range
        && validator.trim() != etag
    {
        return Plan::Full;
    }
    match parse_range(range) {
        None => Plan::Full,
        Some(spec) => spec.resolve(size),
    }
}

/// Whether `If-None-Match` names `etag` (weak comparison, §13.1.2) or is `*`.
fn none_match_hits(header: &str, etag: &str) -> bool {
    let header = header.trim();
    if header == "*" {
        return true;
    }
    let opaque = |t: &str| t.trim().strip_prefix("W/").unwrap_or(t.trim()).to_owned();
    let ours = opaque(etag);
    header.split(',').any(|t| opaque(t) == ours)
}

/// One byte range as asked (§14.1.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeSpec {
    /// `bytes=N-`.
    From(u64),
    /// `bytes=N-M`, `N <= M`.
    Between(u64, u64),
    /// `bytes=-N`: the last N bytes.
    Suffix(u64),
}

impl RangeSpec {
    /// The bytes of an image of `size` this range selects (§14.1.2): the
    /// end is clamped to the last byte; a start past the end, or an empty
    /// suffix, is unsatisfiable.
    pub fn resolve(self, size: u64) -> Plan {
        let Some(last) = size.checked_sub(1) else {
            return Plan::Unsatisfiable;
        };
        match self {
            RangeSpec::From(start) if start <= last => Plan::Partial { start, end: last },
            RangeSpec::Between(start, end) if start <= last => Plan::Partial {
                start,
                end: end.min(last),
            },
            RangeSpec::Suffix(n) if n > 0 => Plan::Partial {
                start: size.saturating_sub(n),
                end: last,
            },
            _ => Plan::Unsatisfiable,
        }
    }
}

/// Parses a `Range` header holding one byte range; `None` for anything
/// else (other units, several ranges, bad syntax).
pub fn parse_range(header: &str) -> Option<RangeSpec> {
    let set = header.trim().strip_prefix("bytes=")?.trim();
    if set.contains(',') {
        return None;
    }
    let (first, last) = set.split_once('-')?;
    let number = |s: &str| -> Option<u64> {
        let s = s.trim();
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        s.parse().ok()
    };
    match (first.trim().is_empty(), last.trim().is_empty()) {
        (true, true) => None,
        (true, false) => Some(RangeSpec::Suffix(number(last)?)),
        (false, true) => Some(RangeSpec::From(number(first)?)),
        (false, false) => {
            let (a, b) = (number(first)?, number(last)?);
            (a <= b).then_some(RangeSpec::Between(a, b))
        }
    }
}

/// `Content-Range` of a partial answer: `bytes START-END/SIZE`.
pub fn content_range(start: u64, end: u64, size: u64) -> String {
    format!("bytes {start}-{end}/{size}")
}

/// `Content-Range` of a `416`: `bytes */SIZE`.
pub fn unsatisfied_range(size: u64) -> String {
    format!("bytes */{size}")
}

/// Whether `s` is a SHA-256 in lowercase hex, the only names the image
/// store has.
pub fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const TAG: &str = "\"abc\"";

    fn c<'a>(
        range: Option<&'a str>,
        if_range: Option<&'a str>,
        inm: Option<&'a str>,
    ) -> Conditions<'a> {
        Conditions {
            range,
            if_range,
            if_none_match: inm,
        }
    }

    #[test]
    fn ranges_of_every_form() {
        let p = |r: &str| plan(100, TAG, c(Some(r), None, None));
        assert_eq!(p("bytes=10-"), Plan::Partial { start: 10, end: 99 });
        assert_eq!(p("bytes=10-19"), Plan::Partial { start: 10, end: 19 });
        assert_eq!(p("bytes=90-500"), Plan::Partial { start: 90, end: 99 });
        assert_eq!(p("bytes=-5"), Plan::Partial { start: 95, end: 99 });
        assert_eq!(p("bytes=-500"), Plan::Partial { start: 0, end: 99 });
        assert_eq!(p("bytes=0-0"), Plan::Partial { start: 0, end: 0 });
        assert_eq!(p("bytes=100-"), Plan::Unsatisfiable);
        assert_eq!(p("bytes=100-200"), Plan::Unsatisfiable);
        assert_eq!(p("bytes=-0"), Plan::Unsatisfiable);
        // Ignored: whole image.
        for r in [
            "bytes=5-1",
            "bytes=0-1,5-6",
            "items=0-1",
            "bytes=-",
            "bytes=a-",
            "bytes=+1-2",
            "",
        ] {
            assert_eq!(p(r), Plan::Full, "{r}");
        }
        assert_eq!(plan(100, TAG, c(None, None, None)), Plan::Full);
        assert_eq!(
            plan(0, TAG, c(Some("bytes=0-"), None, None)),
            Plan::Unsatisfiable
        );
    }

    #[test]
    fn if_range_and_if_none_match() {
        assert_eq!(
            plan(100, TAG, c(Some("bytes=10-"), Some(TAG), None)),
            Plan::Partial { start: 10, end: 99 }
        );
        assert_eq!(
            plan(100, TAG, c(Some("bytes=10-"), Some("\"other\""), None)),
            Plan::Full
        );
        // A weak validator never matches If-Range (strong comparison).
        assert_eq!(
            plan(100, TAG, c(Some("bytes=10-"), Some("W/\"abc\""), None)),
            Plan::Full
        );
        assert_eq!(
            plan(
                100,
                TAG,
                c(
                    Some("bytes=10-"),
                    Some("Wed, 21 Oct 2015 07:28:00 GMT"),
                    None
                )
            ),
            Plan::Full
        );
        for inm in ["\"abc\"", "*", "\"x\", W/\"abc\"", " \"abc\" "] {
            assert_eq!(
                plan(100, TAG, c(Some("bytes=1-"), None, Some(inm))),
                Plan::NotModified,
                "{inm}"
            );
        }
        assert_eq!(plan(100, TAG, c(None, None, Some("\"x\""))), Plan::Full);
    }

    #[test]
    fn image_names() {
        assert!(is_sha256_hex(&"0a".repeat(32)));
        assert!(!is_sha256_hex(&"0A".repeat(32)));
        assert!(!is_sha256_hex("../etc/passwd"));
        assert!(!is_sha256_hex(&"0a".repeat(31)));
        assert_eq!(etag("ab"), "\"ab\"");
        assert_eq!(content_range(1, 2, 3), "bytes 1-2/3");
        assert_eq!(unsatisfied_range(3), "bytes */3");
    }

    proptest! {
        #[test]
        fn a_partial_answer_stays_inside_the_image(size in 0u64..10_000, a in 0u64..20_000, b in 0u64..20_000, form in 0u8..3) {
            let header = match form {
                0 => format!("bytes={a}-"),
                1 => format!("bytes={}-{}", a.min(b), a.max(b)),
                _ => format!("bytes=-{b}"),
            };
            match plan(size, TAG, c(Some(&header), None, None)) {
                Plan::Partial { start, end } => {
                    prop_assert!(start <= end && end < size);
                    match form {
                        0 => prop_assert!(start == a && end == size - 1),
                        1 => prop_assert!(start == a.min(b) && end == a.max(b).min(size - 1)),
                        _ => prop_assert!(end - start + 1 == b.min(size)),
                    }
                }
                Plan::Unsatisfiable => {
                    let expected = size == 0 || match form {
                        0 => a >= size,
                        1 => a.min(b) >= size,
                        _ => b == 0,
                    };
                    prop_assert!(expected);
                }
                other => prop_assert!(false, "unexpected {:?}", other),
            }
        }

        #[test]
        fn any_header_text_is_answered(range in ".{0,40}", ir in ".{0,20}", inm in ".{0,20}") {
            let _ = plan(1234, TAG, c(Some(&range), Some(&ir), Some(&inm)));
        }
    }
}
