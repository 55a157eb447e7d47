//! The CA directory as a whole: creating, opening and importing a CA, and
//! issuing with it.

use std::collections::BTreeSet;
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rampart_proto::DeviceId;
use rcgen::{Issuer, KeyPair, PublicKeyData, SigningKey};
use serde::Serialize;
use time::{Duration, OffsetDateTime};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::FromDer;
use x509_parser::revocation_list::CertificateRevocationList;
use zeroize::Zeroizing;

use crate::certificate::{self, CertificateSummary, IdentityKind, IssuedCertificate};
use crate::csr::VerifiedCsr;
use crate::files::{
    self, CA_CERT, CA_KEY, CHAIN_CERT, CRL, IMPORTED_MARKER, PRIVATE, PUBLIC, ROOT_CERT, ROOT_KEY,
    SERVER_CERT, SERVER_KEY, Staging,
};
use crate::{PkiError, RevokedSerial, crl, csr, keys};

/// A server certificate expiring sooner than this is reissued by `init`/`open`.
const SERVER_RENEWAL_WINDOW: Duration = Duration::days(30);

/// Longest leaf validity accepted in options (the issuing CA lives about ten years).
const MAX_VALIDITY_DAYS: u32 = 3650;

/// Longest CA name: "{name} Issuing CA" must fit a 64-character common name.
const MAX_CA_NAME_CHARS: usize = 50;

/// What the IMPORTED marker file says to a person looking into the directory.
const IMPORTED_NOTE: &str = "This certificate authority was imported; Rampart did not create it.\n\
     ca.crt is the issuing CA (ca.key its key, if one was given);\n\
     chain.crt, if present, holds its issuers as they were supplied.\n";

/// How to create or open a CA directory.
#[derive(Clone)]
pub struct PkiOptions {
    /// Organization name and common-name prefix of the CA certificates.
    pub ca_name: String,
    /// Lifetime of device and service certificates, in days.
    pub device_validity_days: u32,
    /// Lifetime of the server certificate, in days.
    pub server_validity_days: u32,
    /// Server certificate names: DNS names or IP literals; the first is also the CN.
    pub server_sans: Vec<String>,
    /// Encrypts the CA keys on disk when set; needed to open a CA whose keys are encrypted.
    pub passphrase: Option<Zeroizing<String>>,
}

impl Default for PkiOptions {
    /// "Rampart", 365 days for devices, 397 for the server, SANs for local use only.
    fn default() -> Self {
        Self {
            ca_name: "Rampart".to_owned(),
            device_validity_days: 365,
            server_validity_days: 397,
            server_sans: vec![
                "localhost".to_owned(),
                "127.0.0.1".to_owned(),
                "::1".to_owned(),
            ],
            passphrase: None,
        }
    }
}

impl fmt::Debug for PkiOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PkiOptions")
            .field("ca_name", &self.ca_name)
            .field("device_validity_days", &self.device_validity_days)
            .field("server_validity_days", &self.server_validity_days)
            .field("server_sans", &self.server_sans)
            .field(
                "passphrase",
                &self.passphrase.as_ref().map(|_| "[redacted]"),
            )
            .finish()
    }
}

impl PkiOptions {
    fn passphrase(&self) -> Option<&str> {
        self.passphrase.as_ref().map(|p| p.as_str())
    }

    fn validate(&self) -> Result<(), PkiError> {
        let invalid = |reason: String| Err(PkiError::InvalidOptions { reason });
        let name = self.ca_name.trim();
        if name.is_empty() || name != self.ca_name {
            return invalid(format!(
                "ca_name '{}' must be non-empty without surrounding spaces",
                self.ca_name
            ));
        }
        if name.chars().count() > MAX_CA_NAME_CHARS || name.chars().any(char::is_control) {
            return invalid(format!(
                "ca_name must be at most {MAX_CA_NAME_CHARS} printable characters"
            ));
        }
        for (field, days) in [
            ("device_validity_days", self.device_validity_days),
            ("server_validity_days", self.server_validity_days),
        ] {
            if !(1..=MAX_VALIDITY_DAYS).contains(&days) {
                return invalid(format!(
                    "{field} is {days}; it must be between 1 and {MAX_VALIDITY_DAYS}"
                ));
            }
        }
        if self.server_sans.is_empty() {
            return invalid(
                "server_sans is empty; give at least one DNS name or IP address".to_owned(),
            );
        }
        if let Some(bad) = self.server_sans.iter().find(|san| !is_valid_san(san)) {
            return invalid(format!(
                "server name '{bad}' is neither an IP address nor a DNS name \
                 (letters, digits, '-', '_' and '.', optionally starting with '*.')"
            ));
        }
        if self.passphrase.as_ref().is_some_and(|p| p.is_empty()) {
            return invalid("the CA passphrase is empty; give a real one or none".to_owned());
        }
        Ok(())
    }
}

fn is_valid_san(san: &str) -> bool {
    if san.parse::<IpAddr>().is_ok() {
        return true;
    }
    let host = san.strip_prefix("*.").unwrap_or(san);
    !host.is_empty()
        && san.len() <= 253
        && host.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && label
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        })
}

