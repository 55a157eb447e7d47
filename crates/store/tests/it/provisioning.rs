//! Renewal and claims in the store, on both backends: a renewal's pending
//! certificate becoming current (the old one superseded and on the CRL),
//! and a claim binding a device to its owner.

use rampart_pki::RevocationReason;
use rampart_store::{
    CertificateStatus, ChangeKind, ClaimStatus, DeviceState, NewCertificate, NewClaim, Owner,
    Store, StoreError,
};
use time::{Duration, OffsetDateTime};

use crate::store::{Backend, Postgres, Sqlite, cli, id, new_device, on_both};

on_both!(
    renewal_makes_the_pending_certificate_current,
    claim_binds_the_device_to_its_owner,
);

/// A certificate for `name` with serial and fingerprint unique per `n`.
fn renewed(name: &str, n: u8) -> NewCertificate {
    let now = OffsetDateTime::now_utc();
    NewCertificate {
        identity: id(name),
        serial: format!("ee{n:02x}{}", "12".repeat(14)),
        fingerprint: format!("ee{n:02x}{}", "34".repeat(30)),
        not_before: now,
        not_after: now + Duration::days(400),
    }
}

async fn kinds(store: &impl Store) -> Vec<ChangeKind> {
    store
        .changes_since(0)
        .await
        .expect("feed")
        .into_iter()
        .map(|c| c.kind)
        .collect()
}

async fn status(store: &impl Store, serial: &str) -> (CertificateStatus, Option<RevocationReason>) {
    let c = store
        .certificate(serial)
        .await
        .expect("read")
        .expect("certificate kept");
    (c.status, c.revocation_reason)
}

async fn renewal_makes_the_pending_certificate_current(backend: impl Backend) {
    let store = backend.open().await;
    let dev = store
        .create_device(new_device("meter-1", 1), &cli())
        .await
        .expect("create");
    let original = dev.serial.clone();

    let first = renewed("meter-1", 1);
    let replaced = store
        .add_pending_certificate(first.clone(), &cli())
        .await
        .expect("pending");
    assert_eq!(replaced, None);
    assert_eq!(
        status(&store, &first.serial).await,
        (CertificateStatus::Pending, None)
    );
    let unchanged = store
        .device(&id("meter-1"))
        .await
        .expect("read")
        .expect("exists");
    assert_eq!(
        unchanged.serial, original,
        "pending does not replace the current one"
    );

    // A second renewal while one is pending replaces it; the replaced one
    // goes on the CRL.
    let second = renewed("meter-1", 2);
    let replaced = store
        .add_pending_certificate(second.clone(), &cli())
        .await
        .expect("pending again");
    assert_eq!(replaced.as_deref(), Some(first.serial.as_str()));
    assert_eq!(
        status(&store, &first.serial).await,
        (
            CertificateStatus::Superseded,
            Some(RevocationReason::Superseded)
        )
    );

    let device_actor = rampart_store::Actor {
        name: "meter-1".into(),
        source: "127.0.0.1:5000".into(),
    };
    let current = store
        .activate_certificate(&second.serial, &device_actor)
        .await
        .expect("activate");
    assert_eq!(current.status, CertificateStatus::Current);
    assert_eq!(
        status(&store, &original).await,
        (
            CertificateStatus::Superseded,
            Some(RevocationReason::Superseded)
        )
    );
    let dev = store
        .device(&id("meter-1"))
        .await
        .expect("read")
        .expect("exists");
    assert_eq!(dev.serial, second.serial);
    assert_eq!(dev.fingerprint, second.fingerprint);
    assert_eq!(
        dev.not_after.unix_timestamp(),
        second.not_after.unix_timestamp()
    );
    let mut crl: Vec<String> = store
        .revoked_certificates()
        .await
        .expect("CRL")
        .into_iter()
        .map(|r| r.serial)
        .collect();
    crl.sort();
    let mut expected = vec![first.serial.clone(), original.clone()];
    expected.sort();
    assert_eq!(crl, expected);

    // Connecting again with it changes nothing; the old ones cannot come back.
    store
        .activate_certificate(&second.serial, &device_actor)
        .await
        .expect("already current");
    for old in [&original, &first.serial] {
        let err = store
            .activate_certificate(old, &device_actor)
            .await
            .expect_err("superseded");
        assert!(matches!(err, StoreError::CertificateState { .. }), "{err}");
    }
    let err = store
        .activate_certificate("00ff", &device_actor)
        .await
        .expect_err("unknown");
    assert!(matches!(err, StoreError::CertificateNotFound(_)), "{err}");
    assert_eq!(
        kinds(&store).await,
        [
            ChangeKind::DeviceCreated,
            ChangeKind::CertificateIssued,
            ChangeKind::CertificateIssued,
            ChangeKind::CertificateActivated,
        ]
    );
    let audit = store.audit_log(0, 100).await.expect("audit");
    let activation = audit
        .iter()
        .find(|r| r.action == "device.certificate.activate")
        .expect("activation audited");
    assert_eq!(
        (activation.actor.as_str(), activation.source.as_str()),
        ("meter-1", "127.0.0.1:5000")
    );
    assert_eq!(activation.detail["superseded"], original.as_str());
    assert!(store.verify_audit().await.expect("verify").ok);

    let all: Vec<String> = store
        .certificates_of(&id("meter-1"))
        .await
        .expect("list")
        .into_iter()
        .map(|c| c.serial)
        .collect();
    assert_eq!(all.len(), 3);
    assert!(all.contains(&original) && all.contains(&second.serial));

    // A disabled device gets no new certificate; a revoked one loses its
    // pending certificate with its current one.
    store
        .set_device_disabled(&id("meter-1"), true, &cli())
        .await
        .expect("disable");
    let err = store
        .add_pending_certificate(renewed("meter-1", 3), &cli())
        .await
        .expect_err("disabled");
    assert!(matches!(err, StoreError::InvalidState { .. }), "{err}");
    store
        .set_device_disabled(&id("meter-1"), false, &cli())
        .await
        .expect("enable");
    let third = renewed("meter-1", 4);
    store
        .add_pending_certificate(third.clone(), &cli())
        .await
        .expect("pending");
    store
        .revoke_device(&id("meter-1"), RevocationReason::KeyCompromise, &cli())
        .await
        .expect("revoke");
    assert_eq!(
        status(&store, &third.serial).await,
        (
            CertificateStatus::Revoked,
            Some(RevocationReason::KeyCompromise)
        )
    );
}

