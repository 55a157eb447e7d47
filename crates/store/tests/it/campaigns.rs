//! OTA campaigns on both backends: targets resolved from the registry
//! (type, state, version, revoked and disabled left out), busy devices
//! refused, waves by the stable shuffle, status changes conditional and
//! audited, entries moving forward only, timeouts, cancel downlinks due.

use std::time::Duration;

use rampart_ota::campaign::{CampaignStatus, EntryState, Timeouts, Waves};
use rampart_ota::{SignRequest, SigningKey, sign, verify};
use rampart_store::telemetry::{IngestItem, TelemetryStore};
use rampart_store::{
    CampaignChange, CampaignStore, CampaignTarget, DeviceState, EntryMove, EntryQuery,
    FirmwareStore, NewCampaign, NewFirmware, NewFirmwareKey, PauseReason, Store, StoreError,
};
use time::OffsetDateTime;

use crate::store::{Backend, Postgres, Sqlite, cli, id, new_device, on_both};

on_both!(
    creation_resolves_the_target_and_assigns_waves,
    busy_devices_are_refused_with_their_campaign,
    status_changes_are_conditional_and_audited,
    entries_move_forward_only_and_time_out,
    cancel_leaves_downlinks_due_and_abort_cancels_the_queue,
    two_engines_racing_move_each_row_once,
);

/// Uploads firmware `version` for `sensor` and returns its id.
async fn firmware<S: FirmwareStore>(s: &S, version: &str) -> u64 {
    let key = SigningKey::generate();
    s.add_firmware_key(
        NewFirmwareKey {
            name: format!("k-{}", version.replace('.', "-")),
            public_key: *key.public_key().bytes(),
        },
        &cli(),
    )
    .await
    .expect("key");
    let req = SignRequest {
        device_type: "sensor",
        version,
        security_version: 1,
        created_at_ms: 1_764_000_000_000,
    };
    let bundle = sign(b"image bytes", &key, &req).expect("signs");
    let v = verify(bundle, &[key.public_key()], 1 << 20, Some("sensor")).expect("verifies");
    s.add_firmware(NewFirmware::verified(&v.proof().expect("proof")), &cli())
        .await
        .expect("upload")
        .id
}

/// Registers `name` reporting `type` and `fw`.
async fn device<S: Store + TelemetryStore>(s: &S, name: &str, n: u8, ty: &str, fw: &str) {
    s.create_device(new_device(name, n), &cli())
        .await
        .expect("device");
    s.commit_ingest(
        vec![IngestItem::State {
            device: id(name),
            at_ms: 1_764_000_000_000,
            reported: serde_json::json!({"type": ty, "fw": fw}),
        }]
        .into(),
        false,
    )
    .await
    .expect("state");
}

fn campaign(firmware_id: u64, target: CampaignTarget, waves: &str) -> NewCampaign {
    NewCampaign {
        name: "roll 1.1".into(),
        firmware_id,
        target,
        waves: waves.parse::<Waves>().expect("waves"),
        soak: Duration::from_secs(1),
        success_threshold: 0.9,
        failure_threshold: 0.1,
        timeouts: Timeouts::default(),
        approve: false,
    }
}

fn mv(campaign_id: u64, device: &str, to: EntryState) -> EntryMove {
    EntryMove {
        campaign_id,
        device_id: id(device),
        to,
        reason: None,
        bytes: None,
        total: None,
    }
}

