//! Certificates: the profiles Rampart issues, serial numbers, fingerprints
//! and a summary of any certificate for display and checks.

use pkcs8::ObjectIdentifier;
use pkcs8::der::Encode;
use rampart_proto::DeviceId;
use rand::Rng;
use rcgen::{
    BasicConstraints, CertificateParams, CustomExtension, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyUsagePurpose, SerialNumber,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use time::{Duration, OffsetDateTime};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::ParsedExtension;

use crate::PkiError;

/// Certificate policy OID that marks a certificate as a *service* identity
/// (a back-end consumer or tool), not a device: `1.3.6.1.4.1.59021.1.1`.
///
/// It sits under a private-enterprise-style arc (`1.3.6.1.4.1.<PEN>`) reserved
/// for Rampart: `.1` certificate policies, `.1.1` service identity. Rampart has
/// not registered the PEN 59021 with IANA yet; before a stable release either
/// register one (free) or keep this value and confirm it is unassigned. The OID
/// only has meaning to Rampart, which checks it on certificates from its own CA.
pub const SERVICE_POLICY_OID: &[u64] = &[1, 3, 6, 1, 4, 1, 59021, 1, 1];

/// [`SERVICE_POLICY_OID`] in the encoder's type (a unit test keeps them equal).
const SERVICE_POLICY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.59021.1.1");

/// id-ce-certificatePolicies (RFC 5280 §4.2.1.4).
const CERTIFICATE_POLICIES: &[u64] = &[2, 5, 29, 32];

/// How far `not_before` is set in the past, so a device whose clock is a
/// little behind accepts a certificate issued a moment ago.
pub(crate) const CLOCK_SKEW: Duration = Duration::minutes(5);

/// Root CA lifetime: about 20 years.
const ROOT_CA_DAYS: i64 = 7305;
/// Issuing CA lifetime: about 10 years.
const ISSUING_CA_DAYS: i64 = 3653;

/// SHA-256 of a certificate's DER encoding, as lowercase hex without colons.
pub fn fingerprint_sha256(der: &[u8]) -> String {
    hex::encode(Sha256::digest(der))
}

/// What a client certificate identifies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IdentityKind {
    /// A device: may publish and subscribe only under `devices/{its id}/`.
    Device,
    /// A service (back-end consumer, tool), marked by [`SERVICE_POLICY_OID`].
    Service,
}

impl IdentityKind {
    /// The lowercase name, as serialized.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Device => "device",
            Self::Service => "service",
        }
    }
}

impl std::fmt::Display for IdentityKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A certificate this CA has just issued, with what the registry records about it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IssuedCertificate {
    /// The identity named by the certificate's CN.
    pub id: DeviceId,
    /// Device or service.
    pub kind: IdentityKind,
    /// The certificate, PEM-encoded.
    pub pem: String,
    /// The certificate, DER-encoded (not serialized: `pem` carries the same bytes).
    #[serde(skip)]
    pub der: Vec<u8>,
    /// Serial number: lowercase hex of 16 bytes.
    pub serial: String,
    /// SHA-256 of the DER, lowercase hex without colons.
    pub fingerprint: String,
    /// Start of validity (UTC).
    #[serde(with = "time::serde::rfc3339")]
    pub not_before: OffsetDateTime,
    /// End of validity (UTC).
    #[serde(with = "time::serde::rfc3339")]
    pub not_after: OffsetDateTime,
}

impl IssuedCertificate {
    /// Describes a certificate just signed for `id`.
    pub(crate) fn new(
        id: DeviceId,
        kind: IdentityKind,
        der: &[u8],
        pem: String,
    ) -> Result<Self, PkiError> {
        let summary = CertificateSummary::from_der(der)?;
        Ok(Self {
            id,
            kind,
            pem,
            der: der.to_vec(),
            serial: summary.serial,
            fingerprint: summary.fingerprint,
            not_before: summary.not_before,
            not_after: summary.not_after,
        })
    }

