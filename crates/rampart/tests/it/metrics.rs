//! `/metrics` and `/readyz` of the real binary: scraped over the separate
//! plain-HTTP address while a device publishes with mosquitto_pub.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};

use rampart_test_support::{Workspace, mosquitto};

const CONFIG: &str = "[broker]\nrate_limit_exempt = [\"127.0.0.1\", \"::1\"]\n\
                      [web]\nmetrics_addr = \"127.0.0.1:0\"\n";

/// A plain HTTP/1.1 GET: (status, body).
fn get(addr: SocketAddr, path: &str, token: Option<&str>) -> (u16, String) {
    let mut tcp = TcpStream::connect(addr).expect("connect to the metrics address");
    tcp.set_read_timeout(Some(rampart_test_support::wait_limit()))
        .expect("timeout");
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    write!(
        tcp,
        "GET {path} HTTP/1.1\r\nHost: metrics\r\n{auth}Connection: close\r\n\r\n"
    )
    .expect("send");
    let mut raw = String::new();
    tcp.read_to_string(&mut raw).expect("read");
    let status = raw
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status line");
    let body = raw.split_once("\r\n\r\n").map_or("", |(_, b)| b).to_owned();
    (status, body)
}

/// The value of the sample line starting with `series ` in `text`.
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no sample {series} in:\n{text}"))
}

#[test]
fn a_published_message_moves_the_counters_scraped_on_the_metrics_address() {
    let ws = Workspace::new();
    std::fs::write(ws.join("rampart.toml"), CONFIG).expect("config");
    ws.rampart().arg("init").assert().success();
    let dev = ws.device("meter-1");
    let mut serve = ws.serve(&[("RAMPART_CONFIG", "rampart.toml")]);
    let mqtt = serve.listening("mqtt");
    let metrics = serve.listening("metrics");

    // Ready once the broker has restored its state and accepts.
    let deadline = std::time::Instant::now() + rampart_test_support::wait_limit();
    let body = loop {
        let (status, body) = get(metrics, "/readyz", None);
        if status == 200 {
            break body;
        }
        assert_eq!(status, 503, "{body}");
        assert!(std::time::Instant::now() < deadline, "never ready: {body}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert!(body.contains("\"ready\""), "{body}");

    let (status, before) = get(metrics, "/metrics", None);
    assert_eq!(status, 200, "{before}");
    assert!(before.contains("# TYPE rampart_broker_messages_received_total counter"));
    assert!(before.contains("# TYPE rampart_http_responses_total counter"));
    // The SQLite writer's figures (decision 0020).
    assert!(before.contains("# TYPE rampart_store_writer_takeovers_total counter"));
    assert!(before.contains("# TYPE rampart_store_writer_taken_over gauge"));
    let received = "rampart_broker_messages_received_total{qos=\"1\"}";
    let stored = "rampart_ingest_readings_stored_total";
    assert_eq!(sample(&before, received), 0.0);
    assert_eq!(sample(&before, stored), 0.0);

    let mut args = dev.mosquitto_args(mqtt);
    args.extend(
        [
            "-V",
            "mqttv5",
            "-q",
            "1",
            "-t",
            "devices/meter-1/telemetry/up",
            "-m",
            r#"{"seq":1,"m":{"power":12.5}}"#,
        ]
        .map(String::from),
    );
    let out = mosquitto("mosquitto_pub", &args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // PUBACK came after the commit, so the counters have moved already.
    let (_, after) = get(metrics, "/metrics", None);
    assert_eq!(sample(&after, received), 1.0);
    assert_eq!(sample(&after, stored), 1.0);
    assert_eq!(sample(&after, "rampart_ingest_points_stored_total"), 1.0);
    assert!(sample(&after, "rampart_broker_connections_accepted_total") >= 1.0);
    assert!(sample(&after, "rampart_ingest_commit_seconds_count") >= 1.0);
    assert_eq!(
        sample(&after, "rampart_ingest_rejected_total{reason=\"format\"}"),
        0.0
    );

    // Nothing else is served on the plain address.
    let (status, _) = get(metrics, "/api/v1/enroll", None);
    assert_eq!(status, 404);
    assert!(serve.terminate(), "serve stops cleanly");
}

#[test]
fn the_metrics_token_is_required_on_the_metrics_address_when_set() {
    let ws = Workspace::new();
    std::fs::write(ws.join("rampart.toml"), CONFIG).expect("config");
    ws.rampart().arg("init").assert().success();
    let token = "metrics-token-0123456789";
    let mut serve = ws.serve(&[
        ("RAMPART_CONFIG", "rampart.toml"),
        ("RAMPART_WEB_METRICS_TOKEN", token),
    ]);
    let metrics = serve.listening("metrics");
    let (status, body) = get(metrics, "/metrics", None);
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("metrics_token_invalid"), "{body}");
    let (status, _) = get(metrics, "/metrics", Some("metrics-token-012345678X"));
    assert_eq!(status, 401);
    let (status, body) = get(metrics, "/metrics", Some(token));
    assert_eq!(status, 200);
    assert!(body.contains("rampart_broker_connections 0"), "{body}");
    assert!(serve.terminate());
}