async fn creation_resolves_the_target_and_assigns_waves(backend: impl Backend) {
    let s = backend.open().await;
    let fw = firmware(&s, "1.1.0").await;
    for n in 0..10u8 {
        device(&s, &format!("s-{n}"), n, "sensor", "1.0.0").await;
    }
    device(&s, "other", 20, "lamp", "1.0.0").await;
    device(&s, "current", 21, "sensor", "1.1.0").await;
    device(&s, "blocked", 22, "sensor", "1.0.0").await;
    s.set_device_disabled(&id("blocked"), true, &cli())
        .await
        .expect("disable");
    s.create_device(new_device("silent", 23), &cli())
        .await
        .expect("silent");

    let c = s
        .create_campaign(campaign(fw, CampaignTarget::All, "10,50,100"), &cli())
        .await
        .expect("create");
    assert_eq!(c.status, CampaignStatus::Draft);
    assert_eq!(c.devices, 10);
    assert_eq!(
        (c.device_type.as_str(), c.version.as_str()),
        ("sensor", "1.1.0")
    );
    assert_eq!(c.current_wave, 0);
    assert_eq!(s.campaign(c.id).await.expect("get"), Some(c.clone()));

    let page = s
        .campaign_entries(c.id, &EntryQuery::default())
        .await
        .expect("entries");
    assert_eq!(page.total, 10);
    let mut ids: Vec<&str> = page.entries.iter().map(|e| e.device_id.as_str()).collect();
    ids.sort_unstable();
    let want: Vec<String> = (0..10).map(|n| format!("s-{n}")).collect();
    assert_eq!(ids, want.iter().map(String::as_str).collect::<Vec<_>>());
    let waves = s.campaign_waves(c.id).await.expect("waves");
    let sizes: Vec<u64> = waves.iter().map(|w| w.counts.queued).collect();
    assert_eq!(sizes, vec![1, 4, 5]);
    // The order is the pure stable shuffle.
    let slots = rampart_ota::campaign::assign_waves(c.id, &want, &c.waves);
    for e in &page.entries {
        let slot = slots
            .iter()
            .find(|s| s.device == e.device_id.as_str())
            .expect("slot");
        assert_eq!((e.wave, e.position), (slot.wave, slot.position));
        assert_eq!(e.state, EntryState::Queued);
    }
    // Paging and filters.
    let second = s
        .campaign_entries(
            c.id,
            &EntryQuery {
                wave: Some(3),
                offset: 2,
                limit: 2,
                ..EntryQuery::default()
            },
        )
        .await
        .expect("page");
    assert_eq!(second.total, 5);
    assert_eq!(second.entries.len(), 2);

    // A listed unknown device is refused; a target with nothing left too.
    let unknown = s
        .create_campaign(
            campaign(fw, CampaignTarget::Devices(vec![id("nobody")]), "100"),
            &cli(),
        )
        .await;
    assert!(
        matches!(unknown, Err(StoreError::NotFound(_))),
        "{unknown:?}"
    );
    let nothing = s
        .create_campaign(
            campaign(
                fw,
                CampaignTarget::Devices(vec![id("current"), id("other")]),
                "100",
            ),
            &cli(),
        )
        .await;
    assert!(
        matches!(nothing, Err(StoreError::InvalidCampaign(_))),
        "{nothing:?}"
    );
    let bad = s
        .create_campaign(
            NewCampaign {
                failure_threshold: 1.5,
                ..campaign(fw, CampaignTarget::All, "100")
            },
            &cli(),
        )
        .await;
    assert!(
        matches!(bad, Err(StoreError::InvalidCampaign(_))),
        "{bad:?}"
    );
    let missing = s
        .create_campaign(campaign(999, CampaignTarget::All, "100"), &cli())
        .await;
    assert!(matches!(missing, Err(StoreError::FirmwareNotFound(999))));
    // State filter: none is bound.
    let bound = s
        .create_campaign(
            campaign(fw, CampaignTarget::State(DeviceState::Bound), "100"),
            &cli(),
        )
        .await;
    assert!(
        matches!(bound, Err(StoreError::InvalidCampaign(_))),
        "{bound:?}"
    );
    assert_eq!(s.list_campaigns(&[]).await.expect("list").len(), 1);
    let audit = s.audit_log(0, 1000).await.expect("audit");
    assert!(
        audit
            .iter()
            .any(|r| r.action == "campaign.create"
                && r.subject.as_deref() == Some(&*c.id.to_string()))
    );
}

