//! End-to-end tests of the CA directory, checked with the `openssl` CLI and x509-parser.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use rampart_pki::{
    IdentityKind, InitOutcome, IssuedCertificate, Pki, PkiError, PkiOptions, RevocationReason,
    RevokedSerial, SERVICE_POLICY_OID, Zeroizing, parse_certificate_pem,
};
use rampart_proto::DeviceId;
use tempfile::TempDir;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::oid_registry::{OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY};

const PASSPHRASE: &str = "correct-horse-battery";

fn options() -> PkiOptions {
    PkiOptions {
        server_sans: vec!["broker.local".to_owned(), "127.0.0.1".to_owned()],
        ..PkiOptions::default()
    }
}

fn encrypted_options() -> PkiOptions {
    PkiOptions {
        passphrase: Some(Zeroizing::new(PASSPHRASE.to_owned())),
        ..options()
    }
}

/// A temporary place and the CA directory path inside it (not yet created).
fn workspace() -> (TempDir, PathBuf) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("pki");
    (tmp, dir)
}

fn init(opts: &PkiOptions) -> (TempDir, PathBuf, Pki) {
    let (tmp, dir) = workspace();
    let (pki, outcome) = Pki::init(&dir, opts).expect("init");
    assert_eq!(outcome, InitOutcome::Created);
    (tmp, dir, pki)
}

fn id(s: &str) -> DeviceId {
    DeviceId::parse(s).expect("valid id")
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).expect("metadata").permissions().mode() & 0o777
}

/// Runs openssl; returns (success, stdout + stderr).
fn openssl(args: &[&str]) -> (bool, String) {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("run openssl");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn openssl_ok(args: &[&str]) -> String {
    let (ok, text) = openssl(args);
    assert!(ok, "openssl {args:?} failed:\n{text}");
    text
}

fn p(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

fn write(path: &Path, contents: &str) {
    fs::write(path, contents).expect("write file");
}

fn x509(der: &[u8]) -> X509Certificate<'_> {
    let (rest, cert) = x509_parser::parse_x509_certificate(der).expect("parses");
    assert!(rest.is_empty());
    cert
}

fn pem_to_der(pem: &str) -> Vec<u8> {
    x509_parser::pem::parse_x509_pem(pem.as_bytes())
        .expect("pem")
        .1
        .contents
}

/// `openssl verify` of `cert` against the own CA in `dir`.
fn verify_device(dir: &Path, cert_pem: &str) -> (bool, String) {
    let path = dir.parent().expect("parent").join("leaf.crt");
    write(&path, cert_pem);
    openssl(&[
        "verify",
        "-CAfile",
        p(&dir.join("root.crt")),
        "-untrusted",
        p(&dir.join("ca.crt")),
        p(&path),
    ])
}

fn files_snapshot(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    fs::read_dir(dir)
        .expect("list")
        .map(|entry| {
            let entry = entry.expect("entry");
            (
                entry.file_name().to_string_lossy().into_owned(),
                fs::read(entry.path()).expect("read"),
            )
        })
        .collect()
}

/// An OpenSSL-made CSR for `cn`; `keygen` are the key arguments of `openssl req -new`.
fn openssl_csr(tmp: &Path, name: &str, cn: &str, keygen: &[&str], extra: &[&str]) -> String {
    let csr = tmp.join(format!("{name}.csr"));
    let key = tmp.join(format!("{name}.key"));
    let subject = format!("/CN={cn}");
    let mut args = vec![
        "req",
        "-new",
        "-nodes",
        "-subj",
        &subject,
        "-keyout",
        p(&key),
        "-out",
        p(&csr),
    ];
    args.extend_from_slice(keygen);
    args.extend_from_slice(extra);
    openssl_ok(&args);
    fs::read_to_string(csr).expect("csr")
}

fn rcgen_csr(cn: &str) -> String {
    let key = rcgen::KeyPair::generate().expect("keygen");
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, cn);
    params
        .serialize_request(&key)
        .and_then(|csr| csr.pem())
        .expect("csr")
}

#[test]
fn init_creates_private_files_and_is_idempotent() {
    let (_tmp, dir, _pki) = init(&options());
    assert_eq!(mode(&dir), 0o700);
    for key in ["root.key", "ca.key", "server.key"] {
        assert_eq!(mode(&dir.join(key)), 0o600, "{key}");
        let pem = fs::read_to_string(dir.join(key)).expect("key");
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----"), "{key}");
    }
    for cert in ["root.crt", "ca.crt", "server.crt"] {
        assert_eq!(mode(&dir.join(cert)), 0o644, "{cert}");
    }
    let before = files_snapshot(&dir);
    assert_eq!(
        before.keys().collect::<Vec<_>>(),
        [
            "ca.crt",
            "ca.key",
            "root.crt",
            "root.key",
            "server.crt",
            "server.key"
        ]
    );

    let (pki, outcome) = Pki::init(&dir, &options()).expect("second init");
    assert_eq!(outcome, InitOutcome::AlreadyPresent);
    assert_eq!(files_snapshot(&dir), before, "second init changes nothing");
    let leftovers: Vec<_> = fs::read_dir(dir.parent().expect("parent"))
        .expect("list")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(leftovers, ["pki"], "no staging directory is left behind");

    let info = pki.info();
    assert!(info.can_issue && info.root_key_present && !info.keys_encrypted && !info.imported);
    assert_eq!(info.issuer.cn.as_deref(), Some("Rampart Issuing CA"));
    assert_eq!(
        info.root.as_ref().and_then(|r| r.cn.as_deref()),
        Some("Rampart Root CA")
    );
    assert!(info.issuer.is_ca);
}

