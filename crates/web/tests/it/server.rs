//! The HTTPS server itself: routes' JSON errors, handshake deadline,
//! connection limit, certificate reload, TLS versions, shutdown.

use std::sync::Arc;
use std::time::Duration;

use rampart_test_support::https::{client_trusting, get};
use rampart_test_support::wait_limit;
use rampart_web::{WebConfig, WebMetrics};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use crate::common::{Server, config};

/// Polls `cond` until it holds, failing after the test wait limit.
async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + wait_limit();
    while !cond() {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until the server closes `tcp` (EOF or reset).
async fn closed_by_server(mut tcp: TcpStream) {
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(wait_limit(), tcp.read(&mut buf))
        .await
        .expect("the server closes the connection");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
}

#[tokio::test]
async fn health_check_and_json_errors_for_unknown_routes() {
    let s = Server::start(config()).await;
    let r = get(&s.client, s.addr, "/healthz").await;
    assert_eq!((r.status, r.body["status"].as_str()), (200, Some("ok")));
    let r = get(&s.client, s.addr, "/no/such/thing").await;
    assert_eq!((r.status, r.code()), (404, "not_found"));
    let r = get(&s.client, s.addr, "/api/v1/enroll").await;
    assert_eq!((r.status, r.code()), (405, "method_not_allowed"));
    assert!(WebMetrics::get(&s.state.metrics().requests) >= 3);
}

#[tokio::test]
async fn a_silent_client_is_cut_at_the_handshake_deadline() {
    let s = Server::start(WebConfig {
        handshake_timeout: Duration::from_millis(200),
        ..config()
    })
    .await;
    let tcp = TcpStream::connect(s.addr).await.expect("connect");
    closed_by_server(tcp).await;
    let metrics = s.state.metrics();
    eventually("handshake failure counted", || {
        WebMetrics::get(&metrics.handshake_failures) == 1
    })
    .await;
}

#[tokio::test]
async fn connections_beyond_the_limit_are_closed_at_once() {
    let s = Server::start(WebConfig {
        max_connections: 1,
        ..config()
    })
    .await;
    let metrics = s.state.metrics();
    let holder = TcpStream::connect(s.addr).await.expect("connect");
    eventually("first connection accepted", || {
        WebMetrics::get(&metrics.accepted) == 1
    })
    .await;
    let extra = TcpStream::connect(s.addr).await.expect("connect");
    closed_by_server(extra).await;
    assert_eq!(WebMetrics::get(&metrics.refused_max_connections), 1);
    // Once the holder leaves, its slot is free again.
    drop(holder);
    let deadline = tokio::time::Instant::now() + wait_limit();
    loop {
        let client = client_trusting(&s.pki.chain_pem());
        if let Ok(r) = client
            .get(format!("https://{}/healthz", s.addr))
            .send()
            .await
        {
            assert_eq!(r.status().as_u16(), 200);
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "slot never freed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_reloaded_certificate_serves_new_connections() {
    let s = Server::start(config()).await;
    let key = rcgen::KeyPair::generate().expect("key");
    let other = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .expect("params")
        .self_signed(&key)
        .expect("self-signed");
    s.state
        .tls()
        .reload(&other.pem(), &key.serialize_pem())
        .expect("reload");
    let old_trust = client_trusting(&s.pki.chain_pem());
    let refused = old_trust
        .get(format!("https://{}/healthz", s.addr))
        .send()
        .await;
    assert!(refused.is_err(), "the old CA still verifies: {refused:?}");
    let new_trust = client_trusting(&other.pem());
    let r = get(&new_trust, s.addr, "/healthz").await;
    assert_eq!(r.status, 200);
    // A broken replacement is refused and the current one stays.
    assert!(s.state.tls().reload("garbage", "garbage").is_err());
    assert_eq!(get(&new_trust, s.addr, "/healthz").await.status, 200);
}

#[tokio::test]
async fn tls_1_2_only_when_configured() {
    for (tls12, accepted) in [(false, false), (true, true)] {
        let s = Server::start(WebConfig { tls12, ..config() }).await;
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_pki_types::pem::PemObject::pem_slice_iter(s.pki.chain_pem().as_bytes()) {
            roots.add(cert.expect("PEM")).expect("root");
        }
        let client = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(&[&rustls::version::TLS12])
        .expect("TLS 1.2")
        .with_root_certificates(roots)
        .with_no_client_auth();
        let tcp = TcpStream::connect(s.addr).await.expect("connect");
        let name = rustls_pki_types::ServerName::try_from("localhost").expect("name");
        let handshake = tokio_rustls::TlsConnector::from(Arc::new(client))
            .connect(name, tcp)
            .await;
        assert_eq!(
            handshake.is_ok(),
            accepted,
            "tls12 = {tls12}: {handshake:?}"
        );
    }
}

#[tokio::test]
async fn shutdown_closes_idle_connections_and_stops_accepting() {
    let mut s = Server::start(config()).await;
    // The client keeps this connection open, idle, in its pool.
    assert_eq!(get(&s.client, s.addr, "/healthz").await.status, 200);
    s.stop().await.expect("run ends cleanly");
    assert!(
        TcpStream::connect(s.addr).await.is_err(),
        "still accepting after shutdown"
    );
}
