//! Retention against a real SQLite store fed through the pipeline: raw
//! points leaving retention are archived, then deleted; rollups remain.

use std::collections::BTreeSet;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use rampart_ingest::retention::{self, RetentionError, RetentionOptions};
use rampart_ingest::{Pipeline, PipelineOptions};
use rampart_proto::DeviceId;
use rampart_proto::ingest::{InboundMessage, IngestOutcome, MessageProperties, QoS};
use rampart_proto::telemetry::MetricName;
use rampart_proto::topic::Category;
use rampart_store::sqlite::SqliteOptions;
use rampart_store::telemetry::{PointFilter, Resolution, SeriesQuery, TelemetryStore};
use rampart_store::{AuditKey, SqliteStore};

const HOUR: i64 = 3_600_000;
const DAY: i64 = 24 * HOUR;
/// 2025-11-24T16:00:00Z: the end of the ingested span, "now".
const END: i64 = 1_764_000_000_000;
const DEVICES: [&str; 2] = ["greenhouse-1", "a4:cf:12:00:00:01"];
const READINGS: i64 = 160;

/// `(device, metric, ts_ms, seq, value bits)`: a point, comparable exactly.
type Point = (String, String, i64, u64, u64);

fn store(dir: &Path) -> Arc<SqliteStore> {
    Arc::new(
        SqliteStore::open(
            &dir.join("rampart.db"),
            AuditKey::new([0; 32], None),
            SqliteOptions::default(),
        )
        .expect("open store"),
    )
}

/// Feeds, per device, one reading every 6 hours over the 40 days before
/// `end` (received at `end`, so the device timestamps are kept), and
/// returns the stored points.
async fn ingest_40_days(store: Arc<SqliteStore>, end: i64) -> BTreeSet<Point> {
    let (pipeline, task) = Pipeline::start(store, PipelineOptions::default());
    let mut points = BTreeSet::new();
    for device in DEVICES {
        for k in 0..READINGS {
            let seq = k as u64 + 1;
            let ts = end - 40 * DAY + k * 6 * HOUR;
            let temperature = 15.0 + k as f64 / 8.0;
            let humidity = 0.1 * k as f64;
            let payload = format!(
                r#"{{"seq":{seq},"ts":{ts},"m":{{"temperature":{temperature},"humidity":{humidity}}}}}"#
            );
            let outcome = pipeline
                .process(InboundMessage {
                    device: DeviceId::parse(device).expect("id"),
                    category: Category::Telemetry,
                    qos: QoS::AtLeastOnce,
                    payload: Bytes::from(payload),
                    properties: MessageProperties::default(),
                    received_at_ms: end,
                })
                .await;
            assert!(matches!(outcome, IngestOutcome::Committed), "{outcome:?}");
            for (metric, value) in [("temperature", temperature), ("humidity", humidity)] {
                points.insert((device.into(), metric.into(), ts, seq, value.to_bits()));
            }
        }
    }
    drop(pipeline);
    task.await.expect("committer");
    points
}

async fn stored(store: &SqliteStore) -> BTreeSet<Point> {
    let mut out = BTreeSet::new();
    let mut cursor = None;
    loop {
        let (page, next) = store
            .export_points(&PointFilter::default(), cursor, 97)
            .await
            .expect("export");
        for p in page {
            out.insert((p.device, p.metric, p.ts_ms, p.seq, p.value.to_bits()));
        }
        match next {
            Some(c) => cursor = Some(c),
            None => return out,
        }
    }
}

fn parse_ts(s: &str) -> i64 {
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .expect("RFC 3339 timestamp");
    (t.unix_timestamp_nanos() / 1_000_000) as i64
}

/// Every archive file in `dir`, gunzipped and parsed: `(file name, points)`.
fn read_archive(dir: &Path) -> Vec<(String, Vec<Point>)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("archive dir")
        .map(|e| e.expect("entry").path())
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|path| {
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .expect("name")
                .to_owned();
            let mut text = String::new();
            flate2::read::MultiGzDecoder::new(std::fs::File::open(&path).expect("open"))
                .read_to_string(&mut text)
                .expect("gunzip");
            let points = text
                .lines()
                .map(|line| {
                    let v: serde_json::Value = serde_json::from_str(line).expect("json line");
                    (
                        v["device"].as_str().expect("device").to_owned(),
                        v["metric"].as_str().expect("metric").to_owned(),
                        parse_ts(v["ts"].as_str().expect("ts")),
                        v["seq"].as_u64().expect("seq"),
                        v["value"].as_f64().expect("value").to_bits(),
                    )
                })
                .collect();
            (name, points)
        })
        .collect()
}

fn utc_day(ts_ms: i64) -> String {
    let t =
        time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ts_ms) * 1_000_000).expect("ts");
    format!("{:04}-{:02}-{:02}", t.year(), u8::from(t.month()), t.day())
}

