//! The broker's protections: handshake timeout, connection limit, per-IP
//! rate limit. Each refused connection is closed and counted; clients that
//! behave keep working.

use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::common::{Connect, Platform};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// Bound on waiting for the server to close a connection; passing runs
/// take a fraction of it.
const CLOSE_BOUND: Duration = Duration::from_secs(10);

/// Reads until the server closes; fails if it does not within the bound.
async fn closed_by_server(mut tcp: TcpStream) {
    let mut buf = [0u8; 64];
    let closed = tokio::time::timeout(CLOSE_BOUND, async {
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the server kept the connection open");
}

#[tokio::test]
async fn a_silent_connection_is_closed_after_the_handshake_timeout() {
    let p = Platform::start_with(|c| c.handshake_timeout = Duration::from_millis(200)).await;
    // Slowloris: open TCP, never start TLS.
    let tcp = TcpStream::connect(p.addr()).await.expect("connect");
    closed_by_server(tcp).await;
    assert_eq!(p.metrics().handshake_timeouts.load(Ordering::Relaxed), 1);
    // A TLS client that never sends CONNECT is closed too.
    let dev = p.device("quiet-1").await;
    let tls = p.tls(Some(&dev)).await.expect("handshake");
    let (tcp, _) = tls.into_inner();
    closed_by_server(tcp).await;
    assert_eq!(p.metrics().handshake_timeouts.load(Ordering::Relaxed), 2);
}

#[tokio::test]
async fn connections_beyond_the_limit_are_refused_and_the_rest_keep_working() {
    let p = Platform::start_with(|c| c.max_connections = 2).await;
    let a = p.device("limit-a").await;
    let b = p.device("limit-b").await;
    let mut ca = p.connected(&a, Connect::v5("limit-a")).await;
    let _cb = p.connected(&b, Connect::v5("limit-b")).await;
    let extra = TcpStream::connect(p.addr()).await.expect("tcp connect");
    closed_by_server(extra).await;
    assert_eq!(
        p.metrics().refused_max_connections.load(Ordering::Relaxed),
        1
    );
    ca.ping().await;
}

#[tokio::test]
async fn one_address_opening_connections_too_fast_is_throttled() {
    let p = Platform::start_with(|c| {
        c.connection_rate_per_ip = 3;
        c.rate_limit_exempt.clear();
        // Only a refusal can close the held connections within the bound.
        c.handshake_timeout = Duration::from_secs(600);
    })
    .await;
    // A burst from 127.0.0.1: the bucket holds 3, refilling 3 per second.
    let mut held = Vec::new();
    for _ in 0..5 {
        held.push(TcpStream::connect(p.addr()).await.expect("tcp connect"));
    }
    let last = TcpStream::connect(p.addr()).await.expect("tcp connect");
    closed_by_server(last).await;
    assert!(p.metrics().refused_rate_limited.load(Ordering::Relaxed) >= 1);
}
