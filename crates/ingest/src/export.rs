//! Export of stored points as CSV or JSON lines, for `rampart telemetry
//! export` and the retention archive.
//!
//! Both formats carry one stored point per line with the same five columns,
//! `device, metric, ts, value, seq`, so that a file can be checked against
//! the store point by point: `(device, metric, seq)` identifies a point.
//! Timestamps are RFC 3339 in UTC with milliseconds
//! (`2026-11-25T21:00:00.123Z`), the store's own precision, so nothing is
//! rounded; values are written in the shortest form that parses back to the
//! same `f64` (ryu), never with a fixed number of decimals.
//!
//! The export pages through [`TelemetryStore::export_points`] so memory
//! stays bounded by one page whatever the size of the store.

use std::io::Write;

use rampart_store::StoreError;
use rampart_store::telemetry::{PointFilter, PointRecord, TelemetryStore};
use serde::Serialize;
use time::OffsetDateTime;
use time::format_description::FormatItem;
use time::macros::format_description;

/// Points fetched from the store per page.
pub const PAGE_SIZE: u32 = 10_000;

/// The CSV header line (without its line end).
pub const CSV_HEADER: &str = "device,metric,ts,value,seq";

/// RFC 3339, UTC, exactly three fractional digits.
const TS_FORMAT: &[FormatItem<'static>] =
    format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z");

/// A UTC day, as in archive file names.
const DAY_FORMAT: &[FormatItem<'static>] = format_description!("[year]-[month]-[day]");

/// The file formats of an export.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportFormat {
    /// Comma-separated values with a header line, quoted per RFC 4180 where
    /// a field needs it; lines end with `\n`.
    Csv,
    /// One JSON object per line:
    /// `{"device":..,"metric":..,"ts":..,"value":..,"seq":..}`.
    Jsonl,
}

/// Why an export stopped.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// The store could not be read.
    #[error("reading points from the store: {0}")]
    Store(#[from] StoreError),
    /// The output could not be written.
    #[error("writing the export: {0}")]
    Io(#[from] std::io::Error),
    /// A stored timestamp lies outside the years 0000 to 9999.
    #[error(
        "point {device}/{metric} seq {seq} has timestamp {ts_ms} ms, outside what RFC 3339 can express; the store holds a corrupt point"
    )]
    Timestamp {
        /// The point's device.
        device: String,
        /// The point's metric.
        metric: String,
        /// The point's sequence number.
        seq: u64,
        /// The offending timestamp, Unix ms.
        ts_ms: i64,
    },
}

/// Writes every point matching `filter` to `out` in `format`, one point per
/// line, and returns how many points were written. `out` is not flushed.
pub async fn write_points(
    store: &dyn TelemetryStore,
    filter: &PointFilter,
    format: ExportFormat,
    out: &mut (impl Write + Send),
) -> Result<u64, ExportError> {
    write_points_paged(store, filter, format, out, PAGE_SIZE).await
}

/// [`write_points`] with a chosen page size (tests use small pages to walk
/// the cursor).
async fn write_points_paged(
    store: &dyn TelemetryStore,
    filter: &PointFilter,
    format: ExportFormat,
    out: &mut (impl Write + Send),
    page_size: u32,
) -> Result<u64, ExportError> {
    if format == ExportFormat::Csv {
        out.write_all(CSV_HEADER.as_bytes())?;
        out.write_all(b"\n")?;
    }
    let mut written = 0u64;
    let mut cursor = None;
    loop {
        let (points, next) = store.export_points(filter, cursor, page_size).await?;
        for point in &points {
            match format {
                ExportFormat::Csv => write_csv_line(out, point)?,
                ExportFormat::Jsonl => write_jsonl_line(out, point)?,
            }
        }
        written += points.len() as u64;
        match next {
            Some(c) => cursor = Some(c),
            None => return Ok(written),
        }
    }
}

/// A point's timestamp as RFC 3339 UTC with milliseconds.
pub fn format_ts(point: &PointRecord) -> Result<String, ExportError> {
    format_ms(point.ts_ms).ok_or_else(|| timestamp_error(point))
}

/// Unix milliseconds as RFC 3339 UTC with milliseconds
/// (`2026-11-25T21:00:00.123Z`), the one timestamp format of exports and
/// the CLI; `None` outside the representable range.
pub fn format_ms(ms: i64) -> Option<String> {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()?
        .format(TS_FORMAT)
        .ok()
}

/// The UTC day (`YYYY-MM-DD`) holding a point's timestamp.
pub(crate) fn utc_day(point: &PointRecord) -> Result<String, ExportError> {
    datetime(point)?
        .format(DAY_FORMAT)
        .map_err(|_| timestamp_error(point))
}

fn datetime(point: &PointRecord) -> Result<OffsetDateTime, ExportError> {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(point.ts_ms) * 1_000_000)
        .map_err(|_| timestamp_error(point))
}

