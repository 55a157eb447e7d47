//! Enrollment tokens on both backends: scope, expiry, use counting,
//! revocation, and that a refused or losing enrollment neither consumes a
//! use nor gets a certificate signed.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use rampart_pki::{Pki, PkiOptions};
use rampart_store::{
    Actor, DeviceState, Enrollment, EnrollmentRefusal, NewEnrollmentToken, Owner, Store,
    StoreError, TokenState,
};
use time::{Duration, OffsetDateTime};

use crate::store::{Backend, Postgres, Sqlite, cli, id, on_both};

on_both!(
    tokens_register_devices_within_their_scope,
    expired_and_revoked_tokens_register_nothing,
    racing_enrollments_take_the_last_use_once,
    a_repeated_enrollment_gets_the_same_certificate_until_the_device_connects,
);

/// A CA that issues real certificates, and how many it issued.
struct Issuer {
    pki: Arc<Pki>,
    issued: Arc<AtomicUsize>,
    _dir: tempfile::TempDir,
}

impl Issuer {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let (pki, _) = Pki::init(&dir.path().join("pki"), &PkiOptions::default()).expect("CA");
        Self {
            pki: Arc::new(pki),
            issued: Arc::new(AtomicUsize::new(0)),
            _dir: dir,
        }
    }

    /// An enrollment of `device` with the token whose hash is `hash`, by a
    /// key of its own (never the same twice).
    fn enrollment(&self, hash: &str, device: &str) -> Enrollment {
        let key = format!("key-{}", KEYS.fetch_add(1, Ordering::SeqCst));
        self.enrollment_by(hash, device, &key)
    }

    /// An enrollment of `device` with the token whose hash is `hash`, by
    /// the key whose hash is `key`.
    fn enrollment_by(&self, hash: &str, device: &str, key: &str) -> Enrollment {
        let (pki, issued, device_id) =
            (Arc::clone(&self.pki), Arc::clone(&self.issued), id(device));
        let for_issue = device_id.clone();
        Enrollment {
            token_hash: hash.into(),
            id: device_id,
            claim_code_hash: format!("sha256:{device}"),
            issue: Arc::new(move || {
                issued.fetch_add(1, Ordering::SeqCst);
                pki.issue_device_with_generated_key(&for_issue)
                    .map(|(cert, _key)| cert)
            }),
            public_key_sha256: key.into(),
            repeat_window: std::time::Duration::from_secs(600),
        }
    }

    fn issued(&self) -> usize {
        self.issued.load(Ordering::SeqCst)
    }
}

/// Numbers the keys of [`Issuer::enrollment`].
static KEYS: AtomicUsize = AtomicUsize::new(0);

fn token(name: &str, uses: u32, prefix: Option<&str>, owner: Option<&str>) -> NewEnrollmentToken {
    NewEnrollmentToken {
        id: name.into(),
        token_hash: format!("sha256:{name}"),
        expires_at: OffsetDateTime::now_utc() + Duration::hours(1),
        uses_allowed: uses,
        id_prefix: prefix.map(str::to_owned),
        owner: owner.map(|o| Owner::User(o.into())),
    }
}

/// The actor of an enrollment over HTTPS.
fn device_actor() -> Actor {
    Actor {
        name: "enrollment-token".into(),
        source: "192.0.2.7".into(),
    }
}

fn refusal(e: StoreError) -> &'static str {
    match e {
        StoreError::EnrollmentRefused(r) => r.code(),
        StoreError::IdTaken(_) => "id_taken",
        other => panic!("expected a refusal, got {other}"),
    }
}