    /// Reads back a certificate this CA issued (kept as PEM): the identity
    /// is its CN, the kind its policy.
    pub fn from_pem(pem: &str) -> Result<Self, PkiError> {
        let blocks = pem_blocks(pem, &["CERTIFICATE"], "certificate")?;
        let der = blocks.first().ok_or_else(|| PkiError::MalformedPem {
            expected: "certificate",
            reason: "no certificate block".to_owned(),
        })?;
        let summary = CertificateSummary::from_der(der)?;
        let cn = summary
            .cn
            .as_deref()
            .ok_or_else(|| PkiError::InvalidCertificate {
                reason: "it has no common name".to_owned(),
            })?;
        let id = DeviceId::parse(cn).map_err(|e| PkiError::InvalidCertificate {
            reason: format!("its common name '{cn}' is not an identity ({e})"),
        })?;
        let kind = if summary.is_service {
            IdentityKind::Service
        } else {
            IdentityKind::Device
        };
        Ok(Self {
            id,
            kind,
            pem: to_pem(der)?,
            der: der.clone(),
            serial: summary.serial,
            fingerprint: summary.fingerprint,
            not_before: summary.not_before,
            not_after: summary.not_after,
        })
    }
}

/// The facts about a certificate that Rampart shows and checks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CertificateSummary {
    /// Subject distinguished name (RFC 4514 style, e.g. `O=Rampart, CN=Rampart Root CA`).
    pub subject: String,
    /// Issuer distinguished name.
    pub issuer: String,
    /// The subject's common name, if it has one.
    pub cn: Option<String>,
    /// Serial number as lowercase hex of its DER content bytes.
    pub serial: String,
    /// SHA-256 of the DER, lowercase hex without colons.
    pub fingerprint: String,
    /// Start of validity (UTC).
    #[serde(with = "time::serde::rfc3339")]
    pub not_before: OffsetDateTime,
    /// End of validity (UTC).
    #[serde(with = "time::serde::rfc3339")]
    pub not_after: OffsetDateTime,
    /// Whether basicConstraints says CA:TRUE.
    pub is_ca: bool,
    /// Whether the certificate carries [`SERVICE_POLICY_OID`].
    pub is_service: bool,
}

impl CertificateSummary {
    /// Summarizes a DER-encoded certificate.
    pub(crate) fn from_der(der: &[u8]) -> Result<Self, PkiError> {
        let cert = parse_der(der)?;
        Ok(Self::from_parsed(&cert, der))
    }

    fn from_parsed(cert: &X509Certificate<'_>, der: &[u8]) -> Self {
        let cn = cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .map(str::to_owned);
        let is_ca = matches!(cert.basic_constraints(), Ok(Some(bc)) if bc.value.ca);
        Self {
            subject: cert.subject().to_string(),
            issuer: cert.issuer().to_string(),
            cn,
            serial: hex::encode(cert.raw_serial()),
            fingerprint: fingerprint_sha256(der),
            not_before: cert.validity().not_before.to_datetime(),
            not_after: cert.validity().not_after.to_datetime(),
            is_ca,
            is_service: has_service_policy(cert),
        }
    }
}

/// Summarizes the first certificate of a PEM text.
pub fn parse_certificate_pem(pem: &str) -> Result<CertificateSummary, PkiError> {
    let blocks = pem_blocks(pem, &["CERTIFICATE"], "certificate")?;
    let der = blocks.first().ok_or_else(|| PkiError::MalformedPem {
        expected: "certificate",
        reason: "no certificate block".to_owned(),
    })?;
    CertificateSummary::from_der(der)
}

/// Summarizes one DER-encoded certificate (a TLS peer's leaf, say).
pub fn parse_certificate_der(der: &[u8]) -> Result<CertificateSummary, PkiError> {
    CertificateSummary::from_der(der)
}

/// Parses one DER certificate, refusing trailing bytes.
pub(crate) fn parse_der(der: &[u8]) -> Result<X509Certificate<'_>, PkiError> {
    match x509_parser::parse_x509_certificate(der) {
        Ok(([], cert)) => Ok(cert),
        Ok(_) => Err(PkiError::InvalidCertificate {
            reason: "trailing bytes after the certificate".to_owned(),
        }),
        Err(e) => Err(PkiError::InvalidCertificate {
            reason: format!("it does not decode as X.509 ({e})"),
        }),
    }
}

