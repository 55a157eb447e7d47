//! `rampart firmware` end to end: keygen → sign → verify → key add →
//! upload with the real binary, and every bad bundle refused with its
//! reason, stored nowhere, and audited; then an approved campaign's offer
//! fetched with curl and the device's certificate (docs/ota.md §4).

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use rampart_test_support::{PgTestDb, Workspace};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// Writes `len` deterministic image bytes to `name` in the workspace.
fn image(ws: &Workspace, name: &str, len: usize) -> String {
    let bytes: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
    let path = ws.join(name);
    std::fs::write(&path, bytes).expect("write image");
    path.display().to_string()
}

fn keygen(ws: &Workspace, name: &str) -> (String, String) {
    let key = ws.join(name).display().to_string();
    let out = ws.rampart_json(&["firmware", "keygen", "--out", &key]);
    assert_eq!(out["publicKey"], format!("{key}.pub"));
    (key.clone(), format!("{key}.pub"))
}

fn sign(ws: &Workspace, image: &str, key: &str, version: &str, out: &str) -> String {
    let out = ws.join(out).display().to_string();
    ws.rampart_json(&[
        "firmware",
        "sign",
        image,
        "--key",
        key,
        "--device-type",
        "esp32c3-dht11",
        "--version",
        version,
        "--security-version",
        "3",
        "--out",
        &out,
    ]);
    out
}

fn firmware_dir_is_empty(ws: &Workspace) -> bool {
    match std::fs::read_dir(ws.data_dir().join("firmware")) {
        Ok(mut entries) => entries.next().is_none(),
        Err(_) => true,
    }
}

#[test]
fn keygen_sign_verify_trust_and_upload() {
    let ws = Workspace::new();
    let (key, public) = keygen(&ws, "release.key");
    let mode = std::fs::metadata(&key).expect("meta").permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the secret key is private");
    let secret_before = std::fs::read(&key).expect("read");
    let err = ws.rampart_fails(&["firmware", "keygen", "--out", &key]);
    assert!(err.contains("refusing to overwrite"), "{err}");
    assert_eq!(std::fs::read(&key).expect("read"), secret_before);

    // Standard PEM: OpenSSL derives the same public key from the secret one.
    let derived = ws.openssl_ok(&["pkey", "-in", &key, "-pubout"]);
    assert_eq!(derived, std::fs::read_to_string(&public).expect("read"));

    let img = image(&ws, "app.bin", 5000);
    let bundle = sign(&ws, &img, &key, "1.4.0", "app.rfw");
    let verified = ws.rampart_json(&["firmware", "verify", &bundle, "--pubkey", &public]);
    assert_eq!(verified["verified"], true);
    let m = &verified["manifest"];
    assert_eq!(m["deviceType"], "esp32c3-dht11");
    assert_eq!(m["version"], "1.4.0");
    assert_eq!(m["securityVersion"], 3);
    assert_eq!(m["imageSize"], 5000);
    let sha = hex::encode(Sha256::digest(std::fs::read(&img).expect("read")));
    assert_eq!(m["imageSha256"], sha.as_str());
    let human = ws
        .rampart()
        .args(["firmware", "verify", &bundle, "--pubkey", &public])
        .output()
        .expect("run");
    assert!(human.status.success());
    assert!(String::from_utf8_lossy(&human.stdout).contains("security version: 3"));

    ws.rampart_json(&["init"]);
    let added = ws.rampart_json(&["firmware", "key", "add", &public, "--name", "release-2026"]);
    assert_eq!(added["name"], "release-2026");
    assert_eq!(added["keyId"], m["keyId"]);

    let uploaded = ws.rampart_json(&["firmware", "upload", &bundle]);
    let f = &uploaded["firmware"];
    assert_eq!(f["deviceType"], "esp32c3-dht11");
    assert_eq!(f["version"], "1.4.0");
    assert_eq!(f["securityVersion"], 3);
    assert_eq!(f["size"], 5000);
    assert_eq!(f["sha256"], sha.as_str());
    assert_eq!(f["keyId"], m["keyId"]);
    assert_eq!(f["uploadedBy"], "cli:tester");
    // Content-addressed in the data dir.
    let stored = ws.data_dir().join("firmware").join(&sha);
    assert_eq!(uploaded["image"], stored.display().to_string());
    assert_eq!(
        std::fs::read(&stored).expect("stored image"),
        std::fs::read(&img).expect("image")
    );

    let list = ws.rampart_json(&["firmware", "list"]);
    assert_eq!(list.as_array().expect("array").len(), 1);
    assert_eq!(list[0]["version"], "1.4.0");

    // The same version again is refused; nothing is replaced.
    let err = ws.rampart_fails(&["firmware", "upload", &bundle]);
    assert!(err.contains("uploaded already"), "{err}");
    assert!(stored.exists());

    let audit = ws.rampart_json(&["audit", "list"]);
    let actions: Vec<&str> = audit
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|r| r["action"].as_str())
        .collect();
    assert!(actions.contains(&"firmware-key.add"), "{actions:?}");
    assert!(actions.contains(&"firmware.upload"), "{actions:?}");
    assert_eq!(ws.rampart_json(&["audit", "verify"])["ok"], true);

    // Backups carry the images.
    let backup = ws.join("fw.backup").display().to_string();
    ws.rampart_json(&["backup", &backup]);
    let restored = ws.join("restored");
    let out = ws
        .rampart()
        .arg("--data-dir")
        .arg(&restored)
        .args(["restore", &backup])
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        std::fs::read(restored.join("firmware").join(&sha)).expect("restored image"),
        std::fs::read(&img).expect("image")
    );
}

