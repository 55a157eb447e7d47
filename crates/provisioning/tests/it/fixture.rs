//! A CA and a registry in a temporary directory, with registered devices.

use rampart_pki::{Pki, PkiOptions};
use rampart_proto::{ClaimCode, DeviceId};
use rampart_store::sqlite::SqliteOptions;
use rampart_store::{Actor, AuditKey, NewDevice, SqliteStore, Store};

/// A CA and a registry.
pub struct Fixture {
    pub pki: Pki,
    pub store: SqliteStore,
    _dir: tempfile::TempDir,
}

pub fn id(s: &str) -> DeviceId {
    DeviceId::parse(s).expect("valid id")
}

pub fn actor() -> Actor {
    Actor {
        name: "cli:test".into(),
        source: "test".into(),
    }
}

impl Fixture {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let (pki, _) = Pki::init(&dir.path().join("pki"), &PkiOptions::default()).expect("CA");
        let store = SqliteStore::open(
            &dir.path().join("rampart.db"),
            AuditKey::new([9; 32], None),
            SqliteOptions::default(),
        )
        .expect("store");
        Self {
            pki,
            store,
            _dir: dir,
        }
    }

    /// Registers `name` with a certificate from the CA; returns its claim
    /// code, the SHA-256 of its public key and its fingerprint.
    pub async fn device(&self, name: &str, code_byte: u8) -> (ClaimCode, String, String) {
        let (csr, _key) = csr(name);
        let cert = self.pki.sign_device_csr(&csr, None).expect("signed");
        let code = ClaimCode::from_random([code_byte; rampart_proto::CLAIM_CODE_BYTES]);
        self.store
            .create_device(NewDevice::from_certificate(&cert, code.hash()), &actor())
            .await
            .expect("register");
        let key_hash = self
            .pki
            .verify_device_csr(&csr)
            .expect("CSR")
            .public_key_sha256()
            .to_owned();
        (code, key_hash, cert.fingerprint)
    }

    pub async fn set_online(&self, name: &str, online: bool) {
        self.store
            .record_presence(&id(name), online, time::OffsetDateTime::now_utc())
            .await
            .expect("presence");
    }
}

/// A CSR for `cn` with a fresh key, and that key.
pub fn csr(cn: &str) -> (String, rcgen::KeyPair) {
    let key = rcgen::KeyPair::generate().expect("key");
    (csr_with(cn, &key), key)
}

/// A CSR for `cn` with `key`.
pub fn csr_with(cn: &str, key: &rcgen::KeyPair) -> String {
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, cn);
    params
        .serialize_request(key)
        .and_then(|r| r.pem())
        .expect("CSR")
}
