//! Telemetry storage behaviour. Each scenario is generic over
//! [`TelemetryStore`] and runs against a real SQLite file and a real
//! PostgreSQL database (see `on_both!`); `both_backends_*` commit the same
//! items to both and compare every answer. Tests named `postgres_*` check
//! what only a shared server has (concurrent committers).

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use proptest::prelude::*;
use rampart_proto::DeviceId;
use rampart_proto::telemetry::MetricName;
use rampart_store::postgres::PostgresOptions;
use rampart_store::sqlite::{SqliteOptions, StagingOptions, WriterPriority};
use rampart_store::telemetry::{
    Bucket, DeviceTelemetryStats, IngestItem, ItemOutcome, NewReading, NewRejection, PointCursor,
    PointFilter, PointRecord, PresenceRecord, ReadingFate, Resolution, SeriesQuery, TelemetryStore,
};
use rampart_store::{Actor, AuditKey, NewDevice, PostgresStore, SqliteStore, Store};
use rampart_test_support::PgTestDb;

const T0: i64 = 1_764_000_000_000; // 2025-11-24T16:00:00Z
const DAY: i64 = 86_400_000;

fn open(dir: &Path) -> SqliteStore {
    open_with(dir, SqliteOptions::default())
}

/// A store on `dir` with the given options.
fn open_with(dir: &Path, options: SqliteOptions) -> SqliteStore {
    SqliteStore::open(
        &dir.join("rampart.db"),
        AuditKey::new([9; 32], Some(dir.join("audit.head"))),
        options,
    )
    .expect("open store")
}

/// `writer_priority = "adaptive"` with a takeover bound so short that the
/// standby thread takes the writes over and the idle writer takes them
/// back again and again while commits of eight devices race: every reading
/// whose commit returned is stored, once, with its value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adaptive_writer_hand_overs_lose_no_commit() {
    const DEVICES: u64 = 8;
    const READINGS: u64 = 25;
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open_with(
        dir.path(),
        SqliteOptions {
            writer_priority: WriterPriority::Adaptive,
            writer_takeover_after: Duration::from_millis(1),
            ..SqliteOptions::default()
        },
    );
    let writers: Vec<_> = (0..DEVICES)
        .map(|d| {
            let store = store.clone();
            tokio::spawn(async move {
                let device = format!("dev-{d}");
                for seq in 1..=READINGS {
                    let value = (d * 1000 + seq) as f64;
                    let at = T0 + seq as i64 * 1000;
                    let out = commit(
                        &store,
                        vec![message(&device, vec![reading(seq, at, &[("v", value)])])],
                        false,
                    )
                    .await;
                    assert_eq!(fates(&out), vec![ReadingFate::Stored], "{device} {seq}");
                }
            })
        })
        .collect();
    for w in writers {
        w.await.expect("writer task");
    }
    let mut stored = all_points(&store, None).await;
    stored.sort_by(|a, b| (&a.0, a.3).cmp(&(&b.0, b.3)));
    let expected: Vec<_> = (0..DEVICES)
        .flat_map(|d| {
            (1..=READINGS).map(move |seq| {
                (
                    format!("dev-{d}"),
                    "v".to_owned(),
                    T0 + seq as i64 * 1000,
                    seq,
                    (d * 1000 + seq) as f64,
                )
            })
        })
        .collect();
    assert_eq!(stored, expected);
    // Whether the queue changed hands depends on the disk and the
    // scheduler; that it is consistent afterwards does not.
    let stats = store.writer_stats();
    assert!(stats.takeovers >= u64::from(stats.taken_over), "{stats:?}");
}

/// A store on `db`; each call is another handle, as another process has.
async fn connect(db: &PgTestDb) -> PostgresStore {
    PostgresStore::connect(
        db.url(),
        AuditKey::new([9; 32], None),
        PostgresOptions::default(),
    )
    .await
    .expect("connect PostgreSQL store")
}

/// Generates `mod NAME { sqlite, postgres }` tests that run the scenario
/// `async fn NAME(store: &S)` on a fresh store of each backend.
macro_rules! on_both {
    ($($scenario:ident),* $(,)?) => {$(
        mod $scenario {
            use super::*;

            #[tokio::test]
            async fn sqlite() {
                let dir = tempfile::tempdir().expect("tempdir");
                super::$scenario(&open(dir.path())).await;
            }

            #[tokio::test]
            async fn postgres() {
                let Some(db) = PgTestDb::create().await else {
                    return;
                };
                super::$scenario(&connect(&db).await).await;
            }
        }
    )*};
}

on_both!(
    dedupe_and_conflicts,
    state_presence_and_rejections,
    presence_and_readings_update_registered_devices,
    rejected_keeps_the_newest_ten_thousand,
    outbox_holds_stored_points_until_acknowledged,
    retention_prunes_old_raw_data_but_keeps_rollups,
    a_week_of_points_queried_at_every_resolution,
    readings_are_counted_per_minute,
);

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

fn ms(t: time::OffsetDateTime) -> i64 {
    (t.unix_timestamp_nanos() / 1_000_000) as i64
}

fn presence(device: &str, at_ms: i64, online: bool, reason: Option<&str>) -> IngestItem {
    IngestItem::Presence(PresenceRecord {
        device: id(device),
        at_ms,
        online,
        reason: reason.map(String::from),
        addr: online.then(|| "127.0.0.1:5000".into()),
    })
}

