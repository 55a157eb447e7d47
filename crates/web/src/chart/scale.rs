//! Axis arithmetic: "nice" value ticks and calendar-aligned time ticks.

use time::OffsetDateTime;

/// Values beyond this magnitude are clamped before scaling, so that the
/// arithmetic (spans, steps) stays finite for any finite input.
pub(crate) const VALUE_LIMIT: f64 = 1e15;

/// A value axis: the domain drawn and the ticks in it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ValueAxis {
    /// Bottom of the plot.
    pub lo: f64,
    /// Top of the plot.
    pub hi: f64,
    /// Tick values, ascending, within `lo..=hi`.
    pub ticks: Vec<f64>,
    /// Decimals needed to tell ticks apart.
    pub decimals: usize,
}

/// A step of 1, 2, 2.5 or 5 times a power of ten, at least `raw`.
fn nice_step(raw: f64) -> f64 {
    let raw = raw.max(1e-9);
    let power = 10f64.powf(raw.log10().floor());
    let fraction = raw / power;
    let nice = if fraction <= 1.0 {
        1.0
    } else if fraction <= 2.0 {
        2.0
    } else if fraction <= 2.5 {
        2.5
    } else if fraction <= 5.0 {
        5.0
    } else {
        10.0
    };
    nice * power
}

/// An axis covering `min..=max` with about `target` ticks on round values.
pub(crate) fn value_axis(min: f64, max: f64, target: usize) -> ValueAxis {
    let clamp = |v: f64| {
        if v.is_finite() {
            v.clamp(-VALUE_LIMIT, VALUE_LIMIT)
        } else {
            0.0
        }
    };
    let (mut lo, mut hi) = (clamp(min.min(max)), clamp(max.max(min)));
    if hi - lo < 1e-9 {
        // A flat line: centre it in a band of ±1 (or ±10 % of the value).
        let pad = (lo.abs() * 0.1).max(1.0);
        lo -= pad;
        hi += pad;
    }
    let step = nice_step((hi - lo) / target.max(2) as f64);
    let (data_lo, data_hi) = (lo, hi);
    // `lo / step` can underflow to -0.0 for a tiny negative `lo` (and
    // round the bound past the data): step out once more when it did.
    let mut lo = (lo / step).floor() * step;
    if lo > data_lo {
        lo -= step;
    }
    let mut hi = (hi / step).ceil() * step;
    if hi < data_hi {
        hi += step;
    }
    let count = ((hi - lo) / step).round() as usize;
    let ticks = (0..=count)
        .map(|i| lo + step * i as f64)
        .filter(|t| *t >= lo && *t <= hi)
        .collect();
    let decimals = if step >= 1.0 {
        0
    } else {
        // 0.25 needs two decimals, 0.5 one.
        let mut d = 0;
        while d < 9
            && ((step * 10f64.powi(d as i32)).round() - step * 10f64.powi(d as i32)).abs() > 1e-6
        {
            d += 1;
        }
        d
    };
    ValueAxis {
        lo,
        hi,
        ticks,
        decimals,
    }
}

/// Candidate time steps, ms, with the label format each uses.
const TIME_STEPS: [(i64, TimeLabel); 15] = [
    (60_000, TimeLabel::Minute),
    (5 * 60_000, TimeLabel::Minute),
    (10 * 60_000, TimeLabel::Minute),
    (15 * 60_000, TimeLabel::Minute),
    (30 * 60_000, TimeLabel::Minute),
    (3_600_000, TimeLabel::Minute),
    (2 * 3_600_000, TimeLabel::Minute),
    (3 * 3_600_000, TimeLabel::Minute),
    (6 * 3_600_000, TimeLabel::Minute),
    (12 * 3_600_000, TimeLabel::Minute),
    (86_400_000, TimeLabel::Day),
    (2 * 86_400_000, TimeLabel::Day),
    (7 * 86_400_000, TimeLabel::Day),
    (14 * 86_400_000, TimeLabel::Day),
    (30 * 86_400_000, TimeLabel::Day),
];

/// How a time tick is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TimeLabel {
    /// `14:30`, or the date at midnight.
    Minute,
    /// `Nov 24`.
    Day,
}

