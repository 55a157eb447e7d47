//! The `rampart` CLI end to end: real binary, real files, real OpenSSL.

use std::os::unix::fs::PermissionsExt;

use rampart_test_support::{PgTestDb, Workspace};
use serde_json::Value;

fn init(ws: &Workspace) -> Value {
    ws.rampart_json(&["init"])
}

fn chain(ws: &Workspace) -> String {
    let path = ws.join("chain.pem");
    std::fs::write(&path, ws.ca_bundle()).expect("write chain");
    path.display().to_string()
}

fn device_count(ws: &Workspace) -> usize {
    ws.rampart_json(&["device", "list"])
        .as_array()
        .expect("array")
        .len()
}

#[test]
fn init_is_idempotent_and_private() {
    let ws = Workspace::new();
    let first = init(&ws);
    assert_eq!(first["created"], true);
    let mode = std::fs::metadata(ws.data_dir())
        .expect("meta")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o700);
    let second = init(&ws);
    assert_eq!(second["created"], false);
    assert_eq!(first["ca"], second["ca"]);
    // Global flags also work after the subcommand.
    let out = ws
        .rampart()
        .args(["ca", "info"])
        .arg("--json")
        .output()
        .expect("run");
    assert!(out.status.success());
    let info: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(info["can_issue"], true);
}

#[test]
fn signs_csrs_into_verifiable_client_certificates() {
    let ws = Workspace::new();
    init(&ws);
    let chain = chain(&ws);
    for (id, kind, key_text) in [
        ("greenhouse-1", "ec", "prime256v1"),
        ("a4:cf:12:00:00:01", "ed25519", "ED25519"),
        ("rsa-dev", "rsa:2048", "2048 bit"),
    ] {
        let csr = ws.make_csr(&id.replace(':', "_"), id, kind);
        let reg = ws.rampart_json(&[
            "device",
            "sign-csr",
            csr.to_str().expect("utf8"),
            "--id",
            id,
        ]);
        assert_eq!(reg["id"], id);
        let claim = reg["claim_code"].as_str().expect("claim code");
        assert_eq!(claim.len(), 32, "160-bit base32 claim code");
        let qr: Value =
            serde_json::from_str(reg["qr_payload"].as_str().expect("qr")).expect("qr json");
        assert_eq!(qr["deviceId"], id);
        assert_eq!(qr["fingerprint"], reg["fingerprint"]);
        assert_eq!(qr["claimCode"], claim);
        assert_eq!(
            reg["serial"].as_str().expect("serial").len(),
            32,
            "128-bit serial"
        );

        let crt = ws.join(&format!("{}.crt", id.replace(':', "_")));
        std::fs::write(&crt, reg["certificate"].as_str().expect("pem")).expect("write");
        let crt = crt.to_str().expect("utf8");
        let verified = ws.openssl_ok(&["verify", "-CAfile", &chain, crt]);
        assert!(verified.contains("OK"), "{verified}");
        let text = ws.openssl_ok(&["x509", "-in", crt, "-noout", "-text"]);
        assert!(text.contains(&format!("Subject: CN = {id}")), "{text}");
        assert!(text.contains("TLS Web Client Authentication"), "{text}");
        assert!(!text.contains("TLS Web Server Authentication"), "{text}");
        assert!(text.contains("CA:FALSE"), "{text}");
        assert!(
            text.contains(key_text),
            "{id}: key type not {key_text}:\n{text}"
        );
        let fp = ws.openssl_ok(&["x509", "-in", crt, "-noout", "-fingerprint", "-sha256"]);
        let fp = fp
            .trim()
            .rsplit('=')
            .next()
            .expect("fp")
            .replace(':', "")
            .to_lowercase();
        assert_eq!(fp, reg["fingerprint"]);
        // Validity: 365 days by default, give or take the clock-skew margin.
        let dates = ws.openssl_ok(&[
            "x509",
            "-in",
            crt,
            "-noout",
            "-checkend",
            &(364 * 86400).to_string(),
        ]);
        assert!(dates.contains("will not expire"), "{dates}");
        let out = ws.openssl(&[
            "x509",
            "-in",
            crt,
            "-noout",
            "-checkend",
            &(366 * 86400).to_string(),
        ]);
        assert!(!out.status.success(), "valid for more than 366 days");
    }
    let list = ws.rampart_json(&["device", "list"]);
    let first = &list[0];
    for key in [
        "id",
        "state",
        "fingerprint",
        "serial",
        "not_after",
        "online",
        "last_seen",
    ] {
        assert!(first.get(key).is_some(), "device list lacks {key}: {first}");
    }
    assert_eq!(first["state"], "unbound");
    assert_eq!(first["online"], false);
}