async fn presence_and_readings_update_registered_devices<S: TelemetryStore + Store>(s: &S) {
    let now = time::OffsetDateTime::now_utc();
    s.create_device(
        NewDevice {
            id: id("reg-1"),
            serial: "01".repeat(16),
            fingerprint: "ab".repeat(32),
            not_before: now,
            not_after: now + time::Duration::days(365),
            claim_code_hash: "hash".into(),
        },
        &Actor {
            name: "cli:test".into(),
            source: "cli@localhost".into(),
        },
    )
    .await
    .expect("create device");
    let device = || async {
        s.device(&id("reg-1"))
            .await
            .expect("read device")
            .expect("registered")
    };

    // A taken-over session's disconnect arrives after the new connect: the
    // device stays online, and the event does not count as contact.
    commit(
        s,
        vec![
            presence("reg-1", T0, true, None),
            presence("reg-1", T0 + 5, false, Some("taken_over")),
        ],
        false,
    )
    .await;
    let d = device().await;
    assert!(d.online);
    assert_eq!(d.last_seen.map(ms), Some(T0));

    // Within one commit the last event decides; unregistered devices are
    // left alone.
    commit(
        s,
        vec![
            presence("reg-1", T0 + 10, true, None),
            presence("reg-1", T0 + 20, false, Some("keepalive_timeout")),
            presence("reg-1", T0 + 30, false, Some("taken_over")),
            presence("ghost-1", T0 + 40, true, None),
        ],
        false,
    )
    .await;
    let d = device().await;
    assert!(!d.online);
    assert_eq!(d.last_seen.map(ms), Some(T0 + 20));
    assert!(s.device(&id("ghost-1")).await.expect("read").is_none());

    // A late event sets presence but never moves last contact back.
    commit(s, vec![presence("reg-1", T0 + 1, true, None)], false).await;
    let d = device().await;
    assert!(d.online);
    assert_eq!(d.last_seen.map(ms), Some(T0 + 20));

    // A stored reading is contact at commit time.
    let before = ms(time::OffsetDateTime::now_utc());
    commit(
        s,
        vec![message("reg-1", vec![reading(1, T0, &[("t", 1.0)])])],
        false,
    )
    .await;
    let seen = device().await.last_seen.map(ms).expect("last seen");
    assert!(seen >= before, "{seen} < {before}");

    // Further readings move it in steps of at least a second (the registry
    // row is not rewritten by every commit of a chatty device), never back.
    for seq in 2..6 {
        commit(
            s,
            vec![message("reg-1", vec![reading(seq, T0, &[("t", 1.0)])])],
            false,
        )
        .await;
        let now = device().await.last_seen.map(ms).expect("last seen");
        assert!(
            now == seen || now - seen >= 1_000,
            "last seen moved by {} ms",
            now - seen
        );
    }
    // A connect still sets it exactly.
    let latest = device().await.last_seen.map(ms).expect("last seen");
    commit(s, vec![presence("reg-1", latest + 1, true, None)], false).await;
    assert_eq!(device().await.last_seen.map(ms), Some(latest + 1));
    assert_eq!(
        s.presence_history(&id("reg-1"), 100)
            .await
            .expect("history")
            .len(),
        7
    );
}

async fn rejected_keeps_the_newest_ten_thousand<S: TelemetryStore>(s: &S) {
    let reject = |n: u64| {
        IngestItem::Rejected(NewRejection {
            device: id("dev-x"),
            at_ms: T0 + n as i64,
            category: "telemetry".into(),
            kind: "payload_format_invalid".into(),
            detail: format!("message {n}"),
            seq: Some(n),
            payload: b"x".to_vec(),
            payload_len: 1,
        })
    };
    commit(s, (0..6000).map(reject).collect(), false).await;
    commit(s, (6000..10_005).map(reject).collect(), false).await;
    let kept = s.rejected(None, 20_000).await.expect("rejected");
    assert_eq!(kept.len(), 10_000);
    assert_eq!(kept.first().and_then(|r| r.seq), Some(10_004));
    assert_eq!(kept.last().and_then(|r| r.seq), Some(5));
    assert!(kept.windows(2).all(|w| w[0].id > w[1].id), "newest first");
    let stats = s.device_telemetry(&id("dev-x")).await.expect("stats");
    assert_eq!(stats.rejected, 10_005, "counters count every rejection");
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

async fn a_week_of_points_queried_at_every_resolution<S: TelemetryStore>(s: &S) {
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
        rollups_agree_with_raw(s, res, name, &points, 9, from, from + week, buckets).await;
    }
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(f)
}

/// Points over three days, how they are split into commits, and a query
/// aligned to the resolution it must be answered from.
#[derive(Debug, Clone)]
struct RollupCase {
    points: Vec<(i64, u64, f64)>,
    batches: usize,
    res: Resolution,
    from: i64,
    to: i64,
    buckets: u32,
}

impl RollupCase {
    async fn check<S: TelemetryStore>(&self, s: &S) {
        rollups_agree_with_raw(
            s,
            self.res,
            "p",
            &self.points,
            self.batches,
            self.from,
            self.to,
            self.buckets,
        )
        .await;
    }
}

fn rollup_case() -> impl Strategy<Value = RollupCase> {
    (
        prop::collection::vec((0i64..3 * DAY, -1000.0f64..1000.0), 1..120),
        1usize..6,
        prop::sample::select(vec![Resolution::Minute, Resolution::Hour, Resolution::Day]),
        1i64..5,
    )
        .prop_map(|(offsets, batches, res, multiple)| {
            let points = offsets
                .iter()
                .enumerate()
                .map(|(i, (off, v))| (T0 + off, i as u64, *v))
                .collect();
            let from = res.bucket_of(T0);
            // Exactly 3 days + one bucket, split into buckets of `multiple` resolutions.
            let to = from + 3 * DAY + res.millis();
            let buckets = u32::try_from((to - from) / (res.millis() * multiple))
                .unwrap_or(1)
                .max(1);
            RollupCase {
                points,
                batches,
                res,
                from,
                to,
                buckets,
            }
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Whatever the points, batching and query, the rollup answer equals
    /// the answer computed from raw points (bucket-aligned ranges).
    #[test]
    fn sqlite_rollups_match_raw_points(case in rollup_case()) {
        let dir = tempfile::tempdir().expect("tempdir");
        block_on(async { case.check(&open(dir.path())).await });
    }
}

proptest! {
    // Every case creates a database: fewer cases than on SQLite.
    #![proptest_config(ProptestConfig { cases: 8, ..ProptestConfig::default() })]

    /// The same property on PostgreSQL.
    #[test]
    fn postgres_rollups_match_raw_points(case in rollup_case()) {
        let Some(db) = PgTestDb::create_blocking() else {
            return Ok(());
        };
        block_on(async { case.check(&connect(&db).await).await });
    }
}

// ---------------------------------------------------------------------------
// Both backends, the same items: the same answers.

/// A small deterministic generator (xorshift64*): a workload is
/// reproducible from its seed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) % n.max(1)
    }
}