#[test]
fn bad_bundles_are_refused_with_their_reason_and_nothing_is_stored() {
    let ws = Workspace::new();
    ws.rampart_json(&["init"]);
    let (key, public) = keygen(&ws, "release.key");
    let (other_key, other_public) = keygen(&ws, "other.key");
    ws.rampart_json(&["firmware", "key", "add", &public]);
    let img = image(&ws, "app.bin", 5000);
    let good = sign(&ws, &img, &key, "1.4.0", "good.rfw");
    let good_bytes = std::fs::read(&good).expect("read");

    let write = |name: &str, bytes: &[u8]| {
        let p = ws.join(name);
        std::fs::write(&p, bytes).expect("write");
        p.display().to_string()
    };
    let mut tampered = good_bytes.clone();
    let last = tampered.len() - 1;
    tampered[last] ^= 0x01;
    let tampered = write("tampered.rfw", &tampered);
    let wrong_key = sign(&ws, &img, &other_key, "1.4.1", "wrong-key.rfw");
    let truncated = write("truncated.rfw", &good_bytes[..good_bytes.len() - 100]);
    let mut trailing = good_bytes.clone();
    trailing.extend_from_slice(b"junk");
    let trailing = write("trailing.rfw", &trailing);
    let not_a_bundle = write("notes.txt", b"just some text, not firmware");

    for (bundle, reason) in [
        (&tampered, "SHA-256 does not match the signed manifest"),
        (&wrong_key, "which is not trusted"),
        (&truncated, "bundle is truncated"),
        (&trailing, "4 unexpected bytes after the image"),
        (&not_a_bundle, "not a firmware bundle"),
    ] {
        let err = ws.rampart_fails(&["firmware", "upload", bundle]);
        assert!(err.contains(reason), "{bundle}: {err}");
    }
    // Oversized, by the configured limit.
    let out = ws
        .rampart()
        .env("RAMPART_FIRMWARE__MAX_IMAGE_SIZE", "1000")
        .args(["firmware", "upload", &good])
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("image is 5000 bytes; the limit is 1000 bytes"),
        "{err}"
    );

    // Offline verification refuses the same way.
    let err = ws.rampart_fails(&["firmware", "verify", &good, "--pubkey", &other_public]);
    assert!(err.contains("which is not trusted"), "{err}");
    let err = ws.rampart_fails(&["firmware", "verify", &tampered, "--pubkey", &public]);
    assert!(err.contains("SHA-256 does not match"), "{err}");
    let err = ws.rampart_fails(&[
        "firmware",
        "verify",
        &good,
        "--pubkey",
        &public,
        "--device-type",
        "gateway",
    ]);
    assert!(err.contains("another device type"), "{err}");

    // Nothing stored: no record, no image.
    assert_eq!(ws.rampart_json(&["firmware", "list"]), Value::Array(vec![]));
    assert!(firmware_dir_is_empty(&ws));

    // Each refusal is audited with its reason code.
    let audit = ws.rampart_json(&["audit", "list"]);
    let reasons: Vec<&str> = audit
        .as_array()
        .expect("array")
        .iter()
        .filter(|r| r["action"] == "firmware.upload-refused")
        .filter_map(|r| r["detail"]["reason"].as_str())
        .collect();
    assert_eq!(
        reasons,
        [
            "hash-mismatch",
            "unknown-key",
            "truncated",
            "trailing-bytes",
            "not-a-bundle",
            "oversized"
        ]
    );

    // The good bundle still uploads.
    ws.rampart_json(&["firmware", "upload", &good]);
    assert!(!firmware_dir_is_empty(&ws));
}

