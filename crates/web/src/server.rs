//! The accept loop: TLS with a handshake deadline, a connection limit, and
//! a graceful stop.
//!
//! Connections are served by hyper-util (HTTP/1.1 and HTTP/2) rather than
//! `axum::serve`, so that the TLS handshake runs in the connection's own
//! task (a slow client never holds up the accept loop) and the limits are
//! ours. On shutdown the listener closes first, then every connection is
//! asked to finish: requests in flight complete, idle keep-alive
//! connections close, and handshakes still running end by their deadline.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::Service;

use crate::routes::router;
use crate::state::{AppState, WebMetrics};
use crate::tls::PeerCertificate;

/// Serves HTTPS on `listener` until `shutdown` is cancelled, then stops
/// accepting and lets the open connections finish (see the module
/// documentation). Returns once every connection task has ended.
pub async fn run(
    listener: TcpListener,
    state: AppState,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let app = router(state.clone());
    let slots = Arc::new(Semaphore::new(state.config().max_connections));
    let tasks = TaskTracker::new();
    loop {
        let (tcp, client) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "HTTPS accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        WebMetrics::inc(&state.metrics().accepted);
        let Ok(permit) = Arc::clone(&slots).try_acquire_owned() else {
            WebMetrics::inc(&state.metrics().refused_max_connections);
            tracing::warn!(client_addr = %client, "HTTPS connection refused: web.max_connections reached");
            continue;
        };
        tasks.spawn(connection(
            tcp,
            client,
            state.clone(),
            app.clone(),
            permit,
            shutdown.clone(),
        ));
    }
    drop(listener);
    tasks.close();
    tasks.wait().await;
    Ok(())
}

/// One connection: handshake within the deadline, then HTTP until the
/// client leaves or the server stops.
async fn connection(
    tcp: TcpStream,
    client: SocketAddr,
    state: AppState,
    app: Router,
    _permit: OwnedSemaphorePermit,
    shutdown: CancellationToken,
) {
    let deadline = state.config().handshake_timeout;
    let acceptor = state.tls().acceptor();
    let tls = tokio::select! {
        _ = shutdown.cancelled() => return,
        handshake = tokio::time::timeout(deadline, acceptor.accept(tcp)) => match handshake {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => {
                WebMetrics::inc(&state.metrics().handshake_failures);
                tracing::debug!(client_addr = %client, error = %e, "TLS handshake failed");
                return;
            }
            Err(_) => {
                WebMetrics::inc(&state.metrics().handshake_failures);
                tracing::debug!(client_addr = %client, "TLS handshake timed out");
                return;
            }
        },
    };
    // Each request learns its client's address, as `ConnectInfo`, and the
    // verified client certificate, if one was presented (the acceptor only
    // lets through certificates that chain to Rampart's CA).
    let peer = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .map(|leaf| PeerCertificate(Arc::new(leaf.clone().into_owned())));
    let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
        request.extensions_mut().insert(ConnectInfo(client));
        if let Some(peer) = &peer {
            request.extensions_mut().insert(peer.clone());
        }
        app.clone().call(request)
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(deadline);
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(tls), service);
    tokio::pin!(conn);
    let finished = tokio::select! {
        result = conn.as_mut() => Some(result),
        _ = shutdown.cancelled() => None,
    };
    let result = match finished {
        Some(result) => result,
        None => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(client_addr = %client, error = %e, "HTTPS connection ended with an error");
    }
}