async fn busy_devices_are_refused_with_their_campaign(backend: impl Backend) {
    let s = backend.open().await;
    let fw = firmware(&s, "1.1.0").await;
    for n in 0..3u8 {
        device(&s, &format!("s-{n}"), n, "sensor", "1.0.0").await;
    }
    let first = s
        .create_campaign(
            campaign(
                fw,
                CampaignTarget::Devices(vec![id("s-0"), id("s-1")]),
                "100",
            ),
            &cli(),
        )
        .await
        .expect("first");
    let err = s
        .create_campaign(campaign(fw, CampaignTarget::All, "100"), &cli())
        .await;
    match err {
        Err(StoreError::DeviceBusy(busy)) => {
            let names: Vec<&str> = busy.iter().map(|b| b.device_id.as_str()).collect();
            assert_eq!(names, vec!["s-0", "s-1"]);
            assert!(busy.iter().all(|b| b.campaign_id == first.id));
            let text = StoreError::DeviceBusy(busy).to_string();
            assert!(
                text.contains("device_busy") && text.contains("s-0"),
                "{text}"
            );
        }
        other => panic!("{other:?}"),
    }
    // Once the first is cancelled, its devices are free again.
    s.change_campaign(first.id, CampaignChange::Cancel, &cli())
        .await
        .expect("cancel");
    let second = s
        .create_campaign(campaign(fw, CampaignTarget::All, "100"), &cli())
        .await
        .expect("second");
    assert_eq!(second.devices, 3);
}

async fn status_changes_are_conditional_and_audited(backend: impl Backend) {
    let s = backend.open().await;
    let fw = firmware(&s, "1.1.0").await;
    for n in 0..4u8 {
        device(&s, &format!("s-{n}"), n, "sensor", "1.0.0").await;
    }
    let c = s
        .create_campaign(campaign(fw, CampaignTarget::All, "50,100"), &cli())
        .await
        .expect("create");
    // Not running yet: no wave starts, no pause.
    assert_eq!(s.start_wave(c.id, 1, &cli()).await.expect("start"), None);
    let refused = s
        .change_campaign(c.id, CampaignChange::Pause(PauseReason::Operator), &cli())
        .await;
    assert!(
        matches!(refused, Err(StoreError::CampaignStatus { .. })),
        "{refused:?}"
    );
    let running = s
        .change_campaign(c.id, CampaignChange::Approve, &cli())
        .await
        .expect("approve");
    assert_eq!(running.status, CampaignStatus::Running);
    let again = s
        .change_campaign(c.id, CampaignChange::Approve, &cli())
        .await;
    assert!(matches!(again, Err(StoreError::CampaignStatus { .. })));

    // Wave 1 starts once, whoever asks second gets nothing.
    let offered = s
        .start_wave(c.id, 1, &cli())
        .await
        .expect("start")
        .expect("started");
    assert_eq!(offered.len(), 2);
    assert!(
        offered.iter().all(|e| e.state == EntryState::Offered
            && e.offered_at.is_some()
            && e.deadline.is_some())
    );
    let other = backend.open().await;
    assert_eq!(
        other.start_wave(c.id, 1, &cli()).await.expect("again"),
        None
    );

    // Completing with open entries is refused.
    let early = s
        .change_campaign(c.id, CampaignChange::Complete, &cli())
        .await;
    assert!(
        matches!(early, Err(StoreError::CampaignStatus { .. })),
        "{early:?}"
    );

    // A success-threshold pause, resumed, marks the wave reviewed.
    let paused = s
        .change_campaign(
            c.id,
            CampaignChange::Pause(PauseReason::SuccessThreshold {
                wave: 1,
                succeeded: 1,
                offered: 2,
            }),
            &cli(),
        )
        .await
        .expect("pause");
    assert_eq!(paused.status_reason.as_deref(), Some("success-threshold"));
    assert_eq!(paused.reviewed_wave, 0);
    let resumed = s
        .change_campaign(c.id, CampaignChange::Resume, &cli())
        .await
        .expect("resume");
    assert_eq!(
        (resumed.status, resumed.reviewed_wave),
        (CampaignStatus::Running, 1)
    );
    assert_eq!(resumed.status_reason, None);

    let listed = s
        .list_campaigns(&[CampaignStatus::Running])
        .await
        .expect("list");
    assert_eq!(listed.len(), 1);
    assert!(
        s.list_campaigns(&[CampaignStatus::Draft])
            .await
            .expect("l")
            .is_empty()
    );

    let actions: Vec<String> = s
        .audit_log(0, 1000)
        .await
        .expect("audit")
        .into_iter()
        .filter(|r| r.action.starts_with("campaign."))
        .map(|r| r.action)
        .collect();
    assert_eq!(
        actions,
        vec![
            "campaign.create",
            "campaign.approve",
            "campaign.wave",
            "campaign.pause",
            "campaign.resume"
        ]
    );
    assert!(s.verify_audit().await.expect("verify").ok);
}

