//! Store behaviour against a real SQLite file.

use std::path::Path;

use rampart_pki::RevocationReason;
use rampart_proto::DeviceId;
use rampart_store::sqlite::SqliteOptions;
use rampart_store::{
    Actor, AuditEntry, AuditKey, CertificateStatus, ChangeKind, DeviceFilter, DeviceState,
    NewDevice, SqliteStore, Store, StoreError,
};
use rusqlite::Connection;
use time::{Duration, OffsetDateTime};

const KEY: [u8; 32] = [7; 32];

fn open(dir: &Path) -> SqliteStore {
    SqliteStore::open(
        &dir.join("rampart.db"),
        AuditKey::new(KEY, Some(dir.join("audit.head"))),
        SqliteOptions::default(),
    )
    .expect("open store")
}

fn id(s: &str) -> DeviceId {
    DeviceId::parse(s).expect("valid id")
}

fn new_device(name: &str, n: u8) -> NewDevice {
    let now = OffsetDateTime::now_utc();
    NewDevice {
        id: id(name),
        serial: format!("{n:02x}{}", "ab".repeat(15)),
        fingerprint: format!("{n:02x}{}", "cd".repeat(31)),
        not_before: now,
        not_after: now + Duration::days(365),
        claim_code_hash: "hash".into(),
    }
}

fn cli() -> Actor {
    Actor {
        name: "cli:test".into(),
        source: "cli@localhost".into(),
    }
}

#[tokio::test]
async fn devices_lifecycle_and_change_feed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path());

    let dev = store
        .create_device(new_device("greenhouse-1", 1), &cli())
        .await
        .expect("create");
    assert_eq!(dev.state, DeviceState::Unbound);
    assert!(!dev.online);
    store
        .create_device(new_device("a4:cf:12:00:00:01", 2), &cli())
        .await
        .expect("create mac-named");

    let err = store
        .create_device(new_device("greenhouse-1", 3), &cli())
        .await
        .expect_err("duplicate id");
    assert!(matches!(err, StoreError::IdTaken(_)), "{err}");

    let all = store
        .list_devices(&DeviceFilter::default())
        .await
        .expect("list");
    assert_eq!(
        all.iter().map(|d| d.id.as_str()).collect::<Vec<_>>(),
        ["a4:cf:12:00:00:01", "greenhouse-1"]
    );
    let searched = store
        .list_devices(&DeviceFilter {
            search: Some("green".into()),
            ..Default::default()
        })
        .await
        .expect("search");
    assert_eq!(searched.len(), 1);

    let disabled = store
        .set_device_disabled(&id("greenhouse-1"), true, &cli())
        .await
        .expect("disable");
    assert_eq!(disabled.state, DeviceState::Disabled);
    let enabled = store
        .set_device_disabled(&id("greenhouse-1"), false, &cli())
        .await
        .expect("enable");
    assert_eq!(enabled.state, DeviceState::Unbound);

    let revoked = store
        .revoke_device(&id("greenhouse-1"), RevocationReason::KeyCompromise, &cli())
        .await
        .expect("revoke");
    assert_eq!(revoked.state, DeviceState::Revoked);
    let err = store
        .set_device_disabled(&id("greenhouse-1"), false, &cli())
        .await
        .expect_err("revoked cannot be enabled");
    assert!(matches!(err, StoreError::InvalidState { .. }), "{err}");
    let cert = store
        .certificate(&revoked.serial)
        .await
        .expect("cert")
        .expect("present");
    assert_eq!(cert.status, CertificateStatus::Revoked);
    assert_eq!(
        cert.revocation_reason,
        Some(RevocationReason::KeyCompromise)
    );

    store
        .delete_device(&id("a4:cf:12:00:00:01"), &cli())
        .await
        .expect("delete");
    assert!(
        store
            .device(&id("a4:cf:12:00:00:01"))
            .await
            .expect("get")
            .is_none()
    );
    let crl = store.revoked_certificates().await.expect("revoked");
    let reasons: Vec<_> = crl
        .iter()
        .map(|c| (c.identity.as_str(), c.reason))
        .collect();
    assert_eq!(
        reasons,
        [
            ("greenhouse-1", RevocationReason::KeyCompromise),
            ("a4:cf:12:00:00:01", RevocationReason::CessationOfOperation)
        ]
    );
    // The id is free again after delete.
    store
        .create_device(new_device("a4:cf:12:00:00:01", 4), &cli())
        .await
        .expect("re-create after delete");

    let feed: Vec<_> = store
        .changes_since(0)
        .await
        .expect("feed")
        .into_iter()
        .map(|c| (c.kind, c.subject))
        .collect();
    assert_eq!(feed.len(), 7);
    assert_eq!(feed[4], (ChangeKind::DeviceRevoked, "greenhouse-1".into()));
    let latest = store.latest_change().await.expect("latest");
    assert!(store.changes_since(latest).await.expect("tail").is_empty());

    assert_eq!(store.next_crl_number().await.expect("crl n"), 1);
    assert_eq!(store.next_crl_number().await.expect("crl n"), 2);
}

