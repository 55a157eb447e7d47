//! Who is connected: the proof that a TLS peer is a registered identity.
//!
//! rustls has already checked the certificate chain against Rampart's CA
//! and CRL when this module runs. What it adds is the registry check that
//! makes a certificate *this identity's current one*: the serial must be
//! registered, current (not superseded or revoked), belong to the CN, and
//! carry the recorded fingerprint; the identity must be allowed to connect
//! (not disabled or revoked). Only then does an [`Identity`] exist, and
//! every other part of the broker takes that type, never a bare string.
//!
//! A certificate issued by a renewal is `pending` until its device first
//! connects with it: that connection makes it current in the registry (and
//! the previous one superseded and revoked) before the identity exists.

use std::fmt;
use std::net::SocketAddr;

pub use rampart_pki::IdentityKind;
use rampart_pki::fingerprint_sha256;
use rampart_proto::DeviceId;
use rampart_store::{Actor, CertificateStatus, Store};
use x509_parser::prelude::{FromDer, X509Certificate};

/// A connected identity whose certificate was verified against the registry.
///
/// The private field keeps construction inside this module (stronger than
/// `#[non_exhaustive]`, which would still allow it anywhere in the crate).
#[derive(Clone, PartialEq, Eq)]
#[allow(clippy::manual_non_exhaustive)]
pub struct Identity {
    /// The certificate CN: the device id or service name.
    pub id: DeviceId,
    /// Device or service.
    pub kind: IdentityKind,
    /// Serial of the certificate it connected with (lowercase hex).
    pub serial: String,
    /// SHA-256 of that certificate's public key (its DER
    /// SubjectPublicKeyInfo), lowercase hex: what a renewal compares a new
    /// key with.
    pub public_key_sha256: String,
    _proof: (),
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Identity({} {}, serial {})",
            self.kind, self.id, self.serial
        )
    }
}

impl Identity {
    /// An identity for unit tests of pure logic (ACL, routing).
    #[cfg(test)]
    pub(crate) fn for_tests(id: DeviceId, kind: IdentityKind) -> Self {
        Self {
            id,
            kind,
            serial: "00".into(),
            public_key_sha256: String::new(),
            _proof: (),
        }
    }
}

/// Why a verified TLS peer is still refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    /// No client certificate was presented.
    #[error("no client certificate")]
    NoCertificate,
    /// The certificate could not be read.
    #[error("client certificate unreadable: {0}")]
    Unreadable(String),
    /// The CN is missing or not a valid identity name.
    #[error("client certificate CN is not a valid identity: {0}")]
    BadCommonName(String),
    /// The serial is not in the registry (a stray certificate from a shared CA).
    #[error("certificate serial {0} is not registered")]
    Unknown(String),
    /// The serial belongs to someone else, or the fingerprint differs.
    #[error("certificate serial {serial} is registered to '{registered}', not to '{presented}'")]
    Mismatch {
        /// The serial.
        serial: String,
        /// Who it is registered to.
        registered: String,
        /// Who the certificate says.
        presented: String,
    },
    /// Revoked or superseded.
    #[error("certificate {serial} is {status}")]
    NotCurrent {
        /// The serial.
        serial: String,
        /// `revoked` or `superseded`.
        status: &'static str,
    },
    /// The identity is disabled, revoked or deleted.
    #[error("identity '{id}' may not connect: it is {state}")]
    NotAllowed {
        /// The identity.
        id: String,
        /// Its state.
        state: String,
    },
    /// The registry could not be read.
    #[error("registry unavailable: {0}")]
    Registry(String),
}

impl IdentityError {
    /// A short stable label for metrics and logs.
    pub fn label(&self) -> &'static str {
        match self {
            IdentityError::NoCertificate => "no_certificate",
            IdentityError::Unreadable(_) => "unreadable",
            IdentityError::BadCommonName(_) => "bad_cn",
            IdentityError::Unknown(_) => "unregistered",
            IdentityError::Mismatch { .. } => "mismatch",
            IdentityError::NotCurrent { status, .. } => status,
            IdentityError::NotAllowed { .. } => "not_allowed",
            IdentityError::Registry(_) => "registry",
        }
    }
}

/// What the leaf certificate says about itself.
#[derive(Debug, Clone)]
pub(crate) struct Presented {
    pub(crate) id: DeviceId,
    pub(crate) serial: String,
    pub(crate) fingerprint: String,
    pub(crate) public_key_sha256: String,
}

