//! Claim decisions: who may start a claim, and what a confirmation does.

use std::time::Duration;

use rampart_proto::ClaimCode;
use rampart_proto::control::{BindErrorCode, BindMessage, ClaimConfirmation};
use rampart_provisioning::claim::{self, ClaimError, ClaimPolicy, ClaimRequest};
use rampart_store::{ClaimStatus, DeviceState, Owner, Store};
use time::OffsetDateTime;

use crate::fixture::{Fixture, actor, id};

fn request(device: &str, code: &ClaimCode, owner: &str) -> ClaimRequest {
    ClaimRequest {
        device: id(device),
        code: code.clone(),
        fingerprint: None,
        owner: owner.parse().expect("owner"),
    }
}

/// Starts a claim of `lamp-1` by `owner` with a nonce of `byte`s.
async fn started(
    f: &Fixture,
    code: &ClaimCode,
    owner: &str,
    byte: u8,
    now: OffsetDateTime,
) -> rampart_store::Claim {
    claim::start(
        &f.store,
        &request("lamp-1", code, owner),
        &POLICY,
        [byte; 16],
        now,
        &actor(),
    )
    .await
    .expect("started")
}

const POLICY: ClaimPolicy = ClaimPolicy {
    expiry: Duration::from_secs(60),
    max_attempts: 2,
};

#[tokio::test]
async fn start_checks_code_fingerprint_state_and_presence() {
    let f = Fixture::new();
    let (code, _, fingerprint) = f.device("lamp-1", 1).await;
    let now = OffsetDateTime::now_utc();
    let start = |r: ClaimRequest| {
        let store = &f.store;
        async move { claim::start(store, &r, &POLICY, [7; 16], now, &actor()).await }
    };

    let err = start(request("ghost", &code, "user:ann"))
        .await
        .expect_err("unknown");
    assert!(matches!(err, ClaimError::UnknownDevice(_)), "{err}");
    let wrong = ClaimCode::from_random([2; rampart_proto::CLAIM_CODE_BYTES]);
    let err = start(request("lamp-1", &wrong, "user:ann"))
        .await
        .expect_err("wrong code");
    assert!(matches!(err, ClaimError::WrongCode(_)), "{err}");
    let err = start(request("lamp-1", &code, "user:ann"))
        .await
        .expect_err("offline");
    assert!(err.to_string().starts_with("device offline"), "{err}");

    f.set_online("lamp-1", true).await;
    let mut from_qr = request("lamp-1", &code, "user:ann");
    from_qr.fingerprint = Some("00".repeat(32));
    let err = start(from_qr.clone()).await.expect_err("other fingerprint");
    assert!(matches!(err, ClaimError::FingerprintMismatch(_)), "{err}");
    from_qr.fingerprint = Some(fingerprint);
    let started = start(from_qr).await.expect("started");
    assert_eq!(started.nonce, "07".repeat(16));
    assert_eq!(started.status, ClaimStatus::Pending);
    let ms = |t: OffsetDateTime| t.unix_timestamp_nanos() / 1_000_000;
    assert_eq!(
        ms(started.expires_at),
        ms(now + POLICY.expiry),
        "expiry from the policy, at the store's millisecond precision"
    );
    assert_eq!(
        claim::request_message(&started),
        BindMessage::Claim {
            nonce: "07".repeat(16),
            expires_at: (started.expires_at.unix_timestamp_nanos() / 1_000_000) as i64,
        }
    );

    let confirmed = claim::confirm(
        &f.store,
        &id("lamp-1"),
        &ClaimConfirmation {
            nonce: "07".repeat(16),
        },
        &POLICY,
        now,
        &actor(),
    )
    .await
    .expect("bound");
    assert_eq!(confirmed.owner, Some(Owner::User("ann".into())));
    let err = start(request("lamp-1", &code, "user:ann"))
        .await
        .expect_err("bound");
    assert!(
        matches!(
            err,
            ClaimError::AlreadyClaimed {
                by_requester: true,
                ..
            }
        ),
        "{err}"
    );
    let err = start(request("lamp-1", &code, "user:eve"))
        .await
        .expect_err("bound");
    assert_eq!(
        err.to_string(),
        "'lamp-1' is already claimed by another owner"
    );

    f.device("lamp-2", 3).await;
    f.store
        .set_device_disabled(&id("lamp-2"), true, &actor())
        .await
        .expect("disable");
    let code2 = ClaimCode::from_random([3; rampart_proto::CLAIM_CODE_BYTES]);
    let err = start(request("lamp-2", &code2, "user:ann"))
        .await
        .expect_err("disabled");
    assert!(
        matches!(
            err,
            ClaimError::NotClaimable {
                state: DeviceState::Disabled,
                ..
            }
        ),
        "{err}"
    );
}