async fn audited_store(dir: &Path, rows: usize) -> SqliteStore {
    let store = open(dir);
    for i in 0..rows {
        store
            .record_audit(AuditEntry {
                actor: cli(),
                action: "test.action".into(),
                subject: Some(format!("thing-{i}")),
                detail: serde_json::json!({ "i": i }),
            })
            .await
            .expect("append");
    }
    store
}

/// What an attacker with write access to the file (but not the key) can do.
fn tamper(dir: &Path, sql: &str) {
    let conn = Connection::open(dir.join("rampart.db")).expect("open raw");
    conn.execute_batch("DROP TRIGGER audit_log_no_update; DROP TRIGGER audit_log_no_delete;")
        .expect("drop triggers");
    conn.execute_batch(sql).expect("tamper");
}

#[tokio::test]
async fn audit_chain_verifies_when_intact() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = audited_store(dir.path(), 5).await;
    let report = store.verify_audit().await.expect("verify");
    assert!(report.ok, "{report:?}");
    assert_eq!(report.rows, 5);
    let page = store.audit_log(2, 2).await.expect("page");
    assert_eq!(page.iter().map(|r| r.seq).collect::<Vec<_>>(), [3, 4]);
}

#[tokio::test]
async fn audit_log_refuses_plain_updates() {
    let dir = tempfile::tempdir().expect("tempdir");
    let _store = audited_store(dir.path(), 2).await;
    let conn = Connection::open(dir.path().join("rampart.db")).expect("open raw");
    let err = conn
        .execute("DELETE FROM audit_log WHERE seq = 1", [])
        .expect_err("append-only");
    assert!(err.to_string().contains("append-only"), "{err}");
}

#[tokio::test]
async fn audit_chain_detects_an_edited_row() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = audited_store(dir.path(), 5).await;
    tamper(
        dir.path(),
        "UPDATE audit_log SET actor = 'someone-else' WHERE seq = 3",
    );
    let report = store.verify_audit().await.expect("verify");
    assert!(!report.ok);
    assert_eq!(report.rows, 2);
    let b = report.first_break.expect("break");
    assert_eq!(b.seq, 3);
    assert!(b.problem.contains("edited"), "{}", b.problem);
}

#[tokio::test]
async fn audit_chain_detects_a_deleted_row() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = audited_store(dir.path(), 5).await;
    tamper(dir.path(), "DELETE FROM audit_log WHERE seq = 2");
    let report = store.verify_audit().await.expect("verify");
    let b = report.first_break.expect("break");
    assert_eq!(b.seq, 3);
    assert!(b.problem.contains("missing"), "{}", b.problem);
}

#[tokio::test]
async fn audit_chain_detects_an_edit_with_recomputed_hashes() {
    use sha2::{Digest, Sha256};
    let dir = tempfile::tempdir().expect("tempdir");
    let store = audited_store(dir.path(), 5).await;
    // Edit row 3, then recompute row 3..5's hashes and links with a plain
    // SHA-256 (all an attacker without the key can do): the chain is
    // self-consistent, but the macs are not ours.
    tamper(
        dir.path(),
        "UPDATE audit_log SET subject = 'nothing-here' WHERE seq = 3",
    );
    let rows = store.audit_log(0, 100).await.expect("rows");
    let conn = Connection::open(dir.path().join("rampart.db")).expect("raw");
    let mut prev = rows[1].mac.clone();
    for r in &rows[2..] {
        let mac = hex::encode(Sha256::digest(format!(
            "{prev}{}{:?}{}",
            r.seq, r.subject, r.detail
        )));
        conn.execute(
            "UPDATE audit_log SET prev_mac = ?1, mac = ?2 WHERE seq = ?3",
            rusqlite::params![prev, mac, r.seq as i64],
        )
        .expect("rehash");
        prev = mac;
    }
    let report = store.verify_audit().await.expect("verify");
    assert!(!report.ok);
    let b = report.first_break.expect("break");
    assert_eq!(b.seq, 3, "{b:?}");
    assert!(b.problem.contains("edited"), "{}", b.problem);
}