async fn tokens_register_devices_within_their_scope(backend: impl Backend) {
    let store = backend.open().await;
    let ca = Issuer::new();
    let created = store
        .create_enrollment_token(token("t-gh", 2, Some("gh-"), Some("ann")), &cli())
        .await
        .expect("create token");
    assert_eq!(created.uses_used, 0);
    assert_eq!(created.created_by, "cli:test");
    assert_eq!(created.state(OffsetDateTime::now_utc()), TokenState::Active);
    let found = store
        .enrollment_token_by_hash("sha256:t-gh")
        .await
        .expect("by hash")
        .expect("found");
    assert_eq!(found, created);
    assert!(
        store
            .enrollment_token_by_hash("sha256:other")
            .await
            .expect("by hash")
            .is_none()
    );

    let enrolled = store
        .enroll_device(ca.enrollment("sha256:t-gh", "gh-1"), &device_actor())
        .await
        .expect("enroll");
    assert_eq!(enrolled.device.id.as_str(), "gh-1");
    assert_eq!(enrolled.device.state, DeviceState::Unbound);
    assert_eq!(enrolled.device.owner, Some(Owner::User("ann".into())));
    assert_eq!(enrolled.device.serial, enrolled.certificate.serial);
    assert_eq!(enrolled.token.uses_used, 1);
    assert!(enrolled.token.last_used_at.is_some());
    assert_eq!(ca.issued(), 1);
    let stored = store
        .device(&id("gh-1"))
        .await
        .expect("get")
        .expect("exists");
    assert_eq!(stored, enrolled.device);

    // Out of scope, id taken (also by a service-free device of another
    // path), unknown token: refused, no use taken, nothing signed.
    store
        .create_device(
            rampart_store::NewDevice {
                id: id("gh-taken"),
                serial: "aa".repeat(16),
                fingerprint: "bb".repeat(32),
                not_before: OffsetDateTime::now_utc(),
                not_after: OffsetDateTime::now_utc() + Duration::days(1),
                claim_code_hash: "sha256:x".into(),
            },
            &cli(),
        )
        .await
        .expect("existing device");
    for (hash, device, code) in [
        ("sha256:t-gh", "other-1", "id_prefix_mismatch"),
        ("sha256:t-gh", "gh-1", "id_taken"),
        ("sha256:t-gh", "gh-taken", "id_taken"),
        ("sha256:nope", "gh-2", "token_unknown"),
    ] {
        let err = store
            .enroll_device(ca.enrollment(hash, device), &device_actor())
            .await
            .expect_err("refused");
        assert_eq!(refusal(err), code, "{device}");
    }
    assert_eq!(ca.issued(), 1, "a refused enrollment signed a certificate");
    let tokens = store.enrollment_tokens().await.expect("list");
    assert_eq!(tokens.len(), 1);
    assert_eq!(tokens[0].uses_used, 1, "a refused enrollment took a use");

    store
        .enroll_device(ca.enrollment("sha256:t-gh", "gh-2"), &device_actor())
        .await
        .expect("second use");
    let err = store
        .enroll_device(ca.enrollment("sha256:t-gh", "gh-3"), &device_actor())
        .await
        .expect_err("used up");
    assert_eq!(refusal(err), "token_used_up");
    assert!(store.device(&id("gh-3")).await.expect("get").is_none());

    // Audited with the token's id and the source; the feed announces both.
    let audit = store.audit_log(0, 100).await.expect("audit");
    let actions: Vec<&str> = audit.iter().map(|r| r.action.as_str()).collect();
    assert_eq!(
        actions,
        [
            "enrollment-token.create",
            "device.enroll",
            "device.create",
            "device.enroll"
        ]
    );
    assert_eq!(audit[1].subject.as_deref(), Some("gh-1"));
    assert_eq!(audit[1].source, "192.0.2.7");
    assert_eq!(audit[1].detail["enrollment_token"], "t-gh");
    assert_eq!(audit[1].detail["owner"]["id"], "ann");
    assert!(!audit[0].detail.to_string().contains("sha256:"));
    assert!(store.verify_audit().await.expect("verify").ok);
    let feed: Vec<String> = store
        .changes_since(0)
        .await
        .expect("feed")
        .into_iter()
        .map(|c| format!("{} {}", c.kind.as_str(), c.subject))
        .collect();
    assert_eq!(
        feed,
        [
            "device.create gh-1",
            "device.create gh-taken",
            "device.create gh-2"
        ]
    );
}

