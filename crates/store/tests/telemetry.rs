//! Telemetry storage behaviour. Each scenario is generic over
//! [`TelemetryStore`] so every backend runs the same checks.

use std::path::Path;

use bytes::Bytes;
use proptest::prelude::*;
use rampart_proto::DeviceId;
use rampart_proto::telemetry::MetricName;
use rampart_store::sqlite::SqliteOptions;
use rampart_store::telemetry::{
    Bucket, IngestItem, ItemOutcome, NewReading, NewRejection, PointFilter, PresenceRecord,
    ReadingFate, Resolution, SeriesQuery, TelemetryStore,
};
use rampart_store::{AuditKey, SqliteStore};

const T0: i64 = 1_764_000_000_000; // 2025-11-24T16:00:00Z

fn open(dir: &Path) -> SqliteStore {
    SqliteStore::open(
        &dir.join("rampart.db"),
        AuditKey::new([9; 32], Some(dir.join("audit.head"))),
        SqliteOptions::default(),
    )
    .expect("open store")
}

fn id(s: &str) -> DeviceId {
    DeviceId::parse(s).expect("valid id")
}

fn metric(s: &str) -> MetricName {
    MetricName::parse(s).expect("valid metric")
}

fn reading(seq: u64, ts_ms: i64, metrics: &[(&str, f64)]) -> NewReading {
    NewReading {
        seq,
        ts_ms,
        received_ms: ts_ms,
        flags: 0,
        // Tests choose digests directly: equal content ⇔ equal digest.
        digest: metrics.iter().fold(ts_ms, |d, (_, v)| {
            d.wrapping_mul(31).wrapping_add(v.to_bits() as i64)
        }),
        metrics: metrics.iter().map(|(n, v)| (metric(n), *v)).collect(),
    }
}

fn message(device: &str, readings: Vec<NewReading>) -> IngestItem {
    IngestItem::Readings {
        device: id(device),
        readings,
        payload: Bytes::from_static(b"{\"seq\":1}"),
    }
}

async fn commit<S: TelemetryStore>(
    s: &S,
    items: Vec<IngestItem>,
    outbox: bool,
) -> Vec<ItemOutcome> {
    s.commit_ingest(items.into(), outbox)
        .await
        .expect("commit ingest")
}

fn fates(out: &[ItemOutcome]) -> Vec<ReadingFate> {
    out.iter()
        .flat_map(|o| match o {
            ItemOutcome::Readings(f) => f.clone(),
            ItemOutcome::Recorded => Vec::new(),
        })
        .collect()
}

async fn all_points<S: TelemetryStore>(
    s: &S,
    device: Option<&str>,
) -> Vec<(String, String, i64, u64, f64)> {
    let filter = PointFilter {
        device: device.map(id),
        ..PointFilter::default()
    };
    let mut out = Vec::new();
    let mut cursor = None;
    loop {
        let (page, next) = s.export_points(&filter, cursor, 7).await.expect("export");
        out.extend(
            page.into_iter()
                .map(|p| (p.device, p.metric, p.ts_ms, p.seq, p.value)),
        );
        match next {
            Some(c) => cursor = Some(c),
            None => return out,
        }
    }
}