fn claim(name: &str, owner: &str, hash: &str) -> NewClaim {
    NewClaim {
        device: id(name),
        owner: owner.parse().expect("owner"),
        nonce: "0123456789abcdef0123456789abcdef".into(),
        expires_at: OffsetDateTime::now_utc() + Duration::minutes(10),
        claim_code_hash: hash.into(),
    }
}

async fn claim_binds_the_device_to_its_owner(backend: impl Backend) {
    let store = backend.open().await;
    store
        .create_device(new_device("lamp-1", 1), &cli())
        .await
        .expect("create");
    store
        .create_device(new_device("lamp-2", 2), &cli())
        .await
        .expect("create");
    assert_eq!(
        store
            .claim_code_hash(&id("lamp-1"))
            .await
            .expect("hash")
            .as_deref(),
        Some("hash")
    );
    let err = store
        .claim_code_hash(&id("nobody"))
        .await
        .expect_err("unknown");
    assert!(matches!(err, StoreError::NotFound(_)), "{err}");

    let err = store
        .start_claim(claim("lamp-1", "user:ann", "rotated-meanwhile"), &cli())
        .await
        .expect_err("stale hash");
    assert!(matches!(err, StoreError::ClaimCodeChanged(_)), "{err}");

    let first = store
        .start_claim(claim("lamp-1", "user:ann", "hash"), &cli())
        .await
        .expect("claim");
    assert_eq!(first.status, ClaimStatus::Pending);
    assert_eq!(first.owner, Owner::User("ann".into()));
    assert_eq!(first.nonce, "0123456789abcdef0123456789abcdef");
    let second = store
        .start_claim(claim("lamp-1", "group:ops", "hash"), &cli())
        .await
        .expect("claim again");
    let first = store.claim(first.id).await.expect("read").expect("kept");
    assert_eq!(first.status, ClaimStatus::Superseded);
    let latest = store
        .latest_claim(&id("lamp-1"))
        .await
        .expect("read")
        .expect("one");
    assert_eq!(latest.id, second.id);

    assert_eq!(
        store.count_claim_attempt(second.id).await.expect("count"),
        1
    );
    assert_eq!(
        store.count_claim_attempt(second.id).await.expect("count"),
        2
    );
    let err = store.count_claim_attempt(9999).await.expect_err("unknown");
    assert!(matches!(err, StoreError::ClaimNotFound(9999)), "{err}");

    let bound = store.complete_claim(second.id, &cli()).await.expect("bind");
    assert_eq!(bound.state, DeviceState::Bound);
    assert_eq!(bound.owner, Some(Owner::Group("ops".into())));
    assert_eq!(
        store.claim_code_hash(&id("lamp-1")).await.expect("hash"),
        None
    );
    let done = store.claim(second.id).await.expect("read").expect("kept");
    assert_eq!((done.status, done.attempts), (ClaimStatus::Bound, 2));
    assert!(done.finished_at.is_some());

    let err = store
        .complete_claim(second.id, &cli())
        .await
        .expect_err("bound already");
    assert!(matches!(err, StoreError::ClaimState { .. }), "{err}");
    let err = store
        .start_claim(claim("lamp-1", "user:eve", "hash"), &cli())
        .await
        .expect_err("already claimed");
    assert!(
        matches!(&err, StoreError::InvalidState { state, .. } if state == "bound"),
        "{err}"
    );

    let other = store
        .start_claim(claim("lamp-2", "user:ann", "hash"), &cli())
        .await
        .expect("claim");
    let err = store
        .end_claim(other.id, ClaimStatus::Bound, "x", &cli())
        .await
        .expect_err("only expired or refused");
    assert!(matches!(err, StoreError::ClaimState { .. }), "{err}");
    let expired = store
        .end_claim(other.id, ClaimStatus::Expired, "claim_expired", &cli())
        .await
        .expect("expire");
    assert_eq!(
        (expired.status, expired.reason.as_deref()),
        (ClaimStatus::Expired, Some("claim_expired"))
    );
    let err = store
        .complete_claim(other.id, &cli())
        .await
        .expect_err("expired");
    assert!(matches!(err, StoreError::ClaimState { .. }), "{err}");
    let lamp2 = store
        .device(&id("lamp-2"))
        .await
        .expect("read")
        .expect("exists");
    assert_eq!((lamp2.state, lamp2.owner), (DeviceState::Unbound, None));

    assert_eq!(
        kinds(&store).await[2..],
        [
            ChangeKind::ClaimRequested,
            ChangeKind::ClaimRequested,
            ChangeKind::DeviceBound,
            ChangeKind::ClaimRequested,
            ChangeKind::ClaimFailed,
        ]
    );
    assert!(store.verify_audit().await.expect("verify").ok);

    // Claims go with their device.
    store
        .delete_device(&id("lamp-2"), &cli())
        .await
        .expect("delete");
    assert!(store.claim(other.id).await.expect("read").is_none());
}
