//! Rampart's certificate authority: the CA directory, device and service
//! certificates, CSR signing, CRLs and certificate fingerprints.
//!
//! This crate owns the trust material in one directory (see [`Pki`] for the
//! files): a root CA, an issuing (intermediate) CA that signs every leaf, the
//! server certificate for the broker and web parts, and the CRL. It can also
//! adopt an external CA instead ([`Pki::import`]).
//!
//! It must not touch a database or the network: which device holds which
//! certificate, and which serials are revoked, is the store's business; the
//! caller passes revoked serials in and records what comes out. Private keys
//! of devices are never seen here except in the development shortcut
//! [`Pki::issue_device_with_generated_key`].
#![warn(missing_docs)]

mod ca;
mod certificate;
mod crl;
mod csr;
mod error;
mod files;
mod keys;
mod tls;

pub use ca::{CaInfo, InitOutcome, Pki, PkiOptions};
pub use certificate::{
    CertificateSummary, IdentityKind, IssuedCertificate, SERVICE_POLICY_OID, fingerprint_sha256,
    parse_certificate_der, parse_certificate_pem,
};
pub use crl::{RevocationReason, RevokedSerial};
pub use csr::VerifiedCsr;
pub use error::PkiError;
pub use tls::{ServerIdentity, server_identity};
pub use zeroize::Zeroizing;