async fn entries_move_forward_only_and_time_out(backend: impl Backend) {
    let s = backend.open().await;
    let fw = firmware(&s, "1.1.0").await;
    for n in 0..3u8 {
        device(&s, &format!("s-{n}"), n, "sensor", "1.0.0").await;
    }
    let c = s
        .create_campaign(
            NewCampaign {
                approve: true,
                timeouts: Timeouts {
                    offered: Duration::from_millis(1),
                    ..Timeouts::default()
                },
                ..campaign(fw, CampaignTarget::All, "100")
            },
            &cli(),
        )
        .await
        .expect("create");
    assert_eq!(c.status, CampaignStatus::Running);
    // A report before the offer matches nothing.
    assert_eq!(
        s.active_entry(&id("s-0"), "1.1.0").await.expect("active"),
        None
    );
    s.start_wave(c.id, 1, &cli())
        .await
        .expect("start")
        .expect("started");
    let e = s
        .active_entry(&id("s-0"), "1.1.0")
        .await
        .expect("active")
        .expect("entry");
    assert_eq!(e.campaign_id, c.id);
    assert_eq!(s.active_entry(&id("s-0"), "9.9.9").await.expect("a"), None);
    assert_eq!(s.open_entries_of(&id("s-0")).await.expect("open").len(), 1);

    let mut progress = mv(c.id, "s-0", EntryState::Downloading);
    progress.bytes = Some(100);
    progress.total = Some(1000);
    let d = s
        .move_entry(progress.clone())
        .await
        .expect("move")
        .expect("moved");
    assert_eq!(
        (d.state, d.bytes, d.total),
        (EntryState::Downloading, Some(100), Some(1000))
    );
    progress.bytes = Some(600);
    let d = s
        .move_entry(progress)
        .await
        .expect("move")
        .expect("progress");
    assert_eq!(d.bytes, Some(600));
    s.move_entry(mv(c.id, "s-0", EntryState::PendingConfirm))
        .await
        .expect("move")
        .expect("moved");
    // A late downloading report is ignored.
    assert_eq!(
        s.move_entry(mv(c.id, "s-0", EntryState::Downloading))
            .await
            .expect("late"),
        None
    );
    let done = s
        .move_entry(mv(c.id, "s-0", EntryState::Succeeded))
        .await
        .expect("move")
        .expect("moved");
    assert_eq!((done.state, done.deadline), (EntryState::Succeeded, None));
    assert_eq!(
        s.move_entry(mv(c.id, "s-0", EntryState::Failed))
            .await
            .expect("final"),
        None
    );
    let mut failed = mv(c.id, "s-1", EntryState::RolledBack);
    failed.reason = Some("crash-loop".into());
    let f = s.move_entry(failed).await.expect("move").expect("moved");
    assert_eq!(f.reason.as_deref(), Some("crash-loop"));

    // s-2 is still offered, with a 1 ms deadline: it times out.
    let later = OffsetDateTime::now_utc() + time::Duration::seconds(1);
    let expired = s.expire_entries(later, 100).await.expect("expire");
    assert_eq!(expired.len(), 1);
    let x = expired.first().expect("one");
    assert_eq!(x.device_id.as_str(), "s-2");
    assert_eq!(
        (x.state, x.reason.as_deref()),
        (EntryState::Failed, Some("timeout-offered"))
    );
    assert!(
        s.expire_entries(later, 100)
            .await
            .expect("again")
            .is_empty()
    );

    let waves = s.campaign_waves(c.id).await.expect("waves");
    let w = waves.first().expect("wave 1");
    assert_eq!(
        (w.counts.succeeded, w.counts.rolled_back, w.counts.failed),
        (1, 1, 1)
    );
    assert_eq!(w.offered, 3);
    assert!(w.last_change_ms.is_some());
    let failed_only = s
        .campaign_entries(
            c.id,
            &EntryQuery {
                state: Some(EntryState::Failed),
                ..EntryQuery::default()
            },
        )
        .await
        .expect("filter");
    assert_eq!(failed_only.total, 1);
    let done = s
        .change_campaign(
            c.id,
            CampaignChange::Complete,
            &rampart_store::Actor::system(),
        )
        .await
        .expect("complete");
    assert_eq!(done.status, CampaignStatus::Completed);
}