async fn dedupe_and_conflicts<S: TelemetryStore>(s: &S) {
    let first = vec![
        message(
            "dev-a",
            vec![reading(1, T0, &[("temperature", 21.5), ("humidity", 40.0)])],
        ),
        message(
            "dev-a",
            vec![reading(2, T0 + 1000, &[("temperature", 21.7)])],
        ),
        message("dev-b", vec![reading(1, T0, &[("temperature", 19.0)])]),
    ];
    let out = commit(s, first, false).await;
    assert_eq!(fates(&out), vec![ReadingFate::Stored; 3]);

    // A replay (DUP redelivery) and a replay inside one batch are duplicates.
    let again = vec![
        message(
            "dev-a",
            vec![reading(2, T0 + 1000, &[("temperature", 21.7)])],
        ),
        message(
            "dev-a",
            vec![reading(3, T0 + 2000, &[("temperature", 22.0)])],
        ),
        message(
            "dev-a",
            vec![reading(3, T0 + 2000, &[("temperature", 22.0)])],
        ),
    ];
    let out = commit(s, again, false).await;
    assert_eq!(
        fates(&out),
        vec![
            ReadingFate::Duplicate,
            ReadingFate::Stored,
            ReadingFate::Duplicate
        ]
    );

    // Same seq, different content: a conflict, kept as rejected, device flagged.
    let out = commit(
        s,
        vec![message(
            "dev-a",
            vec![reading(1, T0, &[("temperature", 99.0)])],
        )],
        false,
    )
    .await;
    assert_eq!(fates(&out), vec![ReadingFate::Conflict]);
    let rejected = s.rejected(Some(&id("dev-a")), 10).await.expect("rejected");
    assert_eq!(rejected.len(), 1);
    assert_eq!(rejected[0].kind, "sequence_conflict");
    assert_eq!(rejected[0].seq, Some(1));
    let stats = s.device_telemetry(&id("dev-a")).await.expect("stats");
    assert_eq!(
        (
            stats.readings,
            stats.duplicates,
            stats.conflicts,
            stats.last_seq
        ),
        (3, 2, 1, Some(3))
    );
    assert!(stats.flagged_at.is_some());
    assert_eq!(stats.metrics, vec!["humidity", "temperature"]);
    assert!(
        s.device_telemetry(&id("dev-b"))
            .await
            .expect("stats")
            .flagged_at
            .is_none()
    );

    // Late buffered data (an older seq never stored) is stored.
    let out = commit(
        s,
        vec![message(
            "dev-b",
            vec![reading(0, T0 - 5000, &[("temperature", 18.0)])],
        )],
        false,
    )
    .await;
    assert_eq!(fates(&out), vec![ReadingFate::Stored]);

    // Exactly the stored points, once each, and the conflict's value is absent.
    let points = all_points(s, None).await;
    assert_eq!(points.len(), 6, "{points:?}");
    assert!(!points.iter().any(|p| p.4 == 99.0));
    let b = all_points(s, Some("dev-b")).await;
    assert_eq!(
        b.iter().map(|p| (p.2, p.3)).collect::<Vec<_>>(),
        vec![(T0 - 5000, 0), (T0, 1)]
    );
}

async fn state_presence_and_rejections<S: TelemetryStore>(s: &S) {
    let dev = id("dev-s");
    let items = vec![
        IngestItem::Presence(PresenceRecord {
            device: dev.clone(),
            at_ms: T0,
            online: true,
            reason: None,
            addr: Some("127.0.0.1:5000".into()),
        }),
        IngestItem::State {
            device: dev.clone(),
            at_ms: T0 + 10,
            reported: serde_json::json!({"fw": "1.2.0", "led": true}),
        },
        IngestItem::Rejected(NewRejection {
            device: dev.clone(),
            at_ms: T0 + 20,
            category: "telemetry".into(),
            kind: "payload_format_invalid".into(),
            detail: "payload does not decode as Json".into(),
            seq: None,
            payload: vec![b'x'; 4096],
            payload_len: 4096,
        }),
        IngestItem::Presence(PresenceRecord {
            device: dev.clone(),
            at_ms: T0 + 30,
            online: false,
            reason: Some("keepalive_timeout".into()),
            addr: None,
        }),
        // An older report arriving late does not replace the newer one.
        IngestItem::State {
            device: dev.clone(),
            at_ms: T0 + 5,
            reported: serde_json::json!({"fw": "1.1.0"}),
        },
    ];
    let out = commit(s, items, false).await;
    assert!(out.iter().all(|o| *o == ItemOutcome::Recorded));
    let history = s.presence_history(&dev, 10).await.expect("history");
    assert_eq!(history.len(), 2);
    assert!(!history[0].online);
    assert_eq!(history[0].reason.as_deref(), Some("keepalive_timeout"));
    assert_eq!(history[1].addr.as_deref(), Some("127.0.0.1:5000"));
    let (state, at) = s.reported_state(&dev).await.expect("state").expect("some");
    assert_eq!((state["fw"].as_str(), at), (Some("1.2.0"), T0 + 10));
    let rejected = s.rejected(None, 10).await.expect("rejected");
    assert_eq!(rejected.len(), 1);
    assert_eq!(rejected[0].payload.len(), 512, "only a prefix is kept");
    assert_eq!(rejected[0].payload_len, 4096);
    assert_eq!(s.device_telemetry(&dev).await.expect("stats").rejected, 1);
}