#[test]
fn refuses_bad_csrs_with_a_clear_sentence_and_writes_nothing() {
    let ws = Workspace::new();
    init(&ws);
    let weak = ws.make_csr("weak", "weak-1", "rsa:1024");
    let err = ws.rampart_fails(&["device", "sign-csr", weak.to_str().expect("utf8")]);
    assert!(err.contains("RSA") && err.contains("1024"), "{err}");

    let slash = ws.make_csr("slash", "a\\/b", "ec");
    let err = ws.rampart_fails(&["device", "sign-csr", slash.to_str().expect("utf8")]);
    assert!(err.contains("a/b"), "{err}");

    let ok = ws.make_csr("ok", "dev-1", "ec");
    let err = ws.rampart_fails(&[
        "device",
        "sign-csr",
        ok.to_str().expect("utf8"),
        "--id",
        "dev-2",
    ]);
    assert!(err.contains("dev-1") && err.contains("dev-2"), "{err}");

    let garbage = ws.join("garbage.csr");
    std::fs::write(
        &garbage,
        "-----BEGIN CERTIFICATE REQUEST-----\nnot base64!\n-----END CERTIFICATE REQUEST-----\n",
    )
    .expect("write");
    let err = ws.rampart_fails(&["device", "sign-csr", garbage.to_str().expect("utf8")]);
    assert!(err.starts_with("error: "), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one sentence: {err}");

    // Flip one byte inside the signature (the CSR's last bytes).
    let der = ws.join("ok.der");
    ws.openssl_ok(&[
        "req",
        "-in",
        ok.to_str().expect("utf8"),
        "-outform",
        "DER",
        "-out",
        der.to_str().expect("utf8"),
    ]);
    let mut bytes = std::fs::read(&der).expect("der");
    let n = bytes.len();
    bytes[n - 5] ^= 0x55;
    std::fs::write(&der, &bytes).expect("write");
    let tampered = ws.join("tampered.csr");
    ws.openssl_ok(&[
        "req",
        "-inform",
        "DER",
        "-in",
        der.to_str().expect("utf8"),
        "-out",
        tampered.to_str().expect("utf8"),
    ]);
    let err = ws.rampart_fails(&["device", "sign-csr", tampered.to_str().expect("utf8")]);
    assert!(err.to_lowercase().contains("signature"), "{err}");

    assert_eq!(device_count(&ws), 0, "nothing registered by refused CSRs");

    ws.rampart_json(&["device", "sign-csr", ok.to_str().expect("utf8")]);
    let again = ws.make_csr("again", "dev-1", "ec");
    let err = ws.rampart_fails(&["device", "sign-csr", again.to_str().expect("utf8")]);
    assert!(err.contains("already registered"), "{err}");
    assert_eq!(device_count(&ws), 1);
}

#[test]
fn revocation_reaches_the_crl_with_its_reason() {
    let ws = Workspace::new();
    init(&ws);
    let chain = chain(&ws);
    let csr = ws.make_csr("d", "doomed-1", "ec");
    let reg = ws.rampart_json(&["device", "sign-csr", csr.to_str().expect("utf8")]);
    let dev = ws.rampart_json(&["device", "revoke", "doomed-1", "--reason", "key-compromise"]);
    assert_eq!(dev["state"], "revoked");

    let crl = ws.join("crl.pem");
    let out = ws.rampart().args(["ca", "crl"]).output().expect("crl");
    assert!(out.status.success());
    std::fs::write(&crl, &out.stdout).expect("write crl");
    let text = ws.openssl_ok(&["crl", "-in", crl.to_str().expect("utf8"), "-noout", "-text"]);
    let serial = reg["serial"].as_str().expect("serial").to_uppercase();
    assert!(
        text.contains(&serial),
        "serial {serial} not in CRL:\n{text}"
    );
    assert!(text.contains("Key Compromise"), "{text}");
    let verify = ws.openssl(&[
        "crl",
        "-in",
        crl.to_str().expect("utf8"),
        "-noout",
        "-CAfile",
        &chain,
    ]);
    let said = String::from_utf8_lossy(&verify.stderr).to_string()
        + &String::from_utf8_lossy(&verify.stdout);
    assert!(
        verify.status.success() && said.contains("verify OK"),
        "{said}"
    );

    let err = ws.rampart_fails(&["device", "revoke", "doomed-1"]);
    assert!(err.contains("already revoked"), "{err}");
    let err = ws.rampart_fails(&["device", "revoke", "doomed-1", "--reason", "because"]);
    assert!(
        err.contains("key-compromise"),
        "lists the valid reasons: {err}"
    );
    let err = ws.rampart_fails(&["device", "enable", "doomed-1"]);
    assert!(err.contains("revoked"), "{err}");
}

#[test]
fn disable_enable_delete_and_claim_codes() {
    let ws = Workspace::new();
    init(&ws);
    let keys = ws.join("keys");
    let reg = ws.rampart_json(&[
        "device",
        "create",
        "--id",
        "bench-1",
        "--out",
        keys.to_str().expect("utf8"),
    ]);
    let key_mode = std::fs::metadata(keys.join("bench-1.key"))
        .expect("key")
        .permissions()
        .mode();
    assert_eq!(key_mode & 0o777, 0o600);
    let chain = keys.join("ca.crt");
    let verified = ws.openssl_ok(&[
        "verify",
        "-CAfile",
        chain.to_str().expect("utf8"),
        keys.join("bench-1.crt").to_str().expect("utf8"),
    ]);
    assert!(verified.contains("OK"));
    let key_matches = ws.openssl_ok(&[
        "pkey",
        "-in",
        keys.join("bench-1.key").to_str().expect("utf8"),
        "-pubout",
    ]);
    let cert_key = ws.openssl_ok(&[
        "x509",
        "-in",
        keys.join("bench-1.crt").to_str().expect("utf8"),
        "-noout",
        "-pubkey",
    ]);
    assert_eq!(key_matches, cert_key, "key file belongs to the certificate");

    assert_eq!(
        ws.rampart_json(&["device", "disable", "bench-1"])["state"],
        "disabled"
    );
    assert_eq!(
        ws.rampart_json(&["device", "list", "--state", "disabled"])
            .as_array()
            .map(Vec::len),
        Some(1)
    );
    assert_eq!(
        ws.rampart_json(&["device", "enable", "bench-1"])["state"],
        "unbound"
    );

    let err = ws.rampart_fails(&["device", "qr", "bench-1"]);
    assert!(err.contains("--rotate-claim-code"), "{err}");
    let png = ws.join("label.png");
    let qr = ws.rampart_json(&[
        "device",
        "qr",
        "bench-1",
        "--rotate-claim-code",
        "--png",
        png.to_str().expect("utf8"),
    ]);
    assert_ne!(qr["claim_code"], reg["claim_code"], "a new code");
    assert_eq!(
        &std::fs::read(&png).expect("png")[..8],
        b"\x89PNG\r\n\x1a\n"
    );
    let out = ws
        .rampart()
        .args(["device", "qr", "bench-1", "--rotate-claim-code"])
        .output()
        .expect("qr");
    assert!(out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stdout).contains('█'),
        "terminal QR"
    );

    let err = ws.rampart_fails(&[
        "device",
        "create",
        "--id",
        "bench-1",
        "--out",
        keys.to_str().expect("utf8"),
    ]);
    assert!(err.contains("already registered"), "{err}");
    assert_eq!(
        ws.rampart_json(&["device", "delete", "bench-1"])["deleted"],
        true
    );
    assert_eq!(device_count(&ws), 0);
    let err = ws.rampart_fails(&["device", "show", "bench-1"]);
    assert!(err.contains("no device"), "{err}");
}