#[test]
fn ca_certificates_follow_the_profile() {
    let (_tmp, dir, _pki) = init(&options());
    let root_der = pem_to_der(&fs::read_to_string(dir.join("root.crt")).expect("root"));
    let ca_der = pem_to_der(&fs::read_to_string(dir.join("ca.crt")).expect("ca"));
    for (der, path_len, min_years) in [(&root_der, 1, 19), (&ca_der, 0, 9)] {
        let cert = x509(der);
        let bc = cert
            .basic_constraints()
            .expect("bc")
            .expect("present")
            .value;
        assert!(bc.ca);
        assert_eq!(bc.path_len_constraint, Some(path_len));
        let usage = cert.key_usage().expect("ku").expect("present").value;
        assert!(usage.key_cert_sign() && usage.crl_sign() && !usage.digital_signature());
        let validity = cert.validity();
        let years = (validity.not_after.to_datetime() - validity.not_before.to_datetime())
            .whole_days()
            / 365;
        assert!(years >= min_years, "{years} years");
    }
    openssl_ok(&[
        "verify",
        "-CAfile",
        p(&dir.join("root.crt")),
        p(&dir.join("ca.crt")),
    ]);
}

#[test]
fn generated_device_certificate_matches_the_profile_and_verifies() {
    let (_tmp, dir, pki) = init(&options());
    let (issued, key) = pki
        .issue_device_with_generated_key(&id("greenhouse-1"))
        .expect("issue");
    assert!(key.starts_with("-----BEGIN PRIVATE KEY-----"));

    let (ok, text) = verify_device(&dir, &issued.pem);
    assert!(ok && text.contains(": OK"), "{text}");

    let cert = x509(&issued.der);
    assert_eq!(
        cert.subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok()),
        Some("greenhouse-1")
    );
    let eku = cert
        .extended_key_usage()
        .expect("eku")
        .expect("present")
        .value;
    assert!(eku.client_auth);
    assert!(!eku.server_auth && !eku.any && !eku.code_signing && eku.other.is_empty());
    let bc = cert
        .basic_constraints()
        .expect("bc")
        .expect("present")
        .value;
    assert!(!bc.ca);
    let spki = cert.public_key();
    assert_eq!(spki.algorithm.algorithm, OID_KEY_TYPE_EC_PUBLIC_KEY);
    let curve = spki
        .algorithm
        .parameters
        .as_ref()
        .and_then(|p| p.as_oid().ok());
    assert_eq!(curve, Some(OID_EC_P256));
    assert!(cert.subject_alternative_name().expect("san").is_none());

    // 365 days from now, starting 5 minutes early for clock skew.
    let span = issued.not_after - issued.not_before;
    assert_eq!(span, time::Duration::days(365) + time::Duration::minutes(5));
    let age = time::OffsetDateTime::now_utc() - issued.not_before;
    assert!(
        age >= time::Duration::minutes(5) && age < time::Duration::minutes(6),
        "{age}"
    );
    assert_eq!(cert.validity().not_before.to_datetime(), issued.not_before);

    assert_eq!(cert.raw_serial().len(), 16);
    assert!(cert.raw_serial()[0] < 0x80);
    assert_eq!(issued.serial, hex::encode(cert.raw_serial()));
    assert_eq!(issued.serial.len(), 32);
    assert_eq!(
        issued.fingerprint,
        rampart_pki::fingerprint_sha256(&issued.der)
    );
    assert_eq!(issued.fingerprint.len(), 64);

    let summary = parse_certificate_pem(&issued.pem).expect("summary");
    assert_eq!(summary.cn.as_deref(), Some("greenhouse-1"));
    assert_eq!(summary.serial, issued.serial);
    assert!(!summary.is_ca && !summary.is_service);

    let other = pki
        .issue_device_with_generated_key(&id("greenhouse-2"))
        .expect("issue");
    assert_ne!(other.0.serial, issued.serial);
}

#[test]
fn issued_certificate_serializes_for_the_api() {
    let (_tmp, _dir, pki) = init(&options());
    let (issued, _key) = pki
        .issue_device_with_generated_key(&id("dev-json"))
        .expect("issue");
    let json = serde_json::to_value(&issued).expect("json");
    assert_eq!(json["id"], "dev-json");
    assert_eq!(json["kind"], "device");
    assert_eq!(json["serial"], issued.serial.as_str());
    assert!(json.get("der").is_none());
    let not_after = json["not_after"].as_str().expect("string");
    let parsed =
        time::OffsetDateTime::parse(not_after, &time::format_description::well_known::Rfc3339)
            .expect("rfc3339");
    assert_eq!(parsed, issued.not_after);
    let info = serde_json::to_value(pki.info()).expect("json");
    assert_eq!(info["can_issue"], true);
    assert!(info["issuer"]["not_after"].is_string());
}