async fn outbox_holds_stored_points_until_acknowledged<S: TelemetryStore>(s: &S) {
    commit(
        s,
        vec![message(
            "dev-o",
            vec![reading(1, T0, &[("temperature", 1.0)])],
        )],
        true,
    )
    .await;
    // A duplicate adds nothing to export.
    commit(
        s,
        vec![
            message("dev-o", vec![reading(1, T0, &[("temperature", 1.0)])]),
            message("dev-o", vec![reading(2, T0 + 1, &[("temperature", 2.0)])]),
        ],
        true,
    )
    .await;
    let batches = s.outbox_peek(10).await.expect("peek");
    assert_eq!(batches.len(), 2);
    assert_eq!(batches[0].1.len(), 1);
    assert_eq!(batches[1].1.len(), 1);
    assert_eq!(batches[1].1[0].seq, 2);
    s.outbox_failed(batches[0].0).await.expect("failed");
    s.outbox_ack(batches[0].0).await.expect("ack");
    assert_eq!(s.outbox_peek(10).await.expect("peek").len(), 1);
}

async fn retention_prunes_old_raw_data_but_keeps_rollups<S: TelemetryStore>(s: &S) {
    let day = 86_400_000;
    let items = (0..10u64)
        .map(|i| {
            message(
                "dev-r",
                vec![reading(i, T0 + i as i64 * day, &[("t", i as f64)])],
            )
        })
        .collect();
    commit(s, items, false).await;
    assert_eq!(s.oldest_point().await.expect("oldest"), Some(T0));
    let pruned = s
        .prune(T0 + 5 * day, T0 + 2 * day, None, T0)
        .await
        .expect("prune");
    assert_eq!((pruned.points, pruned.readings), (5, 5));
    assert_eq!(pruned.rollups, 2);
    assert_eq!(s.oldest_point().await.expect("oldest"), Some(T0 + 5 * day));
    // The daily rollups still answer for the whole range.
    let series = s
        .query_series(&SeriesQuery {
            device: id("dev-r"),
            metric: metric("t"),
            from_ms: Resolution::Day.bucket_of(T0),
            to_ms: T0 + 10 * day,
            buckets: 10,
        })
        .await
        .expect("query");
    assert_eq!(series.resolution, Resolution::Day);
    assert_eq!(series.buckets.iter().map(|b| b.count).sum::<u64>(), 10);
}

/// Buckets computed directly from raw points, the reference for rollups.
fn reference(points: &[(i64, u64, f64)], origin: i64, width: i64, to: i64) -> Vec<Bucket> {
    let mut sorted: Vec<_> = points
        .iter()
        .filter(|p| p.0 >= origin && p.0 < to)
        .copied()
        .collect();
    sorted.sort_by_key(|p| (p.0, p.1));
    let mut out: Vec<Bucket> = Vec::new();
    for (ts, _, v) in sorted {
        let start = origin + (ts - origin).div_euclid(width) * width;
        match out.last_mut() {
            Some(b) if b.start == start => {
                b.min = b.min.min(v);
                b.max = b.max.max(v);
                b.avg += v;
                b.count += 1;
                b.last = v;
            }
            _ => out.push(Bucket {
                start,
                min: v,
                max: v,
                avg: v,
                count: 1,
                last: v,
            }),
        }
    }
    for b in &mut out {
        b.avg /= b.count as f64;
    }
    out
}