/// Whether [`Pki::init`] created a CA or found one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum InitOutcome {
    /// A new root, issuing CA and server certificate were created.
    Created,
    /// The directory already held a CA, which was opened.
    AlreadyPresent,
}

/// What `ca info` shows about a CA directory.
#[derive(Debug, Clone, Serialize)]
pub struct CaInfo {
    /// The CA directory.
    pub dir: PathBuf,
    /// Top of the chain: the own root, or the last issuer supplied at import (if any).
    pub root: Option<CertificateSummary>,
    /// The issuing CA, which signs device, service and server certificates and CRLs.
    pub issuer: CertificateSummary,
    /// The current server certificate, if there is a readable one.
    pub server: Option<CertificateSummary>,
    /// Whether the issuing CA's key is available, so certificates can be issued.
    pub can_issue: bool,
    /// Whether the root key is still in the directory (false after export with removal).
    pub root_key_present: bool,
    /// Whether the CA keys on disk are passphrase-encrypted.
    pub keys_encrypted: bool,
    /// Whether the issuing CA was imported rather than created here.
    pub imported: bool,
}

/// A CA certificate as loaded from the directory or an import.
#[derive(Debug, Clone)]
struct CaCertificate {
    der: Vec<u8>,
    pem: String,
    summary: CertificateSummary,
}

impl CaCertificate {
    fn from_der(der: Vec<u8>) -> Result<Self, PkiError> {
        let summary = CertificateSummary::from_der(&der)?;
        let pem = certificate::to_pem(&der)?;
        Ok(Self { der, pem, summary })
    }

    /// All certificates of `pem`, which must be CAs.
    fn all_from_pem(pem: &str) -> Result<Vec<Self>, PkiError> {
        let blocks = certificate::pem_blocks(pem, &["CERTIFICATE"], "CA certificate")?;
        let certs = blocks
            .into_iter()
            .map(Self::from_der)
            .collect::<Result<Vec<_>, _>>()?;
        if let Some(leaf) = certs.iter().find(|c| !c.summary.is_ca) {
            return Err(PkiError::NotACa {
                subject: leaf.summary.subject.clone(),
            });
        }
        Ok(certs)
    }

    /// The certificates stored in `path`; `None` if the file does not exist.
    fn load(path: &Path) -> Result<Option<Vec<Self>>, PkiError> {
        let Some(pem) = files::read_optional(path)? else {
            return Ok(None);
        };
        Self::all_from_pem(&pem)
            .map(Some)
            .map_err(|e| corrupt(path, e))
    }

    fn parsed(&self) -> Result<X509Certificate<'_>, PkiError> {
        certificate::parse_der(&self.der)
    }
}