#[test]
fn issued_certificates_read_back_from_their_pem() {
    let (_tmp, _dir, pki) = init(&options());
    let (device, _key) = pki
        .issue_device_with_generated_key(&id("dev-back"))
        .expect("issue");
    assert_eq!(
        IssuedCertificate::from_pem(&device.pem).expect("reads"),
        device
    );
    let (service, _key) = pki.issue_service(&id("svc-back")).expect("issue");
    let back = IssuedCertificate::from_pem(&service.pem).expect("reads");
    assert_eq!(
        (back.kind, back.id.as_str()),
        (IdentityKind::Service, "svc-back")
    );
    for bad in [
        "",
        "not pem",
        &pki.issuing_ca_pem().replace("CERTIFICATE", "X"),
    ] {
        assert!(IssuedCertificate::from_pem(bad).is_err(), "{bad}");
    }
}

#[test]
fn openssl_csrs_of_accepted_key_types_are_signed() {
    let (tmp, dir, pki) = init(&options());
    let cases: [(&str, &[&str]); 3] = [
        (
            "ec",
            &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"],
        ),
        (
            "ec384",
            &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:secp384r1"],
        ),
        ("rsa", &["-newkey", "rsa:2048"]),
    ];
    for (name, keygen) in cases {
        let cn = format!("dev-{name}");
        let csr = openssl_csr(tmp.path(), name, &cn, keygen, &[]);
        let issued = pki.sign_device_csr(&csr, Some(&id(&cn))).expect(name);
        assert_eq!(issued.id.as_str(), cn);
        let (ok, text) = verify_device(&dir, &issued.pem);
        assert!(ok, "{name}: {text}");
    }

    let ed_key = tmp.path().join("ed.key");
    let ed_csr = tmp.path().join("ed.csr");
    openssl_ok(&["genpkey", "-algorithm", "ed25519", "-out", p(&ed_key)]);
    openssl_ok(&[
        "req",
        "-new",
        "-key",
        p(&ed_key),
        "-subj",
        "/CN=dev-ed",
        "-out",
        p(&ed_csr),
    ]);
    let csr = fs::read_to_string(ed_csr).expect("csr");
    let issued = pki.sign_device_csr(&csr, None).expect("ed25519");
    assert_eq!(issued.id.as_str(), "dev-ed");
    let (ok, text) = verify_device(&dir, &issued.pem);
    assert!(ok, "{text}");
    assert_eq!(
        x509(&issued.der)
            .public_key()
            .algorithm
            .algorithm
            .to_id_string(),
        "1.3.101.112"
    );
}

#[test]
fn extensions_requested_in_a_csr_are_ignored() {
    let (tmp, _dir, pki) = init(&options());
    let csr = openssl_csr(
        tmp.path(),
        "greedy",
        "dev-greedy",
        &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"],
        &[
            "-addext",
            "subjectAltName=DNS:broker.local,IP:10.0.0.1",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "extendedKeyUsage=serverAuth,codeSigning",
            "-addext",
            "certificatePolicies=1.3.6.1.4.1.59021.1.1",
        ],
    );
    let issued = pki.sign_device_csr(&csr, None).expect("signed");
    let cert = x509(&issued.der);
    assert!(cert.subject_alternative_name().expect("san").is_none());
    assert!(
        !cert
            .basic_constraints()
            .expect("bc")
            .expect("present")
            .value
            .ca
    );
    let eku = cert
        .extended_key_usage()
        .expect("eku")
        .expect("present")
        .value;
    assert!(eku.client_auth && !eku.server_auth && !eku.code_signing);
    assert!(
        !parse_certificate_pem(&issued.pem)
            .expect("summary")
            .is_service
    );
}

#[test]
fn weak_and_odd_keys_are_refused_with_the_key_named() {
    let (tmp, _dir, pki) = init(&options());
    let csr = openssl_csr(
        tmp.path(),
        "rsa1024",
        "dev-weak",
        &["-newkey", "rsa:1024"],
        &[],
    );
    let err = pki.sign_device_csr(&csr, None).expect_err("rsa 1024");
    assert!(matches!(err, PkiError::UnsupportedCsrKey { .. }));
    assert_eq!(
        err.to_string(),
        "CSR key is RSA 1024 bits; use ECDSA P-256, ECDSA P-384, Ed25519 or RSA of at least 2048 bits"
    );

    let csr = openssl_csr(
        tmp.path(),
        "k1",
        "dev-k1",
        &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:secp256k1"],
        &[],
    );
    let err = pki.sign_device_csr(&csr, None).expect_err("secp256k1");
    assert!(
        err.to_string().contains("ECDSA on curve secp256k1"),
        "{err}"
    );
}

