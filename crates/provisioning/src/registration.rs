//! Registration: an issued certificate becomes an `unbound` device with a
//! fresh claim code for its label (DESIGN.md "Claiming", step 1). The CLI
//! (`device sign-csr|create|register`) and enrollment over HTTPS end here.

use rampart_pki::{IssuedCertificate, Pki};
use rampart_proto::{CLAIM_CODE_BYTES, ClaimCode, DeviceId, QrPayload};
use rampart_store::{Actor, Device, NewDevice, Store, StoreError};
use rand::RngCore;

/// A registered device with everything it is handed once: its
/// certificate, the trust bundle, and its claim code (stored only hashed).
#[derive(Debug, Clone)]
pub struct Registration {
    /// The device as registered.
    pub device: Device,
    /// Its certificate.
    pub certificate: IssuedCertificate,
    /// The certificate followed by the issuing CA (PEM), for TLS stacks
    /// that send a chain.
    pub chain: String,
    /// The trust bundle to verify the server with: issuing CA, then its
    /// issuers up to the root (PEM).
    pub ca_chain: String,
    /// The claim code for its label; only its hash is kept.
    pub claim_code: ClaimCode,
    /// The label's QR content: `{"deviceId","fingerprint","claimCode"}`.
    pub qr_payload: String,
}

impl Registration {
    /// Bundles a device just registered with `certificate` and `claim_code`.
    pub fn new(
        device: Device,
        certificate: IssuedCertificate,
        claim_code: ClaimCode,
        pki: &Pki,
    ) -> Self {
        Self {
            qr_payload: qr_payload(&device.id, &device.fingerprint, &claim_code),
            chain: chain_pem(&certificate.pem, pki.issuing_ca_pem()),
            ca_chain: pki.chain_pem(),
            device,
            certificate,
            claim_code,
        }
    }
}

/// `leaf` followed by `issuer`, each ending in a newline.
pub fn chain_pem(leaf: &str, issuer: &str) -> String {
    let mut chain = String::with_capacity(leaf.len() + issuer.len() + 2);
    for block in [leaf, issuer] {
        chain.push_str(block);
        if !block.ends_with('\n') {
            chain.push('\n');
        }
    }
    chain
}

/// A fresh claim code from the operating system's CSPRNG.
pub fn new_claim_code() -> ClaimCode {
    let mut bytes = [0u8; CLAIM_CODE_BYTES];
    rand::rng().fill_bytes(&mut bytes);
    ClaimCode::from_random(bytes)
}

/// The QR payload of a device label.
pub fn qr_payload(id: &DeviceId, fingerprint: &str, code: &ClaimCode) -> String {
    QrPayload {
        device_id: id.to_string(),
        fingerprint: fingerprint.to_owned(),
        claim_code: code.as_str().to_owned(),
    }
    .to_json()
}

/// Registers an issued certificate as a new `unbound` device with a fresh
/// claim code. Fails with [`StoreError::IdTaken`] if the id is in use.
pub async fn register(
    store: &dyn Store,
    pki: &Pki,
    certificate: IssuedCertificate,
    actor: &Actor,
) -> Result<Registration, StoreError> {
    let code = new_claim_code();
    let device = store
        .create_device(
            NewDevice::from_certificate(&certificate, code.hash()),
            actor,
        )
        .await?;
    Ok(Registration::new(device, certificate, code, pki))
}

/// Refuses early, before any signing, when the id is taken.
pub async fn ensure_free(store: &dyn Store, id: &DeviceId) -> Result<(), StoreError> {
    if store.device(id).await?.is_some() || store.service(id).await?.is_some() {
        return Err(StoreError::IdTaken(id.clone()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chains_end_every_block_with_a_newline() {
        assert_eq!(chain_pem("A\n", "B"), "A\nB\n");
        assert_eq!(chain_pem("A", "B\n"), "A\nB\n");
    }

    #[test]
    fn claim_codes_are_fresh_and_labels_carry_them() {
        let (a, b) = (new_claim_code(), new_claim_code());
        assert_ne!(a, b);
        let id = DeviceId::parse("gh-1").expect("id");
        let qr: serde_json::Value =
            serde_json::from_str(&qr_payload(&id, "ab12", &a)).expect("json");
        assert_eq!(qr["deviceId"], "gh-1");
        assert_eq!(qr["fingerprint"], "ab12");
        assert_eq!(qr["claimCode"], a.as_str());
    }
}
