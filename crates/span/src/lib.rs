//! Durations of Rampart's config file: read as humantime reads them
//! (`"30days"`, `"1h 30m"`, `"5years"`), written in days and smaller units.
//!
//! humantime writes a month as 30.44 days and a year as 365.25, so its own
//! output turns the default retention of 365 days into
//! `"11months 30days 3h 50m 24s"` in `rampart config show`. Whole days,
//! hours, minutes, seconds and fractions of a second read back to the same
//! value; only months and years (which humantime reads as 30.44 and
//! 365.25 days) come back in days (`"5years"` is `"1826days 6h"`).
//!
//! Every section of the config file uses it (`#[serde(with =
//! "rampart_span")]`), the broker's and the web's included, so that one
//! `config show` writes every duration the same way; what Rampart shows
//! elsewhere (alert conditions, campaign soak times, limits in error
//! messages) is written by [`format()`] too. It owns the text form of a
//! duration and nothing else: no I/O, no config structure.

use std::time::Duration;

use serde::{Deserializer, Serializer};

/// The units written, largest first, with their length in nanoseconds.
const UNITS: [(&str, u128); 7] = [
    ("days", 86_400_000_000_000),
    ("h", 3_600_000_000_000),
    ("m", 60_000_000_000),
    ("s", 1_000_000_000),
    ("ms", 1_000_000),
    ("us", 1_000),
    ("ns", 1),
];

/// `d` as the config file writes it: `"365days"`, `"1day 12h"`, `"2ms"`,
/// `"0s"`.
pub fn format(d: Duration) -> String {
    let mut left = d.as_nanos();
    if left == 0 {
        return "0s".into();
    }
    let mut parts = Vec::new();
    for (unit, nanos) in UNITS {
        let n = left / nanos;
        left %= nanos;
        if n == 0 {
            continue;
        }
        let unit = if unit == "days" && n == 1 {
            "day"
        } else {
            unit
        };
        parts.push(format!("{n}{unit}"));
    }
    parts.join(" ")
}

/// For `#[serde(with = "rampart_span")]`.
pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format(*d))
}

/// For `#[serde(with = "rampart_span")]`.
pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    humantime_serde::deserialize(d)
}

/// The same for an optional duration: `#[serde(with = "rampart_span::option")]`.
pub mod option {
    use std::time::Duration;

    use serde::{Deserializer, Serializer};

    /// Writes `Some` as [`super::format`] does; `None` as nothing (pair
    /// with `skip_serializing_if = "Option::is_none"`).
    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => super::serialize(d, s),
            None => s.serialize_none(),
        }
    }

    /// Reads as humantime does.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        humantime_serde::option::deserialize(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn whole_days_stay_days() {
        assert_eq!(format(Duration::from_secs(365 * 86_400)), "365days");
        assert_eq!(format(Duration::from_secs(30 * 86_400)), "30days");
        assert_eq!(format(Duration::from_secs(86_400 + 12 * 3600)), "1day 12h");
        assert_eq!(
            humantime::parse_duration("1day 12h").expect("reads"),
            Duration::from_secs(86_400 + 12 * 3600)
        );
    }

    #[test]
    fn small_durations_keep_their_units() {
        assert_eq!(format(Duration::ZERO), "0s");
        assert_eq!(format(Duration::from_millis(2)), "2ms");
        assert_eq!(format(Duration::from_millis(1500)), "1s 500ms");
        assert_eq!(format(Duration::from_secs(3600)), "1h");
        assert_eq!(format(Duration::from_micros(250)), "250us");
    }

    proptest! {
        #[test]
        fn what_is_written_reads_back_the_same(nanos in 0u64..u64::MAX) {
            let d = Duration::from_nanos(nanos);
            let text = format(d);
            prop_assert!(!text.contains("month") && !text.contains("year"), "{text}");
            prop_assert_eq!(humantime::parse_duration(&text).expect("reads back"), d);
        }

        #[test]
        fn large_spans_read_back_the_same(days in 0u64..100_000, secs in 0u64..86_400) {
            let d = Duration::from_secs(days * 86_400 + secs);
            prop_assert_eq!(humantime::parse_duration(&format(d)).expect("reads back"), d);
        }
    }
}