#[test]
fn tampered_csr_is_refused() {
    let (_tmp, _dir, pki) = init(&options());
    let pem = rcgen_csr("dev-aaaa");
    let mut der = pem_to_der(&pem);
    let at = der
        .windows(8)
        .position(|w| w == b"dev-aaaa")
        .expect("CN in DER");
    der[at + 7] = b'b';
    let tampered =
        pkcs8::der::pem::encode_string("CERTIFICATE REQUEST", pkcs8::LineEnding::LF, &der)
            .expect("pem");
    let err = pki.sign_device_csr(&tampered, None).expect_err("tampered");
    assert!(matches!(err, PkiError::CsrSignatureInvalid), "{err}");
    assert!(err.to_string().contains("signature does not verify"));
    // The untouched CSR is fine.
    pki.sign_device_csr(&pem, None).expect("original");
}

#[test]
fn bad_names_and_inputs_are_refused() {
    let (_tmp, _dir, pki) = init(&options());

    let err = pki
        .sign_device_csr(&rcgen_csr("a/b"), None)
        .expect_err("a/b");
    assert!(matches!(err, PkiError::CsrInvalidCommonName { .. }));
    assert!(
        err.to_string()
            .starts_with("CSR common name 'a/b' is not a valid device id: "),
        "{err}"
    );

    let err = pki
        .sign_device_csr(&rcgen_csr("dev-1"), Some(&id("dev-2")))
        .expect_err("mismatch");
    assert_eq!(
        err.to_string(),
        "CSR common name 'dev-1' does not match the expected device id 'dev-2'"
    );

    let err = pki
        .sign_device_csr("hello, I am a CSR", None)
        .expect_err("garbage");
    assert!(matches!(err, PkiError::MalformedPem { .. }));
    assert!(
        err.to_string().contains("BEGIN CERTIFICATE REQUEST"),
        "{err}"
    );

    let (cert, _) = pki
        .issue_device_with_generated_key(&id("dev-x"))
        .expect("issue");
    let err = pki
        .sign_device_csr(&cert.pem, None)
        .expect_err("a certificate is not a CSR");
    assert!(matches!(err, PkiError::MalformedPem { .. }), "{err}");

    let broken = "-----BEGIN CERTIFICATE REQUEST-----\nMIIB\n-----END CERTIFICATE REQUEST-----\n";
    let err = pki.sign_device_csr(broken, None).expect_err("truncated");
    assert!(
        matches!(
            err,
            PkiError::MalformedCsr { .. } | PkiError::MalformedPem { .. }
        ),
        "{err}"
    );
}

/// The part of `openssl crl -text` describing the entry with `serial`.
fn crl_entry<'a>(text: &'a str, serial: &str) -> &'a str {
    let needle = format!("Serial Number: {}", serial.to_uppercase());
    let start = text
        .find(&needle)
        .unwrap_or_else(|| panic!("{needle} not in\n{text}"));
    let rest = &text[start + needle.len()..];
    let end = rest
        .find("Serial Number:")
        .or_else(|| rest.find("Signature Algorithm"))
        .unwrap_or(rest.len());
    &rest[..end]
}

#[test]
fn crl_lists_reasons_and_verifies_with_openssl() {
    let (tmp, dir, pki) = init(&options());
    let issue = |name: &str| -> IssuedCertificate {
        let (cert, _) = pki
            .issue_device_with_generated_key(&id(name))
            .expect("issue");
        fs::write(tmp.path().join(format!("{name}.crt")), &cert.pem).expect("write");
        cert
    };
    let (a, b, c, kept) = (
        issue("dev-a"),
        issue("dev-b"),
        issue("dev-c"),
        issue("dev-kept"),
    );
    let now = time::OffsetDateTime::now_utc();
    let revoked = [
        (&a, RevocationReason::KeyCompromise),
        (&b, RevocationReason::Superseded),
        (&c, RevocationReason::Unspecified),
    ]
    .map(|(cert, reason)| RevokedSerial {
        serial: cert.serial.clone(),
        reason,
        revoked_at: now,
    });

    let crl = pki
        .build_crl(&revoked, 7, Duration::from_secs(3600))
        .expect("crl");
    pki.write_crl(&crl).expect("write crl");
    assert_eq!(pki.crl_path(), dir.join("crl.pem"));
    assert_eq!(fs::read_to_string(pki.crl_path()).expect("read"), crl);

    let text = openssl_ok(&["crl", "-in", p(&pki.crl_path()), "-noout", "-text"]);
    assert!(text.contains("X509v3 CRL Number:"), "{text}");
    assert!(
        crl_entry(&text, &a.serial).contains("Key Compromise"),
        "{text}"
    );
    assert!(crl_entry(&text, &b.serial).contains("Superseded"), "{text}");
    assert!(!crl_entry(&text, &c.serial).contains("Reason"), "{text}");
    assert!(!text.contains(&kept.serial.to_uppercase()));
    assert!(
        text.contains("Issuer: O = Rampart, CN = Rampart Issuing CA"),
        "{text}"
    );

    let chain = tmp.path().join("chain.pem");
    write(&chain, &pki.chain_pem());
    let text = openssl_ok(&[
        "crl",
        "-in",
        p(&pki.crl_path()),
        "-CAfile",
        p(&chain),
        "-noout",
    ]);
    assert!(text.contains("verify OK"), "{text}");

    let check = |name: &str| {
        openssl(&[
            "verify",
            "-crl_check",
            "-CAfile",
            p(&dir.join("root.crt")),
            "-untrusted",
            p(&dir.join("ca.crt")),
            "-CRLfile",
            p(&pki.crl_path()),
            p(&tmp.path().join(format!("{name}.crt"))),
        ])
    };
    let (ok, text) = check("dev-a");
    assert!(!ok && text.contains("certificate revoked"), "{text}");
    let (ok, text) = check("dev-kept");
    assert!(ok, "{text}");

    let err = pki
        .build_crl(
            &[RevokedSerial {
                serial: "not-hex".to_owned(),
                reason: RevocationReason::KeyCompromise,
                revoked_at: now,
            }],
            8,
            Duration::from_secs(60),
        )
        .expect_err("bad serial");
    assert!(matches!(err, PkiError::InvalidSerial { .. }), "{err}");
}