#[tokio::test]
async fn expired_raw_points_are_archived_by_day_then_deleted_and_rollups_remain() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = store(dir.path());
    let all = ingest_40_days(Arc::clone(&s), END).await;
    assert_eq!(all.len(), DEVICES.len() * READINGS as usize * 2);

    let archive_dir = dir.path().join("archive");
    let options = RetentionOptions {
        archive_dir: Some(archive_dir.clone()),
        ..RetentionOptions::default()
    };
    let report = retention::run_once(&*s, &options, END)
        .await
        .expect("retention pass");

    let cutoff = END - 30 * DAY;
    let (old, recent): (BTreeSet<Point>, BTreeSet<Point>) =
        all.iter().cloned().partition(|p| p.2 < cutoff);
    // 10 days of 4 readings, per device, 2 metrics; the reading at exactly
    // the cutoff stays.
    assert_eq!(old.len(), 10 * 4 * 2 * 2);
    assert_eq!(report.raw_before_ms, cutoff);
    assert_eq!(report.archived_points, old.len() as u64);
    assert_eq!(report.pruned.points, old.len() as u64);
    assert_eq!(report.pruned.readings, old.len() as u64 / 2);

    // The archive holds exactly the expired points, each in its day's file.
    let files = read_archive(&archive_dir);
    let mut archived = BTreeSet::new();
    for (name, points) in &files {
        assert!(!points.is_empty(), "{name} is empty");
        for p in points {
            assert_eq!(*name, format!("raw-{}-{END}.jsonl.gz", utc_day(p.2)));
            assert!(archived.insert(p.clone()), "{p:?} archived twice");
        }
    }
    assert_eq!(archived, old);
    // 40 days before END (16:00) to the cutoff touches 11 UTC days.
    assert_eq!(files.len(), 11);
    let mut reported: Vec<PathBuf> = report.archive_files.clone();
    reported.sort();
    let on_disk: Vec<PathBuf> = files.iter().map(|(n, _)| archive_dir.join(n)).collect();
    assert_eq!(reported, on_disk);

    // The store keeps exactly the recent points.
    assert_eq!(stored(&s).await, recent);
    assert_eq!(s.oldest_point().await.expect("oldest"), Some(cutoff));

    // Daily rollups still cover the whole span, archived days included.
    for device in DEVICES {
        let series = s
            .query_series(&SeriesQuery {
                device: DeviceId::parse(device).expect("id"),
                metric: MetricName::parse("temperature").expect("metric"),
                from_ms: END - 40 * DAY,
                to_ms: END,
                buckets: 40,
            })
            .await
            .expect("query");
        assert_eq!(series.resolution, Resolution::Day);
        let counted: u64 = series.buckets.iter().map(|b| b.count).sum();
        assert_eq!(counted, READINGS as u64);
        assert_eq!(
            series.buckets.first().map(|b| b.start),
            Some(Resolution::Day.bucket_of(END - 40 * DAY))
        );
        let first = series.buckets.first().expect("first bucket");
        // The first day holds readings 0 (16:00) and 1 (22:00).
        assert_eq!((first.count, first.min, first.last), (2, 15.0, 15.125));
    }

    // A second pass at the same time finds nothing more to archive and
    // touches no existing file.
    let again = retention::run_once(&*s, &options, END)
        .await
        .expect("second pass");
    assert_eq!(again.archived_points, 0);
    assert!(again.archive_files.is_empty());
    assert_eq!(again.pruned.points, 0);
    assert_eq!(read_archive(&archive_dir), files);
}

#[tokio::test]
async fn nothing_is_deleted_when_the_archive_cannot_be_written() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = store(dir.path());
    let all = ingest_40_days(Arc::clone(&s), END).await;
    // A regular file where the archive directory should be.
    let blocked = dir.path().join("not-a-dir");
    std::fs::write(&blocked, b"x").expect("write");
    let options = RetentionOptions {
        archive_dir: Some(blocked.join("archive")),
        ..RetentionOptions::default()
    };
    let err = retention::run_once(&*s, &options, END)
        .await
        .expect_err("archive must fail");
    assert!(matches!(err, RetentionError::Archive { .. }), "{err}");
    assert!(err.to_string().contains("nothing was deleted"), "{err}");
    assert_eq!(stored(&s).await, all);
}

#[tokio::test]
async fn without_an_archive_expired_points_are_only_deleted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = store(dir.path());
    let all = ingest_40_days(Arc::clone(&s), END).await;
    let options = RetentionOptions {
        raw: Duration::from_secs(20 * 86_400),
        ..RetentionOptions::default()
    };
    let report = retention::run_once(&*s, &options, END)
        .await
        .expect("retention pass");
    let recent: BTreeSet<Point> = all.into_iter().filter(|p| p.2 >= END - 20 * DAY).collect();
    assert_eq!(report.archived_points, 0);
    assert!(report.archive_files.is_empty());
    assert_eq!(stored(&s).await, recent);
    // Nothing was written next to the database.
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .expect("dir")
        .map(|e| e.expect("entry").file_name())
        .filter(|n| n.to_string_lossy().contains("raw-"))
        .collect();
    assert!(names.is_empty(), "{names:?}");
}

#[tokio::test]
async fn the_periodic_task_runs_a_pass_at_start_and_stops_on_shutdown() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = store(dir.path());
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64;
    // Received 3 hours ago, so that the pass's own clock reading (moments
    // later) puts the cutoff between the same two readings.
    ingest_40_days(Arc::clone(&s), now - 3 * HOUR).await;
    let archive_dir = dir.path().join("archive");
    let options = RetentionOptions {
        archive_dir: Some(archive_dir.clone()),
        ..RetentionOptions::default()
    };
    let shutdown = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(retention::run(
        Arc::clone(&s) as Arc<dyn TelemetryStore>,
        options,
        shutdown.clone(),
    ));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let oldest = s.oldest_point().await.expect("oldest").expect("points");
        if oldest >= now - 30 * DAY {
            break;
        }
        assert!(Instant::now() < deadline, "no retention pass within 30 s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("task stops on shutdown")
        .expect("task did not panic");
    let archived: usize = read_archive(&archive_dir)
        .iter()
        .map(|(_, p)| p.len())
        .sum();
    // Readings 0 to 40 (the one at 30 days minus 3 hours included).
    assert_eq!(archived, 41 * 2 * 2);
}