#[tokio::test]
async fn audit_chain_detects_truncated_tail() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = audited_store(dir.path(), 5).await;
    tamper(dir.path(), "DELETE FROM audit_log WHERE seq >= 4");
    let report = store.verify_audit().await.expect("verify");
    assert!(!report.ok);
    let b = report.first_break.expect("break");
    assert!(
        b.problem.contains("newest rows were deleted"),
        "{}",
        b.problem
    );
}

#[tokio::test]
async fn refuses_foreign_and_newer_databases() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = || AuditKey::new(KEY, None);

    let junk = dir.path().join("junk.db");
    std::fs::write(&junk, b"this is not a database at all, just text").expect("write");
    let err = SqliteStore::open(&junk, key(), SqliteOptions::default()).expect_err("junk");
    assert!(err.to_string().contains("not an SQLite file"), "{err}");

    let other = dir.path().join("other.db");
    Connection::open(&other)
        .and_then(|c| c.execute_batch("CREATE TABLE notes (x TEXT);"))
        .expect("other app db");
    let err = SqliteStore::open(&other, key(), SqliteOptions::default()).expect_err("foreign");
    assert!(err.to_string().contains("another application"), "{err}");

    let newer = dir.path().join("newer.db");
    drop(SqliteStore::open(&newer, key(), SqliteOptions::default()).expect("create"));
    Connection::open(&newer)
        .and_then(|c| c.execute_batch("PRAGMA user_version = 999;"))
        .expect("bump");
    let err = SqliteStore::open(&newer, key(), SqliteOptions::default()).expect_err("newer");
    assert!(
        matches!(err, StoreError::TooNew { found: 999, .. }),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_writing_at_once_never_see_locked() {
    // Two independent stores on one file behave like the CLI and `serve`.
    let dir = tempfile::tempdir().expect("tempdir");
    let a = open(dir.path());
    let b = open(dir.path());
    let writer = |s: SqliteStore, prefix: &'static str| {
        tokio::spawn(async move {
            for i in 0..100u8 {
                s.create_device(new_device(&format!("{prefix}-{i}"), i), &cli())
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())?;
            }
            Ok::<_, String>(())
        })
    };
    // Distinct fingerprints per writer: shift b's by prefixing a different byte.
    let ha = writer(a.clone(), "a");
    let hb = tokio::spawn(async move {
        for i in 0..100u8 {
            let mut d = new_device(&format!("b-{i}"), i);
            d.serial = format!("ff{}", &d.serial[2..]);
            d.fingerprint = format!("ff{}", &d.fingerprint[2..]);
            d.serial.replace_range(2..4, &format!("{i:02x}"));
            d.fingerprint.replace_range(2..4, &format!("{i:02x}"));
            b.create_device(d, &cli())
                .await
                .map_err(|e| e.to_string())?;
        }
        Ok::<_, String>(())
    });
    ha.await.expect("join").expect("writer a");
    hb.await.expect("join").expect("writer b");
    assert_eq!(
        a.list_devices(&DeviceFilter::default())
            .await
            .expect("list")
            .len(),
        200
    );
    let report = a.verify_audit().await.expect("verify");
    assert!(report.ok, "{report:?}");
    assert_eq!(report.rows, 200);
}

#[tokio::test]
async fn presence_updates_online_and_last_seen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path());
    store
        .create_device(new_device("p-1", 1), &cli())
        .await
        .expect("create");
    let at = OffsetDateTime::from_unix_timestamp(1_800_000_000).expect("time");
    store
        .record_presence(&id("p-1"), true, at)
        .await
        .expect("online");
    let d = store
        .device(&id("p-1"))
        .await
        .expect("get")
        .expect("present");
    assert!(d.online);
    assert_eq!(d.last_seen, Some(at));
    store
        .record_presence(&id("p-1"), false, at + Duration::seconds(5))
        .await
        .expect("offline");
    let d = store
        .device(&id("p-1"))
        .await
        .expect("get")
        .expect("present");
    assert!(!d.online);
    assert_eq!(d.last_seen, Some(at + Duration::seconds(5)));
}