async fn expired_and_revoked_tokens_register_nothing(backend: impl Backend) {
    let store = backend.open().await;
    let ca = Issuer::new();
    let mut expired = token("t-old", 5, None, None);
    expired.expires_at = OffsetDateTime::now_utc() - Duration::seconds(1);
    store
        .create_enrollment_token(expired, &cli())
        .await
        .expect("create expired");
    store
        .create_enrollment_token(token("t-live", 5, None, None), &cli())
        .await
        .expect("create live");

    let err = store
        .enroll_device(ca.enrollment("sha256:t-old", "d-1"), &device_actor())
        .await
        .expect_err("expired");
    assert!(
        matches!(
            err,
            StoreError::EnrollmentRefused(EnrollmentRefusal::Expired { .. })
        ),
        "{err}"
    );

    let revoked = store
        .revoke_enrollment_token("t-live", &cli())
        .await
        .expect("revoke");
    assert!(revoked.revoked_at.is_some());
    assert_eq!(
        revoked.state(OffsetDateTime::now_utc()),
        TokenState::Revoked
    );
    let err = store
        .enroll_device(ca.enrollment("sha256:t-live", "d-1"), &device_actor())
        .await
        .expect_err("revoked");
    assert_eq!(refusal(err), "token_revoked");
    assert_eq!(ca.issued(), 0);

    let err = store
        .revoke_enrollment_token("t-live", &cli())
        .await
        .expect_err("twice");
    assert!(matches!(err, StoreError::InvalidTokenState { .. }), "{err}");
    let err = store
        .revoke_enrollment_token("t-none", &cli())
        .await
        .expect_err("unknown");
    assert!(matches!(err, StoreError::TokenNotFound(_)), "{err}");

    let states: Vec<(String, TokenState, u32)> = store
        .enrollment_tokens()
        .await
        .expect("list")
        .into_iter()
        .map(|t| {
            (
                t.id.clone(),
                t.state(OffsetDateTime::now_utc()),
                t.uses_used,
            )
        })
        .collect();
    assert_eq!(
        states,
        [
            ("t-old".to_owned(), TokenState::Expired, 0),
            ("t-live".to_owned(), TokenState::Revoked, 0)
        ]
    );
    let actions: Vec<String> = store
        .audit_log(0, 100)
        .await
        .expect("audit")
        .into_iter()
        .map(|r| r.action)
        .collect();
    assert_eq!(
        actions,
        [
            "enrollment-token.create",
            "enrollment-token.create",
            "enrollment-token.revoke"
        ]
    );
}

async fn racing_enrollments_take_the_last_use_once(backend: impl Backend) {
    const RACERS: usize = 6;
    let setup = backend.open().await;
    setup
        .create_enrollment_token(token("t-one", 1, None, None), &cli())
        .await
        .expect("create");
    let ca = Arc::new(Issuer::new());
    // Each racer has its own handle, as separate processes would.
    let mut racers = Vec::new();
    for n in 0..RACERS {
        let store = backend.open().await;
        let enrollment = ca.enrollment("sha256:t-one", &format!("racer-{n}"));
        racers.push(tokio::spawn(async move {
            store.enroll_device(enrollment, &device_actor()).await
        }));
    }
    let mut won = Vec::new();
    let mut refused = Vec::new();
    for r in racers {
        match r.await.expect("join") {
            Ok(e) => won.push(e.device.id),
            Err(e) => refused.push(refusal(e)),
        }
    }
    assert_eq!(won.len(), 1, "exactly one enrollment wins: {won:?}");
    assert_eq!(refused, vec!["token_used_up"; RACERS - 1]);
    assert_eq!(ca.issued(), 1, "only the winner's certificate is signed");
    let t = setup.enrollment_tokens().await.expect("list");
    assert_eq!(t[0].uses_used, 1);
    let devices = setup
        .list_devices(&Default::default())
        .await
        .expect("list devices");
    assert_eq!(
        devices.iter().map(|d| d.id.clone()).collect::<Vec<_>>(),
        won
    );
}

