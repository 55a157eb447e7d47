//! Charts as SVG, drawn on the server by pure code (no JavaScript, no I/O):
//! the console's telemetry charts.
//!
//! Input is the store's time buckets for one metric over a range
//! ([`rampart_store::telemetry::Bucket`]); output is one `<svg>` element
//! with a title and description for screen readers, a value axis on round
//! numbers, a time axis on round UTC times suited to the range, a band from
//! each bucket's minimum to its maximum and a line through the averages.
//! A missing bucket is a gap: lines are never drawn across it, because an
//! interpolated line would claim readings that never arrived.
//!
//! Every text is escaped; colours are presentation attributes and CSS
//! classes (`chart-band`, `chart-avg`, ...), so the page's stylesheet can
//! restyle the chart under a strict CSP without inline styles.

mod scale;

use std::fmt::Write;

use rampart_store::telemetry::Bucket;

use scale::{ValueAxis, format_instant, time_ticks, value_axis};

/// What to draw: one metric of one device over a time range.
#[derive(Debug, Clone)]
pub struct Chart<'a> {
    /// Identifier for the SVG's element ids, unique on the page (kept to
    /// ASCII letters, digits and `-`).
    pub id: &'a str,
    /// Title read by screen readers and shown as a tooltip (e.g.
    /// "greenhouse-1 temperature").
    pub title: &'a str,
    /// Unit of the values (`°C`, `%`); may be empty.
    pub unit: &'a str,
    /// Start of the range, Unix ms.
    pub from_ms: i64,
    /// End of the range, Unix ms.
    pub to_ms: i64,
    /// Width of each bucket, ms (the store's `Series::bucket_ms`).
    pub bucket_ms: i64,
    /// The buckets with data, in any order; missing buckets are gaps.
    pub buckets: &'a [Bucket],
    /// Size in SVG user units (also the `viewBox`).
    pub width: u32,
    /// Height in SVG user units.
    pub height: u32,
}

/// Plot margins: left for value labels, bottom for time labels.
const LEFT: f64 = 52.0;
const RIGHT: f64 = 12.0;
const TOP: f64 = 12.0;
const BOTTOM: f64 = 28.0;

/// Escapes text for SVG (XML) content and attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            // Control characters are not allowed in XML 1.0.
            c if c.is_control() && c != '\n' && c != '\t' => {}
            c => out.push(c),
        }
    }
    out
}

/// A number as SVG coordinates want it: two decimals, never NaN or inf.
fn n(v: f64) -> String {
    if v.is_finite() {
        let r = (v * 100.0).round() / 100.0;
        // Avoid "-0".
        if r == 0.0 { "0".into() } else { format!("{r}") }
    } else {
        "0".into()
    }
}

/// A bucket reduced to what is drawn, with finite values.
#[derive(Debug, Clone, Copy)]
struct Point {
    start: i64,
    min: f64,
    max: f64,
    avg: f64,
}

/// Finite buckets with points, sorted by start, one per start.
fn clean(buckets: &[Bucket]) -> Vec<Point> {
    let mut points: Vec<Point> = buckets
        .iter()
        .filter(|b| b.count > 0 && b.min.is_finite() && b.max.is_finite() && b.avg.is_finite())
        .map(|b| {
            let lim = |v: f64| v.clamp(-scale::VALUE_LIMIT, scale::VALUE_LIMIT);
            let (min, max) = (lim(b.min.min(b.max)), lim(b.max.max(b.min)));
            Point {
                start: b.start,
                min,
                max,
                avg: lim(b.avg).clamp(min, max),
            }
        })
        .collect();
    points.sort_by_key(|p| p.start);
    points.dedup_by_key(|p| p.start);
    points
}

/// Runs of buckets without a missing one between them.
fn segments(points: &[Point], bucket_ms: i64) -> Vec<&[Point]> {
    let mut out = Vec::new();
    let mut begin = 0;
    for i in 1..=points.len() {
        let split = match (points.get(i - 1), points.get(i)) {
            (Some(a), Some(b)) => b.start.saturating_sub(a.start) > bucket_ms,
            _ => true,
        };
        if split {
            if let Some(run) = points.get(begin..i) {
                out.push(run);
            }
            begin = i;
        }
    }
    out
}