const DEVICES: [&str; 3] = ["dev-0", "dev-1", "dev-2"];
const METRICS: [&str; 3] = ["co2", "humidity", "temperature"];

/// Commits of a mixed workload on three devices and three metrics: new
/// readings (timestamps in any order, so late data too), replays and
/// conflicting resends (also within one commit), rejections, presence and
/// state reports. Every other commit feeds the export outbox. The last
/// commit always ends with a replay and a conflict.
fn workload(seed: u64) -> Vec<(Vec<IngestItem>, bool)> {
    let mut rng = Rng(seed | 1);
    let mut sent: Vec<(usize, NewReading)> = Vec::new();
    let mut next_seq = [0u64; 3];
    let mut commits = Vec::new();
    for c in 0..6 {
        let mut items = Vec::new();
        for i in 0..1 + rng.below(40) {
            let d = rng.below(3) as usize;
            let kind = if i == 0 { 0 } else { rng.below(12) };
            let item = match kind {
                0..=6 => {
                    let mut readings = Vec::new();
                    for _ in 0..1 + rng.below(3) {
                        next_seq[d] += 1 + rng.below(2);
                        let first = rng.below(3) as usize;
                        let n = 1 + rng.below(3 - first as u64) as usize;
                        let mut values = Vec::new();
                        for name in &METRICS[first..first + n] {
                            values.push((*name, (rng.below(200_001) as f64 - 100_000.0) / 7.0));
                        }
                        let ts = T0 + rng.below(3 * DAY as u64) as i64;
                        let r = reading(next_seq[d], ts, &values);
                        sent.push((d, r.clone()));
                        readings.push(r);
                    }
                    message(DEVICES[d], readings)
                }
                7 | 8 => {
                    let (d, r) = sent[rng.below(sent.len() as u64) as usize].clone();
                    message(DEVICES[d], vec![if kind == 8 { conflicting(r) } else { r }])
                }
                9 => IngestItem::Rejected(NewRejection {
                    device: id(DEVICES[d]),
                    at_ms: T0 + rng.below(DAY as u64) as i64,
                    category: "telemetry".into(),
                    kind: "payload_format_invalid".into(),
                    detail: format!("bad payload {c}/{i}"),
                    seq: if rng.below(2) == 0 {
                        Some(rng.below(100))
                    } else {
                        None
                    },
                    payload: vec![b'x'; rng.below(1000) as usize],
                    payload_len: 1000,
                }),
                10 => presence(
                    DEVICES[d],
                    T0 + rng.below(DAY as u64) as i64,
                    rng.below(2) == 0,
                    [None, Some("clean"), Some("taken_over")][rng.below(3) as usize],
                ),
                _ => IngestItem::State {
                    device: id(DEVICES[d]),
                    at_ms: T0 + rng.below(1000) as i64,
                    reported: serde_json::json!({ "fw": format!("1.{}", rng.below(5)) }),
                },
            };
            items.push(item);
        }
        commits.push((items, c % 2 == 0));
    }
    if let (Some((items, _)), Some((d, r))) = (commits.last_mut(), sent.first()) {
        items.push(message(DEVICES[*d], vec![r.clone()]));
        items.push(message(DEVICES[*d], vec![conflicting(r.clone())]));
    }
    commits
}

/// The same `(device, seq)` with other values.
fn conflicting(mut r: NewReading) -> NewReading {
    for (_, v) in &mut r.metrics {
        *v += 1.0;
    }
    r.digest ^= 1;
    r
}

/// Everything a store answers after a workload, timestamps taken at commit
/// time (which differ between two runs) reduced to whether they are set.
#[derive(Debug, PartialEq)]
struct Answers {
    outcomes: Vec<Vec<ItemOutcome>>,
    series: Vec<(String, rampart_store::telemetry::Series)>,
    export: Vec<(Vec<PointRecord>, Option<PointCursor>)>,
    filtered_export: Vec<(Vec<PointRecord>, Option<PointCursor>)>,
    rejected: Vec<rampart_store::telemetry::RejectedRecord>,
    stats: Vec<DeviceTelemetryStats>,
    presence: Vec<Vec<rampart_store::telemetry::PresenceHistoryRecord>>,
    states: Vec<Option<(serde_json::Value, i64)>>,
    outbox: Vec<(i64, Vec<PointRecord>)>,
    outbox_after_ack: Vec<(i64, Vec<PointRecord>)>,
    pruned: rampart_store::telemetry::Pruned,
    oldest_after_prune: Option<i64>,
    series_after_prune: Vec<(String, rampart_store::telemetry::Series)>,
    export_after_prune: Vec<(Vec<PointRecord>, Option<PointCursor>)>,
}

/// Averages are sums over counts, and how a sum rounds depends on the order
/// its points were added in (per commit, per compaction round): two stores
/// agree on them to a few units in the last place, not bit for bit. Takes
/// `reference`'s averages into `answer` where they agree that closely, so
/// that the comparisons after it are exact on everything else.
fn align_averages(
    answer: &mut [(String, rampart_store::telemetry::Series)],
    reference: &[(String, rampart_store::telemetry::Series)],
) {
    for ((_, a), (_, r)) in answer.iter_mut().zip(reference) {
        for (x, y) in a.buckets.iter_mut().zip(&r.buckets) {
            if (x.avg - y.avg).abs() <= 1e-9 * x.avg.abs().max(y.avg.abs()) {
                x.avg = y.avg;
            }
        }
    }
}