fn corrupt(path: &Path, reason: impl fmt::Display) -> PkiError {
    PkiError::CorruptFile {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

/// An opened CA directory: the issuing CA (with its key, unless imported
/// without one), its issuers, and the files described below.
///
/// Layout of the directory (mode 0700; keys 0600, certificates and CRL 0644):
///
/// | file | what |
/// |---|---|
/// | `root.crt` | self-signed root CA (own CA only) |
/// | `root.key` | root key; gone after [`Pki::export_root_key`] with `remove` |
/// | `ca.crt` | issuing CA: signs leaves and CRLs |
/// | `ca.key` | issuing CA key; absent for a verify-only import |
/// | `chain.crt` | issuers of an imported CA, as supplied (optional) |
/// | `IMPORTED` | marker: the CA was imported |
/// | `server.crt`, `server.key` | server certificate and key (key never encrypted) |
/// | `crl.pem` | current CRL, written by [`Pki::write_crl`] |
///
/// A CA replaced by [`Pki::import`] is kept next to it as
/// `<dir>.replaced-<UTC timestamp>`.
///
/// CA keys are encrypted PKCS#8 when [`PkiOptions::passphrase`] is set.
pub struct Pki {
    dir: PathBuf,
    opts: PkiOptions,
    issuing: CaCertificate,
    /// Own CA: the root. Imported: the supplied chain, nearest issuer first.
    issuers: Vec<CaCertificate>,
    signer: Option<Issuer<'static, KeyPair>>,
    issuing_key_id: Option<Vec<u8>>,
    imported: bool,
    keys_encrypted: bool,
}

impl fmt::Debug for Pki {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pki")
            .field("dir", &self.dir)
            .field("issuer", &self.issuing.summary.subject)
            .field("can_issue", &self.signer.is_some())
            .field("imported", &self.imported)
            .field("keys_encrypted", &self.keys_encrypted)
            .finish_non_exhaustive()
    }
}

impl Pki {
    /// Creates root CA, issuing CA and server certificate in `dir` if absent; opens what exists. Idempotent.
    ///
    /// Everything is written into a hidden sibling directory first and moved
    /// into place in one rename, so a failure leaves no half-made CA. `dir`
    /// must be absent, empty, or hold a CA already.
    pub fn init(dir: &Path, opts: &PkiOptions) -> Result<(Pki, InitOutcome), PkiError> {
        opts.validate()?;
        if dir.join(CA_CERT).exists() {
            return Ok((Self::open(dir, opts)?, InitOutcome::AlreadyPresent));
        }
        ensure_empty(dir)?;

        let now = OffsetDateTime::now_utc();
        let passphrase = opts.passphrase();
        let staging = Staging::new(dir)?;

        let root_key = keys::generate()?;
        let root_params = certificate::root_ca(&opts.ca_name, now);
        let root_cert = root_params
            .self_signed(&root_key)
            .map_err(|e| PkiError::crypto("sign the root CA certificate", e))?;
        staging.write(
            ROOT_KEY,
            keys::to_pem(&root_key, passphrase)?.as_bytes(),
            PRIVATE,
        )?;
        staging.write(ROOT_CERT, root_cert.pem().as_bytes(), PUBLIC)?;

        let ca_key = keys::generate()?;
        let ca_params = certificate::issuing_ca(&opts.ca_name, now, root_params.not_after);
        let ca_cert = ca_params
            .signed_by(&ca_key, &Issuer::from_params(&root_params, &root_key))
            .map_err(|e| PkiError::crypto("sign the issuing CA certificate", e))?;
        staging.write(
            CA_KEY,
            keys::to_pem(&ca_key, passphrase)?.as_bytes(),
            PRIVATE,
        )?;
        staging.write(CA_CERT, ca_cert.pem().as_bytes(), PUBLIC)?;

        let (server_cert, server_key) = issue_server(
            &Issuer::from_params(&ca_params, &ca_key),
            opts,
            ca_params.not_after,
        )?;
        staging.write(SERVER_KEY, server_key.as_bytes(), PRIVATE)?;
        staging.write(SERVER_CERT, server_cert.as_bytes(), PUBLIC)?;

        staging.commit()?;
        Ok((Self::open(dir, opts)?, InitOutcome::Created))
    }

    /// Opens an existing CA dir; error (clear sentence) if missing/corrupt/foreign, or if keys are encrypted and no/wrong passphrase.
    ///
    /// Reissues the server certificate if it is missing, unreadable, not from
    /// this CA, does not match [`PkiOptions::server_sans`], or expires within
    /// 30 days (only when the issuing key is available).
    pub fn open(dir: &Path, opts: &PkiOptions) -> Result<Pki, PkiError> {
        opts.validate()?;
        let pki = Self::load(dir, opts)?;
        pki.refresh_server_certificate()?;
        Ok(pki)
    }

    fn load(dir: &Path, opts: &PkiOptions) -> Result<Pki, PkiError> {
        let ca_path = dir.join(CA_CERT);
        let Some(issuing) = CaCertificate::load(&ca_path)? else {
            let reason = if dir.is_dir() {
                "ca.crt is missing"
            } else {
                "the directory does not exist"
            };
            return Err(PkiError::NotInitialized {
                dir: dir.to_path_buf(),
                reason: reason.to_owned(),
            });
        };
        let [issuing] = <[CaCertificate; 1]>::try_from(issuing)
            .map_err(|_| corrupt(&ca_path, "it must hold exactly one certificate"))?;

        let imported = dir.join(IMPORTED_MARKER).exists();
        let issuers = if imported {
            CaCertificate::load(&dir.join(CHAIN_CERT))?.unwrap_or_default()
        } else {
            let root_path = dir.join(ROOT_CERT);
            let root = CaCertificate::load(&root_path)?
                .ok_or_else(|| corrupt(&root_path, "root.crt is missing"))?;
            let [root] = <[CaCertificate; 1]>::try_from(root)
                .map_err(|_| corrupt(&root_path, "it must hold exactly one certificate"))?;
            vec![root]
        };
        check_chain(&issuing, &issuers).map_err(|reason| corrupt(&ca_path, reason))?;

        let key_path = dir.join(CA_KEY);
        let key_pem = files::read_optional(&key_path)?;
        let signer = match &key_pem {
            Some(pem) => {
                let key = keys::from_pem(pem, opts.passphrase(), &key_path.display().to_string())?;
                Some(signer_for(&issuing, key)?)
            }
            None if imported => None,
            None => return Err(corrupt(&key_path, "the issuing CA key is missing")),
        };
        let root_key_pem = files::read_optional(&dir.join(ROOT_KEY))?;
        let keys_encrypted = [&key_pem, &root_key_pem]
            .into_iter()
            .flatten()
            .any(|pem| keys::is_encrypted(pem));
        let issuing_key_id = subject_key_id(&issuing.parsed()?);

        Ok(Pki {
            dir: dir.to_path_buf(),
            opts: opts.clone(),
            issuing,
            issuers,
            signer,
            issuing_key_id,
            imported,
            keys_encrypted,
        })
    }

    /// Use an external CA (e.g. a Vault PKI intermediate): stores its certificate and optional key.
    ///
    /// `cert_pem` holds the issuing CA certificate first, then optionally its
    /// issuers. Without a key Rampart can only verify, and `sign_*` return
    /// [`PkiError::CannotIssue`]. The key may be PKCS#8 (encrypted with the
    /// passphrase or not), SEC1 or PKCS#1; it is stored encrypted iff a
    /// passphrase is set. Importing the same certificate again is harmless (and
    /// adds the key if it was missing).
    ///
    /// If `dir` holds another CA (such as the one `init` created), it is moved
    /// aside whole to `<dir>.replaced-<UTC timestamp>`, nothing deleted, and the
    /// imported CA takes its place; certificates the old CA issued no longer
    /// verify. A directory holding anything but a CA is refused.
    pub fn import(
        dir: &Path,
        opts: &PkiOptions,
        cert_pem: &str,
        key_pem: Option<&str>,
    ) -> Result<Pki, PkiError> {
        opts.validate()?;
        let mut certs = CaCertificate::all_from_pem(cert_pem)?.into_iter();
        let Some(issuing) = certs.next() else {
            return Err(PkiError::MalformedPem {
                expected: "CA certificate",
                reason: "no certificate found".to_owned(),
            });
        };
        let chain: Vec<_> = certs.collect();
        check_chain(&issuing, &chain).map_err(|reason| PkiError::InvalidCertificate {
            reason: format!("{reason}; give the issuing CA first, then each issuer in order"),
        })?;
        if issuing.summary.not_after <= OffsetDateTime::now_utc() {
            return Err(PkiError::InvalidCertificate {
                reason: format!(
                    "CA '{}' expired on {}",
                    issuing.summary.subject, issuing.summary.not_after
                ),
            });
        }

        let key = match key_pem {
            Some(pem) => {
                let key = keys::from_pem(pem, opts.passphrase(), "the supplied key")?;
                let stored = keys::to_pem(&key, opts.passphrase())?;
                check_can_issue(&issuing)?;
                let signer = signer_for(&issuing, key)?;
                probe(&issuing, &signer)?;
                Some((stored, signer))
            }
            None => None,
        };

        let replacing = dir.join(CA_CERT).exists();
        if replacing && holds_imported(dir, &issuing)? {
            if let Some((stored, _)) = &key
                && !dir.join(CA_KEY).exists()
            {
                files::write_atomic(&dir.join(CA_KEY), stored.as_bytes(), PRIVATE)?;
            }
            return Self::open(dir, opts);
        }
        if !replacing {
            ensure_empty(dir)?;
        }

        let staging = Staging::new(dir)?;
        staging.write(IMPORTED_MARKER, IMPORTED_NOTE.as_bytes(), PUBLIC)?;
        staging.write(CA_CERT, issuing.pem.as_bytes(), PUBLIC)?;
        if !chain.is_empty() {
            let pem: String = chain.iter().map(|c| c.pem.as_str()).collect();
            staging.write(CHAIN_CERT, pem.as_bytes(), PUBLIC)?;
        }
        if let Some((stored, signer)) = &key {
            staging.write(CA_KEY, stored.as_bytes(), PRIVATE)?;
            let (server_cert, server_key) = issue_server(signer, opts, issuing.summary.not_after)?;
            staging.write(SERVER_KEY, server_key.as_bytes(), PRIVATE)?;
            staging.write(SERVER_CERT, server_cert.as_bytes(), PUBLIC)?;
        }
        if replacing {
            staging.commit_replacing(&files::aside_path(dir, "replaced"))?;
        } else {
            staging.commit()?;
        }
        Self::open(dir, opts)
    }

    /// Signs a device's CSR: CN must be a valid id (and equal `expected_id` if given).
    ///
    /// See the `csr` module for what is checked; the certificate gets CN = id,
    /// EKU clientAuth only, keyUsage digitalSignature, CA:FALSE, a random
    /// 128-bit serial and `device_validity_days` from now (starting 5 minutes
    /// earlier for clock skew).
    pub fn sign_device_csr(
        &self,
        csr_pem: &str,
        expected_id: Option<&DeviceId>,
    ) -> Result<IssuedCertificate, PkiError> {
        let csr = self.verify_device_csr(csr_pem)?;
        if let Some(expected) = expected_id
            && *expected != csr.id
        {
            return Err(PkiError::CsrIdMismatch {
                expected: expected.to_string(),
                found: csr.id.to_string(),
            });
        }
        self.sign_verified_csr(&csr)
    }

    /// Checks a device's CSR without signing it, so that a caller can make
    /// its own checks on the requested id (enrollment scope, id free)
    /// before any certificate exists; see the `csr` module for the checks.
    pub fn verify_device_csr(&self, csr_pem: &str) -> Result<VerifiedCsr, PkiError> {
        // Refuse before parsing when this CA cannot sign anyway.
        self.signer()?;
        csr::verify(csr_pem)
    }

    /// Signs a CSR that [`Pki::verify_device_csr`] accepted, as
    /// [`Pki::sign_device_csr`] does.
    pub fn sign_verified_csr(&self, csr: &VerifiedCsr) -> Result<IssuedCertificate, PkiError> {
        let signer = self.signer()?;
        self.issue(
            signer,
            csr.id.clone(),
            IdentityKind::Device,
            &csr.public_key,
        )
    }

    /// Accepts a device certificate issued elsewhere by this CA (typically
    /// an imported CA whose key Rampart does not hold, such as a Vault PKI
    /// intermediate), so that it can be registered.
    ///
    /// The first certificate in `pem` must be signed by the issuing CA, be
    /// valid now, not be a CA, allow client authentication, carry a CN that
    /// is a valid device id, not be marked as a service, and hold a key of
    /// an accepted type. Later blocks (a chain) are ignored.
    pub fn adopt_device_certificate(&self, pem: &str) -> Result<IssuedCertificate, PkiError> {
        let blocks = certificate::pem_blocks(pem, &["CERTIFICATE"], "certificate")?;
        let der = blocks.first().ok_or_else(|| PkiError::MalformedPem {
            expected: "certificate",
            reason: "no certificate block".to_owned(),
        })?;
        let cert = certificate::parse_der(der)?;
        let refuse = |reason: String| Err(PkiError::InvalidCertificate { reason });
        let issuer = certificate::parse_der(&self.issuing.der)?;
        if cert.issuer() != issuer.subject() {
            return refuse(format!(
                "it was issued by '{}', not by this CA ('{}')",
                cert.issuer(),
                issuer.subject()
            ));
        }
        if cert.verify_signature(Some(issuer.public_key())).is_err() {
            return refuse("its signature does not verify with this CA's key".to_owned());
        }
        let now = OffsetDateTime::now_utc();
        let validity = cert.validity();
        if validity.not_before.to_datetime() > now || validity.not_after.to_datetime() <= now {
            return refuse(format!(
                "it is not valid now (valid from {} to {})",
                validity.not_before, validity.not_after
            ));
        }
        if cert.is_ca() {
            return refuse("it is a CA certificate, not a device certificate".to_owned());
        }
        match cert.extended_key_usage() {
            Ok(Some(eku)) if eku.value.client_auth || eku.value.any => {}
            Ok(None) => {}
            _ => {
                return refuse(
                    "its extended key usage does not allow client authentication".to_owned(),
                );
            }
        }
        let summary = CertificateSummary::from_der(der)?;
        if summary.is_service {
            return refuse("it is a service certificate; register it as a service".to_owned());
        }
        let cn = summary.cn.clone().unwrap_or_default();
        let id = DeviceId::parse(&cn).map_err(|e| PkiError::InvalidCertificate {
            reason: format!("its common name '{cn}' is not a valid device id: {e}"),
        })?;
        csr::check_key(cert.public_key()).map_err(|e| match e {
            PkiError::UnsupportedCsrKey { found } => PkiError::InvalidCertificate {
                reason: format!(
                    "its key is {found}; Rampart accepts ECDSA P-256, ECDSA P-384, Ed25519 or RSA of at least 2048 bits"
                ),
            },
            other => other,
        })?;
        IssuedCertificate::new(id, IdentityKind::Device, der, certificate::to_pem(der)?)
    }

    /// Development shortcut: generates a P-256 key here and certifies it; returns the PKCS#8 PEM key.
    ///
    /// In production the key is made on the device and only its CSR comes here.
    pub fn issue_device_with_generated_key(
        &self,
        id: &DeviceId,
    ) -> Result<(IssuedCertificate, Zeroizing<String>), PkiError> {
        self.issue_with_generated_key(id, IdentityKind::Device)
    }

    /// Issues a service identity (P-256 key generated here) marked by [`crate::SERVICE_POLICY_OID`], EKU clientAuth.
    pub fn issue_service(
        &self,
        name: &DeviceId,
    ) -> Result<(IssuedCertificate, Zeroizing<String>), PkiError> {
        self.issue_with_generated_key(name, IdentityKind::Service)
    }

    fn issue_with_generated_key(
        &self,
        id: &DeviceId,
        kind: IdentityKind,
    ) -> Result<(IssuedCertificate, Zeroizing<String>), PkiError> {
        let signer = self.signer()?;
        let key = keys::generate()?;
        let issued = self.issue(signer, id.clone(), kind, &key)?;
        Ok((issued, keys::to_pem(&key, None)?))
    }

    fn issue(
        &self,
        signer: &Issuer<'static, KeyPair>,
        id: DeviceId,
        kind: IdentityKind,
        public_key: &impl PublicKeyData,
    ) -> Result<IssuedCertificate, PkiError> {
        let params = certificate::client(
            &id,
            kind,
            self.opts.device_validity_days,
            OffsetDateTime::now_utc(),
            self.issuing.summary.not_after,
        )?;
        let cert = params
            .signed_by(public_key, signer)
            .map_err(|e| PkiError::crypto("sign the certificate", e))?;
        IssuedCertificate::new(id, kind, cert.der(), cert.pem())
    }

    /// Builds a CRL (PEM) signed by the issuing CA listing `revoked` with reason codes.
    ///
    /// `crl_number` must increase with every CRL (the caller keeps the
    /// counter); `next_update` is now + `validity`. Entries with reason
    /// `unspecified` carry no reason code, as RFC 5280 §5.3.1 recommends.
    pub fn build_crl(
        &self,
        revoked: &[RevokedSerial],
        crl_number: u64,
        validity: std::time::Duration,
    ) -> Result<String, PkiError> {
        let signer = self.signer()?;
        let params = crl::params(
            revoked,
            crl_number,
            validity,
            OffsetDateTime::now_utc(),
            self.issuing_key_id.clone(),
        )?;
        params
            .signed_by(signer)
            .and_then(|crl| crl.pem())
            .map_err(|e| PkiError::crypto("sign the CRL", e))
    }

    /// Writes a CRL PEM atomically to [`Pki::crl_path`], after checking the issuing CA signed it.
    pub fn write_crl(&self, pem: &str) -> Result<(), PkiError> {
        let blocks = certificate::pem_blocks(pem, &["X509 CRL"], "certificate revocation list")?;
        let [der] = blocks.as_slice() else {
            return Err(PkiError::InvalidCrl {
                reason: format!("found {} CRLs; give exactly one", blocks.len()),
            });
        };
        let crl = match CertificateRevocationList::from_der(der) {
            Ok(([], crl)) => crl,
            Ok(_) => {
                return Err(PkiError::InvalidCrl {
                    reason: "trailing bytes after the CRL".to_owned(),
                });
            }
            Err(e) => {
                return Err(PkiError::InvalidCrl {
                    reason: format!("it does not decode ({e})"),
                });
            }
        };
        let issuing = self.issuing.parsed()?;
        crl.verify_signature(issuing.public_key())
            .map_err(|_| PkiError::InvalidCrl {
                reason: "it is not signed by this CA's issuing certificate".to_owned(),
            })?;
        files::write_atomic(&self.crl_path(), pem.as_bytes(), PUBLIC)
    }

    /// Where the current CRL lives (`crl.pem`).
    pub fn crl_path(&self) -> PathBuf {
        self.dir.join(CRL)
    }

    /// The issuing CA followed by its issuers: the trust bundle devices get (what `ca export` prints).
    pub fn chain_pem(&self) -> String {
        std::iter::once(&self.issuing)
            .chain(&self.issuers)
            .map(|c| c.pem.as_str())
            .collect()
    }

    /// The issuing CA certificate alone (PEM): what follows a leaf in the
    /// chain a device presents.
    pub fn issuing_ca_pem(&self) -> &str {
        &self.issuing.pem
    }

    /// Trust anchors the broker uses to verify client certificates: the issuing CA, then its issuers.
    ///
    /// The issuing CA is included, not only the root, because devices usually
    /// present just their own certificate, and a verifier can only build the
    /// path if the intermediate is among its anchors. The root (or the chain
    /// supplied at import) follows so OpenSSL-based brokers, which want a
    /// self-signed anchor, accept the path too.
    pub fn client_ca_pem(&self) -> String {
        self.chain_pem()
    }

    /// Where the server certificate lives (`server.crt`).
    pub fn server_cert_path(&self) -> PathBuf {
        self.dir.join(SERVER_CERT)
    }

    /// Where the server key lives (`server.key`, unencrypted PKCS#8, mode 0600).
    pub fn server_key_path(&self) -> PathBuf {
        self.dir.join(SERVER_KEY)
    }

    /// Summary of the CA for display: certificates, key presence, encryption, origin.
    pub fn info(&self) -> CaInfo {
        let server = files::read_optional(&self.server_cert_path())
            .ok()
            .flatten()
            .and_then(|pem| certificate::parse_certificate_pem(&pem).ok());
        CaInfo {
            dir: self.dir.clone(),
            root: self.issuers.last().map(|c| c.summary.clone()),
            issuer: self.issuing.summary.clone(),
            server,
            can_issue: self.signer.is_some(),
            root_key_present: self.dir.join(ROOT_KEY).exists(),
            keys_encrypted: self.keys_encrypted,
            imported: self.imported,
        }
    }

    /// Writes the root key to `out` (0600, atomically; encrypted iff passphrase) and, if `remove`, deletes it here.
    ///
    /// Removing it is for offline keeping: the issuing CA keeps issuing.
    /// `out` must not exist yet; its directory must.
    pub fn export_root_key(&self, out: &Path, remove: bool) -> Result<(), PkiError> {
        let key_path = self.dir.join(ROOT_KEY);
        let (Some(root), Some(pem)) = (self.issuers.first(), files::read_optional(&key_path)?)
        else {
            return Err(PkiError::RootKeyAbsent {
                dir: self.dir.clone(),
            });
        };
        let key = keys::from_pem(
            &pem,
            self.opts.passphrase(),
            &key_path.display().to_string(),
        )?;
        if !keys::matches_public_key(&key, &root.parsed()?.public_key().subject_public_key.data) {
            return Err(corrupt(&key_path, "it is not the key of root.crt"));
        }
        if out.exists() {
            return Err(PkiError::io(
                "export the root key to",
                out,
                std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    "the file exists; choose a new file name",
                ),
            ));
        }
        files::write_atomic(
            out,
            keys::to_pem(&key, self.opts.passphrase())?.as_bytes(),
            PRIVATE,
        )?;
        if remove {
            files::remove_durably(&key_path)?;
        }
        Ok(())
    }

    fn signer(&self) -> Result<&Issuer<'static, KeyPair>, PkiError> {
        let signer = self.signer.as_ref().ok_or_else(|| PkiError::CannotIssue {
            reason: format!(
                "the imported CA '{}' has no private key here, so Rampart can only verify; \
                 import it again with its key, or sign elsewhere",
                self.issuing.summary.subject
            ),
        })?;
        let expiry = self.issuing.summary.not_after;
        if expiry <= OffsetDateTime::now_utc() {
            return Err(PkiError::CannotIssue {
                reason: format!(
                    "the issuing CA '{}' expired on {expiry}; create or import a new CA",
                    self.issuing.summary.subject
                ),
            });
        }
        Ok(signer)
    }

    /// Reissues the server certificate when needed; true if it did.
    fn refresh_server_certificate(&self) -> Result<bool, PkiError> {
        let Some(signer) = &self.signer else {
            return Ok(false);
        };
        if self.server_certificate_is_current()? {
            return Ok(false);
        }
        let (cert, key) = issue_server(signer, &self.opts, self.issuing.summary.not_after)?;
        // Key first: a crash in between leaves a mismatched pair, which the
        // next open detects and replaces.
        files::write_atomic(&self.server_key_path(), key.as_bytes(), PRIVATE)?;
        files::write_atomic(&self.server_cert_path(), cert.as_bytes(), PUBLIC)?;
        Ok(true)
    }

    /// Whether server.crt/server.key are a matching pair from this issuing CA,
    /// for the configured names, valid beyond the renewal window.
    ///
    /// Unreadable files count as "not current": they are derived material
    /// that reissuing repairs.
    fn server_certificate_is_current(&self) -> Result<bool, PkiError> {
        let (Some(cert_pem), Some(key_pem)) = (
            files::read_optional(&self.server_cert_path())?,
            files::read_optional(&self.server_key_path())?,
        ) else {
            return Ok(false);
        };
        let Ok(blocks) = certificate::pem_blocks(&cert_pem, &["CERTIFICATE"], "certificate") else {
            return Ok(false);
        };
        let Some(Ok(cert)) = blocks.first().map(|der| certificate::parse_der(der)) else {
            return Ok(false);
        };
        let Ok(key) = keys::from_pem(&key_pem, None, "server.key") else {
            return Ok(false);
        };
        let issuing = self.issuing.parsed()?;
        let renew_after = OffsetDateTime::now_utc() + SERVER_RENEWAL_WINDOW;
        Ok(
            keys::matches_public_key(&key, &cert.public_key().subject_public_key.data)
                && cert.issuer().as_raw() == issuing.subject().as_raw()
                && cert.verify_signature(Some(issuing.public_key())).is_ok()
                && cert.validity().not_after.to_datetime() > renew_after
                && san_set(&cert) == normalized_sans(&self.opts.server_sans),
        )
    }
}