#[test]
fn keys_rotate_several_at_once() {
    let ws = Workspace::new();
    ws.rampart_json(&["init"]);
    let (_, a) = keygen(&ws, "a.key");
    let (_, b) = keygen(&ws, "b.key");
    let (c_key, c) = keygen(&ws, "c.key");
    let added = ws.rampart_json(&["firmware", "key", "add", &a]);
    let name_a = added["name"].as_str().expect("name").to_owned();
    assert!(name_a.starts_with("key-"), "{name_a}");
    ws.rampart_json(&["firmware", "key", "add", &b, "--name", "b"]);
    ws.rampart_json(&["firmware", "key", "add", &c, "--name", "c"]);
    let err = ws.rampart_fails(&["firmware", "key", "add", &c, "--name", "c-again"]);
    assert!(err.contains("trusted already, as 'c'"), "{err}");
    // A private key is not a public key.
    let err = ws.rampart_fails(&["firmware", "key", "add", &c_key]);
    assert!(err.contains("is not an Ed25519 public key"), "{err}");

    let err = ws.rampart_fails(&["firmware", "key", "remove", &name_a, "nope"]);
    assert!(
        err.contains("no trusted firmware key named 'nope'"),
        "{err}"
    );
    assert_eq!(
        ws.rampart_json(&["firmware", "key", "list"])
            .as_array()
            .expect("array")
            .len(),
        3
    );

    let removed = ws.rampart_json(&["firmware", "key", "remove", &name_a, "b"]);
    assert_eq!(removed.as_array().expect("array").len(), 2);
    let left = ws.rampart_json(&["firmware", "key", "list"]);
    assert_eq!(left.as_array().expect("array").len(), 1);
    assert_eq!(left[0]["name"], "c");
}

#[test]
fn uploads_into_postgresql() {
    let Some(db) = PgTestDb::create_blocking() else {
        return;
    };
    let url = db.url().to_owned();
    let ws = Workspace::new();
    ws.rampart_json_with_store(&url, &["init"]);
    let (key, public) = keygen(&ws, "release.key");
    let img = image(&ws, "app.bin", 1234);
    let bundle = sign(&ws, &img, &key, "2.0.0", "app.rfw");
    ws.rampart_json_with_store(&url, &["firmware", "key", "add", &public, "--name", "r"]);
    let up = ws.rampart_json_with_store(&url, &["firmware", "upload", &bundle]);
    assert_eq!(up["firmware"]["version"], "2.0.0");
    let list = ws.rampart_json_with_store(&url, &["firmware", "list"]);
    assert_eq!(list[0]["size"], 1234);
    assert!(Path::new(up["image"].as_str().expect("path")).exists());
}

/// Runs curl as a device would fetch its image: the CA bundle, and the
/// device's certificate unless `identity` is `None`; returns the status
/// and the body.
fn curl(
    ws: &Workspace,
    dev: Option<&rampart_test_support::DeviceFiles>,
    url: &str,
    headers: &[&str],
    out: &str,
) -> (String, Vec<u8>) {
    let out = ws.join(out);
    let mut cmd = std::process::Command::new("curl");
    cmd.args(["-sS", "--max-time", "30", "-o"])
        .arg(&out)
        .args(["-w", "%{http_code}", "--cacert"])
        .arg(ws.join("devices/ca.crt"));
    if let Some(d) = dev {
        cmd.arg("--cert").arg(&d.cert).arg("--key").arg(&d.key);
    }
    for h in headers {
        cmd.args(["-H", h]);
    }
    let o = cmd.arg(url).output().expect("curl is installed");
    assert!(
        o.status.success(),
        "curl: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        std::fs::read(&out).unwrap_or_default(),
    )
}