async fn every_series<S: TelemetryStore>(s: &S) -> Vec<(String, rampart_store::telemetry::Series)> {
    let day0 = Resolution::Day.bucket_of(T0);
    let mut out = Vec::new();
    for device in DEVICES {
        for name in METRICS {
            for (from, to, buckets) in [
                (day0, day0 + 4 * DAY, 3),
                (day0, day0 + 4 * DAY, 90),
                (day0, day0 + 4 * DAY, 3000),
                (day0, day0 + 4 * DAY, 400_000),
                (T0 + 12_345, T0 + 2 * DAY + 999, 50),
            ] {
                let q = SeriesQuery {
                    device: id(device),
                    metric: metric(name),
                    from_ms: from,
                    to_ms: to,
                    buckets,
                };
                let answer = s.query_series(&q).await.expect("query");
                out.push((format!("{device}/{name}/{from}..{to}/{buckets}"), answer));
            }
        }
    }
    out
}

async fn pages<S: TelemetryStore>(
    s: &S,
    filter: &PointFilter,
    size: u32,
) -> Vec<(Vec<PointRecord>, Option<PointCursor>)> {
    let mut out = Vec::new();
    let mut cursor = None;
    loop {
        let (page, next) = s.export_points(filter, cursor, size).await.expect("export");
        out.push((page, next));
        match next {
            Some(c) => cursor = Some(c),
            None => return out,
        }
    }
}

async fn run_workload<S: TelemetryStore>(s: &S, work: &[(Vec<IngestItem>, bool)]) -> Answers {
    let mut outcomes = Vec::new();
    for (items, outbox) in work {
        outcomes.push(commit(s, items.clone(), *outbox).await);
    }
    let series = every_series(s).await;
    let export = pages(s, &PointFilter::default(), 13).await;
    let filtered_export = pages(
        s,
        &PointFilter {
            device: Some(id("dev-1")),
            from_ms: Some(T0 + DAY / 2),
            to_ms: Some(T0 + 2 * DAY),
        },
        5,
    )
    .await;
    let rejected = s.rejected(None, 1000).await.expect("rejected");
    let mut stats = Vec::new();
    let mut presence = Vec::new();
    let mut states = Vec::new();
    for device in DEVICES {
        let mut st = s.device_telemetry(&id(device)).await.expect("stats");
        st.last_reading_at = st.last_reading_at.map(|_| 0);
        st.flagged_at = st.flagged_at.map(|_| 0);
        stats.push(st);
        presence.push(
            s.presence_history(&id(device), 1000)
                .await
                .expect("presence"),
        );
        states.push(s.reported_state(&id(device)).await.expect("state"));
    }
    let outbox = s.outbox_peek(100).await.expect("peek");
    if let [first, second, ..] = outbox.as_slice() {
        s.outbox_failed(second.0).await.expect("failed");
        s.outbox_ack(first.0).await.expect("ack");
    }
    let outbox_after_ack = s.outbox_peek(100).await.expect("peek");
    let pruned = s
        .prune(
            T0 + DAY,
            T0 + DAY + DAY / 2,
            Some(T0 + 2 * DAY),
            T0 + DAY / 2,
        )
        .await
        .expect("prune");
    Answers {
        outcomes,
        series,
        export,
        filtered_export,
        rejected,
        stats,
        presence,
        states,
        outbox,
        outbox_after_ack,
        pruned,
        oldest_after_prune: s.oldest_point().await.expect("oldest"),
        series_after_prune: every_series(s).await,
        export_after_prune: pages(s, &PointFilter::default(), 13).await,
    }
}

proptest! {
    // Every case creates a database.
    #![proptest_config(ProptestConfig { cases: 4, ..ProptestConfig::default() })]

    /// The same items committed to SQLite (points staged as by default,
    /// and with compaction rounds always in progress) and to PostgreSQL
    /// give the same answers: fates, charts at every resolution, exports
    /// page by page, rejections, counters, presence, state, outbox and
    /// retention.
    #[test]
    fn both_backends_give_the_same_answers_for_the_same_items(seed in any::<u64>()) {
        let Some(db) = PgTestDb::create_blocking() else {
            return Ok(());
        };
        let work = workload(seed);
        let dir = tempfile::tempdir().expect("tempdir");
        let eager_dir = tempfile::tempdir().expect("tempdir");
        let (mut lite, mut eager, pg) = block_on(async {
            let lite = run_workload(&open(dir.path()), &work).await;
            let eager = run_workload(&open_staged(eager_dir.path(), eager()), &work).await;
            let pg = run_workload(&connect(&db).await, &work).await;
            (lite, eager, pg)
        });
        for answers in [&mut lite, &mut eager] {
            align_averages(&mut answers.series, &pg.series);
            align_averages(&mut answers.series_after_prune, &pg.series_after_prune);
        }
        // The workload reached what it is meant to compare.
        let all = lite.outcomes.iter().flat_map(|o| fates(o)).collect::<Vec<_>>();
        prop_assert!(all.contains(&ReadingFate::Conflict) && all.contains(&ReadingFate::Duplicate));
        prop_assert!(lite.export.iter().map(|p| p.0.len()).sum::<usize>() > 0);
        prop_assert!(lite.series.iter().any(|(_, s)| !s.buckets.is_empty()));
        prop_assert!(!lite.outbox.is_empty());
        prop_assert_eq!(&lite.outcomes, &pg.outcomes);
        for ((what, a), (_, b)) in lite.series.iter().zip(&pg.series) {
            prop_assert_eq!(a, b, "{}", what);
        }
        prop_assert_eq!(&lite.export, &pg.export);
        prop_assert_eq!(&lite.filtered_export, &pg.filtered_export);
        prop_assert_eq!(&lite.rejected, &pg.rejected);
        prop_assert_eq!(&lite.stats, &pg.stats);
        prop_assert_eq!(&lite.presence, &pg.presence);
        prop_assert_eq!(&lite.states, &pg.states);
        prop_assert_eq!(&lite.outbox, &pg.outbox);
        prop_assert_eq!(&lite.outbox_after_ack, &pg.outbox_after_ack);
        prop_assert_eq!(lite.pruned, pg.pruned);
        prop_assert_eq!(lite.oldest_after_prune, pg.oldest_after_prune);
        for ((what, a), (_, b)) in lite.series_after_prune.iter().zip(&pg.series_after_prune) {
            prop_assert_eq!(a, b, "after prune: {}", what);
        }
        prop_assert_eq!(&lite.export_after_prune, &pg.export_after_prune);
        // Points staged, half moved or moved: the same answers.
        prop_assert_eq!(&eager, &pg);
        prop_assert_eq!(lite, pg);
    }
}

