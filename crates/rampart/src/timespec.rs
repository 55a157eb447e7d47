//! Points in time on the command line: RFC 3339 (`2026-11-25T10:00:00Z`),
//! `now`, relative to now (`-24h`, `-7d`, `-1h30m`), or Unix milliseconds.

use anyhow::Result;

/// Parses `text` into Unix milliseconds, relative to `now_ms`: the same
/// syntax the console's query strings take ([`rampart_web::timespec`]).
pub fn parse(text: &str, now_ms: i64) -> Result<i64> {
    rampart_web::timespec::parse(text, now_ms).map_err(anyhow::Error::msg)
}

/// RFC 3339 with milliseconds, UTC: the format of exports
/// ([`rampart_ingest::export::format_ms`]); the number itself if out of range.
pub fn format_ms(ms: i64) -> String {
    rampart_ingest::export::format_ms(ms).unwrap_or_else(|| ms.to_string())
}

/// Now, Unix milliseconds.
pub fn now_ms() -> i64 {
    rampart_web::timespec::unix_ms(time::OffsetDateTime::now_utc())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_form_parses() {
        let now = 1_800_000_000_000;
        assert_eq!(parse("now", now).expect("now"), now);
        assert_eq!(parse("-24h", now).expect("rel"), now - 86_400_000);
        assert_eq!(parse("-1h30m", now).expect("rel"), now - 5_400_000);
        assert_eq!(parse("1764000000000", now).expect("ms"), 1_764_000_000_000);
        assert_eq!(
            parse("2025-11-24T16:00:00.5Z", now).expect("rfc"),
            1_764_000_000_500
        );
        assert_eq!(
            parse("2025-11-24T17:00:00+01:00", now).expect("rfc"),
            1_764_000_000_000
        );
        assert!(parse("yesterday", now).is_err());
        assert!(parse("-3 parsecs", now).is_err());
        assert_eq!(format_ms(1_764_000_000_500), "2025-11-24T16:00:00.500Z");
    }
}
