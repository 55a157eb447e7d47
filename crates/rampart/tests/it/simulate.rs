//! `rampart simulate` against `rampart serve`, both as real processes:
//! enrollment over HTTPS, streaming over mutual TLS, exactly-once delivery
//! under flaky connections, resuming after kill -9, and the bad inputs
//! (wrong CA, refused tokens, an unreachable server, malformed downlinks).
//!
//! Sizes can be raised through the environment (`RAMPART_TEST_SIM_DEVICES`,
//! `RAMPART_TEST_SIM_FLAKY_DEVICES`); the defaults keep the suite in tens
//! of seconds in the dev profile.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use rampart_test_support::{Serve, Workspace, mosquitto, spawn_mosquitto, wait_limit};
use serde_json::Value;

/// Loopback may open as many connections as the tests need.
const CONFIG: &str = "[broker]\nrate_limit_exempt = [\"127.0.0.1\", \"::1\"]\n";

fn env_size(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A running server with its addresses and CA bundle.
pub(crate) struct Platform {
    pub(crate) ws: Workspace,
    pub(crate) serve: Serve,
    mqtt: SocketAddr,
    pub(crate) http: SocketAddr,
    ca: PathBuf,
}

pub(crate) fn platform() -> Platform {
    platform_with(CONFIG)
}

/// [`platform`] with another configuration file.
fn platform_with(config: &str) -> Platform {
    let ws = Workspace::new();
    std::fs::write(ws.join("rampart.toml"), config).expect("config");
    ws.rampart().arg("init").assert().success();
    let mut serve = ws.serve(&[("RAMPART_CONFIG", "rampart.toml")]);
    let (mqtt, http) = serve.addresses();
    serve.wait_for(&["rampart serve ready"]);
    let out = ws
        .rampart()
        .args(["ca", "export"])
        .output()
        .expect("export");
    assert!(out.status.success());
    let ca = ws.join("ca.pem");
    std::fs::write(&ca, &out.stdout).expect("write ca");
    Platform {
        ws,
        serve,
        mqtt,
        http,
        ca,
    }
}

impl Platform {
    /// A new enrollment token.
    fn token(&self, uses: usize, extra: &[&str]) -> String {
        let uses = uses.to_string();
        let mut args = vec!["enroll-token", "create", "--uses", &uses];
        args.extend_from_slice(extra);
        let out = self.ws.rampart_json(&args);
        out["token"].as_str().expect("token").to_owned()
    }

    /// `rampart simulate` against this server with every interval short.
    fn simulate(&self, state_dir: &str, args: &[&str]) -> Command {
        self.simulate_trusting(&self.ca, state_dir, args)
    }

    /// [`Platform::simulate`] verifying the server against `ca`.
    fn simulate_trusting(&self, ca: &std::path::Path, state_dir: &str, args: &[&str]) -> Command {
        let mut cmd = self.ws.rampart_std();
        cmd.args(["simulate", "--json", "--server"])
            .arg(self.mqtt.to_string())
            .arg("--http")
            .arg(self.http.to_string())
            .arg("--ca")
            .arg(ca)
            .arg("--state-dir")
            .arg(self.ws.join(state_dir))
            .args([
                "--backoff-min",
                "50ms",
                "--backoff-max",
                "400ms",
                "--connect-rate",
                "1000",
                "--enroll-rate",
                "1000",
                "--io-timeout",
                "5s",
                "--progress-every",
                "200ms",
                "--batch-age",
                "300ms",
            ])
            .args(args);
        cmd
    }

    /// Runs `simulate` to its end; returns exit success, summary, stderr.
    fn run(&self, state_dir: &str, args: &[&str]) -> (bool, Value, String) {
        self.run_trusting(&self.ca, state_dir, args)
    }

    /// [`Platform::run`] verifying the server against `ca`.
    fn run_trusting(
        &self,
        ca: &std::path::Path,
        state_dir: &str,
        args: &[&str],
    ) -> (bool, Value, String) {
        let out = assert_cmd::Command::from_std(self.simulate_trusting(ca, state_dir, args))
            .timeout(wait_limit() * 2)
            .output()
            .expect("run simulate");
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        let summary = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "simulate printed no JSON summary ({e}): {}\n{stderr}",
                String::from_utf8_lossy(&out.stdout)
            )
        });
        (out.status.success(), summary, stderr)
    }

    /// Starts `simulate` in the background; its JSON summary goes to `out`.
    fn spawn(&self, state_dir: &str, out: &str, args: &[&str]) -> Serve {
        let mut cmd = self.simulate(state_dir, args);
        let file = std::fs::File::create(self.ws.join(out)).expect("summary file");
        cmd.stdout(Stdio::from(file)).stderr(Stdio::piped());
        Serve::spawn(cmd)
    }

    /// One device `PREFIX-0001` enrolled with its own token and connected,
    /// reading five times a second until terminated.
    pub(crate) fn one_connected_device(&self, prefix: &str) -> Serve {
        let token = self.token(1, &["--id-prefix", prefix]);
        let mut sim = self.spawn(
            "state",
            "summary.json",
            &[
                "--devices",
                "1",
                "--id-prefix",
                prefix,
                "--token",
                &token,
                "--rate",
                "5/s",
            ],
        );
        sim.wait_until("connected", |l| {
            l.starts_with("progress") && l.contains("connected 1/1")
        });
        sim
    }

    /// Stored readings: device → seq → points stored with that seq.
    fn stored(&self) -> BTreeMap<String, BTreeMap<u64, usize>> {
        let out = self
            .ws
            .rampart()
            .args(["telemetry", "export", "--format", "jsonl"])
            .output()
            .expect("export");
        assert!(out.status.success());
        let mut stored: BTreeMap<String, BTreeMap<u64, usize>> = BTreeMap::new();
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let point: Value = serde_json::from_str(line).expect("a JSON point per line");
            let device = point["device"].as_str().expect("device").to_owned();
            let seq = point["seq"].as_u64().expect("seq");
            *stored.entry(device).or_default().entry(seq).or_default() += 1;
        }
        stored
    }

    /// Asserts that the store holds exactly the readings the simulator
    /// says were acknowledged over `runs` (on one state dir): per device,
    /// as many distinct seqs as acknowledged readings, each with its two
    /// metrics, and no conflict.
    fn assert_exactly_once(&self, runs: &[&Value]) {
        let stored = self.stored();
        let mut acked: BTreeMap<String, u64> = BTreeMap::new();
        for summary in runs {
            for d in summary["devices"].as_array().expect("devices") {
                let id = d["id"].as_str().expect("id").to_owned();
                *acked.entry(id).or_default() +=
                    d["counts"]["acknowledged"].as_u64().expect("acknowledged");
            }
        }
        for (id, acked) in acked {
            let seqs = stored.get(&id).cloned().unwrap_or_default();
            assert_eq!(
                seqs.len() as u64,
                acked,
                "{id}: the store holds {} readings, the simulator saw {acked} acknowledged",
                seqs.len()
            );
            assert!(
                seqs.values().all(|&points| points == 2),
                "{id}: every reading has temperature and humidity: {seqs:?}"
            );
        }
        let rejected = self.ws.rampart_json(&["telemetry", "rejected"]);
        assert_eq!(
            rejected,
            serde_json::json!([]),
            "no conflicts, nothing refused"
        );
    }
}

fn count(summary: &Value, name: &str) -> u64 {
    summary["fleet"][name]
        .as_u64()
        .unwrap_or_else(|| panic!("no fleet.{name} in {summary}"))
}