// ---------------------------------------------------------------------------
// PostgreSQL only: a shared server.

/// Two processes commit the same messages at the same time (a device that
/// reconnected to another replica and resent): each reading is stored
/// once, by one of them, and the other sees a duplicate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_concurrent_committers_store_each_reading_once() {
    let Some(db) = PgTestDb::create().await else {
        return;
    };
    let batches: Vec<Vec<IngestItem>> = (0..20u64)
        .map(|c| {
            (0..10u64)
                .map(|i| {
                    let seq = c * 10 + i;
                    message(
                        "dev-c",
                        vec![reading(
                            seq,
                            T0 + seq as i64 * 1000,
                            &[("t", seq as f64), ("h", 1.0)],
                        )],
                    )
                })
                .collect()
        })
        .collect();
    let run = |s: PostgresStore, batches: Vec<Vec<IngestItem>>| async move {
        let mut all = Vec::new();
        for b in batches {
            all.extend(fates(&commit(&s, b, true).await));
        }
        all
    };
    let a = tokio::spawn(run(connect(&db).await, batches.clone()));
    let b = tokio::spawn(run(connect(&db).await, batches));
    let (a, b) = (a.await.expect("committer a"), b.await.expect("committer b"));
    assert_eq!((a.len(), b.len()), (200, 200));
    for (seq, pair) in a.iter().zip(&b).enumerate() {
        assert!(
            matches!(
                pair,
                (ReadingFate::Stored, ReadingFate::Duplicate)
                    | (ReadingFate::Duplicate, ReadingFate::Stored)
            ),
            "seq {seq}: {pair:?}"
        );
    }

    let s = connect(&db).await;
    let stats = s.device_telemetry(&id("dev-c")).await.expect("stats");
    assert_eq!(
        (
            stats.readings,
            stats.duplicates,
            stats.conflicts,
            stats.last_seq
        ),
        (200, 200, 0, Some(199))
    );
    assert_eq!(stats.metrics, vec!["h", "t"]);
    assert_eq!(all_points(&s, None).await.len(), 400);
    let chart = s
        .query_series(&SeriesQuery {
            device: id("dev-c"),
            metric: metric("t"),
            from_ms: Resolution::Minute.bucket_of(T0),
            to_ms: T0 + 200_000 + 60_000,
            buckets: 4,
        })
        .await
        .expect("query");
    assert_eq!(chart.resolution, Resolution::Minute);
    assert_eq!(chart.buckets.iter().map(|b| b.count).sum::<u64>(), 200);
    assert_eq!(chart.buckets.last().map(|b| b.last), Some(199.0));
    let outbox = s.outbox_peek(1000).await.expect("peek");
    assert_eq!(outbox.iter().map(|(_, p)| p.len()).sum::<usize>(), 400);
    assert!(outbox.windows(2).all(|w| w[0].0 < w[1].0));
}