#[test]
fn every_change_is_audited_and_tampering_is_detected() {
    let ws = Workspace::new();
    init(&ws);
    let csr = ws.make_csr("a", "audited-1", "ec");
    ws.rampart_json(&["device", "sign-csr", csr.to_str().expect("utf8")]);
    ws.rampart_json(&["device", "disable", "audited-1"]);
    ws.rampart_json(&["device", "revoke", "audited-1"]);
    let rows = ws.rampart_json(&["audit", "list"]);
    let actions: Vec<&str> = rows
        .as_array()
        .expect("rows")
        .iter()
        .filter_map(|r| r["action"].as_str())
        .collect();
    assert_eq!(
        actions,
        [
            "instance.init",
            "device.create",
            "device.disable",
            "device.revoke"
        ]
    );
    assert_eq!(rows[1]["actor"], "cli:tester");
    assert!(
        rows[1]["source"]
            .as_str()
            .expect("source")
            .starts_with("cli@")
    );
    let report = ws.rampart_json(&["audit", "verify"]);
    assert_eq!(report["ok"], true);
    assert_eq!(report["rows"], 4);

    let db = rusqlite::Connection::open(ws.data_dir().join("rampart.db")).expect("db");
    db.execute_batch("DROP TRIGGER audit_log_no_update; UPDATE audit_log SET subject = 'someone-else' WHERE seq = 3;")
        .expect("tamper");
    let out = ws
        .rampart()
        .args(["audit", "verify"])
        .output()
        .expect("verify");
    assert!(!out.status.success(), "verify must fail on a broken chain");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("row 3"), "{said}");
}