/// Ticks on round UTC times in `from_ms..=to_ms`, at most `max` of them:
/// `(ms, label)`, ascending.
pub(crate) fn time_ticks(from_ms: i64, to_ms: i64, max: usize) -> Vec<(i64, String)> {
    let span = to_ms.saturating_sub(from_ms).max(1);
    let max = max.max(2) as i64;
    let (step, label) = TIME_STEPS
        .iter()
        .copied()
        .find(|(step, _)| span / step < max)
        .unwrap_or((span / max + 1, TimeLabel::Day));
    // Steps of a day or more align on UTC midnights; a week on the epoch's
    // Thursday is as good as any for a chart.
    let first = from_ms
        .saturating_add(step - 1)
        .div_euclid(step)
        .saturating_mul(step);
    let mut out = Vec::new();
    let mut t = first;
    while t <= to_ms && out.len() < 64 {
        out.push((t, format_time(t, label)));
        match t.checked_add(step) {
            Some(next) => t = next,
            None => break,
        }
    }
    out
}

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// `Nov 24`, or `14:30` (a date at midnight) for [`TimeLabel::Minute`].
fn format_time(ms: i64, label: TimeLabel) -> String {
    let Ok(t) = OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000) else {
        return String::new();
    };
    let date = || {
        let month = MONTHS
            .get(usize::from(u8::from(t.month())).saturating_sub(1))
            .copied()
            .unwrap_or("");
        format!("{month} {}", t.day())
    };
    match label {
        TimeLabel::Day => date(),
        TimeLabel::Minute if t.hour() == 0 && t.minute() == 0 => date(),
        TimeLabel::Minute => format!("{:02}:{:02}", t.hour(), t.minute()),
    }
}

/// `2025-11-24 16:00 UTC`, for descriptions.
pub(crate) fn format_instant(ms: i64) -> String {
    match OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000) {
        Ok(t) => format!(
            "{}-{:02}-{:02} {:02}:{:02} UTC",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute()
        ),
        Err(_) => String::from("?"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn value_ticks_are_round_and_cover_the_data() {
        let a = value_axis(18.3, 24.9, 5);
        assert_eq!(a.ticks, [18.0, 20.0, 22.0, 24.0, 26.0]);
        assert_eq!((a.lo, a.hi, a.decimals), (18.0, 26.0, 0));
        let a = value_axis(0.12, 0.31, 4);
        assert_eq!(a.decimals, 2);
        assert!(a.lo <= 0.12 && a.hi >= 0.31);
    }

    #[test]
    fn a_flat_series_gets_a_band_around_it() {
        let a = value_axis(21.0, 21.0, 5);
        assert!(a.lo < 21.0 && a.hi > 21.0, "{a:?}");
        let a = value_axis(0.0, 0.0, 5);
        assert!(a.lo < 0.0 && a.hi > 0.0, "{a:?}");
    }

    #[test]
    fn time_ticks_fit_the_range() {
        const T0: i64 = 1_764_000_000_000; // 2025-11-24T16:00:00Z
        let hour: Vec<String> = time_ticks(T0, T0 + 3_600_000, 8)
            .into_iter()
            .map(|(_, l)| l)
            .collect();
        assert_eq!(
            hour,
            [
                "16:00", "16:10", "16:20", "16:30", "16:40", "16:50", "17:00"
            ]
        );
        let day = time_ticks(T0, T0 + 86_400_000, 8);
        assert_eq!(day.first().map(|(_, l)| l.as_str()), Some("18:00"));
        assert!(day.iter().any(|(_, l)| l == "Nov 25"), "{day:?}");
        let week = time_ticks(T0, T0 + 7 * 86_400_000, 8);
        assert_eq!(week.first().map(|(_, l)| l.as_str()), Some("Nov 25"));
        assert_eq!(week.len(), 7);
        let month = time_ticks(T0, T0 + 30 * 86_400_000, 8);
        assert!(month.len() <= 8 && month.len() >= 3, "{month:?}");
        assert!(
            month.iter().all(|(_, l)| l.contains(' ')),
            "dates: {month:?}"
        );
    }
}