#[tokio::test]
async fn confirmations_are_checked_against_nonce_expiry_and_attempts() {
    let f = Fixture::new();
    let (code, _, _) = f.device("lamp-1", 1).await;
    f.set_online("lamp-1", true).await;
    let now = OffsetDateTime::now_utc();
    let confirm = |nonce: &str, at: OffsetDateTime| {
        let store = &f.store;
        let c = ClaimConfirmation {
            nonce: nonce.to_owned(),
        };
        async move { claim::confirm(store, &id("lamp-1"), &c, &POLICY, at, &actor()).await }
    };

    let err = confirm("ab", now).await.expect_err("nothing pending");
    assert_eq!(err.code, BindErrorCode::NoPendingClaim);

    // Expired: refused, and the claim ends as expired.
    let first = started(&f, &code, "user:ann", 1, now).await;
    let late = now + time::Duration::seconds(61);
    let err = confirm(&"01".repeat(16), late).await.expect_err("expired");
    assert_eq!(err.code, BindErrorCode::ClaimExpired);
    let ended = f.store.claim(first.id).await.expect("read").expect("kept");
    assert_eq!(ended.status, ClaimStatus::Expired);
    let waited = claim::outcome(&f.store, first.id, late, &actor()).await;
    assert!(matches!(waited, Err(ClaimError::Expired(_))), "{waited:?}");

    // Wrong nonces: refused; at the limit (2) the claim is refused.
    let second = started(&f, &code, "group:ops", 2, now).await;
    assert_eq!(
        claim::outcome(&f.store, second.id, now, &actor())
            .await
            .expect("pending")
            .map(|d| d.id),
        None
    );
    for _ in 0..2 {
        let err = confirm(&"ff".repeat(16), now)
            .await
            .expect_err("wrong nonce");
        assert_eq!(err.code, BindErrorCode::NonceMismatch);
    }
    let refused = f.store.claim(second.id).await.expect("read").expect("kept");
    assert_eq!(
        (refused.status, refused.reason.as_deref()),
        (ClaimStatus::Refused, Some("nonce_mismatch"))
    );
    // Even the right nonce cannot revive it.
    let err = confirm(&"02".repeat(16), now).await.expect_err("ended");
    assert_eq!(err.code, BindErrorCode::NoPendingClaim);
    let waited = claim::outcome(&f.store, second.id, now, &actor()).await;
    assert!(
        matches!(
            waited,
            Err(ClaimError::Ended {
                status: ClaimStatus::Refused,
                ..
            })
        ),
        "{waited:?}"
    );

    // The right nonce in time binds; a replay is told the device is bound.
    let third = started(&f, &code, "group:ops", 3, now).await;
    let device = confirm(&"03".repeat(16), now).await.expect("bound");
    assert_eq!(
        claim::bound_message(&device),
        BindMessage::Bound {
            owner: "group:ops".into()
        }
    );
    let bound = claim::outcome(&f.store, third.id, now, &actor())
        .await
        .expect("bound");
    assert_eq!(bound.map(|d| d.state), Some(DeviceState::Bound));
    let err = confirm(&"03".repeat(16), now).await.expect_err("replay");
    assert_eq!(err.code, BindErrorCode::AlreadyBound);
}
