//! Telemetry through the real binary: mosquitto_pub → broker → pipeline →
//! store (SQLite, or PostgreSQL with `store.url`), read back with
//! `rampart telemetry ...`; backup and restore while serving.

use std::os::unix::fs::PermissionsExt;

use rampart_test_support::{DeviceFiles, PgTestDb, Workspace, mosquitto};

const CONFIG: &str = "[broker]\nrate_limit_exempt = [\"127.0.0.1\", \"::1\"]\n";

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64
}

fn publish(dev: &DeviceFiles, addr: std::net::SocketAddr, topic: &str, body: &str) {
    let mut a = dev.mosquitto_args(addr);
    a.extend(["-V", "mqttv5", "-q", "1", "-t", topic, "-m", body].map(String::from));
    let out = mosquitto("mosquitto_pub", &a);
    assert!(
        out.status.success(),
        "publish {body}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Seq 1 (temperature 20.5, humidity 40) at `t`, then a batch of seq 2
/// (22.5) and seq 3 (21.0) one and two seconds later.
fn publish_three_readings(dev: &DeviceFiles, addr: std::net::SocketAddr, topic: &str, t: i64) {
    publish(
        dev,
        addr,
        topic,
        &format!(r#"{{"seq":1,"ts":{t},"m":{{"temperature":20.5,"humidity":40}}}}"#),
    );
    publish(
        dev,
        addr,
        topic,
        &format!(
            r#"{{"batch":[{{"seq":2,"ts":{},"m":{{"temperature":22.5}}}},{{"seq":3,"ts":{},"m":{{"temperature":21.0}}}}]}}"#,
            t + 1000,
            t + 2000
        ),
    );
}

#[test]
fn published_readings_are_queried_exported_backed_up_and_restored() {
    let ws = Workspace::new();
    std::fs::write(ws.join("rampart.toml"), CONFIG).expect("config");
    ws.rampart().arg("init").assert().success();
    let dev = ws.device("greenhouse-7");
    let mut serve = ws.serve(&[("RAMPART_CONFIG", "rampart.toml")]);
    let addr = serve.listening("mqtt");

    let t = now_ms() - 10 * 60_000;
    let topic = "devices/greenhouse-7/telemetry/up";
    publish_three_readings(&dev, addr, topic, t);
    // A replay and a bad payload: neither adds a point.
    publish(
        &dev,
        addr,
        topic,
        &format!(r#"{{"seq":1,"ts":{t},"m":{{"temperature":20.5,"humidity":40}}}}"#),
    );
    publish(&dev, addr, topic, r#"{"seq":4,"m":{"temperature":"hot"}}"#);
    publish(
        &dev,
        addr,
        "devices/greenhouse-7/state/up",
        r#"{"fw":"1.4.2"}"#,
    );

    // The `--from=-1h` form and the documented shape.
    let q = ws.rampart_json(&[
        "telemetry",
        "query",
        "--device",
        "greenhouse-7",
        "--metric",
        "temperature",
        "--from=-1h",
        "--to",
        "now",
        "--buckets",
        "4",
    ]);
    assert_eq!(q["device"], "greenhouse-7");
    assert_eq!(q["metric"], "temperature");
    assert_eq!(q["resolution"], "1m");
    let buckets = q["buckets"].as_array().expect("buckets");
    assert_eq!(buckets.len(), 1, "{q}");
    let b = &buckets[0];
    assert_eq!(
        (&b["min"], &b["max"], &b["count"], &b["last"]),
        (
            &serde_json::json!(20.5),
            &serde_json::json!(22.5),
            &serde_json::json!(3),
            &serde_json::json!(21.0)
        )
    );
    assert!((b["avg"].as_f64().expect("avg") - 64.0 / 3.0).abs() < 1e-9);
    assert!(b["start"].as_str().expect("start").ends_with('Z'));

    // Every metric at once: one object per metric.
    let all = ws.rampart_json(&[
        "telemetry",
        "query",
        "--device",
        "greenhouse-7",
        "--from",
        "-2h",
    ]);
    let names: Vec<_> = all
        .as_array()
        .expect("list")
        .iter()
        .map(|s| s["metric"].as_str().expect("metric").to_owned())
        .collect();
    assert_eq!(names, ["humidity", "temperature"]);

    // Exports: one stored point per line.
    let out = ws
        .rampart()
        .args([
            "telemetry",
            "export",
            "--format",
            "jsonl",
            "--device",
            "greenhouse-7",
        ])
        .output()
        .expect("export");
    assert!(out.status.success());
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON object per line"))
        .collect();
    assert_eq!(lines.len(), 4, "3 temperatures and 1 humidity");
    let keys: Vec<&str> = lines[0]
        .as_object()
        .expect("object")
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(keys, ["device", "metric", "seq", "ts", "value"]);
    assert!(lines.iter().all(|l| {
        l["ts"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z') && t.len() == 24)
    }));
    let csv_file = ws.join("points.csv");
    ws.rampart()
        .args([
            "telemetry",
            "export",
            "--format",
            "csv",
            "--from=-1h",
            "--out",
        ])
        .arg(&csv_file)
        .assert()
        .success();
    let csv = std::fs::read_to_string(&csv_file).expect("csv");
    assert_eq!(csv.lines().next(), Some("device,metric,ts,value,seq"));
    assert_eq!(csv.lines().count(), 5);

    let rejected = ws.rampart_json(&["telemetry", "rejected", "--device", "greenhouse-7"]);
    assert_eq!(rejected[0]["kind"], "payload_format_invalid", "{rejected}");
    let stats = ws.rampart_json(&["telemetry", "stats", "greenhouse-7"]);
    assert_eq!(stats["stats"]["readings"], 3);
    assert_eq!(stats["stats"]["duplicates"], 1);
    assert_eq!(stats["stats"]["rejected"], 1);
    assert_eq!(stats["reported_state"]["state"]["fw"], "1.4.2");
    // Every connection's connect is committed before its publish is
    // acknowledged; the last disconnect may still be on its way.
    let presence = stats["presence"].as_array().expect("presence");
    assert!(
        presence.iter().any(|p| p["online"] == true
            && p["addr"]
                .as_str()
                .is_some_and(|a| a.starts_with("127.0.0.1:"))),
        "{stats}"
    );

    // Bad times are refused with a sentence.
    let out = ws
        .rampart()
        .args([
            "telemetry",
            "query",
            "--device",
            "greenhouse-7",
            "--from",
            "yesterday",
        ])
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a time"));

    // Backup while serving; restore elsewhere; the same answers come back.
    let backup = ws.join("rampart.backup");
    let b = ws.rampart_json(&["backup", backup.to_str().expect("utf8")]);
    assert_eq!(b["devices"], 1);
    let mode = std::fs::metadata(&backup)
        .expect("backup")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let again = ws
        .rampart()
        .args(["backup", backup.to_str().expect("utf8")])
        .output()
        .expect("run");
    assert!(
        !again.status.success(),
        "an existing file is not overwritten"
    );
    assert!(serve.terminate());

    let restored = ws.join("restored");
    let r = ws.rampart_json(&[
        "--data-dir",
        restored.to_str().expect("utf8"),
        "restore",
        backup.to_str().expect("utf8"),
    ]);
    assert_eq!(
        (&r["devices"], &r["audit_ok"]),
        (&serde_json::json!(1), &serde_json::json!(true))
    );
    let q2 = ws.rampart_json(&[
        "--data-dir",
        restored.to_str().expect("utf8"),
        "telemetry",
        "query",
        "--device",
        "greenhouse-7",
        "--metric",
        "temperature",
        "--from=-1h",
        "--buckets",
        "4",
    ]);
    assert_eq!(q2["buckets"], q["buckets"]);
    let mode = std::fs::metadata(&restored)
        .expect("dir")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o700);
    // The restored instance runs and its device connects.
    let mut serve = ws.serve(&[
        ("RAMPART_CONFIG", "rampart.toml"),
        ("RAMPART_DATA_DIR", restored.to_str().expect("utf8")),
    ]);
    let addr = serve.listening("mqtt");
    publish(
        &dev,
        addr,
        topic,
        &format!(r#"{{"seq":9,"ts":{},"m":{{"temperature":19}}}}"#, t + 3000),
    );
    assert!(serve.terminate());

    // Never into a data dir that holds anything.
    let out = ws
        .rampart()
        .args(["restore", backup.to_str().expect("utf8")])
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not empty"));
}

#[test]
fn serve_on_postgresql_stores_readings_that_the_cli_reads_back() {
    let Some(db) = PgTestDb::create_blocking() else {
        return;
    };
    let url = db.url().to_owned();
    let ws = Workspace::new();
    std::fs::write(ws.join("rampart.toml"), CONFIG).expect("config");
    ws.rampart_json_with_store(&url, &["init"]);
    let created = ws
        .rampart()
        .env("RAMPART_STORE__URL", &url)
        .args(["device", "create", "--id", "pg-sensor-1", "--out"])
        .arg(ws.join("devices"))
        .output()
        .expect("device create");
    assert!(
        created.status.success(),
        "device create: {}",
        String::from_utf8_lossy(&created.stderr)
    );
    let dir = ws.join("devices");
    let dev = DeviceFiles {
        id: "pg-sensor-1".into(),
        cert: dir.join("pg-sensor-1.crt"),
        key: dir.join("pg-sensor-1.key"),
        ca: dir.join("ca.crt"),
    };
    let mut serve = ws.serve(&[
        ("RAMPART_CONFIG", "rampart.toml"),
        ("RAMPART_STORE__URL", &url),
    ]);
    let addr = serve.listening("mqtt");

    let t = now_ms() - 10 * 60_000;
    let topic = "devices/pg-sensor-1/telemetry/up";
    publish_three_readings(&dev, addr, topic, t);
    // A replay is a duplicate; the same seq with other values a conflict.
    publish(
        &dev,
        addr,
        topic,
        &format!(r#"{{"seq":1,"ts":{t},"m":{{"temperature":20.5,"humidity":40}}}}"#),
    );
    publish(
        &dev,
        addr,
        topic,
        &format!(r#"{{"seq":3,"ts":{},"m":{{"temperature":99}}}}"#, t + 2000),
    );
    publish(
        &dev,
        addr,
        "devices/pg-sensor-1/state/up",
        r#"{"fw":"2.0.1"}"#,
    );

    // The points are in PostgreSQL: four of them, none with the conflict's value.
    db.execute(
        "DO $$ BEGIN
           IF (SELECT count(*) FROM points) <> 4 OR EXISTS (SELECT 1 FROM points WHERE value = 99)
           THEN RAISE EXCEPTION 'points: %', (SELECT array_agg(value) FROM points);
           END IF;
         END $$;",
    )
    .expect("the readings are stored in PostgreSQL");
    assert!(
        !ws.data_dir().join("rampart.db").exists(),
        "nothing was written to SQLite"
    );

    let q = ws.rampart_json_with_store(
        &url,
        &[
            "telemetry",
            "query",
            "--device",
            "pg-sensor-1",
            "--metric",
            "temperature",
            "--from=-1h",
            "--to",
            "now",
            "--buckets",
            "4",
        ],
    );
    assert_eq!(q["resolution"], "1m", "{q}");
    let buckets = q["buckets"].as_array().expect("buckets");
    assert_eq!(buckets.len(), 1, "{q}");
    let b = &buckets[0];
    assert_eq!(
        (&b["min"], &b["max"], &b["count"], &b["last"]),
        (
            &serde_json::json!(20.5),
            &serde_json::json!(22.5),
            &serde_json::json!(3),
            &serde_json::json!(21.0)
        )
    );
    assert!((b["avg"].as_f64().expect("avg") - 64.0 / 3.0).abs() < 1e-9);

    let stats = ws.rampart_json_with_store(&url, &["telemetry", "stats", "pg-sensor-1"]);
    let s = &stats["stats"];
    assert_eq!(
        (
            &s["readings"],
            &s["duplicates"],
            &s["conflicts"],
            &s["last_seq"]
        ),
        (
            &serde_json::json!(3),
            &serde_json::json!(1),
            &serde_json::json!(1),
            &serde_json::json!(3)
        ),
        "{stats}"
    );
    assert!(s["flagged_at"].is_number(), "{stats}");
    assert_eq!(s["metrics"], serde_json::json!(["humidity", "temperature"]));
    assert_eq!(stats["reported_state"]["state"]["fw"], "2.0.1", "{stats}");
    let presence = stats["presence"].as_array().expect("presence");
    assert!(
        presence
            .iter()
            .any(|p| p["online"] == true && p["addr"].is_string()),
        "{stats}"
    );
    let rejected =
        ws.rampart_json_with_store(&url, &["telemetry", "rejected", "--device", "pg-sensor-1"]);
    assert_eq!(rejected[0]["kind"], "sequence_conflict", "{rejected}");
    assert_eq!(rejected[0]["seq"], 3, "{rejected}");
    let devices = ws.rampart_json_with_store(&url, &["device", "list"]);
    assert!(devices[0]["last_seen"].is_string(), "{devices}");

    assert!(serve.terminate(), "serve exits 0 on SIGTERM");
}

#[test]
fn restore_refuses_archives_that_escape_the_data_dir() {
    let ws = Workspace::new();
    let evil = ws.join("evil.tar");
    {
        let file = std::fs::File::create(&evil).expect("create");
        let mut tar = tar::Builder::new(file);
        let body = b"owned";
        let mut h = tar::Header::new_gnu();
        h.set_size(body.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        // `append_data` refuses `..`; write the raw name as an attacker would.
        h.as_gnu_mut().expect("gnu").name[..13].copy_from_slice(b"pki/../../evi");
        h.set_cksum();
        tar.append(&h, &body[..]).expect("append");
        tar.finish().expect("finish");
    }
    let target = ws.join("target");
    let out = ws
        .rampart()
        .args([
            "--data-dir",
            target.to_str().expect("utf8"),
            "restore",
            evil.to_str().expect("utf8"),
        ])
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not part of a data dir"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!target.exists());
    assert!(!ws.path().join("evi").exists());
}

/// Requests received: head and body of each.
type Received = std::sync::Arc<std::sync::Mutex<Vec<(String, String)>>>;

/// A minimal HTTP/1.1 receiver: records each request's head and body,
/// answers 204.
fn influx_receiver() -> (std::net::SocketAddr, Received) {
    use std::io::{BufRead, BufReader, Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let record = std::sync::Arc::clone(&seen);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            let record = std::sync::Arc::clone(&record);
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream);
                loop {
                    let mut head = String::new();
                    let mut len = 0usize;
                    loop {
                        let mut line = String::new();
                        match reader.read_line(&mut line) {
                            Ok(0) | Err(_) => return,
                            Ok(_) => {}
                        }
                        if line == "\r\n" {
                            break;
                        }
                        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                            len = v.trim().parse().unwrap_or(0);
                        }
                        head.push_str(&line);
                    }
                    let mut body = vec![0; len];
                    if reader.read_exact(&mut body).is_err() {
                        return;
                    }
                    record
                        .lock()
                        .expect("record")
                        .push((head, String::from_utf8_lossy(&body).into_owned()));
                    let stream = reader.get_mut();
                    if stream
                        .write_all(b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n")
                        .is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    (addr, seen)
}

#[test]
fn serve_pushes_stored_points_to_influxdb() {
    let (influx, seen) = influx_receiver();
    let ws = Workspace::new();
    std::fs::write(
        ws.join("rampart.toml"),
        format!(
            "{CONFIG}\n[telemetry.influx]\nurl = \"http://{influx}/api/v2/write?org=o&bucket=fleet\"\ntoken_env = \"TEST_INFLUX_TOKEN\"\n"
        ),
    )
    .expect("config");
    ws.rampart().arg("init").assert().success();
    let dev = ws.device("meter-9");
    let mut serve = ws.serve(&[
        ("RAMPART_CONFIG", "rampart.toml"),
        ("TEST_INFLUX_TOKEN", "s3cret-token"),
    ]);
    let addr = serve.listening("mqtt");
    let t = now_ms() - 60_000;
    publish(
        &dev,
        addr,
        "devices/meter-9/telemetry/up",
        &format!(r#"{{"seq":1,"ts":{t},"m":{{"power":12.5,"volts":230}}}}"#),
    );
    let deadline = std::time::Instant::now() + rampart_test_support::wait_limit();
    let (head, body) = loop {
        if let Some(r) = seen.lock().expect("seen").first().cloned() {
            break r;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "nothing reached InfluxDB"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert!(head.starts_with("POST /api/v2/write?"), "{head}");
    assert!(head.contains("precision=ms"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("authorization: token s3cret-token"),
        "{head}"
    );
    assert_eq!(
        body.trim(),
        format!("telemetry,device=meter-9 power=12.5,volts=230.0 {t}")
    );
    assert!(serve.terminate());
    assert!(
        !serve.seen().iter().any(|l| l.contains("s3cret-token")),
        "the token is never logged"
    );
}