/// Whether `dir` holds `issuing` as an imported CA already (same certificate bytes).
fn holds_imported(dir: &Path, issuing: &CaCertificate) -> Result<bool, PkiError> {
    if !dir.join(IMPORTED_MARKER).exists() {
        return Ok(false);
    }
    let stored = CaCertificate::load(&dir.join(CA_CERT))?.unwrap_or_default();
    Ok(matches!(stored.as_slice(), [only] if only.der == issuing.der))
}

/// `dir` must be absent or empty before a CA is created in it.
fn ensure_empty(dir: &Path) -> Result<(), PkiError> {
    if files::is_absent_or_empty(dir)? {
        Ok(())
    } else {
        Err(PkiError::ForeignDirectory {
            dir: dir.to_path_buf(),
            reason: "it is not empty but holds no ca.crt".to_owned(),
        })
    }
}

fn issue_server(
    signer: &Issuer<'_, impl SigningKey>,
    opts: &PkiOptions,
    issuer_not_after: OffsetDateTime,
) -> Result<(String, Zeroizing<String>), PkiError> {
    let key = keys::generate()?;
    let params = certificate::server(
        &opts.server_sans,
        opts.server_validity_days,
        OffsetDateTime::now_utc(),
        issuer_not_after,
    )?;
    let cert = params
        .signed_by(&key, signer)
        .map_err(|e| PkiError::crypto("sign the server certificate", e))?;
    Ok((cert.pem(), keys::to_pem(&key, None)?))
}

