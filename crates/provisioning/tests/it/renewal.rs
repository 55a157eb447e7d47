//! Renewal decisions: what is signed and recorded, what is refused and how.

use rampart_proto::control::{RenewalErrorCode, RenewalRequest};
use rampart_provisioning::renewal::Renewal;
use rampart_store::{CertificateStatus, Store};

use crate::fixture::{Fixture, actor, csr, id};

fn request(csr: String) -> RenewalRequest {
    RenewalRequest { csr }
}

#[tokio::test]
async fn a_new_key_is_signed_and_recorded_as_pending() {
    let f = Fixture::new();
    let (_, key, _) = f.device("meter-1", 1).await;
    let renewal = Renewal {
        store: &f.store,
        pki: &f.pki,
    };
    let (pem, _) = csr("meter-1");
    let renewed = renewal
        .renew(&id("meter-1"), &key, &request(pem), &actor())
        .await
        .expect("renewed");
    assert_eq!(renewed.replaced, None);
    assert_eq!(
        renewed.chain,
        format!("{}{}", renewed.certificate.pem, f.pki.issuing_ca_pem())
    );
    let answer = renewed.answer();
    assert_eq!(answer.serial, renewed.certificate.serial);
    assert_eq!(
        answer.not_after,
        renewed.certificate.not_after.unix_timestamp() * 1000
    );
    let stored = f
        .store
        .certificate(&renewed.certificate.serial)
        .await
        .expect("read")
        .expect("recorded");
    assert_eq!(stored.status, CertificateStatus::Pending);

    let (pem, _) = csr("meter-1");
    let again = renewal
        .renew(&id("meter-1"), &key, &request(pem), &actor())
        .await
        .expect("renewed again");
    assert_eq!(
        again.replaced.as_deref(),
        Some(renewed.certificate.serial.as_str())
    );
}

#[tokio::test]
async fn refusals_carry_their_codes() {
    let f = Fixture::new();
    let (_, key, _) = f.device("meter-1", 1).await;
    let renewal = Renewal {
        store: &f.store,
        pki: &f.pki,
    };
    let refuse = |csr: String, connected: String| async move {
        renewal
            .renew(&id("meter-1"), &connected, &request(csr), &actor())
            .await
            .expect_err("refused")
            .code()
    };
    assert_eq!(
        refuse("not a CSR".into(), key.clone()).await,
        RenewalErrorCode::InvalidCsr
    );
    assert_eq!(
        refuse(csr("meter-2").0, key.clone()).await,
        RenewalErrorCode::IdMismatch
    );
    // The CSR's key is the connected certificate's key.
    let (pem, fresh) = csr("meter-1");
    let same = f
        .pki
        .verify_device_csr(&pem)
        .expect("CSR")
        .public_key_sha256()
        .to_owned();
    assert_eq!(refuse(pem, same).await, RenewalErrorCode::SameKey);
    drop(fresh);

    f.store
        .set_device_disabled(&id("meter-1"), true, &actor())
        .await
        .expect("disable");
    assert_eq!(
        refuse(csr("meter-1").0, key.clone()).await,
        RenewalErrorCode::NotAllowed
    );
    let err = renewal
        .renew(&id("ghost"), &key, &request(csr("ghost").0), &actor())
        .await
        .expect_err("unknown device");
    assert_eq!(err.code(), RenewalErrorCode::NotAllowed);
    // Nothing was recorded for any refusal.
    let certs = f.store.certificates_of(&id("meter-1")).await.expect("list");
    assert_eq!(certs.len(), 1);
}
