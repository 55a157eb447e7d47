//! `POST /api/v1/enroll`: the contract, every refusal, the failure limit.

use std::time::Duration;

use rampart_proto::DeviceId;
use rampart_provisioning::enrollment::EnrollmentSecret;
use rampart_store::{DeviceState, NewEnrollmentToken, Owner, Store};
use rampart_test_support::https::{enroll_body, p256_csr};
use rampart_web::{WebConfig, WebMetrics};
use time::OffsetDateTime;

use crate::common::{Server, config};

fn id(s: &str) -> DeviceId {
    DeviceId::parse(s).expect("id")
}

/// The registered device `name`.
async fn device(s: &Server, name: &str) -> rampart_store::Device {
    s.store
        .device(&id(name))
        .await
        .expect("get")
        .unwrap_or_else(|| panic!("{name} is not registered"))
}

/// How many refused enrollments the audit log holds.
async fn refusals_audited(s: &Server) -> usize {
    s.audit_actions()
        .await
        .iter()
        .filter(|a| *a == "device.enroll-refused")
        .count()
}

/// Uses taken of the only token.
async fn uses_used(s: &Server) -> u32 {
    s.store.enrollment_tokens().await.expect("tokens")[0].uses_used
}

#[tokio::test]
async fn a_device_enrolls_as_unbound_owned_by_the_tokens_owner() {
    let s = Server::start(config()).await;
    let token = s.token(2, Some("gh-"), Some("ann")).await;
    let r = s.enroll(Some(&token), "gh-1").await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let b = &r.body;
    assert_eq!(b["deviceId"], "gh-1");

    let device = device(&s, "gh-1").await;
    assert_eq!(device.state, DeviceState::Unbound);
    assert_eq!(device.owner, Some(Owner::User("ann".into())));
    assert_eq!(b["fingerprint"], device.fingerprint.as_str());
    assert_eq!(b["serial"], device.serial.as_str());
    assert_eq!(
        b["notAfter"].as_i64(),
        Some((device.not_after.unix_timestamp_nanos() / 1_000_000) as i64)
    );
    let cert = b["certificate"].as_str().expect("certificate");
    let summary = rampart_pki::parse_certificate_pem(cert).expect("a certificate");
    assert_eq!(summary.cn.as_deref(), Some("gh-1"));
    assert_eq!(summary.fingerprint, device.fingerprint);
    assert_eq!(
        b["chain"].as_str(),
        Some(format!("{cert}{}", s.pki.issuing_ca_pem()).as_str())
    );
    assert_eq!(b["caChain"].as_str(), Some(s.pki.chain_pem().as_str()));
    // The label's QR payload carries the claim code handed out here.
    let qr: serde_json::Value =
        serde_json::from_str(b["qrPayload"].as_str().expect("qr")).expect("qr JSON");
    assert_eq!(qr["deviceId"], "gh-1");
    assert_eq!(qr["fingerprint"], device.fingerprint.as_str());
    assert_eq!(qr["claimCode"], b["claimCode"]);
    assert_eq!(b["claimCode"].as_str().map(str::len), Some(32));

    assert_eq!(uses_used(&s).await, 1);
    let audit = s.store.audit_log(0, 100).await.expect("audit");
    let enrolled = audit
        .iter()
        .find(|r| r.action == "device.enroll")
        .expect("audited");
    assert_eq!(enrolled.source, "127.0.0.1");
    assert_eq!(enrolled.subject.as_deref(), Some("gh-1"));
    let all = serde_json::to_string(&audit).expect("audit JSON");
    assert!(!all.contains(&token), "the token reached the audit log");
    assert!(!all.contains(b["claimCode"].as_str().unwrap_or("-")));
    assert_eq!(WebMetrics::get(&s.state.metrics().enrolled), 1);
}