#[allow(clippy::too_many_arguments)]
async fn rollups_agree_with_raw<S: TelemetryStore>(
    s: &S,
    expect: Resolution,
    device: &str,
    points: &[(i64, u64, f64)],
    batches: usize,
    from: i64,
    to: i64,
    buckets: u32,
) {
    let chunk = points.len().div_ceil(batches.max(1)).max(1);
    for part in points.chunks(chunk) {
        let items = part
            .iter()
            .map(|(ts, seq, v)| message(device, vec![reading(*seq, *ts, &[("v", *v)])]))
            .collect();
        commit(s, items, false).await;
    }
    let answer = s
        .query_series(&SeriesQuery {
            device: id(device),
            metric: metric("v"),
            from_ms: from,
            to_ms: to,
            buckets,
        })
        .await
        .expect("query");
    assert_eq!(answer.resolution, expect);
    // Callers pass ranges aligned to the resolution, so whole rollup
    // buckets and raw points cover the same span.
    let want = reference(
        points,
        answer.resolution.bucket_of(from),
        answer.bucket_ms,
        to,
    );
    assert_eq!(
        answer.buckets.len(),
        want.len(),
        "{:?} vs {want:?}",
        answer.buckets
    );
    for (got, want) in answer.buckets.iter().zip(&want) {
        assert_eq!((got.start, got.count), (want.start, want.count));
        assert_eq!(
            (got.min, got.max, got.last),
            (want.min, want.max, want.last)
        );
        assert!((got.avg - want.avg).abs() <= 1e-9 * want.avg.abs().max(1.0));
    }
}

#[tokio::test]
async fn sqlite_dedupe_and_conflicts() {
    let dir = tempfile::tempdir().expect("tempdir");
    dedupe_and_conflicts(&open(dir.path())).await;
}

#[tokio::test]
async fn sqlite_state_presence_and_rejections() {
    let dir = tempfile::tempdir().expect("tempdir");
    state_presence_and_rejections(&open(dir.path())).await;
}

#[tokio::test]
async fn sqlite_outbox_holds_stored_points_until_acknowledged() {
    let dir = tempfile::tempdir().expect("tempdir");
    outbox_holds_stored_points_until_acknowledged(&open(dir.path())).await;
}

#[tokio::test]
async fn sqlite_retention_prunes_old_raw_data_but_keeps_rollups() {
    let dir = tempfile::tempdir().expect("tempdir");
    retention_prunes_old_raw_data_but_keeps_rollups(&open(dir.path())).await;
}

#[tokio::test]
async fn sqlite_a_week_of_points_queried_at_every_resolution() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = open(dir.path());
    // One point every 10 minutes for 8 days, values with a pattern.
    let points: Vec<_> = (0..8 * 144u64)
        .map(|i| (T0 + i as i64 * 600_000, i, ((i * 37) % 101) as f64 - 50.0))
        .collect();
    let week = 7 * 86_400_000;
    let from = Resolution::Day.bucket_of(T0);
    for (buckets, expect) in [
        (5u32, Resolution::Day),
        (100, Resolution::Hour),
        (1000, Resolution::Minute),
        (2_000_000, Resolution::Raw),
    ] {
        let answer = s
            .query_series(&SeriesQuery {
                device: id("w"),
                metric: metric("v"),
                from_ms: from,
                to_ms: from + week,
                buckets,
            })
            .await
            .expect("query");
        assert!(answer.buckets.is_empty());
        assert_eq!(answer.resolution, expect);
    }
    for (name, buckets, res) in [
        ("w1", 5, Resolution::Day),
        ("w2", 100, Resolution::Hour),
        ("w3", 1000, Resolution::Minute),
        ("w4", 200_000, Resolution::Raw),
    ] {
        rollups_agree_with_raw(&s, res, name, &points, 9, from, from + week, buckets).await;
    }
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(f)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Whatever the points, batching and query, the rollup answer equals
    /// the answer computed from raw points (bucket-aligned ranges).
    #[test]
    fn sqlite_rollups_match_raw_points(
        offsets in prop::collection::vec((0i64..3 * 86_400_000, -1000.0f64..1000.0), 1..120),
        batches in 1usize..6,
        res in prop::sample::select(vec![Resolution::Minute, Resolution::Hour, Resolution::Day]),
        multiple in 1i64..5,
    ) {
        let points: Vec<(i64, u64, f64)> = offsets
            .iter()
            .enumerate()
            .map(|(i, (off, v))| (T0 + off, i as u64, *v))
            .collect();
        let from = res.bucket_of(T0);
        // Exactly 3 days + one bucket, split into buckets of `multiple` resolutions.
        let to = from + 3 * 86_400_000 + res.millis();
        let buckets = u32::try_from((to - from) / (res.millis() * multiple)).unwrap_or(1).max(1);
        let dir = tempfile::tempdir().expect("tempdir");
        block_on(async {
            let s = open(dir.path());
            rollups_agree_with_raw(&s, res, "p", &points, batches, from, to, buckets).await;
        });
    }
}
