//! The one error type of the PKI, worded for the person who has to act on it.

use std::path::PathBuf;

use rampart_proto::IdError;

use crate::crl::RevocationReason;

/// What went wrong in the PKI, naming the problem and what to do about it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PkiError {
    /// A file or directory could not be read or written.
    #[error("could not {action} {}: {source}", path.display())]
    Io {
        /// What was being attempted ("read", "create", ...).
        action: &'static str,
        /// The file or directory concerned.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },

    /// The directory holds no CA yet.
    #[error(
        "no certificate authority in {}: {reason}; initialise one or import an external CA first",
        dir.display()
    )]
    NotInitialized {
        /// The CA directory.
        dir: PathBuf,
        /// What is missing.
        reason: String,
    },

    /// The directory holds files that are not a Rampart CA.
    #[error(
        "{} is not a Rampart CA directory: {reason}; use an empty or new directory",
        dir.display()
    )]
    ForeignDirectory {
        /// The directory.
        dir: PathBuf,
        /// What was found there.
        reason: String,
    },

    /// A file of the CA directory is damaged or inconsistent.
    #[error("{} is damaged: {reason}; restore the CA directory from a backup", path.display())]
    CorruptFile {
        /// The damaged file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },

    /// A key is encrypted and no passphrase was given.
    #[error("{key} is encrypted; supply the CA passphrase")]
    PassphraseRequired {
        /// Which key (a path or "the supplied key").
        key: String,
    },

    /// The passphrase does not decrypt a key.
    #[error("the CA passphrase does not decrypt {key}; check the passphrase")]
    WrongPassphrase {
        /// Which key (a path or "the supplied key").
        key: String,
    },

    /// A private key is in a format or of a type that cannot be used.
    #[error("{key} cannot be used: {reason}")]
    UnusableKey {
        /// Which key (a path or "the supplied key").
        key: String,
        /// Why, and what to do.
        reason: String,
    },

    /// Signing is impossible with this CA (verify-only import).
    #[error("this CA cannot issue certificates: {reason}")]
    CannotIssue {
        /// Why, and what to do.
        reason: String,
    },

    /// Input that should be PEM is not, or holds the wrong kind of block.
    #[error("not a PEM-encoded {expected}: {reason}")]
    MalformedPem {
        /// What was expected ("certificate signing request", ...).
        expected: &'static str,
        /// What was found instead.
        reason: String,
    },

    /// A CSR could not be decoded.
    #[error("CSR is malformed: {reason}; create a new CSR")]
    MalformedCsr {
        /// The decoding problem.
        reason: String,
    },

    /// The CSR was not signed by the key it contains.
    #[error(
        "CSR signature does not verify: the request was altered or not signed by its own key; \
         create a new CSR on the device"
    )]
    CsrSignatureInvalid,

    /// The CSR subject holds no (or more than one) common name.
    #[error(
        "CSR subject must hold exactly one common name (CN), found {found}; set CN to the device id"
    )]
    CsrCommonNameCount {
        /// How many CNs the subject holds.
        found: usize,
    },

    /// The CSR common name is not a valid identity name.
    #[error("CSR common name '{cn}' is not a valid device id: {source}")]
    CsrInvalidCommonName {
        /// The common name as found (possibly lossy if not UTF-8).
        cn: String,
        /// Why the id is invalid.
        #[source]
        source: IdError,
    },

    /// The CSR names another device than the one expected.
    #[error("CSR common name '{found}' does not match the expected device id '{expected}'")]
    CsrIdMismatch {
        /// The id the caller expected.
        expected: String,
        /// The id in the CSR.
        found: String,
    },

    /// The CSR key is of a type or size Rampart refuses.
    #[error(
        "CSR key is {found}; use ECDSA P-256, ECDSA P-384, Ed25519 or RSA of at least 2048 bits"
    )]
    UnsupportedCsrKey {
        /// Description of the key found ("RSA 1024 bits", "ECDSA secp521r1", ...).
        found: String,
    },

    /// A certificate could not be decoded or is not usable as given.
    #[error("certificate is not usable: {reason}")]
    InvalidCertificate {
        /// What is wrong.
        reason: String,
    },

    /// A certificate given as a CA is not one.
    #[error(
        "certificate '{subject}' is not a CA (basicConstraints CA:TRUE is missing); \
         give the issuing CA certificate, not a leaf"
    )]
    NotACa {
        /// The certificate's subject.
        subject: String,
    },

    /// A CA certificate lacks something Rampart needs to issue with it.
    #[error("CA '{subject}' cannot be used to issue: {reason}")]
    UnusableCa {
        /// The CA's subject.
        subject: String,
        /// Why, and what to do.
        reason: String,
    },

    /// The private key does not belong to the certificate.
    #[error(
        "the private key does not belong to certificate '{subject}'; supply the key it was created with"
    )]
    KeyMismatch {
        /// The certificate's subject.
        subject: String,
    },

    /// A serial number given for revocation is not valid.
    #[error("serial number '{serial}' is not valid: {reason}")]
    InvalidSerial {
        /// The serial as given.
        serial: String,
        /// Why.
        reason: &'static str,
    },

    /// A revocation reason name is unknown.
    #[error(
        "unknown revocation reason '{given}'; use one of: {}",
        RevocationReason::ALL.map(|r| r.as_str()).join(", ")
    )]
    UnknownRevocationReason {
        /// The name as given.
        given: String,
    },

    /// A CRL could not be built or written as asked.
    #[error("invalid CRL: {reason}")]
    InvalidCrl {
        /// Why.
        reason: String,
    },

    /// The options are not usable.
    #[error("invalid PKI options: {reason}")]
    InvalidOptions {
        /// Which option and why.
        reason: String,
    },

    /// The root CA key is not in the CA directory.
    #[error(
        "the root CA key is not in {}: it was exported and removed, or this CA was imported",
        dir.display()
    )]
    RootKeyAbsent {
        /// The CA directory.
        dir: PathBuf,
    },

    /// A cryptographic operation failed unexpectedly.
    #[error("could not {action}: {reason}")]
    Crypto {
        /// What was being attempted.
        action: &'static str,
        /// The library's explanation.
        reason: String,
    },
}

impl PkiError {
    /// An [`PkiError::Io`] for `path`.
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Self {
        Self::Io {
            action,
            path: path.into(),
            source,
        }
    }

    /// A [`PkiError::Crypto`] from any displayable error.
    pub(crate) fn crypto(action: &'static str, err: impl std::fmt::Display) -> Self {
        Self::Crypto {
            action,
            reason: err.to_string(),
        }
    }
}