#[tokio::test]
async fn services_share_the_identity_namespace_with_devices() {
    use rampart_store::{NewService, ServiceState};
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path());
    store
        .create_device(new_device("shared-name", 1), &cli())
        .await
        .expect("device");
    let now = OffsetDateTime::now_utc();
    let svc = |name: &str, n: u8| NewService {
        id: id(name),
        serial: format!("{n:02x}{}", "ee".repeat(15)),
        fingerprint: format!("{n:02x}{}", "ff".repeat(31)),
        not_before: now,
        not_after: now + Duration::days(365),
    };
    let err = store
        .create_service(svc("shared-name", 2), &cli())
        .await
        .expect_err("collision");
    assert!(matches!(err, StoreError::IdTaken(_)), "{err}");
    let created = store
        .create_service(svc("consumer", 3), &cli())
        .await
        .expect("service");
    assert_eq!(created.state, ServiceState::Active);
    let err = store
        .create_device(new_device("consumer", 4), &cli())
        .await
        .expect_err("collision");
    assert!(matches!(err, StoreError::IdTaken(_)), "{err}");
    let cert = store
        .certificate(&created.serial)
        .await
        .expect("cert")
        .expect("present");
    assert_eq!(cert.kind, rampart_store::IdentityKind::Service);
    let revoked = store
        .revoke_service(
            &id("consumer"),
            RevocationReason::PrivilegeWithdrawn,
            &cli(),
        )
        .await
        .expect("revoke");
    assert_eq!(revoked.state, ServiceState::Revoked);
    assert_eq!(store.list_services().await.expect("list").len(), 1);
    let feed = store.changes_since(0).await.expect("feed");
    assert_eq!(
        feed.last().map(|c| c.kind),
        Some(ChangeKind::ServiceRevoked)
    );
    assert!(ChangeKind::ServiceRevoked.affects_sessions());
}

#[tokio::test]
async fn broker_state_survives_reopening() {
    use rampart_store::{MqttOp, StoredMessage, StoredSubscription};
    let dir = tempfile::tempdir().expect("tempdir");
    let msg = |topic: &str, payload: &[u8]| StoredMessage {
        topic: topic.into(),
        payload: payload.to_vec(),
        qos: 1,
        retain: false,
        properties: vec![1, 2, 3],
        expires_at_ms: Some(1_900_000_000_000),
        subscription_ids: vec![4],
    };
    {
        let store = open(dir.path());
        store
            .mqtt_apply(vec![
                MqttOp::SaveSession {
                    client: "sub-1".into(),
                    expiry_secs: 3600,
                    subscriptions: vec![StoredSubscription {
                        filter: "devices/#".into(),
                        qos: 1,
                        no_local: false,
                        retain_as_published: true,
                        subscription_id: Some(4),
                    }],
                },
                MqttOp::Enqueue {
                    client: "sub-1".into(),
                    id: 1,
                    message: msg("a", b"one"),
                },
                MqttOp::Enqueue {
                    client: "sub-1".into(),
                    id: 2,
                    message: msg("b", b"two"),
                },
                MqttOp::Enqueue {
                    client: "sub-1".into(),
                    id: 3,
                    message: msg("c", b"three"),
                },
                MqttOp::Ack {
                    client: "sub-1".into(),
                    id: 2,
                },
                MqttOp::Disconnected {
                    client: "sub-1".into(),
                    at_ms: 1_800_000_000_000,
                },
                MqttOp::SaveSession {
                    client: "gone".into(),
                    expiry_secs: 10,
                    subscriptions: vec![],
                },
                MqttOp::Enqueue {
                    client: "gone".into(),
                    id: 4,
                    message: msg("d", b"x"),
                },
                MqttOp::DeleteSession {
                    client: "gone".into(),
                },
                MqttOp::Retain {
                    message: StoredMessage {
                        retain: true,
                        ..msg("r/1", b"kept")
                    },
                },
                MqttOp::Retain {
                    message: StoredMessage {
                        retain: true,
                        ..msg("r/2", b"cleared")
                    },
                },
                MqttOp::ClearRetained {
                    topic: "r/2".into(),
                },
            ])
            .await
            .expect("apply");
    }
    let snap = open(dir.path()).mqtt_load().await.expect("load");
    assert_eq!(snap.sessions.len(), 1);
    let s = &snap.sessions[0];
    assert_eq!(s.client, "sub-1");
    assert_eq!(s.disconnected_at_ms, Some(1_800_000_000_000));
    assert_eq!(s.subscriptions[0].filter, "devices/#");
    let queued: Vec<(u64, &[u8])> = s
        .queue
        .iter()
        .map(|(id, m)| (*id, m.payload.as_slice()))
        .collect();
    assert_eq!(queued, [(1, &b"one"[..]), (3, &b"three"[..])]);
    assert_eq!(s.queue[0].1, msg("a", b"one"));
    assert_eq!(snap.retained.len(), 1);
    assert_eq!(snap.retained[0].payload, b"kept");
}
