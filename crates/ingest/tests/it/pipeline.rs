//! The pipeline end to end against a real SQLite store.

use std::sync::Arc;

use bytes::Bytes;
use rampart_ingest::{LiveEvent, Pipeline, PipelineOptions};
use rampart_proto::DeviceId;
use rampart_proto::ingest::{
    Admission, InboundMessage, IngestOutcome, MessageProperties, QoS, RejectionKind,
};
use rampart_proto::topic::Category;
use rampart_store::sqlite::SqliteOptions;
use rampart_store::telemetry::{PointFilter, TelemetryStore};
use rampart_store::{AuditKey, SqliteStore};

const NOW: i64 = 1_764_000_000_000;

fn store(dir: &std::path::Path) -> Arc<SqliteStore> {
    Arc::new(
        SqliteStore::open(
            &dir.join("rampart.db"),
            AuditKey::new([3; 32], None),
            SqliteOptions::default(),
        )
        .expect("open"),
    )
}

fn msg(device: &str, category: Category, payload: impl Into<Bytes>) -> InboundMessage {
    InboundMessage {
        device: DeviceId::parse(device).expect("id"),
        category,
        qos: QoS::AtLeastOnce,
        payload: payload.into(),
        properties: MessageProperties::default(),
        received_at_ms: NOW,
    }
}

fn telemetry(device: &str, payload: impl Into<Bytes>) -> InboundMessage {
    msg(device, Category::Telemetry, payload)
}

fn rejected_kind(o: &IngestOutcome) -> Option<RejectionKind> {
    match o {
        IngestOutcome::Rejected(r) => Some(r.kind),
        _ => None,
    }
}

async fn stored(s: &SqliteStore, device: &str) -> Vec<(String, i64, u64, f64)> {
    let filter = PointFilter {
        device: Some(DeviceId::parse(device).expect("id")),
        ..PointFilter::default()
    };
    let (points, _) = s
        .export_points(&filter, None, 10_000)
        .await
        .expect("export");
    points
        .into_iter()
        .map(|p| (p.metric, p.ts_ms, p.seq, p.value))
        .collect()
}