/// Each certificate must be issued (name and signature) by the next one.
fn check_chain(issuing: &CaCertificate, issuers: &[CaCertificate]) -> Result<(), String> {
    let all: Vec<&CaCertificate> = std::iter::once(issuing).chain(issuers).collect();
    for pair in all.windows(2) {
        let [child, parent] = pair else { continue };
        let (Ok(child_cert), Ok(parent_cert)) = (child.parsed(), parent.parsed()) else {
            return Err("a certificate does not decode".to_owned());
        };
        let linked = child_cert.issuer().as_raw() == parent_cert.subject().as_raw()
            && child_cert
                .verify_signature(Some(parent_cert.public_key()))
                .is_ok();
        if !linked {
            return Err(format!(
                "'{}' is not signed by '{}'",
                child.summary.subject, parent.summary.subject
            ));
        }
    }
    Ok(())
}

/// Builds the signer for `issuing`, checking that `key` is its key.
fn signer_for(issuing: &CaCertificate, key: KeyPair) -> Result<Issuer<'static, KeyPair>, PkiError> {
    let cert = issuing.parsed()?;
    if !keys::matches_public_key(&key, &cert.public_key().subject_public_key.data) {
        return Err(PkiError::KeyMismatch {
            subject: issuing.summary.subject.clone(),
        });
    }
    Issuer::from_ca_cert_pem(&issuing.pem, key).map_err(|e| PkiError::UnusableCa {
        subject: issuing.summary.subject.clone(),
        reason: format!("its subject name cannot be reproduced in issued certificates ({e})"),
    })
}