#[test]
fn bad_data_dirs_and_configs_are_refused() {
    let ws = Workspace::new();
    let err = ws.rampart_fails(&["device", "list"]);
    assert!(err.contains("rampart init"), "missing data dir: {err}");

    std::fs::create_dir(ws.data_dir()).expect("mkdir");
    std::fs::write(ws.data_dir().join("thesis.tex"), "mine").expect("write");
    let err = ws.rampart_fails(&["init"]);
    assert!(err.contains("not a Rampart data dir"), "{err}");
    assert!(
        ws.data_dir().join("thesis.tex").exists(),
        "foreign files untouched"
    );
    std::fs::remove_dir_all(ws.data_dir()).expect("clean");

    let cfg = ws.join("rampart.toml");
    std::fs::write(&cfg, "[pki\n").expect("write");
    let err = ws.rampart_fails(&["--config", cfg.to_str().expect("utf8"), "init"]);
    assert!(err.contains("not valid TOML"), "{err}");
    assert!(!ws.data_dir().exists(), "nothing written on a config error");

    let out = ws
        .rampart()
        .args(["init"])
        .env("RAMPART_PKI__NO_SUCH_KEY", "1")
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no_such_key") && err.contains("RAMPART_PKI__NO_SUCH_KEY"),
        "{err}"
    );

    let out = ws
        .rampart()
        .args(["config", "example"])
        .output()
        .expect("example");
    assert!(out.status.success());
    std::fs::write(&cfg, &out.stdout).expect("write example");
    ws.rampart()
        .args(["--config", cfg.to_str().expect("utf8"), "init"])
        .assert()
        .success();
}