/// The number after `name ` in a progress line.
fn figure(line: &str, name: &str) -> u64 {
    line.split(&format!("{name} "))
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

fn read_summary(p: &Platform, file: &str) -> Value {
    let text = std::fs::read_to_string(p.ws.join(file)).expect("summary file");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("summary is not JSON ({e}): {text}"))
}

#[test]
fn a_fleet_enrolls_streams_and_every_reading_is_stored_once() {
    let n = env_size("RAMPART_TEST_SIM_DEVICES", 200);
    let p = platform();
    let token = p.token(n, &["--id-prefix", "fleet-"]);
    let (ok, summary, stderr) = p.run(
        "state",
        &[
            "--devices",
            &n.to_string(),
            "--token",
            &token,
            "--id-prefix",
            "fleet-",
            "--rate",
            "4/s",
            "--batch-size",
            "4",
            "--duration",
            "4s",
        ],
    );
    assert!(ok, "{stderr}");
    assert_eq!(count(&summary, "devices"), n as u64);
    assert_eq!(count(&summary, "enrolled"), n as u64, "{stderr}");
    assert_eq!(count(&summary, "enrollFailures"), 0, "{stderr}");
    assert_eq!(summary["drained"], true, "{summary}");
    assert_eq!(summary["idPrefix"], "fleet-");
    let readings = count(&summary, "readings");
    assert!(readings >= n as u64, "every device read: {readings}");
    assert_eq!(count(&summary, "acknowledged"), readings);
    for d in summary["devices"].as_array().expect("devices") {
        assert!(d["id"].as_str().is_some_and(|id| id.starts_with("fleet-")));
        assert_eq!(d["state"], "unbound", "{d}");
        assert!(d["counts"]["acknowledged"].as_u64() > Some(0), "{d}");
    }
    p.assert_exactly_once(&[&summary]);

    // The server registered every device as unbound, with its own key.
    let devices = p.ws.rampart_json(&["device", "list", "--search", "fleet-"]);
    let devices = devices.as_array().expect("list");
    assert_eq!(devices.len(), n);
    assert!(
        devices.iter().all(|d| d["state"] == "unbound"),
        "{devices:?}"
    );
    // Each key lives only in the state dir, private to the user.
    let key = p.ws.join("state/devices/fleet-0001").join("key-0.pem");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&key).expect("key file").permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
}

#[test]
fn flaky_connections_neither_lose_nor_duplicate_readings() {
    let n = env_size("RAMPART_TEST_SIM_FLAKY_DEVICES", 40);
    let p = platform();
    let token = p.token(n, &[]);
    let (ok, summary, stderr) = p.run(
        "state",
        &[
            "--devices",
            &n.to_string(),
            "--token",
            &token,
            "--rate",
            "10/s",
            "--batch-size",
            "3",
            "--flaky",
            "0.2",
            "--duration",
            "5s",
        ],
    );
    assert!(ok, "{stderr}");
    assert!(count(&summary, "flakyDrops") > n as u64, "{summary}");
    assert!(count(&summary, "connects") > 2 * n as u64, "{summary}");
    assert_eq!(summary["drained"], true, "{summary}");
    // Resends after drops count as sent again and are acknowledged once
    // (whether a drop caught a batch in flight depends on timing, so sent
    // may equal acknowledged on a busy machine).
    assert!(count(&summary, "sent") >= count(&summary, "acknowledged"));
    assert_eq!(count(&summary, "acknowledged"), count(&summary, "readings"));
    assert_eq!(count(&summary, "dropped"), 0);
    p.assert_exactly_once(&[&summary]);
}

#[test]
fn a_killed_simulator_resumes_its_identities_and_sequence_numbers() {
    let p = platform();
    let token = p.token(3, &[]);
    let args = ["--devices", "3", "--rate", "10/s", "--batch-size", "2"];
    let mut first = p.spawn(
        "state",
        "first.json",
        &[&args[..], &["--token", &token]].concat(),
    );
    first.wait_until("30 readings acknowledged", |l| {
        l.starts_with("progress") && figure(l, "acked") >= 30
    });
    first.kill();
    let before = p.stored();
    assert_eq!(before.len(), 3, "{before:?}");

    // No token this time: the devices must not need to enroll again.
    let (ok, summary, stderr) = p.run("state", &[&args[..], &["--duration", "2s"]].concat());
    assert!(ok, "{stderr}");
    assert_eq!(count(&summary, "enrolled"), 3);
    assert_eq!(count(&summary, "enrollFailures"), 0);
    let tokens = p.ws.rampart_json(&["enroll-token", "list"]);
    assert_eq!(tokens[0]["uses_used"], 3, "{tokens}");
    let after = p.stored();
    for d in summary["devices"].as_array().expect("devices") {
        let id = d["id"].as_str().expect("id");
        assert!(
            before.contains_key(id),
            "{id} is one of the first run's devices"
        );
        assert_eq!(d["boot"], 1, "{d}");
        // Every reading of the second boot is above every reading of the first.
        let first_max = before[id].keys().max().copied().unwrap_or(0);
        let second: BTreeSet<u64> = after[id].keys().copied().filter(|s| s >> 32 == 1).collect();
        assert!(!second.is_empty(), "{id} stored readings of boot 1");
        assert!(second.iter().all(|s| *s > first_max));
        let stats = p.ws.rampart_json(&["telemetry", "stats", id]);
        assert_eq!(stats["stats"]["conflicts"], 0, "{stats}");
        assert!(stats["stats"]["flag_reason"].is_null(), "{stats}");
    }
    assert_eq!(summary["drained"], true);
    assert_eq!(
        p.ws.rampart_json(&["telemetry", "rejected"]),
        serde_json::json!([])
    );
}

#[test]
fn a_wrong_ca_refuses_the_server_and_nothing_is_enrolled() {
    let p = platform();
    let token = p.token(1, &[]);
    let other = Workspace::new();
    other.rampart().arg("init").assert().success();
    let out = other
        .rampart()
        .args(["ca", "export"])
        .output()
        .expect("export");
    let wrong = p.ws.join("wrong-ca.pem");
    std::fs::write(&wrong, &out.stdout).expect("write");

    let (ok, summary, stderr) = p.run_trusting(
        &wrong,
        "state",
        &[
            "--devices",
            "1",
            "--token",
            &token,
            "--duration",
            "1s",
            "--drain-timeout",
            "1s",
        ],
    );
    assert!(!ok);
    assert!(
        stderr.contains("no simulated device ever connected"),
        "{stderr}"
    );
    assert!(
        stderr.contains("enrollment failed")
            && stderr.contains("invalid peer certificate")
            && stderr.contains("rampart ca export"),
        "{stderr}"
    );
    assert_eq!(count(&summary, "enrolled"), 0);
    assert!(count(&summary, "enrollFailures") >= 1);
    let tokens = p.ws.rampart_json(&["enroll-token", "list"]);
    assert_eq!(tokens[0]["uses_used"], 0, "{tokens}");

    // Enrolled with the right CA, a device still refuses a server its
    // --ca does not vouch for on the MQTT port.
    let (ok, _, stderr) = p.run(
        "state",
        &["--devices", "1", "--token", &token, "--duration", "500ms"],
    );
    assert!(ok, "{stderr}");
    let (ok, summary, stderr) = p.run_trusting(
        &wrong,
        "state",
        &[
            "--devices",
            "1",
            "--duration",
            "1s",
            "--drain-timeout",
            "1s",
        ],
    );
    assert!(!ok);
    assert_eq!(count(&summary, "connects"), 0);
    assert!(
        stderr.contains("the server's certificate is not trusted"),
        "{stderr}"
    );
}