#[test]
fn an_offered_image_downloads_with_the_device_certificate_and_resumes() {
    let ws = Workspace::new();
    ws.rampart().arg("init").assert().success();
    let (key, public) = keygen(&ws, "release.key");
    ws.rampart_json(&["firmware", "key", "add", &public, "--name", "release"]);
    let img = image(&ws, "app.bin", 150_000);
    let image_bytes = std::fs::read(&img).expect("image");
    let sha = hex::encode(Sha256::digest(&image_bytes));
    let bundle = sign(&ws, &img, &key, "1.1.0", "app.rfw");
    let up = ws.rampart_json(&["firmware", "upload", &bundle]);
    let firmware = up["firmware"]["id"].as_u64().expect("id").to_string();

    let mut serve = ws.serve(&[
        ("RAMPART_OTA__TICK", "100ms"),
        ("RAMPART_LOG__LEVEL", "debug"),
    ]);
    let mqtt = serve.listening("mqtt");
    let dev = ws.device("ota-e2e-1");
    let other = ws.device("ota-e2e-2");
    // The device says what it runs.
    let mut report = dev.mosquitto_args(mqtt);
    report.extend(
        [
            "-t",
            "devices/ota-e2e-1/state/up",
            "-q",
            "1",
            "-m",
            r#"{"fw":"1.0.0","type":"esp32c3-dht11"}"#,
        ]
        .map(String::from),
    );
    let o = rampart_test_support::mosquitto("mosquitto_pub", &report);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // It listens for offers.
    let mut listen = dev.mosquitto_args(mqtt);
    listen.extend(["-t", "devices/ota-e2e-1/ota/down", "-q", "1", "-C", "1"].map(String::from));
    let offers = rampart_test_support::spawn_mosquitto("mosquitto_sub", &listen);
    serve.wait_for(&["subscribed", "ota-e2e-1"]);
    // A campaign for it, approved; the state report may still be on its
    // way to the store, so creation is retried until it sees the device.
    let deadline = std::time::Instant::now() + rampart_test_support::wait_limit();
    loop {
        let o = ws
            .rampart_std()
            .args([
                "campaign",
                "create",
                "--name",
                "e2e",
                "--firmware",
                &firmware,
                "--devices",
                "ota-e2e-1",
                "--waves",
                "100",
                "--approve",
            ])
            .output()
            .expect("rampart campaign create");
        if o.status.success() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "campaign create: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let offer = offers.wait();
    let offer: Value = serde_json::from_slice(&offer.stdout).expect("offer JSON");
    assert_eq!(offer["type"], "offer");
    assert_eq!(offer["sha256"], sha.as_str());
    let url = offer["url"].as_str().expect("url").to_owned();
    assert!(url.contains(&format!("/ota/v1/images/{sha}?t=")), "{url}");

    // The whole image, then a resumed tail, as the device core asks.
    let (status, body) = curl(&ws, Some(&dev), &url, &[], "full.bin");
    assert_eq!(status, "200");
    assert_eq!(body, image_bytes);
    let if_range = format!("If-Range: \"{sha}\"");
    let (status, body) = curl(
        &ws,
        Some(&dev),
        &url,
        &["Range: bytes=100000-", &if_range],
        "tail.bin",
    );
    assert_eq!(status, "206");
    assert_eq!(body, &image_bytes[100_000..]);
    // Without the certificate, or with another device's, the URL is useless.
    let (status, body) = curl(&ws, None, &url, &[], "anon.json");
    assert_eq!(status, "401", "{}", String::from_utf8_lossy(&body));
    let (status, body) = curl(&ws, Some(&other), &url, &[], "other.json");
    assert_eq!(status, "403");
    assert!(String::from_utf8_lossy(&body).contains("token_device_mismatch"));
    assert!(serve.terminate(), "serve stops cleanly");
}
