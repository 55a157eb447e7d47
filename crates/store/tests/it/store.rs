//! Store behaviour, one suite for both backends: every scenario runs against
//! a real SQLite file and a real PostgreSQL database (see `on_both!`).
//! Tests named `sqlite_*` or `postgres_*` check what only one backend has
//! (its file format, its server).

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use rampart_pki::RevocationReason;
use rampart_proto::DeviceId;
use rampart_store::postgres::PostgresOptions;
use rampart_store::sqlite::SqliteOptions;
use rampart_store::{
    Actor, AuditEntry, AuditKey, CertificateStatus, ChangeKind, DeviceFilter, DeviceState,
    NewDevice, PostgresStore, SqliteStore, Store, StoreError,
};
use rampart_test_support::PgTestDb;
use rusqlite::Connection;
use time::{Duration, OffsetDateTime};

const KEY: [u8; 32] = [7; 32];

/// How long a scenario's writes wait for a lock. Scenarios check outcomes,
/// not the timeout (it has its own tests, e.g.
/// `postgres_waits_for_the_append_lock_at_most_the_busy_timeout`): on a CI
/// machine a commit's fsync can stall for seconds behind the writeback of a
/// build that just finished, and a writer waiting behind such a commit is
/// contention, not a failure of the store.
const SCENARIO_BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);

// ---------------------------------------------------------------------------
// The harness: a backend is a database a scenario opens stores on, plus raw
// SQL access to it (what someone with the database but not the audit key
// can do).

/// A database to run a scenario on.
pub(crate) trait Backend {
    /// The store type this backend opens.
    type Store: Store
        + rampart_store::UserStore
        + rampart_store::FirmwareStore
        + rampart_store::AlertStore
        + rampart_store::NotificationStore
        + rampart_store::CampaignStore
        + rampart_store::telemetry::TelemetryStore
        + Clone
        + 'static;

    /// Opens a store on the database; each call is a separate handle, as a
    /// second process would have.
    async fn open(&self) -> Self::Store;

    /// Runs `sql` directly on the database, bypassing the store.
    async fn raw(&self, sql: &str) -> Result<(), String>;

    /// Runs `sql` with the audit log's append-only triggers removed first.
    async fn tamper(&self, sql: &str);
}

pub(crate) struct Sqlite {
    dir: tempfile::TempDir,
}