#[test]
fn refused_tokens_are_reported_per_device_and_the_rest_of_the_fleet_runs() {
    let p = platform();
    // Two uses for three devices: one device is refused. The fleet runs
    // until that is seen, not for a fixed time: on a loaded machine a
    // second may pass before every device has enrolled or read once.
    let token = p.token(2, &[]);
    let mut sim = p.spawn(
        "used-up",
        "used-up.json",
        &["--devices", "3", "--token", &token],
    );
    let refusal = sim.wait_until("a device refused for the used-up token", |l| {
        l.contains("token_used_up")
    });
    let refused_id = refusal
        .split("device_id")
        .nth(1)
        .map(|rest| {
            rest.trim_start_matches(|c: char| !c.is_ascii_alphanumeric())
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
                .next()
                .unwrap_or_default()
                .to_owned()
        })
        .unwrap_or_default();
    assert!(!refused_id.is_empty(), "no device id in {refusal}");
    sim.wait_until("the two others enrolled and connected", |l| {
        l.starts_with("progress") && l.contains("connected 2/3") && figure(l, "enrolled") == 2
    });
    // Its first reading, kept in its ring (persisted at once).
    let ring =
        p.ws.join("used-up")
            .join("devices")
            .join(&refused_id)
            .join("ring.bin");
    let deadline = std::time::Instant::now() + wait_limit();
    while !ring.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "{refused_id} never buffered a reading"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let ok = sim.terminate();
    let stderr = sim.seen().join("\n");
    assert!(ok, "{stderr}");
    let summary = read_summary(&p, "used-up.json");
    assert_eq!(count(&summary, "enrolled"), 2, "{summary}");
    let refused: Vec<&Value> = summary["devices"]
        .as_array()
        .expect("devices")
        .iter()
        .filter(|d| d["enrolled"] == false)
        .collect();
    assert_eq!(refused.len(), 1, "{summary}");
    let id = refused[0]["id"].as_str().expect("id");
    assert_eq!(id, refused_id);
    assert_eq!(refused[0]["state"], "needs a new token", "{summary}");
    // It kept reading while it could not deliver.
    assert!(refused[0]["counts"]["buffered"].as_u64() > Some(0));
    assert!(
        stderr
            .lines()
            .any(|l| l.contains(id) && l.contains("token_used_up")),
        "{stderr}"
    );

    // An expired token.
    let token = p.token(1, &["--expires", "1s"]);
    let deadline = std::time::Instant::now() + wait_limit();
    while p
        .ws
        .rampart_json(&["enroll-token", "list"])
        .as_array()
        .expect("tokens")
        .iter()
        .any(|t| t["state"] == "active")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the token never expired"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let (ok, summary, stderr) = p.run(
        "expired",
        &[
            "--devices",
            "1",
            "--token",
            &token,
            "--duration",
            "1s",
            "--drain-timeout",
            "1s",
        ],
    );
    assert!(!ok);
    assert!(stderr.contains("token_expired"), "{stderr}");
    assert_eq!(summary["devices"][0]["state"], "needs a new token");
}

#[test]
fn readings_buffered_while_the_server_is_down_arrive_once_it_is_back() {
    let mut p = platform();
    let token = p.token(3, &[]);
    let (ok, enrolled, stderr) = p.run(
        "state",
        &["--devices", "3", "--token", &token, "--duration", "500ms"],
    );
    assert!(ok, "{stderr}");
    assert!(p.serve.terminate(), "serve stops");

    let mut sim = p.spawn(
        "state",
        "summary.json",
        &["--devices", "3", "--rate", "10/s", "--batch-size", "2"],
    );
    sim.wait_for(&["server unreachable", "readings stay buffered"]);
    sim.wait_until("readings buffered while offline", |l| {
        l.starts_with("progress") && figure(l, "buffered") >= 15
    });

    let (mqtt, http) = (p.mqtt.to_string(), p.http.to_string());
    p.serve =
        p.ws.serve_on(&mqtt, &http, &[("RAMPART_CONFIG", "rampart.toml")]);
    p.serve.wait_for(&["rampart serve ready"]);
    sim.wait_until("all three reconnected", |l| {
        l.starts_with("progress") && l.contains("connected 3/3")
    });
    assert!(sim.terminate(), "simulate exits 0 on SIGTERM");
    let summary = read_summary(&p, "summary.json");
    assert_eq!(summary["drained"], true, "{summary}");
    assert!(count(&summary, "connectFailures") > 0);
    assert_eq!(count(&summary, "acknowledged"), count(&summary, "readings"));
    p.assert_exactly_once(&[&enrolled, &summary]);
}