/// Reads CN, serial and fingerprint from the peer's leaf certificate (DER).
pub(crate) fn presented(der: &[u8]) -> Result<Presented, IdentityError> {
    let (_, cert) =
        X509Certificate::from_der(der).map_err(|e| IdentityError::Unreadable(e.to_string()))?;
    let cn = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|a| a.as_str().ok())
        .ok_or_else(|| IdentityError::BadCommonName("missing".into()))?;
    let id = DeviceId::parse(cn).map_err(|e| IdentityError::BadCommonName(e.to_string()))?;
    Ok(Presented {
        id,
        serial: hex_serial(cert.raw_serial()),
        fingerprint: fingerprint_sha256(der),
        // The same digest as a fingerprint, over the key instead of the
        // whole certificate.
        public_key_sha256: fingerprint_sha256(cert.public_key().raw),
    })
}

fn hex_serial(raw: &[u8]) -> String {
    // The registry stores serials as the hex of their DER content bytes.
    raw.iter().map(|b| format!("{b:02x}")).collect()
}

/// Checks the presented certificate against the registry. A pending
/// certificate (from a renewal) is made current first, in the name of the
/// device connecting from `addr`.
pub(crate) async fn verify(
    store: &dyn Store,
    der: &[u8],
    addr: SocketAddr,
) -> Result<Identity, IdentityError> {
    let p = presented(der)?;
    let record = store
        .certificate(&p.serial)
        .await
        .map_err(|e| IdentityError::Registry(e.to_string()))?
        .ok_or_else(|| IdentityError::Unknown(p.serial.clone()))?;
    if record.identity != p.id || record.fingerprint != p.fingerprint {
        return Err(IdentityError::Mismatch {
            serial: p.serial,
            registered: record.identity.to_string(),
            presented: p.id.to_string(),
        });
    }
    match record.status {
        CertificateStatus::Current | CertificateStatus::Pending => {}
        CertificateStatus::Revoked => {
            return Err(IdentityError::NotCurrent {
                serial: p.serial,
                status: "revoked",
            });
        }
        CertificateStatus::Superseded => {
            return Err(IdentityError::NotCurrent {
                serial: p.serial,
                status: "superseded",
            });
        }
    }
    // Before activation, so that a disabled device's attempt does not
    // retire its certificate.
    check_allowed(store, &p.id, record.kind).await?;
    if record.status == CertificateStatus::Pending {
        let actor = Actor {
            name: p.id.to_string(),
            source: addr.to_string(),
        };
        let activated = store
            .activate_certificate(&p.serial, &actor)
            .await
            .map_err(|e| match e {
                // Superseded or revoked between the two reads.
                rampart_store::StoreError::CertificateState { status, .. } => {
                    IdentityError::NotCurrent {
                        serial: p.serial.clone(),
                        status: if status == "revoked" {
                            "revoked"
                        } else {
                            "superseded"
                        },
                    }
                }
                other => IdentityError::Registry(other.to_string()),
            })?;
        tracing::info!(device_id = %p.id, serial = %activated.serial, "renewed certificate in use: now current");
    }
    Ok(Identity {
        id: p.id,
        kind: record.kind,
        serial: p.serial,
        public_key_sha256: p.public_key_sha256,
        _proof: (),
    })
}

/// Whether the identity may (still) be connected: used at CONNECT and
/// again whenever the change feed mentions it.
pub(crate) async fn check_allowed(
    store: &dyn Store,
    id: &DeviceId,
    kind: IdentityKind,
) -> Result<(), IdentityError> {
    match kind {
        IdentityKind::Device => {
            let device = store
                .device(id)
                .await
                .map_err(|e| IdentityError::Registry(e.to_string()))?;
            match device {
                Some(d) if d.state.may_connect() => Ok(()),
                Some(d) => Err(IdentityError::NotAllowed {
                    id: id.to_string(),
                    state: d.state.to_string(),
                }),
                None => Err(IdentityError::NotAllowed {
                    id: id.to_string(),
                    state: "deleted".into(),
                }),
            }
        }
        IdentityKind::Service => {
            let service = store
                .service(id)
                .await
                .map_err(|e| IdentityError::Registry(e.to_string()))?;
            match service {
                Some(s) if s.state == rampart_store::ServiceState::Active => Ok(()),
                Some(s) => Err(IdentityError::NotAllowed {
                    id: id.to_string(),
                    state: s.state.as_str().into(),
                }),
                None => Err(IdentityError::NotAllowed {
                    id: id.to_string(),
                    state: "deleted".into(),
                }),
            }
        }
    }
}