/// Maps data to SVG coordinates.
struct Frame {
    x0: f64,
    x1: f64,
    y0: f64,
    y1: f64,
    from: i64,
    span: f64,
    axis: ValueAxis,
}

impl Frame {
    fn x(&self, ms: i64) -> f64 {
        let f = (ms.saturating_sub(self.from)) as f64 / self.span;
        self.x0 + f.clamp(0.0, 1.0) * (self.x1 - self.x0)
    }

    fn y(&self, v: f64) -> f64 {
        let f = (v - self.axis.lo) / (self.axis.hi - self.axis.lo);
        let f = if f.is_finite() {
            f.clamp(0.0, 1.0)
        } else {
            0.5
        };
        self.y1 - f * (self.y1 - self.y0)
    }
}

/// Formats a value with `decimals`, and the unit.
fn value_label(v: f64, decimals: usize, unit: &str) -> String {
    let v = if v == 0.0 { 0.0 } else { v };
    if unit.is_empty() {
        format!("{v:.decimals$}")
    } else {
        format!("{v:.decimals$} {unit}")
    }
}

/// Renders `chart` as one `<svg>` element.
pub fn render(chart: &Chart<'_>) -> String {
    let (w, h) = (
        f64::from(chart.width.max(160)),
        f64::from(chart.height.max(100)),
    );
    let id: String = chart
        .id
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .take(64)
        .collect();
    let id = if id.is_empty() {
        "chart".to_owned()
    } else {
        id
    };
    let from = chart.from_ms.min(chart.to_ms);
    let to = chart.to_ms.max(chart.from_ms).max(from.saturating_add(1));
    let bucket_ms = chart.bucket_ms.max(1);
    let points: Vec<Point> = clean(chart.buckets)
        .into_iter()
        .filter(|p| p.start.saturating_add(bucket_ms) > from && p.start <= to)
        .collect();
    let title = escape(chart.title);
    let unit = escape(chart.unit);

    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" class="chart" viewBox="0 0 {w} {h}" width="{w}" height="{h}" role="img" aria-labelledby="{id}-title {id}-desc"><title id="{id}-title">{title}</title>"#,
    );
    let desc = describe(chart, &points, from, to);
    let _ = write!(svg, r#"<desc id="{id}-desc">{}</desc>"#, escape(&desc));

    let (min, max) = points
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), p| {
            (lo.min(p.min), hi.max(p.max))
        });
    let axis = if points.is_empty() {
        value_axis(0.0, 1.0, 4)
    } else {
        value_axis(min, max, 4)
    };
    let frame = Frame {
        x0: LEFT,
        x1: w - RIGHT,
        y0: TOP,
        y1: h - BOTTOM,
        from,
        span: (to.saturating_sub(from)) as f64,
        axis,
    };

    // Grid and value labels.
    let _ = write!(
        svg,
        r##"<g class="chart-grid" stroke="#d0d5dd" stroke-width="1">"##
    );
    for t in &frame.axis.ticks {
        let y = n(frame.y(*t));
        let _ = write!(
            svg,
            r#"<line x1="{}" x2="{}" y1="{y}" y2="{y}"/>"#,
            n(frame.x0),
            n(frame.x1)
        );
    }
    svg.push_str("</g>");
    if !points.is_empty() {
        let _ = write!(
            svg,
            r##"<g class="chart-y-labels" font-size="11" fill="#475467" text-anchor="end">"##
        );
        for t in &frame.axis.ticks {
            let _ = write!(
                svg,
                r#"<text x="{}" y="{}">{}</text>"#,
                n(frame.x0 - 6.0),
                n(frame.y(*t) + 4.0),
                escape(&value_label(*t, frame.axis.decimals, chart.unit))
            );
        }
        svg.push_str("</g>");
    }
    // Time axis.
    let _ = write!(
        svg,
        r##"<g class="chart-x-labels" font-size="11" fill="#475467" text-anchor="middle">"##
    );
    for (t, label) in time_ticks(from, to, ((w - LEFT - RIGHT) / 80.0).max(2.0) as usize) {
        let x = n(frame.x(t));
        let _ = write!(
            svg,
            r##"<line x1="{x}" x2="{x}" y1="{}" y2="{}" stroke="#98a2b3"/><text x="{x}" y="{}">{}</text>"##,
            n(frame.y1),
            n(frame.y1 + 4.0),
            n(frame.y1 + 17.0),
            escape(&label)
        );
    }
    svg.push_str("</g>");
    let _ = write!(
        svg,
        r##"<line class="chart-axis" x1="{x0}" x2="{x1}" y1="{y}" y2="{y}" stroke="#98a2b3"/>"##,
        x0 = n(frame.x0),
        x1 = n(frame.x1),
        y = n(frame.y1)
    );

    if points.is_empty() {
        let _ = write!(
            svg,
            r##"<text class="chart-empty" x="{}" y="{}" text-anchor="middle" font-size="14" fill="#667085">No data in this range</text></svg>"##,
            n((frame.x0 + frame.x1) / 2.0),
            n((frame.y0 + frame.y1) / 2.0)
        );
        return svg;
    }

    // The data: per run of buckets, the min–max band and the average line.
    // Each point sits at the middle of its bucket.
    let mid = |p: &Point| frame.x(p.start.saturating_add(bucket_ms / 2));
    let _ = write!(svg, r##"<g class="chart-data"><title>{unit}</title>"##);
    for run in segments(&points, bucket_ms) {
        if let [p] = run {
            let x = n(mid(p));
            let _ = write!(
                svg,
                r##"<line class="chart-band" x1="{x}" x2="{x}" y1="{}" y2="{}" stroke="#b2ccff" stroke-width="4"/><circle class="chart-avg" cx="{x}" cy="{}" r="2.5" fill="#1d4ed8"/>"##,
                n(frame.y(p.max)),
                n(frame.y(p.min)),
                n(frame.y(p.avg))
            );
            continue;
        }
        let mut band = String::new();
        for p in run {
            let _ = write!(band, "{},{} ", n(mid(p)), n(frame.y(p.max)));
        }
        for p in run.iter().rev() {
            let _ = write!(band, "{},{} ", n(mid(p)), n(frame.y(p.min)));
        }
        let _ = write!(
            svg,
            r##"<polygon class="chart-band" points="{}" fill="#b2ccff" fill-opacity="0.6"/>"##,
            band.trim_end()
        );
        let mut line = String::new();
        for (i, p) in run.iter().enumerate() {
            let _ = write!(
                line,
                "{}{},{}",
                if i == 0 { "M" } else { " L" },
                n(mid(p)),
                n(frame.y(p.avg))
            );
        }
        let _ = write!(
            svg,
            r##"<path class="chart-avg" d="{line}" fill="none" stroke="#1d4ed8" stroke-width="1.5"/>"##
        );
    }
    svg.push_str("</g></svg>");
    svg
}

/// The chart in words, for screen readers.
fn describe(chart: &Chart<'_>, points: &[Point], from: i64, to: i64) -> String {
    let range = format!("from {} to {}", format_instant(from), format_instant(to));
    if points.is_empty() {
        return format!("No data {range}.");
    }
    let (min, max) = points
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), p| {
            (lo.min(p.min), hi.max(p.max))
        });
    let gaps = segments(points, chart.bucket_ms.max(1)).len() - 1;
    let unit = if chart.unit.is_empty() {
        String::new()
    } else {
        format!(" {}", chart.unit)
    };
    format!(
        "{range}: lowest {}{unit}, highest {}{unit}, in {} buckets{}.",
        fmt_value(min),
        fmt_value(max),
        points.len(),
        match gaps {
            0 => String::new(),
            1 => ", with 1 gap".into(),
            g => format!(", with {g} gaps"),
        }
    )
}

/// A value with up to two decimals.
fn fmt_value(v: f64) -> String {
    let r = (v * 100.0).round() / 100.0;
    if r == 0.0 { "0".into() } else { format!("{r}") }
}

#[cfg(test)]
mod tests;
