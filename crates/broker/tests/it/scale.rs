//! Many concurrent mutual-TLS connections on one small machine.

use std::sync::atomic::Ordering;

use crate::common::{Connect, Platform, up};

/// Connections opened at once; `RAMPART_TEST_CONNECTIONS` changes it.
fn connections() -> usize {
    std::env::var("RAMPART_TEST_CONNECTIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_mtls_connections_each_complete_a_qos1_round_trip() {
    let n = connections();
    // Client and server ends of every connection live in this process.
    if let Ok((soft, hard)) = rlimit::getrlimit(rlimit::Resource::NOFILE) {
        let want = (4 * n as u64 + 256).min(hard);
        if soft < want {
            rlimit::setrlimit(rlimit::Resource::NOFILE, want, hard).expect("raise the fd limit");
        }
    }
    let platform = Platform::start_with(|c| c.max_connections = n + 16).await;
    let mut creds = Vec::with_capacity(n);
    for i in 0..n {
        creds.push(platform.device(&format!("scale-{i:04}")).await);
    }

    // Every device connects and stays connected.
    let platform = std::sync::Arc::new(platform);
    let mut tasks = tokio::task::JoinSet::new();
    for c in creds {
        let p = std::sync::Arc::clone(&platform);
        tasks.spawn(async move {
            let id = c.id.to_string();
            let client = p.connected(&c, Connect::v5(&id)).await;
            (id, client)
        });
    }
    let mut clients = Vec::with_capacity(n);
    while let Some(joined) = tasks.join_next().await {
        clients.push(joined.expect("connect task"));
    }
    assert_eq!(clients.len(), n);
    assert_eq!(
        platform.metrics().connections.load(Ordering::Relaxed),
        n as i64,
        "all {n} connections open at once"
    );

    // Then each completes a QoS 1 round trip while all are open.
    let mut tasks = tokio::task::JoinSet::new();
    for (id, mut client) in clients {
        tasks.spawn(async move {
            client
                .publish_ok(&up(&id, "telemetry"), id.as_bytes())
                .await;
            client
        });
    }
    let mut done = Vec::with_capacity(n);
    while let Some(joined) = tasks.join_next().await {
        done.push(joined.expect("publish task"));
    }
    let committed = platform.sink.committed();
    assert_eq!(
        committed.len(),
        n,
        "every publish reached the pipeline once"
    );
    let mut devices: Vec<String> = committed.iter().map(|m| m.device.to_string()).collect();
    devices.sort();
    devices.dedup();
    assert_eq!(devices.len(), n, "one message per device");
    drop(done);
}