#[test]
fn encrypted_ca_keys_need_the_passphrase() {
    let ws = Workspace::new();
    let pass = ("RAMPART_CA_PASSPHRASE", "correct horse battery staple");
    ws.rampart()
        .arg("init")
        .env(pass.0, pass.1)
        .assert()
        .success();
    let key = std::fs::read_to_string(ws.data_dir().join("pki/ca.key")).expect("key");
    assert!(
        key.starts_with("-----BEGIN ENCRYPTED PRIVATE KEY-----"),
        "{key}"
    );
    let err = ws.rampart_fails(&["device", "list"]);
    assert!(err.to_lowercase().contains("passphrase"), "{err}");
    let out = ws
        .rampart()
        .args(["device", "list"])
        .env(pass.0, "wrong passphrase here")
        .output()
        .expect("run");
    assert!(!out.status.success());
    let out = ws
        .rampart()
        .args(["device", "list"])
        .env(pass.0, pass.1)
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn root_key_can_go_offline_and_issuing_continues() {
    let ws = Workspace::new();
    init(&ws);
    let offline = ws.join("root-offline.key");
    ws.rampart_json(&[
        "ca",
        "export-root-key",
        "--out",
        offline.to_str().expect("utf8"),
        "--remove",
    ]);
    assert!(!ws.data_dir().join("pki/root.key").exists());
    let mode = std::fs::metadata(&offline)
        .expect("meta")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    assert_eq!(ws.rampart_json(&["ca", "info"])["root_key_present"], false);
    let csr = ws.make_csr("x", "after-offline", "ec");
    ws.rampart_json(&["device", "sign-csr", csr.to_str().expect("utf8")]);
}

#[test]
fn imports_an_external_ca_with_and_without_its_key() {
    let ws = Workspace::new();
    init(&ws);
    ws.openssl_ok(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        "ext.key",
        "-out",
        "ext.crt",
        "-subj",
        "/CN=Vault Intermediate",
        "-days",
        "30",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]);
    ws.rampart_json(&["ca", "import", "--cert", "ext.crt", "--key", "ext.key"]);
    let csr = ws.make_csr("e", "ext-dev", "ec");
    let reg = ws.rampart_json(&["device", "sign-csr", csr.to_str().expect("utf8")]);
    std::fs::write(
        ws.join("ext-dev.crt"),
        reg["certificate"].as_str().expect("pem"),
    )
    .expect("write");
    let ok = ws.openssl_ok(&["verify", "-CAfile", "ext.crt", "ext-dev.crt"]);
    assert!(ok.contains("OK"), "{ok}");

    let ws2 = Workspace::new();
    init(&ws2);
    std::fs::copy(ws.join("ext.crt"), ws2.join("ext.crt")).expect("copy");
    let info = ws2.rampart_json(&["ca", "import", "--cert", "ext.crt"]);
    assert_eq!(info["can_issue"], false);
    let csr = ws2.make_csr("e", "ext-dev", "ec");
    let err = ws2.rampart_fails(&["device", "sign-csr", csr.to_str().expect("utf8")]);
    assert!(err.to_lowercase().contains("key"), "{err}");

    // Verify-only: the external CA issues, Rampart registers what it issued.
    std::fs::copy(ws.join("ext.key"), ws2.join("ext.key")).expect("copy key");
    std::fs::write(
        ws2.join("ext.cnf"),
        "[leaf]\nextendedKeyUsage = clientAuth\nbasicConstraints = CA:FALSE\n",
    )
    .expect("ext");
    ws2.openssl_ok(&[
        "x509",
        "-req",
        "-in",
        "e.csr",
        "-CA",
        "ext.crt",
        "-CAkey",
        "ext.key",
        "-CAcreateserial",
        "-days",
        "10",
        "-out",
        "vault-issued.crt",
        "-extfile",
        "ext.cnf",
        "-extensions",
        "leaf",
    ]);
    let reg = ws2.rampart_json(&["device", "register", "--cert", "vault-issued.crt"]);
    assert_eq!(reg["id"], "ext-dev");
    assert_eq!(
        ws2.rampart_json(&["device", "show", "ext-dev"])["state"],
        "unbound"
    );
    // A certificate from any other CA is refused.
    let err = ws2.rampart_fails(&[
        "device",
        "register",
        "--cert",
        ws.join("ext-dev.crt").to_str().expect("utf8"),
    ]);
    assert!(
        err.contains("already registered") || err.contains("not by this CA"),
        "{err}"
    );
    let ws3 = Workspace::new();
    init(&ws3);
    let other = ws3.join("other");
    ws3.rampart()
        .args([
            "device",
            "create",
            "--id",
            "stray-1",
            "--out",
            other.to_str().expect("utf8"),
        ])
        .assert()
        .success();
    let err = ws2.rampart_fails(&[
        "device",
        "register",
        "--cert",
        other.join("stray-1.crt").to_str().expect("utf8"),
    ]);
    assert!(
        err.contains("not by this CA") || err.contains("does not verify"),
        "{err}"
    );
}

