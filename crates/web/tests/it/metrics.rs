//! `/metrics` on the HTTPS server: absent without a token, refused with a
//! wrong one, served with the right one; `/readyz` with plugged-in checks.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use rampart_test_support::https::get;
use rampart_web::metrics::{CONTENT_TYPE, MetricKind};
use rampart_web::{MetricsToken, Monitoring, WebConfig};

use crate::common::{Server, config};

const TOKEN: &str = "0123456789abcdef-metrics";

async fn scrape(s: &Server, token: Option<&str>) -> (u16, Option<String>, String) {
    let mut request = s.client.get(format!("https://{}/metrics", s.addr));
    if let Some(t) = token {
        request = request.bearer_auth(t);
    }
    let response = request.send().await.expect("request");
    let status = response.status().as_u16();
    let kind = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    (status, kind, response.text().await.expect("body"))
}

#[tokio::test]
async fn metrics_are_not_served_without_a_token_or_address() {
    let s = Server::start(config()).await;
    let r = get(&s.client, s.addr, "/metrics").await;
    assert_eq!((r.status, r.code()), (404, "metrics_not_exposed"));
    let message = r.body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("web.metrics_token"), "{message}");
    assert!(message.contains("web.metrics_addr"), "{message}");
}

#[tokio::test]
async fn the_bearer_token_is_checked() {
    let s = Server::start(WebConfig {
        metrics_token: Some(MetricsToken::new(TOKEN)),
        ..config()
    })
    .await;
    for wrong in [
        None,
        Some(""),
        Some("0123456789abcdef-metricz"),
        Some("0123456789abcdef"),
    ] {
        let (status, _, body) = scrape(&s, wrong).await;
        assert_eq!(status, 401, "{wrong:?}: {body}");
        assert!(body.contains("metrics_token_invalid"), "{body}");
    }
    let (status, kind, body) = scrape(&s, Some(TOKEN)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(kind.as_deref(), Some(CONTENT_TYPE));
    // The five refusals above were counted as 4xx responses.
    assert!(
        body.contains("rampart_http_responses_total{class=\"4xx\"} 4\n"),
        "{body}"
    );
    assert!(body.contains("# TYPE rampart_http_tls_handshake_failures_total counter\n"));
}

#[tokio::test]
async fn plugged_in_sources_and_readiness_checks() {
    let broker_up = Arc::new(AtomicBool::new(false));
    let up = Arc::clone(&broker_up);
    let mut s = Server::start(WebConfig {
        metrics_token: Some(MetricsToken::new(TOKEN)),
        ..config()
    })
    .await;
    s.state = s.state.clone().with_monitoring(
        Monitoring::new()
            .source(|t| {
                t.family("rampart_test_total", MetricKind::Counter, "A test family.")
                    .sample("rampart_test_total", &[("device", "a\"b")], 7.0);
            })
            .check("broker", move || {
                if up.load(Ordering::Relaxed) {
                    Ok(())
                } else {
                    Err("the MQTT broker is not accepting connections".into())
                }
            }),
    );
    let (_, _, body) = scrape(&s, Some(TOKEN)).await;
    assert!(
        body.contains("rampart_test_total{device=\"a\\\"b\"} 7\n"),
        "{body}"
    );

    let r = get(&s.client, s.addr, "/readyz").await;
    assert_eq!(r.status, 503, "{:?}", r.body);
    assert_eq!(r.body["error"]["failing"][0]["part"], "broker");
    broker_up.store(true, Ordering::Relaxed);
    let r = get(&s.client, s.addr, "/readyz").await;
    assert_eq!((r.status, r.body["status"].as_str()), (200, Some("ready")));
}
