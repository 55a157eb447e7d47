//! Durable broker state with group commit.
//!
//! Every change that an acknowledgement depends on (a QoS ≥ 1 delivery
//! queued for a persistent session, a subscription, a retained message) is
//! submitted here, in order, and the acknowledgement waits for its batch to
//! commit. One task drains whatever has accumulated into one transaction,
//! so a burst of publishes costs one fsync, not one each.

use std::sync::Arc;

use rampart_store::{MqttOp, Store};
use tokio::sync::{mpsc, oneshot};

/// Largest number of operations committed in one transaction.
const MAX_BATCH_OPS: usize = 8192;

struct Job {
    ops: Vec<MqttOp>,
    done: Option<oneshot::Sender<bool>>,
}

/// Handle to the persistence task.
#[derive(Clone)]
pub(crate) struct Persister {
    tx: mpsc::UnboundedSender<Job>,
}

impl std::fmt::Debug for Persister {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Persister")
    }
}

/// Completion of a submitted batch: `true` once durable.
pub(crate) type Durable = oneshot::Receiver<bool>;

impl Persister {
    /// Starts the task writing to `store`.
    pub(crate) fn start(store: Arc<dyn Store>) -> Self {
        let (tx, mut rx) = mpsc::unbounded_channel::<Job>();
        tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                let mut ops = first.ops;
                let mut waiters: Vec<oneshot::Sender<bool>> = first.done.into_iter().collect();
                while ops.len() < MAX_BATCH_OPS {
                    let Ok(job) = rx.try_recv() else { break };
                    ops.extend(job.ops);
                    waiters.extend(job.done);
                }
                let ok = match store.mqtt_apply(ops).await {
                    Ok(()) => true,
                    Err(e) => {
                        tracing::error!(error = %e, "cannot persist broker state");
                        false
                    }
                };
                for w in waiters {
                    let _ = w.send(ok);
                }
            }
        });
        Self { tx }
    }

    /// Queues `ops`; the returned receiver resolves once they are durable.
    /// Order of submission is order of application.
    pub(crate) fn submit(&self, ops: Vec<MqttOp>) -> Option<Durable> {
        if ops.is_empty() {
            return None;
        }
        let (done, rx) = oneshot::channel();
        let _ = self.tx.send(Job {
            ops,
            done: Some(done),
        });
        Some(rx)
    }

    /// Queues `ops` without waiting (acknowledged deliveries: losing one
    /// only means a redelivery, which QoS 1 allows).
    pub(crate) fn submit_later(&self, ops: Vec<MqttOp>) {
        if !ops.is_empty() {
            let _ = self.tx.send(Job { ops, done: None });
        }
    }

    /// Waits until everything submitted so far is durable.
    pub(crate) async fn flush(&self) -> bool {
        let (done, rx) = oneshot::channel();
        let _ = self.tx.send(Job {
            ops: Vec::new(),
            done: Some(done),
        });
        rx.await.unwrap_or(false)
    }
}

/// Waits for a batch; `None` (nothing to persist) is immediately durable.
pub(crate) async fn durable(d: Option<Durable>) -> bool {
    match d {
        None => true,
        Some(rx) => rx.await.unwrap_or(false),
    }
}
