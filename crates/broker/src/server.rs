//! The accept loop: connection limit, per-IP rate limit, one task per
//! connection, and an orderly shutdown that closes every session with
//! "server shutting down" and waits for the tasks to finish.

use std::sync::Arc;
use std::time::Duration;

use rampart_proto::ingest::DisconnectReason;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::broker::Broker;
use crate::connection;
use crate::metrics::Metrics;

/// How often offline sessions are checked for expiry.
const EXPIRY_SWEEP: Duration = Duration::from_secs(1);

/// Serves MQTT on `listener` until `shutdown` is cancelled, then closes
/// every connection and returns once they have all finished.
pub async fn run(
    listener: TcpListener,
    broker: Arc<Broker>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    broker
        .restore()
        .await
        .map_err(|e| std::io::Error::other(format!("cannot restore broker state: {e}")))?;
    let slots = Arc::new(Semaphore::new(broker.config.max_connections));
    let tasks = TaskTracker::new();
    let mut sweep = tokio::time::interval(EXPIRY_SWEEP);
    broker
        .accepting
        .store(true, std::sync::atomic::Ordering::Release);
    loop {
        let (tcp, addr) = tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = sweep.tick() => {
                broker.expire_sessions();
                continue;
            }
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        Metrics::inc(&broker.metrics.accepted);
        if !broker.admit(addr.ip()) {
            Metrics::inc(&broker.metrics.refused_rate_limited);
            tracing::info!(client_addr = %addr, "connection refused: rate limit");
            continue;
        }
        let Ok(permit) = Arc::clone(&slots).try_acquire_owned() else {
            Metrics::inc(&broker.metrics.refused_max_connections);
            tracing::warn!(client_addr = %addr, "connection refused: max_connections reached");
            continue;
        };
        let broker = Arc::clone(&broker);
        let stop = shutdown.clone();
        tasks.spawn(async move {
            connection::serve(broker, tcp, addr, stop).await;
            drop(permit);
        });
    }
    broker
        .accepting
        .store(false, std::sync::atomic::Ordering::Release);
    drop(listener);
    broker.close_all(DisconnectReason::ServerShutdown);
    tasks.close();
    tasks.wait().await;
    // Acknowledged deliveries' removals and disconnect times reach the disk.
    broker.persister.flush().await;
    Ok(())
}