#[test]
fn write_crl_refuses_what_this_ca_did_not_sign() {
    let (_tmp, _dir, pki) = init(&options());
    let (_tmp2, _dir2, other) = init(&options());
    let foreign = other
        .build_crl(&[], 1, Duration::from_secs(60))
        .expect("crl");
    let err = pki.write_crl(&foreign).expect_err("foreign crl");
    assert!(matches!(err, PkiError::InvalidCrl { .. }), "{err}");
    assert!(!pki.crl_path().exists());
    assert!(matches!(
        pki.write_crl("junk"),
        Err(PkiError::MalformedPem { .. })
    ));
}

#[test]
fn encrypted_keys_need_the_passphrase() {
    let (tmp, dir, pki) = init(&encrypted_options());
    assert!(pki.info().keys_encrypted);
    for key in ["ca.key", "root.key"] {
        let pem = fs::read_to_string(dir.join(key)).expect("key");
        assert!(
            pem.starts_with("-----BEGIN ENCRYPTED PRIVATE KEY-----"),
            "{key}"
        );
        let pass = format!("pass:{PASSPHRASE}");
        openssl_ok(&["pkey", "-in", p(&dir.join(key)), "-passin", &pass, "-noout"]);
        let (ok, _) = openssl(&[
            "pkey",
            "-in",
            p(&dir.join(key)),
            "-passin",
            "pass:wrong",
            "-noout",
        ]);
        assert!(!ok, "{key} must not open with a wrong passphrase");
    }
    let server_key = fs::read_to_string(dir.join("server.key")).expect("server key");
    assert!(
        server_key.starts_with("-----BEGIN PRIVATE KEY-----"),
        "server key stays plain"
    );

    let err = Pki::open(&dir, &options()).expect_err("no passphrase");
    assert!(matches!(err, PkiError::PassphraseRequired { .. }));
    let message = err.to_string();
    assert!(
        message.contains("ca.key") && message.contains("supply the CA passphrase"),
        "{message}"
    );

    let wrong = PkiOptions {
        passphrase: Some(Zeroizing::new("not-it".to_owned())),
        ..options()
    };
    let err = Pki::open(&dir, &wrong).expect_err("wrong passphrase");
    assert!(matches!(err, PkiError::WrongPassphrase { .. }));
    assert!(err.to_string().contains("does not decrypt"), "{err}");

    let reopened = Pki::open(&dir, &encrypted_options()).expect("right passphrase");
    let (issued, _) = reopened
        .issue_device_with_generated_key(&id("dev-enc"))
        .expect("issue");
    let (ok, text) = verify_device(&dir, &issued.pem);
    assert!(ok, "{text}");

    // Exporting keeps the encryption.
    let out = tmp.path().join("root-offline.key");
    reopened.export_root_key(&out, false).expect("export");
    assert!(
        fs::read_to_string(&out)
            .expect("read")
            .starts_with("-----BEGIN ENCRYPTED PRIVATE KEY-----")
    );
    assert!(dir.join("root.key").exists());
}

#[test]
fn export_root_key_with_removal_keeps_the_issuing_ca_working() {
    let (tmp, dir, pki) = init(&options());
    let out = tmp.path().join("offline").join("root.key");
    fs::create_dir(out.parent().expect("parent")).expect("mkdir");
    pki.export_root_key(&out, true).expect("export");

    assert!(!dir.join("root.key").exists());
    assert_eq!(mode(&out), 0o600);
    let pem = fs::read_to_string(&out).expect("exported");
    assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----"));
    // The exported key is the root certificate's key.
    let key_pub = openssl_ok(&["pkey", "-in", p(&out), "-pubout"]);
    let cert_pub = openssl_ok(&["x509", "-in", p(&dir.join("root.crt")), "-noout", "-pubkey"]);
    assert_eq!(key_pub, cert_pub);

    assert!(!pki.info().root_key_present);
    let (issued, _) = pki
        .issue_device_with_generated_key(&id("dev-after"))
        .expect("still issues");
    assert!(verify_device(&dir, &issued.pem).0);

    let reopened = Pki::open(&dir, &options()).expect("opens without root key");
    assert!(!reopened.info().root_key_present && reopened.info().can_issue);
    let err = reopened
        .export_root_key(&tmp.path().join("again.key"), false)
        .expect_err("gone");
    assert!(matches!(err, PkiError::RootKeyAbsent { .. }), "{err}");
}

