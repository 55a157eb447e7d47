//! Enrollment end to end: tokens from the real CLI, `serve` as a real
//! process, a device key made here enrolling over real HTTPS (trusting only
//! Rampart's CA), then connecting to the broker with what it received.

use rampart_test_support::https::{client_trusting, enroll_body, p256_csr, post};
use rampart_test_support::{DeviceFiles, Workspace, mosquitto};
use serde_json::Value;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// An initialised workspace and a token made by `enroll-token create ARGS --json`.
fn workspace_with_token(args: &[&str]) -> (Workspace, Value) {
    let ws = Workspace::new();
    ws.rampart().arg("init").assert().success();
    let mut all = vec!["enroll-token", "create"];
    all.extend_from_slice(args);
    let created = ws.rampart_json(&all);
    (ws, created)
}

/// The actions of the audit log, oldest first.
fn audit_actions(ws: &Workspace) -> Vec<String> {
    let audit = ws.rampart_json(&["audit", "list"]);
    audit
        .as_array()
        .expect("rows")
        .iter()
        .filter_map(|row| row["action"].as_str().map(str::to_owned))
        .collect()
}

#[test]
fn a_device_enrolls_over_https_and_connects_with_its_certificate() {
    let (ws, created) = workspace_with_token(&[
        "--uses",
        "2",
        "--expires",
        "1h",
        "--id-prefix",
        "gh-",
        "--owner",
        "ann",
    ]);
    let token = created["token"].as_str().expect("token").to_owned();
    let mut serve = ws.serve(&[]);
    let (mqtt, http) = serve.addresses();

    let client = client_trusting(&ws.ca_bundle());
    let (key, csr) = p256_csr("gh-1");
    let rt = runtime();
    let r = rt.block_on(post(
        &client,
        http,
        "/api/v1/enroll",
        Some(&token),
        enroll_body(&csr),
    ));
    assert_eq!(r.status, 201, "{:?}", r.body);
    serve.wait_for(&["device enrolled", "gh-1", "127.0.0.1"]);

    // The device keeps its key and what it was given, and connects.
    let dir = ws.join("gh-1");
    std::fs::create_dir_all(&dir).expect("dir");
    let files = DeviceFiles {
        id: "gh-1".into(),
        cert: dir.join("chain.pem"),
        key: dir.join("key.pem"),
        ca: dir.join("ca.pem"),
    };
    for (path, field) in [(&files.cert, "chain"), (&files.ca, "caChain")] {
        std::fs::write(path, r.body[field].as_str().expect(field)).expect("write");
    }
    std::fs::write(&files.key, key).expect("write key");
    let mut args = files.mosquitto_args(mqtt);
    args.extend(
        [
            "-t",
            "devices/gh-1/telemetry/up",
            "-q",
            "1",
            "-m",
            r#"{"seq":1,"m":{"temperature":21.5}}"#,
        ]
        .map(String::from),
    );
    let out = mosquitto("mosquitto_pub", &args);
    assert!(
        out.status.success(),
        "the enrolled device cannot publish: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let device = ws.rampart_json(&["device", "show", "gh-1"]);
    assert_eq!(device["state"], "unbound");
    assert_eq!(
        device["owner"],
        serde_json::json!({ "type": "user", "id": "ann" })
    );
    assert_eq!(device["fingerprint"], r.body["fingerprint"]);
    let tokens = ws.rampart_json(&["enroll-token", "list"]);
    assert_eq!(tokens[0]["uses_used"], 1);

    // An existing id is refused and takes no use; the refusal is audited.
    let (_, again) = p256_csr("gh-1");
    let r = rt.block_on(post(
        &client,
        http,
        "/api/v1/enroll",
        Some(&token),
        enroll_body(&again),
    ));
    assert_eq!((r.status, r.code()), (409, "id_taken"));
    let tokens = ws.rampart_json(&["enroll-token", "list"]);
    assert_eq!(tokens[0]["uses_used"], 1);
    let actions = audit_actions(&ws);
    for action in ["device.enroll", "device.enroll-refused"] {
        assert!(actions.iter().any(|a| a == action), "{actions:?}");
    }
    assert!(serve.terminate(), "serve stops cleanly");
    assert!(
        serve.seen().iter().all(|l| !l.contains(&token)),
        "the token was logged"
    );
}

#[test]
fn enroll_tokens_are_created_listed_and_revoked_from_the_cli() {
    let (ws, created) =
        workspace_with_token(&["--uses", "3", "--expires", "24h", "--id-prefix", "lab-"]);
    let token = created["token"].as_str().expect("token");
    assert!(token.starts_with("rmp_enr_"), "{token}");
    assert_eq!(created["uses"], 3);
    assert_eq!(created["uses_left"], 3);
    assert_eq!(created["state"], "active");
    assert_eq!(created["id_prefix"], "lab-");
    assert_eq!(created["owner"], Value::Null);
    assert_eq!(created["created_by"], "cli:tester");
    let expires = created["expires_at"].as_str().expect("RFC 3339 expiry");
    let expires =
        time::OffsetDateTime::parse(expires, &time::format_description::well_known::Rfc3339)
            .expect("RFC 3339");
    let ahead = expires - time::OffsetDateTime::now_utc();
    assert!(
        ahead > time::Duration::hours(23) && ahead <= time::Duration::hours(24),
        "{ahead}"
    );
    let id = created["id"].as_str().expect("id").to_owned();

    // Text mode prints the token alone on standard output.
    let out = ws
        .rampart()
        .args(["enroll-token", "create"])
        .output()
        .expect("run");
    assert!(out.status.success());
    let printed = String::from_utf8(out.stdout).expect("UTF-8");
    assert!(printed.trim().starts_with("rmp_enr_") && printed.trim().lines().count() == 1);
    assert!(String::from_utf8_lossy(&out.stderr).contains("shown once"));

    let list = ws.rampart_json(&["enroll-token", "list"]);
    let rows = list.as_array().expect("array");
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0]["id"], id.as_str());
    assert_eq!(rows[1]["uses"], 1, "defaults: one use");
    let listing = list.to_string();
    assert!(
        !listing.contains("rmp_enr_"),
        "list shows a token: {listing}"
    );
    assert!(!listing.contains("sha256:"), "list shows a hash: {listing}");

    let revoked = ws.rampart_json(&["enroll-token", "revoke", &id]);
    assert_eq!(revoked["state"], "revoked");
    assert!(revoked["revoked_at"].is_string());
    let list = ws.rampart_json(&["enroll-token", "list"]);
    assert_eq!(list[0]["state"], "revoked");

    let err = ws.rampart_fails(&["enroll-token", "revoke", &id]);
    assert!(err.contains("already revoked"), "{err}");
    let err = ws.rampart_fails(&["enroll-token", "revoke", "nope"]);
    assert!(err.contains("no enrollment token with id 'nope'"), "{err}");
    let err = ws.rampart_fails(&["enroll-token", "create", "--id-prefix", "a/b"]);
    assert!(err.contains("id prefix 'a/b'"), "{err}");
    let err = ws.rampart_fails(&["enroll-token", "create", "--uses", "0"]);
    assert!(err.contains("--uses"), "{err}");
    let err = ws.rampart_fails(&["enroll-token", "create", "--owner", "two words"]);
    assert!(err.contains("not a user name"), "{err}");

    let actions = audit_actions(&ws);
    assert_eq!(
        actions
            .iter()
            .filter(|a| a.starts_with("enrollment-token."))
            .map(String::as_str)
            .collect::<Vec<_>>(),
        [
            "enrollment-token.create",
            "enrollment-token.create",
            "enrollment-token.revoke"
        ]
    );
}
