//! Live unread counts for the console's notifications bell, as
//! Server-Sent Events.
//!
//! Notifications are written by the store in the transaction of the event
//! they report (a claim bound by the control plane, a claim that failed),
//! wherever that runs. The running server learns of such events through
//! the change feed (`DeviceBound`, `ClaimFailed`); [`InboxHub`] follows a
//! broadcast of it and wakes every open stream, which re-reads its own
//! user's unread count from the store (the record) and sends it when it
//! changed. The web part also wakes the streams when someone marks
//! notifications read, so every tab of that user follows. The hub never
//! carries notification contents, only "look again".

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::Stream;
use rampart_store::{Change, ChangeKind, NotificationStore};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, broadcast, watch};
use tokio_util::sync::CancellationToken;

/// Whether a change may have written a notification.
pub fn notifies(kind: ChangeKind) -> bool {
    matches!(kind, ChangeKind::DeviceBound | ChangeKind::ClaimFailed)
}

/// Wakes open notification streams; cheap to clone.
#[derive(Debug, Clone)]
pub struct InboxHub {
    wake: Arc<watch::Sender<u64>>,
    slots: Arc<Semaphore>,
    max_streams: usize,
    keep_alive: Duration,
}

/// Why a stream was not opened.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum InboxError {
    /// `max_streams` streams are open.
    #[error("{0} notification streams are open, the most allowed; retry later")]
    TooManyStreams(usize),
}

impl InboxHub {
    /// A hub following `changes` (the server's change-feed broadcast)
    /// until `shutdown`; at most `max_streams` streams at once, each with
    /// keep-alive comments every `keep_alive`.
    pub fn spawn(
        mut changes: broadcast::Receiver<Change>,
        max_streams: usize,
        keep_alive: Duration,
        shutdown: CancellationToken,
    ) -> Self {
        let (wake, _) = watch::channel(0u64);
        let hub = Self {
            wake: Arc::new(wake),
            slots: Arc::new(Semaphore::new(max_streams)),
            max_streams,
            keep_alive,
        };
        let task = hub.clone();
        tokio::spawn(async move {
            loop {
                let change = tokio::select! {
                    _ = shutdown.cancelled() => break,
                    c = changes.recv() => c,
                };
                match change {
                    Ok(c) if notifies(c.kind) => task.wake(),
                    Ok(_) => {}
                    // Missed changes may have notified someone: look again.
                    Err(broadcast::error::RecvError::Lagged(_)) => task.wake(),
                    Err(broadcast::error::RecvError::Closed) => break,
                }
            }
        });
        hub
    }

    /// Makes every open stream re-read its unread count.
    pub fn wake(&self) {
        self.wake.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Opens a stream of `user_id`'s unread count: the current count first,
    /// then each new one.
    pub fn subscribe(
        &self,
        store: Arc<dyn NotificationStore>,
        user_id: String,
    ) -> Result<Response, InboxError> {
        let Ok(permit) = Arc::clone(&self.slots).try_acquire_owned() else {
            return Err(InboxError::TooManyStreams(self.max_streams));
        };
        let stream = counts(store, user_id, self.wake.subscribe(), permit);
        Ok(Sse::new(stream)
            .keep_alive(
                KeepAlive::new()
                    .interval(self.keep_alive)
                    .text("keep-alive"),
            )
            .into_response())
    }
}

/// The SSE events: `unread` with `{"unread": n}` whenever `n` changes.
fn counts(
    store: Arc<dyn NotificationStore>,
    user_id: String,
    wake: watch::Receiver<u64>,
    permit: OwnedSemaphorePermit,
) -> impl Stream<Item = Result<Event, Infallible>> + Send {
    let state = (store, user_id, wake, permit, None::<u64>);
    futures_util::stream::unfold(state, |(store, user, mut wake, permit, last)| async move {
        loop {
            if last.is_some() {
                // Ends the stream when the hub is gone (server stopping).
                wake.changed().await.ok()?;
            }
            match store.unread_notifications(&user).await {
                Ok(n) if last != Some(n) => {
                    let event = Event::default()
                        .event("unread")
                        .data(format!("{{\"unread\":{n}}}"));
                    return Some((Ok(event), (store, user, wake, permit, Some(n))));
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(user_id = %user, error = %e, "cannot count unread notifications");
                    if last.is_none() {
                        // Wait for the next wake rather than retry at once.
                        wake.changed().await.ok()?;
                    }
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_claim_endings_wake_the_streams() {
        assert!(notifies(ChangeKind::DeviceBound));
        assert!(notifies(ChangeKind::ClaimFailed));
        assert!(!notifies(ChangeKind::ClaimRequested));
        assert!(!notifies(ChangeKind::DeviceRevoked));
    }
}