#[tokio::test]
async fn expired_used_up_revoked_unknown_and_missing_tokens_are_refused() {
    let s = Server::start(config()).await;
    // An expired token, stored directly: its expiry is already past.
    let expired = EnrollmentSecret::generate();
    s.store
        .create_enrollment_token(
            NewEnrollmentToken {
                id: "expired".into(),
                token_hash: expired.hash(),
                expires_at: OffsetDateTime::now_utc() - time::Duration::seconds(1),
                uses_allowed: 5,
                id_prefix: None,
                owner: None,
            },
            &rampart_store::Actor::system(),
        )
        .await
        .expect("expired token");
    let one_use = s.token(1, None, None).await;
    assert_eq!(s.enroll(Some(&one_use), "d-1").await.status, 201);

    let unknown = EnrollmentSecret::generate();
    let cases = [
        (None, 401, "token_invalid"),
        (Some("not-a-token"), 401, "token_invalid"),
        (Some(unknown.as_str()), 401, "token_invalid"),
        (Some(expired.as_str()), 401, "token_expired"),
        (Some(one_use.as_str()), 403, "token_used_up"),
    ];
    for (token, status, code) in cases {
        let r = s.enroll(token, "d-2").await;
        assert_eq!(
            (r.status, r.code()),
            (status, code),
            "{token:?}: {:?}",
            r.body
        );
        assert!(
            r.body["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{:?}",
            r.body
        );
    }
    // Revoked reads like unknown to the client.
    let revocable = s.token(5, None, None).await;
    let listed = s.store.enrollment_tokens().await.expect("tokens");
    let revocable_id = &listed.last().expect("token").id;
    s.store
        .revoke_enrollment_token(revocable_id, &rampart_store::Actor::system())
        .await
        .expect("revoke");
    let r = s.enroll(Some(&revocable), "d-2").await;
    assert_eq!((r.status, r.code()), (401, "token_invalid"));

    assert!(s.store.device(&id("d-2")).await.expect("get").is_none());
    let tokens = s.store.enrollment_tokens().await.expect("tokens");
    assert!(
        tokens
            .iter()
            .all(|t| t.uses_used == u32::from(t.uses_allowed == 1)),
        "a refused attempt took a use: {tokens:?}"
    );
    let refused = refusals_audited(&s).await;
    assert_eq!(refused, 6, "every refusal is audited");
    assert_eq!(WebMetrics::get(&s.state.metrics().enroll_refused), 6);
}

#[tokio::test]
async fn out_of_scope_and_taken_ids_are_refused_without_taking_a_use() {
    let s = Server::start(config()).await;
    let token = s.token(3, Some("gh-"), None).await;
    assert_eq!(s.enroll(Some(&token), "gh-1").await.status, 201);
    let r = s.enroll(Some(&token), "other-1").await;
    assert_eq!((r.status, r.code()), (403, "id_prefix_mismatch"));
    let r = s.enroll(Some(&token), "gh-1").await;
    assert_eq!((r.status, r.code()), (409, "id_taken"));
    assert_eq!(uses_used(&s).await, 1);
    // The first device keeps its certificate.
    let device = device(&s, "gh-1").await;
    assert_eq!(device.state, DeviceState::Unbound);
}

#[tokio::test]
async fn a_device_whose_answer_was_lost_gets_its_certificate_again() {
    let s = Server::start(config()).await;
    let token = s.token(1, None, None).await;
    let (_key, csr) = p256_csr("lost-1");
    let first = s.post_enroll(Some(&token), enroll_body(&csr)).await;
    assert_eq!(first.status, 201, "{:?}", first.body);
    // The answer never arrived: the device asks again, same key and token.
    let again = s.post_enroll(Some(&token), enroll_body(&csr)).await;
    assert_eq!(again.status, 200, "{:?}", again.body);
    for field in [
        "deviceId",
        "certificate",
        "serial",
        "fingerprint",
        "notAfter",
    ] {
        assert_eq!(again.body[field], first.body[field], "{field}");
    }
    assert_ne!(
        again.body["claimCode"], first.body["claimCode"],
        "the repeat carries a new claim code"
    );
    assert_eq!(uses_used(&s).await, 1, "a repeat took a use");
    assert_eq!(WebMetrics::get(&s.state.metrics().enroll_repeated), 1);
    // Another key asking for the same id is refused (the token is used up).
    let other = s.enroll(Some(&token), "lost-1").await;
    assert_eq!((other.status, other.code()), (403, "token_used_up"));
    let actions = s.audit_actions().await;
    assert!(
        actions.iter().any(|a| a == "device.enroll-repeated"),
        "{actions:?}"
    );
    assert_eq!(
        device(&s, "lost-1").await.serial,
        first.body["serial"].as_str().expect("serial")
    );
}

#[tokio::test]
async fn malformed_requests_get_json_errors() {
    let s = Server::start(WebConfig {
        max_body_bytes: 4096,
        ..config()
    })
    .await;
    let token = s.token(5, None, None).await;
    let (_key, csr) = p256_csr("d-1");
    let (_key, bad_cn) = p256_csr("not a valid id");
    let cases: Vec<(String, u16, &str)> = vec![
        ("{".into(), 400, "invalid_json"),
        ("[]".into(), 400, "invalid_json"),
        (r#"{"csr": 5}"#.into(), 400, "invalid_json"),
        (
            serde_json::json!({ "csr": csr, "id": "d-1" }).to_string(),
            400,
            "invalid_json",
        ),
        (enroll_body("not a CSR"), 400, "invalid_csr"),
        (enroll_body(&bad_cn), 400, "invalid_csr"),
        (
            enroll_body(&csr.replace("CERTIFICATE REQUEST", "CERTIFICATE")),
            400,
            "invalid_csr",
        ),
        (
            serde_json::json!({ "csr": "A".repeat(5000) }).to_string(),
            413,
            "payload_too_large",
        ),
    ];
    for (body, status, code) in cases {
        let r = s.post_enroll(Some(&token), body.clone()).await;
        assert_eq!(
            (r.status, r.code()),
            (status, code),
            "{}: {:?}",
            body.chars().take(60).collect::<String>(),
            r.body
        );
    }
    // A CSR whose signature does not verify: one byte of the signature flipped.
    let mut der = pem_body(&csr);
    let last = der.len() - 1;
    der[last] ^= 0x01;
    let tampered = to_pem(&der);
    let r = s.post_enroll(Some(&token), enroll_body(&tampered)).await;
    assert_eq!((r.status, r.code()), (400, "invalid_csr"), "{:?}", r.body);

    assert_eq!(uses_used(&s).await, 0);
    assert_eq!(s.enroll(Some(&token), "d-1").await.status, 201);
}

/// The DER inside a one-block PEM.
fn pem_body(pem: &str) -> Vec<u8> {
    let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    data_encoding::BASE64
        .decode(b64.as_bytes())
        .expect("base64")
}

fn to_pem(der: &[u8]) -> String {
    let b64 = data_encoding::BASE64.encode(der);
    let mut pem = String::from("-----BEGIN CERTIFICATE REQUEST-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(chunk).expect("ASCII"));
        pem.push('\n');
    }
    pem.push_str("-----END CERTIFICATE REQUEST-----\n");
    pem
}

#[tokio::test]
async fn failed_attempts_are_rate_limited_per_address_and_take_no_use() {
    let s = Server::start(WebConfig {
        enroll_failure_burst: 2,
        enroll_failure_refill: Duration::from_secs(3600),
        ..WebConfig::default()
    })
    .await;
    let token = s.token(5, None, None).await;
    // Successes never count: more than a burst of them in a row.
    for n in 0..3 {
        assert_eq!(s.enroll(Some(&token), &format!("ok-{n}")).await.status, 201);
    }
    for _ in 0..2 {
        let r = s.enroll(Some("rmp_enr_guess"), "x-1").await;
        assert_eq!(r.code(), "token_invalid");
    }
    // The bucket is empty: even a valid request waits.
    let r = s.enroll(Some(&token), "x-1").await;
    assert_eq!((r.status, r.code()), (429, "rate_limited"), "{:?}", r.body);
    let wait = r.retry_after.expect("Retry-After");
    assert!((3000..=3600).contains(&wait), "{wait}");
    assert_eq!(uses_used(&s).await, 3);
    assert!(s.store.device(&id("x-1")).await.expect("get").is_none());
    assert_eq!(WebMetrics::get(&s.state.metrics().rate_limited), 1);
    // Rate-limited requests are not audited (a flood must not fill the
    // audit log); the two refusals before are.
    let refused = refusals_audited(&s).await;
    assert_eq!(refused, 2);
}

#[tokio::test]
async fn concurrent_enrollments_for_a_one_use_token_register_one_device() {
    let s = Server::start(config()).await;
    let token = s.token(1, None, None).await;
    let (a, b) = tokio::join!(
        s.enroll(Some(&token), "race-a"),
        s.enroll(Some(&token), "race-b")
    );
    let mut outcomes = vec![
        (a.status, a.code().to_owned()),
        (b.status, b.code().to_owned()),
    ];
    outcomes.sort();
    assert_eq!(
        outcomes,
        [(201, String::new()), (403, "token_used_up".to_owned())]
    );
    let devices = s
        .store
        .list_devices(&Default::default())
        .await
        .expect("devices");
    assert_eq!(devices.len(), 1);
    assert_eq!(uses_used(&s).await, 1);
}