/// The DER contents of every PEM block whose label is in `labels`, in order.
///
/// Blocks with other labels are skipped; no matching block, or a matching
/// block that is not valid base64, is an error naming `expected`.
pub(crate) fn pem_blocks(
    pem: &str,
    labels: &[&str],
    expected: &'static str,
) -> Result<Vec<Vec<u8>>, PkiError> {
    let mut found = Vec::new();
    for block in x509_parser::pem::Pem::iter_from_buffer(pem.as_bytes()) {
        let block = block.map_err(|e| PkiError::MalformedPem {
            expected,
            reason: format!("broken PEM block ({e})"),
        })?;
        if labels.contains(&block.label.as_str()) {
            found.push(block.contents);
        }
    }
    if found.is_empty() {
        return Err(PkiError::MalformedPem {
            expected,
            reason: format!(
                "no '-----BEGIN {}-----' block found",
                labels.first().unwrap_or(&"")
            ),
        });
    }
    Ok(found)
}

/// PEM text of a DER certificate.
pub(crate) fn to_pem(der: &[u8]) -> Result<String, PkiError> {
    pkcs8::der::pem::encode_string("CERTIFICATE", pkcs8::LineEnding::LF, der)
        .map_err(|e| PkiError::crypto("encode a certificate as PEM", e))
}

fn has_service_policy(cert: &X509Certificate<'_>) -> bool {
    cert.iter_extensions()
        .any(|ext| match ext.parsed_extension() {
            ParsedExtension::CertificatePolicies(policies) => policies.iter().any(|policy| {
                policy
                    .policy_id
                    .iter()
                    .is_some_and(|arcs| arcs.eq(SERVICE_POLICY_OID.iter().copied()))
            }),
            _ => false,
        })
}

/// A fresh serial: 16 random bytes, top bit clear so the INTEGER is positive
/// (RFC 5280 §4.1.2.2), first byte non-zero so DER keeps all 16 bytes and the
/// hex form is always 32 digits.
pub(crate) fn random_serial() -> SerialNumber {
    let mut rng = rand::rng();
    loop {
        let mut bytes: [u8; 16] = rng.random();
        bytes[0] &= 0x7f;
        if bytes[0] != 0 {
            return SerialNumber::from_slice(&bytes);
        }
    }
}

/// Validity from `now - CLOCK_SKEW` to `now + days`, never past `cap` (the issuer's end).
fn validity(
    params: &mut CertificateParams,
    now: OffsetDateTime,
    days: i64,
    cap: Option<OffsetDateTime>,
) {
    params.not_before = now - CLOCK_SKEW;
    let end = now + Duration::days(days);
    params.not_after = cap.map_or(end, |cap| end.min(cap));
}

fn named(cn: &str, organization: Option<&str>) -> CertificateParams {
    let mut dn = DistinguishedName::new();
    if let Some(org) = organization {
        dn.push(DnType::OrganizationName, org);
    }
    dn.push(DnType::CommonName, cn);
    let mut params = CertificateParams::default();
    params.distinguished_name = dn;
    params.serial_number = Some(random_serial());
    params
}

/// Self-signed root: CA with path length 1 (one issuing CA below it).
pub(crate) fn root_ca(ca_name: &str, now: OffsetDateTime) -> CertificateParams {
    let mut params = named(&format!("{ca_name} Root CA"), Some(ca_name));
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(1));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    validity(&mut params, now, ROOT_CA_DAYS, None);
    params
}

/// Issuing CA below the root: signs leaves and CRLs, path length 0.
pub(crate) fn issuing_ca(
    ca_name: &str,
    now: OffsetDateTime,
    root_not_after: OffsetDateTime,
) -> CertificateParams {
    let mut params = named(&format!("{ca_name} Issuing CA"), Some(ca_name));
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.use_authority_key_identifier_extension = true;
    validity(&mut params, now, ISSUING_CA_DAYS, Some(root_not_after));
    params
}