async fn a_repeated_enrollment_gets_the_same_certificate_until_the_device_connects(
    backend: impl Backend,
) {
    let store = backend.open().await;
    let ca = Issuer::new();
    for t in [token("t-one", 1, None, None), token("t-two", 3, None, None)] {
        store
            .create_enrollment_token(t, &cli())
            .await
            .expect("create token");
    }
    let first = store
        .enroll_device(
            ca.enrollment_by("sha256:t-one", "r-1", "k1"),
            &device_actor(),
        )
        .await
        .expect("enroll");
    assert!(!first.repeated);
    assert_eq!(first.token.uses_used, 1);

    // The answer was lost: the same token (used up by now) and key ask again.
    let mut again = ca.enrollment_by("sha256:t-one", "r-1", "k1");
    again.claim_code_hash = "sha256:second-code".into();
    let repeat = store
        .enroll_device(again, &device_actor())
        .await
        .expect("repeat");
    assert!(repeat.repeated);
    assert_eq!(repeat.certificate, first.certificate);
    assert_eq!(repeat.device.serial, first.device.serial);
    assert_eq!(repeat.token.uses_used, 1, "a repeat took a use");
    assert_eq!(ca.issued(), 1, "a repeat signed a certificate");
    assert_eq!(
        store
            .claim_code_hash(&id("r-1"))
            .await
            .expect("code")
            .as_deref(),
        Some("sha256:second-code"),
        "the repeat's claim code replaces the lost one"
    );

    // Another key, or another token, is not a repeat.
    let err = store
        .enroll_device(
            ca.enrollment_by("sha256:t-one", "r-1", "k-other"),
            &device_actor(),
        )
        .await
        .expect_err("other key");
    assert_eq!(refusal(err), "token_used_up");
    let err = store
        .enroll_device(
            ca.enrollment_by("sha256:t-two", "r-1", "k1"),
            &device_actor(),
        )
        .await
        .expect_err("other token");
    assert_eq!(refusal(err), "id_taken");
    // A window of zero never repeats.
    let mut no_window = ca.enrollment_by("sha256:t-two", "r-2", "k2");
    store
        .enroll_device(no_window.clone(), &device_actor())
        .await
        .expect("enroll r-2");
    no_window.repeat_window = std::time::Duration::ZERO;
    let err = store
        .enroll_device(no_window, &device_actor())
        .await
        .expect_err("no window");
    assert_eq!(refusal(err), "id_taken");

    // Once the device has connected it had its answer.
    store
        .record_presence(&id("r-1"), true, OffsetDateTime::now_utc())
        .await
        .expect("presence");
    let err = store
        .enroll_device(
            ca.enrollment_by("sha256:t-one", "r-1", "k1"),
            &device_actor(),
        )
        .await
        .expect_err("after connecting");
    assert_eq!(refusal(err), "token_used_up");
    let r2 = store
        .enroll_device(
            ca.enrollment_by("sha256:t-two", "r-2", "k2"),
            &device_actor(),
        )
        .await
        .expect("repeat r-2 before it connects");
    assert!(r2.repeated);
    assert_eq!(ca.issued(), 2);

    let audit = store.audit_log(0, 100).await.expect("audit");
    let repeats: Vec<&str> = audit
        .iter()
        .filter(|r| r.action == "device.enroll-repeated")
        .filter_map(|r| r.subject.as_deref())
        .collect();
    assert_eq!(repeats, ["r-1", "r-2"]);
    assert!(store.verify_audit().await.expect("verify").ok);
}