async fn cancel_leaves_downlinks_due_and_abort_cancels_the_queue(backend: impl Backend) {
    let s = backend.open().await;
    let fw = firmware(&s, "1.1.0").await;
    for n in 0..6u8 {
        device(&s, &format!("s-{n}"), n, "sensor", "1.0.0").await;
    }
    let pick = |a: &str, b: &str, c: &str| CampaignTarget::Devices(vec![id(a), id(b), id(c)]);
    let c = s
        .create_campaign(
            NewCampaign {
                approve: true,
                ..campaign(fw, pick("s-0", "s-1", "s-2"), "34,100")
            },
            &cli(),
        )
        .await
        .expect("create");
    let first = s
        .start_wave(c.id, 1, &cli())
        .await
        .expect("start")
        .expect("started");
    assert_eq!(first.len(), 2);
    let (a, b) = (
        first.first().expect("a").device_id.as_str().to_owned(),
        first.get(1).expect("b").device_id.as_str().to_owned(),
    );
    // One switched already: cancel does not touch it.
    s.move_entry(mv(c.id, &b, EntryState::PendingReboot))
        .await
        .expect("move")
        .expect("moved");
    let cancelled = s
        .change_campaign(c.id, CampaignChange::Cancel, &cli())
        .await
        .expect("cancel");
    assert_eq!(cancelled.status, CampaignStatus::Cancelled);
    let due = s.pending_cancels(100).await.expect("due");
    assert_eq!(due.len(), 1);
    assert_eq!(due.first().expect("one").device_id.as_str(), a);
    assert!(s.cancel_sent(c.id, &id(&a)).await.expect("sent"));
    assert!(!s.cancel_sent(c.id, &id(&a)).await.expect("twice"));
    assert!(s.pending_cancels(100).await.expect("due").is_empty());
    let waves = s.campaign_waves(c.id).await.expect("waves");
    let all = waves
        .iter()
        .fold(rampart_ota::campaign::StateCounts::default(), |acc, w| {
            acc.plus(&w.counts)
        });
    assert_eq!((all.cancelled, all.pending_reboot), (2, 1));
    // The switched device still reports into its entry.
    s.move_entry(mv(c.id, &b, EntryState::Succeeded))
        .await
        .expect("move")
        .expect("moved");

    // Abort: queued entries cancelled, in-flight ones left to finish.
    let d = s
        .create_campaign(
            NewCampaign {
                approve: true,
                ..campaign(fw, pick("s-3", "s-4", "s-5"), "34,100")
            },
            &cli(),
        )
        .await
        .expect("create");
    s.start_wave(d.id, 1, &cli())
        .await
        .expect("start")
        .expect("started");
    let aborted = s
        .change_campaign(
            d.id,
            CampaignChange::Abort {
                failures: 1,
                offered: 2,
            },
            &rampart_store::Actor::system(),
        )
        .await
        .expect("abort");
    assert_eq!(
        (aborted.status, aborted.status_reason.as_deref()),
        (CampaignStatus::Aborted, Some("failure-threshold"))
    );
    let waves = s.campaign_waves(d.id).await.expect("waves");
    assert_eq!(waves.get(1).expect("wave 2").counts.cancelled, 1);
    assert_eq!(waves.first().expect("wave 1").counts.offered, 2);
    assert!(s.pending_cancels(100).await.expect("due").is_empty());
    let abort_row = s
        .audit_log(0, 1000)
        .await
        .expect("audit")
        .into_iter()
        .find(|r| r.action == "campaign.abort")
        .expect("audited");
    assert_eq!(abort_row.actor, "system");
    assert_eq!(abort_row.detail["failures"], 1);
    assert_eq!(abort_row.detail["offered"], 2);
}

