//! Alerts end to end (issue 10): `rampart serve`, real MQTT devices
//! (mosquitto clients over mutual TLS), rules and channels added with the
//! CLI while `serve` runs, and a webhook receiver on 127.0.0.1 that
//! records what Rampart posts to it.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use rampart_test_support::{
    Background, DeviceFiles, Workspace, mosquitto, spawn_mosquitto, wait_limit,
};

const CONFIG: &str = "[broker]\nrate_limit_exempt = [\"127.0.0.1\", \"::1\"]\n";

/// The receiver status that means: never answer.
const HANG: u16 = 0;

/// One request the receiver got.
#[derive(Debug, Clone)]
struct Received {
    idempotency_key: String,
    body: serde_json::Value,
    /// The status it was answered with.
    status: u16,
}

/// A webhook receiver: answers every POST with the current status.
#[derive(Clone)]
struct Receiver {
    addr: SocketAddr,
    status: Arc<AtomicU16>,
    got: Arc<Mutex<Vec<Received>>>,
}

impl Receiver {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind receiver");
        let r = Receiver {
            addr: listener.local_addr().expect("addr"),
            status: Arc::new(AtomicU16::new(204)),
            got: Arc::new(Mutex::new(Vec::new())),
        };
        let me = r.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let me = me.clone();
                std::thread::spawn(move || me.answer(stream));
            }
        });
        r
    }

    fn answer(&self, stream: TcpStream) {
        let _ = stream.set_read_timeout(Some(wait_limit()));
        let mut reader = BufReader::new(stream);
        let mut length = 0usize;
        let mut key = String::new();
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                match name.to_ascii_lowercase().as_str() {
                    "content-length" => length = value.trim().parse().unwrap_or(0),
                    "idempotency-key" => key = value.trim().to_owned(),
                    _ => {}
                }
            }
        }
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let status = self.status.load(Ordering::SeqCst);
        self.got.lock().expect("lock").push(Received {
            idempotency_key: key,
            body: serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
            status,
        });
        let mut stream = reader.into_inner();
        match status {
            // A receiver that hangs: reads the request, never answers.
            HANG => {
                let mut rest = Vec::new();
                let _ = stream.read_to_end(&mut rest);
            }
            // A receiver that redirects to itself, forever.
            302 => {
                let _ = write!(
                    stream,
                    "HTTP/1.1 302 Found\r\nLocation: /hook/again\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                );
            }
            _ => {
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                );
            }
        }
    }

    fn url(&self) -> String {
        format!("http://{}/hook/secret-token", self.addr)
    }

    /// Messages accepted (2xx), as their Discord `content`.
    fn accepted(&self) -> Vec<String> {
        self.got
            .lock()
            .expect("lock")
            .iter()
            .filter(|r| (200..300).contains(&r.status))
            .map(|r| r.body["content"].as_str().unwrap_or("").to_owned())
            .collect()
    }

    /// Waits until `n` messages were accepted; returns them.
    fn wait_accepted(&self, n: usize) -> Vec<String> {
        let deadline = Instant::now() + wait_limit();
        loop {
            let got = self.accepted();
            if got.len() >= n {
                return got;
            }
            assert!(
                Instant::now() < deadline,
                "expected {n} notifications, got {got:?}"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// Waits until `n` requests arrived, whatever their answer.
    fn wait_requests(&self, n: usize) {
        let deadline = Instant::now() + wait_limit();
        while self.got.lock().expect("lock").len() < n {
            assert!(Instant::now() < deadline, "expected {n} delivery attempts");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}

fn setup() -> Workspace {
    let ws = Workspace::new();
    std::fs::write(ws.join("rampart.toml"), CONFIG).expect("config");
    ws.rampart().arg("init").assert().success();
    ws
}

const FAST: [(&str, &str); 4] = [
    ("RAMPART_CONFIG", "rampart.toml"),
    ("RAMPART_SERVE__CHANGE_POLL_INTERVAL", "50ms"),
    ("RAMPART_ALERTS__RETRY_BASE", "200ms"),
    ("RAMPART_ALERTS__RETRY_CAP", "400ms"),
];

fn add_channel(ws: &Workspace, r: &Receiver) {
    let out = ws.rampart_json(&[
        "alert",
        "channel",
        "add",
        "--name",
        "ops",
        "--kind",
        "discord",
        "--url",
        &r.url(),
        "--danger-allow-private",
    ]);
    assert_eq!(out["target"], format!("http://{}/…", r.addr));
}

/// A device connected as a background subscriber (online while it runs).
fn connect(dev: &DeviceFiles, addr: SocketAddr) -> Background {
    let mut a = dev.mosquitto_args(addr);
    a.extend(
        [
            "-V",
            "mqttv5",
            "-t",
            &format!("devices/{}/cmd/down", dev.id),
        ]
        .map(String::from),
    );
    spawn_mosquitto("mosquitto_sub", &a)
}

fn publish(dev: &DeviceFiles, addr: SocketAddr, body: &str) {
    let mut a = dev.mosquitto_args(addr);
    let topic = format!("devices/{}/telemetry/up", dev.id);
    a.extend(["-V", "mqttv5", "-q", "1", "-t", &topic, "-m", body].map(String::from));
    let out = mosquitto("mosquitto_pub", &a);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Waits until the registry shows the device online (or offline).
fn wait_online(ws: &Workspace, id: &str, online: bool) {
    let deadline = Instant::now() + wait_limit();
    loop {
        let d = ws.rampart_json(&["device", "show", id]);
        if d["online"] == online {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{id} online={online} never showed: {d}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[test]
fn a_device_going_offline_and_back_sends_one_message_each() {
    let ws = setup();
    let dev = ws.device("greenhouse-1");
    let receiver = Receiver::start();
    let mut serve = ws.serve(&FAST);
    let mqtt = serve.listening("mqtt");
    add_channel(&ws, &receiver);
    let rule = ws.rampart_json(&[
        "alert",
        "rule",
        "add",
        "--name",
        "gh-offline",
        "--expr",
        "offline for 1s",
        "--channel",
        "ops",
        "--device",
        "greenhouse-1",
    ]);
    assert_eq!(rule["expr"], "offline for 1s");
    // Unknown devices, bad expressions and unknown metrics are refused at creation.
    assert!(
        ws.rampart_fails(&[
            "alert",
            "rule",
            "add",
            "--name",
            "x",
            "--expr",
            "offline 10m",
            "--channel",
            "ops",
        ])
        .contains("expected for at word 2")
    );
    assert!(
        ws.rampart_fails(&[
            "alert",
            "rule",
            "add",
            "--name",
            "x",
            "--expr",
            "pressure > 3",
            "--channel",
            "ops",
        ])
        .contains("no device has sent the metric 'pressure'")
    );
    assert!(
        ws.rampart_fails(&[
            "alert",
            "channel",
            "add",
            "--name",
            "x",
            "--kind",
            "discord",
            "--url",
            "http://127.0.0.1:1/x",
        ])
        .contains("must use https")
    );

    let sub = connect(&dev, mqtt);
    wait_online(&ws, "greenhouse-1", true);
    drop(sub);
    let got = receiver.wait_accepted(1);
    assert!(
        got[0].starts_with("🔴 FIRING: gh-offline on greenhouse-1 (offline for 1s)"),
        "{got:?}"
    );
    let listed = ws.rampart_json(&["alert", "list"]);
    assert_eq!(
        listed["alerts"].as_array().map(Vec::len),
        Some(1),
        "{listed}"
    );

    let _back = connect(&dev, mqtt);
    let got = receiver.wait_accepted(2);
    assert!(
        got[1].starts_with("🟢 RESOLVED: gh-offline on greenhouse-1"),
        "{got:?}"
    );
    assert_eq!(got.len(), 2, "one message each: {got:?}");
    let listed = ws.rampart_json(&["alert", "list"]);
    assert_eq!(
        listed["alerts"].as_array().map(Vec::len),
        Some(0),
        "{listed}"
    );
    // The URL is a secret: never in the output, the log or the audit.
    let logs = serve.seen().join("\n");
    assert!(
        !logs.contains("secret-token"),
        "the URL leaked into the log"
    );
    let audit = ws.rampart_json(&["audit", "list"]).to_string();
    assert!(
        !audit.contains("secret-token"),
        "the URL leaked into the audit log"
    );
    assert!(serve.terminate());
}

#[test]
fn a_threshold_fires_once_and_resolves_past_its_hysteresis() {
    let ws = setup();
    let dev = ws.device("greenhouse-2");
    let receiver = Receiver::start();
    let mut serve = ws.serve(&FAST);
    let mqtt = serve.listening("mqtt");
    add_channel(&ws, &receiver);
    ws.rampart_json(&[
        "alert",
        "rule",
        "add",
        "--name",
        "hot",
        "--expr",
        "temperature > 30 hysteresis 2",
        "--channel",
        "ops",
        "--new-metric",
    ]);
    // The rule is in force within the change feed's poll interval; the
    // first reading above the limit may come before: publish until it fires.
    let deadline = Instant::now() + wait_limit();
    let mut seq = 0;
    while receiver.accepted().is_empty() {
        assert!(Instant::now() < deadline, "the rule never fired");
        seq += 1;
        publish(
            &dev,
            mqtt,
            &format!(r#"{{"seq":{seq},"m":{{"temperature":31.5}}}}"#),
        );
    }
    // Below the limit but within the hysteresis: still firing, no message.
    publish(
        &dev,
        mqtt,
        &format!(r#"{{"seq":{},"m":{{"temperature":29.5}}}}"#, seq + 1),
    );
    publish(
        &dev,
        mqtt,
        &format!(r#"{{"seq":{},"m":{{"temperature":32}}}}"#, seq + 2),
    );
    publish(
        &dev,
        mqtt,
        &format!(r#"{{"seq":{},"m":{{"temperature":27.5}}}}"#, seq + 3),
    );
    let got = receiver.wait_accepted(2);
    assert!(
        got[0].contains("FIRING: hot on greenhouse-2") && got[0].contains("value 31.5"),
        "{got:?}"
    );
    assert!(
        got[1].contains("RESOLVED: hot on greenhouse-2") && got[1].contains("value 27.5"),
        "resolved by the reading past the hysteresis, not by 29.5: {got:?}"
    );
    assert_eq!(got.len(), 2, "{got:?}");
    assert!(serve.terminate());
}

#[test]
fn notifications_survive_a_receiver_outage_and_a_restart() {
    let ws = setup();
    let dev = ws.device("greenhouse-3");
    let receiver = Receiver::start();
    receiver.status.store(503, Ordering::SeqCst);
    let mut serve = ws.serve(&FAST);
    let (mqtt, http) = serve.addresses();
    add_channel(&ws, &receiver);
    ws.rampart_json(&[
        "alert",
        "rule",
        "add",
        "--name",
        "gone",
        "--expr",
        "offline for 1s",
        "--channel",
        "ops",
    ]);
    let sub = connect(&dev, mqtt);
    wait_online(&ws, "greenhouse-3", true);
    drop(sub);
    // The receiver is down: attempts are made and refused, then retried.
    receiver.wait_requests(2);
    assert!(receiver.accepted().is_empty());
    assert!(serve.terminate());

    // Restarted with the receiver back: the firing is delivered once.
    receiver.status.store(200, Ordering::SeqCst);
    let mut serve = ws.serve_on(&mqtt.to_string(), &http.to_string(), &FAST);
    serve.listening("mqtt");
    let got = receiver.wait_accepted(1);
    assert!(got[0].contains("FIRING: gone on greenhouse-3"), "{got:?}");
    let _back = connect(&dev, mqtt);
    let got = receiver.wait_accepted(2);
    assert!(got[1].contains("RESOLVED: gone on greenhouse-3"), "{got:?}");
    let keys: Vec<String> = receiver
        .got
        .lock()
        .expect("lock")
        .iter()
        .filter(|r| r.status == 200)
        .map(|r| r.idempotency_key.clone())
        .collect();
    assert_eq!(keys.len(), 2, "each accepted once: {keys:?}");
    assert!(
        keys[0].ends_with("-firing") && keys[1].ends_with("-resolved"),
        "{keys:?}"
    );
    assert!(
        ws.rampart_json(&["alert", "dead-letters"])
            .as_array()
            .is_some_and(Vec::is_empty)
    );
    assert!(serve.terminate());
}

#[test]
fn a_paused_campaign_fires_a_rollout_alert_and_resuming_resolves_it() {
    let ws = setup();
    let dev = ws.device("greenhouse-4");
    let receiver = Receiver::start();
    let mut serve = ws.serve(&FAST);
    let mqtt = serve.listening("mqtt");
    add_channel(&ws, &receiver);
    ws.rampart_json(&[
        "alert",
        "rule",
        "add",
        "--name",
        "rollouts",
        "--expr",
        "rollout halted",
        "--channel",
        "ops",
    ]);
    // A release and a device that reports the type it is for.
    let key = ws.join("release.key").display().to_string();
    ws.rampart_json(&["firmware", "keygen", "--out", &key]);
    ws.rampart_json(&[
        "firmware",
        "key",
        "add",
        &format!("{key}.pub"),
        "--name",
        "release",
    ]);
    std::fs::write(ws.join("app.bin"), vec![7u8; 4096]).expect("image");
    let bundle = ws.join("app.rfw").display().to_string();
    ws.rampart_json(&[
        "firmware",
        "sign",
        &ws.join("app.bin").display().to_string(),
        "--key",
        &key,
        "--device-type",
        "sensor",
        "--version",
        "2.0.0",
        "--security-version",
        "1",
        "--out",
        &bundle,
    ]);
    let firmware = ws.rampart_json(&["firmware", "upload", &bundle])["firmware"]["id"]
        .as_u64()
        .expect("id")
        .to_string();
    let mut a = dev.mosquitto_args(mqtt);
    a.extend(
        [
            "-V",
            "mqttv5",
            "-q",
            "1",
            "-t",
            "devices/greenhouse-4/state/up",
            "-m",
            r#"{"fw":"1.0.0","type":"sensor"}"#,
        ]
        .map(String::from),
    );
    assert!(mosquitto("mosquitto_pub", &a).status.success());
    let deadline = Instant::now() + wait_limit();
    let campaign = loop {
        let out = ws
            .rampart()
            .args([
                "campaign",
                "create",
                "--name",
                "2.0",
                "--firmware",
                &firmware,
                "--all",
                "--json",
            ])
            .output()
            .expect("run");
        if out.status.success() {
            let c: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
            break c["id"].as_u64().expect("id").to_string();
        }
        assert!(
            Instant::now() < deadline,
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    ws.rampart_json(&["campaign", "approve", &campaign]);
    ws.rampart_json(&["campaign", "pause", &campaign]);
    let got = receiver.wait_accepted(1);
    assert!(
        got[0].starts_with(&format!(
            "🔴 FIRING: rollouts on campaign:{campaign} (rollout halted)"
        )),
        "{got:?}"
    );
    ws.rampart_json(&["campaign", "resume", &campaign]);
    let got = receiver.wait_accepted(2);
    assert!(
        got[1].starts_with(&format!("🟢 RESOLVED: rollouts on campaign:{campaign}")),
        "{got:?}"
    );
    assert!(serve.terminate());
}

#[test]
fn channels_and_rules_of_the_config_file_are_created_at_start() {
    let ws = setup();
    let dev = ws.device("greenhouse-5");
    let receiver = Receiver::start();
    std::fs::write(
        ws.join("rampart.toml"),
        format!(
            "{CONFIG}\n[[alerts.channels]]\nname = \"ops\"\nkind = \"discord\"\n\
             url_env = \"OPS_HOOK_URL\"\ndanger_allow_private = true\n\n\
             [[alerts.rules]]\nname = \"gone\"\nexpr = \"offline for 1s\"\nchannel = \"ops\"\n\
             device = \"greenhouse-5\"\n"
        ),
    )
    .expect("config");
    let url = receiver.url();
    let mut env = FAST.to_vec();
    env.push(("OPS_HOOK_URL", &url));
    let mut serve = ws.serve(&env);
    let mqtt = serve.listening("mqtt");
    serve.wait_for(&["rampart serve ready"]);
    let listed = ws.rampart_json(&["alert", "list"]);
    assert_eq!(listed["channels"][0]["name"], "ops", "{listed}");
    assert_eq!(listed["rules"][0]["expr"], "offline for 1s", "{listed}");
    assert_eq!(listed["rules"][0]["createdBy"], "config", "{listed}");
    let sub = connect(&dev, mqtt);
    wait_online(&ws, "greenhouse-5", true);
    drop(sub);
    let got = receiver.wait_accepted(1);
    assert!(got[0].contains("FIRING: gone on greenhouse-5"), "{got:?}");
    assert!(serve.terminate());
    // A declaration that does not check stops the start with the reason.
    let config = std::fs::read_to_string(ws.join("rampart.toml")).expect("config");
    std::fs::write(
        ws.join("rampart.toml"),
        format!("{config}\n[[alerts.rules]]\nname = \"broken\"\nexpr = \"offline 10m\"\nchannel = \"ops\"\n"),
    )
    .expect("config");
    let mut failed = ws.serve(&FAST);
    failed.wait_for(&["alert rule 'broken'", "expected for at word 2"]);
}

#[test]
fn bad_receivers_are_bounded_and_never_hold_up_the_others() {
    let ws = setup();
    let dev = ws.device("greenhouse-6");
    let (good, hanging, looping) = (Receiver::start(), Receiver::start(), Receiver::start());
    hanging.status.store(HANG, Ordering::SeqCst);
    looping.status.store(302, Ordering::SeqCst);
    let mut env = FAST.to_vec();
    env.push(("RAMPART_ALERTS__DELIVERY_TIMEOUT", "300ms"));
    let mut serve = ws.serve(&env);
    let mqtt = serve.listening("mqtt");
    for (name, url, private) in [
        ("good", good.url(), true),
        ("hanging", hanging.url(), true),
        ("looping", looping.url(), true),
        // A name that resolves to loopback passes the URL check but is
        // refused at connect time: DNS cannot smuggle a private address in.
        (
            "rebinding",
            format!("https://localhost:{}/hook", good.addr.port()),
            false,
        ),
    ] {
        let mut args = vec![
            "alert", "channel", "add", "--name", name, "--kind", "discord", "--url", &url,
        ];
        if private {
            args.push("--danger-allow-private");
        }
        ws.rampart_json(&args);
        ws.rampart_json(&[
            "alert",
            "rule",
            "add",
            "--name",
            name,
            "--expr",
            "offline for 1s",
            "--channel",
            name,
            "--device",
            "greenhouse-6",
        ]);
    }
    let sub = connect(&dev, mqtt);
    wait_online(&ws, "greenhouse-6", true);
    drop(sub);
    // The good receiver hears at once, whatever the others do.
    let got = good.wait_accepted(1);
    assert!(got[0].contains("FIRING: good on greenhouse-6"), "{got:?}");
    // The hanging one is tried again after each time-out.
    hanging.wait_requests(2);
    assert!(hanging.accepted().is_empty());
    // The looping and the rebinding ones end as dead letters, with why.
    let deadline = Instant::now() + wait_limit();
    let dead = loop {
        let dead = ws.rampart_json(&["alert", "dead-letters"]);
        if dead.as_array().is_some_and(|d| d.len() >= 2) {
            break dead;
        }
        assert!(Instant::now() < deadline, "{dead}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let why = |rule: &str| {
        dead.as_array()
            .into_iter()
            .flatten()
            .find(|d| d["rule"] == rule)
            .and_then(|d| d["lastError"].as_str())
            .unwrap_or_default()
            .to_owned()
    };
    assert!(why("looping").contains("more than 3 redirects"), "{dead}");
    assert!(why("rebinding").contains("not a public address"), "{dead}");
    assert_eq!(
        good.accepted().len(),
        1,
        "the rebinding channel never reached it"
    );
    assert!(serve.terminate());
}

#[test]
fn security_rules_fire_on_handshake_failures_and_acl_denials() {
    let ws = setup();
    let dev = ws.device("greenhouse-7");
    let receiver = Receiver::start();
    let mut serve = ws.serve(&FAST);
    let mqtt = serve.listening("mqtt");
    add_channel(&ws, &receiver);
    ws.rampart_json(&[
        "alert",
        "rule",
        "add",
        "--name",
        "scan",
        "--expr",
        "handshake-failures > 2 in 1m",
        "--channel",
        "ops",
    ]);
    ws.rampart_json(&[
        "alert",
        "rule",
        "add",
        "--name",
        "snooping",
        "--expr",
        "acl-denials",
        "--channel",
        "ops",
        "--device",
        "greenhouse-7",
    ]);
    // Garbage instead of a TLS handshake from one address, until the rule
    // (in force within the change feed's poll interval) fires.
    let deadline = Instant::now() + wait_limit();
    while receiver.accepted().is_empty() {
        assert!(
            Instant::now() < deadline,
            "the handshake-failures rule never fired"
        );
        let mut s = TcpStream::connect(mqtt).expect("connect");
        let _ = s.write_all(b"GET / HTTP/1.0\r\n\r\n");
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest);
    }
    let got = receiver.accepted();
    assert!(got[0].contains("FIRING: scan on 127.0.0.1"), "{got:?}");
    // A device publishing on another device's topic is refused by the ACL.
    let mut a = dev.mosquitto_args(mqtt);
    a.extend(
        [
            "-V",
            "mqttv5",
            "-q",
            "1",
            "-t",
            "devices/greenhouse-8/telemetry/up",
            "-m",
            "{}",
        ]
        .map(String::from),
    );
    while receiver.accepted().len() < 2 {
        assert!(
            Instant::now() < deadline,
            "the acl-denials rule never fired"
        );
        let _ = mosquitto("mosquitto_pub", &a);
    }
    let got = receiver.accepted();
    assert!(
        got[1].contains("FIRING: snooping on greenhouse-7"),
        "{got:?}"
    );
    // A payload the pipeline refuses.
    ws.rampart_json(&[
        "alert",
        "rule",
        "add",
        "--name",
        "garbled",
        "--expr",
        "rejected-payloads",
        "--channel",
        "ops",
    ]);
    let deadline = Instant::now() + wait_limit();
    let mut seq = 0;
    while receiver.accepted().len() < 3 {
        assert!(
            Instant::now() < deadline,
            "the rejected-payloads rule never fired"
        );
        seq += 1;
        publish(
            &dev,
            mqtt,
            &format!(r#"{{"seq":{seq},"m":{{"temperature":"hot"}}}}"#),
        );
    }
    let got = receiver.accepted();
    assert!(
        got[2].contains("FIRING: garbled on greenhouse-7"),
        "{got:?}"
    );
    assert!(serve.terminate());
}