/// docs/operations.md: a dashboard role granted only the `grafana_*` views
/// reads charts and presence through them, and cannot read the tables.
#[tokio::test]
async fn postgres_grafana_views_serve_a_read_only_role() {
    let Some(db) = PgTestDb::create().await else {
        return;
    };
    let s = connect(&db).await;
    let minute = 60_000;
    let start = Resolution::Minute.bucket_of(T0);
    let items = (0..120u64)
        .map(|i| {
            message(
                "dev-g",
                vec![reading(i, start + i as i64 * 1000, &[("t", i as f64)])],
            )
        })
        .collect();
    commit(&s, items, false).await;
    let (admin, conn) = tokio_postgres::connect(db.url(), tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(conn);
    let role = format!("{}_grafana", db.name());
    admin
        .batch_execute(&format!(
            "CREATE ROLE {role} NOLOGIN;
             GRANT SELECT ON grafana_points, grafana_rollup_1m, grafana_rollup_1h,
                             grafana_rollup_1d, grafana_presence TO {role};
             SET ROLE {role};"
        ))
        .await
        .expect("role");
    let rows = admin
        .query(
            "SELECT bucket_ms, count, avg, last FROM grafana_rollup_1m
             WHERE device = 'dev-g' AND metric = 't' AND bucket_ms BETWEEN $1 AND $2
             ORDER BY bucket_ms",
            &[&start, &(start + 10 * minute)],
        )
        .await
        .expect("the role reads the view");
    let got: Vec<(i64, i64, f64, f64)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
    assert_eq!(
        got,
        vec![(start, 60, 29.5, 59.0), (start + minute, 60, 89.5, 119.0)]
    );
    let raw: i64 = admin
        .query_one(
            "SELECT count(*) FROM grafana_points WHERE device = 'dev-g' AND ts_ms >= $1",
            &[&start],
        )
        .await
        .expect("points view")
        .get(0);
    assert_eq!(raw, 120);
    let denied = admin.query("SELECT count(*) FROM points", &[]).await;
    assert!(denied.is_err(), "the tables stay closed to the role");
    admin
        .batch_execute(&format!(
            "RESET ROLE; REVOKE ALL ON grafana_points, grafana_rollup_1m, grafana_rollup_1h,
                 grafana_rollup_1d, grafana_presence FROM {role}; DROP ROLE {role};"
        ))
        .await
        .expect("drop role");
}

async fn readings_are_counted_per_minute<S: TelemetryStore>(s: &S) {
    const MIN: i64 = 60_000;
    // T0 is a whole minute. Two readings in its first minute, none in the
    // second, three in the third (two devices), one far earlier.
    commit(
        s,
        vec![
            message(
                "a",
                vec![
                    reading(1, T0, &[("t", 1.0)]),
                    reading(2, T0 + MIN - 1, &[("t", 2.0)]),
                ],
            ),
            message("a", vec![reading(3, T0 + 2 * MIN, &[("t", 3.0)])]),
            message(
                "b",
                vec![
                    reading(1, T0 + 2 * MIN + 5, &[("t", 3.0)]),
                    reading(2, T0 + 3 * MIN - 1, &[("t", 3.0)]),
                ],
            ),
            message("b", vec![reading(3, T0 - DAY, &[("t", 3.0)])]),
        ],
        false,
    )
    .await;
    let counts = s
        .readings_per_minute(T0 + 30_000, T0 + 10 * MIN)
        .await
        .expect("counts");
    // The start is rounded down to its minute.
    assert_eq!(counts, [(T0, 2), (T0 + 2 * MIN, 3)]);
    let counts = s
        .readings_per_minute(T0 + MIN, T0 + 2 * MIN)
        .await
        .expect("empty range");
    assert!(counts.is_empty(), "{counts:?}");
}

// ---------------------------------------------------------------------------
// SQLite staged points and readings (decisions 0018, 0019): answers never
// depend on how far compaction got.

/// A store on `dir` with the given staging.
fn open_staged(dir: &Path, staging: StagingOptions) -> SqliteStore {
    open_with(
        dir,
        SqliteOptions {
            staging,
            ..SqliteOptions::default()
        },
    )
}

/// Every point staged, a round started at every commit, each commit moving
/// as few series as it may and no background slice moving any: rounds are
/// in progress most of the time, at points the test decides.
fn eager() -> StagingOptions {
    StagingOptions {
        direct_points: usize::MAX,
        round_points: 1,
        round_age: Duration::ZERO,
        catch_up: 1,
        slice_rows: 0,
        ..StagingOptions::default()
    }
}

/// Every point staged and a round due at once, moved by background slices
/// of a few rows only (commits move nothing unless a lane is far behind).
fn background(slice_rows: usize) -> StagingOptions {
    StagingOptions {
        direct_points: usize::MAX,
        round_points: 1,
        round_age: Duration::ZERO,
        slice_rows,
        ..StagingOptions::default()
    }
}

/// Staging off: every commit writes `points` and `rollups` itself.
fn direct() -> StagingOptions {
    StagingOptions {
        direct_points: 0,
        ..StagingOptions::default()
    }
}

/// Asserts that `s` answers every chart and the whole export (page by
/// page) as `reference` does, averages to their rounding.
async fn assert_same_view<S: TelemetryStore, R: TelemetryStore>(s: &S, reference: &R, what: &str) {
    let mut charts = every_series(s).await;
    let expected = every_series(reference).await;
    align_averages(&mut charts, &expected);
    assert_eq!(charts, expected, "charts: {what}");
    assert_eq!(
        pages(s, &PointFilter::default(), 4).await,
        pages(reference, &PointFilter::default(), 4).await,
        "export: {what}"
    );
    // One device over part of the time: the staged points of the other
    // devices and times are left out, page by page.
    let one = PointFilter {
        device: Some(id(DEVICES[1])),
        from_ms: Some(T0 + 60_000),
        to_ms: Some(T0 + 2 * DAY),
    };
    assert_eq!(
        pages(s, &one, 3).await,
        pages(reference, &one, 3).await,
        "export of one device: {what}"
    );
    assert_eq!(
        s.oldest_point().await.expect("oldest"),
        reference.oldest_point().await.expect("oldest"),
        "oldest point: {what}"
    );
    let (from, to) = (T0 - 2 * DAY, T0 + 4 * DAY);
    assert_eq!(
        s.readings_per_minute(from, to).await.expect("per minute"),
        reference
            .readings_per_minute(from, to)
            .await
            .expect("per minute"),
        "readings per minute: {what}"
    );
}

/// The stored compaction progress `(mark, next_series)` and the number of
/// staged points, read from the file.
fn staging_state(dir: &Path) -> ((i64, i64), i64) {
    let conn = rusqlite::Connection::open(dir.join("rampart.db")).expect("open db");
    let progress = conn
        .query_row("SELECT mark, next_series FROM staged_progress", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .expect("progress");
    (
        progress,
        batch_bodies(&conn, "staged_point_batches")
            .iter()
            .map(|b| staged_points_in(b))
            .sum(),
    )
}

/// The readings lane's stored position (`None` between rounds) and its
/// number of staged readings, read from the file.
fn readings_staging_state(dir: &Path) -> (Option<(String, i64)>, i64) {
    let conn = rusqlite::Connection::open(dir.join("rampart.db")).expect("open db");
    let next = conn
        .query_row(
            "SELECT next_device, next_seq FROM staged_readings_progress",
            [],
            |r| {
                Ok(r.get::<_, Option<String>>(0)?
                    .zip(r.get::<_, Option<i64>>(1)?))
            },
        )
        .expect("progress");
    (next, staged_readings_in(&conn).len() as i64)
}

/// The bodies of a staging table's batches (decision 0024).
fn batch_bodies(conn: &rusqlite::Connection, table: &str) -> Vec<Vec<u8>> {
    let mut stmt = conn
        .prepare(&format!("SELECT body FROM {table} ORDER BY id"))
        .expect("select");
    stmt.query_map([], |r| r.get(0))
        .expect("query")
        .collect::<rusqlite::Result<_>>()
        .expect("bodies")
}

/// The points of a batch body, read by its documented layout: a format
/// byte (1), then 32 bytes per point.
fn staged_points_in(body: &[u8]) -> i64 {
    assert_eq!(body.first(), Some(&1), "format byte");
    assert_eq!((body.len() - 1) % 32, 0, "whole points");
    ((body.len() - 1) / 32) as i64
}

/// Every staged reading's `(device, seq)`, read by the documented layout:
/// a format byte (1), then per reading the device's length (two bytes,
/// little-endian), the device, and five 8-byte fields, seq first.
fn staged_readings_in(conn: &rusqlite::Connection) -> Vec<(String, i64)> {
    let mut out = Vec::new();
    for body in batch_bodies(conn, "staged_reading_batches") {
        assert_eq!(body.first(), Some(&1), "format byte");
        let mut rest = &body[1..];
        while !rest.is_empty() {
            let len = usize::from(u16::from_le_bytes([rest[0], rest[1]]));
            let device = std::str::from_utf8(&rest[2..2 + len]).expect("utf-8");
            let seq = i64::from_le_bytes(rest[2 + len..10 + len].try_into().expect("seq"));
            out.push((device.to_owned(), seq));
            rest = &rest[2 + len + 40..];
        }
    }
    out
}

/// Many series with several points each, in one commit of single-reading
/// messages (so it is staged, not written directly).
fn spread(first_seq: u64, at: i64) -> Vec<IngestItem> {
    let mut items = Vec::new();
    for (d, device) in DEVICES.iter().enumerate() {
        for k in 0..4u64 {
            let seq = first_seq + k;
            let ts = at + (k as i64) * 61_000 + d as i64;
            items.push(message(
                device,
                vec![reading(
                    seq,
                    ts,
                    &[
                        ("co2", 400.0 + seq as f64),
                        ("humidity", 40.0 - k as f64),
                        ("temperature", 20.5 + d as f64),
                    ],
                )],
            ));
        }
    }
    items
}

/// After every commit of a mixed workload, a store whose rounds are always
/// in progress answers every chart and export exactly as a store without
/// staging: a point is counted once whether staged, being moved or moved.
#[tokio::test]
async fn sqlite_answers_do_not_depend_on_compaction_progress() {
    let staged_dir = tempfile::tempdir().expect("tempdir");
    let direct_dir = tempfile::tempdir().expect("tempdir");
    let staged = open_staged(staged_dir.path(), eager());
    let plain = open_staged(direct_dir.path(), direct());
    let mut mid_round = 0;
    let mut readings_mid_round = 0;
    for seed in [3u64, 17, 2026] {
        for (items, outbox) in workload(seed) {
            let a = commit(&staged, items.clone(), outbox).await;
            let b = commit(&plain, items, outbox).await;
            assert_eq!(a, b, "outcomes");
            assert_same_view(&staged, &plain, &format!("workload {seed}")).await;
            let ((_, next_series), _) = staging_state(staged_dir.path());
            mid_round += usize::from(next_series != i64::MIN);
            readings_mid_round +=
                usize::from(readings_staging_state(staged_dir.path()).0.is_some());
        }
    }
    // The comparison ran while rounds were half done, not only between them.
    assert!(mid_round > 3, "rounds in progress at {mid_round} checks");
    assert!(
        readings_mid_round > 3,
        "readings rounds in progress at {readings_mid_round} checks"
    );
    let (_, left) = staging_state(direct_dir.path());
    assert_eq!(left, 0, "staging off stages nothing");
    assert_eq!(readings_staging_state(direct_dir.path()).1, 0);
}

/// Background slices move every staged row into the tables while no write
/// waits, without any further commit, and answers are the same at every
/// point on the way: the store reads while the slices run. The commits
/// come back to back, so that slices and commits (which move nothing
/// themselves) alternate in the middle of rounds.
#[tokio::test]
async fn sqlite_background_slices_move_staged_rows_without_commits() {
    let dir = tempfile::tempdir().expect("tempdir");
    let direct_dir = tempfile::tempdir().expect("tempdir");
    let staged = open_staged(dir.path(), background(3));
    let plain = open_staged(direct_dir.path(), direct());
    let work: Vec<_> = [5u64, 99].into_iter().flat_map(workload).collect();
    let mut outcomes = Vec::new();
    for (items, outbox) in &work {
        outcomes.push(commit(&staged, items.clone(), *outbox).await);
    }
    for ((items, outbox), a) in work.into_iter().zip(outcomes) {
        assert_eq!(a, commit(&plain, items, outbox).await, "outcomes");
    }
    // Reads while the slices run, until nothing is staged.
    let give_up = std::time::Instant::now() + rampart_test_support::wait_limit();
    let mut views = 0;
    loop {
        assert_same_view(&staged, &plain, &format!("view {views}")).await;
        views += 1;
        let ((_, next_series), points) = staging_state(dir.path());
        let (next_reading, readings) = readings_staging_state(dir.path());
        if points == 0 && readings == 0 && next_series == i64::MIN && next_reading.is_none() {
            break;
        }
        assert!(
            std::time::Instant::now() < give_up,
            "still staged after the wait limit: {points} points, {readings} readings"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_same_view(&staged, &plain, "everything moved").await;
    assert_eq!(staged.writer_stats().staged_rows, 0);
    // A replay of everything is recognised from the tables alone.
    for (items, _) in workload(5) {
        let replayed = commit(&staged, items.clone(), false).await;
        assert_eq!(replayed, commit(&plain, items, false).await, "replay");
    }
}

/// A round stopped half-way by a restart (or moved on by another store on
/// the same file) is picked up where the stored progress says; nothing is
/// moved twice or left behind, and retention finds every point in place.
#[tokio::test]
async fn sqlite_staged_points_survive_a_restart_and_a_second_writer() {
    let dir = tempfile::tempdir().expect("tempdir");
    let direct_dir = tempfile::tempdir().expect("tempdir");
    let plain = open_staged(direct_dir.path(), direct());
    let first = open_staged(dir.path(), eager());
    let base = spread(1, T0);
    commit(&first, base.clone(), false).await;
    commit(&plain, base, false).await;
    // The next commit starts a round and moves one series of nine.
    let one = vec![message(
        "dev-0",
        vec![reading(100, T0 + 5, &[("co2", 1.0)])],
    )];
    commit(&first, one.clone(), false).await;
    commit(&plain, one, false).await;
    let ((mark, next_series), staged) = staging_state(dir.path());
    assert!(
        mark > 0 && next_series != i64::MIN,
        "a round is in progress"
    );
    assert!(staged > 30, "the round's rows are still staged: {staged}");
    let (next_reading, staged_readings) = readings_staging_state(dir.path());
    assert!(next_reading.is_some(), "a readings round is in progress");
    assert!(
        staged_readings > 10,
        "readings still staged: {staged_readings}"
    );
    assert!(
        first.writer_stats().staged_rows > 0,
        "the store reports the rows it has still to move"
    );
    assert_same_view(&first, &plain, "mid-round").await;

    // A restart: the round is reloaded from the table, and a replay of
    // every reading is recognised, moved or staged.
    drop(first);
    let restarted = open_staged(dir.path(), eager());
    assert_same_view(&restarted, &plain, "after the restart").await;
    let mut replay = spread(1, T0);
    replay.push(message(
        "dev-2",
        vec![conflicting(reading(3, T0 + 7, &[("co2", 2.0)]))],
    ));
    let a = commit(&restarted, replay.clone(), false).await;
    assert_eq!(a, commit(&plain, replay, false).await, "replay outcomes");
    assert!(
        fates(&a).iter().all(|f| *f != ReadingFate::Stored),
        "nothing replayed is stored again: {a:?}"
    );
    // A second store on the same file, committing in turn with the first.
    let other = open_staged(dir.path(), eager());
    for i in 0..12u64 {
        let items = spread(200 + 10 * i, T0 + DAY + i as i64 * 3_600_000);
        let (writer, replayer) = if i % 2 == 0 {
            (&restarted, &other)
        } else {
            (&other, &restarted)
        };
        commit(writer, items.clone(), false).await;
        // The other store sees what the first staged: all duplicates.
        let replayed = commit(replayer, items.clone(), false).await;
        assert!(
            fates(&replayed)
                .iter()
                .all(|f| *f == ReadingFate::Duplicate),
            "commit {i} replayed on the other store: {replayed:?}"
        );
        commit(&plain, items, false).await;
        assert_same_view(&restarted, &plain, &format!("commit {i}, first store")).await;
        assert_same_view(&other, &plain, &format!("commit {i}, second store")).await;
    }

    // Retention first moves what is staged, then prunes it like the rest.
    let cut = (T0 + DAY + 5 * 3_600_000, T0 + DAY, Some(T0), T0);
    let a = restarted
        .prune(cut.0, cut.1, cut.2, cut.3)
        .await
        .expect("prune");
    let b = plain
        .prune(cut.0, cut.1, cut.2, cut.3)
        .await
        .expect("prune");
    assert_eq!(a, b);
    assert!(a.points > 0);
    assert_eq!(
        staging_state(dir.path()).1,
        0,
        "retention leaves nothing staged"
    );
    assert_same_view(&restarted, &plain, "after retention").await;
    assert_same_view(&other, &plain, "after retention, second store").await;
    // And staging goes on after it.
    let after = spread(900, T0 + 2 * DAY);
    commit(&other, after.clone(), false).await;
    commit(&plain, after, false).await;
    assert_same_view(&restarted, &plain, "staging after retention").await;
}

// ---------------------------------------------------------------------------
// SQLite WAL checkpoints off the writer's path.

/// A store on `dir` whose background checkpointer runs every `every`
/// (`None`: none).
fn open_checkpointed(dir: &Path, every: Option<Duration>) -> SqliteStore {
    open_with(
        dir,
        SqliteOptions {
            checkpoint_interval: every,
            ..SqliteOptions::default()
        },
    )
}

/// Commits enough readings to grow the database by many pages, far fewer
/// than the writer's automatic checkpoint waits for.
async fn grow(store: &SqliteStore) {
    for round in 0..8u64 {
        commit(store, spread(1 + round * 4, T0 + round as i64 * DAY), false).await;
    }
}

/// The database file only grows when a checkpoint copies the WAL into it:
/// with the background checkpointer it does while the store stays open
/// and no commit checkpoints; without it, it does not.
#[tokio::test]
async fn sqlite_checkpoints_the_wal_in_the_background() {
    let file_len = |dir: &Path| {
        std::fs::metadata(dir.join("rampart.db"))
            .expect("db file")
            .len()
    };
    let quiet_dir = tempfile::tempdir().expect("tempdir");
    let quiet = open_checkpointed(quiet_dir.path(), None);
    let before = file_len(quiet_dir.path());
    grow(&quiet).await;
    let wal = std::fs::metadata(quiet_dir.path().join("rampart.db-wal"))
        .expect("wal file")
        .len();
    assert!(wal > 16 * 4096, "the commits went to the WAL ({wal} bytes)");
    assert_eq!(
        file_len(quiet_dir.path()),
        before,
        "nothing checkpoints without the background checkpointer"
    );

    let dir = tempfile::tempdir().expect("tempdir");
    let store = open_checkpointed(dir.path(), Some(Duration::from_millis(20)));
    let before = file_len(dir.path());
    grow(&store).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while file_len(dir.path()) <= before {
        assert!(
            std::time::Instant::now() < deadline,
            "the WAL was not checkpointed into the database file within 20 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Everything committed is still there, read through a new connection
    // (moved into `readings` or still staged; a row being moved is in both).
    let conn = rusqlite::Connection::open(dir.path().join("rampart.db")).expect("open db");
    let mut keys: std::collections::BTreeSet<(String, i64)> =
        staged_readings_in(&conn).into_iter().collect();
    let mut stmt = conn
        .prepare("SELECT device_id, seq FROM readings")
        .expect("select");
    keys.extend(
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .expect("query")
            .map(|k| k.expect("key")),
    );
    assert_eq!(keys.len(), DEVICES.len() * 4 * 8);
    drop(quiet);
    drop(store);
}