#[tokio::test]
async fn bad_messages_are_rejected_alone_with_their_reason() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = store(dir.path());
    let (p, _task) = Pipeline::start(s.clone(), PipelineOptions::default());

    let deep = format!("{}1{}", "[".repeat(100_000), "]".repeat(100_000));
    let deep_small = format!(
        r#"{{"seq":1,"m":{}1{}}}"#,
        "[".repeat(20_000),
        "]".repeat(20_000)
    );
    let cbor_ok = rampart_proto::telemetry::encode(
        &[rampart_proto::telemetry::Reading {
            seq: 9,
            ts_ms: None,
            metrics: vec![(
                rampart_proto::telemetry::MetricName::parse("t").expect("name"),
                1.0,
            )],
        }],
        rampart_proto::telemetry::Encoding::Cbor,
    );
    let bad: Vec<(&str, Bytes, RejectionKind)> = vec![
        (
            "truncated cbor",
            Bytes::copy_from_slice(&cbor_ok[..cbor_ok.len() - 2]),
            RejectionKind::PayloadFormatInvalid,
        ),
        (
            "nan",
            Bytes::from_static(br#"{"seq":1,"m":{"t":NaN}}"#),
            RejectionKind::PayloadFormatInvalid,
        ),
        (
            "huge number",
            Bytes::from_static(br#"{"seq":1,"m":{"t":1e400}}"#),
            RejectionKind::PayloadFormatInvalid,
        ),
        (
            "deep nesting",
            Bytes::from(deep),
            RejectionKind::QuotaExceeded,
        ),
        (
            "deep nesting within the size limit",
            Bytes::from(deep_small),
            RejectionKind::PayloadFormatInvalid,
        ),
        (
            "10 MB",
            Bytes::from(vec![b'{'; 10 << 20]),
            RejectionKind::QuotaExceeded,
        ),
        (
            "sql in a name",
            Bytes::from_static(br#"{"seq":1,"m":{"t'); DROP TABLE points;--":1}}"#),
            RejectionKind::PayloadFormatInvalid,
        ),
        (
            "control char",
            Bytes::from_static(b"{\"seq\":1,\"m\":{\"t\\u0000\":1}}"),
            RejectionKind::PayloadFormatInvalid,
        ),
        (
            "no seq",
            Bytes::from_static(br#"{"m":{"t":1}}"#),
            RejectionKind::PayloadFormatInvalid,
        ),
        (
            "seq too big",
            Bytes::from_static(br#"{"seq":18446744073709551615,"m":{"t":1}}"#),
            RejectionKind::PayloadFormatInvalid,
        ),
    ];
    for (what, payload, want) in &bad {
        // Interleave a healthy device's message with each bad one.
        let o = p.process(telemetry("bad", payload.clone())).await;
        assert_eq!(rejected_kind(&o), Some(*want), "{what}: {o:?}");
        let o = p
            .process(telemetry(
                "good",
                format!(
                    r#"{{"seq":{},"ts":{NOW},"m":{{"t":{}}}}}"#,
                    what.len(),
                    what.len()
                ),
            ))
            .await;
        assert!(
            matches!(o, IngestOutcome::Committed | IngestOutcome::Duplicate),
            "{o:?}"
        );
    }
    // A sequence conflict: same seq, other content.
    assert_eq!(
        p.process(telemetry("bad", r#"{"seq":5,"m":{"t":1}}"#))
            .await,
        IngestOutcome::Committed
    );
    let o = p
        .process(telemetry("bad", r#"{"seq":5,"m":{"t":2}}"#))
        .await;
    assert_eq!(rejected_kind(&o), Some(RejectionKind::PayloadFormatInvalid));

    let rejected = s
        .rejected(Some(&DeviceId::parse("bad").expect("id")), 100)
        .await
        .expect("rejected");
    assert_eq!(rejected.len(), bad.len() + 1);
    assert_eq!(rejected[0].kind, "sequence_conflict");
    assert!(rejected.iter().all(|r| r.payload.len() <= 512));
    assert_eq!(
        rejected
            .iter()
            .find(|r| r.payload_len == 10 << 20)
            .map(|r| r.kind.as_str()),
        Some("quota_exceeded")
    );
    let stats = s
        .device_telemetry(&DeviceId::parse("bad").expect("id"))
        .await
        .expect("stats");
    assert_eq!(
        (stats.rejected, stats.conflicts, stats.readings),
        (bad.len() as u64 + 1, 1, 1)
    );
    assert!(stats.flagged_at.is_some());
    // The healthy device lost nothing.
    let good = stored(&s, "good").await;
    let mut seqs: Vec<u64> = bad.iter().map(|b| b.0.len() as u64).collect();
    seqs.sort();
    seqs.dedup();
    assert_eq!(good.iter().map(|g| g.2).collect::<Vec<_>>(), seqs);
    assert_eq!(
        s.device_telemetry(&DeviceId::parse("good").expect("id"))
            .await
            .expect("stats")
            .rejected,
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_devices_are_stored_exactly_once_and_fanned_out() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = store(dir.path());
    let (p, task) = Pipeline::start(s.clone(), PipelineOptions::default());
    let mut live = p.subscribe();
    let devices = 16;
    let per_device = 150u64;
    let mut tasks = Vec::new();
    for d in 0..devices {
        let p = p.clone();
        tasks.push(tokio::spawn(async move {
            let name = format!("dev-{d}");
            let mut outcomes = Vec::new();
            for seq in 0..per_device {
                let body = format!(
                    r#"{{"batch":[{{"seq":{},"ts":{},"m":{{"t":{seq},"h":1.5}}}},{{"seq":{},"ts":{},"m":{{"t":{seq}}}}}]}}"#,
                    seq * 2,
                    NOW - 100_000 + seq as i64,
                    seq * 2 + 1,
                    NOW - 100_000 + seq as i64
                );
                outcomes.push(p.process(telemetry(&name, body.clone())).await);
                // Every tenth message is sent twice, as after a reconnect.
                if seq % 10 == 0 {
                    outcomes.push(p.process(telemetry(&name, body)).await);
                }
            }
            outcomes
        }));
    }
    let mut committed = 0;
    let mut duplicates = 0;
    for t in tasks {
        for o in t.await.expect("task") {
            match o {
                IngestOutcome::Committed => committed += 1,
                IngestOutcome::Duplicate => duplicates += 1,
                other => panic!("unexpected {other:?}"),
            }
        }
    }
    assert_eq!(committed, devices * per_device as usize);
    assert_eq!(duplicates, devices * (per_device as usize).div_ceil(10));
    for d in 0..devices {
        let points = stored(&s, &format!("dev-{d}")).await;
        assert_eq!(points.len(), per_device as usize * 3);
    }
    let mut readings = 0;
    while let Ok(event) = live.try_recv() {
        if let LiveEvent::Readings { readings: r, .. } = &*event {
            readings += r.len();
        }
    }
    assert_eq!(readings, devices * per_device as usize * 2);
    let m = p.metrics();
    let commits = m.commits.load(std::sync::atomic::Ordering::Relaxed);
    assert!(commits >= 1);
    drop(p);
    task.await
        .expect("committer ends when the pipeline is dropped");
}

#[tokio::test]
async fn state_is_stored_and_other_uplinks_pass_through() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = store(dir.path());
    let (p, _task) = Pipeline::start(s.clone(), PipelineOptions::default());
    let o = p
        .process(msg("d", Category::State, r#"{"fw":"2.0.1"}"#))
        .await;
    assert_eq!(o, IngestOutcome::Committed);
    let (state, _) = s
        .reported_state(&DeviceId::parse("d").expect("id"))
        .await
        .expect("state")
        .expect("stored");
    assert_eq!(state["fw"], "2.0.1");
    assert_eq!(
        p.process(msg("d", Category::Cmd, "ok")).await,
        IngestOutcome::Committed
    );
    let o = p.process(msg("d", Category::State, "[]")).await;
    assert_eq!(rejected_kind(&o), Some(RejectionKind::PayloadFormatInvalid));
}

/// Decision 0016: admission answers once a message is checked and queued
/// (the broker routes it then); the queued outcome is the commit's. A
/// message refused by the checks is decided at admission (never routed);
/// a replay or a sequence conflict is only known from the commit.
#[tokio::test]
async fn admission_decides_refusals_and_queues_the_rest_for_their_commit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = store(dir.path());
    let (p, _task) = Pipeline::start(s.clone(), PipelineOptions::default());
    let queued = |a: &Admission| matches!(a, Admission::Queued(_));

    let first = p
        .admit(telemetry(
            "d",
            r#"{"seq":1,"ts":1764000000,"m":{"t":20.5}}"#,
        ))
        .await;
    assert!(queued(&first), "{first:?}");
    assert_eq!(first.outcome().await, IngestOutcome::Committed);
    assert_eq!(stored(&s, "d").await.len(), 1);

    let replay = p
        .admit(telemetry(
            "d",
            r#"{"seq":1,"ts":1764000000,"m":{"t":20.5}}"#,
        ))
        .await;
    assert!(queued(&replay), "{replay:?}");
    assert_eq!(replay.outcome().await, IngestOutcome::Duplicate);

    let conflict = p
        .admit(telemetry("d", r#"{"seq":1,"ts":1764000000,"m":{"t":99}}"#))
        .await;
    assert!(queued(&conflict), "{conflict:?}");
    let o = conflict.outcome().await;
    assert_eq!(rejected_kind(&o), Some(RejectionKind::PayloadFormatInvalid));

    let bad = p.admit(telemetry("d", "{not json")).await;
    match bad {
        Admission::Decided(o) => {
            assert_eq!(rejected_kind(&o), Some(RejectionKind::PayloadFormatInvalid));
        }
        other => panic!("a bad payload is refused at admission: {other:?}"),
    }
    let state = p
        .admit(msg("d", Category::State, r#"{"fw":"2.0.1"}"#))
        .await;
    assert!(queued(&state), "{state:?}");
    assert_eq!(state.outcome().await, IngestOutcome::Committed);
    match p.admit(msg("d", Category::Cmd, "ok")).await {
        Admission::Decided(IngestOutcome::Committed) => {}
        other => panic!("a pass-through uplink is decided at once: {other:?}"),
    }
    assert_eq!(
        stored(&s, "d").await.len(),
        1,
        "the replay and conflict add nothing"
    );
}

/// Group commits under load start at least `min_interval` apart, and what
/// arrives meanwhile shares one transaction; after a pause the next
/// message is committed at once.
#[tokio::test]
async fn commits_under_load_are_spaced_and_gather_what_arrives_meanwhile() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = store(dir.path());
    let interval = std::time::Duration::from_secs(2);
    let options = PipelineOptions {
        commit: rampart_ingest::CommitOptions {
            min_interval: interval,
            ..rampart_ingest::CommitOptions::default()
        },
        ..PipelineOptions::default()
    };
    let (p, _task) = Pipeline::start(s.clone(), options);
    let commits = || {
        p.metrics()
            .commits
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    let reading = |seq: u32| format!(r#"{{"seq":{seq},"ts":1764000000,"m":{{"t":{seq}}}}}"#);

    // Idle: the first message is committed at once, alone.
    let started = std::time::Instant::now();
    assert_eq!(
        p.process(telemetry("d", reading(1))).await,
        IngestOutcome::Committed
    );
    assert_eq!(commits(), 1);

    // Ten more arrive one after another while that commit's interval runs:
    // back-to-back commits would take each alone; paced, they share one.
    let mut admitted = Vec::new();
    for seq in 2..12 {
        admitted.push(p.admit(telemetry("d", reading(seq))).await);
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    for a in admitted {
        assert_eq!(a.outcome().await, IngestOutcome::Committed);
    }
    assert!(
        started.elapsed() >= interval,
        "the second commit started before the interval was over"
    );
    assert_eq!(commits(), 2, "what arrived during the interval was split");
    assert_eq!(stored(&s, "d").await.len(), 11);

    // After a pause longer than the interval, no wait: the commit starts
    // as soon as the message is queued.
    tokio::time::sleep(interval).await;
    let after_pause = std::time::Instant::now();
    assert_eq!(
        p.process(telemetry("d", reading(12))).await,
        IngestOutcome::Committed
    );
    assert!(
        after_pause.elapsed() < interval,
        "a message after a pause waited"
    );
    assert_eq!(commits(), 3);
}
