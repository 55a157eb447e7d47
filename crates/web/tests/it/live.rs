//! Live events over real HTTP: a Fanout feeds the hub, an axum server on a
//! loopback port streams a device's events as SSE, a raw client reads them.

use std::time::Duration;

use axum::Router;
use axum::routing::get;
use rampart_ingest::{Fanout, LiveEvent, StoredReading};
use rampart_proto::DeviceId;
use rampart_proto::telemetry::MetricName;
use rampart_test_support::wait_limit;
use rampart_web::live::{LiveHub, LiveOptions, device_events};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

fn id(s: &str) -> DeviceId {
    DeviceId::parse(s).expect("id")
}

/// Serves the live route for `hub` on a loopback port.
async fn serve(hub: LiveHub, stop: CancellationToken) -> std::net::SocketAddr {
    let app = Router::new()
        .route("/devices/{id}/live", get(device_events))
        .with_state(hub);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await
    });
    addr
}

/// An open HTTP/1.1 request whose response is read as it arrives.
struct Stream {
    tcp: TcpStream,
    text: String,
}

impl Stream {
    async fn open(addr: std::net::SocketAddr, path: &str) -> Self {
        let mut tcp = TcpStream::connect(addr).await.expect("connect");
        tcp.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: t\r\nAccept: text/event-stream\r\n\r\n")
                .as_bytes(),
        )
        .await
        .expect("send");
        Self {
            tcp,
            text: String::new(),
        }
    }

    /// Reads until `needle` has arrived; returns everything so far.
    async fn until(&mut self, needle: &str) -> &str {
        let deadline = tokio::time::Instant::now() + wait_limit();
        while !self.text.contains(needle) {
            let mut buf = [0u8; 4096];
            let n = tokio::time::timeout_at(deadline, self.tcp.read(&mut buf))
                .await
                .unwrap_or_else(|_| panic!("timed out waiting for {needle:?} in:\n{}", self.text))
                .expect("read");
            assert!(n > 0, "closed before {needle:?}:\n{}", self.text);
            self.text.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
        &self.text
    }
}

fn reading(device: &str, seq: u64, value: f64) -> LiveEvent {
    LiveEvent::Readings {
        device: id(device),
        readings: vec![StoredReading {
            seq,
            ts_ms: 1_764_000_000_000 + seq as i64,
            metrics: vec![(MetricName::parse("temperature").expect("metric"), value)],
        }],
    }
}

#[tokio::test]
async fn a_browser_receives_readings_presence_and_keep_alives_as_sse() {
    let fanout = Fanout::new(256);
    let stop = CancellationToken::new();
    let hub = LiveHub::spawn(
        fanout.subscribe(),
        LiveOptions {
            keep_alive: Duration::from_millis(100),
            ..LiveOptions::default()
        },
        stop.clone(),
    );
    let addr = serve(hub.clone(), stop.clone()).await;
    let mut s = Stream::open(addr, "/devices/greenhouse-1/live").await;
    let head = s.until("\r\n\r\n").await.to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains("content-type: text/event-stream"), "{head}");
    // Subscribed once the response started; publish now.
    let deadline = tokio::time::Instant::now() + wait_limit();
    while hub.open_streams() == 0 {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    fanout.publish(reading("other-device", 1, 99.0));
    fanout.publish(reading("greenhouse-1", 7, 21.5));
    fanout.publish(LiveEvent::Presence {
        device: id("greenhouse-1"),
        online: false,
        reason: Some(rampart_proto::ingest::DisconnectReason::ConnectionLost),
        at_ms: 1_764_000_000_500,
    });
    s.until("event: presence").await;
    let body = s.until("\"connection_lost\"").await.to_owned();
    assert!(body.contains("event: reading\ndata: {"), "{body}");
    assert!(body.contains("\"seq\":7"), "{body}");
    assert!(body.contains("\"temperature\":21.5"), "{body}");
    assert!(
        !body.contains("99.0") && !body.contains("\"seq\":1,"),
        "{body}"
    );
    // Keep-alive comments while idle.
    s.until(": keep-alive").await;
    // The browser leaves: its slot is freed.
    drop(s);
    let deadline = tokio::time::Instant::now() + wait_limit();
    while hub.open_streams() != 0 {
        fanout.publish(reading("greenhouse-1", 8, 1.0));
        assert!(
            tokio::time::Instant::now() < deadline,
            "stream not released"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.cancel();
}

#[tokio::test]
async fn streams_beyond_the_cap_get_503_and_bad_ids_400() {
    let fanout = Fanout::new(16);
    let stop = CancellationToken::new();
    let hub = LiveHub::spawn(
        fanout.subscribe(),
        LiveOptions {
            max_streams: 1,
            ..LiveOptions::default()
        },
        stop.clone(),
    );
    let addr = serve(hub.clone(), stop.clone()).await;
    let mut first = Stream::open(addr, "/devices/a/live").await;
    first.until("\r\n\r\n").await;
    let mut second = Stream::open(addr, "/devices/a/live").await;
    let text = second.until("too_many_streams").await;
    assert!(text.starts_with("HTTP/1.1 503"), "{text}");
    assert!(
        text.to_ascii_lowercase().contains("retry-after: 5"),
        "{text}"
    );
    let mut bad = Stream::open(addr, "/devices/..%2F..%2Fetc/live").await;
    let text = bad.until("invalid_device_id").await;
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");
    stop.cancel();
}