#[test]
fn export_root_key_never_overwrites() {
    let (tmp, dir, pki) = init(&options());
    let out = tmp.path().join("existing.key");
    write(&out, "precious");
    let err = pki.export_root_key(&out, true).expect_err("exists");
    assert!(err.to_string().contains("choose a new file name"), "{err}");
    assert_eq!(fs::read_to_string(&out).expect("read"), "precious");
    assert!(dir.join("root.key").exists(), "nothing removed on failure");
}

#[test]
fn service_certificate_carries_the_policy() {
    let (tmp, dir, pki) = init(&options());
    let (issued, key) = pki.issue_service(&id("ingest-worker")).expect("service");
    assert_eq!(issued.kind, rampart_pki::IdentityKind::Service);
    assert!(key.starts_with("-----BEGIN PRIVATE KEY-----"));
    let summary = parse_certificate_pem(&issued.pem).expect("summary");
    assert!(summary.is_service && !summary.is_ca);
    assert_eq!(summary.cn.as_deref(), Some("ingest-worker"));

    let cert = x509(&issued.der);
    let eku = cert
        .extended_key_usage()
        .expect("eku")
        .expect("present")
        .value;
    assert!(eku.client_auth && !eku.server_auth);
    let path = tmp.path().join("svc.crt");
    write(&path, &issued.pem);
    let text = openssl_ok(&["x509", "-in", p(&path), "-noout", "-text"]);
    let oid = SERVICE_POLICY_OID
        .iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(".");
    assert!(text.contains(&format!("Policy: {oid}")), "{text}");
    assert!(verify_device(&dir, &issued.pem).0);
}

#[test]
fn server_certificate_has_the_names_and_is_renewed() {
    let short = PkiOptions {
        server_validity_days: 10,
        ..options()
    };
    let (tmp, dir, pki) = init(&short);
    let server_pem = fs::read_to_string(pki.server_cert_path()).expect("server cert");
    assert_eq!(pki.server_key_path(), dir.join("server.key"));
    let der = pem_to_der(&server_pem);
    let cert = x509(&der);
    assert_eq!(
        cert.subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok()),
        Some("broker.local")
    );
    let sans = cert
        .subject_alternative_name()
        .expect("san")
        .expect("present")
        .value
        .general_names
        .clone();
    assert!(sans.contains(&GeneralName::DNSName("broker.local")));
    assert!(sans.contains(&GeneralName::IPAddress(&[127, 0, 0, 1])));
    let eku = cert
        .extended_key_usage()
        .expect("eku")
        .expect("present")
        .value;
    assert!(eku.server_auth && !eku.client_auth);
    let chain = tmp.path().join("chain.pem");
    write(&chain, &pki.chain_pem());
    let text = openssl_ok(&[
        "verify",
        "-purpose",
        "sslserver",
        "-CAfile",
        p(&dir.join("root.crt")),
        "-untrusted",
        p(&dir.join("ca.crt")),
        p(&pki.server_cert_path()),
    ]);
    assert!(text.contains("OK"), "{text}");

    // Expiring within 30 days: open reissues it.
    let old_not_after = parse_certificate_pem(&server_pem)
        .expect("summary")
        .not_after;
    let pki = Pki::open(&dir, &options()).expect("open");
    let renewed = pki.info().server.expect("server summary");
    assert!(renewed.not_after - old_not_after > time::Duration::days(300));
    assert_eq!(mode(&pki.server_key_path()), 0o600);

    // Missing: reissued.
    fs::remove_file(pki.server_cert_path()).expect("remove");
    let pki = Pki::open(&dir, &options()).expect("open");
    assert!(pki.server_cert_path().exists());

    // Different names: reissued with the new names.
    let renamed = PkiOptions {
        server_sans: vec!["mqtt.example.com".to_owned(), "::1".to_owned()],
        ..options()
    };
    let pki = Pki::open(&dir, &renamed).expect("open");
    assert_eq!(
        pki.info().server.and_then(|s| s.cn).as_deref(),
        Some("mqtt.example.com")
    );

    // Current: untouched.
    let before = fs::read(pki.server_cert_path()).expect("read");
    Pki::open(&dir, &renamed).expect("open");
    assert_eq!(fs::read(pki.server_cert_path()).expect("read"), before);
}

