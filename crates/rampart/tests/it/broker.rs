//! The embedded broker through the real binary, with real mosquitto clients
//! over mutual TLS.

use rampart_test_support::{DeviceFiles, Serve, Workspace, mosquitto, spawn_mosquitto};

/// A reader identity that may subscribe to every device topic (an extra
/// ACL rule, as an operator would configure for a consumer).
const CONFIG: &str = r#"
[broker]
rate_limit_exempt = ["127.0.0.1", "::1"]

[[broker.acl]]
identity = "reader"
access = "subscribe"
topic = "devices/#"
"#;

struct Setup {
    ws: Workspace,
    serve: Serve,
    addr: std::net::SocketAddr,
}

fn start() -> Setup {
    let ws = Workspace::new();
    std::fs::write(ws.join("rampart.toml"), CONFIG).expect("config");
    ws.rampart().arg("init").assert().success();
    let mut serve = ws.serve(&[
        ("RAMPART_CONFIG", "rampart.toml"),
        ("RAMPART_LOG__LEVEL", "debug"),
    ]);
    let addr = serve.listening("mqtt");
    Setup { ws, serve, addr }
}

fn args(d: &DeviceFiles, addr: std::net::SocketAddr, v: &str, rest: &[&str]) -> Vec<String> {
    let mut a = d.mosquitto_args(addr);
    a.extend(["-V".into(), v.into()]);
    a.extend(rest.iter().map(|s| (*s).to_owned()));
    a
}