async fn two_engines_racing_move_each_row_once(backend: impl Backend) {
    let s = backend.open().await;
    let fw = firmware(&s, "1.1.0").await;
    for n in 0..8u8 {
        device(&s, &format!("s-{n}"), n, "sensor", "1.0.0").await;
    }
    let c = s
        .create_campaign(
            NewCampaign {
                approve: true,
                ..campaign(fw, CampaignTarget::All, "100")
            },
            &cli(),
        )
        .await
        .expect("create");
    // Two handles (two replicas) start the same wave at once: one wins.
    let (a, b) = (backend.open().await, backend.open().await);
    let actor = rampart_store::Actor::system();
    let (ra, rb) = tokio::join!(a.start_wave(c.id, 1, &actor), b.start_wave(c.id, 1, &actor));
    let started: Vec<usize> = [ra.expect("a"), rb.expect("b")]
        .into_iter()
        .flatten()
        .map(|e| e.len())
        .collect();
    assert_eq!(started, vec![8]);
    // Two reports racing on each entry: it only ever moves forward, and
    // the later state wins whatever the order. Then both time out the
    // same entries: each fails once.
    let mut moved = 0;
    for n in 0..8u8 {
        let name = format!("s-{n}");
        let (ma, mb) = tokio::join!(
            a.move_entry(mv(c.id, &name, EntryState::Downloading)),
            b.move_entry(mv(c.id, &name, EntryState::Verifying))
        );
        let (ma, mb) = (ma.expect("a"), mb.expect("b"));
        assert!(ma.is_some() || mb.is_some(), "{name} moved by neither");
        moved += usize::from(ma.is_some()) + usize::from(mb.is_some());
        let entry = s
            .campaign_entries(c.id, &EntryQuery::default())
            .await
            .expect("entries")
            .entries
            .into_iter()
            .find(|e| e.device_id.as_str() == name)
            .expect("entry");
        // Whichever order they ran in, the entry never went backwards.
        assert!(
            matches!(entry.state, EntryState::Downloading | EntryState::Verifying),
            "{entry:?}"
        );
        if mb.is_some() {
            assert_eq!(entry.state, EntryState::Verifying);
        }
    }
    assert!((8..=16).contains(&moved));
    let later = OffsetDateTime::now_utc() + time::Duration::days(1);
    let (xa, xb) = tokio::join!(a.expire_entries(later, 100), b.expire_entries(later, 100));
    let expired = xa.expect("a").len() + xb.expect("b").len();
    assert_eq!(expired, 8);
    let waves = s.campaign_waves(c.id).await.expect("waves");
    assert_eq!(waves.first().expect("wave").counts.failed, 8);
}