#[test]
fn open_explains_missing_foreign_and_damaged_directories() {
    let (_tmp, dir) = workspace();
    let err = Pki::open(&dir, &options()).expect_err("missing");
    assert!(matches!(err, PkiError::NotInitialized { .. }));
    assert!(err.to_string().contains("does not exist"), "{err}");

    fs::create_dir(&dir).expect("mkdir");
    write(&dir.join("notes.txt"), "hello");
    let err = Pki::init(&dir, &options()).expect_err("foreign");
    assert!(matches!(err, PkiError::ForeignDirectory { .. }), "{err}");
    let err = Pki::open(&dir, &options()).expect_err("no ca.crt");
    assert!(err.to_string().contains("ca.crt is missing"), "{err}");

    let (_tmp, dir, _pki) = init(&options());
    let ca_crt = fs::read_to_string(dir.join("ca.crt")).expect("ca");
    write(&dir.join("ca.crt"), "garbage");
    let err = Pki::open(&dir, &options()).expect_err("corrupt");
    assert!(matches!(err, PkiError::CorruptFile { .. }), "{err}");
    assert!(err.to_string().contains("ca.crt"), "{err}");

    write(&dir.join("ca.crt"), &ca_crt);
    let other_key = rcgen::KeyPair::generate().expect("keygen").serialize_pem();
    write(&dir.join("ca.key"), &other_key);
    let err = Pki::open(&dir, &options()).expect_err("foreign key");
    assert!(matches!(err, PkiError::KeyMismatch { .. }), "{err}");

    let (_tmp, dir, _pki) = init(&options());
    let (_tmp2, dir2, _pki2) = init(&options());
    fs::copy(dir2.join("root.crt"), dir.join("root.crt")).expect("swap root");
    let err = Pki::open(&dir, &options()).expect_err("wrong root");
    assert!(err.to_string().contains("is not signed by"), "{err}");
}

/// An OpenSSL-made self-signed CA standing in for an external (e.g. Vault) CA.
fn external_ca(tmp: &Path) -> (String, String) {
    let key = tmp.join("ext.key");
    let crt = tmp.join("ext.crt");
    openssl_ok(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        p(&key),
        "-out",
        p(&crt),
        "-subj",
        "/O=Vault/CN=Vault Intermediate",
        "-days",
        "30",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]);
    (
        fs::read_to_string(crt).expect("cert"),
        fs::read_to_string(key).expect("key"),
    )
}

#[test]
fn import_without_key_can_only_verify() {
    let (tmp, dir) = workspace();
    let (cert, key) = external_ca(tmp.path());
    let pki = Pki::import(&dir, &options(), &cert, None).expect("import");
    let info = pki.info();
    assert!(info.imported && !info.can_issue && !info.root_key_present);
    assert_eq!(info.issuer.cn.as_deref(), Some("Vault Intermediate"));
    assert!(info.server.is_none());
    assert!(pki.chain_pem().contains("BEGIN CERTIFICATE"));
    assert_eq!(pki.client_ca_pem(), pki.chain_pem());

    let err = pki
        .sign_device_csr(&rcgen_csr("dev-1"), None)
        .expect_err("cannot issue");
    assert!(matches!(err, PkiError::CannotIssue { .. }));
    assert!(err.to_string().contains("can only verify"), "{err}");
    assert!(matches!(
        pki.issue_service(&id("svc")),
        Err(PkiError::CannotIssue { .. })
    ));
    assert!(matches!(
        pki.build_crl(&[], 1, Duration::from_secs(60)),
        Err(PkiError::CannotIssue { .. })
    ));
    let reopened = Pki::open(&dir, &options()).expect("reopen verify-only");
    assert!(!reopened.info().can_issue);

    // Importing again with the key adds it.
    let pki = Pki::import(&dir, &options(), &cert, Some(&key)).expect("add key");
    assert!(pki.info().can_issue);
    assert!(pki.server_cert_path().exists());
}

#[test]
fn import_with_key_issues_certificates_that_chain_to_it() {
    let (tmp, dir) = workspace();
    let (cert, key) = external_ca(tmp.path());
    let sec1 = tmp.path().join("ext-sec1.key");
    openssl_ok(&[
        "ec",
        "-in",
        p(&tmp.path().join("ext.key")),
        "-out",
        p(&sec1),
    ]);
    let sec1 = fs::read_to_string(sec1).expect("sec1");
    assert!(sec1.starts_with("-----BEGIN EC PRIVATE KEY-----"));

    for (name, key_pem, opts) in [
        ("pkcs8", key.as_str(), options()),
        ("sec1", sec1.as_str(), encrypted_options()),
    ] {
        let dir = dir.with_file_name(name);
        let pki = Pki::import(&dir, &opts, &cert, Some(key_pem)).expect(name);
        assert!(pki.info().imported && pki.info().can_issue);
        assert_eq!(mode(&dir.join("ca.key")), 0o600);
        assert_eq!(
            fs::read_to_string(dir.join("ca.key"))
                .expect("key")
                .starts_with("-----BEGIN ENCRYPTED"),
            opts.passphrase.is_some()
        );
        let (issued, _) = pki
            .issue_device_with_generated_key(&id("dev-ext"))
            .expect("issue");
        let leaf = tmp.path().join(format!("{name}-leaf.crt"));
        write(&leaf, &issued.pem);
        let text = openssl_ok(&[
            "verify",
            "-CAfile",
            p(&tmp.path().join("ext.crt")),
            p(&leaf),
        ]);
        assert!(text.contains("OK"), "{text}");
        let crl = pki.build_crl(&[], 1, Duration::from_secs(60)).expect("crl");
        pki.write_crl(&crl).expect("write crl");
        let text = openssl_ok(&[
            "crl",
            "-in",
            p(&pki.crl_path()),
            "-CAfile",
            p(&tmp.path().join("ext.crt")),
            "-noout",
        ]);
        assert!(text.contains("verify OK"), "{text}");
        Pki::open(&dir, &opts).expect("reopen");
    }
}