#[test]
fn devices_publish_and_a_reader_receives_over_mtls_v5_and_v311() {
    let mut s = start();
    let dev = s.ws.device("greenhouse-1");
    let reader = s.ws.device("reader");
    for v in ["mqttv5", "mqttv311"] {
        let sub = spawn_mosquitto(
            "mosquitto_sub",
            &args(
                &reader,
                s.addr,
                v,
                &["-t", "devices/+/telemetry/up", "-q", "1", "-C", "2", "-v"],
            ),
        );
        s.serve.wait_for(&["subscribed", "reader"]);
        for (qos, payload) in [
            ("1", r#"{"seq":1,"m":{"temperature":21.5}}"#),
            ("2", r#"{"seq":2,"m":{"temperature":21.7}}"#),
        ] {
            let out = mosquitto(
                "mosquitto_pub",
                &args(
                    &dev,
                    s.addr,
                    v,
                    &[
                        "-t",
                        "devices/greenhouse-1/telemetry/up",
                        "-q",
                        qos,
                        "-m",
                        payload,
                    ],
                ),
            );
            assert!(
                out.status.success(),
                "{v} pub: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let out = sub.wait();
        let got = String::from_utf8_lossy(&out.stdout);
        assert!(
            got.contains(r#"devices/greenhouse-1/telemetry/up {"seq":1,"m":{"temperature":21.5}}"#),
            "{v}: {got}"
        );
        assert!(got.contains(r#""seq":2"#), "{v}: {got}");
    }
    assert!(s.serve.terminate());
}

#[test]
fn retained_messages_reach_later_subscribers() {
    let mut s = start();
    let dev = s.ws.device("lamp-1");
    let reader = s.ws.device("reader");
    let out = mosquitto(
        "mosquitto_pub",
        &args(
            &dev,
            s.addr,
            "mqttv5",
            &[
                "-t",
                "devices/lamp-1/state/up",
                "-q",
                "1",
                "-r",
                "-m",
                r#"{"on":true}"#,
            ],
        ),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = mosquitto(
        "mosquitto_sub",
        &args(
            &reader,
            s.addr,
            "mqttv5",
            &["-t", "devices/+/state/up", "-C", "1", "-v"],
        ),
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        r#"devices/lamp-1/state/up {"on":true}"#
    );
    assert!(s.serve.terminate());
}

#[test]
fn wrong_client_id_foreign_ca_and_acl_denials_are_refused() {
    let mut s = start();
    let dev = s.ws.device("meter-1");
    s.ws.device("meter-2");

    // Client id must equal the certificate CN.
    let mut a = args(
        &dev,
        s.addr,
        "mqttv5",
        &["-t", "devices/meter-1/telemetry/up", "-m", "x"],
    );
    let i = a.iter().position(|x| x == "-i").expect("-i") + 1;
    a[i] = "meter-2".into();
    let out = mosquitto("mosquitto_pub", &a);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .to_lowercase()
            .contains("client identifier not valid"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    s.serve.wait_for(&["does not match client id"]);

    // A certificate from another Rampart's CA (same names, other keys).
    let other = Workspace::new();
    other.rampart().arg("init").assert().success();
    let stray = other.device("meter-1");
    let mut a = stray.mosquitto_args(s.addr);
    let ca = a.iter().position(|x| x == "--cafile").expect("cafile") + 1;
    a[ca] = dev.ca.display().to_string();
    a.extend(["-t", "devices/meter-1/telemetry/up", "-m", "x"].map(String::from));
    let out = mosquitto("mosquitto_pub", &a);
    assert!(!out.status.success(), "foreign CA accepted");
    s.serve.wait_for(&["TLS handshake failed"]);

    // A device may not subscribe outside its own downlinks.
    let out = mosquitto(
        "mosquitto_sub",
        &args(
            &dev,
            s.addr,
            "mqttv5",
            &["-t", "devices/meter-2/cmd/down", "-C", "1"],
        ),
    );
    let said = String::from_utf8_lossy(&out.stderr).to_lowercase();
    assert!(
        said.contains("denied"),
        "mosquitto_sub reports the denial: {said}"
    );
    s.serve.wait_for(&["subscribe denied by ACL", "meter-1"]);
    // Publishing to another device's topic: v5 PUBACK says not authorized.
    let out = mosquitto(
        "mosquitto_pub",
        &args(
            &dev,
            s.addr,
            "mqttv5",
            &["-t", "devices/meter-2/telemetry/up", "-q", "1", "-m", "x"],
        ),
    );
    s.serve.wait_for(&["publish denied by ACL", "meter-1"]);
    drop(out);
    assert!(s.serve.terminate());
}

#[test]
fn revoked_and_disabled_devices_are_cut_off_and_stay_out() {
    let mut s = start();
    let dev = s.ws.device("valve-1");
    let other = s.ws.device("valve-2");

    let sub = spawn_mosquitto(
        "mosquitto_sub",
        &args(
            &dev,
            s.addr,
            "mqttv5",
            &["-t", "devices/valve-1/cmd/down", "-v"],
        ),
    );
    s.serve.wait_for(&["subscribed", "valve-1"]);
    let listed = s.ws.rampart_json(&["device", "show", "valve-1"]);
    assert_eq!(listed["online"], true, "presence recorded");

    s.ws.rampart_json(&["device", "revoke", "valve-1", "--reason", "key-compromise"]);
    s.serve.wait_for(&["closing session", "valve-1", "revoked"]);
    let out = sub.wait();
    assert!(
        !out.status.success() || out.stdout.is_empty(),
        "subscriber cut off"
    );
    let out = mosquitto(
        "mosquitto_pub",
        &args(
            &dev,
            s.addr,
            "mqttv5",
            &["-t", "devices/valve-1/telemetry/up", "-m", "x"],
        ),
    );
    assert!(!out.status.success(), "revoked device reconnected");

    let sub = spawn_mosquitto(
        "mosquitto_sub",
        &args(
            &other,
            s.addr,
            "mqttv311",
            &["-t", "devices/valve-2/cmd/down"],
        ),
    );
    s.serve.wait_for(&["subscribed", "valve-2"]);
    s.ws.rampart_json(&["device", "disable", "valve-2"]);
    s.serve
        .wait_for(&["closing session", "valve-2", "disabled"]);
    sub.wait();
    let out = mosquitto(
        "mosquitto_pub",
        &args(
            &other,
            s.addr,
            "mqttv311",
            &["-t", "devices/valve-2/telemetry/up", "-m", "x"],
        ),
    );
    assert!(!out.status.success(), "disabled device reconnected");
    s.ws.rampart_json(&["device", "enable", "valve-2"]);
    let out = mosquitto(
        "mosquitto_pub",
        &args(
            &other,
            s.addr,
            "mqttv311",
            &["-t", "devices/valve-2/telemetry/up", "-m", "x"],
        ),
    );
    assert!(
        out.status.success(),
        "enabled again: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The disconnect is recorded as presence after mosquitto_pub exits:
    // poll for it rather than race it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while s.ws.rampart_json(&["device", "show", "valve-2"])["online"] != false {
        assert!(
            std::time::Instant::now() < deadline,
            "valve-2 still online after it disconnected"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(s.serve.terminate());
}

fn service(ws: &Workspace, name: &str) -> DeviceFiles {
    let dir = ws.join("services");
    let out = ws.rampart_json(&[
        "service",
        "create",
        name,
        "--out",
        dir.to_str().expect("utf8"),
    ]);
    assert_eq!(out["service"]["state"], "active");
    DeviceFiles {
        id: name.to_owned(),
        cert: dir.join(format!("{name}.crt")),
        key: dir.join(format!("{name}.key")),
        ca: dir.join("ca.crt"),
    }
}

#[test]
fn services_read_telemetry_and_send_commands_within_their_rights() {
    let mut s = start();
    let dev = s.ws.device("pump-1");
    let consumer = service(&s.ws, "consumer");
    let err =
        s.ws.rampart_fails(&["service", "create", "pump-1", "--out", "x"]);
    assert!(err.contains("already registered"), "one namespace: {err}");
    assert_eq!(
        s.ws.rampart_json(&["service", "list"])
            .as_array()
            .map(Vec::len),
        Some(1)
    );

    // Telemetry up to the service.
    let sub = spawn_mosquitto(
        "mosquitto_sub",
        &args(
            &consumer,
            s.addr,
            "mqttv5",
            &["-t", "devices/#", "-q", "1", "-C", "1", "-v"],
        ),
    );
    s.serve.wait_for(&["subscribed", "consumer"]);
    let out = mosquitto(
        "mosquitto_pub",
        &args(
            &dev,
            s.addr,
            "mqttv5",
            &[
                "-t",
                "devices/pump-1/telemetry/up",
                "-q",
                "1",
                "-m",
                r#"{"seq":7,"m":{"flow":7}}"#,
            ],
        ),
    );
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&sub.wait().stdout).trim(),
        r#"devices/pump-1/telemetry/up {"seq":7,"m":{"flow":7}}"#
    );

    // A command down to the device.
    let dsub = spawn_mosquitto(
        "mosquitto_sub",
        &args(
            &dev,
            s.addr,
            "mqttv5",
            &["-t", "devices/pump-1/+/down", "-q", "1", "-C", "1", "-v"],
        ),
    );
    s.serve.wait_for(&["subscribed", "pump-1"]);
    // Rampart's own downlinks are not the service's to send.
    let out = mosquitto(
        "mosquitto_pub",
        &args(
            &consumer,
            s.addr,
            "mqttv5",
            &[
                "-t",
                "devices/pump-1/ota/down",
                "-q",
                "1",
                "-m",
                "fake offer",
            ],
        ),
    );
    drop(out);
    s.serve.wait_for(&["publish denied by ACL", "consumer"]);
    let out = mosquitto(
        "mosquitto_pub",
        &args(
            &consumer,
            s.addr,
            "mqttv5",
            &["-t", "devices/pump-1/cmd/down", "-q", "1", "-m", "start"],
        ),
    );
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&dsub.wait().stdout).trim(),
        "devices/pump-1/cmd/down start"
    );

    // Revoking the service cuts it off.
    let sub = spawn_mosquitto(
        "mosquitto_sub",
        &args(&consumer, s.addr, "mqttv5", &["-t", "devices/#"]),
    );
    s.serve.wait_for(&["subscribed", "consumer"]);
    s.ws.rampart_json(&["service", "revoke", "consumer"]);
    s.serve.wait_for(&["closing session", "consumer"]);
    sub.wait();
    let out = mosquitto(
        "mosquitto_pub",
        &args(
            &consumer,
            s.addr,
            "mqttv5",
            &["-t", "devices/pump-1/cmd/down", "-m", "x"],
        ),
    );
    assert!(!out.status.success(), "revoked service reconnected");
    assert!(s.serve.terminate());
}

#[test]
fn persistent_sessions_keep_queued_messages_across_kill_9() {
    let mut s = start();
    let dev = s.ws.device("tank-1");
    let reader = s.ws.device("reader");
    let persistent = |rest: &[&str]| {
        let mut a = args(
            &reader,
            s.addr,
            "mqttv5",
            &[
                "-c",
                "-x",
                "3600",
                "-q",
                "1",
                "-t",
                "devices/+/telemetry/up",
            ],
        );
        a.extend(rest.iter().map(|x| (*x).to_owned()));
        a
    };
    // Subscribe with a persistent session, then go away.
    let out = mosquitto("mosquitto_sub", &persistent(&["-E"]));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for i in 1..=3 {
        let out = mosquitto(
            "mosquitto_pub",
            &args(
                &dev,
                s.addr,
                "mqttv5",
                &[
                    "-t",
                    "devices/tank-1/telemetry/up",
                    "-q",
                    "1",
                    "-m",
                    &format!(r#"{{"seq":{i},"m":{{"level":{i}}}}}"#),
                ],
            ),
        );
        assert!(out.status.success(), "publish {i} acknowledged");
    }
    // Every PUBACK above was sent after the queued copy was durable.
    s.serve.kill();

    let mut serve = s.ws.serve(&[
        ("RAMPART_CONFIG", "rampart.toml"),
        ("RAMPART_LOG__LEVEL", "debug"),
    ]);
    let addr = serve.listening("mqtt");
    serve.wait_for(&["restored broker state", "sessions=1", "queued=3"]);
    let mut a = persistent(&["-C", "3"]);
    let port = a.iter().position(|x| x == "-p").expect("-p") + 1;
    a[port] = addr.port().to_string();
    let out = mosquitto("mosquitto_sub", &a);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        (1..=3)
            .map(|i| format!("{{\"seq\":{i},\"m\":{{\"level\":{i}}}}}\n"))
            .collect::<String>()
    );
    assert!(serve.terminate());
}

/// The SHA-256 fingerprint of the certificate the server presents.
fn served_fingerprint(ws: &Workspace, addr: std::net::SocketAddr, dev: &DeviceFiles) -> String {
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "openssl s_client -connect {addr} -servername localhost -cert {} -key {} </dev/null 2>/dev/null | openssl x509 -noout -fingerprint -sha256",
            dev.cert.display(),
            dev.key.display()
        ))
        .current_dir(ws.path())
        .output()
        .expect("openssl");
    let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(text.contains('='), "no certificate served: {text}");
    text
}

#[test]
fn a_renewed_server_certificate_is_served_without_a_restart() {
    let ws = Workspace::new();
    std::fs::write(ws.join("rampart.toml"), CONFIG).expect("config");
    ws.rampart().arg("init").assert().success();
    let mut serve = ws.serve(&[
        ("RAMPART_CONFIG", "rampart.toml"),
        ("RAMPART_SERVE__TLS_RELOAD_INTERVAL", "100ms"),
    ]);
    let addr = serve.listening("mqtt");
    let dev = ws.device("probe-1");
    let before = served_fingerprint(&ws, addr, &dev);
    std::fs::remove_file(ws.data_dir().join("pki/server.crt")).expect("remove");
    ws.rampart().arg("init").assert().success();
    // The reloader polls; the CRL published at start may already have
    // triggered one reload, so wait for the certificate itself to change.
    let deadline = std::time::Instant::now() + rampart_test_support::wait_limit();
    let after = loop {
        let now = served_fingerprint(&ws, addr, &dev);
        if now != before || std::time::Instant::now() > deadline {
            break now;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert_ne!(before, after, "the new certificate is served");
    serve.wait_for(&["reloaded TLS"]);
    // And devices still connect.
    let out = mosquitto(
        "mosquitto_pub",
        &args(
            &dev,
            addr,
            "mqttv5",
            &["-t", "devices/probe-1/telemetry/up", "-m", "x"],
        ),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(serve.terminate());
}

#[test]
fn paho_mqtt_clients_interoperate() {
    let mut s = start();
    let keys = s.ws.join("devices");
    for id in ["reader", "paho-dev", "paho-will"] {
        s.ws.device(id);
    }
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop/paho_interop.py");
    let out = std::process::Command::new("python3")
        .arg(&script)
        .args([s.addr.ip().to_string(), s.addr.port().to_string()])
        .arg(&keys)
        .output()
        .expect("python3 with paho-mqtt (pip install paho-mqtt)");
    assert!(
        out.status.success(),
        "paho interop failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("all checks passed"));
    assert!(s.serve.terminate());
}