impl Sqlite {
    pub(crate) fn new() -> Self {
        Self {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    fn db(&self) -> std::path::PathBuf {
        self.dir.path().join("rampart.db")
    }
}

impl Backend for Sqlite {
    type Store = SqliteStore;

    async fn open(&self) -> SqliteStore {
        let options = SqliteOptions {
            busy_timeout: SCENARIO_BUSY_TIMEOUT,
            ..SqliteOptions::default()
        };
        SqliteStore::open(&self.db(), key(self.dir.path()), options).expect("open SQLite store")
    }

    async fn raw(&self, sql: &str) -> Result<(), String> {
        Connection::open(self.db())
            .and_then(|c| c.execute_batch(sql))
            .map_err(|e| e.to_string())
    }

    async fn tamper(&self, sql: &str) {
        self.raw(&format!(
            "DROP TRIGGER audit_log_no_update; DROP TRIGGER audit_log_no_delete; {sql}"
        ))
        .await
        .expect("tamper");
    }
}

pub(crate) struct Postgres {
    db: PgTestDb,
    dir: tempfile::TempDir,
}

impl Postgres {
    /// `None` when the server is unreachable and `RAMPART_TEST_PG=skip`.
    pub(crate) async fn new() -> Option<Self> {
        Some(Self {
            db: PgTestDb::create().await?,
            dir: tempfile::tempdir().expect("tempdir"),
        })
    }
}

impl Backend for Postgres {
    type Store = PostgresStore;

    async fn open(&self) -> PostgresStore {
        let options = PostgresOptions {
            busy_timeout: SCENARIO_BUSY_TIMEOUT,
            ..PostgresOptions::default()
        };
        PostgresStore::connect(self.db.url(), key(self.dir.path()), options)
            .await
            .expect("connect PostgreSQL store")
    }

    async fn raw(&self, sql: &str) -> Result<(), String> {
        self.db.execute(sql)
    }

    async fn tamper(&self, sql: &str) {
        self.raw(&format!(
            "DROP TRIGGER audit_log_no_update ON audit_log;
             DROP TRIGGER audit_log_no_delete ON audit_log; {sql}"
        ))
        .await
        .expect("tamper");
    }
}

/// The audit key, with its chain head file in `dir`.
fn key(dir: &Path) -> AuditKey {
    AuditKey::new(KEY, Some(dir.join("audit.head")))
}

/// Generates `mod NAME { sqlite, postgres }` tests that run the scenario
/// `async fn NAME(backend: impl Backend)` against each backend.
macro_rules! on_both {
    ($($scenario:ident),* $(,)?) => {$(
        mod $scenario {
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$scenario(Sqlite::new()).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                if let Some(backend) = Postgres::new().await {
                    super::$scenario(backend).await;
                }
            }
        }
    )*};
}
pub(crate) use on_both;

on_both!(
    devices_lifecycle_and_change_feed,
    audit_chain_verifies_when_intact,
    audit_search_filters_and_pages_newest_first,
    audit_log_refuses_plain_updates,
    audit_chain_detects_an_edited_row,
    audit_chain_detects_a_deleted_row,
    audit_chain_detects_an_edit_with_recomputed_hashes,
    audit_chain_detects_truncated_tail,
    audit_check_resumes_from_its_anchor_and_still_finds_tampering,
    concurrent_writers_keep_one_chain_and_an_ordered_feed,
    presence_updates_online_and_last_seen,
    services_share_the_identity_namespace_with_devices,
    broker_state_survives_reopening,
);

pub(crate) fn id(s: &str) -> DeviceId {
    DeviceId::parse(s).expect("valid id")
}

/// A device whose serial and fingerprint are unique per `(prefix, n)`.
pub(crate) fn new_device(name: &str, n: u8) -> NewDevice {
    numbered_device(name, 0, n)
}

fn numbered_device(name: &str, prefix: u8, n: u8) -> NewDevice {
    let now = OffsetDateTime::now_utc();
    NewDevice {
        id: id(name),
        serial: format!("{prefix:02x}{n:02x}{}", "ab".repeat(14)),
        fingerprint: format!("{prefix:02x}{n:02x}{}", "cd".repeat(30)),
        not_before: now,
        not_after: now + Duration::days(365),
        claim_code_hash: "hash".into(),
    }
}

pub(crate) fn cli() -> Actor {
    Actor {
        name: "cli:test".into(),
        source: "cli@localhost".into(),
    }
}

// ---------------------------------------------------------------------------
// Scenarios on both backends.

async fn devices_lifecycle_and_change_feed(backend: impl Backend) {
    let store = backend.open().await;

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
    // Search ignores ASCII case and treats LIKE wildcards as plain text.
    for (search, found) in [("green", 1), ("GREEN", 1), ("%", 0), ("_", 0), (":00:", 1)] {
        let searched = store
            .list_devices(&DeviceFilter {
                search: Some(search.into()),
                ..Default::default()
            })
            .await
            .expect("search");
        assert_eq!(searched.len(), found, "search {search:?}");
    }
    let paged = store
        .list_devices(&DeviceFilter {
            limit: Some(1),
            offset: 1,
            ..Default::default()
        })
        .await
        .expect("page");
    assert_eq!(paged.len(), 1);
    assert_eq!(paged[0].id.as_str(), "greenhouse-1");

    let disabled = store
        .set_device_disabled(&id("greenhouse-1"), true, &cli())
        .await
        .expect("disable");
    assert_eq!(disabled.state, DeviceState::Disabled);
    let only_disabled = store
        .list_devices(&DeviceFilter {
            state: Some(DeviceState::Disabled),
            ..Default::default()
        })
        .await
        .expect("by state");
    assert_eq!(only_disabled.len(), 1);
    let enabled = store
        .set_device_disabled(&id("greenhouse-1"), false, &cli())
        .await
        .expect("enable");
    assert_eq!(enabled.state, DeviceState::Unbound);

    let rotated = store
        .set_claim_code(&id("greenhouse-1"), "hash-2", &cli())
        .await
        .expect("rotate claim code");
    assert_eq!(rotated.state, DeviceState::Unbound);

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
    let err = store
        .revoke_device(&id("greenhouse-1"), RevocationReason::KeyCompromise, &cli())
        .await
        .expect_err("already revoked");
    assert!(matches!(err, StoreError::InvalidState { .. }), "{err}");
    let err = store
        .revoke_device(&id("nobody"), RevocationReason::KeyCompromise, &cli())
        .await
        .expect_err("unknown");
    assert!(matches!(err, StoreError::NotFound(_)), "{err}");
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
    assert!(store.certificate("00ff").await.expect("cert").is_none());

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
    assert_eq!(feed.len(), 8);
    assert_eq!(
        feed[4],
        (ChangeKind::ClaimCodeRotated, "greenhouse-1".into())
    );
    assert_eq!(feed[5], (ChangeKind::DeviceRevoked, "greenhouse-1".into()));
    let latest = store.latest_change().await.expect("latest");
    assert!(store.changes_since(latest).await.expect("tail").is_empty());
    let report = store.verify_audit().await.expect("verify");
    assert!(report.ok, "{report:?}");
    assert_eq!(report.rows, 8, "one audit row per change");

    assert_eq!(store.next_crl_number().await.expect("crl n"), 1);
    assert_eq!(store.next_crl_number().await.expect("crl n"), 2);
}

/// A store with `rows` audit rows recorded by `record_audit`.
async fn audited<B: Backend>(backend: &B, rows: usize) -> B::Store {
    let store = backend.open().await;
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

async fn audit_search_filters_and_pages_newest_first(backend: impl Backend) {
    let store = backend.open().await;
    let t0 = OffsetDateTime::now_utc();
    for (actor, action, subject) in [
        ("ann", "device.revoke", "d-1"),
        ("bob", "device.disable", "d-2"),
        ("ann", "user.invite", "carl"),
        ("ann", "device.revoke", "d-3"),
        ("bob", "device.enroll", "d-1"),
    ] {
        store
            .record_audit(AuditEntry {
                actor: Actor {
                    name: actor.into(),
                    source: "192.0.2.1".into(),
                },
                action: action.into(),
                subject: Some(subject.into()),
                detail: serde_json::json!({}),
            })
            .await
            .expect("append");
    }
    let search = |f: &dyn Fn(&mut rampart_store::AuditSearch)| {
        let mut s = rampart_store::AuditSearch {
            limit: 10,
            ..Default::default()
        };
        f(&mut s);
        s
    };
    let found = |rows: Vec<rampart_store::AuditRecord>| -> Vec<(String, Option<String>)> {
        rows.into_iter().map(|r| (r.action, r.subject)).collect()
    };
    let s = |a: &str, b: &str| (a.to_owned(), Some(b.to_owned()));
    let all = store.search_audit(&search(&|_| {})).await.expect("all");
    assert_eq!(all.len(), 5);
    assert!(all.windows(2).all(|w| w[0].seq > w[1].seq), "newest first");
    let revokes = store
        .search_audit(&search(&|q| q.action = Some("device.revoke".into())))
        .await
        .expect("action");
    assert_eq!(
        found(revokes),
        [s("device.revoke", "d-3"), s("device.revoke", "d-1")]
    );
    let prefix = store
        .search_audit(&search(&|q| {
            q.action_prefix = Some("device.".into());
            q.actor = Some("bob".into());
        }))
        .await
        .expect("prefix");
    assert_eq!(
        found(prefix),
        [s("device.enroll", "d-1"), s("device.disable", "d-2")]
    );
    let subject = store
        .search_audit(&search(&|q| q.subject = Some("d-1".into())))
        .await
        .expect("subject");
    assert_eq!(subject.len(), 2);
    // Pages: the cursor is the last row's seq.
    let first = store
        .search_audit(&search(&|q| q.limit = 2))
        .await
        .expect("page 1");
    let before = first.last().map(|r| r.seq);
    let second = store
        .search_audit(&search(&|q| {
            q.limit = 2;
            q.before = before;
        }))
        .await
        .expect("page 2");
    assert_eq!(
        found(second),
        [s("user.invite", "carl"), s("device.disable", "d-2")]
    );
    let later = store
        .search_audit(&search(&|q| q.since = Some(t0 + Duration::hours(1))))
        .await
        .expect("since");
    assert!(later.is_empty());
    let earlier = store
        .search_audit(&search(&|q| q.until = Some(t0 - Duration::hours(1))))
        .await
        .expect("until");
    assert!(earlier.is_empty());
    let window = store
        .search_audit(&search(&|q| {
            q.since = Some(t0 - Duration::minutes(1));
            q.until = Some(t0 + Duration::minutes(1));
        }))
        .await
        .expect("window");
    assert_eq!(window.len(), 5);
}

async fn audit_chain_verifies_when_intact(backend: impl Backend) {
    let store = audited(&backend, 5).await;
    let report = store.verify_audit().await.expect("verify");
    assert!(report.ok, "{report:?}");
    assert_eq!(report.rows, 5);
    let page = store.audit_log(2, 2).await.expect("page");
    assert_eq!(page.iter().map(|r| r.seq).collect::<Vec<_>>(), [3, 4]);
    assert_eq!(page[0].subject.as_deref(), Some("thing-2"));
    assert_eq!(page[0].detail, serde_json::json!({ "i": 2 }));
    assert_eq!(page[1].prev_mac, page[0].mac);
}

async fn audit_log_refuses_plain_updates(backend: impl Backend) {
    let _store = audited(&backend, 2).await;
    for sql in [
        "DELETE FROM audit_log WHERE seq = 1",
        "UPDATE audit_log SET actor = 'x' WHERE seq = 2",
    ] {
        let err = backend.raw(sql).await.expect_err("append-only");
        assert!(err.contains("append-only"), "{sql}: {err}");
    }
}

async fn audit_chain_detects_an_edited_row(backend: impl Backend) {
    let store = audited(&backend, 5).await;
    backend
        .tamper("UPDATE audit_log SET actor = 'someone-else' WHERE seq = 3")
        .await;
    let report = store.verify_audit().await.expect("verify");
    assert!(!report.ok);
    assert_eq!(report.rows, 2);
    let b = report.first_break.expect("break");
    assert_eq!(b.seq, 3);
    assert!(b.problem.contains("edited"), "{}", b.problem);
}

async fn append_audit(store: &impl Store, n: usize) {
    for i in 0..n {
        store
            .record_audit(AuditEntry {
                actor: cli(),
                action: "test.later".into(),
                subject: Some(format!("later-{i}")),
                detail: serde_json::json!({ "i": i }),
            })
            .await
            .expect("append");
    }
}

async fn audit_check_resumes_from_its_anchor_and_still_finds_tampering(backend: impl Backend) {
    let store = audited(&backend, 5).await;
    let full = store.verify_audit().await.expect("verify");
    assert!(full.ok);
    let anchor = full.verified.clone().expect("anchor");
    assert_eq!(anchor.seq, 5);

    // Nothing new: the anchor alone is checked.
    let again = store.verify_audit_since(&anchor).await.expect("verify");
    assert_eq!(
        (again.ok, again.rows, again.verified.as_ref()),
        (true, 5, Some(&anchor))
    );
    // New rows are verified from the anchor on; the report moves it.
    append_audit(&store, 3).await;
    let next = store.verify_audit_since(&anchor).await.expect("verify");
    assert!(next.ok, "{next:?}");
    assert_eq!(next.rows, 8);
    let anchor8 = next.verified.clone().expect("anchor");
    assert_eq!(anchor8.seq, 8);

    // An edit after the anchor is found, and where (`tamper` lifts the
    // append-only triggers for the rest of the test).
    append_audit(&store, 2).await;
    backend
        .tamper("UPDATE audit_log SET actor = 'someone-else' WHERE seq = 9")
        .await;
    let r = store.verify_audit_since(&anchor8).await.expect("verify");
    assert!(!r.ok);
    assert_eq!(r.verified, None);
    let b = r.first_break.expect("break");
    assert_eq!((b.seq, r.rows), (9, 8));
    assert!(b.problem.contains("edited"), "{}", b.problem);

    // An edit of the anchor row itself is found by the incremental check.
    backend
        .raw("UPDATE audit_log SET detail = '{\"i\":99}' WHERE seq = 5")
        .await
        .expect("tamper");
    let r = store.verify_audit_since(&anchor).await.expect("verify");
    let b = r.first_break.expect("break");
    assert_eq!(b.seq, 5);
    assert!(b.problem.contains("edited"), "{}", b.problem);

    // An edit before the anchor is outside what an incremental check
    // reads; the full check finds it (the web part runs one at start and
    // periodically).
    backend
        .raw("UPDATE audit_log SET actor = 'mallory' WHERE seq = 2")
        .await
        .expect("tamper");
    let full = store.verify_audit().await.expect("verify");
    assert_eq!(full.first_break.map(|b| b.seq), Some(2));

    // A deleted anchor row is reported as missing.
    backend
        .raw("DELETE FROM audit_log WHERE seq >= 8")
        .await
        .expect("tamper");
    let r = store.verify_audit_since(&anchor8).await.expect("verify");
    let b = r.first_break.expect("break");
    assert_eq!(b.seq, 8);
    assert!(b.problem.contains("missing"), "{}", b.problem);
}

async fn audit_chain_detects_a_deleted_row(backend: impl Backend) {
    let store = audited(&backend, 5).await;
    backend.tamper("DELETE FROM audit_log WHERE seq = 2").await;
    let report = store.verify_audit().await.expect("verify");
    let b = report.first_break.expect("break");
    assert_eq!(b.seq, 3);
    assert!(b.problem.contains("missing"), "{}", b.problem);
}

async fn audit_chain_detects_an_edit_with_recomputed_hashes(backend: impl Backend) {
    use sha2::{Digest, Sha256};
    let store = audited(&backend, 5).await;
    // Edit row 3, then recompute row 3..5's hashes and links with a plain
    // SHA-256 (all an attacker without the key can do): the chain is
    // self-consistent, but the macs are not ours.
    backend
        .tamper("UPDATE audit_log SET subject = 'nothing-here' WHERE seq = 3")
        .await;
    let rows = store.audit_log(0, 100).await.expect("rows");
    let mut prev = rows[1].mac.clone();
    let mut rehash = String::new();
    for r in &rows[2..] {
        let mac = hex::encode(Sha256::digest(format!(
            "{prev}{}{:?}{}",
            r.seq, r.subject, r.detail
        )));
        rehash.push_str(&format!(
            "UPDATE audit_log SET prev_mac = '{prev}', mac = '{mac}' WHERE seq = {};",
            r.seq
        ));
        prev = mac;
    }
    backend.raw(&rehash).await.expect("rehash");
    let report = store.verify_audit().await.expect("verify");
    assert!(!report.ok);
    let b = report.first_break.expect("break");
    assert_eq!(b.seq, 3, "{b:?}");
    assert!(b.problem.contains("edited"), "{}", b.problem);
}

async fn audit_chain_detects_truncated_tail(backend: impl Backend) {
    let store = audited(&backend, 5).await;
    backend.tamper("DELETE FROM audit_log WHERE seq >= 4").await;
    let report = store.verify_audit().await.expect("verify");
    assert!(!report.ok);
    let b = report.first_break.expect("break");
    assert!(
        b.problem.contains("newest rows were deleted"),
        "{}",
        b.problem
    );
}

/// Two store handles (the CLI and `serve`, or two replicas) write audited
/// changes at once while a third follows the change feed the way `serve`
/// does. No write may fail for lock contention, the audit chain must stay
/// one unforked chain, and the follower, which only ever asks for
/// `seq > last seen`, must see every change exactly once.
async fn concurrent_writers_keep_one_chain_and_an_ordered_feed(backend: impl Backend) {
    const EACH: u8 = 60;
    let a = backend.open().await;
    let b = backend.open().await;
    let follower_store = backend.open().await;
    let writing = Arc::new(AtomicBool::new(true));

    let follower = {
        let writing = Arc::clone(&writing);
        tokio::spawn(async move {
            let mut last = 0;
            let mut seen = Vec::new();
            // At an interval, as `serve` follows the feed: a follower
            // spinning on the database would take a core from the writers.
            let mut tick = tokio::time::interval(std::time::Duration::from_millis(2));
            loop {
                tick.tick().await;
                // Read the flag before polling: a poll that starts after the
                // writers finished sees everything they committed.
                let finished = !writing.load(Ordering::Acquire);
                for change in follower_store.changes_since(last).await.expect("poll") {
                    assert!(change.seq > last, "feed went backwards");
                    last = change.seq;
                    seen.push(change.subject);
                }
                if finished {
                    return seen;
                }
            }
        })
    };
    let wa = tokio::spawn(write_devices(a.clone(), 0xa0, "a", EACH));
    let wb = tokio::spawn(write_devices(b, 0xb0, "b", EACH));
    wa.await.expect("join").expect("writer a");
    wb.await.expect("join").expect("writer b");
    writing.store(false, Ordering::Release);
    let mut seen = follower.await.expect("follower");

    let total = usize::from(EACH) * 2;
    assert_eq!(
        a.list_devices(&DeviceFilter::default())
            .await
            .expect("list")
            .len(),
        total
    );
    let report = a.verify_audit().await.expect("verify");
    assert!(report.ok, "{report:?}");
    assert_eq!(report.rows, total as u64 * 2);
    seen.sort();
    let mut expected: Vec<String> = (0..EACH)
        .flat_map(|i| [format!("a-{i}"), format!("b-{i}")])
        .collect();
    expected.sort();
    assert_eq!(seen, expected, "the follower missed or repeated changes");
}

/// Creates devices `{name}-0..count` with an extra audit row each.
async fn write_devices(
    store: impl Store,
    prefix: u8,
    name: &'static str,
    count: u8,
) -> Result<(), String> {
    for i in 0..count {
        store
            .create_device(numbered_device(&format!("{name}-{i}"), prefix, i), &cli())
            .await
            .map_err(|e| e.to_string())?;
        store
            .record_audit(AuditEntry {
                actor: cli(),
                action: "test.note".into(),
                subject: Some(format!("{name}-{i}")),
                detail: serde_json::json!({ "writer": name }),
            })
            .await
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

async fn presence_updates_online_and_last_seen(backend: impl Backend) {
    let store = backend.open().await;
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
    // Presence of an unknown device is ignored, not an error.
    store
        .record_presence(&id("nobody"), true, at)
        .await
        .expect("unknown device");
}

async fn services_share_the_identity_namespace_with_devices(backend: impl Backend) {
    use rampart_store::{NewService, ServiceState};
    let store = backend.open().await;
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
    let err = store
        .revoke_service(
            &id("consumer"),
            RevocationReason::PrivilegeWithdrawn,
            &cli(),
        )
        .await
        .expect_err("already revoked");
    assert!(matches!(err, StoreError::InvalidState { .. }), "{err}");
    let err = store
        .revoke_service(&id("ghost"), RevocationReason::Unspecified, &cli())
        .await
        .expect_err("unknown");
    assert!(matches!(err, StoreError::ServiceNotFound(_)), "{err}");
    assert_eq!(store.list_services().await.expect("list").len(), 1);
    assert_eq!(
        store
            .service(&id("consumer"))
            .await
            .expect("get")
            .map(|s| s.state),
        Some(ServiceState::Revoked)
    );
    let feed = store.changes_since(0).await.expect("feed");
    assert_eq!(
        feed.last().map(|c| c.kind),
        Some(ChangeKind::ServiceRevoked)
    );
    assert!(ChangeKind::ServiceRevoked.affects_sessions());
}

async fn broker_state_survives_reopening(backend: impl Backend) {
    use rampart_store::{MqttOp, StoredMessage, StoredSubscription};
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
        let store = backend.open().await;
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
        // Enqueueing an id again replaces the delivery.
        store
            .mqtt_apply(vec![MqttOp::Enqueue {
                client: "sub-1".into(),
                id: 3,
                message: msg("c", b"three again"),
            }])
            .await
            .expect("replace");
    }
    let snap = backend.open().await.mqtt_load().await.expect("load");
    assert_eq!(snap.sessions.len(), 1);
    let s = &snap.sessions[0];
    assert_eq!(s.client, "sub-1");
    assert_eq!(s.expiry_secs, 3600);
    assert_eq!(s.disconnected_at_ms, Some(1_800_000_000_000));
    assert_eq!(s.subscriptions[0].filter, "devices/#");
    assert_eq!(s.subscriptions[0].subscription_id, Some(4));
    let queued: Vec<(u64, &[u8])> = s
        .queue
        .iter()
        .map(|(id, m)| (*id, m.payload.as_slice()))
        .collect();
    assert_eq!(queued, [(1, &b"one"[..]), (3, &b"three again"[..])]);
    assert_eq!(s.queue[0].1, msg("a", b"one"));
    assert_eq!(snap.retained.len(), 1);
    assert_eq!(snap.retained[0].payload, b"kept");
    assert!(snap.retained[0].retain);
}

// ---------------------------------------------------------------------------
// SQLite only: its file.

#[tokio::test]
async fn sqlite_refuses_foreign_and_newer_files() {
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

// ---------------------------------------------------------------------------
// PostgreSQL only: its server.

#[tokio::test]
async fn postgres_refuses_foreign_and_newer_databases() {
    let Some(foreign) = Postgres::new().await else {
        return;
    };
    foreign
        .raw("CREATE TABLE notes (x TEXT)")
        .await
        .expect("other app table");
    let err = PostgresStore::connect(
        foreign.db.url(),
        AuditKey::new(KEY, None),
        PostgresOptions::default(),
    )
    .await
    .expect_err("foreign");
    assert!(matches!(err, StoreError::Foreign { .. }), "{err}");
    assert!(err.to_string().contains("another application"), "{err}");
    // Refused before anything was written.
    foreign
        .raw("SELECT 1 FROM notes")
        .await
        .expect("its table is untouched");
    assert!(foreign.raw("SELECT 1 FROM audit_log").await.is_err());

    let Some(newer) = Postgres::new().await else {
        return;
    };
    drop(newer.open().await);
    newer
        .raw("UPDATE rampart_schema SET version = 999")
        .await
        .expect("bump");
    let err = PostgresStore::connect(
        newer.db.url(),
        AuditKey::new(KEY, None),
        PostgresOptions::default(),
    )
    .await
    .expect_err("newer");
    assert!(
        matches!(err, StoreError::TooNew { found: 999, .. }),
        "{err}"
    );
}

#[tokio::test]
async fn postgres_audit_log_refuses_truncate() {
    let Some(backend) = Postgres::new().await else {
        return;
    };
    let _store = audited(&backend, 1).await;
    let err = backend
        .raw("TRUNCATE audit_log")
        .await
        .expect_err("append-only");
    assert!(err.contains("append-only"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_replicas_starting_together_migrate_once() {
    let Some(backend) = Postgres::new().await else {
        return;
    };
    let (a, b, c) = tokio::join!(backend.open(), backend.open(), backend.open());
    for store in [&a, &b, &c] {
        store
            .record_audit(AuditEntry {
                actor: Actor::system(),
                action: "test.start".into(),
                subject: None,
                detail: serde_json::json!({}),
            })
            .await
            .expect("usable");
    }
    let report = a.verify_audit().await.expect("verify");
    assert!(report.ok, "{report:?}");
    assert_eq!(report.rows, 3);
}

#[tokio::test]
async fn postgres_unreachable_server_is_unavailable_and_hides_the_password() {
    // Port 1 on loopback: nothing listens there.
    let err = PostgresStore::connect(
        "postgres://rampart:very-secret-pw@127.0.0.1:1/rampart",
        AuditKey::new(KEY, None),
        PostgresOptions::default(),
    )
    .await
    .expect_err("nothing listens on port 1");
    assert!(matches!(err, StoreError::Unavailable { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("127.0.0.1:1"), "{msg}");
    assert!(!msg.contains("very-secret-pw"), "{msg}");
    assert!(!format!("{err:?}").contains("very-secret-pw"), "{err:?}");
}

#[tokio::test]
async fn postgres_refuses_sslmode_require_it_cannot_honour() {
    let err = PostgresStore::connect(
        "postgres://rampart@127.0.0.1:5432/rampart?sslmode=require",
        AuditKey::new(KEY, None),
        PostgresOptions::default(),
    )
    .await
    .expect_err("no TLS in this build");
    assert!(matches!(err, StoreError::Unavailable { .. }), "{err:?}");
    assert!(err.to_string().contains("sslmode=require"), "{err}");
}

#[tokio::test]
async fn postgres_waits_for_the_append_lock_at_most_the_busy_timeout() {
    let Some(backend) = Postgres::new().await else {
        return;
    };
    drop(backend.open().await);
    let store = PostgresStore::connect(
        backend.db.url(),
        key(backend.dir.path()),
        PostgresOptions {
            busy_timeout: std::time::Duration::from_millis(200),
            ..PostgresOptions::default()
        },
    )
    .await
    .expect("connect");
    // Another process holds the audit and change-feed append lock
    // ("RMPT" 1, see src/postgres/ledger.rs) in an open transaction.
    let (other, connection) = tokio_postgres::connect(backend.db.url(), tokio_postgres::NoTls)
        .await
        .expect("raw connection");
    let driver = tokio::spawn(connection);
    other
        .batch_execute("BEGIN; SELECT pg_advisory_xact_lock(x'524D50540001'::bigint);")
        .await
        .expect("hold the lock");

    let err = store
        .create_device(new_device("waits-1", 1), &cli())
        .await
        .expect_err("lock held elsewhere");
    assert!(matches!(err, StoreError::Busy), "{err:?}");
    assert!(
        store.device(&id("waits-1")).await.expect("read").is_none(),
        "nothing of the failed change is visible"
    );

    other.batch_execute("ROLLBACK").await.expect("release");
    store
        .create_device(new_device("waits-1", 1), &cli())
        .await
        .expect("lock free again");
    drop(other);
    let _ = driver.await;
}