#[test]
fn import_of_an_intermediate_with_its_chain() {
    let (tmp, own_dir, _own) = init(&options());
    let ca = fs::read_to_string(own_dir.join("ca.crt")).expect("ca");
    let root = fs::read_to_string(own_dir.join("root.crt")).expect("root");
    let key = fs::read_to_string(own_dir.join("ca.key")).expect("key");

    let err = Pki::import(
        &tmp.path().join("wrong-order"),
        &options(),
        &format!("{root}{ca}"),
        Some(&key),
    )
    .expect_err("root first");
    assert!(
        err.to_string().contains("give the issuing CA first"),
        "{err}"
    );

    let dir = tmp.path().join("imported");
    let pki = Pki::import(&dir, &options(), &format!("{ca}{root}"), Some(&key)).expect("import");
    assert_eq!(pki.chain_pem(), format!("{ca}{root}"));
    assert_eq!(
        pki.info().root.and_then(|r| r.cn).as_deref(),
        Some("Rampart Root CA")
    );
    let (issued, _) = pki
        .issue_device_with_generated_key(&id("dev-chain"))
        .expect("issue");
    assert!(verify_device(&own_dir, &issued.pem).0);
}

#[test]
fn import_refuses_leaves_foreign_keys_and_foreign_directories() {
    let (tmp, _own_dir, own) = init(&options());
    let (cert, _key) = external_ca(tmp.path());

    let (leaf, leaf_key) = own
        .issue_device_with_generated_key(&id("dev-leaf"))
        .expect("issue");
    let err = Pki::import(
        &tmp.path().join("a"),
        &options(),
        &leaf.pem,
        Some(&leaf_key),
    )
    .expect_err("leaf");
    assert!(matches!(err, PkiError::NotACa { .. }), "{err}");

    let other_key = rcgen::KeyPair::generate().expect("keygen").serialize_pem();
    let err = Pki::import(&tmp.path().join("b"), &options(), &cert, Some(&other_key))
        .expect_err("mismatch");
    assert!(matches!(err, PkiError::KeyMismatch { .. }), "{err}");
    assert!(!tmp.path().join("b").exists(), "nothing written on failure");

    let err =
        Pki::import(&tmp.path().join("c"), &options(), "no pem here", None).expect_err("garbage");
    assert!(matches!(err, PkiError::MalformedPem { .. }), "{err}");

    let occupied = tmp.path().join("occupied");
    fs::create_dir(&occupied).expect("mkdir");
    write(&occupied.join("notes.txt"), "not a CA");
    let err = Pki::import(&occupied, &options(), &cert, None).expect_err("foreign dir");
    assert!(matches!(err, PkiError::ForeignDirectory { .. }), "{err}");
}

#[test]
fn import_replaces_an_own_ca_and_keeps_it_aside() {
    let (tmp, dir, own) = init(&options());
    let (old_device, _) = own
        .issue_device_with_generated_key(&id("dev-old"))
        .expect("issue");
    let before = files_snapshot(&dir);
    let (cert, key) = external_ca(tmp.path());

    let pki = Pki::import(&dir, &options(), &cert, Some(&key)).expect("replace");
    let info = pki.info();
    assert!(info.imported && info.can_issue && !info.root_key_present);
    assert_eq!(info.issuer.cn.as_deref(), Some("Vault Intermediate"));
    assert_eq!(mode(&dir), 0o700);

    let replaced = || -> Vec<PathBuf> {
        fs::read_dir(tmp.path())
            .expect("list")
            .map(|e| e.expect("entry").path())
            .filter(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("pki.replaced-"))
            })
            .collect()
    };
    let aside = replaced();
    let [aside] = aside.as_slice() else {
        panic!("expected one replaced CA directory, found {aside:?}");
    };
    assert_eq!(files_snapshot(aside), before, "the old CA is kept whole");
    assert!(
        verify_device(aside, &old_device.pem).0,
        "the old CA still verifies its devices"
    );

    // Importing the same CA again is a no-op, not another replacement.
    Pki::import(&dir, &options(), &cert, None).expect("again");
    assert_eq!(replaced().len(), 1);
    assert!(Pki::open(&dir, &options()).expect("open").info().can_issue);
}