fn timestamp_error(point: &PointRecord) -> ExportError {
    ExportError::Timestamp {
        device: point.device.clone(),
        metric: point.metric.clone(),
        seq: point.seq,
        ts_ms: point.ts_ms,
    }
}

/// One exported line in the JSON form; field order is the documented one.
#[derive(Serialize)]
struct JsonLine<'a> {
    device: &'a str,
    metric: &'a str,
    ts: String,
    value: f64,
    seq: u64,
}

/// Writes `point` as one JSON object and a `\n`.
pub(crate) fn write_jsonl_line(
    out: &mut impl Write,
    point: &PointRecord,
) -> Result<(), ExportError> {
    let line = JsonLine {
        device: &point.device,
        metric: &point.metric,
        ts: format_ts(point)?,
        value: point.value,
        seq: point.seq,
    };
    serde_json::to_writer(&mut *out, &line).map_err(std::io::Error::from)?;
    out.write_all(b"\n")?;
    Ok(())
}

/// Writes `point` as one CSV record and a `\n`.
fn write_csv_line(out: &mut impl Write, point: &PointRecord) -> Result<(), ExportError> {
    let ts = format_ts(point)?;
    let mut value = ryu::Buffer::new();
    write_csv_field(out, &point.device)?;
    out.write_all(b",")?;
    write_csv_field(out, &point.metric)?;
    out.write_all(b",")?;
    // Timestamps, numbers and sequence numbers never need quotes.
    writeln!(out, "{ts},{},{}", value.format(point.value), point.seq)?;
    Ok(())
}

