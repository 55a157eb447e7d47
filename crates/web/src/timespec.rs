//! Points in time in query strings, in the CLI's syntax (`rampart
//! telemetry query --from`): RFC 3339 (`2026-11-25T10:00:00Z`), `now`,
//! relative to now (`-24h`, `-7d`, `-1h30m`), or Unix milliseconds.

use std::time::Duration;

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Parses `text` into Unix milliseconds, relative to `now_ms`; the error
/// says which forms are accepted.
pub fn parse(text: &str, now_ms: i64) -> Result<i64, String> {
    let t = text.trim();
    if t.eq_ignore_ascii_case("now") {
        return Ok(now_ms);
    }
    if let Some(ago) = t.strip_prefix('-') {
        let d: Duration = humantime::parse_duration(ago).map_err(|_| {
            format!("{text:?} is not a time: a relative time looks like -24h, -7d or -1h30m")
        })?;
        let ms = i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        return Ok(now_ms.saturating_sub(ms));
    }
    if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
        return t
            .parse()
            .map_err(|_| format!("{text:?} is too large for Unix milliseconds"));
    }
    match OffsetDateTime::parse(t, &Rfc3339) {
        Ok(at) => Ok((at.unix_timestamp_nanos() / 1_000_000) as i64),
        Err(e) => Err(format!(
            "{text:?} is not a time ({e}): use RFC 3339 (2026-11-25T10:00:00Z), now, -24h or Unix milliseconds"
        )),
    }
}

/// Unix milliseconds of `t`.
pub fn unix_ms(t: OffsetDateTime) -> i64 {
    (t.unix_timestamp_nanos() / 1_000_000) as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_form_parses() {
        let now = 1_800_000_000_000;
        assert_eq!(parse("now", now), Ok(now));
        assert_eq!(parse("-24h", now), Ok(now - 86_400_000));
        assert_eq!(parse("-1h30m", now), Ok(now - 5_400_000));
        assert_eq!(parse("1764000000000", now), Ok(1_764_000_000_000));
        assert_eq!(parse("2025-11-24T16:00:00.5Z", now), Ok(1_764_000_000_500));
        assert!(parse("yesterday", now).is_err());
        assert!(parse("-3 parsecs", now).is_err());
    }
}