#[test]
fn commands_state_requests_and_malformed_downlinks() {
    let p = platform();
    let mut sim = p.one_connected_device("cmd");
    let id = "cmd-0001";
    // Two service identities: a subscriber whose session persists, and a
    // publisher (a client id is its certificate's CN).
    for name in ["ops", "ops-pub"] {
        let svc =
            p.ws.rampart_json(&["service", "create", name, "--out", "svc"]);
        assert_eq!(svc["service"]["state"], "active", "{svc}");
    }
    let dir = p.ws.join("svc");
    let base = |client: &str| -> Vec<String> {
        vec![
            "-h".into(),
            "127.0.0.1".into(),
            "-p".into(),
            p.mqtt.port().to_string(),
            "--cafile".into(),
            dir.join("ca.crt").display().to_string(),
            "--cert".into(),
            dir.join(format!("{client}.crt")).display().to_string(),
            "--key".into(),
            dir.join(format!("{client}.key")).display().to_string(),
            "-i".into(),
            client.into(),
            "-V".into(),
            "mqttv5".into(),
        ]
    };
    // A persistent subscription first, so that no reply published before
    // the receiving client connects is lost (MQTT 5 session expiry).
    let mut sub_args = base("ops");
    sub_args.extend(
        [
            "-c",
            "-x",
            "60",
            "-q",
            "1",
            "-t",
            &format!("devices/{id}/cmd/up"),
            "-t",
            &format!("devices/{id}/state/up"),
        ]
        .map(String::from),
    );
    let mut subscribe = sub_args.clone();
    subscribe.push("-E".into());
    let out = mosquitto("mosquitto_sub", &subscribe);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let publish = |topic: &str, body: &str| {
        let mut a = base("ops-pub");
        a.extend(["-q", "1", "-t", topic, "-m", body].map(String::from));
        let out = mosquitto("mosquitto_pub", &a);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    // Garbage first: the device counts it and carries on.
    publish(&format!("devices/{id}/cmd/down"), "not json at all");
    publish(&format!("devices/{id}/state/down"), "[1,2]");
    sim.wait_for(&[id, "downlink ignored"]);
    publish(
        &format!("devices/{id}/cmd/down"),
        r#"{"id":"c-1","name":"ping"}"#,
    );
    publish(
        &format!("devices/{id}/cmd/down"),
        r#"{"id":"c-2","name":"self-destruct"}"#,
    );
    publish(&format!("devices/{id}/state/down"), "{}");
    publish(
        &format!("devices/{id}/cmd/down"),
        r#"{"id":"c-3","name":"reboot"}"#,
    );
    sub_args.extend(["-v", "-C", "4"].map(String::from));
    let out = spawn_mosquitto("mosquitto_sub", &sub_args).wait();
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with(&format!("devices/{id}/cmd/up"))
                && l.contains(r#""id":"c-1""#)
                && l.contains(r#""status":"ok""#)
                && l.contains("pong")),
        "{text}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains(r#""id":"c-2""#) && l.contains(r#""status":"unknown""#)),
        "{text}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with(&format!("devices/{id}/state/up"))
                && l.contains(r#""sensor":"dht11""#)),
        "{text}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains(r#""id":"c-3""#) && l.contains(r#""status":"ok""#)),
        "{text}"
    );
    // After the reboot its readings carry the next boot number.
    let deadline = std::time::Instant::now() + wait_limit();
    while !p
        .stored()
        .get(id)
        .is_some_and(|seqs| seqs.keys().any(|s| s >> 32 == 1))
    {
        assert!(
            std::time::Instant::now() < deadline,
            "no reading of boot 1 stored"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(sim.terminate());
    let summary = read_summary(&p, "summary.json");
    assert!(count(&summary, "malformedDownlinks") >= 2, "{summary}");
    assert_eq!(count(&summary, "commands"), 3);
    assert_eq!(summary["devices"][0]["boot"], 1, "{summary}");
    assert_eq!(summary["drained"], true);
    p.assert_exactly_once(&[&summary]);
}

#[test]
fn a_renewal_cycle_supersedes_and_revokes_the_old_certificate() {
    let p = platform();
    let token = p.token(1, &["--id-prefix", "renew"]);
    let common = ["--devices", "1", "--id-prefix", "renew", "--rate", "5/s"];
    let (ok, enrolled, stderr) = p.run(
        "state",
        &[&common[..], &["--token", &token, "--duration", "500ms"]].concat(),
    );
    assert!(ok, "{stderr}");
    let old = enrolled["devices"][0]["serial"]
        .as_str()
        .expect("serial")
        .to_owned();

    // `--renew-every` stands in for two thirds of a year-long validity.
    let mut sim = p.spawn(
        "state",
        "summary.json",
        &[&common[..], &["--renew-every", "1s", "-v"]].concat(),
    );
    sim.wait_for(&["renew-0001", "renewal complete"]);
    assert!(sim.terminate());
    let summary = read_summary(&p, "summary.json");
    assert!(count(&summary, "renewals") >= 1, "{summary}");
    let new = summary["devices"][0]["serial"].as_str().expect("serial");
    assert_ne!(new, old);
    let shown = p.ws.rampart_json(&["device", "show", "renew-0001"]);
    assert_eq!(shown["serial"], new, "{shown}");

    // The old certificate goes on the CRL as superseded (serve re-signs
    // the CRL after the new one's first connection).
    let old = old.to_ascii_lowercase();
    let deadline = std::time::Instant::now() + wait_limit();
    loop {
        let crl = p.ws.rampart().args(["ca", "crl"]).output().expect("ca crl");
        assert!(crl.status.success());
        std::fs::write(p.ws.join("crl.pem"), &crl.stdout).expect("write CRL");
        let text =
            p.ws.openssl_ok(&["crl", "-in", "crl.pem", "-noout", "-text"])
                .to_ascii_lowercase();
        if text.contains(&old) && text.contains("superseded") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{old} never appeared on the CRL as superseded: {text}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    // The first key is gone once the new certificate worked.
    let dir = p.ws.join("state/devices/renew-0001");
    assert!(!dir.join("key-0.pem").exists());
    assert!(dir.join("key-1.pem").exists());
    // Readings flowed across the renewal, each stored once.
    assert_eq!(summary["drained"], true);
    p.assert_exactly_once(&[&enrolled, &summary]);
}

#[test]
fn a_claim_is_confirmed_by_the_simulated_device() {
    let p = platform();
    let mut sim = p.one_connected_device("claim");
    // The claim code is on the device's label: its state dir here.
    let identity: Value = serde_json::from_str(
        &std::fs::read_to_string(p.ws.join("state/devices/claim-0001/identity.json"))
            .expect("identity"),
    )
    .expect("identity JSON");
    let code = identity["claimCode"].as_str().expect("claim code");
    let claimed = p.ws.rampart_json(&[
        "device",
        "claim",
        "claim-0001",
        "--code",
        code,
        "--owner",
        "user:ann",
        "--wait",
        "20s",
    ]);
    assert_eq!(claimed["status"], "bound", "{claimed}");
    let shown = p.ws.rampart_json(&["device", "show", "claim-0001"]);
    assert_eq!(shown["state"], "bound");
    assert!(sim.terminate());
    let summary = read_summary(&p, "summary.json");
    assert_eq!(count(&summary, "claimsConfirmed"), 1, "{summary}");
    assert_eq!(summary["devices"][0]["state"], "bound", "{summary}");
    let identity: Value = serde_json::from_str(
        &std::fs::read_to_string(p.ws.join("state/devices/claim-0001/identity.json"))
            .expect("identity"),
    )
    .expect("identity JSON");
    assert_eq!(identity["boundTo"], "user:ann");
}

#[test]
fn deep_sleeping_devices_wake_flush_disconnect_and_sleep() {
    let p = platform();
    let token = p.token(2, &[]);
    let (ok, summary, stderr) = p.run(
        "state",
        &[
            "--devices",
            "2",
            "--token",
            &token,
            "--sleep-cycle",
            "400ms",
            "--format",
            "cbor",
            "--duration",
            "3s",
        ],
    );
    assert!(ok, "{stderr}");
    // One connection per wake: several per device in three seconds.
    for d in summary["devices"].as_array().expect("devices") {
        assert!(d["counts"]["connects"].as_u64() >= Some(4), "{d}");
        let id = d["id"].as_str().expect("id");
        let stats = p.ws.rampart_json(&["telemetry", "stats", id]);
        let clean = stats["presence"]
            .as_array()
            .expect("presence")
            .iter()
            .filter(|e| e["reason"] == "clean")
            .count();
        assert!(
            clean >= 3,
            "it disconnected cleanly before each sleep: {stats}"
        );
    }
    assert_eq!(summary["drained"], true, "{summary}");
    assert_eq!(count(&summary, "acknowledged"), count(&summary, "readings"));
    p.assert_exactly_once(&[&summary]);
}

#[test]
fn a_revoked_device_is_refused_logs_why_and_keeps_buffering() {
    let p = platform();
    let token = p.token(1, &["--id-prefix", "rev"]);
    let mut sim = p.spawn(
        "state",
        "summary.json",
        &[
            "--devices",
            "1",
            "--id-prefix",
            "rev",
            "--token",
            &token,
            "--rate",
            "10/s",
            "--drain-timeout",
            "500ms",
        ],
    );
    sim.wait_until("connected", |l| {
        l.starts_with("progress") && l.contains("connected 1/1")
    });
    p.ws.rampart_json(&["device", "revoke", "rev-0001", "--reason", "key-compromise"]);
    let refused = sim.wait_for(&["rev-0001", "connection failed"]);
    // Refused either in the handshake (the new CRL is loaded) or, if the
    // device reconnects before the TLS layer reloaded it, by the broker's
    // registry check; both say why.
    assert!(
        refused.contains("rejected this device's certificate")
            || refused.contains("CONNACK NotAuthorized"),
        "{refused}"
    );
    sim.wait_until("readings buffered after the revocation", |l| {
        l.starts_with("progress") && figure(l, "buffered") >= 10
    });
    assert!(sim.terminate(), "simulate exits 0 on SIGTERM");
    let summary = read_summary(&p, "summary.json");
    assert_eq!(summary["drained"], false);
    assert!(count(&summary, "connectFailures") >= 1, "{summary}");
    assert!(count(&summary, "buffered") >= 10, "{summary}");
    // Nothing it read was lost: what was not acknowledged is in its ring.
    assert_eq!(
        count(&summary, "readings"),
        count(&summary, "acknowledged") + count(&summary, "buffered")
    );
}

/// One HTTPS request of the console test: `(status, body as JSON or text)`.
fn console_call(
    rt: &tokio::runtime::Runtime,
    client: &reqwest::Client,
    method: &str,
    url: String,
    session: &(String, String),
    body: Option<serde_json::Value>,
) -> (u16, Value, String) {
    rt.block_on(async {
        let mut r = match method {
            "POST" => client.post(url),
            _ => client.get(url),
        }
        .header("cookie", &session.0)
        .header("x-csrf-token", &session.1);
        if let Some(b) = body {
            r = r
                .header("content-type", "application/json")
                .body(b.to_string());
        }
        let response = r.send().await.expect("HTTPS");
        let status = response.status().as_u16();
        let text = response.text().await.unwrap_or_default();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::Null),
            text,
        )
    })
}

#[test]
fn the_console_claims_a_simulated_device_over_mqtt_streams_it_and_revokes_it() {
    let mut p = platform();
    let mut sim = p.one_connected_device("web");
    let identity: Value = serde_json::from_str(
        &std::fs::read_to_string(p.ws.join("state/devices/web-0001/identity.json"))
            .expect("identity"),
    )
    .expect("identity JSON");
    let code = identity["claimCode"]
        .as_str()
        .expect("claim code")
        .to_owned();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let client = rampart_test_support::https::client_trusting_without_redirects(&p.ws.ca_bundle());
    let http = p.http;

    // The owner, created through the printed setup URL.
    let url = p.serve.setup_url();
    let token = url
        .split_once("token=")
        .map(|(_, t)| t.to_owned())
        .expect("token");
    let (session, csrf) = rt.block_on(async {
        let r = client
            .post(format!("https://{http}/api/v1/setup"))
            .header("content-type", "application/json")
            .body(
                serde_json::json!({ "token": token, "name": "ann", "password": "violet tractor sunrise 42" })
                    .to_string(),
            )
            .send()
            .await
            .expect("setup");
        assert_eq!(r.status().as_u16(), 201);
        let cookie = r
            .headers()
            .get("set-cookie")
            .and_then(|v| v.to_str().ok())
            .and_then(|c| c.split(';').next())
            .expect("cookie")
            .to_owned();
        let body: Value = serde_json::from_str(&r.text().await.expect("body")).expect("JSON");
        (cookie, body["csrfToken"].as_str().expect("csrf").to_owned())
    });
    let s = (session, csrf);

    // Claim: the server sends the nonce over MQTT, the simulated device
    // answers on bind/up, the claim is bound to the signed-in user.
    let (status, claim, text) = console_call(
        &rt,
        &client,
        "POST",
        format!("https://{http}/api/v1/claims"),
        &s,
        Some(serde_json::json!({ "deviceId": "web-0001", "claimCode": code })),
    );
    assert_eq!(status, 201, "{text}");
    let claim_url = format!("https://{http}/api/v1/claims/{}", claim["id"]);
    let deadline = std::time::Instant::now() + wait_limit();
    loop {
        let (_, c, text) = console_call(&rt, &client, "GET", claim_url.clone(), &s, None);
        if c["status"] == "bound" {
            break;
        }
        assert_eq!(c["status"], "pending", "{text}");
        assert!(std::time::Instant::now() < deadline, "never bound: {text}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let (_, d, _) = console_call(
        &rt,
        &client,
        "GET",
        format!("https://{http}/api/v1/devices/web-0001"),
        &s,
        None,
    );
    assert_eq!(d["device"]["owner"], "user:ann", "{d}");

    // The live stream carries the device's committed readings.
    let seen = rt.block_on(async {
        let mut r = client
            .get(format!("https://{http}/api/v1/devices/web-0001/events"))
            .header("cookie", &s.0)
            .send()
            .await
            .expect("events");
        let mut text = String::new();
        while !text.contains("event: reading") {
            match tokio::time::timeout(wait_limit(), r.chunk()).await {
                Ok(Ok(Some(c))) => text.push_str(&String::from_utf8_lossy(&c)),
                _ => break,
            }
        }
        text
    });
    assert!(seen.contains("event: reading"), "{seen}");

    // Revocation from the console cuts the device off.
    let (status, _, text) = console_call(
        &rt,
        &client,
        "POST",
        format!("https://{http}/api/v1/devices/web-0001/revoke"),
        &s,
        Some(serde_json::json!({ "reason": "key-compromise" })),
    );
    assert_eq!(status, 200, "{text}");
    let deadline = std::time::Instant::now() + wait_limit();
    loop {
        let (_, d, text) = console_call(
            &rt,
            &client,
            "GET",
            format!("https://{http}/api/v1/devices/web-0001"),
            &s,
            None,
        );
        assert_eq!(d["device"]["state"], "revoked", "{text}");
        if d["device"]["online"] == false {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "still online: {text}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let audit = p.ws.rampart_json(&["audit", "list"]);
    let by_ann =
        audit.as_array().expect("rows").iter().any(|r| {
            r["actor"] == "ann" && r["action"].as_str().is_some_and(|a| a.contains("revoke"))
        });
    assert!(by_ann, "{audit}");
    assert!(sim.terminate());
}

/// Offers stand in for the campaign engine: one service identity may
/// publish on `ota/down` (Rampart publishes there itself otherwise).
const OTA_CONFIG: &str = "[broker]\nrate_limit_exempt = [\"127.0.0.1\", \"::1\"]\n\n\
[[broker.acl]]\nidentity = \"ota-pub\"\naccess = \"publish\"\ntopic = \"devices/+/ota/down\"\n";

/// Release `1.1.0` of `rampart-sim` (a 200 kB image), signed with a new
/// key that the server trusts, and uploaded.
struct Release {
    /// The public key file (devices trust it with `--ota-trust`).
    public: String,
    /// The image.
    image: Vec<u8>,
    /// The bundle file.
    bundle: String,
    /// Its number in the store.
    firmware: u64,
}

impl Release {
    fn upload(p: &Platform) -> Self {
        let key = p.ws.join("release.key").display().to_string();
        p.ws.rampart_json(&["firmware", "keygen", "--out", &key]);
        let public = format!("{key}.pub");
        p.ws.rampart_json(&["firmware", "key", "add", &public, "--name", "release"]);
        let image: Vec<u8> = (0..200_000usize).map(|i| (i * 17 % 251) as u8).collect();
        let image_path = p.ws.join("app.bin");
        std::fs::write(&image_path, &image).expect("image");
        let bundle = p.ws.join("app.rfw").display().to_string();
        p.ws.rampart_json(&[
            "firmware",
            "sign",
            &image_path.display().to_string(),
            "--key",
            &key,
            "--device-type",
            "rampart-sim",
            "--version",
            "1.1.0",
            "--security-version",
            "1",
            "--out",
            &bundle,
        ]);
        let uploaded = p.ws.rampart_json(&["firmware", "upload", &bundle]);
        let firmware = uploaded["firmware"]["id"].as_u64().expect("firmware id");
        Release {
            public,
            image,
            bundle,
            firmware,
        }
    }
}

/// What an update run of [`update_fleet`] produced.
struct UpdateRun {
    /// Device id → its `--ota-fault` kind (printed by the simulator).
    faults: BTreeMap<String, String>,
    /// Device id → its `ota/up` reports other than `downloading`, as
    /// `status` or `status:reason`, in order.
    reports: BTreeMap<String, Vec<String>>,
    summary: Value,
    /// Device id → the state it last reported, as the server stored it.
    reported: BTreeMap<String, Value>,
}

/// A server with a trusted release key and an uploaded 200 kB image
/// `1.1.0`, a simulated fleet trusting the key, and service identities
/// to publish offers (standing in for the campaign engine) and read the
/// reports.
struct UpdateBench {
    p: Platform,
    sim: Serve,
    ids: Vec<String>,
    faults: BTreeMap<String, String>,
    manifest_hex: String,
    signature_hex: String,
    sha: String,
    size: usize,
    tokens: rampart_ota::download::TokenKey,
    sub_args: Vec<String>,
    reports: BTreeMap<String, Vec<String>>,
}

impl UpdateBench {
    fn start(devices: usize, args: &[&str]) -> Self {
        let p = platform_with(OTA_CONFIG);
        let release = Release::upload(&p);
        let (public, image, bundle_path) = (release.public, release.image, release.bundle);
        let bundle = std::fs::read(&bundle_path).expect("bundle");
        let head = rampart_core::ota::parse_head(&bundle).expect("a bundle");

        let n = devices.to_string();
        let token = p.token(devices, &["--id-prefix", "upd"]);
        let mut sim_args = vec![
            "--devices",
            &n,
            "--id-prefix",
            "upd",
            "--token",
            &token,
            "--rate",
            "5/s",
            "--ota-trust",
            &public,
        ];
        sim_args.extend_from_slice(args);
        let mut sim = p.spawn("state", "summary.json", &sim_args);
        let connected = format!("connected {devices}/{devices}");
        sim.wait_until("all connected", |l| {
            l.starts_with("progress") && l.contains(&connected)
        });
        // The fault lines come before the fleet runs.
        let faults: BTreeMap<String, String> = sim
            .seen()
            .iter()
            .filter_map(|l| l.strip_prefix("ota-fault id="))
            .filter_map(|rest| rest.split_once(" kind="))
            .map(|(id, kind)| (id.to_owned(), kind.to_owned()))
            .collect();
        for name in ["ota-pub", "ota-sub"] {
            let svc =
                p.ws.rampart_json(&["service", "create", name, "--out", "svc"]);
            assert_eq!(svc["service"]["state"], "active", "{svc}");
        }
        // The server's download token key, as the campaign engine has it.
        let console_key =
            std::fs::read_to_string(p.ws.data_dir().join("console.key")).expect("key");
        let console_key: [u8; 32] = hex::decode(console_key.trim())
            .expect("hex")
            .try_into()
            .expect("32 bytes");
        let mut bench = UpdateBench {
            ids: (1..=devices).map(|n| format!("upd-{n:04}")).collect(),
            faults,
            manifest_hex: hex::encode(head.manifest_bytes),
            signature_hex: hex::encode(head.signature),
            sha: hex::encode(head.manifest.image_sha256),
            size: image.len(),
            tokens: rampart_ota::download::TokenKey::derive(&console_key),
            sub_args: Vec::new(),
            reports: BTreeMap::new(),
            sim,
            p,
        };
        // A persistent subscription to the reports before any offer.
        let mut sub_args = bench.mosquitto_base("ota-sub");
        sub_args.extend(["-c", "-x", "120", "-q", "1", "-t", "devices/+/ota/up"].map(String::from));
        let mut subscribe = sub_args.clone();
        subscribe.push("-E".into());
        let out = mosquitto("mosquitto_sub", &subscribe);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        sub_args.extend(["-v", "-W", "2"].map(String::from));
        bench.sub_args = sub_args;
        bench
    }

    fn mosquitto_base(&self, client: &str) -> Vec<String> {
        let dir = self.p.ws.join("svc");
        vec![
            "-h".into(),
            "127.0.0.1".into(),
            "-p".into(),
            self.p.mqtt.port().to_string(),
            "--cafile".into(),
            dir.join("ca.crt").display().to_string(),
            "--cert".into(),
            dir.join(format!("{client}.crt")).display().to_string(),
            "--key".into(),
            dir.join(format!("{client}.key")).display().to_string(),
            "-i".into(),
            client.into(),
            "-V".into(),
            "mqttv5".into(),
        ]
    }

    /// The download URL of the image for `id` (a token bound to it).
    fn url(&self, id: &str) -> String {
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("after 1970")
            .as_millis() as u64;
        let t = rampart_ota::download::mint(
            &self.tokens,
            &rampart_ota::download::DownloadGrant {
                device_id: id.to_owned(),
                sha256: self.sha.clone(),
                expires_at_ms: now_ms + 3_600_000,
            },
        )
        .expect("token");
        format!("https://{}/ota/v1/images/{}?t={t}", self.p.http, self.sha)
    }

    /// Publishes `body` on `devices/{id}/ota/down`.
    fn publish(&self, id: &str, body: &str) {
        let mut a = self.mosquitto_base("ota-pub");
        a.extend(
            [
                "-q",
                "1",
                "-t",
                &format!("devices/{id}/ota/down"),
                "-m",
                body,
            ]
            .map(String::from),
        );
        let out = mosquitto("mosquitto_pub", &a);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Offers the image to `id`, to be downloaded from `url`.
    fn offer(&self, id: &str, url: &str) {
        let offer = serde_json::json!({
            "type": "offer",
            "campaign": 1,
            "manifest": self.manifest_hex,
            "signature": self.signature_hex,
            "url": url,
            "size": self.size,
            "sha256": self.sha,
        })
        .to_string();
        self.publish(id, &offer);
    }

    /// Reads reports from the persistent subscription until every device's
    /// last one has the status `final_status(id)`.
    fn await_reports(&mut self, final_status: impl Fn(&str) -> String) {
        let deadline = std::time::Instant::now() + wait_limit();
        while !self.ids.iter().all(|id| {
            self.reports
                .get(id)
                .and_then(|r| r.last())
                .is_some_and(|last| last.split(':').next() == Some(final_status(id).as_str()))
        }) {
            assert!(
                std::time::Instant::now() < deadline,
                "not every outcome reported: {:?}",
                self.reports
            );
            let out = spawn_mosquitto("mosquitto_sub", &self.sub_args).wait();
            for line in String::from_utf8_lossy(&out.stdout).lines() {
                let Some((topic, body)) = line.split_once(' ') else {
                    continue;
                };
                let id = topic.split('/').nth(1).unwrap_or_default().to_owned();
                let v: Value = serde_json::from_str(body).expect("a JSON report");
                assert_eq!(v["version"], "1.1.0", "{v}");
                let status = v["status"].as_str().unwrap_or_default();
                if status == "downloading" {
                    continue;
                }
                let entry = match v["reason"].as_str() {
                    Some(r) => format!("{status}:{r}"),
                    None => status.to_owned(),
                };
                self.reports.entry(id).or_default().push(entry);
            }
        }
    }

    /// Stops the fleet; returns what the run produced.
    fn finish(mut self) -> UpdateRun {
        assert!(self.sim.terminate());
        let reported = self
            .ids
            .iter()
            .map(|id| {
                let stats = self.p.ws.rampart_json(&["telemetry", "stats", id]);
                (id.clone(), stats["reported_state"]["state"].clone())
            })
            .collect();
        UpdateRun {
            faults: self.faults,
            reports: self.reports,
            summary: read_summary(&self.p, "summary.json"),
            reported,
        }
    }
}

/// Every device of a fleet of `devices` is offered the image; runs until
/// each reported its outcome (`expected` gives it by fault kind, `""` for
/// healthy devices).
fn update_fleet(
    devices: usize,
    args: &[&str],
    expected: impl Fn(&str) -> &'static str,
) -> UpdateRun {
    let mut bench = UpdateBench::start(devices, args);
    for id in &bench.ids {
        bench.offer(id, &bench.url(id));
    }
    let outcome = |id: &str| {
        let o = expected(bench.faults.get(id).map_or("", String::as_str));
        o.split(':').next().unwrap_or(o).to_owned()
    };
    let finals: BTreeMap<String, String> = bench
        .ids
        .iter()
        .map(|id| (id.clone(), outcome(id)))
        .collect();
    bench.await_reports(|id| finals[id].clone());
    bench.finish()
}

#[test]
fn a_resent_offer_is_ignored_and_a_cancel_discards_the_download() {
    let mut bench = UpdateBench::start(1, &[]);
    let id = bench.ids[0].clone();
    // A download that cannot progress: an address that accepts and never
    // answers, as a network that swallows packets.
    let stuck = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let stuck_url = format!(
        "https://{}/ota/v1/images/{}?t=x",
        stuck.local_addr().expect("addr"),
        bench.sha
    );
    bench.offer(&id, &stuck_url);
    // The same offer again while it is being received: ignored (no
    // `failed:busy`); then the campaign cancels it: discarded silently.
    bench.offer(&id, &stuck_url);
    bench.publish(&id, r#"{"type":"cancel","campaign":1}"#);
    // Offered afresh with a working URL, it installs (had the cancel not
    // discarded the first download, this offer would be ignored and the
    // stuck one would end in `failed:download`).
    bench.offer(&id, &bench.url(&id));
    bench.await_reports(|_| "succeeded".to_owned());
    let run = bench.finish();
    assert_eq!(
        run.reports[&id],
        [
            "verifying",
            "pending-reboot",
            "pending-confirm",
            "succeeded"
        ],
        "{:?}",
        run.reports
    );
    assert_eq!(count(&run.summary, "otaOffers"), 2, "{}", run.summary);
    assert_eq!(count(&run.summary, "otaFailed"), 0, "{}", run.summary);
    drop(stuck);
}

#[test]
fn offered_updates_are_downloaded_installed_and_confirmed_or_rolled_back() {
    // Three devices; exactly one crashes on every trial boot.
    let run = update_fleet(
        3,
        &[
            "--ota-fault",
            "crash-on-boot:0.34",
            "--ota-max-boot-attempts",
            "2",
        ],
        |kind| match kind {
            "crash-on-boot" => "rolled-back:crash-loop",
            _ => "succeeded",
        },
    );
    let summary = &run.summary;
    assert_eq!(run.faults.len(), 1, "{:?}", run.faults);
    assert_eq!(count(summary, "otaOffers"), 3, "{summary}");
    assert_eq!(count(summary, "otaSucceeded"), 2, "{summary}");
    assert_eq!(count(summary, "otaRolledBack"), 1, "{summary}");
    assert_eq!(count(summary, "bootCrashes"), 2, "{summary}");
    assert_eq!(count(summary, "otaFailed"), 0, "{summary}");
    for d in summary["devices"].as_array().expect("devices") {
        let id = d["id"].as_str().expect("id");
        let (firmware, reports): (&str, &[&str]) = match run.faults.get(id) {
            Some(kind) => {
                assert_eq!(kind, "crash-on-boot");
                assert_eq!(d["otaFault"], "crash-on-boot");
                (
                    "1.0.0",
                    &["verifying", "pending-reboot", "rolled-back:crash-loop"],
                )
            }
            None => (
                "1.1.0",
                &[
                    "verifying",
                    "pending-reboot",
                    "pending-confirm",
                    "succeeded",
                ],
            ),
        };
        assert_eq!(d["firmware"], firmware, "{d}");
        assert_eq!(run.reports[id], reports, "{id}: {:?}", run.reports);
        // The server holds the running version and the device type.
        assert_eq!(run.reported[id]["fw"], firmware, "{:?}", run.reported);
        assert_eq!(run.reported[id]["type"], "rampart-sim");
    }
}

#[test]
fn hung_offline_and_corrupted_updates_end_rolled_back_or_failed() {
    let run = update_fleet(
        4,
        &[
            "--ota-fault",
            "hang:0.25",
            "--ota-fault",
            "no-network:0.25",
            "--ota-fault",
            "corrupt-download:0.25",
            "--ota-confirm-timeout",
            "2s",
        ],
        |kind| match kind {
            "hang" | "no-network" => "rolled-back:not-confirmed",
            "corrupt-download" => "failed:hash-mismatch",
            _ => "succeeded",
        },
    );
    let summary = &run.summary;
    assert_eq!(run.faults.len(), 3, "{:?}", run.faults);
    assert_eq!(count(summary, "otaSucceeded"), 1, "{summary}");
    assert_eq!(count(summary, "otaRolledBack"), 2, "{summary}");
    assert_eq!(count(summary, "otaFailed"), 1, "{summary}");
    for d in summary["devices"].as_array().expect("devices") {
        let id = d["id"].as_str().expect("id");
        let kind = run.faults.get(id).map_or("", String::as_str);
        let (firmware, reports): (&str, &[&str]) = match kind {
            "hang" | "no-network" => (
                "1.0.0",
                &["verifying", "pending-reboot", "rolled-back:not-confirmed"],
            ),
            "corrupt-download" => ("1.0.0", &["verifying", "failed:hash-mismatch"]),
            _ => (
                "1.1.0",
                &[
                    "verifying",
                    "pending-reboot",
                    "pending-confirm",
                    "succeeded",
                ],
            ),
        };
        assert_eq!(d["firmware"], firmware, "{id} ({kind}): {d}");
        assert_eq!(run.reports[id], reports, "{id} ({kind}): {:?}", run.reports);
        assert_eq!(run.reported[id]["fw"], firmware, "{:?}", run.reported);
    }
}

/// A simulated fleet on `1.0.0` trusting a release key, with `1.1.0`
/// signed by that key and uploaded, every device's state report (type
/// and version) in the store: what a campaign needs to target it.
struct RolloutFleet {
    p: Platform,
    sim: Serve,
    ids: Vec<String>,
    /// Device id → its `--ota-fault` kind.
    faults: BTreeMap<String, String>,
    firmware: u64,
}

impl RolloutFleet {
    fn start(devices: usize, args: &[&str]) -> Self {
        let p = platform();
        let release = Release::upload(&p);
        let (public, firmware) = (release.public, release.firmware);

        let n = devices.to_string();
        let token = p.token(devices, &["--id-prefix", "fleet"]);
        let mut sim_args = vec![
            "--devices",
            &n,
            "--id-prefix",
            "fleet",
            "--token",
            &token,
            "--rate",
            "1/s",
            "--ota-trust",
            &public,
        ];
        sim_args.extend_from_slice(args);
        let mut sim = p.spawn("state", "summary.json", &sim_args);
        let connected = format!("connected {devices}/{devices}");
        sim.wait_until("all connected", |l| {
            l.starts_with("progress") && l.contains(&connected)
        });
        let faults = sim
            .seen()
            .iter()
            .filter_map(|l| l.strip_prefix("ota-fault id="))
            .filter_map(|rest| rest.split_once(" kind="))
            .map(|(id, kind)| (id.to_owned(), kind.to_owned()))
            .collect();
        let ids: Vec<String> = (1..=devices).map(|n| format!("fleet-{n:04}")).collect();
        // Each device reports its type and version once connected; a
        // campaign targets the devices whose report is in.
        let deadline = std::time::Instant::now() + wait_limit();
        for id in &ids {
            loop {
                let stats = p.ws.rampart_json(&["telemetry", "stats", id]);
                if stats["reported_state"]["state"]["type"] == "rampart-sim" {
                    assert_eq!(stats["reported_state"]["state"]["fw"], "1.0.0");
                    break;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "{id} never reported its type: {stats}"
                );
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
        }
        RolloutFleet {
            p,
            sim,
            ids,
            faults,
            firmware,
        }
    }

    /// Creates and approves a campaign of the release to every device.
    fn campaign(&self, extra: &[&str]) -> u64 {
        let firmware = self.firmware.to_string();
        let mut args = vec![
            "campaign",
            "create",
            "--name",
            "roll out 1.1.0",
            "--firmware",
            &firmware,
            "--all",
            "--soak",
            "0s",
            "--approve",
        ];
        args.extend_from_slice(extra);
        let c = self.p.ws.rampart_json(&args);
        assert_eq!(c["status"], "running", "{c}");
        c["id"].as_u64().expect("campaign id")
    }

    /// Polls `campaign show` until its status is final; returns it.
    fn until_final(&self, id: u64, bound: std::time::Duration) -> Value {
        let deadline = std::time::Instant::now() + bound;
        loop {
            let shown = self
                .p
                .ws
                .rampart_json(&["campaign", "show", &id.to_string()]);
            let status = shown["campaign"]["status"].as_str().unwrap_or_default();
            if matches!(status, "completed" | "aborted" | "cancelled") {
                return shown;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "campaign {id} did not finish: {shown:#}"
            );
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    }

    fn finish(mut self) -> Value {
        assert!(self.sim.terminate());
        read_summary(&self.p, "summary.json")
    }
}

/// Entries of a shown campaign: device id → (state, reason, wave).
fn entries(shown: &Value) -> BTreeMap<String, (String, String, u64)> {
    shown["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| {
            (
                e["deviceId"].as_str().expect("id").to_owned(),
                (
                    e["state"].as_str().expect("state").to_owned(),
                    e["reason"].as_str().unwrap_or_default().to_owned(),
                    e["wave"].as_u64().expect("wave"),
                ),
            )
        })
        .collect()
}

#[test]
fn a_campaign_over_a_simulated_fleet_completes_with_the_crashing_devices_rolled_back() {
    let devices = env_size("RAMPART_TEST_OTA_DEVICES", 100);
    let fleet = RolloutFleet::start(
        devices,
        &[
            "--ota-fault",
            "crash-on-boot:0.05",
            "--ota-max-boot-attempts",
            "2",
            "--flaky-downloads",
            "0.2",
        ],
    );
    let crashing: BTreeSet<String> = fleet.faults.keys().cloned().collect();
    assert_eq!(crashing.len(), (devices as f64 * 0.05).round() as usize);
    // Three waves; 5 % failing never reaches half of any wave.
    let id = fleet.campaign(&[
        "--waves",
        "10,50,100",
        "--failure-threshold",
        "0.5",
        "--success-threshold",
        "0.5",
    ]);
    let shown = fleet.until_final(id, wait_limit() * 6);
    assert_eq!(shown["campaign"]["status"], "completed", "{shown:#}");
    let entries = entries(&shown);
    assert_eq!(entries.len(), devices);
    for (device, (state, reason, _)) in &entries {
        if crashing.contains(device) {
            assert_eq!(
                (state.as_str(), reason.as_str()),
                ("rolled-back", "crash-loop"),
                "{device}"
            );
        } else {
            assert_eq!(state, "succeeded", "{device}: {reason}");
        }
    }
    // Every wave ran: the first tenth, then up to half, then the rest.
    let waves: BTreeSet<u64> = entries.values().map(|e| e.2).collect();
    assert_eq!(waves.len(), 3, "{waves:?}");
    let ids = fleet.ids.clone();
    let p_ws_stats: Vec<Value> = ids
        .iter()
        .take(3)
        .map(|d| fleet.p.ws.rampart_json(&["telemetry", "stats", d]))
        .collect();
    let summary = fleet.finish();
    assert_eq!(
        count(&summary, "otaRolledBack"),
        crashing.len() as u64,
        "{summary}"
    );
    assert_eq!(
        count(&summary, "otaSucceeded"),
        (devices - crashing.len()) as u64,
        "{summary}"
    );
    assert_eq!(count(&summary, "otaFailed"), 0, "{summary}");
    // A fifth of the downloads were cut; they resumed where they broke
    // (a cut that came too early for a range simply starts again).
    assert!(count(&summary, "downloadResumes") > 0, "{summary}");
    for (d, stats) in ids.iter().zip(&p_ws_stats) {
        let want = if crashing.contains(d) {
            "1.0.0"
        } else {
            "1.1.0"
        };
        assert_eq!(stats["reported_state"]["state"]["fw"], want, "{d}: {stats}");
    }
}

#[test]
fn a_campaign_with_half_the_fleet_failing_aborts_before_its_next_wave() {
    let devices = 30;
    let fleet = RolloutFleet::start(devices, &["--ota-fault", "corrupt-download:0.5"]);
    let corrupt: BTreeSet<String> = fleet.faults.keys().cloned().collect();
    assert_eq!(corrupt.len(), 15);
    // Wave 1 is half the fleet; three failures of its fifteen abort.
    let id = fleet.campaign(&["--waves", "50,100", "--failure-threshold", "0.2"]);
    let shown = fleet.until_final(id, wait_limit() * 2);
    assert_eq!(shown["campaign"]["status"], "aborted", "{shown:#}");
    let entries = entries(&shown);
    let first: Vec<&String> = entries.iter().filter(|e| e.1.2 == 1).map(|e| e.0).collect();
    assert_eq!(first.len(), 15, "{entries:?}");
    for (device, (state, reason, wave)) in &entries {
        if *wave == 2 {
            assert_eq!(
                state, "cancelled",
                "{device}: the second wave never started"
            );
        } else if corrupt.contains(device) && state == "failed" {
            assert_eq!(reason, "hash-mismatch", "{device}");
        }
    }
    let failed = entries
        .values()
        .filter(|e| e.0 == "failed" || e.0 == "rolled-back")
        .count();
    assert!(failed >= 3, "aborted at the threshold: {entries:?}");
    let summary = fleet.finish();
    // Offers went to the first wave only; nobody installed a corrupted image.
    assert!(
        count(&summary, "otaOffers") <= first.len() as u64,
        "{summary}"
    );
    for d in summary["devices"].as_array().expect("devices") {
        let id = d["id"].as_str().expect("id");
        if corrupt.contains(id) {
            assert_eq!(d["firmware"], "1.0.0", "{d}");
        }
        if entries[id].2 == 2 {
            assert_eq!(d["firmware"], "1.0.0", "{d}");
        }
    }
}