/// RFC 4180 §2 (6, 7): a field holding a comma, a double quote or a line
/// break is enclosed in double quotes, and a double quote inside it is
/// written twice.
fn write_csv_field(out: &mut impl Write, field: &str) -> std::io::Result<()> {
    if !field.contains([',', '"', '\r', '\n']) {
        return out.write_all(field.as_bytes());
    }
    out.write_all(b"\"")?;
    out.write_all(field.replace('"', "\"\"").as_bytes())?;
    out.write_all(b"\"")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;
    use std::sync::Arc;

    use rampart_proto::DeviceId;
    use rampart_proto::telemetry::MetricName;
    use rampart_store::sqlite::SqliteOptions;
    use rampart_store::telemetry::{IngestItem, NewReading};
    use rampart_store::{AuditKey, SqliteStore};

    /// 2026-11-25T21:00:00.123Z
    const T0: i64 = 1_795_640_400_123;

    fn store(dir: &std::path::Path) -> SqliteStore {
        SqliteStore::open(
            &dir.join("rampart.db"),
            AuditKey::new([0; 32], None),
            SqliteOptions::default(),
        )
        .expect("open store")
    }

    /// Stores one reading of `device`.
    async fn put(s: &SqliteStore, device: &str, seq: u64, ts_ms: i64, metrics: &[(&str, f64)]) {
        let reading = NewReading {
            seq,
            ts_ms,
            received_ms: ts_ms,
            flags: 0,
            digest: seq as i64,
            metrics: metrics
                .iter()
                .map(|&(m, v)| (MetricName::parse(m).expect("metric"), v))
                .collect(),
        };
        let item = IngestItem::Readings {
            device: DeviceId::parse(device).expect("id"),
            readings: vec![reading],
            payload: bytes::Bytes::new(),
        };
        s.commit_ingest(Arc::from(vec![item]), false)
            .await
            .expect("commit");
    }

    /// Values chosen to need every digit or an exponent to round-trip.
    const VALUES: [f64; 6] = [21.5, 0.1 + 0.2, -1e-300, 1.7976931348623157e308, 1e21, 3.0];

    async fn sample(s: &SqliteStore) -> BTreeSet<(String, String, i64, u64, u64)> {
        let mut expected = BTreeSet::new();
        for (i, v) in VALUES.iter().enumerate() {
            let seq = i as u64 + 1;
            let ts = T0 + i as i64 * 1000;
            put(
                s,
                "greenhouse-1",
                seq,
                ts,
                &[("temperature", *v), ("humidity", 40.0)],
            )
            .await;
            expected.insert((
                "greenhouse-1".into(),
                "temperature".into(),
                ts,
                seq,
                v.to_bits(),
            ));
            expected.insert((
                "greenhouse-1".into(),
                "humidity".into(),
                ts,
                seq,
                40f64.to_bits(),
            ));
        }
        put(s, "a4:cf:12:00:00:01", 7, T0, &[("t", 1.25)]).await;
        expected.insert((
            "a4:cf:12:00:00:01".into(),
            "t".into(),
            T0,
            7,
            1.25f64.to_bits(),
        ));
        expected
    }

    /// Parses our RFC 3339 form back to Unix ms.
    fn parse_ts(s: &str) -> i64 {
        let t = OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
            .expect("RFC 3339");
        assert_eq!(t.offset(), time::UtcOffset::UTC, "{s} is not UTC");
        assert!(s.ends_with('Z') && s.len() == 24, "{s}: not the ms form");
        (t.unix_timestamp_nanos() / 1_000_000) as i64
    }

    #[test]
    fn timestamps_are_utc_with_milliseconds() {
        let p = PointRecord {
            device: "d".into(),
            metric: "m".into(),
            ts_ms: T0,
            value: 1.0,
            seq: 1,
        };
        assert_eq!(format_ts(&p).expect("ts"), "2026-11-25T21:00:00.123Z");
        assert_eq!(utc_day(&p).expect("day"), "2026-11-25");
        let whole = PointRecord {
            ts_ms: 0,
            ..p.clone()
        };
        assert_eq!(format_ts(&whole).expect("ts"), "1970-01-01T00:00:00.000Z");
        let absurd = PointRecord {
            ts_ms: i64::MAX,
            ..p
        };
        assert!(matches!(
            format_ts(&absurd),
            Err(ExportError::Timestamp { .. })
        ));
    }

    #[test]
    fn csv_fields_are_quoted_only_when_needed() {
        let mut out = Vec::new();
        for f in ["plain", "a,b", "say \"hi\"", "two\nlines", ""] {
            write_csv_field(&mut out, f).expect("write");
            out.push(b'|');
        }
        assert_eq!(
            String::from_utf8(out).expect("utf8"),
            "plain|\"a,b\"|\"say \"\"hi\"\"\"|\"two\nlines\"||"
        );
    }

    #[tokio::test]
    async fn jsonl_holds_every_point_once_and_round_trips_values() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = store(dir.path());
        let expected = sample(&s).await;
        // A page of 4 walks the cursor across series and devices.
        let mut out = Vec::new();
        let n = write_points_paged(
            &s,
            &PointFilter::default(),
            ExportFormat::Jsonl,
            &mut out,
            4,
        )
        .await
        .expect("export");
        assert_eq!(n, expected.len() as u64);
        let text = String::from_utf8(out).expect("utf8");
        let mut got = BTreeSet::new();
        for line in text.lines() {
            let v: serde_json::Value = serde_json::from_str(line).expect("json line");
            let obj = v.as_object().expect("object");
            let keys: Vec<&str> = obj.keys().map(String::as_str).collect();
            let mut sorted = vec!["device", "metric", "ts", "value", "seq"];
            sorted.sort_unstable();
            assert_eq!(keys, sorted, "{line}");
            let value = obj["value"].as_f64().expect("value");
            let fresh = got.insert((
                obj["device"].as_str().expect("device").to_owned(),
                obj["metric"].as_str().expect("metric").to_owned(),
                parse_ts(obj["ts"].as_str().expect("ts")),
                obj["seq"].as_u64().expect("seq"),
                value.to_bits(),
            ));
            assert!(fresh, "point written twice: {line}");
        }
        assert_eq!(got, expected);
        assert!(text.contains(r#"{"device":"greenhouse-1","metric":"temperature","ts":"2026-11-25T21:00:00.123Z","value":21.5,"seq":1}"#), "{text}");
    }

    #[tokio::test]
    async fn csv_has_a_header_and_one_line_per_point() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = store(dir.path());
        let expected = sample(&s).await;
        let mut out = Vec::new();
        let n = write_points_paged(&s, &PointFilter::default(), ExportFormat::Csv, &mut out, 3)
            .await
            .expect("export");
        assert_eq!(n, expected.len() as u64);
        let text = String::from_utf8(out).expect("utf8");
        let mut lines = text.lines();
        assert_eq!(lines.next(), Some(CSV_HEADER));
        let mut got = BTreeSet::new();
        for line in lines {
            let cols: Vec<&str> = line.split(',').collect();
            assert_eq!(cols.len(), 5, "{line}");
            let value: f64 = cols[3].parse().expect("value");
            got.insert((
                cols[0].to_owned(),
                cols[1].to_owned(),
                parse_ts(cols[2]),
                cols[4].parse::<u64>().expect("seq"),
                value.to_bits(),
            ));
        }
        assert_eq!(got, expected);
        assert!(text.ends_with('\n'));
    }

    #[tokio::test]
    async fn the_filter_limits_device_and_time() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = store(dir.path());
        sample(&s).await;
        let filter = PointFilter {
            device: Some(DeviceId::parse("greenhouse-1").expect("id")),
            from_ms: Some(T0 + 1000),
            to_ms: Some(T0 + 3000),
        };
        let mut out = Vec::new();
        // `Send`, so that a server can spawn it.
        fn spawnable<F: std::future::Future + Send>(f: F) -> F {
            f
        }
        let n = spawnable(write_points(&s, &filter, ExportFormat::Csv, &mut out))
            .await
            .expect("export");
        // Readings 2 and 3, two metrics each.
        assert_eq!(n, 4);
        let text = String::from_utf8(out).expect("utf8");
        assert_eq!(text.lines().count(), 5);
        assert!(!text.contains("a4:cf"));
    }
}