/// TLS server certificate: CN = first SAN, EKU serverAuth.
pub(crate) fn server(
    sans: &[String],
    days: u32,
    now: OffsetDateTime,
    issuer_not_after: OffsetDateTime,
) -> Result<CertificateParams, PkiError> {
    let first = sans.first().ok_or_else(|| PkiError::InvalidOptions {
        reason: "server_sans is empty; give at least one DNS name or IP address".to_owned(),
    })?;
    // `CertificateParams::new` turns IP literals into IP SANs, the rest into DNS SANs.
    let with_sans =
        CertificateParams::new(sans.to_vec()).map_err(|e| PkiError::InvalidOptions {
            reason: format!("server_sans cannot be used ({e})"),
        })?;
    let mut params = named(first, None);
    params.subject_alt_names = with_sans.subject_alt_names;
    leaf(&mut params, ExtendedKeyUsagePurpose::ServerAuth);
    validity(&mut params, now, i64::from(days), Some(issuer_not_after));
    Ok(params)
}

/// TLS client certificate for a device or service: CN = id, EKU clientAuth only.
pub(crate) fn client(
    id: &DeviceId,
    kind: IdentityKind,
    days: u32,
    now: OffsetDateTime,
    issuer_not_after: OffsetDateTime,
) -> Result<CertificateParams, PkiError> {
    let mut params = named(id.as_str(), None);
    leaf(&mut params, ExtendedKeyUsagePurpose::ClientAuth);
    if kind == IdentityKind::Service {
        params.custom_extensions.push(service_policy_extension()?);
    }
    validity(&mut params, now, i64::from(days), Some(issuer_not_after));
    Ok(params)
}

fn leaf(params: &mut CertificateParams, purpose: ExtendedKeyUsagePurpose) {
    // ECDHE suites only need signatures from a TLS key (TLS 1.3 has nothing else).
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![purpose];
    // Writes basicConstraints CA:FALSE and a subject key identifier.
    params.is_ca = IsCa::ExplicitNoCa;
    params.use_authority_key_identifier_extension = true;
}

/// certificatePolicies ::= SEQUENCE OF PolicyInformation, each a SEQUENCE { policyIdentifier }.
fn service_policy_extension() -> Result<CustomExtension, PkiError> {
    let content = vec![vec![SERVICE_POLICY]]
        .to_der()
        .map_err(|e| PkiError::crypto("encode the service policy extension", e))?;
    Ok(CustomExtension::from_oid_content(
        CERTIFICATE_POLICIES,
        content,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_policy_constants_agree() {
        let arcs: Vec<u64> = SERVICE_POLICY.arcs().map(u64::from).collect();
        assert_eq!(arcs, SERVICE_POLICY_OID);
    }

    #[test]
    fn serials_are_16_positive_bytes() {
        for _ in 0..1000 {
            let serial = random_serial().to_bytes();
            assert_eq!(serial.len(), 16);
            assert!(serial[0] != 0 && serial[0] < 0x80, "{serial:?}");
        }
    }

    #[test]
    fn fingerprint_is_lowercase_sha256_hex() {
        assert_eq!(
            fingerprint_sha256(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn identity_kind_serializes_lowercase() {
        assert_eq!(IdentityKind::Service.to_string(), "service");
        assert_eq!(IdentityKind::Device.as_str(), "device");
    }

    #[test]
    fn leaf_validity_is_capped_by_the_issuer() {
        let now = OffsetDateTime::now_utc();
        let id = DeviceId::parse("dev-1").expect("valid id");
        let cap = now + Duration::days(10);
        let params = client(&id, IdentityKind::Device, 365, now, cap).expect("params");
        assert_eq!(params.not_after, cap);
        assert_eq!(params.not_before, now - CLOCK_SKEW);
    }

    #[test]
    fn pem_blocks_reports_missing_label() {
        let err = pem_blocks("just text", &["CERTIFICATE"], "certificate").expect_err("no block");
        assert!(err.to_string().contains("BEGIN CERTIFICATE"), "{err}");
    }
}