#[test]
fn store_url_puts_the_registry_and_audit_log_in_postgresql() {
    let Some(db) = PgTestDb::create_blocking() else {
        return;
    };
    // The test server trusts local connections, so a password added to the
    // default admin user's URL is accepted and ignored: enough to check that
    // it is never shown.
    let url = db
        .url()
        .replacen("://postgres@", "://postgres:pw-never-shown@", 1);
    let ws = Workspace::new();
    let init = ws.rampart_json_with_store(&url, &["init"]);
    assert_eq!(init["created"], true);

    let out = ws
        .rampart()
        .env("RAMPART_STORE__URL", &url)
        .args(["device", "create", "--id", "pg-dev-1", "--out"])
        .arg(ws.join("devices"))
        .output()
        .expect("device create");
    assert!(
        out.status.success(),
        "device create: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for stream in [&out.stdout, &out.stderr] {
        assert!(!String::from_utf8_lossy(stream).contains("pw-never-shown"));
    }

    let devices = ws.rampart_json_with_store(&url, &["device", "list"]);
    let ids: Vec<&str> = devices
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|d| d["id"].as_str())
        .collect();
    assert_eq!(ids, ["pg-dev-1"]);
    let report = ws.rampart_json_with_store(&url, &["audit", "verify"]);
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(report["rows"], 2, "instance.init and device.create");
    assert!(
        !ws.data_dir().join("rampart.db").exists(),
        "nothing was written to SQLite"
    );

    let shown = ws.rampart_json_with_store(&url, &["config", "show"]);
    let shown_url = shown["store"]["url"].as_str().expect("url shown");
    assert!(!shown_url.contains("pw-never-shown"), "{shown_url}");
    assert!(shown_url.contains(db.name()), "{shown_url}");

    // Tampering in the database is caught as with SQLite.
    db.execute(
        "DROP TRIGGER audit_log_no_update ON audit_log;
         UPDATE audit_log SET subject = 'someone-else' WHERE seq = 2;",
    )
    .expect("tamper");
    let out = ws
        .rampart()
        .env("RAMPART_STORE__URL", &url)
        .args(["audit", "verify"])
        .output()
        .expect("verify");
    assert!(!out.status.success(), "verify must fail on a broken chain");
    assert!(String::from_utf8_lossy(&out.stdout).contains("row 2"));
}

#[test]
fn an_unreachable_store_url_is_a_clear_error() {
    let ws = Workspace::new();
    init(&ws);
    let out = ws
        .rampart()
        .env(
            "RAMPART_STORE__URL",
            "postgres://rampart:pw-never-shown@127.0.0.1:1/rampart",
        )
        .args(["device", "list"])
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("127.0.0.1:1"), "{err}");
    assert!(err.contains("store.url"), "{err}");
    assert!(!err.contains("pw-never-shown"), "{err}");
}