/// An imported CA's key usage must allow signing certificates and CRLs.
fn check_can_issue(issuing: &CaCertificate) -> Result<(), PkiError> {
    let unusable = |reason: &str| PkiError::UnusableCa {
        subject: issuing.summary.subject.clone(),
        reason: reason.to_owned(),
    };
    match issuing.parsed()?.key_usage() {
        Ok(None) => Ok(()),
        Ok(Some(usage)) if !usage.value.key_cert_sign() => Err(unusable(
            "its keyUsage lacks keyCertSign, so it may not sign certificates",
        )),
        Ok(Some(usage)) if !usage.value.crl_sign() => Err(unusable(
            "its keyUsage lacks cRLSign, which Rampart needs to publish revocations",
        )),
        Ok(Some(_)) => Ok(()),
        Err(e) => Err(unusable(&format!(
            "its keyUsage extension is malformed ({e})"
        ))),
    }
}

/// Signs a throwaway certificate and checks it chains to `issuing` byte for
/// byte, so a CA whose name rcgen would re-encode differently (e.g. repeated
/// attribute types) is refused at import instead of issuing broken certificates.
fn probe(issuing: &CaCertificate, signer: &Issuer<'static, KeyPair>) -> Result<(), PkiError> {
    let fail = |detail: &str| PkiError::UnusableCa {
        subject: issuing.summary.subject.clone(),
        reason: format!("certificates signed with it would not chain to it ({detail})"),
    };
    let id = DeviceId::parse("rampart-import-check").map_err(|e| fail(&e.to_string()))?;
    let key = keys::generate()?;
    let now = OffsetDateTime::now_utc();
    let params = certificate::client(&id, IdentityKind::Device, 1, now, issuing.summary.not_after)?;
    let cert = params
        .signed_by(&key, signer)
        .map_err(|e| fail(&e.to_string()))?;
    let probe = certificate::parse_der(cert.der())?;
    let ca = issuing.parsed()?;
    if probe.issuer().as_raw() != ca.subject().as_raw() {
        return Err(fail("the issuer name differs from the CA's subject name"));
    }
    probe
        .verify_signature(Some(ca.public_key()))
        .map_err(|_| fail("the signature does not verify with the CA's public key"))
}

fn subject_key_id(cert: &X509Certificate<'_>) -> Option<Vec<u8>> {
    cert.iter_extensions()
        .find_map(|ext| match ext.parsed_extension() {
            ParsedExtension::SubjectKeyIdentifier(id) => Some(id.0.to_vec()),
            _ => None,
        })
}

/// DNS names (lowercased) and IP addresses of a certificate's SAN extension.
fn san_set(cert: &X509Certificate<'_>) -> BTreeSet<String> {
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return BTreeSet::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::DNSName(dns) => Some(dns.to_ascii_lowercase()),
            GeneralName::IPAddress(bytes) => ip_from_bytes(bytes).map(|ip| ip.to_string()),
            _ => None,
        })
        .collect()
}

fn ip_from_bytes(bytes: &[u8]) -> Option<IpAddr> {
    match bytes.len() {
        4 => <[u8; 4]>::try_from(bytes).ok().map(IpAddr::from),
        16 => <[u8; 16]>::try_from(bytes).ok().map(IpAddr::from),
        _ => None,
    }
}

fn normalized_sans(sans: &[String]) -> BTreeSet<String> {
    sans.iter()
        .map(|san| match san.parse::<IpAddr>() {
            Ok(ip) => ip.to_string(),
            Err(_) => san.to_ascii_lowercase(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_options_are_valid() {
        PkiOptions::default().validate().expect("defaults validate");
    }

    #[test]
    fn options_are_checked() {
        let bad = [
            PkiOptions {
                ca_name: String::new(),
                ..PkiOptions::default()
            },
            PkiOptions {
                device_validity_days: 0,
                ..PkiOptions::default()
            },
            PkiOptions {
                server_sans: vec![],
                ..PkiOptions::default()
            },
            PkiOptions {
                server_sans: vec!["bad name".to_owned()],
                ..PkiOptions::default()
            },
            PkiOptions {
                passphrase: Some(Zeroizing::new(String::new())),
                ..PkiOptions::default()
            },
        ];
        for opts in bad {
            assert!(
                matches!(opts.validate(), Err(PkiError::InvalidOptions { .. })),
                "{opts:?}"
            );
        }
    }

    #[test]
    fn passphrase_is_not_debug_printed() {
        let opts = PkiOptions {
            passphrase: Some(Zeroizing::new("hunter2".to_owned())),
            ..PkiOptions::default()
        };
        assert!(!format!("{opts:?}").contains("hunter2"));
    }

    #[test]
    fn san_names_validate() {
        for ok in [
            "localhost",
            "mqtt.example.com",
            "*.example.com",
            "10.0.0.1",
            "::1",
            "my_host",
        ] {
            assert!(is_valid_san(ok), "{ok}");
        }
        for bad in ["", "a b", "exa..mple", "*.", "ünï.com", "a/b"] {
            assert!(!is_valid_san(bad), "{bad}");
        }
    }

    #[test]
    fn sans_normalize_case_and_ip_spelling() {
        let sans = normalized_sans(&["LocalHost".to_owned(), "0:0::1".to_owned()]);
        assert_eq!(
            sans,
            BTreeSet::from(["localhost".to_owned(), "::1".to_owned()])
        );
    }
}
